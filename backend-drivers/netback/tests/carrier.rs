//! The vif's carrier, as a Xen user sees it on Linux netback's `vif<d>.<n>`:
//! off from the TAP's creation until a frontend connects, on while
//! connected, off again when the frontend goes away (backendd disconnects
//! the device when the frontend closes), and off while the guest leaves
//! its rx ring without requests for a waiting packet longer than the stall
//! timeout (on again once it posts). A hand-written frontend (a real
//! `xen-pvguest` runtime in the test process on a private shim) drives the
//! rings; the TAP is real and its carrier is read from sysfs.
//!
//! Needs root (the shim daemon, TAP devices).

mod common;

use std::time::{Duration, Instant};

use common::*;
use xen_netback::{NetBackend, NetConfig};

/// The stall timeout of these tests (Linux's default is 60 s).
const STALL: Duration = Duration::from_millis(300);

fn backend_with(tag: &str, stall: Option<Duration>) -> NetBackend {
    let mut c = NetConfig::new(0, 0);
    c.ifname = format!("nbc{}{tag}", std::process::id() % 100_000);
    c.bridge = None;
    c.rx_stall_timeout = stall;
    NetBackend::new(c).expect("the TAP comes up")
}

/// `/sys/class/net/<if>/carrier`.
fn carrier(b: &NetBackend) -> bool {
    let p = format!("/sys/class/net/{}/carrier", b.config().ifname);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    s.trim() == "1"
}

/// Waits up to `within` for the carrier to be `want`; its last value.
fn wait_carrier(b: &NetBackend, want: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let c = carrier(b);
        if c == want || Instant::now() >= deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ip -o link show dev <if>`.
fn link(b: &NetBackend) -> String {
    let o = std::process::Command::new("ip")
        .args(["-o", "link", "show", "dev", &b.config().ifname])
        .output()
        .expect("run ip (iproute2)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn test_netback_carrier_is_off_until_connected_and_off_again_after_disconnect() {
    // Arrange
    let w = World::start("nb-car");
    let be = backend_with("a", Some(STALL));
    let before = carrier(&be);
    let link_before = link(&be);
    let mut f = Front::new(&w.rt);
    for i in 0..32 {
        let g = f.rx_refs[i];
        f.post_rx(i as u16, g);
    }
    f.kick();

    // Act
    let dev = be
        .connect(&w.handles, w.rt.domid(), &f.params())
        .expect("connect");
    let connected = wait_carrier(&be, true, STEP);
    let dev_says = dev.carrier();
    let link_connected = link(&be);
    // The frontend closes: backendd disconnects the device.
    dev.disconnect();
    let after = wait_carrier(&be, false, STEP);
    // It comes back (a frontend restart: fresh rings).
    let mut f2 = Front::new(&w.rt);
    for i in 0..32 {
        let g = f2.rx_refs[i];
        f2.post_rx(i as u16, g);
    }
    f2.kick();
    let dev2 = be
        .connect(&w.handles, w.rt.domid(), &f2.params())
        .expect("reconnect");
    let reconnected = wait_carrier(&be, true, STEP);
    drop(dev2);
    let dropped = wait_carrier(&be, false, STEP);

    // Assert
    assert!(!before, "no carrier before a frontend connects");
    assert!(
        link_before.contains("NO-CARRIER") && link_before.contains(",UP"),
        "the TAP is up without carrier: {link_before}"
    );
    assert!(connected && dev_says, "carrier while connected");
    assert!(
        link_connected.contains("LOWER_UP"),
        "carrier while connected: {link_connected}"
    );
    assert!(!after, "no carrier after the frontend went away");
    assert!(reconnected, "carrier again after the frontend reconnected");
    assert!(!dropped, "no carrier once the device is dropped");
}

#[test]
fn test_netback_rx_stall_turns_the_carrier_off_until_the_guest_posts_again() {
    // Arrange: 4 rx requests, fewer than a scatter-gather packet may need.
    let w = World::start("nb-stall");
    let be = backend_with("s", Some(STALL));
    let mut f = Front::new(&w.rt);
    for i in 0..4 {
        let g = f.rx_refs[i];
        f.post_rx(i as u16, g);
    }
    f.kick();
    let dev = be
        .connect(&w.handles, w.rt.domid(), &f.params())
        .expect("connect");
    let on_at_connect = wait_carrier(&be, true, STEP);

    // Act: frames wait on the TAP, the guest posts nothing more.
    let t0 = Instant::now();
    for _ in 0..3 {
        inject(&be.config().ifname, &frame(200));
    }
    let stalled = wait_carrier(&be, false, STEP);
    let stalled_after = t0.elapsed();
    let dev_stalled = dev.carrier();
    let nothing_delivered = f.rx_response(Duration::ZERO).is_none();
    // The guest posts enough requests again.
    for i in 4..40 {
        let g = f.rx_refs[i];
        f.post_rx(i as u16, g);
    }
    f.kick();
    let ready = wait_carrier(&be, true, STEP);
    let delivered = f.rx_response(STEP);

    // Assert
    assert!(on_at_connect, "carrier while connected");
    assert!(
        !stalled && !dev_stalled,
        "a stalled guest rx queue turns the carrier off"
    );
    assert!(
        stalled_after >= STALL,
        "not before the stall timeout: {stalled_after:?}"
    );
    assert!(nothing_delivered, "nothing was delivered while stalled");
    assert!(ready, "carrier on again once the guest posts requests");
    assert!(
        delivered.is_some_and(|r| r.status > 0),
        "the waiting frames are delivered: {delivered:?}"
    );
    assert!(dev.failure().is_none());
}

#[test]
fn test_netback_without_stall_detection_keeps_the_carrier_of_a_guest_that_does_not_receive() {
    // Arrange
    let w = World::start("nb-nostall");
    let be = backend_with("n", None);
    let mut f = Front::new(&w.rt);
    f.kick();
    let dev = be
        .connect(&w.handles, w.rt.domid(), &f.params())
        .expect("connect");

    // Act
    let on = wait_carrier(&be, true, STEP);
    for _ in 0..3 {
        inject(&be.config().ifname, &frame(200));
    }
    std::thread::sleep(STALL * 4);

    // Assert
    assert!(on);
    assert!(carrier(&be), "no stall detection: the carrier stays on");
    drop(dev);
}
