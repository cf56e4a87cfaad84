//! libFuzzer's entry for target `xs_request`: the code is
//! `xen_fuzz_targets` (tests/fuzz/targets), also replayed by its tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xen_fuzz_targets::run("xs_request", data);
});
