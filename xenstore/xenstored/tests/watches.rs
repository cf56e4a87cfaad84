//! Watch firing rules: once when set, on the path and below, rm of a
//! subtree, set_perms, special paths, depth, relative paths, tokens,
//! duplicates.

mod common;

use std::time::Duration;

use common::Daemon;
use xenstore_wire::{Request, XsError};

const SHORT: Duration = Duration::from_millis(200);

fn ev(p: &str, t: &str) -> (String, String) {
    (p.to_owned(), t.to_owned())
}

#[test]
fn test_watch_fires_once_when_set_even_if_missing() {
    let d = Daemon::start();
    let mut c = d.client();
    c.watch("/not/there", "t").unwrap();
    assert_eq!(c.events_within(SHORT), vec![ev("/not/there", "t")]);
}

#[test]
fn test_watch_fires_for_node_and_descendants_not_siblings() {
    let d = Daemon::start();
    let mut c = d.client();
    c.watch("/a", "t").unwrap();
    let _ = c.events_within(SHORT);
    c.write("/a", "1").unwrap();
    c.write("/a/b/c", "1").unwrap();
    c.write("/ab", "1").unwrap();
    c.write("/b", "1").unwrap();
    assert_eq!(c.pending_events(), vec![ev("/a", "t"), ev("/a/b/c", "t")]);
}

#[test]
fn test_watch_root_sees_everything() {
    let d = Daemon::start();
    let mut c = d.client();
    c.watch("/", "r").unwrap();
    let _ = c.events_within(SHORT);
    c.write("/x/y", "").unwrap();
    assert_eq!(c.pending_events(), vec![ev("/x/y", "r")]);
}

#[test]
fn test_watch_rm_subtree_fires_for_removed_nodes() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write("/r/a/b", "").unwrap();
    c.write("/r/a/c", "").unwrap();
    c.watch("/r", "parent").unwrap();
    c.watch("/r/a/b", "child").unwrap();
    c.watch("/r/a/b/nonexistent", "deeper").unwrap();
    let _ = c.events_within(SHORT);
    c.rm("/r/a").unwrap();
    let mut got = c.pending_events();
    got.sort();
    assert_eq!(got, vec![ev("/r/a", "parent"), ev("/r/a/b", "child")]);
}

#[test]
fn test_watch_mkdir_existing_does_not_fire() {
    let d = Daemon::start();
    let mut c = d.client();
    c.mkdir("/m").unwrap();
    c.watch("/m", "t").unwrap();
    let _ = c.events_within(SHORT);
    c.mkdir("/m").unwrap();
    assert!(c.pending_events().is_empty());
    c.mkdir("/m/new").unwrap();
    assert_eq!(c.pending_events(), vec![ev("/m/new", "t")]);
}

#[test]
fn test_watch_set_perms_fires() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write("/p", "").unwrap();
    c.watch("/p", "t").unwrap();
    let _ = c.events_within(SHORT);
    c.set_perms("/p", "r0").unwrap();
    assert_eq!(c.pending_events(), vec![ev("/p", "t")]);
}

#[test]
fn test_watch_two_tokens_same_path_both_fire() {
    let d = Daemon::start();
    let mut c = d.client();
    c.watch("/t", "one").unwrap();
    c.watch("/t", "two").unwrap();
    let _ = c.events_within(SHORT);
    c.write("/t", "").unwrap();
    let mut got = c.pending_events();
    got.sort();
    assert_eq!(got, vec![ev("/t", "one"), ev("/t", "two")]);
}

#[test]
fn test_watch_duplicate_is_eexist() {
    let d = Daemon::start();
    let mut c = d.client();
    c.watch("/dup", "t").unwrap();
    assert_eq!(c.watch("/dup", "t"), Err(XsError::Eexist));
}

#[test]
fn test_watch_other_connections_get_events() {
    let d = Daemon::start();
    let mut a = d.client();
    let mut b = d.client();
    b.watch("/shared", "b").unwrap();
    let _ = b.events_within(SHORT);
    a.write("/shared/x", "1").unwrap();
    assert_eq!(b.event(SHORT), Some(ev("/shared/x", "b")));
}

#[test]
fn test_watch_closed_connection_watches_removed() {
    let d = Daemon::start();
    let mut a = d.client();
    {
        let mut b = d.client();
        b.watch("/gone", "b").unwrap();
    }
    // Writes after the watcher left are fine (and cost nothing).
    for _ in 0..10 {
        a.write("/gone/x", "1").unwrap();
    }
}

#[test]
fn test_watch_depth_limits_events() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(
        &Request::Watch {
            path: "/dp",
            token: b"d1",
            depth: Some(1),
        },
        0,
    )
    .unwrap();
    c.ok(
        &Request::Watch {
            path: "/dp",
            token: b"d0",
            depth: Some(0),
        },
        0,
    )
    .unwrap();
    let _ = c.events_within(SHORT);
    c.write("/dp", "").unwrap();
    c.write("/dp/a", "").unwrap();
    c.write("/dp/a/b", "").unwrap();
    let mut got = c.pending_events();
    got.sort();
    assert_eq!(
        got,
        vec![ev("/dp", "d0"), ev("/dp", "d1"), ev("/dp/a", "d1")]
    );
}

#[test]
fn test_watch_invalid_path_is_einval() {
    let d = Daemon::start();
    let mut c = d.client();
    assert_eq!(c.watch("/bad//path", "t"), Err(XsError::Einval));
    assert_eq!(c.watch("/bad path", "t"), Err(XsError::Einval));
}

#[test]
fn test_watch_tx_id_ignored() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(
        &Request::Watch {
            path: "/txw",
            token: b"t",
            depth: None,
        },
        4242,
    )
    .unwrap();
}

#[test]
fn test_special_watches_fire_on_introduce_and_release_only() {
    let d = Daemon::start();
    let mut c = d.client();
    c.watch("@introduceDomain", "i").unwrap();
    c.watch("@releaseDomain", "r").unwrap();
    let _ = c.events_within(SHORT);
    c.write("/local/domain/5/x", "").unwrap();
    assert!(
        c.pending_events().is_empty(),
        "ordinary writes do not fire specials"
    );
    c.ok(
        &Request::Introduce {
            domid: 5,
            mfn: 1,
            port: 1,
        },
        0,
    )
    .unwrap();
    c.ok(&Request::Release { domid: 5 }, 0).unwrap();
    assert_eq!(
        c.pending_events(),
        vec![ev("@introduceDomain", "i"), ev("@releaseDomain", "r")]
    );
}

#[test]
fn test_watch_many_unrelated_watches_do_not_fire() {
    let d = Daemon::start();
    let mut c = d.client();
    for i in 0..500 {
        c.watch(&format!("/unrelated/{i}"), "u").unwrap();
    }
    let _ = c.events_within(SHORT);
    c.write("/target", "").unwrap();
    assert!(c.pending_events().is_empty());
}
