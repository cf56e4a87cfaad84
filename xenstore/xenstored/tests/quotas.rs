//! Each quota, with Xen's defaults and after GET/SET_QUOTA changes. Dom0
//! is exempt.

mod common;

use std::time::Duration;

use common::Daemon;
use xenstore_wire::{Request, XsError};

#[test]
fn test_quota_nodes_enospc_then_raised() {
    let (_d, mut dom0, mut g) = Daemon::with_guest(3);
    dom0.ok(
        &Request::SetQuota {
            domid: Some(3),
            quota: "nodes",
            value: 5,
        },
        0,
    )
    .unwrap();
    // The home node is owned by domain 3 too.
    for i in 0..4 {
        g.write(&format!("n{i}"), "").unwrap();
    }
    assert_eq!(g.write("n4", ""), Err(XsError::Enospc));
    assert_eq!(g.write("deep/a/b", ""), Err(XsError::Enospc));
    dom0.ok(
        &Request::SetQuota {
            domid: Some(3),
            quota: "nodes",
            value: 1000,
        },
        0,
    )
    .unwrap();
    g.write("n4", "").unwrap();
}

#[test]
fn test_quota_node_size_default_2048() {
    let (_d, _dom0, mut g) = Daemon::with_guest(3);
    g.write("ok", &"x".repeat(2000)).unwrap();
    assert_eq!(g.write("big", &"x".repeat(2100)), Err(XsError::Enospc));
    assert_eq!(g.write("ok", &"x".repeat(2100)), Err(XsError::Enospc));
}

#[test]
fn test_quota_watches_default_128() {
    let (_d, _dom0, mut g) = Daemon::with_guest(3);
    for i in 0..128 {
        g.watch(&format!("w{i}"), "t").unwrap();
    }
    assert_eq!(g.watch("w128", "t"), Err(XsError::E2big));
}

#[test]
fn test_quota_transactions_default_10() {
    let (_d, _dom0, mut g) = Daemon::with_guest(3);
    for _ in 0..10 {
        g.start();
    }
    assert_eq!(
        g.call(&Request::TransactionStart, 0).map(|_| ()),
        Err(XsError::Enospc)
    );
}

#[test]
fn test_quota_permissions_per_node() {
    let (_d, mut dom0, mut g) = Daemon::with_guest(3);
    g.write("p", "").unwrap();
    assert_eq!(g.set_perms("p", "n3 r1 r2 r4 r5 r6"), Err(XsError::Enospc));
    g.set_perms("p", "n3 r1 r2 r4 r5").unwrap();
    // Dom0 is exempt.
    dom0.set_perms("/local/domain/3/p", "n3 r1 r2 r4 r5 r6 r7")
        .unwrap();
}

#[test]
fn test_quota_payload_e2big() {
    let (_d, mut dom0, mut g) = Daemon::with_guest(3);
    dom0.ok(
        &Request::SetQuota {
            domid: Some(3),
            quota: "payload",
            value: 100,
        },
        0,
    )
    .unwrap();
    assert_eq!(g.write("p", &"x".repeat(200)), Err(XsError::E2big));
    g.write("p", "small").unwrap();
}

#[test]
fn test_quota_outstanding_throttles_but_answers_all() {
    let (_d, _dom0, mut g) = Daemon::with_guest(3);
    // 40 pipelined requests with the default of 20 outstanding: the daemon
    // stops reading at 20 unread replies and resumes as the guest reads.
    let mut out = Vec::new();
    for i in 0..40u32 {
        Request::GetDomainPath { domid: 3 }
            .encode(i + 1, 0, &mut out)
            .unwrap();
    }
    common::Link::send(&mut g.link, &out);
    for i in 0..40u32 {
        let (h, _) = g.recv_reply();
        assert_eq!(h.req_id, i + 1);
    }
}

#[test]
fn test_quota_watch_event_queue_bounded() {
    let (_d, mut dom0, mut g) = Daemon::with_guest(3);
    dom0.ok(
        &Request::SetQuota {
            domid: Some(3),
            quota: "watch-events",
            value: 8,
        },
        0,
    )
    .unwrap();
    dom0.ok(
        &Request::SetQuota {
            domid: Some(3),
            quota: "outstanding",
            value: 1000,
        },
        0,
    )
    .unwrap();
    g.watch("q", "t").unwrap();
    let _ = g.events_within(Duration::from_millis(200));
    // The guest does not read while Dom0 makes 100 changes.
    for i in 0..100 {
        dom0.write(&format!("/local/domain/3/q/{i}"), "").unwrap();
    }
    // At the bound the ring is failed (the guest must reconnect) rather
    // than events dropped while later ones are delivered.
    assert_eq!(
        g.link
            .word(xen_ring::bytes::xs_offsets::ERROR)
            .load(std::sync::atomic::Ordering::SeqCst),
        xen_abi::io::xs_wire::XENSTORE_ERROR_COMM
    );
    let events = g.events_within(Duration::from_millis(500));
    assert!(!events.is_empty());
    // At most the queue bound plus what the 1024-byte ring itself holds
    // (each event packet is at least 16 bytes), in order: far fewer than 100.
    assert!(
        events.len() <= 8 + 1024 / 16,
        "queue bounded: got {}",
        events.len()
    );
    for (i, (p, _)) in events.iter().enumerate() {
        assert_eq!(p, &format!("q/{i}"));
    }
}

#[test]
fn test_quota_transaction_nodes() {
    let (_d, mut dom0, mut g) = Daemon::with_guest(3);
    dom0.ok(
        &Request::SetQuota {
            domid: Some(3),
            quota: "transaction-nodes",
            value: 4,
        },
        0,
    )
    .unwrap();
    let t = g.start();
    g.write_tx(t, "a", "").unwrap();
    let mut failed = false;
    for i in 0..10 {
        if g.write_tx(t, &format!("b{i}"), "") == Err(XsError::Enospc) {
            failed = true;
            break;
        }
    }
    assert!(failed, "transaction-nodes enforced");
    assert!(g.end(t, true).is_err());
}

#[test]
fn test_quota_dom0_exempt() {
    let d = Daemon::start();
    let mut dom0 = d.client();
    dom0.ok(
        &Request::SetQuota {
            domid: None,
            quota: "nodes",
            value: 2,
        },
        0,
    )
    .unwrap();
    for i in 0..10 {
        dom0.write(&format!("/many/{i}"), "").unwrap();
    }
}

#[test]
fn test_quota_global_default_applies_to_guests() {
    let (_d, mut dom0, mut g) = Daemon::with_guest(3);
    dom0.ok(
        &Request::SetQuota {
            domid: None,
            quota: "watches",
            value: 2,
        },
        0,
    )
    .unwrap();
    g.watch("a", "t").unwrap();
    g.watch("b", "t").unwrap();
    assert_eq!(g.watch("c", "t"), Err(XsError::E2big));
}
