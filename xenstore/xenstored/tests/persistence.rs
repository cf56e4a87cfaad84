//! State survives a restart: the binary is killed with SIGKILL after
//! acknowledged writes and everything is found after the restart.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use common::ChildDaemon;
use xenstore_wire::{Request, XsError};

fn dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::Builder::new()
        .prefix("xenstored-persist-")
        .tempdir()
        .unwrap();
    let sock = t.path().join("socket");
    let state = t.path().join("state");
    (t, sock, state)
}

#[test]
fn test_persist_sigkill_after_acked_writes_all_found() {
    let (_t, sock, state) = dirs();
    let mut d = ChildDaemon::spawn(&sock, Some(&state), &[]);
    let mut c = d.client();
    for i in 0..300 {
        c.write(&format!("/p/k{i}"), &format!("v{i}")).unwrap();
    }
    c.rm("/p/k7").unwrap();
    c.set_perms("/p/k8", "b3 r4").unwrap();
    c.ok(
        &Request::Introduce {
            domid: 3,
            mfn: 77,
            port: 5,
        },
        0,
    )
    .unwrap();
    c.ok(
        &Request::SetQuota {
            domid: Some(3),
            quota: "nodes",
            value: 123,
        },
        0,
    )
    .unwrap();
    c.ok(
        &Request::SetQuota {
            domid: None,
            quota: "watches",
            value: 99,
        },
        0,
    )
    .unwrap();
    let t = c.start();
    c.write_tx(t, "/p/tx", "committed").unwrap();
    c.end(t, true).unwrap();
    let t = c.start();
    c.write_tx(t, "/p/tx-open", "never").unwrap();
    d.kill9();

    let d = ChildDaemon::spawn(&sock, Some(&state), &[]);
    let mut c = d.client();
    for i in 0..300 {
        if i == 7 {
            assert_eq!(c.read("/p/k7"), Err(XsError::Enoent));
            continue;
        }
        assert_eq!(
            c.read(&format!("/p/k{i}")).unwrap(),
            format!("v{i}").as_bytes()
        );
    }
    assert_eq!(c.get_perms("/p/k8").unwrap(), "b3 r4");
    assert_eq!(c.read("/p/tx").unwrap(), b"committed");
    assert_eq!(c.read("/p/tx-open"), Err(XsError::Enoent));
    assert_eq!(
        c.call(&Request::IsDomainIntroduced { domid: 3 }, 0)
            .unwrap(),
        b"T\0"
    );
    assert_eq!(
        c.call(
            &Request::GetQuota {
                domid: Some(3),
                quota: Some("nodes")
            },
            0
        )
        .unwrap(),
        b"123\0"
    );
    assert_eq!(
        c.call(
            &Request::GetQuota {
                domid: None,
                quota: Some("watches")
            },
            0
        )
        .unwrap(),
        b"99\0"
    );
    assert_eq!(c.dir("/p").unwrap().len(), 300);
}

#[test]
fn test_persist_sigkill_during_write_stream_keeps_every_acked_write() {
    let (_t, sock, state) = dirs();
    let mut d = ChildDaemon::spawn(&sock, Some(&state), &[]);
    let acked = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let sock = sock.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = common::Client::socket(&sock);
            // The client panics when the daemon dies mid-request: catch it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for i in 0..1_000_000u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if c.write(&format!("/s/{i}"), &i.to_string()).is_err() {
                        break;
                    }
                    acked.store(i + 1, Ordering::SeqCst);
                }
            }));
        })
    };
    while acked.load(Ordering::SeqCst) < 500 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    d.kill9();
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let n = acked.load(Ordering::SeqCst);

    let d = ChildDaemon::spawn(&sock, Some(&state), &[]);
    let mut c = d.client();
    for i in 0..n {
        assert_eq!(
            c.read(&format!("/s/{i}")).unwrap(),
            i.to_string().as_bytes(),
            "acknowledged write {i} of {n} lost"
        );
    }
}

#[test]
fn test_persist_torn_journal_tail_ignored() {
    let (_t, sock, state) = dirs();
    let mut d = ChildDaemon::spawn(&sock, Some(&state), &[]);
    let mut c = d.client();
    c.write("/torn/a", "1").unwrap();
    d.kill9();
    let mut j = std::fs::OpenOptions::new()
        .append(true)
        .open(state.join("journal"))
        .unwrap();
    j.write_all(&[0x40, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(j);
    let d = ChildDaemon::spawn(&sock, Some(&state), &[]);
    let mut c = d.client();
    assert_eq!(c.read("/torn/a").unwrap(), b"1");
    c.write("/torn/b", "2").unwrap();
}

#[test]
fn test_persist_compaction_then_sigkill_keeps_state() {
    let (_t, sock, state) = dirs();
    let mut d = ChildDaemon::spawn(&sock, Some(&state), &[]);
    let mut c = d.client();
    let big = "z".repeat(3000);
    // > 4 MiB of journal: at least one compaction (snapshot + truncate).
    for i in 0..1600 {
        c.write(&format!("/big/{}", i % 50), &format!("{i}{big}"))
            .unwrap();
    }
    let jlen = std::fs::metadata(state.join("journal")).unwrap().len();
    assert!(jlen < 4 << 20, "journal was compacted ({jlen} bytes)");
    d.kill9();
    let d = ChildDaemon::spawn(&sock, Some(&state), &[]);
    let mut c = d.client();
    for k in 0..50 {
        let last = 1600 - 50 + k;
        assert_eq!(
            c.read(&format!("/big/{k}")).unwrap(),
            format!("{last}{big}").as_bytes()
        );
    }
}

#[test]
fn test_persist_clean_stop_and_no_persist_mode() {
    let (_t, sock, state) = dirs();
    let d = ChildDaemon::spawn(&sock, Some(&state), &[]);
    let mut c = d.client();
    c.write("/clean", "1").unwrap();
    // SIGTERM: orderly shutdown removes the socket.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut d = d;
    let st = d.child.wait().unwrap();
    assert!(st.success(), "clean exit: {st:?}");
    assert!(!sock.exists(), "socket removed");
    let d = ChildDaemon::spawn(&sock, Some(&state), &[]);
    assert_eq!(d.client().read("/clean").unwrap(), b"1");
    drop(d);
    // --no-persist starts empty.
    let d = ChildDaemon::spawn(&sock, None, &[]);
    assert_eq!(d.client().read("/clean"), Err(XsError::Enoent));
}
