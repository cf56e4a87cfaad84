//! Hostile input: malformed and oversized packets drop only that
//! connection; bad paths get EINVAL; unknown types ENOSYS; the daemon keeps
//! serving everyone else.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::Daemon;
use xenstore_wire::{Header, MsgType, Request, XsError};

fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn test_oversized_packet_drops_only_that_connection() {
    let d = Daemon::start();
    let mut good = d.client();
    good.write("/keep", "1").unwrap();
    let mut bad = UnixStream::connect(&d.socket).unwrap();
    let h = Header::new(MsgType::Write, 1, 0, 4097);
    bad.write_all(&h.encode()).unwrap();
    assert!(closed(&mut bad), "oversized packet closes the connection");
    assert_eq!(good.read("/keep").unwrap(), b"1");
}

#[test]
fn test_huge_length_header_drops_connection() {
    let d = Daemon::start();
    let mut bad = UnixStream::connect(&d.socket).unwrap();
    let h = Header {
        ty: 2,
        req_id: 0,
        tx_id: 0,
        len: u32::MAX,
    };
    bad.write_all(&h.encode()).unwrap();
    assert!(closed(&mut bad));
    d.client().write("/after", "ok").unwrap();
}

#[test]
fn test_max_payload_accepted() {
    let d = Daemon::start();
    let mut c = d.client();
    let value = "v".repeat(4096 - 3);
    c.write("/m", &value).unwrap();
    assert_eq!(c.read("/m").unwrap().len(), 4093);
}

#[test]
fn test_unknown_message_types_are_enosys() {
    let d = Daemon::start();
    let mut c = d.client();
    for ty in [
        20u32,
        27,
        1000,
        0xffff,
        MsgType::WatchEvent.as_u32(),
        MsgType::Error.as_u32(),
    ] {
        let h = Header {
            ty,
            req_id: 5,
            tx_id: 0,
            len: 1,
        };
        let mut pkt = h.encode().to_vec();
        pkt.push(0);
        c.send_raw(&pkt);
        let (rh, p) = c.recv_reply();
        assert_eq!(rh.msg_type(), Some(MsgType::Error));
        assert_eq!(p, b"ENOSYS\0", "type {ty}");
    }
    c.write("/still", "works").unwrap();
}

#[test]
fn test_malformed_payloads_are_einval() {
    let d = Daemon::start();
    let mut c = d.client();
    let cases: [(MsgType, &[u8]); 8] = [
        (MsgType::Read, b"/no-nul"),
        (MsgType::Read, b"/a\0extra"),
        (MsgType::Write, b"no-nul-at-all"),
        (MsgType::Watch, b"/only-path\0"),
        (MsgType::TransactionEnd, b"X\0"),
        (MsgType::Introduce, b"1\0notanumber\0"),
        (MsgType::SetPerms, b"/p\0"),
        (MsgType::SetPerms, b"/p\0z9\0"),
    ];
    for (ty, payload) in cases {
        let h = Header::new(ty, 9, 0, payload.len() as u32);
        let mut pkt = h.encode().to_vec();
        pkt.extend_from_slice(payload);
        c.send_raw(&pkt);
        let (rh, p) = c.recv_reply();
        assert_eq!(rh.req_id, 9);
        assert_eq!(p, b"EINVAL\0", "{ty:?} {payload:?}");
    }
}

#[test]
fn test_bad_paths_are_einval() {
    let d = Daemon::start();
    let mut c = d.client();
    for p in ["/a//b", "/a/", "/a b", "/a\u{e9}", "@special", "/a.b", ""] {
        assert_eq!(c.write(p, "x"), Err(XsError::Einval), "{p:?}");
    }
    let long = format!("/{}", "a".repeat(2100));
    assert_eq!(c.write(&long, "x"), Err(XsError::Einval));
    let ok = format!("/local/domain/3/{}", "a".repeat(2000));
    c.write(&ok, "x").unwrap();
}

#[test]
fn test_garbage_bytes_then_close_do_not_disturb_others() {
    let d = Daemon::start();
    let mut good = d.client();
    for seed in 0u8..20 {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        let junk: Vec<u8> = (0..200u32)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let _ = s.write_all(&junk);
        drop(s);
    }
    good.write("/alive", "yes").unwrap();
    assert_eq!(good.read("/alive").unwrap(), b"yes");
}

#[test]
fn test_partial_packet_then_disconnect_is_harmless() {
    let d = Daemon::start();
    {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        let h = Header::new(MsgType::Write, 1, 0, 100);
        s.write_all(&h.encode()).unwrap();
        s.write_all(b"/half").unwrap();
    }
    d.client().write("/fine", "1").unwrap();
}

#[test]
fn test_client_that_never_reads_does_not_block_others() {
    let d = Daemon::start();
    let mut lazy = UnixStream::connect(&d.socket).unwrap();
    // Thousands of pipelined reads whose replies are never read.
    let mut out = Vec::new();
    for i in 0..5000u32 {
        Request::Read { path: "/tool" }
            .encode(i, 0, &mut out)
            .unwrap();
    }
    lazy.set_nonblocking(true).unwrap();
    let _ = lazy.write(&out);
    let mut c = d.client();
    c.write("/other", "ok").unwrap();
    assert_eq!(c.read("/other").unwrap(), b"ok");
}
