//! Hostile peers: a guest program on the runtime distrusts its backend (bad
//! data, a corrupted ring) and fails that frontend cleanly — the domain
//! shuts down with `crash`, the process exits with status 1, never a panic.

mod common;

use std::sync::atomic::Ordering;

use pvguest_demos::demo::{ANSWER_OFF, DOM0_ANSWERED, DOM0_PHASE_OFF};
use xen_shim_proto::protocol::{DomainState, ShutdownReason};
use xen_testhost::shim::{ShimDom0, STEP};

#[test]
fn test_grant_demo_wrong_answer_from_dom0_guest_crashes_cleanly() {
    // Arrange
    let d = ShimDom0::start("badanswer").expect("the private shim starts");
    let mut g = common::demo(&d, &["--demo", "grant", "--timeout-secs", "10"]);
    let offer = g.expect("grant-demo offer", STEP).expect("offer line");
    let gref: u32 = offer.num("gref").expect("gref");
    let port: u32 = offer.num("port").expect("port");

    // Act: a Dom0 "backend" that answers garbage.
    let local = d.evtchn.bind_interdomain(g.domid(), port).expect("bind");
    let map = d.gntdev.map_grant_ref(g.domid(), gref, true).expect("map");
    map.write(ANSWER_OFF, &[0xAA; 16]).expect("write garbage");
    map.slice()
        .atomic_u32(DOM0_PHASE_OFF)
        .expect("phase word")
        .store(DOM0_ANSWERED, Ordering::Release);
    d.evtchn.notify(local).expect("notify");

    // Assert
    let failed = g
        .expect("pvguest frontend-failed", STEP)
        .expect("failure line");
    assert!(
        failed
            .fields
            .get("error")
            .is_some_and(|e| e.contains("bad_data")),
        "{failed:?}"
    );
    let sd = g.expect("pvguest shutdown", STEP).expect("shutdown line");
    assert_eq!(sd.fields.get("reason").map(String::as_str), Some("crash"));
    let st = g.wait_exit(STEP).expect("wait").expect("the runtime exits");
    assert_eq!(st.code(), Some(1), "a clean failure, not a panic: {st:?}");
    d.wait_state(g.domid(), "shutdown(crash)", |s| {
        s == Some(&DomainState::Shutdown {
            reason: ShutdownReason::Crash,
        })
    })
    .expect("the domain reaches the state");
    map.unmap().expect("unmap");
}

#[test]
fn test_ring_demo_backend_overflows_rsp_prod_guest_fails_cleanly() {
    // Arrange
    let d = ShimDom0::start("overflow").expect("the private shim starts");
    let mut g = common::demo(
        &d,
        &[
            "--demo",
            "ring",
            "--messages",
            "1000",
            "--timeout-secs",
            "10",
        ],
    );
    let offer = g.expect("ring-demo offer", STEP).expect("offer line");
    let grefs: Vec<u32> = offer.nums("grefs").expect("grefs");
    let port: u32 = offer.num("port").expect("port");

    // Act: a hostile back end publishes an impossible rsp_prod, then says
    // "connected".
    let local = d.evtchn.bind_interdomain(g.domid(), port).expect("bind");
    let map = d
        .gntdev
        .map_grant_refs(g.domid(), &grefs, true)
        .expect("map");
    map.slice()
        .atomic_u32(8)
        .expect("rsp_prod")
        .store(0x7fff_0000, Ordering::Release);
    d.evtchn.notify(local).expect("notify");

    // Assert
    let failed = g
        .expect("pvguest frontend-failed", STEP)
        .expect("failure line");
    assert!(
        failed
            .fields
            .get("error")
            .is_some_and(|e| e.contains("ring")),
        "{failed:?}"
    );
    let st = g.wait_exit(STEP).expect("wait").expect("the runtime exits");
    assert_eq!(st.code(), Some(1), "a clean failure, not a panic: {st:?}");
    map.unmap().expect("unmap");
}
