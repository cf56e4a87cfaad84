//! Hostile or wrong peers and callers: the runtime distrusts its backend
//! (bad data, a corrupted ring) and fails that frontend cleanly — the domain
//! shuts down with `crash`, the process exits with status 1, never a panic —
//! and refuses to run as a domain without the right token.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use common::{Dom0, STEP};
use xen_pvguest::demo::{ANSWER_OFF, DOM0_ANSWERED, DOM0_PHASE_OFF};
use xen_shim_proto::protocol::{DomainConfig, DomainState, ShutdownReason};

#[test]
fn test_grant_demo_wrong_answer_from_dom0_guest_crashes_cleanly() {
    // Arrange
    let d = Dom0::start("badanswer");
    let mut g = d.guest(&["--frontend", "grant-demo", "--timeout-secs", "10"]);
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
    });
    map.unmap().expect("unmap");
}

#[test]
fn test_ring_demo_backend_overflows_rsp_prod_guest_fails_cleanly() {
    // Arrange
    let d = Dom0::start("overflow");
    let mut g = d.guest(&[
        "--frontend",
        "ring-demo",
        "--messages",
        "1000",
        "--timeout-secs",
        "10",
    ]);
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

#[test]
fn test_runtime_wrong_token_is_refused() {
    // Arrange
    let d = Dom0::start("token");
    let created = d
        .control
        .create_domain(&DomainConfig::pv(
            &xen_pvguest::testkit::unique_name("tok"),
            common::MEMORY_MIB,
        ))
        .expect("create");

    // Act
    let out = Command::new(env!("CARGO_BIN_EXE_xen-pvguest"))
        .env(xen_shim_proto::ENV_SOCKET, d.daemon.socket())
        .env(xen_shim_proto::ENV_DOMID, created.domid.to_string())
        .env(xen_shim_proto::ENV_TOKEN, "not-the-token")
        .stdin(Stdio::null())
        .output()
        .expect("the runtime runs");

    // Assert: exit status 2 (could not attach), no "ready", nothing attached.
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pvguest ready"));
    let info = d.info(created.domid).expect("domain still exists");
    assert_eq!(info.pid, None);
    d.control.destroy_domain(created.domid).expect("destroy");
}

#[test]
fn test_runtime_without_domid_exits_with_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_xen-pvguest"))
        .env_remove(xen_shim_proto::ENV_DOMID)
        .env_remove(xen_shim_proto::ENV_TOKEN)
        .env(xen_shim_proto::ENV_SOCKET, "/nonexistent/xen-shim.sock")
        .stdin(Stdio::null())
        .output()
        .expect("the runtime runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("domid"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
