//! Xenstore frontends: what a guest does with its store, over the ring,
//! through the platform trait only (so they could run unchanged on the PVHVM
//! kernel, which does not run them today), reporting on the program's stdout ([`xen_pvguest::line`]).
//!
//! - [`xenstore_demo`]: once the toolstack introduced the domain and
//!   created its home (`/local/domain/<domid>`), the guest reads and writes
//!   its own nodes, lists a directory, runs a transaction (retried on
//!   `EAGAIN`), gets `EACCES` on a Dom0-only node, uses the xenbus state
//!   helpers on a test device (reads its backend, switches its state), sets a
//!   watch and waits until Dom0 writes `control/cmd = go`.
//! - [`xenstore_hostile`]: a guest that, once connected, scribbles an
//!   impossible `req_prod` into its ring page and notifies: xenstored must
//!   put only this ring in its error state (`XENSTORE_ERROR_RINGIDX`). The
//!   guest then recovers with the reconnection protocol.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xen_abi::io::xenbus::XenbusState;
use xen_front_platform::{Platform, PlatformError, ENOENT, XBT_NIL};
use xen_ring::bytes::xs_offsets;
use xen_xenbus::state;

use xen_pvguest::line::emit;
use xen_pvguest::platform::PvPlatform;

use crate::demo::DemoError;

/// Linux `EACCES`.
const EACCES: i32 = 13;
/// Transaction attempts before giving up.
const TX_ATTEMPTS: u32 = 16;
/// The Dom0-only node the demo must not reach.
pub const DOM0_SECRET: &str = "/local/domain/0/secret";
/// The test device of the demo (relative to the guest's home).
pub const TEST_DEVICE: &str = "device/vtest/0";

fn plat(what: &'static str) -> impl FnOnce(PlatformError) -> DemoError {
    move |source| DemoError::Platform { what, source }
}

fn errno_name(r: &Result<impl Sized, PlatformError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(PlatformError::Xenstore { errno }) => xen_abi::io::xs_wire::xsd_error_name(*errno)
            .unwrap_or("unknown")
            .into(),
        Err(e) => format!("{e}").replace(' ', "_"),
    }
}

/// Waits until the toolstack wrote `<home>/domid` (the domain is introduced
/// and its home exists): retries `ENOENT`/`EACCES` until `timeout`.
pub fn wait_for_home<P: Platform + ?Sized>(p: &P, timeout: Duration) -> Result<u64, DemoError> {
    let deadline = Instant::now() + timeout;
    loop {
        match xen_front_platform::xs_read_u64(p, XBT_NIL, "domid") {
            Ok(d) => return Ok(d),
            Err(PlatformError::Xenstore { errno }) if errno == EACCES || errno == ENOENT => {}
            Err(e) => return Err(plat("reading the domain's home")(e)),
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Timeout(
                "the toolstack to create the domain's home",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The guest half of the xenstore end-to-end test; see the module docs.
pub fn xenstore_demo<P: Platform + ?Sized>(
    p: &P,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let domid = wait_for_home(p, timeout)?;
    emit(out, "xsdemo home", &[("domid", domid.to_string())])?;

    // Own nodes: write, read back, list.
    p.xs_write(XBT_NIL, "data/greeting", b"hello-from-domU")
        .map_err(plat("writing data/greeting"))?;
    let back = p
        .xs_read(XBT_NIL, "data/greeting")
        .map_err(plat("reading data/greeting"))?;
    if back != b"hello-from-domU" {
        return Err(DemoError::BadData(format!("read back {back:?}")));
    }
    p.xs_mkdir(XBT_NIL, "data/sub")
        .map_err(plat("mkdir data/sub"))?;
    let mut names = p
        .xs_directory(XBT_NIL, "data")
        .map_err(plat("listing data"))?;
    names.sort();
    emit(out, "xsdemo wrote", &[("children", names.join(","))])?;

    // A transaction, retried while it conflicts.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let tx = p
            .xs_transaction_start()
            .map_err(plat("starting a transaction"))?;
        let r = p
            .xs_read(tx, "data/greeting")
            .and_then(|_| p.xs_write(tx, "data/tx-a", b"1"))
            .and_then(|()| p.xs_write(tx, "data/tx-b", b"2"));
        if let Err(e) = r {
            let _ = p.xs_transaction_end(tx, false);
            return Err(plat("writing in the transaction")(e));
        }
        match p.xs_transaction_end(tx, true) {
            Ok(()) => break,
            Err(e) if e.is_xs_eagain() && attempts < TX_ATTEMPTS => continue,
            Err(e) => return Err(plat("committing the transaction")(e)),
        }
    }
    emit(
        out,
        "xsdemo transaction",
        &[("attempts", attempts.to_string())],
    )?;

    // Dom0's nodes are not ours.
    let read = p.xs_read(XBT_NIL, DOM0_SECRET);
    let write = p.xs_write(XBT_NIL, DOM0_SECRET, b"stolen");
    emit(
        out,
        "xsdemo denied",
        &[("read", errno_name(&read)), ("write", errno_name(&write))],
    )?;

    // The xenbus helpers on the test device the toolstack created.
    let backend = state::read_backend(p, TEST_DEVICE).map_err(plat("reading the backend"))?;
    let backend_state = state::otherend_state(p, &backend);
    let switched = state::switch_state(p, TEST_DEVICE, XenbusState::Connected)
        .map_err(plat("switching the device state"))?;
    emit(
        out,
        "xsdemo xenbus",
        &[
            ("backend", backend.path.clone()),
            ("backend_id", backend.domid.to_string()),
            ("backend_state", backend_state.as_xenstore_str().to_owned()),
            ("switched", u8::from(switched).to_string()),
        ],
    )?;

    // A watch: its first event comes at once, then Dom0's write.
    p.xs_watch("control/cmd", "ctl")
        .map_err(plat("watching control/cmd"))?;
    emit(out, "xsdemo watching", &[])?;
    let deadline = Instant::now() + timeout;
    let (path, value) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DemoError::Timeout("Dom0 to write control/cmd"));
        }
        let Some(ev) = p
            .xs_read_watch(Some(left))
            .map_err(plat("waiting for a watch event"))?
        else {
            continue;
        };
        if ev.token != "ctl" {
            continue;
        }
        match p.xs_read(XBT_NIL, "control/cmd") {
            Ok(v) if v == b"go" => break (ev.path, v),
            _ => continue,
        }
    };
    emit(
        out,
        "xsdemo event",
        &[
            ("path", path),
            ("value", String::from_utf8_lossy(&value).into_owned()),
        ],
    )?;
    p.xs_unwatch("control/cmd", "ctl")
        .map_err(plat("unwatching control/cmd"))?;
    p.xs_write(XBT_NIL, "data/done", b"1")
        .map_err(plat("writing data/done"))?;
    emit(out, "xsdemo done", &[])?;
    Ok(())
}

/// The hostile guest; see the module docs.
pub fn xenstore_hostile(
    p: &PvPlatform,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let domid = wait_for_home(p, timeout)?;
    emit(out, "xshostile connected", &[("domid", domid.to_string())])?;
    let xs = p
        .xenstore()
        .ok_or(DemoError::BadData("no xenstore connection".into()))?;
    let word = |off: usize| {
        xs.ring_word(off)
            .ok_or(DemoError::BadData(format!("no ring word at {off}")))
    };

    // An index no well-behaved guest writes: far more than a ring ahead.
    let cons = word(xs_offsets::REQ_CONS)?.load(Ordering::SeqCst);
    word(xs_offsets::REQ_PROD)?.store(cons.wrapping_add(5000), Ordering::SeqCst);
    p.evtchn_notify(xs.port())
        .map_err(plat("notifying xenstored"))?;
    emit(out, "xshostile scribbled", &[])?;

    let deadline = Instant::now() + timeout;
    let code = loop {
        let e = word(xs_offsets::ERROR)?.load(Ordering::SeqCst);
        if e != 0 {
            break e;
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Timeout("xenstored to flag the ring"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    emit(out, "xshostile error", &[("code", code.to_string())])?;

    // The client notices the error state and reconnects before the next
    // request (XENSTORE_RECONNECT, then the server resets the ring).
    p.xs_write(XBT_NIL, "data/recovered", b"1")
        .map_err(plat("writing after the reconnection"))?;
    let v = p
        .xs_read(XBT_NIL, "data/recovered")
        .map_err(plat("reading after the reconnection"))?;
    let reconnections = xs
        .with_client(|c| Ok(c.stats().reconnections))
        .map_err(plat("reading the client's counters"))?;
    emit(
        out,
        "xshostile recovered",
        &[
            ("value", String::from_utf8_lossy(&v).into_owned()),
            ("reconnections", reconnections.to_string()),
        ],
    )?;
    Ok(())
}

/// Latencies of `n` operations: `(ops_per_s, p50_ns, p99_ns)`.
pub fn latency_summary(mut ns: Vec<u64>, total: Duration) -> (f64, u64, u64) {
    if ns.is_empty() {
        return (0.0, 0, 0);
    }
    ns.sort_unstable();
    let pct = |p: usize| ns[((ns.len() - 1) * p) / 100];
    let secs = total.as_secs_f64().max(f64::MIN_POSITIVE);
    (ns.len() as f64 / secs, pct(50), pct(99))
}

/// A xenstore benchmark from the guest: `messages` `XS_READ`s, then
/// `messages` `XS_WRITE`s of a 64-byte value under the guest's home, one at
/// a time over the ring; one `xsbench <op>` line each with the rate and the
/// latency percentiles.
pub fn xenstore_bench<P: Platform + ?Sized>(
    p: &P,
    messages: u64,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    wait_for_home(p, timeout)?;
    let value = [b'v'; 64];
    p.xs_write(XBT_NIL, "data/bench", &value)
        .map_err(plat("writing data/bench"))?;
    let n = usize::try_from(messages).unwrap_or(usize::MAX);
    for op in ["read", "write"] {
        let mut lat = Vec::with_capacity(n.min(1 << 20));
        let start = Instant::now();
        for _ in 0..messages {
            let t = Instant::now();
            if op == "read" {
                p.xs_read(XBT_NIL, "data/bench")
                    .map_err(plat("reading data/bench"))?;
            } else {
                p.xs_write(XBT_NIL, "data/bench", &value)
                    .map_err(plat("writing data/bench"))?;
            }
            lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        let (rate, p50, p99) = latency_summary(lat, start.elapsed());
        emit(
            out,
            "xsbench",
            &[
                ("op", op.to_owned()),
                ("messages", messages.to_string()),
                ("ops_per_s", format!("{rate:.0}")),
                ("p50_ns", p50.to_string()),
                ("p99_ns", p99.to_string()),
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_latency_summary_percentiles_of_sorted_samples() {
        let (rate, p50, p99) = latency_summary((1..=100).collect(), Duration::from_secs(2));
        assert_eq!(rate, 50.0);
        assert_eq!(p50, 50);
        assert_eq!(p99, 99);
        assert_eq!(latency_summary(Vec::new(), Duration::ZERO), (0.0, 0, 0));
    }
}
