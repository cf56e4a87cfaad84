//! xenstored's request handler over a fresh store: the input is a sequence
//! of records `[who: u8][len: u8][bytes...]` fed as Dom0 (even `who`) or as
//! guest domain 1 (odd); the tree's invariants must hold at the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenstored::harness::Harness;

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new();
    let mut rest = data;
    while let [who, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        if h.feed(who & 1 == 1, &tail[..n]).is_err() {
            break;
        }
        rest = &tail[n..];
    }
    if let Err(e) = h.check() {
        panic!("tree invariant broken: {e}");
    }
});
