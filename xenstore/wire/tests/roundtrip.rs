//! Property tests: every request survives encode → decode → parse; the
//! decoder never panics on arbitrary bytes, fed in arbitrary chunks.

use proptest::prelude::*;
use xenstore_wire::{Decoder, Header, PermList, Request};

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        "/[a-z0-9_@-]{1,8}(/[a-zA-Z0-9_-]{1,8}){0,4}",
        "[a-z0-9_-]{1,8}(/[a-z0-9]{1,8}){0,3}",
        Just("@introduceDomain".to_owned()),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..64)
}

fn token() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 0..16)
}

#[derive(Debug, Clone)]
enum Owned {
    Read(String),
    Write(String, Vec<u8>),
    Watch(String, Vec<u8>, Option<u32>),
    Unwatch(String, Vec<u8>),
    SetPerms(String, Vec<(u8, u16)>),
    End(bool),
    Introduce(u16, u64, u32),
    DirPart(String, u32),
    SetQuota(Option<u16>, u32),
}

fn owned() -> impl Strategy<Value = Owned> {
    prop_oneof![
        path().prop_map(Owned::Read),
        (path(), bytes()).prop_map(|(p, v)| Owned::Write(p, v)),
        (path(), token(), proptest::option::of(0u32..10))
            .prop_map(|(p, t, d)| Owned::Watch(p, t, d)),
        (path(), token()).prop_map(|(p, t)| Owned::Unwatch(p, t)),
        (
            path(),
            proptest::collection::vec((0u8..4, any::<u16>()), 1..6)
        )
            .prop_map(|(p, v)| Owned::SetPerms(p, v)),
        any::<bool>().prop_map(Owned::End),
        (any::<u16>(), any::<u64>(), any::<u32>()).prop_map(|(d, m, e)| Owned::Introduce(d, m, e)),
        (path(), any::<u32>()).prop_map(|(p, o)| Owned::DirPart(p, o)),
        (proptest::option::of(any::<u16>()), any::<u32>()).prop_map(|(d, v)| Owned::SetQuota(d, v)),
    ]
}

fn to_request(o: &Owned) -> Request<'_> {
    match o {
        Owned::Read(p) => Request::Read { path: p },
        Owned::Write(p, v) => Request::Write { path: p, value: v },
        Owned::Watch(p, t, d) => Request::Watch {
            path: p,
            token: t,
            depth: *d,
        },
        Owned::Unwatch(p, t) => Request::Unwatch { path: p, token: t },
        Owned::SetPerms(p, v) => Request::SetPerms {
            path: p,
            perms: PermList(
                v.iter()
                    .map(|(a, d)| xenstore_wire::Perm::new(*d, *a))
                    .collect(),
            ),
        },
        Owned::End(c) => Request::TransactionEnd { commit: *c },
        Owned::Introduce(d, m, e) => Request::Introduce {
            domid: *d,
            mfn: *m,
            port: *e,
        },
        Owned::DirPart(p, o) => Request::DirectoryPart {
            path: p,
            offset: *o,
        },
        Owned::SetQuota(d, v) => Request::SetQuota {
            domid: *d,
            quota: "nodes",
            value: *v,
        },
    }
}

proptest! {
    #[test]
    fn test_request_encode_parse_roundtrip(reqs in proptest::collection::vec(owned(), 1..20),
                                           chunk in 1usize..64) {
        let mut wire = Vec::new();
        for (i, o) in reqs.iter().enumerate() {
            to_request(o).encode(i as u32, 7, &mut wire).unwrap();
        }
        let mut dec = Decoder::new();
        let mut got = 0usize;
        for c in wire.chunks(chunk) {
            dec.push(c);
            while let Some((h, p)) = dec.next_packet().unwrap() {
                let r = Request::parse(&h, p).unwrap();
                prop_assert_eq!(r, to_request(&reqs[got]));
                prop_assert_eq!(h.req_id, got as u32);
                prop_assert_eq!(h.tx_id, 7);
                got += 1;
            }
        }
        prop_assert_eq!(got, reqs.len());
    }

    #[test]
    fn test_decoder_and_parser_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048),
                                           chunk in 1usize..300) {
        let mut dec = Decoder::new();
        'outer: for c in data.chunks(chunk) {
            dec.push(c);
            loop {
                match dec.next_packet() {
                    Ok(Some((h, p))) => {
                        let _ = Request::parse(&h, p);
                        let _ = xenstore_wire::Reply::parse(&h, p);
                    }
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }

    #[test]
    fn test_header_roundtrip(ty in any::<u32>(), r in any::<u32>(), t in any::<u32>(), l in any::<u32>()) {
        let h = Header { ty, req_id: r, tx_id: t, len: l };
        prop_assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn test_path_validate_never_panics(s in "\\PC{0,40}") {
        let _ = xenstore_wire::path::validate(&s, true);
        let _ = xenstore_wire::path::parent(&s);
        let _ = xenstore_wire::path::basename(&s);
    }
}
