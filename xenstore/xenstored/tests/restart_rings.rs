//! A restarted daemon gives each guest's ring connection back its watches
//! and open transactions (Xen's live-update `WATCH_DATA` and transaction
//! records): the watches fire once on return and then as before, an
//! unwatched or reset watch stays gone, and a transaction open across the
//! restart fails with `EAGAIN` at commit. The daemon runs in-process with
//! a state directory and is stopped and started again on the same guest
//! rings (the SIGKILL case with a real guest is
//! `frontend-drivers/pv-runtime/tests/backendd_sigkill.rs`).

mod common;

use std::time::Duration;

use common::Daemon;
use xenstore_wire::{Request, XsError};

const SHORT: Duration = Duration::from_millis(300);

fn ev(p: &str, t: &str) -> (String, String) {
    (p.to_owned(), t.to_owned())
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

#[test]
fn test_restart_restores_guest_watches_fires_them_once_and_fails_open_transaction() {
    // Arrange: guest 5 with a relative watch, an absolute one, one set
    // and removed again, and an open transaction with a write in it.
    let mut d = Daemon::start_opts(true, |_| {});
    let mut dom0 = d.client();
    dom0.mkdir("/local/domain/5/device").unwrap();
    dom0.set_perms("/local/domain/5", "n5").unwrap();
    dom0.set_perms("/local/domain/5/device", "n5").unwrap();
    let mut g = d.guest(5);
    g.watch("device", "rel").unwrap();
    g.watch("/local/domain/5/abs", "abs").unwrap();
    g.watch("gone", "gone").unwrap();
    g.unwatch("gone", "gone").unwrap();
    let _ = g.pending_events();
    let tx = g.start();
    g.write_tx(tx, "device/in-tx", "1").unwrap();
    drop(dom0);

    // Act
    d.restart();

    // Assert: each kept watch fired once on its return, the removed one
    // did not; later changes fire them; the transaction is lost.
    assert_eq!(
        sorted(g.events_within(SHORT)),
        vec![ev("/local/domain/5/abs", "abs"), ev("device", "rel")]
    );
    let mut dom0 = d.client();
    dom0.write("/local/domain/5/device/vbd", "x").unwrap();
    assert_eq!(g.event(SHORT), Some(ev("device/vbd", "rel")));
    dom0.write("/local/domain/5/gone", "x").unwrap();
    assert_eq!(g.events_within(SHORT), vec![]);
    assert_eq!(g.end(tx, true), Err(XsError::Eagain));
    assert_eq!(g.read("device/in-tx"), Err(XsError::Enoent));
    let tx2 = g.start();
    assert_ne!(tx2, tx, "a restored transaction id is not handed out again");
    g.write_tx(tx2, "device/in-tx", "2").unwrap();
    g.end(tx2, true).unwrap();
    assert_eq!(g.read("device/in-tx").unwrap(), b"2");
    assert_eq!(g.watch("device", "rel"), Err(XsError::Eexist));
    let _ = g.pending_events();

    // A second restart (the state now comes from the snapshot written at
    // the first one's start) gives the same watches back.
    drop(dom0);
    d.restart();
    assert_eq!(
        sorted(g.events_within(SHORT)),
        vec![ev("/local/domain/5/abs", "abs"), ev("device", "rel")]
    );
}

#[test]
fn test_restart_after_reset_watches_or_release_restores_nothing() {
    let mut d = Daemon::start_opts(true, |_| {});
    let mut dom0 = d.client();
    for dom in [6u16, 7] {
        dom0.mkdir(&format!("/local/domain/{dom}")).unwrap();
        dom0.set_perms(&format!("/local/domain/{dom}"), &format!("n{dom}"))
            .unwrap();
    }
    let mut g6 = d.guest(6);
    let mut g7 = d.guest(7);
    g6.watch("a", "t6").unwrap();
    g7.watch("b", "t7").unwrap();
    let _ = g6.pending_events();
    let _ = g7.pending_events();
    g6.ok(&Request::ResetWatches, 0).unwrap();
    dom0.ok(&Request::Release { domid: 7 }, 0).unwrap();
    drop(dom0);

    d.restart();

    assert_eq!(g6.events_within(SHORT), vec![]);
    let mut dom0 = d.client();
    dom0.write("/local/domain/6/a", "x").unwrap();
    assert_eq!(g6.events_within(SHORT), vec![]);
    g6.watch("a", "t6").unwrap();
    assert_eq!(g6.event(SHORT), Some(ev("a", "t6")));
    assert_eq!(
        dom0.call(&Request::IsDomainIntroduced { domid: 7 }, 0)
            .unwrap(),
        b"F\0"
    );
}
