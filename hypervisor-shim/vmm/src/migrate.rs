//! Live migration's sending side: the iterative pre-copy of a running
//! domain's memory as one save stream (Xen's live stream: the xl header,
//! libxl's stream v2 and libxc's stream v3 with PAGE_DATA records round after
//! round, the same page possibly sent in several rounds; no CHECKPOINT
//! records, as a plain `xl migrate`).
//!
//! Round 0 sends every page with data; each later round the pages dirtied
//! since the last (KVM's dirty log of the guest's own writes). Live rounds stop when the dirty set is at most `min_dirty` pages
//! or after `max_iters` rounds (Xen's defaults: 5 iterations); then the
//! toolstack suspends the guest (cooperatively, as `xl save`), vCPU 0 is
//! parked, and the last round sends what is left: the dirty log, every page
//! ever seen granted writable during the migration, and the special pages
//! (shared info, rings, grant frames, which Dom0 daemons write outside any
//! dirty log), then the vCPU and domain records.
//!
//! What a backend writes through a grant is not logged page by page (Xen
//! marks a page dirty at the unmap of a writable mapping and at a grant copy
//! into it): the shim's mappers (`xen-shim-dom0`'s `ForeignDomain::unpin`
//! and the copy's release) keep no dirty record the VMM can read. The
//! grant table is sampled instead at every round: a page granted writable
//! and revoked entirely between two samples, written by a backend meanwhile
//! and not touched by the guest since, would be missed.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::time::Instant;

use crate::snapshot::{self, KvmVcpuState, SnapshotError};

/// How the live rounds go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveOptions {
    /// Rounds while the guest runs, round 0 included (Xen: 5).
    pub max_iters: u32,
    /// Stop the live rounds once at most this many pages are dirty.
    pub min_dirty: u64,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            max_iters: 5,
            min_dirty: 50,
        }
    }
}

/// What the sender needs of the running domain.
pub trait Source {
    /// The domain's memory file.
    fn memory_file(&self) -> &File;
    /// Pages of the memory file (RAM and special pages).
    fn nr_pages(&self) -> u64;
    /// RAM pages (the special pages follow).
    fn ram_pages(&self) -> u64;
    /// Pages dirtied since the last call (the first call clears the log).
    fn dirty(&self) -> Result<Vec<u64>, String>;
    /// Adds the pages the guest grants writable now to `set`.
    fn grant_writable(&self, set: &mut BTreeSet<u64>);
    /// Parks vCPU 0 and returns its state.
    fn park(&self) -> Result<KvmVcpuState, String>;
    /// Writes the closing records.
    fn finish<W: Write>(
        &self,
        w: xen_stream::StreamWriter<W>,
        cpu: &KvmVcpuState,
    ) -> Result<W, SnapshotError>;
}

/// What a migration sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// Pages per round, the last (paused) round last.
    pub rounds: Vec<u64>,
    /// Bytes of the whole stream.
    pub bytes: u64,
}

fn err(e: SnapshotError) -> String {
    xen_diag::ErrorChain(&e).to_string()
}

fn flush<W: Write>(w: &mut xen_stream::StreamWriter<std::io::BufWriter<W>>) -> Result<(), String> {
    w.flush()
        .map_err(|e| format!("cannot send the migration stream: {e}"))
}

/// Sends the domain `src` to `out`, `config` in the xl header. `report(line)` gets one line per round
/// (`round N PAGES MS`) and `live-done ROUNDS PENDING` once the live rounds
/// are over; `await_final()` then waits for the toolstack to have suspended
/// the guest (false: cancelled). On success vCPU 0 stays parked.
pub fn send<S: Source, W: Write>(
    src: &S,
    out: W,
    config: &[u8],
    opts: LiveOptions,
    report: &mut dyn FnMut(&str),
    await_final: &mut dyn FnMut() -> bool,
) -> Result<Sent, String> {
    let mut sent = Sent::default();
    let mut w = snapshot::begin_stream(std::io::BufWriter::with_capacity(1 << 20, out), config)
        .map_err(err)?;
    // Round 0: every page with data, the log cleared first (what the guest
    // writes from now on is in the next round).
    let t = Instant::now();
    src.dirty()?;
    let mut granted = BTreeSet::new();
    src.grant_writable(&mut granted);
    let stats =
        snapshot::write_memory(src.memory_file(), src.nr_pages(), &mut w, |_| {}).map_err(err)?;
    flush(&mut w)?;
    sent.rounds.push(stats.pages);
    report(&format!(
        "round 0 {} {}",
        stats.pages,
        t.elapsed().as_millis()
    ));
    let mut pending: BTreeSet<u64>;
    let mut round = 1u32;
    loop {
        let t = Instant::now();
        pending = src.dirty()?.into_iter().collect();
        // Pages granted writable go in the last round only (Xen sends a
        // page still mapped writable then): a persistent grant's page would
        // otherwise be sent every round.
        src.grant_writable(&mut granted);
        if pending.len() as u64 <= opts.min_dirty || round >= opts.max_iters {
            break;
        }
        let pfns: Vec<u64> = pending.iter().copied().collect();
        let n = snapshot::write_pfns(src.memory_file(), &pfns, &mut w).map_err(err)?;
        flush(&mut w)?;
        sent.rounds.push(n);
        report(&format!("round {round} {n} {}", t.elapsed().as_millis()));
        round += 1;
    }
    report(&format!("live-done {round} {}", pending.len()));
    if !await_final() {
        return Err("the toolstack cancelled the migration".into());
    }
    let t = Instant::now();
    let cpu = src.park()?;
    pending.extend(src.dirty()?);
    src.grant_writable(&mut granted);
    pending.extend(granted);
    pending.extend(src.ram_pages()..src.nr_pages());
    let pfns: Vec<u64> = pending
        .into_iter()
        .filter(|p| *p < src.nr_pages())
        .collect();
    let n = snapshot::write_pfns(src.memory_file(), &pfns, &mut w).map_err(err)?;
    sent.rounds.push(n);
    sent.bytes = w.bytes();
    let mut out = src.finish(w, &cpu).map_err(err)?;
    out.flush()
        .map_err(|e| format!("cannot send the migration stream: {e}"))?;
    report(&format!("round {round} {n} {}", t.elapsed().as_millis()));
    Ok(sent)
}
