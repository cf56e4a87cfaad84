//! The "plumbing" frontends that prove two domains can share pages by
//! grant and signal each other, written against the platform trait only
//! (so they are shaped like real frontends), and the page layout and
//! values both halves use.
//!
//! Without xenstore, a frontend advertises its grant references and port
//! on its standard output, one report line per message (`<tag> key=value
//! ...`, [`xen_pvguest::line`]). The Dom0 halves are in this crate's tests
//! (`tests/common/dom0peer.rs`).
//!
//! - grant demo ([`grant_demo`]): the guest grants a page (read-write), writes
//!   a pattern in its first half, offers `gref` and `port`. Dom0 binds, maps,
//!   checks the pattern, writes the answer in the second half and notifies.
//!   The guest checks the answer, tries to revoke while Dom0 still maps the
//!   page (must be refused: XSA-396), notifies; Dom0 unmaps and notifies; the
//!   guest revokes (must succeed now). Each side advances a phase word in the
//!   page; events only say "look again", since a port may fire spuriously
//!   (Xen sets a freshly bound port pending, and so does the shim).
//! - ring demo ([`ring_demo`]): an `io/ring.h` ring on granted pages, the
//!   guest's `FrontRing` against Dom0's `BackRing`, `messages` requests
//!   answered in order, with event-channel notifications under Xen's
//!   event-index suppression.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::xen::domid_t;
use xen_front_platform::{Platform, PlatformError, SharedPages, PAGE_SIZE};
use xen_pvguest::line::emit;
use xen_ring::{FrontRing, RingError, SharedRing};

/// Grant demo page layout: the guest's phase word (`u32`).
pub const GUEST_PHASE_OFF: usize = 0;
/// Grant demo page layout: Dom0's phase word (`u32`).
pub const DOM0_PHASE_OFF: usize = 4;
/// Grant demo page layout: the guest's pattern.
pub const PATTERN_OFF: usize = 64;
/// Grant demo page layout: Dom0's answer (to the end of the page).
pub const ANSWER_OFF: usize = PAGE_SIZE / 2;
/// Bytes of the pattern.
pub const PATTERN_LEN: usize = ANSWER_OFF - PATTERN_OFF;
/// Bytes of the answer.
pub const ANSWER_LEN: usize = PAGE_SIZE - ANSWER_OFF;

/// Guest phase: the pattern is written and offered.
pub const GUEST_OFFERED: u32 = 1;
/// Guest phase: the answer checked out and a revoke was refused.
pub const GUEST_REVOKE_REFUSED: u32 = 2;
/// Dom0 phase: mapped, pattern checked, answer written.
pub const DOM0_ANSWERED: u32 = 1;
/// Dom0 phase: about to unmap (the guest may revoke once it succeeds).
pub const DOM0_UNMAPPING: u32 = 2;

/// Request and response of the ring demo: `[id, value]`.
pub type DemoMsg = [u64; 2];

/// Why a demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A platform operation failed.
    #[error("{what} failed")]
    Platform {
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: PlatformError,
    },
    /// The peer did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The peer's data was wrong.
    #[error("bad data from the peer: {0}")]
    BadData(String),
    /// The ring failed (a hostile or broken peer).
    #[error("ring error")]
    Ring(#[from] RingError),
    /// A revoke that must be refused (the peer maps the page) succeeded.
    #[error("revoking a grant the peer still maps was not refused")]
    RevokeNotRefused,
    /// Writing the protocol line failed.
    #[error("cannot write to the output")]
    Output(#[from] std::io::Error),
}

fn plat(what: &'static str) -> impl FnOnce(PlatformError) -> DemoError {
    move |source| DemoError::Platform { what, source }
}

/// Byte `i` of the grant demo's pattern for domain `domid`.
pub fn pattern_byte(domid: domid_t, i: usize) -> u8 {
    ((i.wrapping_mul(7).wrapping_add(13)) as u8) ^ (domid as u8)
}

/// Byte `i` (counted from [`ANSWER_OFF`]) of Dom0's answer.
pub fn answer_byte(domid: domid_t, i: usize) -> u8 {
    !pattern_byte(domid, i.wrapping_add(PATTERN_LEN))
}

/// The ring demo's response value for a request value.
pub fn ring_answer(value: u64) -> u64 {
    value.wrapping_mul(3).wrapping_add(1)
}

/// The ring demo's request value for message `id`.
pub fn ring_value(id: u64) -> u64 {
    id ^ 0x5a5a_0000_0000_5a5a
}

/// Waits for an event on `port` and clears it.
fn wait_event<P: Platform + ?Sized>(
    p: &P,
    port: evtchn_port_t,
    timeout: Duration,
    what: &'static str,
) -> Result<(), DemoError> {
    if !p
        .evtchn_poll(&[port], Some(timeout))
        .map_err(plat("SCHEDOP_poll"))?
    {
        return Err(DemoError::Timeout(what));
    }
    p.evtchn_clear(port).map_err(plat("clearing the event"))?;
    Ok(())
}

/// Waits until the `u32` at `off` of `pages` is at least `want`: events on
/// `port` are only hints to look again (a port can fire spuriously, Xen sets
/// a freshly bound port pending), the shared word is the truth.
fn wait_phase<P: Platform + ?Sized>(
    p: &P,
    pages: &SharedPages,
    off: usize,
    want: u32,
    port: evtchn_port_t,
    timeout: Duration,
    what: &'static str,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + timeout;
    loop {
        p.evtchn_clear(port).map_err(plat("clearing the event"))?;
        let v = pages
            .load_u32(off, Ordering::Acquire)
            .map_err(|e| DemoError::BadData(e.to_string()))?;
        if v >= want {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DemoError::Timeout(what));
        }
        p.evtchn_poll(&[port], Some(left))
            .map_err(plat("SCHEDOP_poll"))?;
    }
}

/// What the grant demo saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantDemoReport {
    /// The grant reference offered.
    pub gref: grant_ref_t,
    /// The port offered.
    pub port: evtchn_port_t,
    /// Whether the revoke while mapped was refused (it must be).
    pub revoke_refused_while_mapped: bool,
}

/// The guest half of the grant demo (see the module docs), with `peer` the
/// backend's domain. Prints `grant-demo offer gref=.. port=.. gfn=..`,
/// `grant-demo revoke-while-mapped refused`, `grant-demo done ok`.
///
/// The page holds two phase words ([`GUEST_PHASE_OFF`], [`DOM0_PHASE_OFF`])
/// that each side advances; events tell the other side to look.
pub fn grant_demo<P: Platform + ?Sized>(
    p: &P,
    peer: domid_t,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<GrantDemoReport, DemoError> {
    let me = p.domid();
    let bad = |e: xen_front_platform::PagesError| DemoError::BadData(e.to_string());
    let pages = p.alloc_pages(1).map_err(plat("allocating the page"))?;
    let pattern: Vec<u8> = (0..PATTERN_LEN).map(|i| pattern_byte(me, i)).collect();
    pages.write(PATTERN_OFF, &pattern).map_err(bad)?;
    pages
        .store_u32(GUEST_PHASE_OFF, GUEST_OFFERED, Ordering::Release)
        .map_err(bad)?;
    let gref = p
        .grant_access(peer, pages.first_gfn(), false)
        .map_err(plat("granting the page"))?;
    let port = p
        .evtchn_alloc_unbound(peer)
        .map_err(plat("allocating the port"))?;
    emit(
        out,
        "grant-demo offer",
        &[
            ("gref", gref.to_string()),
            ("port", port.to_string()),
            ("gfn", pages.first_gfn().to_string()),
        ],
    )?;

    wait_phase(
        p,
        &pages,
        DOM0_PHASE_OFF,
        DOM0_ANSWERED,
        port,
        timeout,
        "the peer's answer",
    )?;
    let mut answer = vec![0u8; ANSWER_LEN];
    pages.read(ANSWER_OFF, &mut answer).map_err(bad)?;
    if let Some(i) = (0..answer.len()).find(|&i| answer[i] != answer_byte(me, i)) {
        return Err(DemoError::BadData(format!(
            "answer byte {i} is {:#04x}, expected {:#04x}",
            answer[i],
            answer_byte(me, i)
        )));
    }

    // Dom0 keeps the page mapped until it sees our next phase: the revoke
    // must be refused (XSA-396).
    let refused = match p.end_access(gref) {
        Err(PlatformError::GrantInUse { .. }) => true,
        Ok(()) => return Err(DemoError::RevokeNotRefused),
        Err(e) => return Err(plat("revoking while mapped")(e)),
    };
    emit(out, "grant-demo revoke-while-mapped refused", &[])?;
    pages
        .store_u32(GUEST_PHASE_OFF, GUEST_REVOKE_REFUSED, Ordering::Release)
        .map_err(bad)?;
    p.evtchn_notify(port).map_err(plat("notifying"))?;

    // Dom0 announces the unmap, unmaps and notifies; the revoke succeeds
    // once the unmap is done.
    wait_phase(
        p,
        &pages,
        DOM0_PHASE_OFF,
        DOM0_UNMAPPING,
        port,
        timeout,
        "the peer's unmap",
    )?;
    let deadline = Instant::now() + timeout;
    loop {
        match p.end_access(gref) {
            Ok(()) => break,
            Err(PlatformError::GrantInUse { .. }) if Instant::now() < deadline => {
                let _ = p.evtchn_poll(&[port], Some(Duration::from_millis(10)));
                let _ = p.evtchn_clear(port);
            }
            Err(e) => return Err(plat("revoking after unmap")(e)),
        }
    }
    emit(out, "grant-demo done ok", &[])?;
    p.evtchn_close(port).map_err(plat("closing the port"))?;
    p.free_pages(pages).map_err(plat("freeing the page"))?;
    Ok(GrantDemoReport {
        gref,
        port,
        revoke_refused_while_mapped: refused,
    })
}

/// What the ring demo measured on the guest side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingDemoReport {
    /// Messages sent and answered.
    pub messages: u64,
    /// Notifications the guest sent.
    pub notifies: u64,
    /// Times the guest slept on the event channel.
    pub waits: u64,
    /// Wall time from the first request to the last response.
    pub elapsed: Duration,
}

/// The guest half of the ring demo on a ring of `ring_pages` pages: prints
/// `ring-demo offer grefs=a,b.. port=.. messages=..` and at the end
/// `ring-demo done ok messages=.. notifies=.. waits=.. elapsed_us=..`.
pub fn ring_demo<P: Platform + ?Sized>(
    p: &P,
    peer: domid_t,
    messages: u64,
    ring_pages: usize,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<RingDemoReport, DemoError> {
    let pages = p
        .alloc_pages(ring_pages)
        .map_err(plat("allocating the ring"))?;
    let mut grefs = Vec::with_capacity(ring_pages);
    for i in 0..ring_pages {
        let gfn = pages.gfn(i).ok_or(DemoError::BadData(
            "ring page outside the allocation".into(),
        ))?;
        grefs.push(
            p.grant_access(peer, gfn, false)
                .map_err(plat("granting the ring"))?,
        );
    }
    // SAFETY: the pages stay allocated (and mapped: the platform contract)
    // until `free_pages` at the end, after the ring is dropped; this process
    // touches them only through this one FrontRing; the peer's BackRing is
    // the other endpoint.
    let mem = unsafe { SharedRing::new(pages.as_ptr(), pages.len()) }?;
    let mut front = FrontRing::<DemoMsg, DemoMsg>::init(mem)?;
    let port = p
        .evtchn_alloc_unbound(peer)
        .map_err(plat("allocating the port"))?;
    let list: Vec<String> = grefs.iter().map(ToString::to_string).collect();
    emit(
        out,
        "ring-demo offer",
        &[
            ("grefs", list.join(",")),
            ("port", port.to_string()),
            ("messages", messages.to_string()),
        ],
    )?;
    wait_event(p, port, timeout, "the peer to connect")?;

    let start = Instant::now();
    let (mut sent, mut received, mut notifies, mut waits) = (0u64, 0u64, 0u64, 0u64);
    while received < messages {
        while sent < messages && !front.is_full() {
            front.push_request(&[sent, ring_value(sent)])?;
            sent += 1;
        }
        if front.push_requests_and_check_notify() {
            p.evtchn_notify(port).map_err(plat("notifying"))?;
            notifies += 1;
        }
        let mut progressed = false;
        while let Some([id, value]) = front.take_response()? {
            if id != received || value != ring_answer(ring_value(id)) {
                return Err(DemoError::BadData(format!(
                    "response {received} is [{id}, {value:#x}]"
                )));
            }
            received += 1;
            progressed = true;
        }
        if progressed || front.final_check_for_responses()? {
            continue;
        }
        wait_event(p, port, timeout, "responses")?;
        waits += 1;
    }
    let elapsed = start.elapsed();
    // The ring is done with the pages before they are revoked and freed.
    let _mem: SharedRing = front.into_shared();

    // The peer unmaps after the last response and notifies; revoke then.
    let deadline = Instant::now() + timeout;
    for &g in &grefs {
        loop {
            match p.end_access(g) {
                Ok(()) => break,
                Err(PlatformError::GrantInUse { .. }) if Instant::now() < deadline => {
                    let _ = p.evtchn_poll(&[port], Some(Duration::from_millis(10)));
                    let _ = p.evtchn_clear(port);
                }
                Err(e) => return Err(plat("revoking the ring")(e)),
            }
        }
    }
    emit(
        out,
        "ring-demo done ok",
        &[
            ("messages", messages.to_string()),
            ("notifies", notifies.to_string()),
            ("waits", waits.to_string()),
            ("elapsed_us", elapsed.as_micros().to_string()),
        ],
    )?;
    p.evtchn_close(port).map_err(plat("closing the port"))?;
    release(p, pages)?;
    Ok(RingDemoReport {
        messages,
        notifies,
        waits,
        elapsed,
    })
}

fn release<P: Platform + ?Sized>(p: &P, pages: SharedPages) -> Result<(), DemoError> {
    p.free_pages(pages).map_err(plat("freeing the ring"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_front_platform::fake::FakePlatform;
    use xen_pvguest::line::Line;

    #[test]
    fn test_grant_demo_without_peer_answer_times_out() {
        // Arrange: the fake never answers.
        let p = FakePlatform::new(3);
        let mut out = Vec::new();

        // Act
        let r = grant_demo(&p, 0, Duration::from_millis(1), &mut out);

        // Assert
        assert!(matches!(r, Err(DemoError::Timeout(_))));
        let line = Line::parse(std::str::from_utf8(&out).expect("utf8")).expect("offer line");
        assert_eq!(line.tag, "grant-demo offer");
        let gref: u32 = line.num("gref").expect("gref");
        let m = p.peer_map(gref, 0, false).expect("offered grant maps");
        let mut first = [0u8; 4];
        m.read(PATTERN_OFF, &mut first);
        assert_eq!(first, [0, 1, 2, 3].map(|i| pattern_byte(3, i)));
        p.peer_unmap(m);
    }

    #[test]
    fn test_demo_patterns_answer_differs_from_offer() {
        assert!((0..ANSWER_LEN).all(|i| answer_byte(3, i) != pattern_byte(3, i + PATTERN_LEN)));
        assert_ne!(pattern_byte(3, 0), pattern_byte(4, 0));
        assert_eq!(
            ring_answer(ring_value(7)),
            ring_value(7).wrapping_mul(3).wrapping_add(1)
        );
    }
}
