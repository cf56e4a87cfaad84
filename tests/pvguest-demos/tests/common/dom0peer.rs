//! The Dom0 halves of the grant and ring demos: a Dom0 test "backend" built
//! on the shim's Dom0 API ([`Gntdev`] to map the guest's grants, [`Evtchn`]
//! to bind and signal its ports), the way `backendd` is.
//!
//! Everything the guest wrote is distrusted: pattern mismatches, ring
//! overflows and timeouts are errors, never panics.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::xen::domid_t;
use xen_ring::{BackRing, RingError, SharedRing};
use xen_shim_dom0::GrantMapping;
use xen_shim_dom0::{Evtchn, Gntdev};
use xen_shim_proto::evtchn::EvtchnError;
use xen_shim_proto::grant::GrantError;
use xen_testhost::shim::{wait_port, TestkitError};

use pvguest_demos::demo::{
    answer_byte, pattern_byte, ring_answer, DemoMsg, ANSWER_LEN, ANSWER_OFF, DOM0_ANSWERED,
    DOM0_PHASE_OFF, DOM0_UNMAPPING, GUEST_OFFERED, GUEST_PHASE_OFF, GUEST_REVOKE_REFUSED,
    PATTERN_LEN, PATTERN_OFF,
};

/// Why a Dom0 half failed.
#[derive(Debug, thiserror::Error)]
pub enum Dom0PeerError {
    /// Mapping or unmapping a grant failed.
    #[error("{what} failed")]
    Grant {
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: GrantError,
    },
    /// An event-channel operation failed.
    #[error("{what} failed")]
    Evtchn {
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: EvtchnError,
    },
    /// The guest did not signal in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The guest's data was wrong.
    #[error("bad data from the guest: {0}")]
    BadData(String),
    /// The ring failed (a hostile or broken guest).
    #[error("ring error")]
    Ring(#[from] RingError),
    /// Waiting for the guest's event failed.
    #[error("waiting for the guest's event failed")]
    Port(#[from] TestkitError),
}

fn ev(what: &'static str) -> impl FnOnce(EvtchnError) -> Dom0PeerError {
    move |source| Dom0PeerError::Evtchn { what, source }
}

fn gn(what: &'static str) -> impl FnOnce(GrantError) -> Dom0PeerError {
    move |source| Dom0PeerError::Grant { what, source }
}

/// Waits until the guest's phase word (a `u32` at `off` of `map`) is at
/// least `want`; events on `port` only say "look again".
fn wait_phase(
    evtchn: &Evtchn,
    map: &GrantMapping,
    off: usize,
    want: u32,
    port: evtchn_port_t,
    timeout: Duration,
    what: &'static str,
) -> Result<(), Dom0PeerError> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = map
            .slice()
            .atomic_u32(off)
            .map_err(|e| Dom0PeerError::BadData(e.to_string()))?
            .load(Ordering::Acquire);
        if v >= want {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Dom0PeerError::Timeout(what));
        }
        match wait_port(evtchn, port, left, what) {
            Ok(()) | Err(TestkitError::Timeout(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The Dom0 half of the grant demo for domain `domid`'s offer (`gref`,
/// `port`): bind, map read-write, check the pattern, answer, notify; wait
/// for the guest's refused revoke; announce the unmap, unmap, notify; unbind.
pub fn grant_demo_peer(
    gntdev: &Gntdev,
    evtchn: &Evtchn,
    domid: domid_t,
    gref: grant_ref_t,
    port: evtchn_port_t,
    timeout: Duration,
) -> Result<(), Dom0PeerError> {
    let local = evtchn
        .bind_interdomain(domid, port)
        .map_err(ev("binding the guest's port"))?;
    let map = gntdev
        .map_grant_ref(domid, gref, true)
        .map_err(gn("mapping the guest's grant"))?;
    let bad = |e: xen_shim_proto::mem::MemError| Dom0PeerError::BadData(e.to_string());
    let slice = map.slice();
    let phase = slice
        .atomic_u32(GUEST_PHASE_OFF)
        .map_err(bad)?
        .load(Ordering::Acquire);
    if phase != GUEST_OFFERED {
        return Err(Dom0PeerError::BadData(format!("guest phase is {phase}")));
    }
    let mut seen = vec![0u8; PATTERN_LEN];
    map.read(PATTERN_OFF, &mut seen).map_err(bad)?;
    if let Some(i) = (0..seen.len()).find(|&i| seen[i] != pattern_byte(domid, i)) {
        return Err(Dom0PeerError::BadData(format!(
            "pattern byte {i} is {:#04x}, expected {:#04x}",
            seen[i],
            pattern_byte(domid, i)
        )));
    }
    let answer: Vec<u8> = (0..ANSWER_LEN).map(|i| answer_byte(domid, i)).collect();
    map.write(ANSWER_OFF, &answer).map_err(bad)?;
    slice
        .atomic_u32(DOM0_PHASE_OFF)
        .map_err(bad)?
        .store(DOM0_ANSWERED, Ordering::Release);
    evtchn.notify(local).map_err(ev("notifying the guest"))?;
    wait_phase(
        evtchn,
        &map,
        GUEST_PHASE_OFF,
        GUEST_REVOKE_REFUSED,
        local,
        timeout,
        "the guest's revoke attempt",
    )?;
    slice
        .atomic_u32(DOM0_PHASE_OFF)
        .map_err(bad)?
        .store(DOM0_UNMAPPING, Ordering::Release);
    map.unmap().map_err(gn("unmapping"))?;
    evtchn.notify(local).map_err(ev("notifying the unmap"))?;
    evtchn.unbind(local).map_err(ev("unbinding"))?;
    Ok(())
}

/// What the Dom0 half of the ring demo saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPeerReport {
    /// Requests answered.
    pub answered: u64,
    /// Notifications Dom0 sent.
    pub notifies: u64,
    /// Times Dom0 slept on the event channel.
    pub waits: u64,
}

/// The Dom0 half of the ring demo: bind, map the ring's grants as one
/// contiguous window, attach a `BackRing`, signal "connected", answer
/// `messages` requests, then unmap and notify.
pub fn ring_demo_peer(
    gntdev: &Gntdev,
    evtchn: &Evtchn,
    domid: domid_t,
    grefs: &[grant_ref_t],
    port: evtchn_port_t,
    messages: u64,
    timeout: Duration,
) -> Result<RingPeerReport, Dom0PeerError> {
    let local = evtchn
        .bind_interdomain(domid, port)
        .map_err(ev("binding the guest's port"))?;
    let map = gntdev
        .map_grant_refs(domid, grefs, true)
        .map_err(gn("mapping the ring"))?;
    let base = map
        .as_mut_ptr()
        .ok_or(Dom0PeerError::BadData("ring mapping is read-only".into()))?;
    // SAFETY: the mapping is `map.len()` bytes of the guest's ring pages and
    // stays mapped until `map.unmap()` below, after the ring is dropped; in
    // this process only this BackRing touches it.
    let mem = unsafe { SharedRing::new(base, map.len()) }?;
    let mut back = BackRing::<DemoMsg, DemoMsg>::attach(mem)?;
    evtchn.notify(local).map_err(ev("signalling connected"))?;

    let (mut answered, mut notifies, mut waits) = (0u64, 0u64, 0u64);
    while answered < messages {
        let mut progressed = false;
        while answered < messages {
            let Some([id, value]) = back.take_request()? else {
                break;
            };
            back.push_response(&[id, ring_answer(value)])?;
            answered += 1;
            progressed = true;
        }
        if back.push_responses_and_check_notify() {
            evtchn.notify(local).map_err(ev("notifying"))?;
            notifies += 1;
        }
        if progressed || answered >= messages || back.final_check_for_requests()? {
            continue;
        }
        wait_port(evtchn, local, timeout, "requests")?;
        waits += 1;
    }
    // The ring is done with the mapping before it goes.
    let _mem: SharedRing = back.into_shared();
    map.unmap().map_err(gn("unmapping the ring"))?;
    evtchn.notify(local).map_err(ev("notifying the unmap"))?;
    evtchn.unbind(local).map_err(ev("unbinding"))?;
    Ok(RingPeerReport {
        answered,
        notifies,
        waits,
    })
}
