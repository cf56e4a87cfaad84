//! Live migration of PVHVM guests (issue 14 item 3): `xl migrate --live` to
//! an `xl migrate-receive` on the same host (Xen allows localhost
//! migration), over our plain TCP transport (`--tcp`, `--listen`) and over
//! Xen's ssh rune with `-s` naming a local command (no sshd). The guest
//! moves while it runs its disk self-test or serves an HTTP download: the
//! self-test passes after the move, the download completes intact on the
//! same TCP connection, the pages per round decrease; a destination killed
//! half-way leaves the guest running on the source. Needs root and
//! `/dev/kvm` (the network tests also iproute2 and curl, tests/setup-host.sh;
//! they fail loudly without).
//!
//! Both ends run on one [`Host`] ([`receiver`] starts the destination side):
//! when the two-host rig lands, only that function changes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::net::domid;
use common::{ok, Host};

const T: Duration = Duration::from_secs(60);

fn passes(log: &str) -> usize {
    log.matches("disk self-test: PASS").count()
}

/// Waits until `name`'s VMM log holds `n` self-test passes; panics on a
/// FAIL, a crash or after [`T`].
fn wait_passes(h: &Host, name: &str, n: usize) -> String {
    let t0 = Instant::now();
    loop {
        let log = h.vmm_log(name);
        assert!(
            !log.contains("disk self-test: FAIL") && !log.contains("crashed"),
            "{log}"
        );
        if passes(&log) >= n {
            return log;
        }
        assert!(
            t0.elapsed() < T,
            "fewer than {n} passes within {T:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP port free at the time of the call.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address").port()
}

/// The destination side: `xl migrate-receive --listen 127.0.0.1:PORT` of
/// the destination host (here the same [`Host`]), started in the
/// background; returns it with the address the sender gives `--tcp`.
fn receiver(dest: &Host) -> (Child, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = dest
        .xl_command(&["migrate-receive", "--listen", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xl migrate-receive");
    // Wait for its "listening" line (the rest of stderr is read at the end).
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line)
        .expect("read the receiver's stderr");
    assert!(line.contains("listening on"), "receiver: {line}");
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    RECEIVER_LOGS.with(|l| l.borrow_mut().push(rest));
    (child, addr)
}

thread_local! {
    static RECEIVER_LOGS: std::cell::RefCell<Vec<std::thread::JoinHandle<String>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The stderr of the last receiver started on this thread (once it ended).
fn last_receiver_log() -> String {
    RECEIVER_LOGS
        .with(|l| l.borrow_mut().pop())
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default()
}

/// `xl migrate --live --tcp ADDR NAME` against a fresh receiver; returns the
/// sender's output (checked successful) and the receiver's log.
fn migrate_tcp(h: &Host, name: &str) -> (String, String) {
    let (mut recv, addr) = receiver(h);
    let sender = h
        .xl_command(&["migrate", "--live", "--tcp", name, &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xl migrate");
    let out = output_within(sender, T, &mut recv);
    let status = recv.wait().expect("wait for the receiver");
    let rlog = last_receiver_log();
    let sender = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && status.success(),
        "migration failed\nsender: {sender}\nreceiver ({status}): {rlog}\nVMM: {}",
        h.vmm_log(name)
    );
    (sender, rlog)
}

/// `child`'s output; after `limit` it and `other` are killed and the test
/// fails (a hung migration never hangs the test run).
fn output_within(child: Child, limit: Duration, other: &mut Child) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for xl"),
        Err(_) => {
            // SAFETY: kill(2) of the child this test started, by its pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = other.kill();
            panic!("xl migrate did not end within {limit:?}");
        }
    }
}

/// Pages of each round in the sender's report.
fn rounds(sender: &str) -> Vec<u64> {
    sender
        .lines()
        .filter_map(|l| l.strip_prefix("migration round "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// A self-test guest live-migrated twice over TCP on one host: each time
/// the domain runs on as NAME in a new domain, its vbd reconnects there,
/// the round the move cut and later ones pass (no request lost or done
/// twice), the source domain is gone, and the live rounds send fewer pages
/// than round 0.
#[test]
fn test_pvhvm_xl_migrate_tcp_localhost_keeps_disk_selftest_passing() {
    let mut h = Host::start("pvhvm-migrate-");
    let img = h.image("mg.img", 64);
    let disk = format!("format=raw, vdev=xvda, access=rw, target={}", img.display());
    let name = "pvh-mg";
    let cfg = h.config(name, "selftest rounds=100000", &[disk]);
    ok("xl create", &h.create(name, &cfg));
    wait_passes(&h, name, 1);
    let mut id = domid(&h, name);
    for move_no in 1..=2 {
        let t0 = Instant::now();
        let (sender, rlog) = migrate_tcp(&h, name);
        let took = t0.elapsed();
        let new_id = domid(&h, name);
        assert_ne!(new_id, id, "no new domain\n{sender}\n{rlog}");
        let list = ok("xl list", &h.xl(&["list"]));
        assert!(!list.contains("--incoming"), "{list}");
        assert!(!list.contains("--migratedaway"), "{list}");
        let log = h.wait_vmm_log(
            name,
            &format!("pvhvm-kernel: vbd 51712 reconnected in domain {new_id}"),
            T,
        );
        assert!(!log.contains("not supported"), "{log}");
        wait_passes(&h, name, 2);
        let r = rounds(&sender);
        println!("move {move_no}: {took:?}; pages per round {r:?}\n{sender}");
        assert!(r.len() >= 2, "{sender}");
        assert!(
            r[1..].iter().all(|p| *p < r[0]),
            "later rounds do not send fewer pages than round 0: {r:?}"
        );
        let be = format!("/local/domain/0/backend/vbd/{new_id}/51712/state");
        assert_eq!(h.xs_read(&be).as_deref(), Some("4"), "{be}");
        id = new_id;
    }
    ok("xl destroy", &h.xl(&["destroy", name]));
    h.wait_gone(name, T);
}
