//! The client library against OUR xenstored on a private socket.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::Daemon;
use xenstore_client::{
    Client, Incoming, NbConnection, Perm, Request, XsError, XsOps, PERM_BOTH, PERM_NONE, PERM_READ,
};

fn client(d: &Daemon) -> Client {
    Client::connect_path(&d.socket).expect("connect to our xenstored")
}

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

#[test]
fn test_client_write_read_roundtrip() {
    let d = Daemon::start();
    let xs = client(&d);
    xs.write("/t/a", "hello").expect("write");
    assert_eq!(xs.read("/t/a").expect("read"), b"hello");
    xs.write("/t/bin", [0u8, 1, 255, b'\n'])
        .expect("binary write");
    assert_eq!(xs.read("/t/bin").expect("read"), [0u8, 1, 255, b'\n']);
    xs.write("/t/empty", "").expect("empty write");
    assert_eq!(xs.read("/t/empty").expect("read"), b"");
}

#[test]
fn test_client_read_missing_node_is_enoent() {
    let d = Daemon::start();
    let xs = client(&d);
    let e = xs.read("/does/not/exist").expect_err("missing");
    assert!(e.is_enoent(), "{e:?}");
    assert_eq!(xs.read_opt("/does/not/exist").expect("read_opt"), None);
    assert!(!xs.exists("/does/not/exist").expect("exists"));
}

#[test]
fn test_client_directory_lists_children_and_mkdir_rm() {
    let d = Daemon::start();
    let xs = client(&d);
    xs.write("/t/d/x", "1").expect("write");
    xs.write("/t/d/y", "2").expect("write");
    xs.mkdir("/t/d/z").expect("mkdir");
    let mut l = xs.directory("/t/d").expect("directory");
    l.sort();
    assert_eq!(l, vec!["x", "y", "z"]);
    assert_eq!(xs.read("/t/d/z").expect("mkdir'd node reads empty"), b"");
    xs.rm("/t/d").expect("rm");
    assert!(xs.read("/t/d/x").expect_err("gone").is_enoent());
}

#[test]
fn test_client_directory_large_falls_back_to_directory_part() {
    let d = Daemon::start();
    let xs = client(&d);
    // 400 names of 20 bytes: about 8 KiB of names, over one 4 KiB reply.
    let names: Vec<String> = (0..400).map(|i| format!("child-{i:014}")).collect();
    xs.transaction(|tx| {
        for n in &names {
            tx.write(&format!("/big/{n}"), "v")?;
        }
        Ok(())
    })
    .expect("populate");
    let e = xs
        .request(&Request::Directory { path: "/big" })
        .expect_err("one reply is too small");
    assert!(e.is(XsError::E2big), "{e:?}");
    let mut got = xs
        .directory("/big")
        .expect("directory with DIRECTORY_PART fallback");
    got.sort();
    assert_eq!(got, names);
    let mut parts = xs.directory_part("/big").expect("explicit DIRECTORY_PART");
    parts.sort();
    assert_eq!(parts, names);
    assert_eq!(
        xs.directory_part("/t-none").map_err(|e| e.xs_error()),
        Err(Some(XsError::Enoent))
    );
}

#[test]
fn test_client_perms_set_get_roundtrip() {
    let d = Daemon::start();
    let xs = client(&d);
    xs.write("/t/p", "v").expect("write");
    assert_eq!(
        xs.get_perms("/t/p").expect("get"),
        vec![Perm::new(0, PERM_NONE)]
    );
    let perms = [
        Perm::new(0, PERM_NONE),
        Perm::new(5, PERM_READ),
        Perm::new(7, PERM_BOTH),
    ];
    xs.set_perms("/t/p", &perms).expect("set");
    assert_eq!(xs.get_perms("/t/p").expect("get"), perms.to_vec());
    assert!(xs
        .set_perms("/t/none", &perms)
        .expect_err("missing")
        .is_enoent());
}

#[test]
fn test_client_transaction_commit_is_atomic() {
    let d = Daemon::start();
    let xs = client(&d);
    let other = client(&d);
    let tx = xs.transaction_start().expect("start");
    tx.write("/t/tx/a", "1").expect("write in tx");
    assert!(other
        .read("/t/tx/a")
        .expect_err("not visible before commit")
        .is_enoent());
    assert_eq!(tx.read("/t/tx/a").expect("visible inside"), b"1");
    tx.commit().expect("commit");
    assert_eq!(other.read("/t/tx/a").expect("visible after commit"), b"1");
}

#[test]
fn test_client_transaction_abort_discards() {
    let d = Daemon::start();
    let xs = client(&d);
    let tx = xs.transaction_start().expect("start");
    tx.write("/t/ab", "1").expect("write in tx");
    tx.abort().expect("abort");
    assert!(xs.read("/t/ab").expect_err("discarded").is_enoent());
    {
        let tx = xs.transaction_start().expect("start");
        tx.write("/t/ab2", "1").expect("write in tx");
    } // dropped: aborted
    assert!(xs.read("/t/ab2").expect_err("discarded").is_enoent());
}

#[test]
fn test_client_transaction_conflict_commit_eagain() {
    let d = Daemon::start();
    let xs = client(&d);
    let other = client(&d);
    xs.write("/t/c", "0").expect("init");
    let tx = xs.transaction_start().expect("start");
    assert_eq!(tx.read("/t/c").expect("read in tx"), b"0");
    other.write("/t/c", "other").expect("conflicting write");
    tx.write("/t/c", "mine").expect("write in tx");
    let e = tx.commit().expect_err("conflict");
    assert!(e.is_eagain(), "{e:?}");
    assert_eq!(xs.read("/t/c").expect("read"), b"other");
}

#[test]
fn test_client_transaction_helper_retries_on_conflict() {
    let d = Daemon::start();
    let xs = client(&d);
    let other = client(&d);
    xs.write("/t/n", "0").expect("init");
    let mut attempts = 0;
    let v = xs
        .transaction(|tx| {
            attempts += 1;
            let n: u32 = tx.read_string("/t/n")?.parse().expect("number");
            if attempts == 1 {
                other.write("/t/n", "10").expect("conflicting write");
            }
            tx.write("/t/n", (n + 1).to_string())?;
            Ok(n + 1)
        })
        .expect("transaction");
    assert_eq!(attempts, 2);
    assert_eq!(v, 11);
    assert_eq!(xs.read("/t/n").expect("read"), b"11");
}

#[test]
fn test_client_watch_fires_initially_and_on_change() {
    let d = Daemon::start();
    let xs = client(&d);
    let other = client(&d);
    xs.watch("/t/w", "tok").expect("watch");
    let first = xs
        .wait_watch_event(WAIT)
        .expect("event")
        .expect("initial event");
    assert_eq!((first.path.as_str(), first.token.as_str()), ("/t/w", "tok"));
    other.write("/t/w/child", "x").expect("write");
    let ev = xs
        .wait_watch_event(WAIT)
        .expect("event")
        .expect("change event");
    assert_eq!((ev.path.as_str(), ev.token.as_str()), ("/t/w/child", "tok"));
    xs.unwatch("/t/w", "tok").expect("unwatch");
    other.write("/t/w/child", "y").expect("write");
    assert_eq!(
        xs.wait_watch_event(Some(Duration::from_millis(200)))
            .expect("no error"),
        None
    );
}

#[test]
fn test_client_watch_events_interleave_with_replies() {
    let d = Daemon::start();
    let xs = client(&d);
    let other = client(&d);
    xs.write("/t/r", "stable").expect("write");
    xs.watch("/t/i", "i").expect("watch");
    let writer = std::thread::scope(|s| {
        let h = s.spawn(|| {
            for i in 0..200 {
                other
                    .write(&format!("/t/i/{}", i % 10), i.to_string())
                    .expect("write");
            }
        });
        // Replies must stay matched to requests while events arrive in between.
        for _ in 0..400 {
            assert_eq!(xs.read("/t/r").expect("read"), b"stable");
        }
        h.join()
    });
    writer.expect("writer thread");
    let mut n = 0;
    while let Some(ev) = xs
        .wait_watch_event(Some(Duration::from_secs(2)))
        .expect("event")
    {
        assert_eq!(ev.token, "i");
        n += 1;
        if n == 201 {
            break;
        }
    }
    assert_eq!(n, 201, "the initial event and one per write");
}

#[test]
fn test_client_shared_between_threads() {
    let d = Daemon::start();
    let xs = client(&d);
    std::thread::scope(|s| {
        for t in 0..4 {
            let xs = &xs;
            s.spawn(move || {
                for i in 0..100 {
                    let p = format!("/t/th/{t}/{i}");
                    xs.write(&p, i.to_string()).expect("write");
                    assert_eq!(xs.read_string(&p).expect("read"), i.to_string());
                }
            });
        }
    });
    assert_eq!(xs.directory("/t/th").expect("dir").len(), 4);
}

#[test]
fn test_client_reset_watches_removes_all() {
    let d = Daemon::start();
    let xs = client(&d);
    let other = client(&d);
    xs.watch("/t/rw", "a").expect("watch");
    xs.reset_watches().expect("reset");
    other.write("/t/rw/x", "1").expect("write");
    assert_eq!(
        xs.wait_watch_event(Some(Duration::from_millis(200)))
            .expect("no error"),
        None
    );
    xs.watch("/t/rw", "a")
        .expect("same watch again after reset");
}

#[test]
fn test_client_domain_queries_for_dom0() {
    let d = Daemon::start();
    let xs = client(&d);
    assert_eq!(xs.get_domain_path(0).expect("path"), "/local/domain/0");
    assert_eq!(xs.get_domain_path(7).expect("path"), "/local/domain/7");
    assert!(xs.is_domain_introduced(0).expect("dom0 introduced"));
}

#[test]
fn test_client_duplicate_watch_is_eexist() {
    let d = Daemon::start();
    let xs = client(&d);
    xs.watch("/t/dup", "t").expect("watch");
    assert!(xs
        .watch("/t/dup", "t")
        .expect_err("duplicate")
        .is(XsError::Eexist));
    assert!(xs
        .unwatch("/t/nowatch", "t")
        .expect_err("no such watch")
        .is_enoent());
}

#[test]
fn test_nbconnection_requests_and_watch_via_poll() {
    let d = Daemon::start();
    let mut nb = NbConnection::connect_path(&d.socket).expect("connect");
    let w = nb
        .send(
            0,
            &Request::Write {
                path: "/t/nb",
                value: b"v",
            },
        )
        .expect("send");
    let r = nb.send(0, &Request::Read { path: "/t/nb" }).expect("send");
    let wt = nb
        .send(
            0,
            &Request::Watch {
                path: "/t/nb",
                token: b"nb",
                depth: None,
            },
        )
        .expect("send");
    let mut replies = std::collections::HashMap::new();
    let mut events = Vec::new();
    for _ in 0..100 {
        if replies.len() == 3 && !events.is_empty() {
            break;
        }
        let mut pfd = libc::pollfd {
            fd: nb.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1, bounded timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        assert!(n >= 0, "poll failed");
        for m in nb.receive().expect("receive") {
            match m {
                Incoming::Reply { req_id, result, .. } => {
                    replies.insert(req_id, result.expect("success"));
                }
                Incoming::WatchEvent(e) => events.push(e),
            }
        }
    }
    assert_eq!(replies[&w], b"OK\0");
    assert_eq!(replies[&r], b"v");
    assert_eq!(replies[&wt], b"OK\0");
    assert_eq!(events[0].path, "/t/nb");
    assert!(!nb.wants_write());
}

#[test]
fn test_client_state_survives_daemon_restart() {
    let d = Daemon::start();
    {
        let xs = client(&d);
        xs.write("/t/persist/a", "kept").expect("write");
        xs.set_perms(
            "/t/persist/a",
            &[Perm::new(0, PERM_NONE), Perm::new(3, PERM_READ)],
        )
        .expect("perms");
    }
    let dir = d.stop();
    let d = Daemon::start_in(dir);
    let xs = client(&d);
    assert_eq!(
        xs.read("/t/persist/a").expect("read after restart"),
        b"kept"
    );
    assert_eq!(
        xs.get_perms("/t/persist/a").expect("perms after restart"),
        vec![Perm::new(0, PERM_NONE), Perm::new(3, PERM_READ)]
    );
}
