//! Live migration's sending side: the iterative pre-copy of a running
//! domain's memory as one save stream (Xen's live stream: the xl header,
//! libxl's stream v2 and libxc's stream v3 with PAGE_DATA records round after
//! round, the same page possibly sent in several rounds; no CHECKPOINT
//! records, as a plain `xl migrate`).
//!
//! Round 0 sends every page with data; each later round the pages dirtied
//! since the last (KVM's dirty log of the guest's own writes, and the grant
//! dirty log of Dom0's writes through grants: below). The live
//! rounds end with the round that finds at most `min_dirty` pages dirty or
//! is the `max_iters`th (Xen's default: 5 iterations); that last live round
//! also sends every page ever seen granted writable during the migration
//! and the special pages (shared info, rings, grant frames: Dom0 daemons
//! write them outside any dirty log), keeping a copy of what it sent. Then
//! the toolstack suspends the guest (cooperatively, as `xl save`), vCPU 0 is
//! parked, and the paused round sends the dirty log and those of the other
//! pages that differ from their copy (or were granted since), then the vCPU
//! and domain records.
//!
//! What Dom0 writes through a grant (backends map the memory file
//! directly, outside KVM's dirty log) comes with the dirty log: the shim's
//! mappers mark the page at the map and the unmap of a writable mapping and
//! after a grant copy into it, in the domain's grant dirty log
//! (`xen_shim_proto::dirty`), which the VMM's [`Source::dirty`] fetches and
//! clears with KVM's. A page still mapped writable when the guest is parked
//! was granted writable at a sample, so the paused round checks it against
//! its sent copy.

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
    /// Pages dirtied since the last call, by the guest or by Dom0 through a
    /// grant (the first call clears the logs).
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

/// The largest number of pages outside the dirty log (granted writable,
/// special) whose sent copies are kept (64 MiB); beyond it they are all
/// sent again in the last round.
const MAX_SHADOW_PAGES: usize = 16 << 10;

/// The pages outside the dirty log as last sent, so that the last round
/// sends only those that changed since (a backend's writes through a
/// grant, the rings and grant frames Dom0 daemons write).
#[derive(Default)]
struct Shadow {
    pages: std::collections::BTreeMap<u64, Box<[u8]>>,
    /// Over [`MAX_SHADOW_PAGES`]: nothing is kept, everything is sent.
    overflow: bool,
}

impl Shadow {
    fn record(&mut self, pfn: u64, page: &[u8]) {
        if self.overflow {
            return;
        }
        if self.pages.len() >= MAX_SHADOW_PAGES && !self.pages.contains_key(&pfn) {
            self.overflow = true;
            self.pages.clear();
            return;
        }
        self.pages.insert(pfn, page.into());
    }

    /// Whether `pfn` now differs from its sent copy (or has none).
    fn changed(&self, file: &File, pfn: u64, buf: &mut [u8]) -> Result<bool, String> {
        let Some(copy) = self.pages.get(&pfn) else {
            return Ok(true);
        };
        std::os::unix::fs::FileExt::read_exact_at(file, buf, pfn * buf.len() as u64)
            .map_err(|e| format!("cannot read the memory file: {e}"))?;
        Ok(**copy != *buf)
    }
}

/// Sends the domain `src` to `out`, `config` in the xl header. `report(line)` gets one line per round
/// (`round N PAGES MS`) and `live-done ROUNDS` once the live rounds
/// are over; `await_final()` then waits for the toolstack to have suspended
/// the guest (false: cancelled). On success vCPU 0 stays parked.
///
/// The last live round also sends, while the guest runs, every page it has
/// granted writable and the special pages, keeping what it sent ([`Shadow`]):
/// the paused round sends the dirty log and, of those, only the pages that
/// changed since (and any granted since), which keeps the downtime short.
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
    let special = src.ram_pages()..src.nr_pages();
    let mut shadow = Shadow::default();
    let mut round = 1u32;
    loop {
        let t = Instant::now();
        let mut pending: BTreeSet<u64> = src.dirty()?.into_iter().collect();
        // Pages granted writable go in the last live round only (a
        // persistent grant's page would otherwise be sent every round).
        src.grant_writable(&mut granted);
        let last = pending.len() as u64 <= opts.min_dirty || round + 1 >= opts.max_iters;
        if last {
            pending.extend(granted.iter().copied());
            pending.extend(special.clone());
        }
        let pfns: Vec<u64> = pending
            .into_iter()
            .filter(|p| *p < src.nr_pages())
            .collect();
        let keep = |p: u64| special.contains(&p) || granted.contains(&p);
        let n = snapshot::write_pfns(src.memory_file(), &pfns, &mut w, &mut |pfn, page| {
            if last && keep(pfn) {
                shadow.record(pfn, page);
            }
        })
        .map_err(err)?;
        flush(&mut w)?;
        sent.rounds.push(n);
        report(&format!("round {round} {n} {}", t.elapsed().as_millis()));
        round += 1;
        if last {
            break;
        }
    }
    report(&format!("live-done {round}"));
    if !await_final() {
        return Err("the toolstack cancelled the migration".into());
    }
    let t = Instant::now();
    let cpu = src.park()?;
    let mut pending: BTreeSet<u64> = src.dirty()?.into_iter().collect();
    src.grant_writable(&mut granted);
    let mut buf = vec![0u8; xen_shim_proto::layout::PAGE_SIZE];
    for p in granted.iter().copied().chain(special) {
        if !pending.contains(&p)
            && (shadow.overflow || shadow.changed(src.memory_file(), p, &mut buf)?)
        {
            pending.insert(p);
        }
    }
    let pfns: Vec<u64> = pending
        .into_iter()
        .filter(|p| *p < src.nr_pages())
        .collect();
    let n = snapshot::write_pfns(src.memory_file(), &pfns, &mut w, &mut |_, _| {}).map_err(err)?;
    sent.rounds.push(n);
    sent.bytes = w.bytes();
    let mut out = src.finish(w, &cpu).map_err(err)?;
    out.flush()
        .map_err(|e| format!("cannot send the migration stream: {e}"))?;
    report(&format!("round {round} {n} {}", t.elapsed().as_millis()));
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::os::unix::fs::FileExt;

    use super::*;
    use xen_stream::abi::x86_tsc_info;
    use xen_stream::{DomainState, HvmContext};

    const PAGE: usize = xen_shim_proto::layout::PAGE_SIZE;
    const RAM: u64 = 56;
    const ALL: u64 = 64;

    /// A domain in a memory file: `dirty()` returns the next scripted list
    /// after writing new contents to those pages (the guest's writes);
    /// `park()` writes `backend` pages (a backend's and the daemons' writes,
    /// in no dirty log) before the paused round.
    struct Fake {
        file: File,
        dirty: RefCell<VecDeque<Vec<u64>>>,
        granted: Vec<u64>,
        backend: Vec<u64>,
        stamp: RefCell<u8>,
    }

    impl Fake {
        fn scribble(&self, pfn: u64) {
            let mut s = self.stamp.borrow_mut();
            *s = s.wrapping_add(1).max(1);
            let page = vec![*s ^ pfn as u8 | 1; PAGE];
            self.file
                .write_all_at(&page, pfn * PAGE as u64)
                .expect("write a page");
        }
    }

    impl Source for Fake {
        fn memory_file(&self) -> &File {
            &self.file
        }
        fn nr_pages(&self) -> u64 {
            ALL
        }
        fn ram_pages(&self) -> u64 {
            RAM
        }
        fn dirty(&self) -> Result<Vec<u64>, String> {
            let next = self.dirty.borrow_mut().pop_front().unwrap_or_default();
            for &p in &next {
                self.scribble(p);
            }
            Ok(next)
        }
        fn grant_writable(&self, set: &mut BTreeSet<u64>) {
            set.extend(&self.granted);
        }
        fn park(&self) -> Result<KvmVcpuState, String> {
            for &p in &self.backend {
                self.scribble(p);
            }
            Ok(KvmVcpuState::default())
        }
        fn finish<W: Write>(
            &self,
            w: xen_stream::StreamWriter<W>,
            cpu: &KvmVcpuState,
        ) -> Result<W, SnapshotError> {
            let state = DomainState {
                xen_version: (4, 17),
                tsc: x86_tsc_info {
                    mode: 0,
                    khz: 1_000_000,
                    nsec: 0,
                    incarnation: 0,
                    _res1: 0,
                },
                hvm: HvmContext::new(vec![cpu.to_hvm()], 0, 1_000_000),
                params: Vec::new(),
                cpuid_policy: Vec::new(),
                msr_policy: Vec::new(),
            };
            w.finish(&state).map_err(|source| SnapshotError::Io {
                what: "write the test stream",
                source,
            })
        }
    }

    /// The pages of `stream` as a receiver loads them (a later copy of a
    /// page overwrites an earlier one).
    fn load(stream: &[u8]) -> Vec<u8> {
        let mut mem = vec![0u8; ALL as usize * PAGE];
        let mut r = stream;
        xen_stream::read_xl_header(&mut r).expect("the xl header");
        let mut sink = |pfn: u64, page: &[u8]| -> Result<(), xen_stream::PageSinkError> {
            let at = pfn as usize * PAGE;
            mem[at..at + PAGE].copy_from_slice(page);
            Ok(())
        };
        xen_stream::read_migration_stream(&mut r, ALL, &mut sink).expect("the stream");
        assert!(r.is_empty(), "bytes after END");
        mem
    }

    #[test]
    fn test_send_rounds_and_paused_round_sends_only_changed_pages() {
        let file = tempfile::tempfile().expect("a memory file");
        file.set_len(ALL * PAGE as u64).expect("size it");
        let fake = Fake {
            file,
            // Round 0's clearing call, a dirty round of 4 (over
            // min_dirty), then 1 (the last live round), then the paused
            // round's 1.
            dirty: RefCell::new(VecDeque::from(vec![
                vec![],
                vec![1, 2, 3, 4],
                vec![5],
                vec![6],
            ])),
            granted: vec![10, 11],
            // Granted page 10 and special page 57 written after the last
            // live round; 11 and the other special pages are not.
            backend: vec![10, RAM + 1],
            stamp: RefCell::new(0),
        };
        for p in [0, 1, 10, 11, 20, RAM, RAM + 1, ALL - 1] {
            fake.scribble(p);
        }
        let mut lines = Vec::new();
        let opts = LiveOptions {
            max_iters: 5,
            min_dirty: 2,
        };
        let mut out = Vec::new();
        let sent = send(
            &fake,
            &mut out,
            b"name = \"t\"\n",
            opts,
            &mut |l| lines.push(l.to_owned()),
            &mut || true,
        )
        .expect("send");
        // Round 0: the 8 pages with data; round 1: the 4 dirty; the last
        // live round: page 5, the 2 granted and the 8 special pages; the
        // paused round: page 6, granted page 10 and special page 57 only.
        assert_eq!(sent.rounds, vec![8, 4, 1 + 2 + 8, 3], "{lines:?}");
        assert!(lines.iter().any(|l| l == "live-done 3"), "{lines:?}");
        let mut want = vec![0u8; ALL as usize * PAGE];
        fake.file
            .read_exact_at(&mut want, 0)
            .expect("read the memory");
        assert!(load(&out) == want, "the receiver's memory differs");
    }

    #[test]
    fn test_send_cancelled_before_the_paused_round_fails() {
        let file = tempfile::tempfile().expect("a memory file");
        file.set_len(ALL * PAGE as u64).expect("size it");
        let fake = Fake {
            file,
            dirty: RefCell::new(VecDeque::new()),
            granted: Vec::new(),
            backend: Vec::new(),
            stamp: RefCell::new(0),
        };
        let mut out = Vec::new();
        let r = send(
            &fake,
            &mut out,
            b"",
            LiveOptions::default(),
            &mut |_| {},
            &mut || false,
        );
        assert!(r.is_err());
    }
}
