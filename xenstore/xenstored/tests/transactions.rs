//! Transaction semantics: the cases of QEMU's `tests/unit/test-xs-node.c`
//! (abort, fail, succeed, rm, resurrect) plus the per-node conflict rule:
//! EAGAIN only when a node the transaction read or wrote changed.

mod common;

use std::time::Duration;

use common::Daemon;
use xenstore_wire::XsError;

const SHORT: Duration = Duration::from_millis(200);
const P: &str = "/local/domain/1/some/relative/path";

#[test]
fn test_tx_abort_discards_changes_and_events() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write(P, "something").unwrap();
    c.watch(P, "w").unwrap();
    let _ = c.events_within(SHORT);
    let t = c.start();
    c.write_tx(t, P, "changed").unwrap();
    assert_eq!(c.read(P).unwrap(), b"something", "invisible outside the tx");
    assert_eq!(c.read_tx(t, P).unwrap(), b"changed", "visible inside");
    c.end(t, false).unwrap();
    assert_eq!(c.read(P).unwrap(), b"something");
    assert!(c.pending_events().is_empty(), "aborted tx fires nothing");
}

#[test]
fn test_tx_fail_same_node_changed_outside_is_eagain() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write(P, "something").unwrap();
    let t = c.start();
    c.write_tx(t, P, "in tx").unwrap();
    c.write(P, "another thing").unwrap();
    assert_eq!(c.end(t, true), Err(XsError::Eagain));
    assert_eq!(c.read(P).unwrap(), b"another thing");
}

#[test]
fn test_tx_fail_read_node_changed_outside_is_eagain() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write("/x/read", "1").unwrap();
    let t = c.start();
    assert_eq!(c.read_tx(t, "/x/read").unwrap(), b"1");
    c.write_tx(t, "/x/other", "2").unwrap();
    c.write("/x/read", "changed").unwrap();
    assert_eq!(
        c.read_tx(t, "/x/read").unwrap(),
        b"1",
        "snapshot of first read"
    );
    assert_eq!(c.end(t, true), Err(XsError::Eagain));
    assert_eq!(c.read("/x/other"), Err(XsError::Enoent));
}

#[test]
fn test_tx_unrelated_commit_does_not_conflict() {
    let d = Daemon::start();
    let mut c = d.client();
    let mut other = d.client();
    c.write("/u/a", "1").unwrap();
    c.write("/u/b", "1").unwrap();
    let t = c.start();
    c.write_tx(t, "/u/a", "2").unwrap();
    // Another client changes an unrelated node, directly and in its own
    // committed transaction.
    other.write("/u/b", "3").unwrap();
    let t2 = other.start();
    other.write_tx(t2, "/elsewhere/n", "x").unwrap();
    other.end(t2, true).unwrap();
    c.end(t, true).unwrap();
    assert_eq!(c.read("/u/a").unwrap(), b"2");
    assert_eq!(c.read("/u/b").unwrap(), b"3");
}

#[test]
fn test_tx_succeed_visible_and_watch_fires_at_commit() {
    let d = Daemon::start();
    let mut c = d.client();
    let mut w = d.client();
    c.write(P, "something").unwrap();
    w.watch(P, "w").unwrap();
    let _ = w.events_within(SHORT);
    let t = c.start();
    c.write_tx(t, P, "committed").unwrap();
    assert!(w.pending_events().is_empty(), "no event before commit");
    c.end(t, true).unwrap();
    assert_eq!(c.read(P).unwrap(), b"committed");
    assert_eq!(w.event(SHORT), Some((P.into(), "w".into())));
}

#[test]
fn test_tx_rm_subtree_invisible_until_commit() {
    let d = Daemon::start();
    let mut c = d.client();
    let mut w = d.client();
    c.write("/some/deep/dark/relative/path", "something")
        .unwrap();
    w.watch("/some/deep/dark/relative/path", "w").unwrap();
    let _ = w.events_within(SHORT);
    let t = c.start();
    c.rm_tx(t, "/some/deep/dark").unwrap();
    assert_eq!(
        c.read_tx(t, "/some/deep/dark/relative/path"),
        Err(XsError::Enoent)
    );
    assert_eq!(
        c.read("/some/deep/dark/relative/path").unwrap(),
        b"something"
    );
    c.end(t, true).unwrap();
    assert_eq!(
        c.read("/some/deep/dark/relative/path"),
        Err(XsError::Enoent)
    );
    assert_eq!(c.read("/some/deep/dark"), Err(XsError::Enoent));
    assert_eq!(c.dir("/some/deep").unwrap(), Vec::<String>::new());
    assert_eq!(
        w.event(SHORT),
        Some(("/some/deep/dark/relative/path".into(), "w".into()))
    );
}

#[test]
fn test_tx_resurrect_rm_then_recreate_in_same_tx() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write("/some/deep/dark/relative/path", "something")
        .unwrap();
    c.write("/some/deep/dark/different/path", "something")
        .unwrap();
    let t = c.start();
    c.rm_tx(t, "/some/deep/dark").unwrap();
    c.write_tx(t, "/some/deep/dark/relative/path", "resurrected")
        .unwrap();
    assert_eq!(
        c.read("/some/deep/dark/different/path").unwrap(),
        b"something"
    );
    c.end(t, true).unwrap();
    assert_eq!(
        c.read("/some/deep/dark/relative/path").unwrap(),
        b"resurrected"
    );
    assert_eq!(
        c.read("/some/deep/dark/different/path"),
        Err(XsError::Enoent)
    );
    assert_eq!(c.dir("/some/deep/dark").unwrap(), vec!["relative"]);
}

#[test]
fn test_tx_resurrect_node_deleted_outside_after_read_is_eagain() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write("/some/deep/dark/relative/path", "something")
        .unwrap();
    let t = c.start();
    assert_eq!(
        c.read_tx(t, "/some/deep/dark/relative/path").unwrap(),
        b"something"
    );
    c.rm("/some/deep/dark").unwrap();
    c.write_tx(t, "/some/deep/dark/relative/path", "again")
        .unwrap();
    assert_eq!(c.end(t, true), Err(XsError::Eagain));
    assert_eq!(
        c.read("/some/deep/dark/relative/path"),
        Err(XsError::Enoent)
    );
}

#[test]
fn test_tx_create_under_missing_node_then_created_outside_is_eagain() {
    let d = Daemon::start();
    let mut c = d.client();
    let t = c.start();
    c.write_tx(t, "/fresh/node", "tx").unwrap();
    c.write("/fresh", "outside").unwrap();
    assert_eq!(c.end(t, true), Err(XsError::Eagain));
}

#[test]
fn test_tx_sibling_creation_conflicts_through_parent_children_list() {
    // Creating /s/a in a transaction changes /s's children list; another
    // client creating /s/b changes it too: Xen's per-node generation counts
    // make this a conflict (the parent was written by both).
    let d = Daemon::start();
    let mut c = d.client();
    c.mkdir("/s").unwrap();
    let t = c.start();
    c.write_tx(t, "/s/a", "1").unwrap();
    c.write("/s/b", "2").unwrap();
    assert_eq!(c.end(t, true), Err(XsError::Eagain));
}

#[test]
fn test_tx_two_clients_concurrent_disjoint_commits_both_succeed() {
    let d = Daemon::start();
    let mut a = d.client();
    let mut b = d.client();
    a.write("/c/a", "0").unwrap();
    b.write("/c/b", "0").unwrap();
    let ta = a.start();
    let tb = b.start();
    a.write_tx(ta, "/c/a", "1").unwrap();
    b.write_tx(tb, "/c/b", "1").unwrap();
    a.end(ta, true).unwrap();
    b.end(tb, true).unwrap();
    assert_eq!(a.read("/c/a").unwrap(), b"1");
    assert_eq!(a.read("/c/b").unwrap(), b"1");
}

#[test]
fn test_tx_directory_in_tx_sees_tx_children() {
    let d = Daemon::start();
    let mut c = d.client();
    c.mkdir("/dd").unwrap();
    let t = c.start();
    c.write_tx(t, "/dd/x", "").unwrap();
    let p = c
        .call(&xenstore_wire::Request::Directory { path: "/dd" }, t)
        .unwrap();
    assert_eq!(p, b"x\0");
    assert_eq!(c.dir("/dd").unwrap(), Vec::<String>::new());
    c.end(t, false).unwrap();
}
