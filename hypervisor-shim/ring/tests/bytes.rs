//! Normal operation of the xenstore and console byte rings.

mod common;

use common::*;
use proptest::prelude::*;
use xen_ring::bytes::{
    cons_offsets, split, xs_offsets, ByteRingLayout, ConsRing, XsRing, XENSTORE_CONNECTED,
    XENSTORE_ERROR_RINGIDX, XENSTORE_RECONNECT, XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
};

#[test]
fn test_xenstore_guest_request_reaches_server_and_reply_returns() {
    let pages = Pages::new(1);
    let mut guest = XsRing::guest(pages.shared()).unwrap();
    let mut server = XsRing::server(pages.shared()).unwrap();
    assert_eq!(guest.write(b"READ\0/local/domain/1\0"), 21);
    assert_eq!(pages.peek_u32(xs_offsets::REQ_PROD), 21);
    assert_eq!(server.available(), Ok(21));
    let mut buf = [0u8; 64];
    assert_eq!(server.read(&mut buf), Ok(21));
    assert_eq!(&buf[..21], b"READ\0/local/domain/1\0");
    assert_eq!(pages.peek_u32(xs_offsets::REQ_CONS), 21);
    assert_eq!(server.write(b"ok"), 2);
    assert_eq!(pages.peek_u32(xs_offsets::RSP_PROD), 2);
    assert_eq!(guest.read(&mut buf), Ok(2));
    assert_eq!(&buf[..2], b"ok");
}

#[test]
fn test_xenstore_partial_write_when_ring_fills() {
    let pages = Pages::new(1);
    let mut guest = XsRing::guest(pages.shared()).unwrap();
    let mut server = XsRing::server(pages.shared()).unwrap();
    let data: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
    assert_eq!(guest.write(&data), 1024);
    assert_eq!(guest.free_space(), Ok(0));
    assert_eq!(guest.write(&data), 0);
    let mut buf = vec![0u8; 600];
    assert_eq!(server.read(&mut buf), Ok(600));
    assert_eq!(&buf[..], &data[..600]);
    assert_eq!(guest.write(&data[1024..]), 476);
    let mut rest = vec![0u8; 2000];
    assert_eq!(server.read(&mut rest), Ok(900));
    assert_eq!(&rest[..900], &data[600..]);
}

#[test]
fn test_peek_does_not_consume_and_advance_does() {
    let pages = Pages::new(1);
    let mut guest = XsRing::guest(pages.shared()).unwrap();
    let mut server = XsRing::server(pages.shared()).unwrap();
    guest.write(b"header..payload");
    let mut hdr = [0u8; 8];
    assert_eq!(server.peek(&mut hdr), Ok(8));
    assert_eq!(server.peek(&mut hdr), Ok(8));
    assert_eq!(&hdr, b"header..");
    server.advance(8).unwrap();
    let mut body = [0u8; 16];
    assert_eq!(server.read(&mut body), Ok(7));
    assert_eq!(&body[..7], b"payload");
}

#[test]
fn test_byte_ring_indices_wrap_at_u32_max() {
    let pages = Pages::new(1);
    let start = u32::MAX - 10;
    for off in [
        xs_offsets::REQ_PROD,
        xs_offsets::REQ_CONS,
        xs_offsets::RSP_PROD,
        xs_offsets::RSP_CONS,
    ] {
        pages.poke_u32(off, start);
    }
    let mut guest = XsRing::guest(pages.shared()).unwrap();
    let mut server = XsRing::server(pages.shared()).unwrap();
    let mut next = 0u8;
    let mut expect = 0u8;
    for chunk in [1usize, 7, 100, 1023, 1024, 5, 999] {
        let data: Vec<u8> = (0..chunk)
            .map(|_| {
                next = next.wrapping_add(1);
                next
            })
            .collect();
        assert_eq!(guest.write(&data), chunk);
        let mut buf = vec![0u8; chunk];
        assert_eq!(server.read(&mut buf), Ok(chunk));
        for b in buf {
            expect = expect.wrapping_add(1);
            assert_eq!(b, expect);
        }
    }
    assert!(pages.peek_u32(xs_offsets::REQ_PROD) < 4000);
}

#[test]
fn test_xenstore_status_words() {
    let pages = Pages::new(1);
    let guest = XsRing::guest(pages.shared()).unwrap();
    let server = XsRing::server(pages.shared()).unwrap();
    server
        .set_server_features(XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR);
    assert_eq!(pages.peek_u32(xs_offsets::SERVER_FEATURES), 3);
    assert_eq!(guest.server_features(), 3);
    guest.set_connection(XENSTORE_RECONNECT);
    assert_eq!(pages.peek_u32(xs_offsets::CONNECTION), 1);
    assert_eq!(server.connection(), XENSTORE_RECONNECT);
    server.set_connection(XENSTORE_CONNECTED);
    assert_eq!(guest.connection(), XENSTORE_CONNECTED);
    server.set_error(XENSTORE_ERROR_RINGIDX);
    assert_eq!(pages.peek_u32(xs_offsets::ERROR), 2);
    assert_eq!(guest.error(), XENSTORE_ERROR_RINGIDX);
}

#[test]
fn test_console_both_directions_use_their_own_areas() {
    let pages = Pages::new(1);
    let mut guest = ConsRing::guest(pages.shared()).unwrap();
    let mut backend = ConsRing::backend(pages.shared()).unwrap();
    assert_eq!(guest.free_space(), Ok(2048));
    assert_eq!(backend.free_space(), Ok(1024));
    assert_eq!(guest.write(b"boot log"), 8);
    assert_eq!(pages.peek_u32(cons_offsets::OUT_PROD), 8);
    assert_eq!(pages.peek_u32(cons_offsets::IN_PROD), 0);
    assert_eq!(backend.write(b"keys"), 4);
    assert_eq!(pages.peek_u32(cons_offsets::IN_PROD), 4);
    let mut buf = [0u8; 16];
    assert_eq!(backend.read(&mut buf), Ok(8));
    assert_eq!(&buf[..8], b"boot log");
    assert_eq!(guest.read(&mut buf), Ok(4));
    assert_eq!(&buf[..4], b"keys");
    assert_eq!(pages.peek_u32(cons_offsets::OUT_CONS), 8);
    assert_eq!(pages.peek_u32(cons_offsets::IN_CONS), 4);
    // The data landed where console.h puts it.
    let mut page = [0u8; 8];
    for (i, b) in page.iter_mut().enumerate() {
        // SAFETY: in bounds of the page, no ring is writing now.
        *b = unsafe { std::ptr::read_volatile(pages.ptr().add(cons_offsets::OUT + i)) };
    }
    assert_eq!(&page, b"boot log");
}

#[test]
fn test_console_out_holds_2048_bytes() {
    let pages = Pages::new(1);
    let (mut tx, _rx) = ConsRing::guest(pages.shared()).unwrap().into_parts();
    assert_eq!(tx.size(), 2048);
    assert_eq!(tx.write(&[1u8; 3000]), 2048);
}

#[test]
fn test_generic_split_on_custom_layout() {
    let pages = Pages::new(2);
    let a = ByteRingLayout {
        data_offset: 4096,
        size: 4096,
        prod_offset: 0,
        cons_offset: 64,
    };
    let b = ByteRingLayout {
        data_offset: 1024,
        size: 1024,
        prod_offset: 128,
        cons_offset: 192,
    };
    let (mut tx, _) = split(pages.shared(), a, b).unwrap();
    let (_, mut rx) = split(pages.shared(), b, a).unwrap();
    assert_eq!(tx.write(&[9u8; 5000]), 4096);
    let mut buf = vec![0u8; 5000];
    assert_eq!(rx.read(&mut buf), Ok(4096));
    assert!(buf[..4096].iter().all(|&x| x == 9));
}

#[test]
fn test_byte_ring_two_threads_stream() {
    use std::sync::Arc;
    let pages = Arc::new(Pages::new(1));
    let (mut tx, _) = XsRing::guest(pages.shared()).unwrap().into_parts();
    let (_, mut rx) = XsRing::server(pages.shared()).unwrap().into_parts();
    const TOTAL: usize = 2_000_000;
    let writer = std::thread::spawn(move || {
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        let mut off = 0;
        while off < TOTAL {
            let n = tx.try_write(&data[off..(off + 300).min(TOTAL)]).unwrap();
            off += n;
            if n == 0 {
                std::thread::yield_now();
            }
        }
    });
    let mut got = 0;
    let mut buf = [0u8; 777];
    while got < TOTAL {
        let n = rx.read(&mut buf).unwrap();
        for (i, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, ((got + i) % 251) as u8);
        }
        got += n;
        if n == 0 {
            std::thread::yield_now();
        }
    }
    writer.join().unwrap();
}

proptest! {
    #[test]
    fn prop_byte_ring_stream_matches_model(
        start in any::<u32>(),
        ops in prop::collection::vec((any::<bool>(), 0usize..1500, any::<bool>()), 1..100),
    ) {
        let pages = Pages::new(1);
        for off in [cons_offsets::IN_PROD, cons_offsets::IN_CONS] {
            pages.poke_u32(off, start);
        }
        let mut backend = ConsRing::backend(pages.shared()).unwrap();
        let mut guest = ConsRing::guest(pages.shared()).unwrap();
        let mut model = std::collections::VecDeque::new();
        let mut counter = 0u8;
        for (write, n, peek_first) in ops {
            if write {
                let data: Vec<u8> = (0..n).map(|_| { counter = counter.wrapping_add(1); counter }).collect();
                let free = 1024 - model.len();
                let w = backend.write(&data);
                prop_assert_eq!(w, n.min(free));
                model.extend(&data[..w]);
                // Bytes not written are "unsent": rewind the counter.
                counter = counter.wrapping_sub((n - w) as u8);
            } else {
                let mut buf = vec![0u8; n];
                let r = if peek_first {
                    let p = guest.peek(&mut buf).unwrap();
                    guest.advance(p).unwrap();
                    p
                } else {
                    guest.read(&mut buf).unwrap()
                };
                prop_assert_eq!(r, n.min(model.len()));
                for &b in &buf[..r] {
                    prop_assert_eq!(Some(b), model.pop_front());
                }
            }
            prop_assert_eq!(guest.available().unwrap() as usize, model.len());
        }
    }
}
