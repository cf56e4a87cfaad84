//! netfront resumed in a new domain after a suspend (Xen's restore;
//! Linux's `netfront_resume`): the old domain's grants, ports and watches
//! are gone (the fake's `new_domain`); netfront forgets them (never
//! revoking or closing what may now be another's), offers fresh rings to
//! the new backend with every rx buffer posted, and frames flow again; a
//! tx reservation made before the suspend ends harmlessly; no page or
//! grant is leaked.

mod common;

use common::*;
use xen_front_platform::fake::FakePlatform;
use xen_front_platform::Platform;
use xen_netfront::{FrontState, NetfrontError, PacketMeta};

#[test]
fn test_netfront_resume_in_a_new_domain_offers_fresh_rings_and_frames_flow() {
    // Arrange
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    let grants_connected = p.grants_in_use();
    exchange(&mut f, &mut b, 1);
    // In flight at the suspend: a frame sent and not answered, one being
    // written in place.
    assert!(f
        .transmit(0, &frame(700, 9), PacketMeta::default())
        .expect("transmit"));
    f.push_tx(0).expect("push");
    let res = f.reserve_tx(0).expect("reserve").expect("room");
    let conn0 = f.connection();

    // Act: the old domain goes (its backend's mappings with it), the guest
    // runs in a new one with a new backend.
    for m in b.crash() {
        p.peer_unmap(m);
    }
    p.new_domain();
    let mut b = FakeBack::new(&p);
    f.resume().expect("resume");
    let waiting = f.state();
    b.init_wait();
    pump(&p, &mut f);
    let offered = f.state();
    let stale = f.commit_tx(res, 64, PacketMeta::default());
    b.connect();
    pump(&p, &mut f);
    let posted =
        b.rx.as_ref()
            .expect("new rx ring")
            .unconsumed_requests()
            .expect("rx");
    exchange(&mut f, &mut b, 2);

    // Assert
    assert_eq!(waiting, FrontState::WaitBackend);
    assert_eq!(offered, FrontState::Offered, "fresh rings offered");
    assert!(f.is_connected(), "state {:?}", f.state());
    assert_ne!(f.connection(), conn0, "a new connection");
    assert_eq!(
        stale,
        Err(NetfrontError::NotConnected),
        "a reservation made before the suspend drops its frame"
    );
    assert_eq!(posted, 256, "every rx buffer is posted on the new ring");
    assert_eq!(f.deferred_pages(), 0);
    assert_eq!(f.stats().leaked_pages, 0);
    assert_eq!(
        p.grants_in_use(),
        grants_connected,
        "the new connection's grants only"
    );
    assert!(f.failure().is_none());
}

#[test]
fn test_netfront_resume_without_backend_nodes_is_no_backend() {
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    for m in b.crash() {
        p.peer_unmap(m);
    }
    p.new_domain();
    p.xs_rm(
        xen_front_platform::XBT_NIL,
        &format!("/local/domain/{GUEST}/device/vif/{DEVID}/backend"),
    )
    .expect("rm");
    let e = f.resume().expect_err("no backend");
    assert!(matches!(e, NetfrontError::NoBackend { .. }), "{e:?}");
}

/// Regression: restored on another host, the new domain got the old one's
/// domid, so its backend's directory is the old one's, whose watch the
/// xenstore client's reconnection had set again; resume failed with
/// EEXIST when it set the watch (found by the two-host rig's
/// save-on-A-restore-on-B test). It now removes the old watch first.
#[test]
fn test_netfront_resume_with_the_old_backend_directory_and_its_watch_set_again_connects() {
    // Arrange
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    for m in b.crash() {
        p.peer_unmap(m);
    }
    p.new_domain_rewatched();
    let mut b = FakeBack::new(&p);

    // Act
    f.resume().expect("resume");
    b.init_wait();
    pump(&p, &mut f);
    b.connect();
    pump(&p, &mut f);
    exchange(&mut f, &mut b, 3);

    // Assert
    assert!(f.is_connected(), "state {:?}", f.state());
    assert!(f.failure().is_none());
}
