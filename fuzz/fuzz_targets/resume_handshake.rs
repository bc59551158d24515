#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hakuriver_fuzz::resume_checks::check_resume(data);
});
