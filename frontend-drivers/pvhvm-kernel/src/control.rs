//! Xen's PV control protocol in the kernel, as Linux's
//! `drivers/xen/manage.c`: the kernel advertises `control/feature-poweroff`,
//! `feature-reboot` and `feature-suspend`, watches `control/shutdown`, and
//! when the toolstack (`xl shutdown`, `xl reboot`) writes `poweroff`,
//! `halt` or `reboot` there, acknowledges it by writing the empty string back in the
//! same transaction (only requests it carries out, as Linux; anything else
//! is left and logged) and the workload ends: the domain shuts down with
//! `SCHEDOP_shutdown` and the requested reason, so that xl's `on_poweroff`
//! / `on_reboot` actions apply.
//!
//! `suspend` (advertised with `control/feature-suspend`, as Linux's
//! `do_suspend`) is carried out inside [`poll`]: its caller is at a point
//! of its loop where it issues nothing (the kernel is single-threaded:
//! the frontends are quiesced while the vCPU is in the hypercall; the
//! requests already on the rings stay in flight), the kernel makes
//! `SCHEDOP_shutdown(SHUTDOWN_suspend)` and the VMM parks it; when the
//! suspend is cancelled (the hypercall returns 1: a checkpoint, `xl save
//! -c`) the workload goes on with its connections. A resume in a new
//! domain (0: `xl restore` of a save taken while suspended) sets up again
//! what Xen does not carry over, as Linux's `xen_arch_post_suspend` and
//! resume notifiers: the start info is read again (the new domain's store
//! and console ports), the platform sets up its grant table again and
//! forgets the old grants and events ([`KPlatform::resume_new_domain`]),
//! the console rings the new port, the features are advertised again in
//! the new domain (the xenstore reconnection set the watch again); the workloads see
//! [`new_domains`] change and resume their frontends (`BlkFront::resume`,
//! `NetFront::resume` and a gratuitous ARP once the vif is connected).
//!
//! The kernel is single-threaded: the workloads call [`poll`] from their
//! loops (which also moves the balloon, [`crate::balloon::poll`]) (at most once a millisecond it costs a look at the xenstore ring;
//! the node is read when the watch fired and once a second besides,
//! level-triggered). The watch's events never reach a device:
//! [`crate::platform::KPlatform`] keeps them for [`poll`].

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use xen_abi::xen::{start_info, SHUTDOWN_poweroff, SHUTDOWN_reboot};
use xen_front_platform::{Platform, PlatformError, XBT_NIL};

use crate::platform::KPlatform;
use crate::println;

/// The watch token of `control/shutdown`.
pub const TOKEN: &str = "pvhvm-control-shutdown";

/// The node the toolstack writes requests to.
pub const NODE: &str = "control/shutdown";

/// How often [`poll`] reads the node without an event (ns).
const LOOK_NS: u64 = 1_000_000_000;

/// How often [`poll`] looks at the watch queue (ns).
const EVENTS_NS: u64 = 1_000_000;

/// When [`poll`] next looks at the watch queue (monotonic ns).
static NEXT_EVENTS: AtomicU64 = AtomicU64::new(0);

/// Resumes in a new domain so far (see [`new_domains`]).
static NEW_DOMAINS: AtomicU64 = AtomicU64::new(0);

/// How many times the kernel resumed in a new domain: a workload that
/// sees it change resumes its frontends.
pub fn new_domains() -> u64 {
    NEW_DOMAINS.load(Ordering::Relaxed)
}

/// Whether [`init`] ran (no control interface before: [`poll`] is `None`).
static READY: AtomicBool = AtomicBool::new(false);

/// When [`poll`] next reads the node without an event (monotonic ns).
static NEXT_LOOK: AtomicU64 = AtomicU64::new(0);

/// The `SHUTDOWN_*` reason a `control/shutdown` value asks for (`None`:
/// not a request this kernel carries out, or the empty acknowledgement).
#[must_use]
pub fn parse_request(value: &[u8]) -> Option<u32> {
    match value.split(|&b| b == 0).next().unwrap_or_default() {
        b"poweroff" | b"halt" => Some(SHUTDOWN_poweroff),
        b"reboot" => Some(SHUTDOWN_reboot),
        _ => None,
    }
}

/// Whether a `control/shutdown` value asks for a suspend.
fn is_suspend(value: &[u8]) -> bool {
    value.split(|&b| b == 0).next() == Some(b"suspend")
}

/// Advertises the features and sets the watch (the watch fires once at
/// once, so a request written before boot is seen by the first [`poll`]).
pub fn init(p: &KPlatform) {
    advertise(p);
    if let Err(e) = p.xs_watch(NODE, TOKEN) {
        // Still read once a second by poll.
        println!("pvhvm-kernel: cannot watch {NODE}: {e}");
    }
    READY.store(true, Ordering::Relaxed);
}

/// Writes the `control/feature-*` nodes.
fn advertise(p: &KPlatform) {
    // As Linux: poweroff, reboot and suspend; halt is understood but not
    // advertised.
    for f in [
        "control/feature-poweroff",
        "control/feature-reboot",
        "control/feature-suspend",
    ] {
        if let Err(e) = p.xs_write(XBT_NIL, f, b"1") {
            println!("pvhvm-kernel: cannot write {f}: {e}");
        }
    }
}

/// The shutdown the toolstack asked for, if it did: the request is
/// acknowledged; the caller ends its workload and returns the reason.
pub fn poll(p: &KPlatform) -> Option<u32> {
    if !READY.load(Ordering::Relaxed) {
        return None;
    }
    let now = p.monotonic_ns();
    // The watch queue is looked at most once a millisecond (a disk load
    // calls this once per batch of completions).
    if now < NEXT_EVENTS.load(Ordering::Relaxed) {
        return None;
    }
    NEXT_EVENTS.store(now + EVENTS_NS, Ordering::Relaxed);
    crate::balloon::poll(p);
    let fired = p.take_control_events().unwrap_or(false);
    if !fired && now < NEXT_LOOK.load(Ordering::Relaxed) {
        return None;
    }
    NEXT_LOOK.store(now + LOOK_NS, Ordering::Relaxed);
    match take_request(p) {
        Ok(Some(Request::Shutdown(r))) => Some(r),
        Ok(Some(Request::Suspend)) => suspend(p),
        Ok(None) => None,
        Err(e) => {
            println!("pvhvm-kernel: reading {NODE}: {e}");
            None
        }
    }
}

/// What the toolstack asked for.
enum Request {
    /// A shutdown with this reason.
    Shutdown(u32),
    /// A suspend.
    Suspend,
}

/// The suspend (see the [module docs](self)): `None` when the kernel goes
/// on in the same domain, the crash reason when it cannot.
fn suspend(p: &KPlatform) -> Option<u32> {
    let t0 = p.monotonic_ns();
    println!("pvhvm-kernel: suspending (SCHEDOP_shutdown(SHUTDOWN_suspend))");
    let rc = crate::hypercall::suspend();
    let us = p.monotonic_ns().saturating_sub(t0) / 1000;
    match rc {
        1 => {
            println!("pvhvm-kernel: suspend cancelled: resumed in the same domain after {us} us");
            None
        }
        0 => match resume_new_domain(p) {
            Ok(()) => {
                let setup = p.monotonic_ns().saturating_sub(t0) / 1000 - us;
                println!(
                    "pvhvm-kernel: resumed in domain {} after {us} us: grant table, events, xenstore and console set up again in {setup} us",
                    p.domid()
                );
                NEW_DOMAINS.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                println!("pvhvm-kernel: resumed in a new domain but cannot set it up again: {e}");
                Some(xen_abi::xen::SHUTDOWN_crash)
            }
        },
        e => {
            println!("pvhvm-kernel: the suspend was refused ({e}); going on");
            None
        }
    }
}

/// The kernel's part of a resume in a new domain (see the [module
/// docs](self)).
fn resume_new_domain(p: &KPlatform) -> Result<(), PlatformError> {
    let si_gpa = crate::START_INFO.load(Ordering::Relaxed);
    // SAFETY: the start info page the VMM passed at boot (the new
    // domain's, as the restore left it); plain data read once.
    let si: start_info = unsafe { core::ptr::read_volatile(si_gpa as *const start_info) };
    crate::console::set_port(si.console.domU().evtchn);
    // (The platform's reconnection sets the control watch again.)
    p.resume_new_domain(si.store_evtchn)?;
    crate::balloon::resume_new_domain();
    advertise(p);
    // The new domain's node is read at the next poll.
    NEXT_LOOK.store(0, Ordering::Relaxed);
    Ok(())
}

/// Reads the node and acknowledges a request in one transaction (retried
/// on `EAGAIN`, as Linux's `shutdown_handler`).
fn take_request(p: &KPlatform) -> Result<Option<Request>, PlatformError> {
    for _ in 0..16 {
        let tx = p.xs_transaction_start()?;
        let v = match p.xs_read(tx, NODE) {
            Ok(v) => v,
            Err(PlatformError::Xenstore { errno: 2 }) => Vec::new(), // ENOENT
            Err(e) => {
                let _ = p.xs_transaction_end(tx, false);
                return Err(e);
            }
        };
        let req = if is_suspend(&v) {
            Some(Request::Suspend)
        } else {
            parse_request(&v).map(Request::Shutdown)
        };
        if req.is_some() {
            if let Err(e) = p.xs_write(tx, NODE, b"") {
                let _ = p.xs_transaction_end(tx, false);
                return Err(e);
            }
        }
        match p.xs_transaction_end(tx, true) {
            Ok(()) => {}
            Err(PlatformError::Xenstore { errno: 11 }) => continue, // EAGAIN
            Err(e) => return Err(e),
        }
        match req {
            Some(_) => println!(
                "pvhvm-kernel: the toolstack asks for {} (control/shutdown)",
                core::str::from_utf8(v.split(|&b| b == 0).next().unwrap_or_default())
                    .unwrap_or("?")
            ),
            None if !v.is_empty() && v.first() != Some(&0) => println!(
                "pvhvm-kernel: ignoring the shutdown request \"{}\"",
                alloc::string::String::from_utf8_lossy(&v)
            ),
            None => {}
        }
        return Ok(req);
    }
    Err(PlatformError::Xenstore { errno: 11 })
}

/// Waits for a request (the `stay` word: the workload is done but the
/// domain stays up until the toolstack shuts it down, as a machine does);
/// returns its reason.
pub fn wait(p: &KPlatform) -> u32 {
    println!("pvhvm-kernel: workload done; waiting for the toolstack (control/shutdown)");
    loop {
        if let Some(r) = poll(p) {
            return r;
        }
        // Sleep on the store port: a watch event wakes us (the client reads
        // the ring whatever the bit says: clearing it loses nothing).
        let port = p.store_port();
        if p.evtchn_poll(&[port], Some(core::time::Duration::from_millis(200)))
            .unwrap_or(false)
        {
            let _ = p.evtchn_clear(port);
        }
    }
}
