//! Transactions: a copy-on-write overlay over the tree that records the
//! generation of every node it read or wrote.
//!
//! At commit, the transaction fails with `EAGAIN` if and only if one of
//! those nodes changed (or appeared, or vanished) since it was first
//! touched; unrelated commits never make it fail. Watch events of the
//! transaction are queued and fire at commit.

use std::collections::HashMap;

use xenstore_wire::{path, DomId, XsError};

use crate::ops::Event;
use crate::store::{node_memory, ChangeSink, Node, Nodes, Tree};

/// One open transaction.
#[derive(Debug)]
pub struct Transaction {
    /// The id the client uses in `tx_id`.
    pub id: u32,
    /// Nodes changed by the transaction: `None` means removed.
    changes: HashMap<String, Option<Node>>,
    /// Generation of each node at first access (`None`: it did not exist).
    accessed: HashMap<String, Option<u64>>,
    /// Copies of nodes read (not changed) by the transaction, as they were
    /// at first access: later reads see the same value (`None`: absent).
    reads: HashMap<String, Option<Node>>,
    /// Owner count and memory changes made by the transaction: (nodes,
    /// bytes).
    owner_delta: HashMap<DomId, (i64, i64)>,
    /// Watch events to fire at commit, one per changed path.
    events: Vec<Event>,
    /// Index in `events` of each path's event.
    event_at: HashMap<String, usize>,
    /// Bytes held: node copies, paths, events (an estimate of the heap
    /// the transaction uses).
    bytes: usize,
    /// Set when an operation failed half-way: the commit then fails.
    pub failed: bool,
    /// Opened before the daemon restarted (restored by id only): what it
    /// read and wrote is lost, so its commit fails with `EAGAIN` and the
    /// client retries it, as Xen's after a live update.
    pub lost: bool,
}

impl Transaction {
    /// A fresh transaction.
    #[must_use]
    pub fn new(id: u32) -> Transaction {
        Transaction {
            id,
            changes: HashMap::new(),
            accessed: HashMap::new(),
            reads: HashMap::new(),
            owner_delta: HashMap::new(),
            events: Vec::new(),
            event_at: HashMap::new(),
            bytes: 0,
            failed: false,
            lost: false,
        }
    }

    /// How many nodes the transaction touched (the `transaction-nodes`
    /// quota).
    #[must_use]
    pub fn touched(&self) -> usize {
        self.accessed.len()
    }

    /// Bytes the transaction holds (node copies, paths, pending events).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Watch events pending for commit (one per changed path).
    #[must_use]
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// Adds watch events to fire at commit, coalesced per path as Xen's
    /// `add_change_node`: a path already pending keeps its place; the
    /// merged event reaches every watch either would have reached.
    pub fn add_events(&mut self, evs: impl IntoIterator<Item = Event>) {
        for ev in evs {
            if let Some(&i) = self.event_at.get(&ev.path) {
                let old = &mut self.events[i];
                old.exact &= ev.exact;
                old.perms = ev.perms;
                if ev.old_perms.is_some() {
                    old.old_perms = ev.old_perms;
                }
                if ev.parent_perms.is_some() {
                    old.parent_perms = ev.parent_perms;
                }
                continue;
            }
            self.bytes += 2 * ev.path.len() + EVENT_OVERHEAD;
            self.event_at.insert(ev.path.clone(), self.events.len());
            self.events.push(ev);
        }
    }

    /// The view of `base` through this transaction.
    pub fn view<'a>(&'a mut self, base: &'a Tree) -> TxView<'a> {
        TxView { base, tx: self }
    }

    /// Whether committing now would conflict.
    #[must_use]
    pub fn conflicts(&self, base: &Tree) -> bool {
        self.accessed.iter().any(|(p, g)| base.gen_of(p) != *g)
    }

    /// Commits into `base`, reporting every change to `sink`; returns the
    /// queued watch events, or `EAGAIN` on a conflict.
    pub fn commit(
        self,
        base: &mut Tree,
        sink: &mut impl ChangeSink,
    ) -> Result<Vec<Event>, XsError> {
        if self.failed {
            return Err(XsError::Eio);
        }
        if self.lost || self.conflicts(base) {
            return Err(XsError::Eagain);
        }
        let mut removes: Vec<&String> = Vec::new();
        let mut upserts: Vec<(&String, &Node)> = Vec::new();
        for (p, c) in &self.changes {
            match c {
                None => removes.push(p),
                Some(n) => upserts.push((p, n)),
            }
        }
        // Deepest first for removals, shallowest first for creations, so the
        // journal always has parents before children.
        removes.sort_by_key(|p| std::cmp::Reverse(path::depth(p)));
        upserts.sort_by_key(|(p, _)| path::depth(p));
        for p in removes {
            if Nodes::remove(base, p).is_some() {
                sink.remove(p);
            }
        }
        for (p, n) in upserts {
            let mut n = n.clone();
            if base.get(p).is_some() {
                base.modify(p, |old| {
                    old.value = std::mem::take(&mut n.value);
                    old.perms = n.perms.clone();
                    old.children = std::mem::take(&mut n.children);
                });
            } else {
                Nodes::insert(base, p, n);
            }
            if let Some(now) = base.get(p) {
                sink.upsert(p, now);
            }
        }
        Ok(self.events)
    }
}

/// Heap bytes counted per pending event beyond its path (the event, its
/// index entry and permission lists).
const EVENT_OVERHEAD: usize = 128;
/// Heap bytes counted per map entry beyond its path and node.
const ENTRY_OVERHEAD: usize = 64;

/// Bytes `n` holds on the heap (an estimate: value, children list,
/// permissions and the node itself). Constant time: the children's names
/// are not summed (each child the transaction created or changed is
/// counted with its own path, which holds its name).
fn node_bytes(n: &Node) -> usize {
    std::mem::size_of::<Node>()
        + n.value.capacity()
        + n.children.capacity() * std::mem::size_of::<Box<str>>()
        + n.perms.0.capacity() * std::mem::size_of::<xenstore_wire::Perm>()
}

fn opt_bytes(n: Option<&Node>) -> usize {
    n.map_or(0, node_bytes)
}

/// A transaction's view of the tree.
#[derive(Debug)]
pub struct TxView<'a> {
    base: &'a Tree,
    tx: &'a mut Transaction,
}

impl TxView<'_> {
    fn record(&mut self, p: &str) {
        if !self.tx.accessed.contains_key(p) {
            self.tx.accessed.insert(p.to_owned(), self.base.gen_of(p));
            let copy = self.base.get(p).cloned();
            self.tx.bytes += 2 * (p.len() + ENTRY_OVERHEAD) + opt_bytes(copy.as_ref());
            self.tx.reads.insert(p.to_owned(), copy);
        }
    }

    /// The node as the transaction first saw it.
    fn seen(&mut self, p: &str) -> Option<&Node> {
        self.record(p);
        self.tx.reads.get(p).and_then(Option::as_ref)
    }

    fn delta(&mut self, owner: DomId, nodes: i64, bytes: i64) {
        let e = self.tx.owner_delta.entry(owner).or_insert((0, 0));
        e.0 += nodes;
        e.1 += bytes;
    }
}

impl Nodes for TxView<'_> {
    fn node(&mut self, p: &str) -> Option<&Node> {
        if self.tx.changes.contains_key(p) {
            return self.tx.changes.get(p).and_then(Option::as_ref);
        }
        self.seen(p)
    }

    fn modify<R>(&mut self, p: &str, f: impl FnOnce(&mut Node) -> R) -> Option<R> {
        if !self.tx.changes.contains_key(p) {
            let copy = self.seen(p)?.clone();
            self.tx.reads.remove(p);
            self.tx.bytes += p.len() + ENTRY_OVERHEAD + node_bytes(&copy);
            self.tx.changes.insert(p.to_owned(), Some(copy));
        }
        let n = self.tx.changes.get_mut(p)?.as_mut()?;
        let (before, mem_before) = (n.owner(), node_memory(p, n));
        let size_before = node_bytes(n);
        let r = f(n);
        let size_after = node_bytes(n);
        self.tx.bytes = (self.tx.bytes + size_after).saturating_sub(size_before);
        let (after, mem_after) = (n.owner(), node_memory(p, n));
        if before == after {
            self.delta(before, 0, mem_after as i64 - mem_before as i64);
        } else {
            self.delta(before, -1, -(mem_before as i64));
            self.delta(after, 1, mem_after as i64);
        }
        Some(r)
    }

    fn insert(&mut self, p: &str, node: Node) {
        self.record(p);
        self.tx.reads.remove(p);
        self.delta(node.owner(), 1, node_memory(p, &node) as i64);
        self.tx.bytes += node_bytes(&node);
        match self.tx.changes.insert(p.to_owned(), Some(node)) {
            Some(Some(old)) => {
                self.tx.bytes = self.tx.bytes.saturating_sub(node_bytes(&old));
                self.delta(old.owner(), -1, -(node_memory(p, &old) as i64));
            }
            Some(None) => {}
            None => self.tx.bytes += p.len() + ENTRY_OVERHEAD,
        }
    }

    fn remove(&mut self, p: &str) -> Option<Node> {
        let old = if self.tx.changes.contains_key(p) {
            let old = self.tx.changes.insert(p.to_owned(), None).flatten();
            self.tx.bytes = self.tx.bytes.saturating_sub(opt_bytes(old.as_ref()));
            old
        } else {
            let old = self.seen(p).cloned();
            self.tx.reads.remove(p);
            if old.is_some() {
                self.tx.bytes += p.len() + ENTRY_OVERHEAD;
                self.tx.changes.insert(p.to_owned(), None);
            }
            old
        };
        if let Some(o) = &old {
            self.delta(o.owner(), -1, -(node_memory(p, o) as i64));
        }
        old
    }

    fn owned_by(&self, domid: DomId) -> u64 {
        let d = self.tx.owner_delta.get(&domid).map_or(0, |d| d.0);
        self.base.owner_count(domid).saturating_add_signed(d)
    }

    fn memory_of(&self, domid: DomId) -> u64 {
        let d = self.tx.owner_delta.get(&domid).map_or(0, |d| d.1);
        self.base.usage(domid).bytes.saturating_add_signed(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NoSink;
    use xenstore_wire::{PermList, PERM_NONE};

    fn tree_with(p: &str, v: &[u8]) -> Tree {
        let mut t = Tree::new();
        t.upsert(p, v.to_vec(), PermList::owner(0, PERM_NONE));
        t
    }

    #[test]
    fn test_tx_write_invisible_until_commit() {
        let mut t = tree_with("/a", b"1");
        let mut tx = Transaction::new(1);
        tx.view(&t).modify("/a", |n| n.value = b"2".to_vec());
        assert_eq!(t.get("/a").unwrap().value, b"1");
        tx.commit(&mut t, &mut NoSink).unwrap();
        assert_eq!(t.get("/a").unwrap().value, b"2");
    }

    #[test]
    fn test_tx_unrelated_commit_no_conflict() {
        let mut t = tree_with("/a", b"1");
        t.upsert("/b", b"1".to_vec(), PermList::owner(0, PERM_NONE));
        let mut tx = Transaction::new(1);
        tx.view(&t).modify("/a", |n| n.value = b"2".to_vec());
        t.modify("/b", |n| n.value = b"3".to_vec());
        assert!(tx.commit(&mut t, &mut NoSink).is_ok());
    }

    #[test]
    fn test_tx_read_node_changed_conflicts() {
        let mut t = tree_with("/a", b"1");
        let mut tx = Transaction::new(1);
        assert!(tx.view(&t).node("/a").is_some());
        t.modify("/a", |n| n.value = b"3".to_vec());
        assert_eq!(tx.commit(&mut t, &mut NoSink).unwrap_err(), XsError::Eagain);
    }

    #[test]
    fn test_tx_reads_keep_first_seen_value() {
        let mut t = tree_with("/a", b"1");
        let mut tx = Transaction::new(1);
        assert_eq!(tx.view(&t).node("/a").unwrap().value, b"1");
        t.modify("/a", |n| n.value = b"2".to_vec());
        assert_eq!(tx.view(&t).node("/a").unwrap().value, b"1");
    }

    fn ev(p: &str, exact: bool) -> Event {
        Event {
            path: p.into(),
            exact,
            perms: PermList::owner(0, PERM_NONE),
            old_perms: None,
            parent_perms: None,
        }
    }

    #[test]
    fn test_tx_events_coalesced_per_path_in_first_order() {
        let mut tx = Transaction::new(1);
        for _ in 0..1000 {
            tx.add_events([ev("/w/a", true)]);
        }
        tx.add_events([ev("/w/b", true), ev("/w/a", false)]);
        let bytes = tx.bytes();
        tx.add_events([ev("/w/a", true)]);
        assert_eq!(tx.bytes(), bytes, "a repeated path costs nothing more");
        let mut t = Tree::new();
        let evs = tx.commit(&mut t, &mut NoSink).unwrap();
        let paths: Vec<(&str, bool)> = evs.iter().map(|e| (e.path.as_str(), e.exact)).collect();
        assert_eq!(paths, vec![("/w/a", false), ("/w/b", true)]);
    }

    #[test]
    fn test_tx_bytes_grow_with_distinct_nodes_not_rewrites() {
        let mut t = tree_with("/a", b"1");
        let mut tx = Transaction::new(1);
        tx.view(&t).modify("/a", |n| n.value = b"2".to_vec());
        let one = tx.bytes();
        assert!(one > 0);
        for _ in 0..100 {
            tx.view(&t).modify("/a", |n| n.value = b"3".to_vec());
        }
        assert_eq!(tx.bytes(), one);
        tx.view(&t).modify("/a", |n| n.value = vec![0; 4000]);
        assert!(tx.bytes() >= one + 3990);
        for i in 0..10 {
            tx.view(&t)
                .insert(&format!("/n{i}"), Node::new(PermList::owner(0, PERM_NONE)));
        }
        assert!(tx.bytes() > one + 4000 + 10 * 64);
        tx.commit(&mut t, &mut NoSink).unwrap();
    }

    #[test]
    fn test_tx_absent_node_created_meanwhile_conflicts() {
        let mut t = Tree::new();
        let mut tx = Transaction::new(1);
        assert!(tx.view(&t).node("/new").is_none());
        t.upsert("/new", vec![], PermList::owner(0, PERM_NONE));
        assert_eq!(tx.commit(&mut t, &mut NoSink).unwrap_err(), XsError::Eagain);
    }
}
