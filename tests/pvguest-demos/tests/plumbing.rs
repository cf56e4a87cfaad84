//! Cross-process plumbing: a `pvguest-demo` process as domain N and this test
//! process as Dom0 exchange pages by grant and signal each other through a
//! private `xen-shimd` (real processes, real shared memory, real eventfds).

mod common;

use common::dom0peer::{grant_demo_peer, ring_demo_peer};
use xen_shim_proto::protocol::{DomainState, ShutdownReason};
use xen_testhost::shim::{ShimDom0, STEP};

#[test]
fn test_grant_demo_cross_process_page_and_events_roundtrip_ok() {
    // Arrange
    let d = ShimDom0::start("grant").expect("the private shim starts");
    let mut g = common::demo(&d, &["--demo", "grant"]);
    let ready = g.expect("pvguest ready", STEP).expect("ready line");
    assert_eq!(ready.num::<u16>("domid"), Some(g.domid()));
    let offer = g.expect("grant-demo offer", STEP).expect("offer line");
    let gref: u32 = offer.num("gref").expect("gref");
    let port: u32 = offer.num("port").expect("port");

    // Act: Dom0 binds, maps, checks the pattern, answers, waits for the
    // guest's (refused) revoke attempt, unmaps.
    grant_demo_peer(&d.gntdev, &d.evtchn, g.domid(), gref, port, STEP)
        .expect("the Dom0 half succeeds");

    // Assert
    g.expect("grant-demo revoke-while-mapped refused", STEP)
        .expect("revoke refused while Dom0 mapped the page");
    g.expect("grant-demo done ok", STEP)
        .expect("revoke allowed after unmap, answer verified");
    let sd = g.expect("pvguest shutdown", STEP).expect("shutdown line");
    assert_eq!(
        sd.fields.get("reason").map(String::as_str),
        Some("poweroff")
    );
    let st = g.wait_exit(STEP).expect("wait").expect("the runtime exits");
    assert!(st.success(), "runtime exit status {st:?}");
    d.wait_state(g.domid(), "shutdown(poweroff)", |s| {
        s == Some(&DomainState::Shutdown {
            reason: ShutdownReason::Poweroff,
        })
    })
    .expect("the domain reaches the state");
}

#[test]
fn test_ring_demo_100k_messages_with_event_notifications_ok() {
    // Arrange
    let d = ShimDom0::start("ring").expect("the private shim starts");
    let mut g = common::demo(&d, &["--demo", "ring", "--messages", "100000"]);
    let offer = g.expect("ring-demo offer", STEP).expect("offer line");
    let grefs: Vec<u32> = offer.nums("grefs").expect("grefs");
    let port: u32 = offer.num("port").expect("port");
    let n: u64 = offer.num("messages").expect("messages");

    // Act
    let back = ring_demo_peer(&d.gntdev, &d.evtchn, g.domid(), &grefs, port, n, STEP)
        .expect("the Dom0 back end answers every request");

    // Assert
    let done = g.expect("ring-demo done ok", STEP).expect("done line");
    eprintln!("guest: {:?}; Dom0: {back:?}", done.fields);
    assert_eq!(done.num::<u64>("messages"), Some(100_000));
    assert_eq!(back.answered, 100_000);
    let notifies: u64 = done.num("notifies").expect("notifies");
    assert!(notifies >= 1, "the front end never notified");
    assert!(
        notifies < 100_000,
        "event-index suppression should batch notifications: {notifies}"
    );
    assert!(back.notifies >= 1, "the back end never notified");
    let st = g.wait_exit(STEP).expect("wait").expect("the runtime exits");
    assert!(st.success(), "runtime exit status {st:?}");
}

#[test]
fn test_ring_demo_multi_page_ring_contiguous_map_ok() {
    // Arrange: a 4-page ring, mapped by Dom0 as one contiguous window.
    let d = ShimDom0::start("ring4").expect("the private shim starts");
    let mut g = common::demo(
        &d,
        &["--demo", "ring", "--messages", "20000", "--ring-pages", "4"],
    );
    let offer = g.expect("ring-demo offer", STEP).expect("offer line");
    let grefs: Vec<u32> = offer.nums("grefs").expect("grefs");
    let port: u32 = offer.num("port").expect("port");

    // Act
    let back = ring_demo_peer(&d.gntdev, &d.evtchn, g.domid(), &grefs, port, 20_000, STEP)
        .expect("the Dom0 back end answers every request");

    // Assert
    assert_eq!(grefs.len(), 4);
    assert_eq!(back.answered, 20_000);
    g.expect("ring-demo done ok", STEP).expect("done line");
    let st = g.wait_exit(STEP).expect("wait").expect("the runtime exits");
    assert!(st.success(), "runtime exit status {st:?}");
}
