//! The NBD engine against real servers: `qemu-nbd` on a Unix socket and
//! `nbdkit` on a free loopback port, each started by the test and killed
//! by a Drop guard. Negative: a server that goes away, a read-only export,
//! an unknown export, server error answers (nbdkit's error filter), and a
//! hand-written server that answers with the wrong handle (no real server
//! can be made to lie). Needs qemu-utils and nbdkit
//! (`apt-get install qemu-utils nbdkit`).

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_blkback::io::{nbd, DiskImage, NbdError, NbdImage, NbdTarget};
use xen_blkback::ImageError;

mod image_io;
use image_io::{pattern, read, write};

/// A server process, killed on drop.
struct Server {
    child: Child,
    uri: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(cmd: &str, args: &[&str]) -> Child {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd} ({e}): apt-get install qemu-utils nbdkit"))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `qemu-nbd` serving `file` (raw) as export `disk` on a Unix socket.
fn qemu_nbd(file: &Path, extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("nbd.sock");
    let s = sock.to_str().expect("utf-8");
    let mut args = vec!["-f", "raw", "-k", s, "-x", "disk", "--persistent"];
    args.extend_from_slice(extra);
    args.push(file.to_str().expect("utf-8"));
    let child = spawn("qemu-nbd", &args);
    // Listening, not only bound: the socket file appears at bind(2), and a
    // connect before listen(2) is refused (`--persistent` outlives the
    // probe).
    wait_for("qemu-nbd", || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    Server {
        child,
        uri: format!("nbd+unix:///disk?socket={s}"),
        _dir: dir,
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `nbdkit PLUGIN ARGS` on a free loopback port.
fn nbdkit(plugin_args: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let p = port.to_string();
    let mut args = vec!["-f", "-i", "127.0.0.1", "-p", &p, "-e", "disk"];
    args.extend_from_slice(plugin_args);
    let child = spawn("nbdkit", &args);
    wait_for("nbdkit", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Server {
        child,
        uri: format!("nbd://127.0.0.1:{port}/disk"),
        _dir: dir,
    }
}

fn image_file(len: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join("export.raw");
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(len))
        .expect("create the export");
    (dir, p)
}

#[test]
fn test_nbd_qemu_nbd_unix_write_flush_read_trim() {
    let (_d, file) = image_file(16 << 20);
    let srv = qemu_nbd(&file, &["-e", "8", "--discard=unmap"]);
    let img = NbdImage::open_uri(&srv.uri, false).expect("connect");
    assert_eq!(img.size(), 16 << 20);
    let f = img.transmission_flags();
    assert!(f & nbd::flags::SEND_FLUSH != 0, "{f:#x}");
    assert!(f & nbd::flags::SEND_TRIM != 0, "{f:#x}");
    assert!(img.discard_granularity().is_some());
    let mut d = pattern(1, 3 << 20);
    write(&img, 4096 * 7, &mut d).expect("write");
    img.flush().expect("flush");
    // Durable on the server's file, and read back through NBD.
    let on_disk = std::fs::read(&file).expect("read the export");
    assert!(on_disk[4096 * 7..4096 * 7 + d.len()] == d[..]);
    assert!(read(&img, 4096 * 7, d.len()).expect("read") == d);
    img.discard(1 << 20, 1 << 20).expect("trim");
    let z = read(&img, 1 << 20, 1 << 20).expect("read trimmed");
    assert!(z.iter().all(|&b| b == 0));
    // Out of range is refused before anything is sent.
    assert!(matches!(
        read(&img, (16 << 20) - 512, 1024),
        Err(ImageError::Nbd(NbdError::OutOfRange { .. }))
    ));
    assert!(!img.describe().is_empty());
}

#[test]
fn test_nbd_nbdkit_tcp_parallel_writes_use_several_connections() {
    let (_d, file) = image_file(32 << 20);
    let srv = nbdkit(&["file", file.to_str().expect("utf-8")]);
    let img = Arc::new(NbdImage::open_uri(&srv.uri, false).expect("connect"));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let img = Arc::clone(&img);
            std::thread::spawn(move || {
                for i in 0..64u64 {
                    let off = (i * 4 + t) * 65536;
                    let mut d = pattern(t * 100 + i, 65536);
                    write(img.as_ref(), off, &mut d).expect("write");
                    let back = read(img.as_ref(), off, 65536).expect("read");
                    assert!(back == d, "read back differs at {off}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    img.flush().expect("flush");
    assert!(img.connections() > 1, "{} connections", img.connections());
    let on_disk = std::fs::read(&file).expect("read the export");
    for t in 0..4u64 {
        for i in 0..64u64 {
            let off = ((i * 4 + t) * 65536) as usize;
            assert!(on_disk[off..off + 65536] == pattern(t * 100 + i, 65536)[..]);
        }
    }
}

#[test]
fn test_nbd_single_client_server_still_serves_parallel_callers() {
    // qemu-nbd's default --shared=1: extra connections stay in the listen
    // queue; the image gives up on them and shares the one it has.
    let (_d, file) = image_file(4 << 20);
    let srv = qemu_nbd(&file, &[]);
    let img = Arc::new(NbdImage::open_uri(&srv.uri, false).expect("connect"));
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let img = Arc::clone(&img);
            std::thread::spawn(move || {
                for i in 0..8u64 {
                    let mut d = pattern(t * 10 + i, 4096);
                    write(img.as_ref(), (t * 8 + i) * 4096, &mut d).expect("write");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    img.flush().expect("flush");
    assert_eq!(img.connections(), 1);
}

#[test]
fn test_nbd_read_only_export_attaches_only_read_only() {
    let (_d, file) = image_file(1 << 20);
    std::fs::write(&file, vec![0x3cu8; 1 << 20]).expect("fill");
    let srv = qemu_nbd(&file, &["-r", "-e", "2"]);
    let e = NbdImage::open_uri(&srv.uri, false).expect_err("read-only export");
    assert!(matches!(e, NbdError::ExportReadOnly(_)), "{e:?}");
    assert!(e.to_string().contains(&srv.uri));
    let img = NbdImage::open_uri(&srv.uri, true).expect("read-only attach");
    assert!(img.readonly());
    assert!(read(&img, 0, 4096)
        .expect("read")
        .iter()
        .all(|&b| b == 0x3c));
    let mut d = vec![0u8; 512];
    assert!(matches!(
        write(&img, 0, &mut d),
        Err(ImageError::Nbd(NbdError::ReadOnly))
    ));
}

#[test]
fn test_nbd_unknown_export_and_unreachable_server_fail_clearly() {
    let (_d, file) = image_file(1 << 20);
    let srv = qemu_nbd(&file, &[]);
    let wrong = srv.uri.replace("///disk", "///nope");
    let e = NbdImage::open_uri(&wrong, false).expect_err("unknown export");
    let msg = e.to_string();
    assert!(matches!(e, NbdError::Handshake { .. }), "{e:?}");
    assert!(msg.contains("nope") && msg.contains("refused"), "{msg}");
    let e = NbdImage::open_uri("nbd://127.0.0.1:1/disk", false).expect_err("nobody there");
    assert!(matches!(e, NbdError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("nbd://127.0.0.1:1/disk"));
}

#[test]
fn test_nbd_server_error_answers_fail_only_the_request() {
    let srv = nbdkit(&[
        "--filter=error",
        "memory",
        "1M",
        "error-pread=EIO",
        "error-pread-rate=1",
    ]);
    let img = NbdImage::open_uri(&srv.uri, false).expect("connect");
    let e = read(&img, 0, 4096).expect_err("EIO");
    assert!(
        matches!(e, ImageError::Nbd(NbdError::Server { errno: 5, .. })),
        "{e:?}"
    );
    assert!(!e.is_fatal());
    // Writes still work on the same connection.
    let mut d = vec![7u8; 4096];
    write(&img, 0, &mut d).expect("write after an error answer");
    img.flush().expect("flush");
}

#[test]
fn test_nbd_server_killed_breaks_the_image_without_panic() {
    let (_d, file) = image_file(1 << 20);
    let mut srv = qemu_nbd(&file, &["-e", "2"]);
    let img = NbdImage::open_uri(&srv.uri, false).expect("connect");
    read(&img, 0, 4096).expect("read while it runs");
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    let e = read(&img, 0, 4096).expect_err("server gone");
    assert!(e.is_fatal(), "{e:?}");
    let e = img.flush().expect_err("broken");
    assert!(
        matches!(e, ImageError::Nbd(NbdError::Broken { .. })),
        "{e:?}"
    );
}

/// A server that does the handshake correctly, then answers the first
/// request with handle `handle ^ flip` (or closes at once if `close`).
fn lying_server(dir: &Path, flip: u64, close: bool) -> (String, std::thread::JoinHandle<()>) {
    let sock = dir.join("liar.sock");
    let l = UnixListener::bind(&sock).expect("bind");
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut hello = Vec::new();
        hello.extend_from_slice(b"NBDMAGIC");
        hello.extend_from_slice(b"IHAVEOPT");
        hello.extend_from_slice(&3u16.to_be_bytes());
        s.write_all(&hello).expect("greet");
        let mut cflags = [0u8; 4];
        s.read_exact(&mut cflags).expect("client flags");
        let mut opt = [0u8; 16];
        s.read_exact(&mut opt).expect("option");
        let len = u32::from_be_bytes(opt[12..16].try_into().expect("4")) as usize;
        let mut data = vec![0u8; len];
        s.read_exact(&mut data).expect("option data");
        let reply = |t: u32, p: &[u8]| {
            let mut r = Vec::new();
            r.extend_from_slice(&0x0003_e889_0455_65a9u64.to_be_bytes());
            r.extend_from_slice(&7u32.to_be_bytes());
            r.extend_from_slice(&t.to_be_bytes());
            r.extend_from_slice(&(p.len() as u32).to_be_bytes());
            r.extend_from_slice(p);
            r
        };
        let mut info = vec![0u8, 0];
        info.extend_from_slice(&(1u64 << 20).to_be_bytes());
        info.extend_from_slice(&(1u16 | 4).to_be_bytes());
        s.write_all(&reply(3, &info)).expect("info");
        s.write_all(&reply(1, &[])).expect("ack");
        let mut req = [0u8; 28];
        if s.read_exact(&mut req).is_err() || close {
            return;
        }
        let handle = u64::from_be_bytes(req[8..16].try_into().expect("8"));
        let mut r = Vec::new();
        r.extend_from_slice(&0x6744_6698u32.to_be_bytes());
        r.extend_from_slice(&0u32.to_be_bytes());
        r.extend_from_slice(&(handle ^ flip).to_be_bytes());
        r.extend_from_slice(&[0u8; 4096]);
        let _ = s.write_all(&r);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    (format!("nbd+unix:///x?socket={}", sock.display()), h)
}

#[test]
fn test_nbd_wrong_handle_is_a_protocol_error_that_breaks_the_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (uri, h) = lying_server(dir.path(), 0xdead, false);
    let img = NbdImage::open_uri(&uri, false).expect("handshake is fine");
    let e = read(&img, 0, 4096).expect_err("wrong handle");
    assert!(
        matches!(e, ImageError::Nbd(NbdError::Protocol { .. })),
        "{e:?}"
    );
    assert!(e.is_fatal());
    assert!(format!("{e:?}").contains("handle"));
    let e = read(&img, 0, 4096).expect_err("broken");
    assert!(
        matches!(e, ImageError::Nbd(NbdError::Broken { .. })),
        "{e:?}"
    );
    drop(img);
    h.join().expect("server thread");
}

#[test]
fn test_nbd_connection_dropped_mid_request_is_fatal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (uri, h) = lying_server(dir.path(), 0, true);
    let img = NbdImage::open_uri(&uri, false).expect("handshake is fine");
    let e = read(&img, 0, 4096).expect_err("closed");
    assert!(matches!(e, ImageError::Nbd(NbdError::Io { .. })), "{e:?}");
    assert!(e.is_fatal());
    h.join().expect("server thread");
}

#[test]
fn test_nbd_target_uri_roundtrips() {
    let t = NbdTarget::parse("nbd://127.0.0.1:10809/e").expect("uri");
    assert_eq!(t.uri(), "nbd://127.0.0.1:10809/e");
}
