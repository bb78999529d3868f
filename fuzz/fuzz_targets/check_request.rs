#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pbxguard_fuzz::checks::check_request(data));
