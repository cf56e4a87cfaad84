//! The node operations of the protocol (READ, WRITE, MKDIR, RM, DIRECTORY,
//! DIRECTORY_PART, GET_PERMS, SET_PERMS) with Xen's permission and quota
//! rules, written once against [`Nodes`] so they run on the tree and inside
//! transactions alike.

use xenstore_wire::{path, DomId, PermList, XsError, PERM_READ, PERM_WRITE};

use crate::quota::Quotas;
use crate::store::{join, Node, Nodes, NODE_HEADER_BYTES, PERM_BYTES};

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The connection's domain (0 for Dom0 sockets).
    pub domid: DomId,
    /// Dom0 and the tools: every node is accessible, no quotas apply.
    pub privileged: bool,
    /// The domain this one acts for (`XS_SET_TARGET`).
    pub target: Option<DomId>,
}

impl Caller {
    /// The Dom0 tools.
    #[must_use]
    pub fn dom0() -> Caller {
        Caller {
            domid: 0,
            privileged: true,
            target: None,
        }
    }

    /// An unprivileged guest.
    #[must_use]
    pub fn guest(domid: DomId) -> Caller {
        Caller {
            domid,
            privileged: false,
            target: None,
        }
    }

    /// The access this caller has to a node with `perms`.
    #[must_use]
    pub fn access(&self, perms: &PermList) -> u8 {
        perms.access_for(self.domid, self.target, self.privileged)
    }
}

/// A change that may fire watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The changed node.
    pub path: String,
    /// `true`: only watches on exactly `path` fire (nodes below a removed
    /// subtree's root); `false`: watches on `path` and its ancestors.
    pub exact: bool,
    /// The node's permissions when it changed.
    pub perms: PermList,
    /// The previous permissions (`SET_PERMS`): a watcher that could read
    /// the node before also gets the event.
    pub old_perms: Option<PermList>,
    /// The parent's permissions, when the node was removed with it.
    pub parent_perms: Option<PermList>,
}

/// The nearest existing ancestor of `p` (the root for special names).
fn nearest_ancestor<N: Nodes>(n: &mut N, p: &str) -> Option<PermList> {
    let mut cur = path::parent(p).unwrap_or("/");
    for _ in 0..=path::depth(p) {
        if let Some(node) = n.node(cur) {
            return Some(node.perms.clone());
        }
        cur = path::parent(cur)?;
    }
    None
}

/// Xen's `errno_from_parents`: hide whether a node exists from a caller
/// that may not see its nearest existing ancestor.
fn errno_from_parents<N: Nodes>(n: &mut N, c: &Caller, p: &str, err: XsError, perm: u8) -> XsError {
    match nearest_ancestor(n, p) {
        Some(perms) if c.access(&perms) & perm != 0 => err,
        _ => XsError::Eacces,
    }
}

/// Checks that `p` exists and `c` has `perm` on it (`get_node`).
pub fn check<N: Nodes>(n: &mut N, c: &Caller, p: &str, perm: u8) -> Result<(), XsError> {
    let err = match n.node(p) {
        Some(node) if c.access(&node.perms) & perm == perm => return Ok(()),
        Some(_) => XsError::Eacces,
        None => XsError::Enoent,
    };
    Err(errno_from_parents(n, c, p, err, perm))
}

/// The node at `p` if `c` may read it.
pub fn read<'n, N: Nodes>(n: &'n mut N, c: &Caller, p: &str) -> Result<&'n Node, XsError> {
    check(n, c, p, PERM_READ)?;
    n.node(p).ok_or(XsError::Enoent)
}

fn event(p: &str, perms: &PermList, exact: bool) -> Event {
    Event {
        path: p.to_owned(),
        exact,
        perms: perms.clone(),
        old_perms: None,
        parent_perms: None,
    }
}

fn event_owned(p: &str, perms: PermList) -> Event {
    Event {
        path: p.to_owned(),
        exact: false,
        perms,
        old_perms: None,
        parent_perms: None,
    }
}

/// Refuses with `ENOSPC` a change by an unprivileged caller that adds
/// `grow` bytes to the nodes of `owner` past its `memory` quota. Dom0's
/// requests and Dom0's nodes are not limited.
fn check_memory<N: Nodes>(
    n: &N,
    c: &Caller,
    q: &Quotas,
    owner: DomId,
    grow: u64,
) -> Result<(), XsError> {
    if c.privileged || owner == 0 || grow == 0 {
        return Ok(());
    }
    let max = u64::from(q.get(owner, crate::quota::MEMORY));
    if n.memory_of(owner).saturating_add(grow) > max {
        return Err(XsError::Enospc);
    }
    Ok(())
}

/// Creates `p` and its missing parents (`create_node`), `value` at `p`.
fn create<N: Nodes>(
    n: &mut N,
    c: &Caller,
    q: &Quotas,
    p: &str,
    value: &[u8],
) -> Result<PermList, XsError> {
    // Walk up to the nearest existing node.
    let mut missing: Vec<&str> = Vec::new();
    let mut cur = p;
    let parent_perms = loop {
        missing.push(cur);
        let parent = path::parent(cur).ok_or(XsError::Einval)?;
        if let Some(node) = n.node(parent) {
            break node.perms.clone();
        }
        if missing.len() > path::depth(p) {
            return Err(XsError::Eio);
        }
        cur = parent;
    };
    let mut perms = parent_perms;
    if !c.privileged {
        if let Some(first) = perms.0.first_mut() {
            first.domid = c.domid;
        }
        let new = missing.len() as u64;
        if n.owned_by(c.domid).saturating_add(new) > u64::from(q.get(c.domid, crate::quota::NODES))
        {
            return Err(XsError::Enospc);
        }
        let node_size = q.get(c.domid, crate::quota::NODE_SIZE) as usize;
        if value.len() + perms.0.len() * 8 > node_size {
            return Err(XsError::Enospc);
        }
        let grow: u64 = missing
            .iter()
            .map(|m| NODE_HEADER_BYTES + m.len() as u64 + perms.0.len() as u64 * PERM_BYTES)
            .sum::<u64>()
            + value.len() as u64;
        check_memory(n, c, q, c.domid, grow)?;
        let top = missing[missing.len() - 1];
        let parent = path::parent(top).unwrap_or("/");
        if let Some(pn) = n.node(parent) {
            if pn.acc_size() + path::basename(top).len() + 1 > node_size {
                return Err(XsError::Enospc);
            }
        }
    }
    for (i, &m) in missing.iter().enumerate().rev() {
        let parent = path::parent(m).unwrap_or("/");
        let base: Box<str> = path::basename(m).into();
        n.modify(parent, |pn| pn.children.push(base));
        let mut node = Node::new(perms.clone());
        if i == 0 {
            node.value = value.to_vec();
        }
        n.insert(m, node);
    }
    Ok(perms)
}

/// `XS_WRITE`. The watch event goes to `events`; `None` when no watch
/// could fire (the hot path of a store without watches builds none).
pub fn write<N: Nodes>(
    n: &mut N,
    c: &Caller,
    q: &Quotas,
    p: &str,
    value: &[u8],
    events: Option<&mut Vec<Event>>,
) -> Result<(), XsError> {
    match check(n, c, p, PERM_WRITE) {
        Ok(()) => {
            if !c.privileged {
                let node = n.node(p).ok_or(XsError::Enoent)?;
                let size = node.acc_size() - node.value.len() + value.len();
                if size > q.get(c.domid, crate::quota::NODE_SIZE) as usize {
                    return Err(XsError::Enospc);
                }
                let (owner, grow) = (node.owner(), value.len().saturating_sub(node.value.len()));
                check_memory(n, c, q, owner, grow as u64)?;
            }
            let want = events.is_some();
            let perms = n
                .modify(p, |node| {
                    node.value.clear();
                    node.value.extend_from_slice(value);
                    want.then(|| node.perms.clone())
                })
                .ok_or(XsError::Enoent)?;
            if let (Some(events), Some(perms)) = (events, perms) {
                events.push(event_owned(p, perms));
            }
        }
        Err(XsError::Enoent) => {
            let perms = create(n, c, q, p, value)?;
            if let Some(events) = events {
                events.push(event_owned(p, perms));
            }
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// `XS_MKDIR`.
pub fn mkdir<N: Nodes>(
    n: &mut N,
    c: &Caller,
    q: &Quotas,
    p: &str,
    events: &mut Vec<Event>,
) -> Result<(), XsError> {
    match check(n, c, p, PERM_WRITE) {
        Ok(()) => Ok(()),
        Err(XsError::Enoent) => {
            let perms = create(n, c, q, p, &[])?;
            events.push(event(p, &perms, false));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `XS_RM`.
pub fn rm<N: Nodes>(
    n: &mut N,
    c: &Caller,
    p: &str,
    events: &mut Vec<Event>,
) -> Result<(), XsError> {
    match check(n, c, p, PERM_WRITE) {
        Ok(()) => {}
        Err(XsError::Enoent) => {
            // Not there: fine if the parent exists.
            let parent = path::parent(p).ok_or(XsError::Einval)?;
            return if n.node(parent).is_some() {
                Ok(())
            } else {
                Err(XsError::Enoent)
            };
        }
        Err(e) => return Err(e),
    }
    if p == "/" || !p.starts_with('/') {
        return Err(XsError::Einval);
    }
    let parent = path::parent(p).ok_or(XsError::Einval)?;
    let parent_perms = n.node(parent).map(|pn| pn.perms.clone());
    // Post-order walk with an explicit stack, bounded by the tree size.
    let mut order: Vec<String> = Vec::new();
    let mut stack: Vec<String> = vec![p.to_owned()];
    while let Some(cur) = stack.pop() {
        if let Some(node) = n.node(&cur) {
            for ch in &node.children {
                stack.push(join(&cur, ch));
            }
            order.push(cur);
        }
    }
    let mut perms_of: std::collections::HashMap<&str, PermList> = std::collections::HashMap::new();
    for cur in order.iter().rev() {
        if let Some(old) = n.remove(cur) {
            let exact = cur != p;
            let pp = path::parent(cur)
                .and_then(|par| perms_of.get(par).cloned())
                .or_else(|| if exact { None } else { parent_perms.clone() });
            events.push(Event {
                path: cur.clone(),
                exact,
                perms: old.perms.clone(),
                old_perms: None,
                parent_perms: pp,
            });
            perms_of.insert(cur.as_str(), old.perms);
        }
    }
    let base = path::basename(p);
    n.modify(parent, |pn| pn.children.retain(|ch| &**ch != base));
    Ok(())
}

/// `XS_SET_PERMS`.
pub fn set_perms<N: Nodes>(
    n: &mut N,
    c: &Caller,
    q: &Quotas,
    p: &str,
    perms: PermList,
    events: &mut Vec<Event>,
) -> Result<(), XsError> {
    if !c.privileged && perms.0.len() > q.get(c.domid, crate::quota::PERMISSIONS) as usize {
        return Err(XsError::Enospc);
    }
    check(n, c, p, PERM_WRITE)?;
    let (owner, old_len) = n
        .node(p)
        .map(|node| (node.owner(), node.perms.0.len()))
        .ok_or(XsError::Enoent)?;
    if !c.privileged && perms.owner_id() != owner {
        return Err(XsError::Eperm);
    }
    let grow = perms.0.len().saturating_sub(old_len) as u64 * PERM_BYTES;
    check_memory(n, c, q, owner, grow)?;
    let new = perms.clone();
    let old = n
        .modify(p, |node| std::mem::replace(&mut node.perms, perms))
        .ok_or(XsError::Enoent)?;
    events.push(Event {
        path: p.to_owned(),
        exact: false,
        perms: new,
        old_perms: Some(old),
        parent_perms: None,
    });
    Ok(())
}

/// `XS_DIRECTORY_PART`: appends `<gen>|<children from offset>|*[|]` to
/// `out` (the final empty string marks the end of the list).
pub fn directory_part(node: &Node, offset: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(node.gen.to_string().as_bytes());
    out.push(0);
    let genlen = out.len() - start;
    let childlen = node.children_len();
    if offset >= childlen {
        out.push(0);
        return;
    }
    let maxlen = xenstore_wire::XENSTORE_PAYLOAD_MAX - genlen - 1;
    let mut pos = 0usize;
    let mut len = 0usize;
    for ch in &node.children {
        let l = ch.len() + 1;
        if pos < offset {
            pos += l;
            continue;
        }
        if len + ch.len() >= maxlen {
            break;
        }
        out.extend_from_slice(ch.as_bytes());
        out.push(0);
        len += l;
        pos += l;
    }
    if pos >= childlen {
        out.push(0);
    }
}
