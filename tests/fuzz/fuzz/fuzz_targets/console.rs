//! libFuzzer's entry for target `console`: the code is
//! `xen_fuzz_targets` (tests/fuzz/targets), also replayed by its tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xen_fuzz_targets::run("console", data);
});
