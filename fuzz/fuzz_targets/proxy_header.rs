#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hakuriver_fuzz::proxy_header_checks::check_proxy_header(data);
});
