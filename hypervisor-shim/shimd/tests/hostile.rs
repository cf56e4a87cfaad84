//! Hostile inputs: garbage in a guest's grant table, a guest flipping its
//! entries during maps, malformed control messages, a guest asking for Dom0
//! operations. The mapper and the daemon must answer with Xen's error codes
//! and keep running.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{hex, Peer, Shimd};
use xen_abi::grant_table::*;
use xen_shim_dom0::Gntdev;
use xen_shim_proto::grant::combo;
use xen_shim_proto::mem::GuestMemory;
use xen_shim_proto::protocol::{DomainConfig, Message, Request};
use xen_shim_proto::sys;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn test_hostile_random_grant_table_fails_with_gntst_codes() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "garbage", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let info = ctl.domain_info(d.domid).expect("info");
    let frame0 = info.layout.grant_frame_gfn(0).expect("frame 0");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut okays = 0;
    let allowed = [GNTST_general_error, GNTST_bad_page, GNTST_bad_gntref];

    for round in 0..8 {
        // Random bytes; in later rounds, entries biased towards "valid for
        // Dom0" with random frames so the frame checks are exercised too.
        let mut page = vec![0u8; 4096];
        for e in page.chunks_mut(8) {
            let r = xorshift(&mut seed);
            e.copy_from_slice(&r.to_le_bytes());
            if round >= 4 {
                e[0] = (r as u8 & 0b1110_0100) | GTF_permit_access as u8;
                e[1] = 0;
                e[2] = 0;
                e[3] = 0;
                if round >= 6 {
                    let f = (r >> 40) as u32 % 2048;
                    e[4..8].copy_from_slice(&f.to_le_bytes());
                }
            }
        }
        peer.ok(&format!("write {frame0} 0 {}", hex(&page)));
        for gref in 0..512u32 {
            for writable in [false, true] {
                match gntdev.map_grant_ref(d.domid, gref, writable) {
                    Ok(m) => {
                        okays += 1;
                        m.unmap().expect("unmap of a garbage grant");
                    }
                    Err(e) => assert!(
                        allowed.contains(&e.gntst()),
                        "ref {gref}: unexpected {e} ({})",
                        e.gntst()
                    ),
                }
            }
        }
    }

    assert!(okays > 0, "some biased entries were valid");
    ctl.ping().expect("the daemon is alive");
    // A frame beyond the domain's memory, or one of its grant frames, is bad_page.
    peer.ok(&format!("grant 5 0 {} rw", info.layout.total_pages() + 10));
    let e = gntdev
        .map_grant_ref(d.domid, 5, false)
        .expect_err("frame beyond memory");
    assert_eq!(e.gntst(), GNTST_bad_page);
    peer.ok(&format!("grant 6 0 {frame0} rw"));
    let e = gntdev
        .map_grant_ref(d.domid, 6, true)
        .expect_err("a grant frame itself");
    assert_eq!(e.gntst(), GNTST_bad_page);
    assert_eq!(peer.cmd("end 6"), "ok", "a failed map leaves no pin");
}

#[test]
fn test_hostile_flag_flipping_guest_never_hangs_the_mapper() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "flipper", 4);
    let _peer = Peer::spawn(&shimd.socket, &d);
    let files = ctl.domain_files(d.domid).expect("files");
    // The test plays the hostile guest: it maps the guest's memory (as the
    // guest could) and flips entry 5 as fast as it can.
    let mem =
        Arc::new(GuestMemory::map(&files.memory, files.info.layout).expect("map guest memory"));
    let frame0 = files.info.layout.grant_frame_gfn(0).expect("frame 0");
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (mem, stop) = (Arc::clone(&mem), Arc::clone(&stop));
        std::thread::spawn(move || {
            let page = mem.page(frame0).expect("grant frame");
            page.atomic_u32(5 * 8 + 4)
                .expect("frame word")
                .store(3, Ordering::SeqCst);
            let hdr = page.atomic_u32(5 * 8).expect("entry word");
            let good = combo(GTF_permit_access, 0);
            let bad = combo(GTF_permit_access | GTF_readonly, 9);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                hdr.store(if n % 2 == 0 { good } else { bad }, Ordering::SeqCst);
                n += 1;
            }
            hdr.store(good, Ordering::SeqCst);
        })
    };
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");

    let (mut ok, mut failed) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        let t = Instant::now();
        match gntdev.map_grant_ref(d.domid, 5, true) {
            Ok(m) => {
                ok += 1;
                m.unmap().expect("unmap");
            }
            Err(e) => {
                failed += 1;
                assert_eq!(e.gntst(), GNTST_general_error, "{e}");
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a map took {:?}",
            t.elapsed()
        );
    }
    stop.store(true, Ordering::SeqCst);
    flipper.join().expect("flipper thread");

    assert!(ok + failed > 10, "maps completed: ok {ok} failed {failed}");
    // Nothing stays pinned: the entry is revocable.
    let t = xen_shim_proto::grant::SharedGrantTable::new(&mem, 1, 1).expect("table");
    xen_shim_proto::grant::end_access(&t, 5).expect("revocable after the storm");
}

fn raw_connect(path: &std::path::Path) -> OwnedFd {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let s = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    connect(s.as_raw_fd(), &UnixAddr::new(path).expect("addr")).expect("connect");
    s
}

fn raw_call(s: &OwnedFd, data: &[u8], fds: &[i32]) -> Message {
    sys::send_msg(s.as_fd(), data, fds).expect("send");
    let (bytes, _fds) = sys::recv_msg(s.as_fd(), false)
        .expect("recv")
        .expect("a reply");
    serde_json::from_slice(&bytes).expect("the daemon's reply is valid JSON")
}

fn errno_of(m: &Message) -> i32 {
    match m {
        Message::Reply { result: Err(e) } => e.errno,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn test_hostile_malformed_control_messages_get_errors_and_fds_are_closed() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let s = raw_connect(&shimd.socket);
    let pong = raw_call(&s, &serde_json::to_vec(&Request::Ping).expect("json"), &[]);
    assert!(
        matches!(pong, Message::Reply { result: Ok(_) }),
        "accepted: {pong:?}"
    );
    let fds_before = shimd.fd_count();
    let junk: Vec<OwnedFd> = (0..50).map(|_| sys::eventfd().expect("eventfd")).collect();
    let raw: Vec<i32> = junk.iter().map(|f| f.as_raw_fd()).collect();

    let garbage = raw_call(&s, b"\xff\xfe not json", &[]);
    let unknown = raw_call(&s, br#"{"op":"format_disk"}"#, &raw);
    let early = raw_call(
        &s,
        &serde_json::to_vec(&Request::ListDomains).expect("json"),
        &[],
    );

    assert_eq!(errno_of(&garbage), libc::EINVAL);
    assert_eq!(errno_of(&unknown), libc::EINVAL);
    assert_eq!(errno_of(&early), libc::EPERM, "identify first");
    drop(junk);
    assert_eq!(
        shimd.fd_count(),
        fds_before,
        "unsolicited fds are closed by the daemon"
    );
    ctl.ping().expect("the daemon is alive");
}

#[test]
fn test_hostile_guest_cannot_use_dom0_operations() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "sneaky", 4);
    let other = shimd.create(&ctl, "other", 4);
    let s = raw_connect(&shimd.socket);
    let attach = Request::AttachGuest {
        domid: d.domid,
        token: d.token.clone(),
    };
    let m = raw_call(&s, &serde_json::to_vec(&attach).expect("json"), &[]);
    assert!(matches!(m, Message::Reply { result: Ok(_) }), "{m:?}");
    let call = |r: Request| errno_of(&raw_call(&s, &serde_json::to_vec(&r).expect("json"), &[]));

    assert_eq!(
        call(Request::CreateDomain(DomainConfig::pv("mine", 4))),
        libc::EPERM
    );
    assert_eq!(
        call(Request::DestroyDomain { domid: other.domid }),
        libc::EPERM
    );
    assert_eq!(call(Request::DomainFds { domid: other.domid }), libc::EPERM);
    assert_eq!(call(Request::ListDomains), libc::EPERM);
    assert_eq!(
        call(Request::Status {
            dom: other.domid,
            port: 1
        }),
        libc::EPERM
    );
    assert_eq!(
        call(Request::AllocUnbound {
            dom: other.domid,
            remote_dom: 0
        }),
        libc::EPERM
    );
    assert_eq!(
        call(Request::SetupTable {
            dom: other.domid,
            nr_frames: 2
        }),
        libc::EPERM
    );
    assert_eq!(call(Request::Reset { dom: other.domid }), libc::EPERM);
    assert_eq!(call(Request::MapperFds { domid: other.domid }), libc::EPERM);
    assert_eq!(
        call(Request::DomainInfo { domid: other.domid }),
        libc::EPERM
    );
    assert_eq!(call(Request::QuerySize { dom: other.domid }), libc::EPERM);
    assert_eq!(
        call(Request::PauseDomain { domid: other.domid }),
        libc::EPERM
    );
    assert_eq!(
        call(Request::ShutdownDomain {
            domid: other.domid,
            reason: xen_shim_proto::protocol::ShutdownReason::Poweroff
        }),
        libc::EPERM
    );
    // A connection bound to a domain stays bound to it.
    assert_eq!(
        call(Request::AttachGuest {
            domid: other.domid,
            token: other.token.clone()
        }),
        libc::EINVAL
    );
    assert_eq!(call(Request::HelloDom0), libc::EINVAL);
    // Binding another guest's port that is not offered to us.
    assert_eq!(
        call(Request::BindInterdomain {
            remote_dom: other.domid,
            remote_port: 1
        }),
        libc::EINVAL
    );
    ctl.ping().expect("the daemon is alive");
    assert_eq!(ctl.list_domains().expect("list").len(), 3);
}

/// Runs `f` in a forked child as domain `domid`'s jailed uid and gid
/// (`xen_jail::domain_uid`); returns its exit code.
fn as_domain_uid(domid: u16, f: impl FnOnce() -> i32) -> i32 {
    let uid = xen_jail::domain_uid(domid);
    // SAFETY: fork in a test; the child changes its ids, runs `f`, _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: raw id changes of this (single-threaded) child.
        let ok = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(uid, uid, uid) == 0
                && libc::setresuid(uid, uid, uid) == 0
        };
        let code = if ok { f() } else { 100 };
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    let mut st = 0;
    // SAFETY: waits for our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    assert!(libc::WIFEXITED(st), "child status {st:#x}");
    libc::WEXITSTATUS(st)
}

#[test]
fn test_hostile_domain_uid_cannot_open_memory_files_or_connect() {
    use std::os::unix::fs::PermissionsExt;
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "jailed", 4);
    let other = shimd.create(&ctl, "victim", 4);
    let mode = std::fs::metadata(&shimd.mem_dir)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the memory directory is private");
    let files = shimd.mem_files();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(&format!("dom{}-", other.domid))),
        "the other domain's files: {files:?}"
    );
    let paths: Vec<_> = files.iter().map(|f| shimd.mem_dir.join(f)).collect();
    let (mem_dir, socket) = (shimd.mem_dir.clone(), shimd.socket.clone());
    let code = as_domain_uid(d.domid, || {
        let denied = |e: &std::io::Error| e.raw_os_error() == Some(libc::EACCES);
        match std::fs::read_dir(&mem_dir) {
            Err(e) if denied(&e) => {}
            _ => return 1,
        }
        for p in &paths {
            match std::fs::OpenOptions::new().read(true).open(p) {
                Err(e) if denied(&e) => {}
                _ => return 2,
            }
        }
        match xen_shim_proto::client::Conn::connect(&socket) {
            Err(xen_shim_proto::protocol::ControlError::Connect { source, .. })
                if denied(&source) => {}
            _ => return 3,
        }
        // Its own domain socket: an attach as itself only.
        let own = xen_shim_proto::domain_socket_dir(&socket, d.domid)
            .join(xen_shim_proto::DOMAIN_SOCKET_NAME);
        let theirs = xen_shim_proto::domain_socket_dir(&socket, other.domid)
            .join(xen_shim_proto::DOMAIN_SOCKET_NAME);
        match xen_shim_proto::client::Conn::connect(&theirs) {
            Err(xen_shim_proto::protocol::ControlError::Connect { source, .. })
                if denied(&source) => {}
            _ => return 4,
        }
        let Ok(mut c) = xen_shim_proto::client::Conn::connect(&own) else {
            return 5;
        };
        let refused = |r: Result<_, xen_shim_proto::protocol::ControlError>| matches!(r, Err(xen_shim_proto::protocol::ControlError::Remote(w)) if w.errno == libc::EPERM);
        if !refused(c.call(&Request::HelloDom0, &[])) {
            return 6;
        }
        let as_other = Request::AttachGuest {
            domid: other.domid,
            token: other.token.clone(),
        };
        if !refused(c.call(&as_other, &[])) {
            return 7;
        }
        if !refused(c.call(&Request::ListDomains, &[])) {
            return 8;
        }
        let as_self = Request::AttachGuest {
            domid: d.domid,
            token: d.token.clone(),
        };
        if c.call(&as_self, &[]).is_err() {
            return 9;
        }
        0
    });
    assert_eq!(
        code, 0,
        "1: listed the memory directory, 2: opened a memory file, 3: connected to the control \
         socket, 4: connected to another domain's socket, 5: could not connect to its own, \
         6-8: Dom0, another domain or a Dom0 op allowed on it, 9: could not attach as itself"
    );
    ctl.ping().expect("the daemon is alive");
}
