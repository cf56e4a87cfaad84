//! Domain connections over a real `xenstore_domain_interface` page (a
//! memfd shared with the daemon) and eventfd event channels: introduction,
//! `server_features`, relative paths, reconnection and hostile indices.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Daemon;
use xen_ring::bytes::xs_offsets;
use xenstore_wire::{Request, XsError};

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn test_guest_ring_read_write_relative_paths() {
    let d = Daemon::start();
    let mut dom0 = d.client();
    dom0.mkdir("/local/domain/5").unwrap();
    dom0.set_perms("/local/domain/5", "n5").unwrap();
    let mut g = d.guest(5);
    g.write("data/x", "hello").unwrap();
    assert_eq!(g.read("data/x").unwrap(), b"hello");
    assert_eq!(dom0.read("/local/domain/5/data/x").unwrap(), b"hello");
    assert_eq!(dom0.get_perms("/local/domain/5/data/x").unwrap(), "n5");
}

#[test]
fn test_guest_ring_server_features_published() {
    let d = Daemon::start();
    let g = d.guest(6);
    let f = g
        .link
        .word(xs_offsets::SERVER_FEATURES)
        .load(Ordering::Acquire);
    assert_eq!(f & 3, 3, "reconnection and error features offered");
}

#[test]
fn test_guest_ring_large_value_crosses_ring_wrap() {
    let d = Daemon::start();
    let mut dom0 = d.client();
    dom0.mkdir("/local/domain/7").unwrap();
    dom0.set_perms("/local/domain/7", "n7").unwrap();
    let mut g = d.guest(7);
    let v: String = "x".repeat(1900);
    for i in 0..20 {
        g.write(&format!("big{i}"), &v).unwrap();
        assert_eq!(g.read(&format!("big{i}")).unwrap(), v.as_bytes());
    }
}

#[test]
fn test_guest_relative_watch_gets_relative_events() {
    let d = Daemon::start();
    let mut dom0 = d.client();
    dom0.mkdir("/local/domain/8/device").unwrap();
    dom0.set_perms("/local/domain/8", "n8").unwrap();
    dom0.set_perms("/local/domain/8/device", "n8").unwrap();
    let mut g = d.guest(8);
    g.watch("device", "tok").unwrap();
    assert_eq!(g.event(SHORT), Some(("device".into(), "tok".into())));
    dom0.write("/local/domain/8/device/vif", "1").unwrap();
    assert_eq!(g.event(SHORT), Some(("device/vif".into(), "tok".into())));
}

#[test]
fn test_guest_reconnect_resets_state() {
    let d = Daemon::start();
    let mut dom0 = d.client();
    dom0.mkdir("/local/domain/9").unwrap();
    dom0.set_perms("/local/domain/9", "n9").unwrap();
    let mut g = d.guest(9);
    g.watch("w", "t").unwrap();
    let _ = g.events_within(SHORT);
    let t = g.start();
    // The guest asks for a reconnection (after resetting itself).
    g.link
        .word(xs_offsets::CONNECTION)
        .store(1, Ordering::SeqCst);
    g.link.kick();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while g.link.word(xs_offsets::CONNECTION).load(Ordering::SeqCst) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon did not reconnect"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for off in [
        xs_offsets::REQ_CONS,
        xs_offsets::REQ_PROD,
        xs_offsets::RSP_CONS,
        xs_offsets::RSP_PROD,
    ] {
        assert_eq!(g.link.word(off).load(Ordering::SeqCst), 0);
    }
    // A fresh guest end on the reset page works; old state is gone.
    let mut g2 = common::Client::new(reattach(g));
    assert_eq!(g2.end(t, true), Err(XsError::Enoent));
    dom0.write("/local/domain/9/w", "x").unwrap();
    assert!(g2.pending_events().is_empty(), "watches were reset");
    g2.write("after", "1").unwrap();
}

fn reattach(g: common::Client<common::Ring>) -> common::Ring {
    let mut ring = g.link;
    ring.reattach();
    ring
}

#[test]
fn test_guest_bad_ring_index_ignored_others_served() {
    let d = Daemon::start();
    let mut dom0 = d.client();
    let g = d.guest(10);
    // A hostile producer index: more than the ring size ahead.
    g.link
        .word(xs_offsets::REQ_PROD)
        .store(5000, Ordering::SeqCst);
    g.link.kick();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while g.link.word(xs_offsets::ERROR).load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "error not reported");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(g.link.word(xs_offsets::ERROR).load(Ordering::SeqCst), 2);
    dom0.write("/still", "alive").unwrap();
    assert_eq!(dom0.read("/still").unwrap(), b"alive");
    // Still introduced.
    assert_eq!(
        dom0.call(&Request::IsDomainIntroduced { domid: 10 }, 0)
            .unwrap(),
        b"T\0"
    );
}

#[test]
fn test_guest_oversized_packet_sets_proto_error() {
    let d = Daemon::start();
    let mut dom0 = d.client();
    let mut g = d.guest(11);
    let h = xenstore_wire::Header::new(xenstore_wire::MsgType::Write, 1, 0, 5000);
    common::Link::send(&mut g.link, &h.encode());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while g.link.word(xs_offsets::ERROR).load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "error not reported");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(g.link.word(xs_offsets::ERROR).load(Ordering::SeqCst), 3);
    dom0.write("/still", "alive").unwrap();
}

#[test]
fn test_release_closes_guest_connection() {
    let d = Daemon::start();
    let mut dom0 = d.client();
    let _g = d.guest(12);
    dom0.ok(&Request::Release { domid: 12 }, 0).unwrap();
    assert_eq!(
        dom0.call(&Request::IsDomainIntroduced { domid: 12 }, 0)
            .unwrap(),
        b"F\0"
    );
    // Re-introduction maps it again.
    let mut g = d.guest(12);
    assert_eq!(
        g.call(&Request::GetDomainPath { domid: 12 }, 0).unwrap(),
        b"/local/domain/12\0"
    );
}
