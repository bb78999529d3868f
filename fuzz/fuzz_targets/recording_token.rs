#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pbxguard_fuzz::checks::recording_token(data));
