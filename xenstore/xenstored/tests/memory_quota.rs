//! The per-domain `memory` quota (Xen 4.17's): the bytes of the nodes a
//! domain owns (path, value, permissions and a 24-byte header each) are
//! counted at create, write, set-perms, rm of subtrees and transaction
//! commit; a guest's change past its quota fails with `ENOSPC` while other
//! domains and Dom0 are still served; the figure is in `XS_CONTROL quota
//! <domid>` and is recomputed from the tree after a restart.

mod common;

use common::{Client, Daemon, Sock};
use xenstore_wire::{Request, XsError};

/// Domain `domid`'s `memory` line of `xenstore-control quota <domid>`:
/// (used, max).
fn memory(dom0: &mut Client<Sock>, domid: u16) -> (u64, u64) {
    let args = format!("quota\0{domid}\0");
    let out = dom0
        .call(
            &Request::Control {
                args: args.as_bytes(),
            },
            0,
        )
        .expect("quota report");
    let text = String::from_utf8(out).expect("text");
    let line = text
        .lines()
        .find(|l| l.starts_with("memory"))
        .unwrap_or_else(|| panic!("no memory line in {text:?}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("number"))
        .collect();
    (nums[0], nums[1])
}

fn set_memory_quota(dom0: &mut Client<Sock>, domid: u16, value: u32) {
    dom0.ok(
        &Request::SetQuota {
            domid: Some(domid),
            quota: "memory",
            value,
        },
        0,
    )
    .unwrap();
}

/// The charge of one node: header, path, value, permissions.
fn charge(path: &str, value: usize, perms: usize) -> u64 {
    (24 + path.len() + value + 8 * perms) as u64
}

#[test]
fn test_memory_quota_guest_fills_gets_enospc_deletes_writes_again() {
    // Arrange: guest 3 (its home is its own node) with a 20000-byte quota.
    let (_d, mut dom0, mut g) = Daemon::with_guest(3);
    let home = "/local/domain/3";
    assert_eq!(memory(&mut dom0, 3), (charge(home, 0, 1), 2_621_440));
    set_memory_quota(&mut dom0, 3, 20_000);
    let value = "v".repeat(500);

    // Act: write until refused.
    let mut written = 0;
    let err = loop {
        match g.write(&format!("data/n{written}"), &value) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 100, "the quota never refused");
    };

    // Assert: ENOSPC at the quota, the charge exact and within it.
    assert_eq!(err, XsError::Enospc);
    let data = format!("{home}/data");
    let expect = charge(home, 0, 1)
        + charge(&data, 0, 1)
        + (0..written)
            .map(|i| charge(&format!("{data}/n{i}"), 500, 1))
            .sum::<u64>();
    let (used, max) = memory(&mut dom0, 3);
    assert_eq!((used, max), (expect, 20_000));
    assert!(used + charge(&format!("{data}/n{written}"), 500, 1) > 20_000);
    // A rewrite that grows is refused too; one that shrinks is not.
    assert_eq!(g.write("data/n0", &"v".repeat(1500)), Err(XsError::Enospc));
    g.write("data/n0", "short").unwrap();
    assert_eq!(memory(&mut dom0, 3).0, expect - 495);
    // Another domain and Dom0 are still served meanwhile.
    dom0.mkdir("/local/domain/4").unwrap();
    dom0.set_perms("/local/domain/4", "n4").unwrap();
    let mut g4 = _d.guest(4);
    g4.write("x", &value).unwrap();
    for i in 0..50 {
        dom0.write(&format!("/dom0/big{i}"), &"d".repeat(3000))
            .unwrap();
    }
    assert_eq!(memory(&mut dom0, 0).1, 2_621_440, "Dom0 has the figure");

    // Deleting one node makes room again; rm of the subtree returns all.
    g.rm("data/n1").unwrap();
    g.write(&format!("data/n{written}"), &value).unwrap();
    g.rm("data").unwrap();
    assert_eq!(memory(&mut dom0, 3).0, charge(home, 0, 1));
    g.write("data/again", &value).unwrap();
}

#[test]
fn test_memory_quota_transaction_charges_at_commit_and_is_checked_inside() {
    let (_d, mut dom0, mut g) = Daemon::with_guest(5);
    set_memory_quota(&mut dom0, 5, 4_000);
    let base = memory(&mut dom0, 5).0;
    let t = g.start();
    g.write_tx(t, "a", &"x".repeat(1000)).unwrap();
    g.write_tx(t, "b", &"x".repeat(1000)).unwrap();
    assert_eq!(memory(&mut dom0, 5).0, base, "not charged before commit");
    assert_eq!(
        g.write_tx(t, "c", &"x".repeat(2000)),
        Err(XsError::Enospc),
        "the transaction's own nodes count against the quota"
    );
    let t2 = g.start();
    g.write_tx(t2, "a", &"x".repeat(1000)).unwrap();
    g.write_tx(t2, "b", &"x".repeat(1000)).unwrap();
    g.end(t2, true).unwrap();
    let after = base + charge("/local/domain/5/a", 1000, 1) + charge("/local/domain/5/b", 1000, 1);
    assert_eq!(memory(&mut dom0, 5).0, after, "charged at commit");
    // The first transaction failed an operation: its commit fails.
    assert!(g.end(t, true).is_err());
    assert_eq!(memory(&mut dom0, 5).0, after);
}

#[test]
fn test_memory_quota_set_perms_and_dom0_writes_charge_the_owner() {
    let (_d, mut dom0, mut g) = Daemon::with_guest(6);
    let base = memory(&mut dom0, 6).0;
    g.write("p", "").unwrap();
    g.set_perms("p", "n6 r1 r2").unwrap();
    let p = "/local/domain/6/p";
    assert_eq!(memory(&mut dom0, 6).0, base + charge(p, 0, 3));
    // Dom0 writing into the guest's node charges the guest, unrefused.
    set_memory_quota(&mut dom0, 6, 1);
    dom0.write(p, &"z".repeat(1000)).unwrap();
    assert_eq!(memory(&mut dom0, 6).0, base + charge(p, 1000, 3));
    assert_eq!(g.write("q", ""), Err(XsError::Enospc));
    assert_eq!(g.set_perms("p", "n6 r1 r2 r3"), Err(XsError::Enospc));
    g.set_perms("p", "n6").unwrap();
    // Released domain: the toolstack's rm of its home frees the bytes.
    dom0.ok(&Request::Release { domid: 6 }, 0).unwrap();
    dom0.rm("/local/domain/6").unwrap();
    dom0.mkdir("/local/domain/6").unwrap();
    dom0.set_perms("/local/domain/6", "n6").unwrap();
    let _g6 = _d.guest(6);
    assert_eq!(memory(&mut dom0, 6).0, base);
}

#[test]
fn test_memory_quota_figure_recomputed_after_restart() {
    let mut d = Daemon::start_opts(true, |_| {});
    let mut dom0 = d.client();
    dom0.mkdir("/local/domain/7").unwrap();
    dom0.set_perms("/local/domain/7", "n7").unwrap();
    let mut g = d.guest(7);
    for i in 0..20 {
        g.write(&format!("k{i}"), &"w".repeat(i * 10)).unwrap();
    }
    g.rm("k3").unwrap();
    let before = memory(&mut dom0, 7);
    drop(dom0);

    d.restart();

    let mut dom0 = d.client();
    assert_eq!(memory(&mut dom0, 7), before);
    // The guest's ring is back and its writes are still counted.
    g.write("k3", "abc").unwrap();
    assert_eq!(
        memory(&mut dom0, 7).0,
        before.0 + charge("/local/domain/7/k3", 3, 1)
    );
}

#[test]
fn test_memory_quota_set_on_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("socket");
    let d = common::ChildDaemon::spawn(&sock, None, &["-Q", "memory=12345"]);
    let mut dom0 = d.client();
    let v = dom0
        .call(
            &Request::GetQuota {
                domid: None,
                quota: Some("memory"),
            },
            0,
        )
        .unwrap();
    assert_eq!(v, b"12345\0");
}
