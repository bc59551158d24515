#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hakuriver_fuzz::extended_checks::check_extended(data);
});
