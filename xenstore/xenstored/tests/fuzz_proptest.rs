//! The fuzz targets' code on stable Rust: random bytes and random request
//! sequences into the packet decoder and the request handler. Nothing may
//! panic and the tree's invariants must hold afterwards.

use proptest::prelude::*;
use xenstore_wire::{PermList, Request};
use xenstored::harness::Harness;

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        "/[ab]{1,2}(/[abc]{1,2}){0,3}",
        "[ab]{1,2}(/[ab]{1,2}){0,2}",
        Just("/".to_owned()),
        Just("@releaseDomain".to_owned()),
        Just("/local/domain/1".to_owned()),
        "\\PC{0,6}",
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Write(String, Vec<u8>),
    Mkdir(String),
    Rm(String),
    Read(String),
    Dir(String),
    DirPart(String, u32),
    Perms(String, Vec<(u8, u16)>),
    Watch(String, u8, Option<u32>),
    Unwatch(String, u8),
    Start,
    End(bool),
    Reset,
    Introduce(u16),
    Release(u16),
    Quota(u16, u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (path(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(p, v)| Op::Write(p, v)),
        path().prop_map(Op::Mkdir),
        path().prop_map(Op::Rm),
        path().prop_map(Op::Read),
        path().prop_map(Op::Dir),
        (path(), 0u32..20).prop_map(|(p, o)| Op::DirPart(p, o)),
        (path(), proptest::collection::vec((0u8..4, 0u16..3), 1..4))
            .prop_map(|(p, v)| Op::Perms(p, v)),
        (path(), 0u8..3, proptest::option::of(0u32..3)).prop_map(|(p, t, d)| Op::Watch(p, t, d)),
        (path(), 0u8..3).prop_map(|(p, t)| Op::Unwatch(p, t)),
        Just(Op::Start),
        any::<bool>().prop_map(Op::End),
        Just(Op::Reset),
        (1u16..4).prop_map(Op::Introduce),
        (1u16..4).prop_map(Op::Release),
        (0u16..3, 0u32..6).prop_map(|(d, v)| Op::Quota(d, v)),
    ]
}

fn encode(op: &Op, tx: u32, out: &mut Vec<u8>) {
    let tok = |t: &u8| vec![b'a' + *t];
    let r = match op {
        Op::Write(p, v) => Request::Write { path: p, value: v }.encode(1, tx, out),
        Op::Mkdir(p) => Request::Mkdir { path: p }.encode(1, tx, out),
        Op::Rm(p) => Request::Rm { path: p }.encode(1, tx, out),
        Op::Read(p) => Request::Read { path: p }.encode(1, tx, out),
        Op::Dir(p) => Request::Directory { path: p }.encode(1, tx, out),
        Op::DirPart(p, o) => Request::DirectoryPart {
            path: p,
            offset: *o,
        }
        .encode(1, tx, out),
        Op::Perms(p, v) => Request::SetPerms {
            path: p,
            perms: PermList(
                v.iter()
                    .map(|(a, d)| xenstore_wire::Perm::new(*d, *a))
                    .collect(),
            ),
        }
        .encode(1, tx, out),
        Op::Watch(p, t, d) => Request::Watch {
            path: p,
            token: &tok(t),
            depth: *d,
        }
        .encode(1, tx, out),
        Op::Unwatch(p, t) => Request::Unwatch {
            path: p,
            token: &tok(t),
        }
        .encode(1, tx, out),
        Op::Start => Request::TransactionStart.encode(1, 0, out),
        Op::End(c) => Request::TransactionEnd { commit: *c }.encode(1, tx, out),
        Op::Reset => Request::ResetWatches.encode(1, 0, out),
        Op::Introduce(d) => Request::Introduce {
            domid: *d + 1,
            mfn: 0,
            port: 0,
        }
        .encode(1, 0, out),
        Op::Release(d) => Request::Release { domid: *d + 1 }.encode(1, 0, out),
        Op::Quota(d, v) => Request::SetQuota {
            domid: Some(*d),
            quota: "nodes",
            value: *v,
        }
        .encode(1, 0, out),
    };
    let _ = r;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200),
        .. ProptestConfig::default()
    })]

    #[test]
    fn test_random_bytes_never_panic(chunks in proptest::collection::vec(
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)) {
        let mut h = Harness::new();
        for (guest, data) in chunks {
            if h.feed(guest, &data).is_err() {
                break;
            }
        }
        prop_assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn test_random_requests_keep_tree_consistent(ops in proptest::collection::vec(
        (any::<bool>(), 0u32..3, op()), 1..60)) {
        let mut h = Harness::new();
        for (guest, tx, op) in ops {
            let mut out = Vec::new();
            encode(&op, tx, &mut out);
            h.feed(guest, &out).unwrap();
            prop_assert_eq!(h.check(), Ok(()));
        }
    }
}
