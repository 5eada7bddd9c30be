#![no_main]
//! See fuzz/src/lib.rs: `fallacy_fuzz::http_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fallacy_fuzz::http_request(data));
