//! The `xen-front-platform` trait as the PV runtime implements it, driven
//! through the trait against a real daemon, with this test process playing
//! both the guest (a `Runtime` attached as domain N) and Dom0 (separate
//! `Gntdev`/`Evtchn` connections).
//!
//! These domains are never destroyed or paused: the daemon would signal the
//! attached runtime's pid, which is this test process. Each test's daemon
//! and domain go away with the process.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_abi::event_channel::{EVTCHNSTAT_closed, EVTCHNSTAT_unbound};
use xen_front_platform::{Platform, PlatformError};
use xen_pvguest::runtime::{Runtime, INITIAL_GRANT_FRAMES};
use xen_shim_proto::layout::GRANT_ENTRIES_PER_FRAME_V1;
use xen_shim_proto::protocol::DomainConfig;
use xen_testhost::shim::{unique_name, wait_port, ShimDom0, MEMORY_MIB, STEP};

fn in_process_guest(d: &ShimDom0) -> Runtime {
    let created = d
        .control
        .create_domain(&DomainConfig::pv(&unique_name("inproc"), MEMORY_MIB))
        .expect("create");
    Runtime::start_with(d.daemon.socket(), created.domid, &created.token).expect("attach")
}

#[test]
fn test_pv_platform_grant_readonly_map_and_revoke_after_unmap() {
    // Arrange
    let d = ShimDom0::start("pgrant").expect("the private shim starts");
    let rt = in_process_guest(&d);
    let p = rt.platform().as_ref();
    let pages = p.alloc_pages(2).expect("pages");
    let gfn = pages.gfn(1).expect("second page");
    pages.write(4096 + 100, b"granted bytes").expect("write");

    // Act
    let gref = p.grant_access(0, gfn, true).expect("grant read-only");
    let write_map = d.gntdev.map_grant_ref(rt.domid(), gref, true);
    let map = d
        .gntdev
        .map_grant_ref(rt.domid(), gref, false)
        .expect("read-only map");
    let mut seen = [0u8; 13];
    map.read(100, &mut seen).expect("read");
    let while_mapped = p.end_access(gref);
    map.unmap().expect("unmap");
    let after = p.end_access(gref);

    // Assert
    assert!(
        write_map.is_err(),
        "a write map of a read-only grant must fail"
    );
    assert_eq!(&seen, b"granted bytes");
    assert_eq!(while_mapped, Err(PlatformError::GrantInUse { gref }));
    assert_eq!(after, Ok(()));
    assert_eq!(
        p.end_access(gref),
        Err(PlatformError::BadGrantRef { gref }),
        "a revoked reference is free"
    );
    p.free_pages(pages).expect("free");
}

#[test]
fn test_pv_platform_grant_table_grows_past_initial_frames() {
    // Arrange: use every reference of the initial frames.
    let d = ShimDom0::start("pgrow").expect("the private shim starts");
    let rt = in_process_guest(&d);
    let p = rt.platform();
    let pages = p.alloc_pages(1).expect("page");
    let initial = INITIAL_GRANT_FRAMES * GRANT_ENTRIES_PER_FRAME_V1 - 8;
    let mut grefs = Vec::new();
    for _ in 0..initial {
        grefs.push(p.grant_access(0, pages.first_gfn(), false).expect("grant"));
    }
    assert_eq!(p.grant_frames(), INITIAL_GRANT_FRAMES);

    // Act: one more grows the table with GNTTABOP_setup_table.
    let extra = p
        .grant_access(0, pages.first_gfn(), false)
        .expect("grant in a new frame");

    // Assert: the new entry is in the new frame and Dom0 can map it.
    assert_eq!(p.grant_frames(), INITIAL_GRANT_FRAMES + 1);
    assert!(extra >= INITIAL_GRANT_FRAMES * GRANT_ENTRIES_PER_FRAME_V1);
    let map = d
        .gntdev
        .map_grant_ref(rt.domid(), extra, true)
        .expect("Dom0 maps a grant of the grown table");
    map.unmap().expect("unmap");
    for g in grefs.into_iter().chain([extra]) {
        p.end_access(g).expect("revoke");
    }
}

#[test]
fn test_pv_platform_masked_port_stays_pending_until_unmask() {
    // Arrange: a channel to Dom0 with a handler counting deliveries.
    let d = ShimDom0::start("pmask").expect("the private shim starts");
    let rt = in_process_guest(&d);
    let p = rt.platform();
    let port = p.evtchn_alloc_unbound(0).expect("port");
    let local = d
        .evtchn
        .bind_interdomain(rt.domid(), port)
        .expect("Dom0 binds");
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    rt.hub().set_handler(
        port,
        Some(Arc::new(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        })),
    );

    // Act: masked, an event only sets the pending bit.
    p.evtchn_mask(port).expect("mask");
    d.evtchn.notify(local).expect("notify");
    let polled = p
        .evtchn_poll(&[port], Some(STEP))
        .expect("SCHEDOP_poll sees masked ports");
    std::thread::sleep(Duration::from_millis(50));
    let calls_while_masked = calls.load(Ordering::SeqCst);
    p.evtchn_unmask(port).expect("unmask");
    let deadline = Instant::now() + STEP;
    while calls.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }

    // Assert
    assert!(polled);
    assert_eq!(calls_while_masked, 0, "a masked port must not be delivered");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "unmask delivers it once");
    assert!(!rt.hypervisor().is_pending(port), "the upcall consumed it");
}

#[test]
fn test_pv_platform_notify_reaches_dom0_and_close_unbinds_peer() {
    // Arrange
    let d = ShimDom0::start("pclose").expect("the private shim starts");
    let rt = in_process_guest(&d);
    let p = rt.platform();
    let port = p.evtchn_alloc_unbound(0).expect("port");
    let local = d
        .evtchn
        .bind_interdomain(rt.domid(), port)
        .expect("Dom0 binds");
    // The bind itself leaves Dom0's new port pending (as Xen does).
    let _ = wait_port(&d.evtchn, local, Duration::from_millis(200), "bind");

    // Act
    p.evtchn_notify(port).expect("notify");
    let got = wait_port(&d.evtchn, local, STEP, "the guest's event");
    p.evtchn_close(port).expect("close");
    let st = d.evtchn.status(0, local).expect("status");

    // Assert
    assert!(got.is_ok(), "{got:?}");
    assert!(
        st.status == EVTCHNSTAT_unbound || st.status == EVTCHNSTAT_closed,
        "Dom0's end after the guest closed: {}",
        st.status
    );
    let after_close = p.evtchn_notify(port);
    assert!(
        matches!(
            after_close,
            Err(PlatformError::BadPort { .. }
                | PlatformError::Evtchn {
                    errno: libc::EINVAL
                })
        ),
        "send on a closed port: {after_close:?}"
    );
}

#[test]
fn test_pv_platform_alloc_pages_exhaustion_and_xenstore_without_xenstored_times_out() {
    let d = ShimDom0::start("pmem").expect("the private shim starts");
    let rt = in_process_guest(&d);
    let p = rt.platform();
    let all = p.free_pages_count();
    let big = p.alloc_pages(all as usize).expect("all of RAM");
    assert!(matches!(
        p.alloc_pages(1),
        Err(PlatformError::NoMemory { pages: 1 })
    ));
    p.free_pages(big).expect("free");
    // No xenstored serves this domain's ring: the request times out.
    p.xenstore()
        .expect("the runtime attaches its xenstore connection")
        .set_timeout(Duration::from_millis(200));
    assert!(matches!(
        p.xs_read(xen_front_platform::XBT_NIL, "device"),
        Err(PlatformError::Hypervisor { errno }) if errno == libc::ETIMEDOUT
    ));
}
