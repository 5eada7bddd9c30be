#![no_main]
//! See fuzz/src/lib.rs: `fallacy_fuzz::api_json`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fallacy_fuzz::api_json(data));
