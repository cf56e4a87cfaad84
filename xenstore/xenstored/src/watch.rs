//! Watches, indexed by watched path: an event on `/a/b/c` looks up
//! `/a/b/c`, `/a/b`, `/a` and `/` only, so its cost does not grow with
//! unrelated watches.

use std::collections::HashMap;

use xenstore_wire::path;

/// A connection id (index in the daemon's connection table).
pub type ConnId = usize;
/// A watch id.
pub type WatchId = usize;

/// One watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Its connection.
    pub conn: ConnId,
    /// The absolute (or special) watched path.
    pub path: String,
    /// The client's token.
    pub token: Vec<u8>,
    /// Bytes to strip from event paths (a relative watch: the home path
    /// and its slash).
    pub prefix_len: usize,
    /// Maximum depth of events below `path` (`None`: unlimited).
    pub depth: Option<u32>,
}

impl Watch {
    /// The event path sent for a change of `p`.
    #[must_use]
    pub fn event_path<'p>(&self, p: &'p str) -> &'p str {
        p.get(self.prefix_len..).unwrap_or(p)
    }

    fn depth_ok(&self, p: &str) -> bool {
        match self.depth {
            None => true,
            Some(d) => {
                let below = if self.path == "/" {
                    path::depth(p)
                } else {
                    path::depth(p).saturating_sub(path::depth(&self.path))
                };
                below <= d as usize
            }
        }
    }
}

/// All watches.
#[derive(Debug, Default)]
pub struct Watches {
    slab: Vec<Option<Watch>>,
    free: Vec<WatchId>,
    by_path: HashMap<String, Vec<WatchId>>,
    count: usize,
}

impl Watches {
    /// Adds a watch.
    pub fn add(&mut self, w: Watch) -> WatchId {
        let p = w.path.clone();
        let id = if let Some(id) = self.free.pop() {
            self.slab[id] = Some(w);
            id
        } else {
            self.slab.push(Some(w));
            self.slab.len() - 1
        };
        self.by_path.entry(p).or_default().push(id);
        self.count += 1;
        id
    }

    /// Removes a watch.
    pub fn remove(&mut self, id: WatchId) -> Option<Watch> {
        let w = self.slab.get_mut(id)?.take()?;
        if let Some(v) = self.by_path.get_mut(&w.path) {
            v.retain(|x| *x != id);
            if v.is_empty() {
                self.by_path.remove(&w.path);
            }
        }
        self.free.push(id);
        self.count -= 1;
        Some(w)
    }

    /// The watch `id`.
    #[must_use]
    pub fn get(&self, id: WatchId) -> Option<&Watch> {
        self.slab.get(id).and_then(Option::as_ref)
    }

    /// The watch of `conn` on `path` with `token`.
    #[must_use]
    pub fn find(&self, conn: ConnId, p: &str, token: &[u8]) -> Option<WatchId> {
        self.by_path.get(p)?.iter().copied().find(|&id| {
            self.get(id)
                .is_some_and(|w| w.conn == conn && w.token == token)
        })
    }

    /// The number of watches.
    #[must_use]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends to `out` the watches an event on `p` fires: with `exact`,
    /// those on `p` itself; else those on `p` and its ancestors.
    pub fn matching(&self, p: &str, exact: bool, out: &mut Vec<WatchId>) {
        if self.by_path.is_empty() {
            return;
        }
        let mut cur = p;
        for _ in 0..=path::depth(p) + 1 {
            if let Some(v) = self.by_path.get(cur) {
                for &id in v {
                    if self.get(id).is_some_and(|w| w.depth_ok(p)) {
                        out.push(id);
                    }
                }
            }
            if exact {
                break;
            }
            match path::parent(cur) {
                Some(par) => cur = par,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(conn: ConnId, p: &str, depth: Option<u32>) -> Watch {
        Watch {
            conn,
            path: p.into(),
            token: b"t".to_vec(),
            prefix_len: 0,
            depth,
        }
    }

    #[test]
    fn test_watches_matching_ancestors_not_siblings() {
        let mut ws = Watches::default();
        let a = ws.add(w(1, "/a", None));
        let root = ws.add(w(1, "/", None));
        let _ab = ws.add(w(1, "/ab", None));
        let deep = ws.add(w(1, "/a/b/c", None));
        let mut out = Vec::new();
        ws.matching("/a/b", false, &mut out);
        out.sort_unstable();
        assert_eq!(out, vec![a, root]);
        out.clear();
        ws.matching("/a/b/c", true, &mut out);
        assert_eq!(out, vec![deep]);
    }

    #[test]
    fn test_watches_depth_limits_events() {
        let mut ws = Watches::default();
        let d0 = ws.add(w(1, "/a", Some(0)));
        let d1 = ws.add(w(1, "/a", Some(1)));
        let mut out = Vec::new();
        ws.matching("/a", false, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        ws.matching("/a/b", false, &mut out);
        assert_eq!(out, vec![d1]);
        out.clear();
        ws.matching("/a/b/c", false, &mut out);
        assert!(out.is_empty());
        let _ = d0;
    }

    #[test]
    fn test_watches_remove_and_find() {
        let mut ws = Watches::default();
        let id = ws.add(w(3, "/x", None));
        assert_eq!(ws.find(3, "/x", b"t"), Some(id));
        assert_eq!(ws.find(4, "/x", b"t"), None);
        ws.remove(id);
        assert_eq!(ws.find(3, "/x", b"t"), None);
        assert!(ws.is_empty());
    }

    #[test]
    fn test_watch_event_path_strips_relative_prefix() {
        let mut x = w(1, "/local/domain/3/dev", None);
        x.prefix_len = "/local/domain/3/".len();
        assert_eq!(x.event_path("/local/domain/3/dev/a"), "dev/a");
    }
}
