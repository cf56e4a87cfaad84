//! The client against a hostile or broken server (a fake on a private
//! socket): it must return errors, never panic or hang, and stay bounded.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::JoinHandle;

use common::TempDir;
use xenstore_client::{Client, XsClientError, XsError, XsOps};

/// A one-connection fake server running `serve` on the accepted stream.
struct Fake {
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl Fake {
    fn start(serve: impl FnOnce(UnixStream) + Send + 'static) -> Self {
        let dir = TempDir::new("fake");
        let path = dir.0.join("socket");
        let l = UnixListener::bind(&path).expect("bind");
        let thread = std::thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                serve(s);
            }
        });
        Self {
            path,
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (header and payload); returns (type, req_id, payload).
fn read_request(s: &mut UnixStream) -> Option<(u32, u32, Vec<u8>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let mut p = vec![0u8; w(12) as usize];
    s.read_exact(&mut p).ok()?;
    Some((w(0), w(4), p))
}

fn packet(ty: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [ty, req_id, 0, u32::try_from(payload.len()).expect("small")] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(payload);
    v
}

#[test]
fn test_client_oversized_reply_header_is_protocol_error_then_disconnected() {
    let f = Fake::start(|mut s| {
        let (ty, id, _) = read_request(&mut s).expect("request");
        let mut p = packet(ty, id, b"");
        p[12..16].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        let _ = s.write_all(&p);
        let _ = read_request(&mut s);
    });
    let xs = Client::connect_path(&f.path).expect("connect");
    assert!(matches!(xs.read("/a"), Err(XsClientError::Protocol(_))));
    assert!(matches!(xs.read("/a"), Err(XsClientError::Disconnected)));
}

#[test]
fn test_client_reply_with_wrong_req_id_is_protocol_error() {
    let f = Fake::start(|mut s| {
        let (ty, id, _) = read_request(&mut s).expect("request");
        let _ = s.write_all(&packet(ty, id.wrapping_add(5), b"v"));
    });
    let xs = Client::connect_path(&f.path).expect("connect");
    assert!(matches!(xs.read("/a"), Err(XsClientError::Protocol(_))));
}

#[test]
fn test_client_server_closing_mid_request_is_disconnected() {
    let f = Fake::start(|mut s| {
        let _ = read_request(&mut s);
        let _ = s.write_all(&[2, 0, 0]); // a partial header, then EOF
    });
    let xs = Client::connect_path(&f.path).expect("connect");
    assert!(matches!(xs.read("/a"), Err(XsClientError::Disconnected)));
}

#[test]
fn test_client_unknown_error_name_is_protocol_error() {
    let f = Fake::start(|mut s| {
        let (_, id, _) = read_request(&mut s).expect("request");
        let _ = s.write_all(&packet(16, id, b"EWHATEVER\0"));
    });
    let xs = Client::connect_path(&f.path).expect("connect");
    assert!(matches!(xs.read("/a"), Err(XsClientError::Protocol(_))));
}

#[test]
fn test_client_malformed_watch_event_is_skipped() {
    let f = Fake::start(|mut s| {
        let (ty, id, _) = read_request(&mut s).expect("request");
        // An event without a token, a good one, then the reply.
        let _ = s.write_all(&packet(15, 0, b"/only-path\0"));
        let _ = s.write_all(&packet(15, 0, b"/p\0tok\0"));
        let _ = s.write_all(&packet(ty, id, b"v"));
    });
    let xs = Client::connect_path(&f.path).expect("connect");
    assert_eq!(xs.read("/a").expect("reply after events"), b"v");
    let ev = xs.try_watch_event().expect("the good event was queued");
    assert_eq!((ev.path.as_str(), ev.token.as_str()), ("/p", "tok"));
    assert!(xs.try_watch_event().is_none());
}

#[test]
fn test_client_directory_part_never_ending_is_bounded_error() {
    let f = Fake::start(|mut s| {
        // DIRECTORY: E2BIG; then DIRECTORY_PART chunks that never end.
        while let Some((ty, id, _)) = read_request(&mut s) {
            let reply = if ty == 1 {
                packet(16, id, b"E2BIG\0")
            } else {
                packet(ty, id, b"1\0a\0")
            };
            if s.write_all(&reply).is_err() {
                break;
            }
        }
    });
    let xs = Client::connect_path(&f.path).expect("connect");
    assert!(matches!(
        xs.directory("/big"),
        Err(XsClientError::Protocol(_))
    ));
}

#[test]
fn test_client_directory_part_unsupported_reports_e2big() {
    let f = Fake::start(|mut s| {
        while let Some((ty, id, _)) = read_request(&mut s) {
            let reply = if ty == 1 {
                packet(16, id, b"E2BIG\0")
            } else {
                packet(16, id, b"ENOSYS\0")
            };
            if s.write_all(&reply).is_err() {
                break;
            }
        }
    });
    let xs = Client::connect_path(&f.path).expect("connect");
    let e = xs.directory("/big").expect_err("no DIRECTORY_PART");
    assert!(e.is(XsError::E2big), "{e:?}");
}

#[test]
fn test_client_directory_part_generation_change_restarts() {
    let f = Fake::start(|mut s| {
        let mut calls = 0;
        while let Some((ty, id, p)) = read_request(&mut s) {
            calls += 1;
            let off = p
                .split(|b| *b == 0)
                .nth(1)
                .map(|o| String::from_utf8_lossy(o).into_owned());
            let reply = match (ty, off.as_deref(), calls) {
                (1, _, _) => packet(16, id, b"E2BIG\0"),
                // First walk: gen 1 first chunk, then gen 2: must restart.
                (_, Some("0"), 2) => packet(ty, id, b"1\0old\0"),
                (_, Some("0"), _) => packet(ty, id, b"2\0a\0"),
                (_, Some("4"), 3) => packet(ty, id, b"2\0x\0\0"),
                (_, Some("2"), _) => packet(ty, id, b"2\0b\0\0"),
                _ => packet(16, id, b"EINVAL\0"),
            };
            if s.write_all(&reply).is_err() {
                break;
            }
        }
    });
    let xs = Client::connect_path(&f.path).expect("connect");
    assert_eq!(xs.directory("/big").expect("directory"), ["a", "b"]);
}

#[test]
fn test_client_oversized_request_refused_locally() {
    let f = Fake::start(|mut s| {
        let _ = read_request(&mut s);
    });
    let xs = Client::connect_path(&f.path).expect("connect");
    let big = vec![b'x'; 5000];
    assert!(matches!(
        xs.write("/a", &big),
        Err(XsClientError::RequestTooLong)
    ));
    assert!(matches!(
        xs.read("/a\0b"),
        Err(XsClientError::InvalidArgument(_))
    ));
}

#[test]
fn test_client_connect_missing_socket_is_connect_error() {
    let dir = TempDir::new("nosock");
    let e = Client::connect_path(dir.0.join("none")).expect_err("nothing listens");
    assert!(matches!(e, XsClientError::Connect { .. }), "{e:?}");
    assert_eq!(e.errno(), libc::ENOENT);
}
