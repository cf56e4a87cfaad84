//! Persistence: an append-only journal of committed changes plus periodic
//! snapshots, in a state directory.
//!
//! - `journal`: records appended once per batch of requests, before their
//!   replies are sent, by a copy into a shared mapping of the preallocated
//!   file ([`mapped`]; one `write(2)` per batch where the file system cannot
//!   preallocate). Either way the records are in the kernel's page cache
//!   before the replies leave: an acknowledged write survives `SIGKILL` or
//!   a daemon crash. With `--fsync` each batch is also written to the disk
//!   (`msync`/`fdatasync`, surviving power loss); without it a machine crash
//!   may lose the last few seconds, as with any page-cache write.
//! - `snapshot`: the whole state (tree, domains, quotas), written to
//!   `snapshot.tmp`, `fsync`ed, renamed over `snapshot` and the directory
//!   `fsync`ed; then the journal is truncated. A crash at any point leaves
//!   either the old snapshot plus the full journal or the new snapshot
//!   (plus a journal whose records are idempotent over it).
//!
//! Records: `len: u32` (of what follows up to the checksum), `kind: u8`,
//! the fields, then `crc32: u32` of kind and fields. Replay stops at the
//! first torn or corrupt record and truncates the journal there.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use xenstore_wire::{DomId, Perm, PermList};

use crate::domain::Domain;
use crate::quota::{QuotaId, Quotas, NAMES};
use crate::store::{ChangeSink, Node, Tree};

pub mod mapped;

use mapped::MappedFile;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A file of the state directory could not be read or written.
    #[error("state file {path} could not be accessed")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The snapshot is corrupt (it is written atomically, so this is a disk
    /// problem or a foreign file).
    #[error("snapshot {0} is corrupt")]
    CorruptSnapshot(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PersistError + '_ {
    move |source| PersistError::Io {
        path: path.to_owned(),
        source,
    }
}

const K_UPSERT: u8 = 1;
const K_REMOVE: u8 = 2;
const K_DOMAIN: u8 = 3;
const K_RELEASE: u8 = 4;
const K_QUOTA: u8 = 5;
const K_WATCH: u8 = 6;
const K_UNWATCH: u8 = 7;
const K_TX_OPEN: u8 = 8;
const K_TX_CLOSE: u8 = 9;
const K_CONN_RESET: u8 = 10;
const K_END: u8 = 0xff;

const SNAP_MAGIC: &[u8; 8] = b"XSSNAP01";

/// CRC-32 (IEEE 802.3) of `data`. A journal record carries a value of up
/// to 4 KiB: `crc32fast` folds 64 bytes per step with PCLMULQDQ where the
/// CPU has it, where a byte-at-a-time table loop cost microseconds.
#[must_use]
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// One decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A node's value and permissions (creating it and missing parents).
    Upsert {
        /// The path.
        path: String,
        /// The value.
        value: Vec<u8>,
        /// The permissions.
        perms: PermList,
    },
    /// A node and its subtree removed.
    Remove {
        /// The path.
        path: String,
    },
    /// A domain introduced (or changed).
    Domain {
        /// The domain.
        domid: DomId,
        /// Its mfn.
        mfn: u64,
        /// Its event channel.
        port: u32,
        /// Its features.
        features: u32,
        /// Its target.
        target: Option<DomId>,
    },
    /// A domain released.
    Release {
        /// The domain.
        domid: DomId,
    },
    /// A quota set: global when `domid` is `None`; a domain override
    /// cleared when `value` is `None`.
    Quota {
        /// The domain, or global.
        domid: Option<DomId>,
        /// The quota name.
        name: String,
        /// The value.
        value: Option<u32>,
    },
    /// A watch set by domain `domid`'s ring connection (Xen's live-update
    /// `WATCH_DATA`): restored on that connection after a restart.
    Watch {
        /// The domain.
        domid: DomId,
        /// The watch as set.
        watch: WatchState,
    },
    /// A watch of domain `domid` removed (`XS_UNWATCH`).
    Unwatch {
        /// The domain.
        domid: DomId,
        /// The absolute (or special) watched path.
        path: String,
        /// The token.
        token: Vec<u8>,
    },
    /// A transaction opened on domain `domid`'s ring connection.
    TxOpen {
        /// The domain.
        domid: DomId,
        /// The transaction id.
        tx_id: u32,
    },
    /// A transaction of domain `domid` ended (committed, failed or
    /// aborted).
    TxClose {
        /// The domain.
        domid: DomId,
        /// The transaction id.
        tx_id: u32,
    },
    /// Domain `domid`'s ring connection lost its watches and transactions
    /// (reconnection, `XS_RESET_WATCHES`, a failed or closed ring).
    ConnReset {
        /// The domain.
        domid: DomId,
    },
    /// End of a snapshot.
    End,
}

/// A domain connection's watch as persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchState {
    /// The absolute (or special) watched path.
    pub path: String,
    /// The token.
    pub token: Vec<u8>,
    /// Set as a relative path: events are relative to the domain's home.
    pub relative: bool,
    /// The depth limit (`None`: unlimited).
    pub depth: Option<u32>,
}

/// What a domain's ring connection had that a restart must give back: its
/// watches and the ids of its open transactions (which then fail with
/// `EAGAIN` at commit: their reads and writes are lost).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// The watches, in the order they were set.
    pub watches: Vec<WatchState>,
    /// The open transactions' ids.
    pub txs: Vec<u32>,
}

impl ConnState {
    /// Whether there is nothing to restore.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.watches.is_empty() && self.txs.is_empty()
    }

    /// The records that rebuild this state for `domid`.
    pub fn records(&self, domid: DomId) -> impl Iterator<Item = Record> + '_ {
        let w = self.watches.iter().map(move |w| Record::Watch {
            domid,
            watch: w.clone(),
        });
        let t = self
            .txs
            .iter()
            .map(move |&tx_id| Record::TxOpen { domid, tx_id });
        w.chain(t)
    }
}

/// Encodes records into a byte buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    /// The encoded bytes not yet written.
    pub buf: Vec<u8>,
    /// Whether encoding is on (off with `--no-persist`).
    pub enabled: bool,
}

impl Encoder {
    /// An encoder that records (`enabled`) or drops everything.
    #[must_use]
    pub fn new(enabled: bool) -> Encoder {
        Encoder {
            buf: Vec::new(),
            enabled,
        }
    }

    fn begin(&mut self, kind: u8) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.push(kind);
        start
    }

    fn finish(&mut self, start: usize) {
        let body_len = self.buf.len() - start - 4;
        let crc = crc32(&self.buf[start + 4..]);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        let len = u32::try_from(body_len).expect("records are far below 4 GiB");
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    fn str16(&mut self, s: &[u8]) {
        let l = u16::try_from(s.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&l.to_le_bytes());
        self.buf.extend_from_slice(&s[..usize::from(l)]);
    }

    /// Appends a record.
    pub fn record(&mut self, r: &Record) {
        if !self.enabled {
            return;
        }
        match r {
            Record::Upsert { path, value, perms } => self.upsert_raw(path, value, perms),
            Record::Remove { path } => {
                let s = self.begin(K_REMOVE);
                self.str16(path.as_bytes());
                self.finish(s);
            }
            Record::Domain {
                domid,
                mfn,
                port,
                features,
                target,
            } => {
                let s = self.begin(K_DOMAIN);
                self.buf.extend_from_slice(&domid.to_le_bytes());
                self.buf.extend_from_slice(&mfn.to_le_bytes());
                self.buf.extend_from_slice(&port.to_le_bytes());
                self.buf.extend_from_slice(&features.to_le_bytes());
                self.buf
                    .extend_from_slice(&target.map_or(u32::MAX, u32::from).to_le_bytes());
                self.finish(s);
            }
            Record::Release { domid } => {
                let s = self.begin(K_RELEASE);
                self.buf.extend_from_slice(&domid.to_le_bytes());
                self.finish(s);
            }
            Record::Quota { domid, name, value } => {
                let s = self.begin(K_QUOTA);
                self.buf
                    .extend_from_slice(&domid.map_or(u32::MAX, u32::from).to_le_bytes());
                self.str16(name.as_bytes());
                self.buf
                    .extend_from_slice(&value.map_or(u64::MAX, u64::from).to_le_bytes());
                self.finish(s);
            }
            Record::Watch { domid, watch } => {
                let s = self.begin(K_WATCH);
                self.buf.extend_from_slice(&domid.to_le_bytes());
                self.str16(watch.path.as_bytes());
                self.str16(&watch.token);
                self.buf.push(u8::from(watch.relative));
                self.buf
                    .extend_from_slice(&watch.depth.map_or(u64::MAX, u64::from).to_le_bytes());
                self.finish(s);
            }
            Record::Unwatch { domid, path, token } => {
                let s = self.begin(K_UNWATCH);
                self.buf.extend_from_slice(&domid.to_le_bytes());
                self.str16(path.as_bytes());
                self.str16(token);
                self.finish(s);
            }
            Record::TxOpen { domid, tx_id } | Record::TxClose { domid, tx_id } => {
                let kind = if matches!(r, Record::TxOpen { .. }) {
                    K_TX_OPEN
                } else {
                    K_TX_CLOSE
                };
                let s = self.begin(kind);
                self.buf.extend_from_slice(&domid.to_le_bytes());
                self.buf.extend_from_slice(&tx_id.to_le_bytes());
                self.finish(s);
            }
            Record::ConnReset { domid } => {
                let s = self.begin(K_CONN_RESET);
                self.buf.extend_from_slice(&domid.to_le_bytes());
                self.finish(s);
            }
            Record::End => {
                let s = self.begin(K_END);
                self.finish(s);
            }
        }
    }

    fn upsert_raw(&mut self, path: &str, value: &[u8], perms: &PermList) {
        let s = self.begin(K_UPSERT);
        self.str16(path.as_bytes());
        let n = u16::try_from(perms.0.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&n.to_le_bytes());
        for p in perms.0.iter().take(usize::from(n)) {
            self.buf.extend_from_slice(&p.domid.to_le_bytes());
            self.buf.push(p.access);
        }
        let vl = u32::try_from(value.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&vl.to_le_bytes());
        self.buf.extend_from_slice(value);
        self.finish(s);
    }

    /// Records a domain.
    pub fn domain(&mut self, d: &Domain) {
        self.record(&Record::Domain {
            domid: d.domid,
            mfn: d.mfn,
            port: d.port,
            features: d.features,
            target: d.target,
        });
    }
}

impl ChangeSink for Encoder {
    fn upsert(&mut self, path: &str, node: &Node) {
        if self.enabled {
            self.upsert_raw(path, &node.value, &node.perms);
        }
    }

    fn remove(&mut self, path: &str) {
        if self.enabled {
            self.record(&Record::Remove {
                path: path.to_owned(),
            });
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn bytes16(&mut self) -> Option<Vec<u8>> {
        let l = self.u16()?;
        Some(self.take(usize::from(l))?.to_vec())
    }
    fn str16(&mut self) -> Option<String> {
        String::from_utf8(self.bytes16()?).ok()
    }
}

fn decode_body(kind: u8, body: &[u8]) -> Option<Record> {
    let mut c = Cursor { b: body };
    let r = match kind {
        K_UPSERT => {
            let path = c.str16()?;
            let n = c.u16()?;
            let mut perms = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let domid = c.u16()?;
                let access = c.take(1)?[0];
                perms.push(Perm::new(domid, access));
            }
            let vl = c.u32()? as usize;
            let value = c.take(vl)?.to_vec();
            if perms.is_empty() {
                return None;
            }
            Record::Upsert {
                path,
                value,
                perms: PermList(perms),
            }
        }
        K_REMOVE => Record::Remove { path: c.str16()? },
        K_DOMAIN => {
            let domid = c.u16()?;
            let mfn = c.u64()?;
            let port = c.u32()?;
            let features = c.u32()?;
            let t = c.u32()?;
            Record::Domain {
                domid,
                mfn,
                port,
                features,
                target: DomId::try_from(t).ok(),
            }
        }
        K_RELEASE => Record::Release { domid: c.u16()? },
        K_QUOTA => {
            let d = c.u32()?;
            let name = c.str16()?;
            let v = c.u64()?;
            Record::Quota {
                domid: DomId::try_from(d).ok(),
                name,
                value: u32::try_from(v).ok(),
            }
        }
        K_WATCH => {
            let domid = c.u16()?;
            let path = c.str16()?;
            let token = c.bytes16()?;
            let relative = match c.take(1)?[0] {
                0 => false,
                1 => true,
                _ => return None,
            };
            let depth = u32::try_from(c.u64()?).ok();
            Record::Watch {
                domid,
                watch: WatchState {
                    path,
                    token,
                    relative,
                    depth,
                },
            }
        }
        K_UNWATCH => Record::Unwatch {
            domid: c.u16()?,
            path: c.str16()?,
            token: c.bytes16()?,
        },
        K_TX_OPEN => Record::TxOpen {
            domid: c.u16()?,
            tx_id: c.u32()?,
        },
        K_TX_CLOSE => Record::TxClose {
            domid: c.u16()?,
            tx_id: c.u32()?,
        },
        K_CONN_RESET => Record::ConnReset { domid: c.u16()? },
        K_END => Record::End,
        _ => return None,
    };
    if !c.b.is_empty() {
        return None;
    }
    Some(r)
}

/// Decodes records from `data`; returns them and the length of the valid
/// prefix (where a torn or corrupt record starts).
#[must_use]
pub fn decode_all(data: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut off = 0usize;
    while data.len() - off >= 4 {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().expect("4 bytes")) as usize;
        let Some(end) = off.checked_add(4 + len + 4) else {
            break;
        };
        if len == 0 || end > data.len() {
            break;
        }
        let body = &data[off + 4..off + 4 + len];
        let crc = u32::from_le_bytes(data[off + 4 + len..end].try_into().expect("4 bytes"));
        if crc32(body) != crc {
            break;
        }
        let Some(r) = decode_body(body[0], &body[1..]) else {
            break;
        };
        out.push(r);
        off = end;
    }
    (out, off)
}

/// The persistent state as loaded.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The tree.
    pub tree: Option<Tree>,
    /// Introduced domains.
    pub domains: Vec<Domain>,
    /// Quotas.
    pub quotas: Quotas,
    /// Domains' ring connections' watches and open transactions.
    pub conns: BTreeMap<DomId, ConnState>,
    /// How many journal records were replayed.
    pub replayed: usize,
    /// Whether a torn journal tail was cut off.
    pub truncated_tail: bool,
}

/// The state being loaded, record by record ([`apply`]).
#[derive(Debug, Default)]
pub struct LoadState {
    /// Introduced domains.
    pub domains: BTreeMap<DomId, Domain>,
    /// Quotas.
    pub quotas: Quotas,
    /// Domains' ring connections' watches and open transactions.
    pub conns: BTreeMap<DomId, ConnState>,
}

/// Applies one record to the state being loaded.
pub fn apply(r: Record, tree: &mut Tree, st: &mut LoadState) {
    let LoadState {
        domains,
        quotas,
        conns,
    } = st;
    match r {
        Record::Upsert { path, value, perms } => tree.upsert(&path, value, perms),
        Record::Remove { path } => tree.remove_tree(&path),
        Record::Domain {
            domid,
            mfn,
            port,
            features,
            target,
        } => {
            domains.insert(
                domid,
                Domain {
                    domid,
                    mfn,
                    port,
                    target,
                    features,
                    conn: None,
                    shutdown: false,
                },
            );
        }
        Record::Release { domid } => {
            domains.remove(&domid);
            conns.remove(&domid);
        }
        Record::Quota { domid, name, value } => {
            if let Ok(q) = crate::quota::by_name(&name) {
                let _ = match (domid, value) {
                    (None, Some(v)) => quotas.set_global(q, v),
                    (None, None) => Ok(()),
                    (Some(d), v) => quotas.set_domain(d, q, v),
                };
            }
        }
        Record::Watch { domid, watch } => {
            let c = conns.entry(domid).or_default();
            if !c
                .watches
                .iter()
                .any(|w| w.path == watch.path && w.token == watch.token)
            {
                c.watches.push(watch);
            }
        }
        Record::Unwatch { domid, path, token } => {
            if let Some(c) = conns.get_mut(&domid) {
                c.watches.retain(|w| w.path != path || w.token != token);
            }
        }
        Record::TxOpen { domid, tx_id } => {
            let c = conns.entry(domid).or_default();
            if !c.txs.contains(&tx_id) {
                c.txs.push(tx_id);
            }
        }
        Record::TxClose { domid, tx_id } => {
            if let Some(c) = conns.get_mut(&domid) {
                c.txs.retain(|&t| t != tx_id);
            }
        }
        Record::ConnReset { domid } => {
            conns.remove(&domid);
        }
        Record::End => {}
    }
    conns.retain(|_, c| !c.is_empty());
}

/// The state directory: snapshot plus journal.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    journal: File,
    /// The journal appended through a mapping; `None`: with `write(2)`.
    map: Option<MappedFile>,
    journal_len: u64,
    snapshot_len: u64,
    fsync: bool,
}

impl StateDir {
    fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot")
    }

    /// Opens (creating) `dir` and loads its state.
    pub fn open(dir: &Path, fsync: bool) -> Result<(StateDir, Loaded), PersistError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let snap = dir.join("snapshot");
        let mut tree: Option<Tree> = None;
        let mut st = LoadState::default();
        let mut snapshot_len = 0;
        match fs::read(&snap) {
            Ok(data) => {
                snapshot_len = data.len() as u64;
                if data.len() < 8 || &data[..8] != SNAP_MAGIC {
                    return Err(PersistError::CorruptSnapshot(snap));
                }
                let (recs, _) = decode_all(&data[8..]);
                if recs.last() != Some(&Record::End) {
                    return Err(PersistError::CorruptSnapshot(snap));
                }
                let mut t = Tree::empty();
                for r in recs {
                    apply(r, &mut t, &mut st);
                }
                t.check();
                tree = Some(t);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&snap)(e)),
        }
        let jpath = dir.join("journal");
        let mut journal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&jpath)
            .map_err(io_err(&jpath))?;
        let mut data = Vec::new();
        journal.read_to_end(&mut data).map_err(io_err(&jpath))?;
        let (recs, valid) = decode_all(&data);
        // Zeros after the records are the preallocated room of a mapped
        // journal; anything else is a torn or corrupt tail.
        let truncated_tail = data[valid..].iter().any(|&b| b != 0);
        if valid != data.len() {
            journal.set_len(valid as u64).map_err(io_err(&jpath))?;
        }
        let replayed = recs.len();
        if replayed > 0 {
            let t = tree.get_or_insert_with(Tree::new);
            for r in recs {
                apply(r, t, &mut st);
            }
            t.check();
        }
        let map = match MappedFile::new(&journal, valid) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::info!(error = %e, "journal not mappable: appending with write(2)");
                // Cut whatever the attempt preallocated: write(2) appends
                // at the end of the file.
                journal.set_len(valid as u64).map_err(io_err(&jpath))?;
                None
            }
        };
        let sd = StateDir {
            dir: dir.to_owned(),
            journal,
            map,
            journal_len: valid as u64,
            snapshot_len,
            fsync,
        };
        Ok((
            sd,
            Loaded {
                tree,
                domains: st.domains.into_values().collect(),
                quotas: st.quotas,
                conns: st.conns,
                replayed,
                truncated_tail,
            },
        ))
    }

    /// Appends `buf` to the journal and clears it: a copy into the mapped
    /// file (a `write(2)` without a mapping); written to the disk when
    /// configured (`--fsync`).
    pub fn append(&mut self, buf: &mut Vec<u8>) -> Result<(), PersistError> {
        if buf.is_empty() {
            return Ok(());
        }
        let off = usize::try_from(self.journal_len).expect("the journal is mapped in memory");
        if let Some(m) = &mut self.map {
            match off
                .checked_add(buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
                .and_then(|need| m.reserve(&self.journal, need))
            {
                Ok(()) => {
                    m.write_at(off, buf);
                    if self.fsync {
                        let jpath = self.dir.join("journal");
                        m.sync(off, buf.len()).map_err(io_err(&jpath))?;
                    }
                    self.journal_len += buf.len() as u64;
                    m.release_before(off + buf.len());
                    buf.clear();
                    return Ok(());
                }
                Err(e) => {
                    // Out of room to preallocate or map: cut the zeros
                    // after the records and go on with write(2), which
                    // reports a full disk as an error, not a SIGBUS.
                    tracing::warn!(error = %e, "journal mapping failed: appending with write(2)");
                    self.map = None;
                    let jpath = self.dir.join("journal");
                    self.journal
                        .set_len(self.journal_len)
                        .map_err(io_err(&jpath))?;
                }
            }
        }
        let jpath = self.dir.join("journal");
        self.journal.write_all(buf).map_err(io_err(&jpath))?;
        if self.fsync {
            self.journal.sync_data().map_err(io_err(&jpath))?;
        }
        self.journal_len += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Whether appends go through a mapping (else `write(2)`).
    #[must_use]
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    /// Whether the journal has grown enough to be compacted.
    #[must_use]
    pub fn wants_compaction(&self) -> bool {
        self.journal_len > (4 << 20).max(2 * self.snapshot_len)
    }

    /// Bytes in the journal.
    #[must_use]
    pub fn journal_len(&self) -> u64 {
        self.journal_len
    }

    /// Writes a snapshot of the whole state and truncates the journal;
    /// `conns` are the domains' ring connections' states.
    pub fn compact<'d>(
        &mut self,
        tree: &Tree,
        domains: impl Iterator<Item = &'d Domain>,
        quotas: &Quotas,
        conns: impl Iterator<Item = Record>,
    ) -> Result<(), PersistError> {
        let mut enc = Encoder::new(true);
        enc.buf.extend_from_slice(SNAP_MAGIC);
        for p in tree.preorder() {
            if let Some(n) = tree.get(&p) {
                enc.upsert_raw(&p, &n.value, &n.perms);
            }
        }
        for d in domains {
            enc.domain(d);
        }
        for q in 0..NAMES.len() {
            enc.record(&Record::Quota {
                domid: None,
                name: NAMES[q as QuotaId].to_owned(),
                value: Some(quotas.global(q)),
            });
        }
        for (d, q, v) in quotas.overrides() {
            enc.record(&Record::Quota {
                domid: Some(d),
                name: NAMES[q].to_owned(),
                value: Some(v),
            });
        }
        for r in conns {
            enc.record(&r);
        }
        enc.record(&Record::End);
        let tmp = self.dir.join("snapshot.tmp");
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            f.write_all(&enc.buf).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        let snap = self.snapshot_path();
        fs::rename(&tmp, &snap).map_err(io_err(&snap))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        let jpath = self.dir.join("journal");
        self.journal.set_len(0).map_err(io_err(&jpath))?;
        self.journal.sync_all().map_err(io_err(&jpath))?;
        self.journal_len = 0;
        if let Some(m) = &mut self.map {
            if let Err(e) = m.reset(&self.journal) {
                tracing::warn!(error = %e, "journal mapping failed: appending with write(2)");
                self.map = None;
                self.journal.set_len(0).map_err(io_err(&jpath))?;
            }
        }
        self.snapshot_len = enc.buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenstore_wire::PERM_READ;

    #[test]
    fn test_crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    /// The bitwise definition of CRC-32, to check `crc32fast` against.
    fn crc32_bitwise(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn test_crc32_every_length_matches_bitwise() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for len in 0..data.len() {
            for start in 0..3 {
                let s = &data[start.min(len)..len];
                assert_eq!(crc32(s), crc32_bitwise(s), "length {len} from {start}");
            }
        }
    }

    #[test]
    fn test_records_encode_decode_roundtrip() {
        let recs = vec![
            Record::Upsert {
                path: "/a".into(),
                value: b"v\0x".to_vec(),
                perms: PermList(vec![Perm::new(3, PERM_READ), Perm::new(0, 0)]),
            },
            Record::Remove { path: "/a".into() },
            Record::Domain {
                domid: 4,
                mfn: 99,
                port: 7,
                features: 1,
                target: Some(2),
            },
            Record::Release { domid: 4 },
            Record::Quota {
                domid: Some(3),
                name: "nodes".into(),
                value: None,
            },
            Record::Watch {
                domid: 4,
                watch: WatchState {
                    path: "/local/domain/4/device".into(),
                    token: vec![0xff, 0, b't'],
                    relative: true,
                    depth: Some(2),
                },
            },
            Record::Unwatch {
                domid: 4,
                path: "@releaseDomain".into(),
                token: b"r".to_vec(),
            },
            Record::TxOpen { domid: 4, tx_id: 9 },
            Record::TxClose { domid: 4, tx_id: 9 },
            Record::ConnReset { domid: 4 },
            Record::End,
        ];
        let mut e = Encoder::new(true);
        for r in &recs {
            e.record(r);
        }
        let (got, valid) = decode_all(&e.buf);
        assert_eq!(got, recs);
        assert_eq!(valid, e.buf.len());
    }

    fn watch(path: &str, token: &str) -> WatchState {
        WatchState {
            path: path.into(),
            token: token.as_bytes().to_vec(),
            relative: false,
            depth: None,
        }
    }

    #[test]
    fn test_apply_conn_records_unwatch_close_reset_and_release() {
        let mut t = Tree::new();
        let mut st = LoadState::default();
        let recs = [
            Record::Watch {
                domid: 4,
                watch: watch("/a", "1"),
            },
            Record::Watch {
                domid: 4,
                watch: watch("/b", "2"),
            },
            Record::Watch {
                domid: 4,
                watch: watch("/a", "1"),
            },
            Record::Unwatch {
                domid: 4,
                path: "/b".into(),
                token: b"2".to_vec(),
            },
            Record::TxOpen { domid: 4, tx_id: 3 },
            Record::TxOpen { domid: 4, tx_id: 5 },
            Record::TxClose { domid: 4, tx_id: 3 },
            Record::Watch {
                domid: 6,
                watch: watch("/c", "3"),
            },
            Record::Watch {
                domid: 7,
                watch: watch("/d", "4"),
            },
            Record::ConnReset { domid: 6 },
            Record::Release { domid: 7 },
        ];
        for r in recs {
            apply(r, &mut t, &mut st);
        }
        let want = ConnState {
            watches: vec![watch("/a", "1")],
            txs: vec![5],
        };
        assert_eq!(st.conns.into_iter().collect::<Vec<_>>(), vec![(4, want)]);
    }

    #[test]
    fn test_decode_all_stops_at_torn_record() {
        let mut e = Encoder::new(true);
        e.record(&Record::Remove { path: "/a".into() });
        let good = e.buf.len();
        e.record(&Record::Remove { path: "/b".into() });
        let torn = &e.buf[..e.buf.len() - 3];
        let (got, valid) = decode_all(torn);
        assert_eq!(got.len(), 1);
        assert_eq!(valid, good);
    }

    #[test]
    fn test_decode_all_stops_at_corrupt_crc() {
        let mut e = Encoder::new(true);
        e.record(&Record::Remove { path: "/a".into() });
        let n = e.buf.len();
        e.buf[n - 1] ^= 1;
        assert_eq!(decode_all(&e.buf).0.len(), 0);
    }

    fn upsert(path: &str, value: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new(true);
        e.record(&Record::Upsert {
            path: path.into(),
            value: value.to_vec(),
            perms: PermList(vec![Perm::new(0, 0)]),
        });
        e.buf
    }

    #[test]
    fn test_state_dir_mapped_appends_replay_after_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut sd, loaded) = StateDir::open(dir.path(), false).expect("opens");
        assert!(sd.is_mapped(), "the journal is mapped on this file system");
        assert_eq!(loaded.replayed, 0);
        for i in 0..100 {
            sd.append(&mut upsert(&format!("/k{i}"), &[b'v'; 3000]))
                .expect("appends");
        }
        let logical = sd.journal_len();
        drop(sd);
        let on_disk = std::fs::metadata(dir.path().join("journal"))
            .expect("journal")
            .len();
        assert!(on_disk >= logical, "preallocated room follows the records");
        let (_sd, loaded) = StateDir::open(dir.path(), false).expect("reopens");
        assert_eq!(loaded.replayed, 100);
        assert!(!loaded.truncated_tail, "zero padding is not a torn tail");
        let tree = loaded.tree.expect("a tree");
        assert_eq!(tree.get("/k99").expect("replayed").value.len(), 3000);
    }

    #[test]
    fn test_state_dir_garbage_after_records_is_cut_and_appends_go_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut sd, _) = StateDir::open(dir.path(), false).expect("opens");
        sd.append(&mut upsert("/a", b"1")).expect("appends");
        let end = sd.journal_len();
        drop(sd);
        // A torn record in the preallocated zeros, as a crash mid-copy leaves.
        let jpath = dir.path().join("journal");
        let mut data = std::fs::read(&jpath).expect("journal");
        data[end as usize..end as usize + 7].copy_from_slice(&[0x40, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&jpath, &data).expect("rewrite");
        let (mut sd, loaded) = StateDir::open(dir.path(), false).expect("reopens");
        assert!(loaded.truncated_tail);
        assert_eq!(loaded.replayed, 1);
        sd.append(&mut upsert("/b", b"2"))
            .expect("appends after the cut");
        drop(sd);
        let (_sd, loaded) = StateDir::open(dir.path(), false).expect("reopens again");
        assert!(!loaded.truncated_tail);
        let tree = loaded.tree.expect("a tree");
        assert_eq!(tree.get("/a").expect("kept").value, b"1");
        assert_eq!(tree.get("/b").expect("appended").value, b"2");
    }
}
