//! Freestanding check: this binary has no `std`, no libc and no C runtime.
//! It links the project's `no_std` crates, exercises them a little, prints
//! `nostd-check: ok` with a raw `write` system call and exits with status 0.
#![no_std]
#![no_main]

extern crate alloc;

mod rt;

fn exercise() -> bool {
    // Filled in as the no_std crates grow: each one gets a small use here so the
    // linker has to pull it in.
    exercise_abi()
        && exercise_ring()
        && exercise_xenstore_wire()
        && exercise_platform()
        && exercise_xenbus()
        && exercise_consfront()
        && exercise_blkfront()
        && exercise_netfront()
}

/// The ABI mirrors: a few layouts the rest of the stack relies on.
fn exercise_abi() -> bool {
    use core::mem::size_of;
    use xen_abi::io::blkif::{blkif_request, blkif_response};
    use xen_abi::xen::shared_info;
    size_of::<blkif_request>() == 112
        && size_of::<blkif_response>() == 16
        && size_of::<shared_info>() == 3136
        && xen_abi::io::ring::const_ring_size(4096, 112) == 32
}

/// An io/ring.h ring over a static page: a blkif-shaped request and response
/// round trip with the notification checks.
fn exercise_ring() -> bool {
    use xen_ring::{BackRing, FrontRing, SharedRing};

    #[repr(C, align(4096))]
    struct Page(core::cell::UnsafeCell<[u8; 4096]>);
    // SAFETY: only this function touches the page, through the two ring
    // endpoints, which use atomic and volatile accesses.
    unsafe impl Sync for Page {}
    static PAGE: Page = Page(core::cell::UnsafeCell::new([0; 4096]));

    let p = PAGE.0.get().cast::<u8>();
    // SAFETY: PAGE is 4096 bytes, page-aligned and lives forever; the two
    // endpoints are its only users.
    let Ok((fm, bm)) =
        (unsafe { SharedRing::new(p, 4096).and_then(|f| Ok((f, SharedRing::new(p, 4096)?))) })
    else {
        return false;
    };
    let (Ok(mut front), Ok(mut back)) = (
        FrontRing::<[u64; 14], [u64; 2]>::init(fm),
        BackRing::<[u64; 14], [u64; 2]>::attach(bm),
    ) else {
        return false;
    };
    if front.nr_ents() != 32 || front.push_request(&[7; 14]).is_err() {
        return false;
    }
    let notify = front.push_requests_and_check_notify();
    let Ok(Some(req)) = back.take_request() else {
        return false;
    };
    if back.push_response(&[req[0] + 1, 0]).is_err() {
        return false;
    }
    back.push_responses_and_check_notify();
    notify && front.take_response() == Ok(Some([8, 0]))
}

/// The xenstore wire codec: encode a request, decode it back through the
/// incremental decoder, parse it, and build an error reply.
fn exercise_xenstore_wire() -> bool {
    use xenstore_wire::{Decoder, MsgType, PacketWriter, Request, XsError};

    let mut wire = alloc::vec::Vec::new();
    let req = Request::Write {
        path: "/local/domain/1/x",
        value: b"v",
    };
    if req.encode(3, 0, &mut wire).is_err() {
        return false;
    }
    let mut dec = Decoder::new();
    dec.push(&wire);
    let ok = match dec.next_packet() {
        Ok(Some((hdr, payload))) => {
            hdr.msg_type() == Some(MsgType::Write) && Request::parse(&hdr, payload) == Ok(req)
        }
        _ => false,
    };
    let mut out = alloc::vec::Vec::new();
    PacketWriter::error(&mut out, 3, 0, XsError::Enoent);
    ok && out.ends_with(b"ENOENT\0") && xenstore_wire::path::validate("/a/b", false).is_ok()
}

/// The frontend platform trait through its fake (alloc, grants, event
/// channels, xenstore): a frontend-shaped round trip without std.
fn exercise_platform() -> bool {
    use xen_front_platform::fake::FakePlatform;
    use xen_front_platform::{Platform, XBT_NIL};

    let p = FakePlatform::new(7);
    let Ok(pages) = p.alloc_pages(1) else {
        return false;
    };
    let Ok(gref) = p.grant_access(0, pages.first_gfn(), false) else {
        return false;
    };
    if pages.write(0, b"ping").is_err() {
        return false;
    }
    let Ok(map) = p.peer_map(gref, 0, true) else {
        return false;
    };
    let mut seen = [0u8; 4];
    map.read(0, &mut seen);
    map.write(4, b"pong");
    let busy = p.end_access(gref).is_err();
    p.peer_unmap(map);
    let mut answer = [0u8; 4];
    let read_ok = pages.read(4, &mut answer).is_ok();
    let revoked = p.end_access(gref).is_ok();

    let Ok(port) = p.evtchn_alloc_unbound(0) else {
        return false;
    };
    let bound = p.peer_bind(port, 0, 1).is_ok() && p.peer_notify(port).is_ok();
    let pending = p.evtchn_clear(port) == Ok(true);

    let xs = p.xs_write(XBT_NIL, "device/vif/0/state", b"1").is_ok()
        && p.xs_read(XBT_NIL, "device/vif/0/state").as_deref() == Ok(&b"1"[..]);

    seen == *b"ping"
        && busy
        && read_ok
        && answer == *b"pong"
        && revoked
        && bound
        && pending
        && xs
        && p.free_pages(pages).is_ok()
}

/// The guest's xenbus client over a static xenstore page: a watch event
/// written by a server end is read and queued; the state helpers over the
/// fake platform.
fn exercise_xenbus() -> bool {
    use xen_front_platform::fake::FakePlatform;
    use xen_front_platform::{Platform, XBT_NIL};
    use xen_ring::bytes::XsRing;
    use xen_ring::SharedRing;
    use xen_xenbus::{state, ClientConfig, FnEvents, XenbusClient};
    use xenstore_wire::PacketWriter;

    #[repr(C, align(4096))]
    struct Page(core::cell::UnsafeCell<[u8; 4096]>);
    // SAFETY: only this function touches the page, through a guest end and a
    // server end of the xenstore ring, which use atomic and volatile accesses.
    unsafe impl Sync for Page {}
    static PAGE: Page = Page(core::cell::UnsafeCell::new([0; 4096]));

    let p = PAGE.0.get().cast::<u8>();
    // SAFETY: PAGE is 4096 bytes, page-aligned and lives forever; the server
    // end and the client are its only users.
    let (Ok(server_mem), Ok(guest_mem)) = (unsafe { SharedRing::new(p, 4096) }, unsafe {
        SharedRing::new(p, 4096)
    }) else {
        return false;
    };
    let Ok(mut server) = XsRing::server(server_mem) else {
        return false;
    };
    let events = FnEvents {
        notify: || Ok(()),
        wait: |_| false,
        now_ns: || 0,
    };
    let Ok(mut client) = XenbusClient::new(guest_mem, events, ClientConfig::default()) else {
        return false;
    };
    let mut ev = alloc::vec::Vec::new();
    if PacketWriter::watch_event(&mut ev, b"device/vif", b"tok").is_err()
        || server.write(&ev) != ev.len()
    {
        return false;
    }
    let got = matches!(
        client.try_read_watch(),
        Ok(Some(e)) if e.path == "device/vif" && e.token == "tok"
    );

    let fake = FakePlatform::new(3);
    let seeded = fake.xs_write(XBT_NIL, "device/vif/0/state", b"1").is_ok();
    let switched = state::switch_state(
        &fake,
        "device/vif/0",
        xen_abi::io::xenbus::XenbusState::Connected,
    ) == Ok(true);
    got && seeded
        && switched
        && state::read_state(&fake, XBT_NIL, "device/vif/0")
            == xen_abi::io::xenbus::XenbusState::Connected
}

/// The console frontend over a static console page: output lands in `out`
/// with one notification, input put in `in` by a backend end is read.
fn exercise_consfront() -> bool {
    use core::sync::atomic::{AtomicU32, Ordering};
    use xen_consfront::{ConsFront, ConsoleEvents};
    use xen_ring::bytes::ConsRing;
    use xen_ring::SharedRing;

    #[repr(C, align(4096))]
    struct Page(core::cell::UnsafeCell<[u8; 4096]>);
    // SAFETY: only this function touches the page, through a guest end and a
    // backend end of the console ring, which use atomic and volatile accesses.
    unsafe impl Sync for Page {}
    static PAGE: Page = Page(core::cell::UnsafeCell::new([0; 4096]));

    struct Ev(AtomicU32);
    impl ConsoleEvents for Ev {
        fn notify(&self) -> Result<(), i32> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn wait(&self, _: core::time::Duration) -> bool {
            false
        }
        fn now_ns(&self) -> u64 {
            0
        }
    }

    let p = PAGE.0.get().cast::<u8>();
    // SAFETY: PAGE is 4096 bytes, page-aligned and lives forever; the backend
    // end and the frontend are its only users.
    let (Ok(back_mem), Ok(guest_mem)) = (unsafe { SharedRing::new(p, 4096) }, unsafe {
        SharedRing::new(p, 4096)
    }) else {
        return false;
    };
    let Ok(mut back) = ConsRing::backend(back_mem) else {
        return false;
    };
    let ev = Ev(AtomicU32::new(0));
    let Ok(mut con) = ConsFront::new(guest_mem, &ev) else {
        return false;
    };
    let wrote = con.write(b"hvc0") == Ok(4);
    let mut out = [0u8; 8];
    let got_out = back.read(&mut out) == Ok(4) && &out[..4] == b"hvc0";
    let typed = back.write(b"ok") == 2;
    let mut inp = [0u8; 8];
    let got_in = con.read(&mut inp) == Ok(2) && &inp[..2] == b"ok";
    wrote && got_out && typed && got_in && ev.0.load(Ordering::Relaxed) == 2
}

/// The block frontend over the fake platform: the xenbus handshake to
/// Connected against a minimal backend played here, then a flush answered on
/// the ring.
fn exercise_blkfront() -> bool {
    use xen_blkfront::request::{ReqSlot, RspSlot};
    use xen_blkfront::{BlkFront, BlkStatus, BlkfrontConfig, FrontState};
    use xen_front_platform::fake::FakePlatform;
    use xen_front_platform::{Platform, XBT_NIL};
    use xen_ring::{BackRing, SharedRing};

    let p = FakePlatform::new(2);
    let fe = "/local/domain/2/device/vbd/51712";
    let be = "/local/domain/0/backend/vbd/2/51712";
    let mut ok = true;
    for (k, v) in [("backend", be), ("backend-id", "0"), ("state", "1")] {
        ok &= p
            .xs_write(XBT_NIL, &alloc::format!("{fe}/{k}"), v.as_bytes())
            .is_ok();
    }
    let cfg = BlkfrontConfig {
        max_ring_page_order: 0,
        ..BlkfrontConfig::default()
    };
    let Ok(mut front) = BlkFront::new(&p, 51712, cfg) else {
        return false;
    };
    let pump = |front: &mut BlkFront<'_, FakePlatform>| {
        while let Ok(Some(ev)) = p.xs_read_watch(Some(core::time::Duration::ZERO)) {
            let _ = front.handle_watch(&ev);
        }
    };
    pump(&mut front);
    ok &= p
        .xs_write(XBT_NIL, &alloc::format!("{be}/state"), b"2")
        .is_ok();
    pump(&mut front);
    let num = |k: &str| {
        p.xs_read(XBT_NIL, &alloc::format!("{fe}/{k}"))
            .ok()
            .and_then(|v| core::str::from_utf8(&v).ok()?.parse::<u32>().ok())
    };
    let (Some(gref), Some(port)) = (num("ring-ref"), num("event-channel")) else {
        return false;
    };
    let Ok(map) = p.peer_map(gref, 0, true) else {
        return false;
    };
    // SAFETY: the mapped ring page stays valid while mapped (the fake frees
    // no granted page); this BackRing is its only back endpoint.
    let Ok(mem) = (unsafe { SharedRing::new(map.as_ptr(), 4096) }) else {
        return false;
    };
    let Ok(mut back) = BackRing::<ReqSlot, RspSlot>::attach(mem) else {
        return false;
    };
    ok &= p.peer_bind(port, 0, 9).is_ok();
    for (k, v) in [
        ("sectors", "64"),
        ("feature-flush-cache", "1"),
        ("state", "4"),
    ] {
        ok &= p
            .xs_write(XBT_NIL, &alloc::format!("{be}/{k}"), v.as_bytes())
            .is_ok();
    }
    pump(&mut front);
    if !ok || front.state() != FrontState::Connected || front.flush().is_err() {
        return false;
    }
    let Ok(Some(req)) = back.take_request() else {
        return false;
    };
    // Response: id (bytes 0..8), operation (byte 8), status 0.
    let rsp: RspSlot = [req[1], u64::from(req[0] as u8)];
    if back.push_response(&rsp).is_err() {
        return false;
    }
    back.push_responses_and_check_notify();
    let done = front.poll_completions();
    let _mem: SharedRing = back.into_shared();
    p.peer_unmap(map);
    matches!(done.as_deref(), Ok([c]) if c.status == BlkStatus::Okay)
}

/// The network frontend over the fake platform: the handshake to
/// Connected against a minimal backend played here, then one frame sent and
/// its response reaped.
fn exercise_netfront() -> bool {
    use xen_front_platform::fake::FakePlatform;
    use xen_front_platform::{Platform, XBT_NIL};
    use xen_netfront::request::{TxRspSlot, TxSlot};
    use xen_netfront::{NetFront, NetfrontConfig, PacketMeta};
    use xen_ring::{BackRing, SharedRing};

    let p = FakePlatform::new(3);
    let fe = "/local/domain/3/device/vif/0";
    let be = "/local/domain/0/backend/vif/3/0";
    let mut ok = true;
    for (k, v) in [
        ("backend", be),
        ("backend-id", "0"),
        ("state", "1"),
        ("mac", "00:16:3e:00:00:01"),
    ] {
        ok &= p
            .xs_write(XBT_NIL, &alloc::format!("{fe}/{k}"), v.as_bytes())
            .is_ok();
    }
    let Ok(mut front) = NetFront::new(&p, 0, NetfrontConfig::default()) else {
        return false;
    };
    let pump = |front: &mut NetFront<'_, FakePlatform>| {
        while let Ok(Some(ev)) = p.xs_read_watch(Some(core::time::Duration::ZERO)) {
            let _ = front.handle_watch(&ev);
        }
    };
    pump(&mut front);
    ok &= p
        .xs_write(XBT_NIL, &alloc::format!("{be}/state"), b"2")
        .is_ok();
    pump(&mut front);
    let num = |k: &str| {
        p.xs_read(XBT_NIL, &alloc::format!("{fe}/{k}"))
            .ok()
            .and_then(|v| core::str::from_utf8(&v).ok()?.parse::<u32>().ok())
    };
    let (Some(gref), Some(port)) = (num("tx-ring-ref"), num("event-channel")) else {
        return false;
    };
    let Ok(map) = p.peer_map(gref, 0, true) else {
        return false;
    };
    // SAFETY: the mapped ring page stays valid while mapped (the fake frees
    // no granted page); this BackRing is its only back endpoint.
    let Ok(mem) = (unsafe { SharedRing::new(map.as_ptr(), 4096) }) else {
        return false;
    };
    let Ok(mut back) = BackRing::<TxSlot, TxRspSlot>::attach(mem) else {
        return false;
    };
    ok &= p.peer_bind(port, 0, 9).is_ok();
    ok &= p
        .xs_write(XBT_NIL, &alloc::format!("{be}/state"), b"4")
        .is_ok();
    pump(&mut front);
    if !ok || !front.is_connected() {
        return false;
    }
    if !matches!(
        front.transmit(0, &[0u8; 60], PacketMeta::default()),
        Ok(true)
    ) {
        return false;
    }
    if front.push_tx(0).is_err() {
        return false;
    }
    let Ok(Some(req)) = back.take_request() else {
        return false;
    };
    // netif_tx_response: id (bytes 8..10 of the request), status 0.
    let rsp: TxRspSlot = [req[8], req[9], 0, 0];
    if back.push_response(&rsp).is_err() {
        return false;
    }
    back.push_responses_and_check_notify();
    let done = front.reap_tx(0);
    let _mem: SharedRing = back.into_shared();
    p.peer_unmap(map);
    matches!(done, Ok(1))
}

// Entry point called by the kernel (no crt0): align the stack as the SysV ABI
// expects at a call, then enter Rust.
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym nostd_main,
);

extern "C" fn nostd_main() -> ! {
    if exercise() {
        rt::write(1, b"nostd-check: ok\n");
        rt::exit(0)
    } else {
        rt::write(1, b"nostd-check: FAIL\n");
        rt::exit(1)
    }
}
