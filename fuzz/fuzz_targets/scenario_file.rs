#![no_main]
//! See fuzz/src/lib.rs: `fallacy_fuzz::scenario_file`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fallacy_fuzz::scenario_file(data));
