//! Permissions: owner + ACL, Dom0 privileged, inheritance, what a guest may
//! see, privileged-only operations.

mod common;

use std::time::Duration;

use common::Daemon;
use xenstore_wire::{Request, XsError};

const SHORT: Duration = Duration::from_millis(300);

fn setup(d: &Daemon) -> common::Client<common::Sock> {
    let mut dom0 = d.client();
    for dom in [3, 4] {
        let home = format!("/local/domain/{dom}");
        dom0.mkdir(&home).unwrap();
        dom0.set_perms(&home, &format!("n{dom}")).unwrap();
    }
    dom0
}

#[test]
fn test_guest_cannot_read_dom0_node_eacces() {
    let d = Daemon::start();
    let mut dom0 = setup(&d);
    dom0.write("/secret", "x").unwrap();
    let mut g = d.guest(3);
    assert_eq!(g.read("/secret"), Err(XsError::Eacces));
    assert_eq!(g.write("/secret", "y"), Err(XsError::Eacces));
    assert_eq!(g.rm("/secret"), Err(XsError::Eacces));
    assert_eq!(g.get_perms("/secret"), Err(XsError::Eacces));
}

#[test]
fn test_guest_missing_node_under_unreadable_parent_is_eacces_not_enoent() {
    let d = Daemon::start();
    let _dom0 = setup(&d);
    let mut g = d.guest(3);
    assert_eq!(g.read("/local/domain/4/nothing"), Err(XsError::Eacces));
    assert_eq!(
        g.read("nothing-here"),
        Err(XsError::Enoent),
        "own home is readable"
    );
}

#[test]
fn test_guest_owns_nodes_it_creates() {
    let d = Daemon::start();
    let mut dom0 = setup(&d);
    let mut g = d.guest(3);
    g.write("mine/a", "1").unwrap();
    assert_eq!(dom0.get_perms("/local/domain/3/mine/a").unwrap(), "n3");
}

#[test]
fn test_acl_read_grant_allows_read_not_write() {
    let d = Daemon::start();
    let mut dom0 = setup(&d);
    dom0.write("/shared/r", "v").unwrap();
    dom0.set_perms("/shared", "n0 r3").unwrap();
    dom0.set_perms("/shared/r", "n0 r3").unwrap();
    let mut g3 = d.guest(3);
    let mut g4 = d.guest(4);
    assert_eq!(g3.read("/shared/r").unwrap(), b"v");
    assert_eq!(g3.write("/shared/r", "w"), Err(XsError::Eacces));
    assert_eq!(g4.read("/shared/r"), Err(XsError::Eacces));
}

#[test]
fn test_acl_write_grant_allows_create_and_write() {
    let d = Daemon::start();
    let mut dom0 = setup(&d);
    dom0.mkdir("/backend").unwrap();
    dom0.set_perms("/backend", "n0 b4").unwrap();
    let mut g4 = d.guest(4);
    g4.write("/backend/x", "1").unwrap();
    // Created nodes inherit the parent's list with the creator as owner.
    assert_eq!(dom0.get_perms("/backend/x").unwrap(), "n4 b4");
}

#[test]
fn test_owner_default_access_for_others() {
    let d = Daemon::start();
    let mut dom0 = setup(&d);
    dom0.write("/pub", "p").unwrap();
    dom0.set_perms("/pub", "r0").unwrap();
    let mut g = d.guest(3);
    assert_eq!(g.read("/pub").unwrap(), b"p");
    assert_eq!(g.write("/pub", "q"), Err(XsError::Eacces));
}

#[test]
fn test_guest_set_perms_own_node_ok_change_owner_eperm() {
    let d = Daemon::start();
    let _dom0 = setup(&d);
    let mut g = d.guest(3);
    g.write("node", "").unwrap();
    g.set_perms("node", "n3 r4").unwrap();
    assert_eq!(g.get_perms("node").unwrap(), "n3 r4");
    assert_eq!(g.set_perms("node", "n4"), Err(XsError::Eperm));
}

#[test]
fn test_guest_privileged_operations_eacces() {
    let d = Daemon::start();
    let _dom0 = setup(&d);
    let mut g = d.guest(3);
    for r in [
        Request::Introduce {
            domid: 9,
            mfn: 1,
            port: 1,
        },
        Request::Release { domid: 4 },
        Request::IsDomainIntroduced { domid: 4 },
        Request::Resume { domid: 4 },
        Request::SetTarget {
            domid: 3,
            target: 4,
        },
        Request::Control {
            args: b"print\0x\0",
        },
        Request::GetQuota {
            domid: None,
            quota: None,
        },
        Request::SetQuota {
            domid: None,
            quota: "nodes",
            value: 1,
        },
        Request::GetFeature { domid: None },
        Request::SetFeature {
            domid: 3,
            features: 0,
        },
    ] {
        assert_eq!(g.call(&r, 0).map(|_| ()), Err(XsError::Eacces), "{r:?}");
    }
}

#[test]
fn test_guest_cannot_set_perms_of_special_nodes() {
    let d = Daemon::start();
    let _dom0 = setup(&d);
    let mut g = d.guest(3);
    assert_eq!(g.set_perms("@releaseDomain", "r3"), Err(XsError::Eacces));
}

#[test]
fn test_watch_events_only_for_readable_nodes() {
    let d = Daemon::start();
    let mut dom0 = setup(&d);
    dom0.mkdir("/w").unwrap();
    dom0.set_perms("/w", "n0 r3").unwrap();
    let mut g3 = d.guest(3);
    let mut g4 = d.guest(4);
    g3.watch("/w", "t").unwrap();
    g4.watch("/w", "t").unwrap();
    assert!(g3.event(SHORT).is_some());
    assert!(
        g4.event(SHORT).is_some(),
        "the initial event is always sent"
    );
    dom0.write("/w/visible", "1").unwrap();
    dom0.set_perms("/w/visible", "n0 r3").unwrap();
    let e3 = g3.events_within(SHORT);
    assert!(e3.iter().any(|(p, _)| p == "/w/visible"), "{e3:?}");
    let e4 = g4.events_within(SHORT);
    assert!(e4.is_empty(), "domain 4 may not read /w: {e4:?}");
}

#[test]
fn test_special_watch_needs_permission_for_guests() {
    let d = Daemon::start();
    let mut dom0 = setup(&d);
    let mut g = d.guest(3);
    g.watch("@introduceDomain", "i").unwrap();
    let _ = g.events_within(SHORT);
    dom0.ok(
        &Request::Introduce {
            domid: 20,
            mfn: 1,
            port: 1,
        },
        0,
    )
    .unwrap();
    assert!(g.events_within(SHORT).is_empty());
    dom0.set_perms("@introduceDomain", "n0 r3").unwrap();
    dom0.ok(
        &Request::Introduce {
            domid: 21,
            mfn: 1,
            port: 1,
        },
        0,
    )
    .unwrap();
    assert_eq!(
        g.event(SHORT),
        Some(("@introduceDomain".into(), "i".into()))
    );
}

#[test]
fn test_set_target_grants_target_rights() {
    let d = Daemon::start();
    let mut dom0 = setup(&d);
    dom0.write("/local/domain/4/private", "p").unwrap();
    dom0.set_perms("/local/domain/4/private", "n4").unwrap();
    let mut g3 = d.guest(3);
    let _g4 = d.guest(4);
    assert_eq!(g3.read("/local/domain/4/private"), Err(XsError::Eacces));
    dom0.ok(
        &Request::SetTarget {
            domid: 3,
            target: 4,
        },
        0,
    )
    .unwrap();
    assert_eq!(g3.read("/local/domain/4/private").unwrap(), b"p");
}

/// A domain with only read permission on a parent may not create children
/// under it (issue 18 item 5a: a changed mask in the child-creation check).
#[test]
fn test_acl_read_grant_on_parent_refuses_create_and_mkdir() {
    let d = Daemon::start();
    let mut dom0 = setup(&d);
    dom0.mkdir("/shared").unwrap();
    dom0.set_perms("/shared", "n0 r3").unwrap();
    let mut g3 = d.guest(3);
    assert_eq!(g3.write("/shared/new", "x"), Err(XsError::Eacces));
    assert_eq!(g3.mkdir("/shared/dir"), Err(XsError::Eacces));
    assert_eq!(g3.write("/shared/deep/er", "x"), Err(XsError::Eacces));
    assert_eq!(g3.mkdir("/shared/deep/dir"), Err(XsError::Eacces));
    // Nothing was created behind the refusals.
    assert_eq!(dom0.read("/shared/new"), Err(XsError::Enoent));
    assert_eq!(dom0.read("/shared/dir"), Err(XsError::Enoent));
    assert_eq!(dom0.read("/shared/deep"), Err(XsError::Enoent));
    assert_eq!(dom0.dir("/shared").unwrap(), Vec::<String>::new());
    // The read grant itself still works: the parent is readable.
    assert!(g3.read("/shared").is_ok());
}
