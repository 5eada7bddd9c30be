#![no_main]
//! See fuzz/src/lib.rs: `fallacy_fuzz::config_toml`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fallacy_fuzz::config_toml(data));
