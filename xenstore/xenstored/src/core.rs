//! The protocol engine: connections' protocol state, request dispatch,
//! watches and domains. Pure: bytes in ([`Core::handle`]), bytes out
//! (each connection's output queue); the server moves them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;

use xenstore_wire::{
    path, DomId, Header, MsgType, PacketWriter, PermList, Request, XsError, XENSTORE_PAYLOAD_MAX,
    XENSTORE_SERVER_FEATURE_WATCHDEPTH,
};

use crate::domain::{Domain, Domains, IntroduceCheck};
use crate::ops::{Caller, Event};
use crate::persist::{ConnState, Encoder, Record, WatchState};
use crate::quota::{self, Quotas};
use crate::store::{Journaled, Node, Nodes, Tree};
use crate::txn::{Transaction, TxView};
use crate::watch::{ConnId, Watch, WatchId, Watches};
use xen_diag::LogLimiter as RateLimit;

mod table;

/// `server_features` this daemon supports.
pub const SERVER_FEATURES: u32 = xen_abi::io::xs_wire::XENSTORE_SERVER_FEATURE_RECONNECTION
    | xen_abi::io::xs_wire::XENSTORE_SERVER_FEATURE_ERROR
    | XENSTORE_SERVER_FEATURE_WATCHDEPTH;

/// Bytes of unsent output (replies and watch events) a privileged (Dom0
/// socket) connection may have queued. A watch event that would take it
/// past this ends the connection ([`Core::take_overflowed`]): a client
/// that does not read its socket must not grow the daemon's memory, and
/// dropping the connection (it sees EOF, reconnects and re-reads) is the
/// only way that never loses one event while delivering later ones.
pub const MAX_QUEUED_BYTES_PRIVILEGED: usize = 4 << 20;

/// The same bound for a guest's connection (its ring: a guest has one
/// connection, so this is also the domain's bound). Xen 4.17 counts queued
/// output in the domain's memory quota (2.5 MiB hard).
pub const MAX_QUEUED_BYTES: usize = 1 << 20;

/// Bytes of unsent output above which a connection's requests are not read
/// until it drains (a client that pipelines without reading its replies
/// waits; nothing is dropped).
pub const MAX_PENDING_OUTPUT: usize = 256 << 10;

/// Bytes one transaction of an unprivileged connection may hold (node
/// copies, paths, pending events): Xen 4.17's hard per-domain memory quota
/// (`memory`, 2.5 MiB), which its transaction nodes count against. An
/// operation that takes it past this fails with `ENOSPC`, as Xen's quota
/// errors in a transaction do, and the transaction then fails at commit.
pub const MAX_TRANSACTION_BYTES: usize = 2560 << 10;

/// The same bound for a privileged (Dom0) connection, which Xen leaves
/// unbounded: large enough for any toolstack transaction (thousands of
/// nodes), small enough that a runaway one cannot exhaust Dom0.
pub const MAX_TRANSACTION_BYTES_PRIVILEGED: usize = 32 << 20;

/// What kind of peer a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnKind {
    /// A Unix socket client (Dom0 tools).
    Socket {
        /// Connected on the read-only socket: changes get `EROFS`.
        read_only: bool,
    },
    /// A domain's shared ring.
    Domain,
}

/// Output buffer capacity an idle connection keeps (larger ones are freed
/// once drained).
const IDLE_OUT_CAPACITY: usize = 512;

/// A packet queue: whole packets appended, bytes drained from the front.
#[derive(Debug, Default)]
pub struct OutQueue {
    buf: Vec<u8>,
    sent: usize,
    /// End offset of each queued packet and whether it is a watch event.
    ends: VecDeque<(usize, bool)>,
    events: usize,
}

impl OutQueue {
    /// Bytes waiting to be sent.
    #[must_use]
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// Whether nothing waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sent == self.buf.len()
    }

    /// Packets (replies and events) not completely sent.
    #[must_use]
    pub fn packets(&self) -> usize {
        self.ends.len()
    }

    /// Watch events not completely sent.
    #[must_use]
    pub fn events(&self) -> usize {
        self.events
    }

    /// Records that `n` bytes were sent.
    pub fn consume(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.buf.len());
        while let Some(&(end, ev)) = self.ends.front() {
            if end > self.sent {
                break;
            }
            self.ends.pop_front();
            if ev {
                self.events -= 1;
            }
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
            self.ends.clear();
            // An idle connection keeps a small buffer, not its peak.
            if self.buf.capacity() > IDLE_OUT_CAPACITY {
                self.buf = Vec::new();
                self.ends = VecDeque::new();
            }
        } else if self.sent > 65536 && self.sent * 2 > self.buf.len() {
            self.buf.drain(..self.sent);
            for e in &mut self.ends {
                e.0 -= self.sent;
            }
            self.sent = 0;
        }
    }

    fn mark(&mut self, ev: bool) {
        self.ends.push_back((self.buf.len(), ev));
        if ev {
            self.events += 1;
        }
    }

    /// Removes the last queued packet if it has not started to be sent.
    fn pop_last(&mut self) {
        if let Some(&(end, ev)) = self.ends.back() {
            if end != self.buf.len() {
                return;
            }
            self.ends.pop_back();
            let start = self.ends.back().map_or(self.sent, |e| e.0).max(self.sent);
            self.buf.truncate(start);
            if ev {
                self.events -= 1;
            }
        }
    }

    /// Drops everything queued, and the memory.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.sent = 0;
        self.ends = VecDeque::new();
        self.events = 0;
    }
}

/// The protocol state of one connection.
#[derive(Debug)]
pub struct Conn {
    /// Who the peer is.
    pub caller: Caller,
    /// Socket or ring.
    pub kind: ConnKind,
    /// The base of relative paths (`/local/domain/<domid>`).
    pub home: String,
    /// Replies and events to send.
    pub out: OutQueue,
    txs: HashMap<u32, Transaction>,
    next_tx: u32,
    watches: Vec<WatchId>,
    /// Set when a watch event found the output queue at its bound: the
    /// connection gets no more events and the server ends it.
    pub overflowed: bool,
}

impl Conn {
    fn new(caller: Caller, kind: ConnKind) -> Conn {
        Conn {
            home: path::domain_path(caller.domid),
            caller,
            kind,
            out: OutQueue::default(),
            txs: HashMap::new(),
            next_tx: 1,
            watches: Vec::new(),
            overflowed: false,
        }
    }

    /// Open transactions.
    #[must_use]
    pub fn transactions(&self) -> usize {
        self.txs.len()
    }

    /// Watches set.
    #[must_use]
    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }
}

/// A domain event the server must act on (map or unmap a ring).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainAction {
    /// `XS_INTRODUCE`: map the domain's xenstore page and bind its port.
    Introduced {
        /// The domain.
        domid: DomId,
        /// Its mfn.
        mfn: u64,
        /// Its event channel.
        port: u32,
    },
    /// `XS_RELEASE`: the ring connection (already closed in the engine)
    /// is to be dropped and unmapped.
    Released {
        /// The domain.
        domid: DomId,
        /// Its connection, if it had one.
        conn: Option<ConnId>,
    },
    /// `XS_SET_FEATURE`: update the ring page's `server_features`.
    Features {
        /// The domain.
        domid: DomId,
        /// The new value.
        features: u32,
    },
}

/// The engine.
#[derive(Debug)]
pub struct Core {
    /// The node tree.
    pub tree: Tree,
    /// Quotas.
    pub quotas: Quotas,
    /// Introduced domains.
    pub domains: Domains,
    /// Journal records not yet written.
    pub journal: Encoder,
    watches: Watches,
    conns: Vec<Option<Conn>>,
    free: Vec<ConnId>,
    /// Connections with new output since the last [`Core::take_dirty`].
    dirty: Vec<ConnId>,
    dirty_flag: Vec<bool>,
    /// Domain actions for the server.
    pub actions: Vec<DomainAction>,
    /// Checks `XS_INTRODUCE` with the hypervisor before it is acknowledged
    /// (none: introductions are recorded as they come).
    pub introduce_check: Option<Box<dyn IntroduceCheck>>,
    canon: String,
    ids: Vec<WatchId>,
    /// Requests handled.
    pub requests: u64,
    /// `XS_CONTROL log`: whether requests are traced.
    pub trace_requests: bool,
    drop_log: RateLimit,
    overflowed: Vec<ConnId>,
    /// Watches and open transactions of domains' ring connections loaded
    /// from the state directory, given back when each domain's ring is
    /// mapped again ([`Core::restore_conn`]).
    pub restored: BTreeMap<DomId, ConnState>,
}

impl Default for Core {
    fn default() -> Self {
        Self::new(Tree::new(), false)
    }
}

/// Either the tree (journaled) or a transaction's view.
enum View<'a> {
    Base(Journaled<'a, Encoder>),
    Tx(TxView<'a>),
}

impl Nodes for View<'_> {
    fn node(&mut self, p: &str) -> Option<&Node> {
        match self {
            View::Base(b) => b.node(p),
            View::Tx(t) => t.node(p),
        }
    }
    fn modify<R>(&mut self, p: &str, f: impl FnOnce(&mut Node) -> R) -> Option<R> {
        match self {
            View::Base(b) => b.modify(p, f),
            View::Tx(t) => t.modify(p, f),
        }
    }
    fn insert(&mut self, p: &str, node: Node) {
        match self {
            View::Base(b) => b.insert(p, node),
            View::Tx(t) => t.insert(p, node),
        }
    }
    fn remove(&mut self, p: &str) -> Option<Node> {
        match self {
            View::Base(b) => b.remove(p),
            View::Tx(t) => t.remove(p),
        }
    }
    fn owned_by(&self, domid: DomId) -> u64 {
        match self {
            View::Base(b) => b.owned_by(domid),
            View::Tx(t) => t.owned_by(domid),
        }
    }
    fn memory_of(&self, domid: DomId) -> u64 {
        match self {
            View::Base(b) => b.memory_of(domid),
            View::Tx(t) => t.memory_of(domid),
        }
    }
}

/// Appends a reply packet; `E2BIG` instead if the payload is too big.
fn reply(out: &mut OutQueue, hdr: &Header, ty: MsgType, payload: &[&[u8]]) {
    let mut w = PacketWriter::begin(&mut out.buf, ty, hdr.req_id, hdr.tx_id);
    for p in payload {
        w.push(p);
    }
    if w.finish().is_err() {
        PacketWriter::error(&mut out.buf, hdr.req_id, hdr.tx_id, XsError::E2big);
    }
    out.mark(false);
}

fn reply_error(out: &mut OutQueue, hdr: &Header, e: XsError) {
    PacketWriter::error(&mut out.buf, hdr.req_id, hdr.tx_id, e);
    out.mark(false);
}

impl Core {
    /// An engine over `tree`; `persist` turns journal encoding on.
    #[must_use]
    pub fn new(tree: Tree, persist: bool) -> Core {
        Core {
            tree,
            quotas: Quotas::default(),
            domains: Domains::default(),
            journal: Encoder::new(persist),
            watches: Watches::default(),
            conns: Vec::new(),
            free: Vec::new(),
            dirty: Vec::new(),
            dirty_flag: Vec::new(),
            actions: Vec::new(),
            introduce_check: None,
            canon: String::new(),
            ids: Vec::new(),
            requests: 0,
            trace_requests: false,
            drop_log: RateLimit::new(10, std::time::Duration::from_secs(5)),
            overflowed: Vec::new(),
            restored: BTreeMap::new(),
        }
    }

    /// Journals `rec(domid)` if `id` is a domain's ring connection: its
    /// watches and transactions are kept across a restart (sockets'
    /// clients reconnect and set theirs again).
    pub(crate) fn journal_ring(&mut self, id: ConnId, rec: impl FnOnce(DomId) -> Record) {
        if let Some(c) = self.conns.get(id).and_then(Option::as_ref) {
            // A ring whose restored state is not given back yet (closed
            // before it was) changes nothing of that state.
            if c.kind == ConnKind::Domain && !self.restored.contains_key(&c.caller.domid) {
                let r = rec(c.caller.domid);
                self.journal.record(&r);
            }
        }
    }

    /// The records of every domain ring connection's watches and open
    /// transactions, and of those restored but not yet given back (for a
    /// snapshot).
    #[must_use]
    pub fn conn_records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for d in self.domains.iter() {
            let Some(c) = d.conn.and_then(|id| self.conn(id)) else {
                continue;
            };
            let mut st = ConnState {
                watches: c
                    .watches
                    .iter()
                    .filter_map(|&w| self.watches.get(w))
                    .map(|w| WatchState {
                        path: w.path.clone(),
                        token: w.token.clone(),
                        relative: w.prefix_len > 0,
                        depth: w.depth,
                    })
                    .collect(),
                txs: c.txs.keys().copied().collect(),
            };
            st.txs.sort_unstable();
            out.extend(st.records(d.domid));
        }
        for (&domid, st) in &self.restored {
            if self.domains.get(domid).is_some_and(|d| d.conn.is_none()) {
                out.extend(st.records(domid));
            }
        }
        out
    }

    /// Gives domain `domid`'s ring connection `id` (just mapped again after
    /// a restart) the watches and transactions it had: each watch fires
    /// once, as Xen fires a watch when it is set, so the guest re-reads
    /// what it watches; each transaction fails with `EAGAIN` at commit
    /// (what it read and wrote is lost), as Xen's after a live update.
    pub fn restore_conn(&mut self, domid: DomId, id: ConnId) {
        let Some(st) = self.restored.remove(&domid) else {
            return;
        };
        let Some(c) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let prefix = c.home.len() + 1;
        let (nw, nt) = (st.watches.len(), st.txs.len());
        for w in st.watches {
            if self.watches.find(id, &w.path, &w.token).is_some() {
                continue;
            }
            let w = Watch {
                conn: id,
                path: w.path,
                token: w.token,
                prefix_len: if w.relative { prefix } else { 0 },
                depth: w.depth,
            };
            let ev_path = w.event_path(&w.path).to_owned();
            let token = w.token.clone();
            let wid = self.watches.add(w);
            c.watches.push(wid);
            if !Self::queue_event(c, &self.quotas, &ev_path, &token)
                && !self.overflowed.contains(&id)
            {
                self.overflowed.push(id);
            }
        }
        for tx_id in st.txs {
            let mut tx = Transaction::new(tx_id);
            tx.lost = true;
            c.txs.insert(tx_id, tx);
            c.next_tx = c.next_tx.max(tx_id.wrapping_add(1));
        }
        self.mark_dirty(id);
        tracing::info!(
            domid,
            conn = id,
            watches = nw,
            transactions = nt,
            "domain's watches and transactions restored"
        );
    }

    /// Adds a connection.
    pub fn new_conn(&mut self, caller: Caller, kind: ConnKind) -> ConnId {
        let c = Conn::new(caller, kind);
        if let Some(id) = self.free.pop() {
            self.conns[id] = Some(c);
            self.dirty_flag[id] = false;
            id
        } else {
            self.conns.push(Some(c));
            self.dirty_flag.push(false);
            self.conns.len() - 1
        }
    }

    /// Removes a connection with its watches and transactions.
    pub fn close_conn(&mut self, id: ConnId) {
        self.journal_ring(id, |domid| Record::ConnReset { domid });
        let Some(c) = self.conns.get_mut(id).and_then(Option::take) else {
            return;
        };
        for w in c.watches {
            self.watches.remove(w);
        }
        let owner = self
            .domains
            .iter()
            .find(|d| d.conn == Some(id))
            .map(|d| d.domid);
        if let Some(d) = owner.and_then(|d| self.domains.get_mut(d)) {
            d.conn = None;
        }
        self.free.push(id);
    }

    /// Discards a connection's watches, transactions and queued output
    /// (ring reconnection), keeping the connection.
    pub fn reset_conn(&mut self, id: ConnId) {
        self.journal_ring(id, |domid| Record::ConnReset { domid });
        let Some(c) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        for w in c.watches.drain(..) {
            self.watches.remove(w);
        }
        c.txs.clear();
        c.out.clear();
        c.overflowed = false;
    }

    /// The connection `id`.
    #[must_use]
    pub fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id).and_then(Option::as_ref)
    }

    /// The connection `id`, mutably (to drain its output).
    pub fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id).and_then(Option::as_mut)
    }

    /// Number of open connections.
    #[must_use]
    pub fn conn_count(&self) -> usize {
        self.conns.iter().filter(|c| c.is_some()).count()
    }

    /// Number of watches.
    #[must_use]
    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    /// Whether the daemon should read more requests from `id` now: an
    /// unprivileged connection waits while it has `outstanding` replies or
    /// events unread.
    #[must_use]
    pub fn can_read(&self, id: ConnId) -> bool {
        match self.conn(id) {
            None => false,
            Some(c) if c.out.pending().len() > MAX_PENDING_OUTPUT => false,
            Some(c) if c.caller.privileged => true,
            Some(c) => {
                c.out.packets() < self.quotas.get(c.caller.domid, quota::OUTSTANDING) as usize
            }
        }
    }

    /// Connections with new output since the last call.
    pub fn take_dirty(&mut self, out: &mut Vec<ConnId>) {
        for &id in &self.dirty {
            if let Some(f) = self.dirty_flag.get_mut(id) {
                *f = false;
            }
        }
        out.append(&mut self.dirty);
    }

    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(f) = self.dirty_flag.get_mut(id) {
            if !*f {
                *f = true;
                self.dirty.push(id);
            }
        }
    }

    fn canonical(&mut self, id: ConnId, p: &str, allow_special: bool) -> Result<(), XsError> {
        let c = self.conns[id].as_ref().ok_or(XsError::Eio)?;
        path::canonicalize(&c.home, p, &mut self.canon);
        let rel_max = if c.caller.privileged {
            xenstore_wire::XENSTORE_REL_PATH_MAX
        } else {
            self.quotas.get(c.caller.domid, quota::PATH_LENGTH) as usize
        };
        path::validate_with_limit(&self.canon, allow_special, rel_max)
            .map(|_| ())
            .map_err(|_| XsError::Einval)
    }

    /// Handles one request packet from connection `id`; the reply (and any
    /// watch events) are queued on the connections concerned.
    pub fn handle(&mut self, id: ConnId, hdr: &Header, payload: &[u8]) {
        if self.conn(id).is_none() {
            return;
        }
        self.requests += 1;
        if let Err(e) = self.dispatch(id, hdr, payload) {
            if let Some(c) = self.conns[id].as_mut() {
                reply_error(&mut c.out, hdr, e);
            }
        }
        self.mark_dirty(id);
    }

    /// Xen's `process_message`: the payload quota, the row of [`table::OPS`] for
    /// the type (`ENOSYS` without one), parsing, the row's checks, then
    /// its handler.
    fn dispatch(&mut self, id: ConnId, hdr: &Header, payload: &[u8]) -> Result<(), XsError> {
        let c = self.conns[id].as_ref().ok_or(XsError::Eio)?;
        let caller = c.caller.clone();
        if !caller.privileged
            && payload.len() > self.quotas.get(caller.domid, quota::PAYLOAD) as usize
        {
            return Err(XsError::E2big);
        }
        let (op, handler) = table::lookup(hdr.ty).ok_or(XsError::Enosys)?;
        let req = Request::parse(hdr, payload).map_err(|e| e.xs_error())?;
        if self.trace_requests {
            tracing::info!(
                conn = id,
                domid = caller.domid,
                tx = hdr.tx_id,
                path = req.path().unwrap_or(""),
                value = %match &req {
                    Request::Write { value, .. } if value.len() <= 32 => {
                        String::from_utf8_lossy(value)
                    }
                    _ => "".into(),
                },
                "request {}",
                op.name
            );
        }
        if op.has(table::PRIV) && !caller.privileged {
            return Err(XsError::Eacces);
        }
        if op.has(table::MUTATES) && matches!(c.kind, ConnKind::Socket { read_only: true }) {
            return Err(XsError::Erofs);
        }
        let tx_id = op.tx_id(hdr.tx_id)?;
        if tx_id != 0 && !c.txs.contains_key(&tx_id) {
            return Err(XsError::Enoent);
        }
        if op.has(table::PATH) {
            let p = req.path().ok_or(XsError::Einval)?;
            self.canonical(id, p, op.has(table::SPECIAL))?;
        }
        let cx = table::Ctx {
            id,
            hdr,
            tx_id,
            caller,
        };
        handler(self, &cx, req)
    }

    fn ack(&mut self, id: ConnId, hdr: &Header, ty: MsgType) -> Result<(), XsError> {
        let c = self.conns[id].as_mut().ok_or(XsError::Eio)?;
        reply(&mut c.out, hdr, ty, &[xenstore_wire::OK]);
        Ok(())
    }

    /// Runs a node operation on the tree or in transaction `tx_id`; the
    /// operation returns its watch events (fired now, or at commit).
    fn node_op<F>(&mut self, id: ConnId, tx_id: u32, f: F) -> Result<(), XsError>
    where
        F: FnOnce(
            &mut View<'_>,
            &Caller,
            &Quotas,
            &str,
            &mut OutQueue,
        ) -> Result<Option<Vec<Event>>, XsError>,
    {
        let Core {
            tree,
            conns,
            journal,
            quotas,
            canon,
            ..
        } = self;
        let c = conns[id].as_mut().ok_or(XsError::Eio)?;
        let caller = c.caller.clone();
        if tx_id == 0 {
            let mut v = View::Base(Journaled {
                tree,
                sink: journal,
            });
            let ev = f(&mut v, &caller, quotas, canon, &mut c.out)?;
            if let Some(ev) = ev {
                self.fire(ev);
            }
            return Ok(());
        }
        let tx = c.txs.get_mut(&tx_id).ok_or(XsError::Enoent)?;
        if tx.failed {
            return Err(XsError::Eio);
        }
        let max_nodes = quotas.get(caller.domid, quota::TRANSACTION_NODES) as usize;
        let r = {
            let mut v = View::Tx(tx.view(tree));
            f(&mut v, &caller, quotas, canon, &mut c.out)
        };
        let r = r.map(|ev| {
            if let Some(ev) = ev {
                tx.add_events(ev);
            }
        });
        let max_bytes = if caller.privileged {
            MAX_TRANSACTION_BYTES_PRIVILEGED
        } else {
            MAX_TRANSACTION_BYTES
        };
        if tx.bytes() > max_bytes || (!caller.privileged && tx.touched() > max_nodes) {
            tx.failed = true;
            if r.is_ok() {
                // The reply already queued becomes the error.
                c.out.pop_last();
            }
            return Err(XsError::Enospc);
        }
        r
    }

    /// Queues a watch event on `c` unless its output would outgrow the
    /// connection's bound (bytes, and for guests the `watch-events` count):
    /// then the connection is marked overflowed and gets no event any more.
    /// Returns whether the event was queued.
    fn queue_event(c: &mut Conn, quotas: &Quotas, p: &str, token: &[u8]) -> bool {
        if c.overflowed {
            return false;
        }
        let (max_bytes, max_events) = if c.caller.privileged {
            (MAX_QUEUED_BYTES_PRIVILEGED, usize::MAX)
        } else {
            (
                MAX_QUEUED_BYTES,
                quotas.get(c.caller.domid, quota::WATCH_EVENTS) as usize,
            )
        };
        let len = Header::SIZE + p.len() + token.len() + 2;
        if c.out.pending().len() + len > max_bytes || c.out.events() >= max_events {
            c.overflowed = true;
            return false;
        }
        if PacketWriter::watch_event(&mut c.out.buf, p.as_bytes(), token).is_ok() {
            c.out.mark(true);
        }
        true
    }

    /// Connections whose output queue outgrew its bound since the last
    /// call: the server ends them (a socket is closed; a ring is failed
    /// with `XENSTORE_ERROR_COMM` and ignored until the guest reconnects,
    /// Xen's `ignore_connection`).
    pub fn take_overflowed(&mut self, out: &mut Vec<ConnId>) {
        out.append(&mut self.overflowed);
    }

    fn permitted(&self, caller: &Caller, ev: &Event) -> bool {
        if caller.privileged {
            return true;
        }
        let can = |p: &PermList| caller.access(p) & xenstore_wire::PERM_READ != 0;
        if ev.old_perms.as_ref().is_some_and(can) || can(&ev.perms) {
            return true;
        }
        if let Some(pp) = &ev.parent_perms {
            return can(pp);
        }
        let parent = path::parent(&ev.path).unwrap_or("/");
        self.tree.get(parent).is_some_and(|n| can(&n.perms))
    }

    /// Fires the watches matching `events`.
    pub fn fire(&mut self, events: Vec<Event>) {
        if self.watches.is_empty() {
            return;
        }
        let mut ids = std::mem::take(&mut self.ids);
        for ev in &events {
            ids.clear();
            self.watches.matching(&ev.path, ev.exact, &mut ids);
            for &wid in &ids {
                let Some(w) = self.watches.get(wid) else {
                    continue;
                };
                let cid = w.conn;
                let Some(c) = self.conns.get(cid).and_then(Option::as_ref) else {
                    continue;
                };
                if !self.permitted(&c.caller, ev) {
                    continue;
                }
                let ep = w.event_path(&ev.path).to_owned();
                let token = w.token.clone();
                let Some(c) = self.conns.get_mut(cid).and_then(Option::as_mut) else {
                    continue;
                };
                if c.overflowed {
                    continue;
                }
                if !Self::queue_event(c, &self.quotas, &ep, &token) {
                    let (domid, queued) = (c.caller.domid, c.out.pending().len());
                    if self.drop_log.allow() {
                        tracing::warn!(
                            conn = cid,
                            domid,
                            queued,
                            "watch event queue full: ending the connection"
                        );
                    }
                    self.overflowed.push(cid);
                    continue;
                }
                self.mark_dirty(cid);
            }
        }
        self.ids = ids;
    }

    pub(crate) fn special_event(&mut self, name: &str) {
        let perms = self
            .tree
            .get(name)
            .map(|n| n.perms.clone())
            .unwrap_or_else(|| PermList::owner(0, 0));
        self.fire(vec![Event {
            path: name.to_owned(),
            exact: false,
            perms,
            old_perms: None,
            parent_perms: None,
        }]);
    }

    /// `XS_INTRODUCE`.
    pub fn introduce(&mut self, domid: DomId, mfn: u64, port: u32) -> Result<(), XsError> {
        if domid >= xen_abi::xen::DOMID_FIRST_RESERVED {
            return Err(XsError::Einval);
        }
        if let Some(c) = self.introduce_check.as_mut() {
            c.check(domid, mfn, port)?;
        }
        let existed = self.domains.get(domid).is_some();
        let prev_conn = self.domains.get(domid).and_then(|d| d.conn);
        let d = Domain {
            domid,
            mfn,
            port,
            target: self.domains.get(domid).and_then(|d| d.target),
            features: self
                .domains
                .get(domid)
                .map_or(SERVER_FEATURES, |d| d.features),
            conn: prev_conn,
            shutdown: false,
        };
        self.journal.domain(&d);
        self.domains.insert(d);
        self.actions
            .push(DomainAction::Introduced { domid, mfn, port });
        if !existed {
            self.special_event(path::INTRODUCE_DOMAIN);
        }
        Ok(())
    }

    /// `XS_RELEASE`.
    pub fn release(&mut self, domid: DomId) -> Result<(), XsError> {
        let d = self.domains.remove(domid).ok_or(XsError::Enoent)?;
        if let Some(cid) = d.conn {
            self.close_conn(cid);
        }
        self.journal.record(&Record::Release { domid });
        self.actions.push(DomainAction::Released {
            domid,
            conn: d.conn,
        });
        self.special_event(path::RELEASE_DOMAIN);
        Ok(())
    }

    /// Attaches ring connection `conn` to introduced domain `domid`.
    pub fn attach_domain_conn(&mut self, domid: DomId, conn: ConnId) {
        let target = self.domains.get(domid).and_then(|d| d.target);
        if let Some(d) = self.domains.get_mut(domid) {
            d.conn = Some(conn);
        }
        if let Some(c) = self.conn_mut(conn) {
            c.caller.target = target;
        }
    }

    /// A report for `XS_CONTROL`: tree, connections, watches.
    #[must_use]
    pub fn stats(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "nodes: {}\nconnections: {}\nwatches: {}\ndomains: {}\nrequests: {}\ngeneration: {}",
            self.tree.len(),
            self.conn_count(),
            self.watches.len(),
            self.domains.len(),
            self.requests,
            self.tree.generation()
        );
        s
    }

    /// The per-domain usage report of `xenstore-control quota <domid>`.
    #[must_use]
    pub fn domain_quota_report(&self, domid: DomId) -> String {
        let mut s = format!("Domain {domid}:\n");
        let conns: Vec<&Conn> = self
            .conns
            .iter()
            .flatten()
            .filter(|c| c.caller.domid == domid)
            .collect();
        let watches: usize = conns.iter().map(|c| c.watches.len()).sum();
        let txs: usize = conns.iter().map(|c| c.txs.len()).sum();
        let outstanding: usize = conns.iter().map(|c| c.out.packets()).sum();
        let used = [
            (quota::NODES, self.tree.owner_count(domid)),
            (quota::MEMORY, self.tree.usage(domid).bytes),
            (quota::WATCHES, watches as u64),
            (quota::TRANSACTIONS, txs as u64),
            (quota::OUTSTANDING, outstanding as u64),
        ];
        for (q, v) in used {
            let _ = writeln!(
                s,
                "{:<17}: {:>8} (max {:>8})",
                quota::NAMES[q],
                v,
                self.quotas.get(domid, q)
            );
        }
        s
    }

    /// Checks the payload limit for bytes a client wants to send (for the
    /// fuzz harness and tests).
    #[must_use]
    pub fn max_payload() -> usize {
        XENSTORE_PAYLOAD_MAX
    }
}
