//! netfront when its backend goes away and comes back: a backend that
//! dies and is restarted (a new InitWait while Connected, the old rings
//! still mapped by the dead process), and one that closes and later
//! offers again (Closing, Closed, then InitWait). Each time netfront tears
//! the rings down, offers fresh rings, grants and ports, re-posts every rx
//! buffer, and frames flow again; a tx reservation made on the old rings
//! ends harmlessly.

mod common;

use common::*;
use xen_front_platform::fake::FakePlatform;
use xen_netfront::{FrontState, NetfrontError, PacketMeta};

#[test]
fn test_netfront_backend_restart_reoffers_fresh_rings_and_frames_flow_again() {
    // Arrange
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    exchange(&mut f, &mut b, 1);
    let old_tx_ref = b.fe_node("tx-ring-ref");
    let conn0 = f.connection();
    // A frame being written in place when the backend goes away.
    let res = f.reserve_tx(0).expect("reserve").expect("room");
    let ptrs = f.tx_page_ptrs(&res);
    assert!(!ptrs.is_empty());

    // Act: the backend dies and a new one probes (InitWait while we are
    // Connected), as a restarted backendd does.
    let old_maps = b.crash();
    b.init_wait();
    pump(&p, &mut f);
    let offered = f.state();
    let deferred = f.deferred_pages();
    let fe_state = b.fe_node("state");
    // The writer finishes its frame into the old pages, then commits.
    // SAFETY: the reservation's pages stay valid until it ends (the
    // torn-down run is kept for it); 64 bytes of one page.
    unsafe { core::ptr::write_bytes(ptrs[0], 0xab, 64) };
    let stale = f.commit_tx(res, 64, PacketMeta::default());
    b.connect();
    pump(&p, &mut f);
    let connected_again = f.is_connected();
    let posted =
        b.rx.as_ref()
            .expect("new rx ring")
            .unconsumed_requests()
            .expect("rx");
    exchange(&mut f, &mut b, 2);
    // The old mappings go at last: the next look frees those pages.
    for m in old_maps {
        p.peer_unmap(m);
    }
    f.backend_changed().expect("a look at the backend");
    let deferred_after = f.deferred_pages();

    // Assert
    assert_eq!(offered, FrontState::Offered, "fresh rings offered");
    assert_eq!(fe_state.as_deref(), Some("3"), "Initialised again");
    // (The ring page the dead backend maps cannot be revoked: its grant
    // is not reused.)
    assert_ne!(b.fe_node("tx-ring-ref"), old_tx_ref, "a fresh ring grant");
    assert_ne!(f.connection(), conn0, "a new connection");
    assert_eq!(
        stale,
        Err(NetfrontError::NotConnected),
        "a reservation on the old rings drops its frame"
    );
    assert!(connected_again, "state {:?}", f.state());
    assert_eq!(posted, 256, "every rx buffer is posted on the new ring");
    let st = f.stats();
    assert_eq!(st.disconnects, 1);
    assert!(
        st.leaked_pages > 0 && deferred >= 2,
        "pages the old backend still maps are kept ({deferred} deferred)"
    );
    assert_eq!(deferred_after, 0, "and freed once unmapped");
    assert!(f.failure().is_none());
}

#[test]
fn test_netfront_backend_closing_then_initwait_reconnects() {
    // Arrange
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    exchange(&mut f, &mut b, 3);

    // Act: the backend closes (its side torn down properly) ...
    b.set_state("5");
    pump(&p, &mut f);
    let closed = (f.state(), b.fe_node("state"));
    let tx_while_closed = f.transmit(0, &frame(100, 0), PacketMeta::default());
    b.set_state("6");
    pump(&p, &mut f);
    // ... and offers again.
    drop(b.crash());
    b.init_wait();
    pump(&p, &mut f);
    b.connect();
    pump(&p, &mut f);
    exchange(&mut f, &mut b, 4);

    // Assert
    assert_eq!(closed, (FrontState::Closed, Some("6".to_owned())));
    assert_eq!(tx_while_closed, Err(NetfrontError::NotConnected));
    assert!(f.is_connected());
    assert_eq!(f.stats().disconnects, 1);
}
