//! The node tree: an in-memory map from absolute path to node, each node
//! with its value, permissions, children names and generation count.
//!
//! Every change to a node gives it a new generation, taken from one global
//! counter; transactions ([`crate::txn`]) compare generations at commit, so
//! only a change to a node the transaction touched causes `EAGAIN`. The
//! special nodes `@introduceDomain` and `@releaseDomain` live in the same
//! map (outside `/`), as in Xen 4.17, so that their permissions can be set.

use std::collections::HashMap;

use xenstore_wire::{path, DomId, Perm, PermList, PERM_NONE};

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The value (binary).
    pub value: Vec<u8>,
    /// The permissions, owner first.
    pub perms: PermList,
    /// The children's names, in creation order.
    pub children: Vec<Box<str>>,
    /// The generation of the last change.
    pub gen: u64,
}

impl Node {
    /// A node with no value and no children.
    #[must_use]
    pub fn new(perms: PermList) -> Node {
        Node {
            value: Vec::new(),
            perms,
            children: Vec::new(),
            gen: 0,
        }
    }

    /// The owner's domain.
    #[must_use]
    pub fn owner(&self) -> DomId {
        self.perms.owner_id()
    }

    /// The byte length of the children list in Xen's form (each name
    /// followed by a NUL).
    #[must_use]
    pub fn children_len(&self) -> usize {
        self.children.iter().map(|c| c.len() + 1).sum()
    }

    /// The size Xen's `node-size` quota counts: value, children list and
    /// permissions.
    #[must_use]
    pub fn acc_size(&self) -> usize {
        self.value.len() + self.children_len() + self.perms.0.len() * 8
    }
}

/// Bytes a node's header is counted as in its owner's `memory` quota (Xen's
/// `struct xs_tdb_record_hdr`: generation, permission count, value and
/// children lengths).
pub const NODE_HEADER_BYTES: u64 = 24;

/// Bytes one permission is counted as (Xen's `struct xs_permissions`).
pub const PERM_BYTES: u64 = 8;

/// The bytes node `n` at path `p` charges to its owner's `memory` quota
/// (Xen 4.17's `domain_memory_add`): its name (path), value and
/// permissions, plus the header. The children list is the parent's
/// bookkeeping and is not charged, so a node's charge does not change when
/// children come and go.
#[must_use]
pub fn node_memory(p: &str, n: &Node) -> u64 {
    NODE_HEADER_BYTES + p.len() as u64 + n.value.len() as u64 + n.perms.0.len() as u64 * PERM_BYTES
}

/// What a domain's nodes cost: how many it owns and their bytes
/// ([`node_memory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Nodes owned.
    pub nodes: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Receives every change made to the tree (the persistence journal).
pub trait ChangeSink {
    /// `path` was created or changed; `node` is its new state.
    fn upsert(&mut self, path: &str, node: &Node);
    /// `path` (and, if any were left, its subtree) was removed.
    fn remove(&mut self, path: &str);
}

/// Access to nodes, either the tree itself or a transaction's view of it.
///
/// Operations in [`crate::ops`] are written once against this trait.
pub trait Nodes {
    /// The node at `path` (recorded as read in a transaction).
    fn node(&mut self, path: &str) -> Option<&Node>;
    /// Changes the node at `path` in place (a new generation); `None` if
    /// it does not exist.
    fn modify<R>(&mut self, path: &str, f: impl FnOnce(&mut Node) -> R) -> Option<R>;
    /// Creates `path` (its parent's children list is the caller's job).
    fn insert(&mut self, path: &str, node: Node);
    /// Removes the single node `path` (not its children).
    fn remove(&mut self, path: &str) -> Option<Node>;
    /// How many nodes `domid` owns in this view.
    fn owned_by(&self, domid: DomId) -> u64;
    /// The bytes of the nodes `domid` owns in this view ([`node_memory`]).
    fn memory_of(&self, domid: DomId) -> u64;
}

/// The tree.
#[derive(Debug)]
pub struct Tree {
    nodes: HashMap<String, Node>,
    next_gen: u64,
    owners: HashMap<DomId, Usage>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// A fresh tree like Xen's `setup_structure`: `/`, `/tool`,
    /// `/tool/xenstored` and the two special nodes, owned by Dom0 with no
    /// access for others.
    #[must_use]
    pub fn new() -> Tree {
        let mut t = Tree::empty();
        let p = || PermList(vec![Perm::new(0, PERM_NONE)]);
        t.insert_raw("/", Node::new(p()));
        t.insert_raw("/tool", Node::new(p()));
        t.insert_raw("/tool/xenstored", Node::new(p()));
        t.nodes
            .get_mut("/")
            .expect("just inserted")
            .children
            .push("tool".into());
        t.nodes
            .get_mut("/tool")
            .expect("just inserted")
            .children
            .push("xenstored".into());
        t.insert_raw(path::INTRODUCE_DOMAIN, Node::new(p()));
        t.insert_raw(path::RELEASE_DOMAIN, Node::new(p()));
        t
    }

    /// A tree with no node at all (for loading a snapshot).
    #[must_use]
    pub fn empty() -> Tree {
        Tree {
            nodes: HashMap::new(),
            next_gen: 1,
            owners: HashMap::new(),
        }
    }

    fn bump(&mut self) -> u64 {
        let g = self.next_gen;
        self.next_gen += 1;
        g
    }

    fn count(&mut self, owner: DomId, nodes: i64, bytes: i64) {
        count_in(&mut self.owners, owner, nodes, bytes);
    }

    fn insert_raw(&mut self, p: &str, mut node: Node) {
        node.gen = self.bump();
        self.count(node.owner(), 1, node_memory(p, &node) as i64);
        if let Some(old) = self.nodes.insert(p.to_owned(), node) {
            self.count(old.owner(), -1, -(node_memory(p, &old) as i64));
        }
    }

    /// The node at `path`.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// The generation of `path`, `None` if it does not exist.
    #[must_use]
    pub fn gen_of(&self, path: &str) -> Option<u64> {
        self.nodes.get(path).map(|n| n.gen)
    }

    /// The number of nodes (including the special ones).
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has no node (only before loading).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The next generation number (for `XS_CONTROL` reports).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.next_gen
    }

    /// How many nodes `domid` owns.
    #[must_use]
    pub fn owner_count(&self, domid: DomId) -> u64 {
        self.usage(domid).nodes
    }

    /// The nodes `domid` owns and their bytes.
    #[must_use]
    pub fn usage(&self, domid: DomId) -> Usage {
        self.owners.get(&domid).copied().unwrap_or_default()
    }

    /// Replaces or creates `path` with `node`'s value and permissions,
    /// keeping existing children and linking it into its parent (creating
    /// missing parents with `node`'s permissions). Used by journal replay
    /// and transaction commit.
    pub fn upsert(&mut self, p: &str, value: Vec<u8>, perms: PermList) {
        if self.nodes.contains_key(p) {
            self.modify(p, |n| {
                n.value = value;
                n.perms = perms;
            });
            return;
        }
        if let Some(parent) = path::parent(p) {
            if !self.nodes.contains_key(parent) {
                self.upsert(parent, Vec::new(), perms.clone());
            }
            let base: Box<str> = path::basename(p).into();
            self.modify(parent, |n| {
                if !n.children.contains(&base) {
                    n.children.push(base);
                }
            });
        }
        let mut n = Node::new(perms);
        n.value = value;
        self.insert_raw(p, n);
    }

    /// Removes `p` and its subtree and unlinks it from its parent.
    pub fn remove_tree(&mut self, p: &str) {
        if p == "/" {
            return;
        }
        let mut stack = vec![p.to_owned()];
        let mut guard = 0usize;
        while let Some(cur) = stack.pop() {
            guard += 1;
            if guard > self.nodes.len() + 1 {
                break;
            }
            if let Some(n) = self.nodes.remove(&cur) {
                self.count(n.owner(), -1, -(node_memory(&cur, &n) as i64));
                for c in &n.children {
                    stack.push(join(&cur, c));
                }
            }
        }
        if let Some(parent) = path::parent(p) {
            let base = path::basename(p);
            self.modify(parent, |n| n.children.retain(|c| &**c != base));
        }
    }

    /// Calls `f` on every node (any order).
    pub fn for_each(&self, mut f: impl FnMut(&str, &Node)) {
        for (p, n) in &self.nodes {
            f(p, n);
        }
    }

    /// Paths in pre-order from `/` (parents before children), then the
    /// special nodes.
    #[must_use]
    pub fn preorder(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack = vec!["/".to_owned()];
        while let Some(p) = stack.pop() {
            if let Some(n) = self.nodes.get(&p) {
                for c in n.children.iter().rev() {
                    stack.push(join(&p, c));
                }
                out.push(p);
            }
            if out.len() > self.nodes.len() {
                break;
            }
        }
        for special in [path::INTRODUCE_DOMAIN, path::RELEASE_DOMAIN] {
            if self.nodes.contains_key(special) {
                out.push(special.to_owned());
            }
        }
        out
    }

    /// Drops nodes unreachable from `/` and children entries without a
    /// node (repair after loading); returns how many fixes were made.
    pub fn check(&mut self) -> usize {
        let reachable: std::collections::HashSet<String> = self.preorder().into_iter().collect();
        let mut fixes = 0;
        let orphans: Vec<String> = self
            .nodes
            .keys()
            .filter(|k| !reachable.contains(*k))
            .cloned()
            .collect();
        for o in orphans {
            if let Some(n) = self.nodes.remove(&o) {
                self.count(n.owner(), -1, -(node_memory(&o, &n) as i64));
                fixes += 1;
            }
        }
        let keys: Vec<String> = self.nodes.keys().cloned().collect();
        for k in keys {
            let missing: Vec<Box<str>> = self.nodes[&k]
                .children
                .iter()
                .filter(|c| !self.nodes.contains_key(&join(&k, c)))
                .cloned()
                .collect();
            if !missing.is_empty() {
                fixes += missing.len();
                if let Some(n) = self.nodes.get_mut(&k) {
                    n.children.retain(|c| !missing.contains(c));
                }
            }
        }
        fixes
    }
}

impl Tree {
    /// Checks the invariants: every node but `/` and the special nodes is
    /// listed by its existing parent, every listed child exists, children
    /// lists have no duplicates, and the per-owner counts match.
    pub fn verify(&self) -> Result<(), String> {
        let mut counts: HashMap<DomId, Usage> = HashMap::new();
        for (p, n) in &self.nodes {
            let u = counts.entry(n.owner()).or_default();
            u.nodes += 1;
            u.bytes += node_memory(p, n);
            if n.perms.0.is_empty() {
                return Err(format!("{p} has no permissions"));
            }
            let mut seen = std::collections::HashSet::new();
            for c in &n.children {
                if !seen.insert(c) {
                    return Err(format!("{p} lists {c} twice"));
                }
                if !self.nodes.contains_key(&join(p, c)) {
                    return Err(format!("{p} lists missing child {c}"));
                }
            }
            if p == "/" || p.starts_with('@') {
                continue;
            }
            let parent = path::parent(p).ok_or_else(|| format!("{p} has no parent"))?;
            let pn = self
                .nodes
                .get(parent)
                .ok_or_else(|| format!("{p}: parent {parent} missing"))?;
            if !pn.children.iter().any(|c| **c == *path::basename(p)) {
                return Err(format!("{parent} does not list {p}"));
            }
        }
        for (d, c) in &counts {
            if self.usage(*d) != *c {
                return Err(format!(
                    "domain {d} owns {c:?}, counted {:?}",
                    self.usage(*d)
                ));
            }
        }
        for (d, c) in &self.owners {
            if *c != counts.get(d).copied().unwrap_or_default() {
                return Err(format!("stale owner count for domain {d}"));
            }
        }
        Ok(())
    }
}

fn count_in(owners: &mut HashMap<DomId, Usage>, owner: DomId, nodes: i64, bytes: i64) {
    let u = owners.entry(owner).or_default();
    u.nodes = u.nodes.saturating_add_signed(nodes);
    u.bytes = u.bytes.saturating_add_signed(bytes);
    if *u == Usage::default() {
        owners.remove(&owner);
    }
}

/// `parent/child` (`/child` under the root).
#[must_use]
pub fn join(parent: &str, child: &str) -> String {
    let mut s = String::with_capacity(parent.len() + 1 + child.len());
    s.push_str(parent);
    if parent != "/" {
        s.push('/');
    }
    s.push_str(child);
    s
}

impl Nodes for Tree {
    fn node(&mut self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    fn modify<R>(&mut self, path: &str, f: impl FnOnce(&mut Node) -> R) -> Option<R> {
        let g = self.next_gen;
        let n = self.nodes.get_mut(path)?;
        let (before, mem_before) = (n.owner(), node_memory(path, n));
        let r = f(n);
        n.gen = g;
        let (after, mem_after) = (n.owner(), node_memory(path, n));
        self.next_gen += 1;
        recount(&mut self.owners, (before, mem_before), (after, mem_after));
        Some(r)
    }

    fn insert(&mut self, path: &str, node: Node) {
        self.insert_raw(path, node);
    }

    fn remove(&mut self, path: &str) -> Option<Node> {
        let n = self.nodes.remove(path)?;
        self.count(n.owner(), -1, -(node_memory(path, &n) as i64));
        Some(n)
    }

    fn owned_by(&self, domid: DomId) -> u64 {
        self.owner_count(domid)
    }

    fn memory_of(&self, domid: DomId) -> u64 {
        self.usage(domid).bytes
    }
}

/// Moves a changed node's charge: from `before` (owner, bytes) to `after`.
fn recount(owners: &mut HashMap<DomId, Usage>, before: (DomId, u64), after: (DomId, u64)) {
    if before == after {
        return;
    }
    if before.0 == after.0 {
        count_in(owners, before.0, 0, after.1 as i64 - before.1 as i64);
    } else {
        count_in(owners, before.0, -1, -(before.1 as i64));
        count_in(owners, after.0, 1, after.1 as i64);
    }
}

/// The tree plus a journal sink: every change is also reported to the sink.
#[derive(Debug)]
pub struct Journaled<'a, S: ChangeSink> {
    /// The tree.
    pub tree: &'a mut Tree,
    /// The sink.
    pub sink: &'a mut S,
}

impl<S: ChangeSink> Nodes for Journaled<'_, S> {
    fn node(&mut self, path: &str) -> Option<&Node> {
        self.tree.nodes.get(path)
    }

    fn modify<R>(&mut self, path: &str, f: impl FnOnce(&mut Node) -> R) -> Option<R> {
        // Tree::modify plus the journal record, with one lookup.
        let tree = &mut *self.tree;
        let g = tree.next_gen;
        let n = tree.nodes.get_mut(path)?;
        let (before, mem_before) = (n.owner(), node_memory(path, n));
        let r = f(n);
        n.gen = g;
        let (after, mem_after) = (n.owner(), node_memory(path, n));
        self.sink.upsert(path, n);
        tree.next_gen += 1;
        recount(&mut tree.owners, (before, mem_before), (after, mem_after));
        Some(r)
    }

    fn insert(&mut self, path: &str, node: Node) {
        self.sink.upsert(path, &node);
        self.tree.insert_raw(path, node);
    }

    fn remove(&mut self, path: &str) -> Option<Node> {
        let n = self.tree.remove(path)?;
        self.sink.remove(path);
        Some(n)
    }

    fn owned_by(&self, domid: DomId) -> u64 {
        self.tree.owner_count(domid)
    }

    fn memory_of(&self, domid: DomId) -> u64 {
        self.tree.usage(domid).bytes
    }
}

/// A sink that drops everything (no persistence).
#[derive(Debug, Default)]
pub struct NoSink;

impl ChangeSink for NoSink {
    fn upsert(&mut self, _: &str, _: &Node) {}
    fn remove(&mut self, _: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_tree_new_has_xen_initial_nodes() {
        let t = Tree::new();
        assert_eq!(t.get("/").unwrap().children, vec!["tool".into()]);
        assert!(t.get("/tool/xenstored").is_some());
        assert!(t.get("@introduceDomain").is_some());
        assert_eq!(t.owner_count(0), 5);
    }

    #[test]
    fn test_tree_modify_bumps_generation() {
        let mut t = Tree::new();
        let g = t.gen_of("/tool").unwrap();
        t.modify("/tool", |n| n.value = b"x".to_vec());
        assert!(t.gen_of("/tool").unwrap() > g);
    }

    #[test]
    fn test_tree_upsert_creates_parents_and_remove_tree_unlinks() {
        let mut t = Tree::new();
        t.upsert("/a/b/c", b"v".to_vec(), PermList::owner(3, PERM_NONE));
        assert_eq!(t.get("/a/b/c").unwrap().value, b"v");
        assert_eq!(t.get("/a").unwrap().children, vec!["b".into()]);
        assert_eq!(t.owner_count(3), 3);
        t.remove_tree("/a");
        assert!(t.get("/a/b").is_none());
        assert_eq!(t.owner_count(3), 0);
        assert!(!t.get("/").unwrap().children.contains(&"a".into()));
    }

    #[test]
    fn test_tree_preorder_parents_first() {
        let mut t = Tree::new();
        t.upsert("/a/b", vec![], PermList::owner(0, PERM_NONE));
        let p = t.preorder();
        let ia = p.iter().position(|x| x == "/a").unwrap();
        let ib = p.iter().position(|x| x == "/a/b").unwrap();
        assert!(ia < ib);
        assert_eq!(p[0], "/");
    }

    #[test]
    fn test_tree_check_removes_orphans_and_dangling_children() {
        let mut t = Tree::new();
        t.nodes
            .insert("/orphan/x".into(), Node::new(PermList::owner(0, 0)));
        t.nodes.get_mut("/").unwrap().children.push("ghost".into());
        assert_eq!(t.check(), 2);
        assert!(t.get("/orphan/x").is_none());
        assert_eq!(t.get("/").unwrap().children, vec!["tool".into()]);
    }
}
