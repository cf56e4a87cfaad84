//! The layering rule, checked on Cargo's own dependency resolution: no guest
//! crate reaches a Dom0 or daemon crate through its normal (or build)
//! dependencies. A guest's runtime, the PVHVM VMM, the frontends and the
//! shim's guest API may name `xen-shim-proto` and `xen-shim-guest`; never
//! `xen-shim-dom0` (grant mapping, domain control), `xen-shimd`, the
//! backends, xenstored or the toolstack. Dev-dependencies do not count: a
//! guest crate's tests may run a whole private Dom0.
//!
//! The guest crates are the ones named in [`GUEST`] plus every workspace
//! member whose library is `no_std`; the PVHVM kernel's workspace
//! (`frontend-drivers/pvhvm-kernel`) and the `no_std` link check's
//! (`tests/nostd-check`) are guest code as a whole. A failure names every
//! offending chain of dependency edges.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Guest-side crates of the main workspace (the `no_std` members are added
/// to these by [`no_std_members`]).
const GUEST: &[&str] = &[
    "xen-pvguest",
    "xen-vmm",
    "xen-blkfront",
    "xen-netfront",
    "xen-consfront",
    "xen-xenbus",
    "xen-front-platform",
    "xen-shim-guest",
    "xen-shim-proto",
    "xen-jail",
];

/// Crates with Dom0 powers or of Dom0's processes: no guest crate may reach
/// them.
const FORBIDDEN: &[&str] = &[
    "xen-shim-dom0",
    "xen-shimd",
    "xenstored",
    "xen-backendd",
    "xen-blkback",
    "xen-netback",
    "xen-xl",
    "xenstore-client",
    "xen-testhost",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `cargo metadata` of the workspace whose manifest is `manifest`.
fn metadata(manifest: &Path) -> Value {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata --manifest-path {} failed: {}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// The resolved graph of one workspace: package names, and for each package
/// its normal and build dependencies (dev-dependencies left out).
struct Graph {
    name: HashMap<String, String>,
    deps: HashMap<String, Vec<String>>,
    members: Vec<String>,
}

impl Graph {
    fn new(meta: &Value) -> Self {
        let str_of = |v: &Value| v.as_str().expect("a string").to_owned();
        let name = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| (str_of(&p["id"]), str_of(&p["name"])))
            .collect();
        let mut deps = HashMap::new();
        for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
            let normal = node["deps"]
                .as_array()
                .expect("node deps")
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .expect("dep_kinds")
                        .iter()
                        .any(|k| k["kind"].as_str() != Some("dev"))
                })
                .map(|d| str_of(&d["pkg"]))
                .collect();
            deps.insert(str_of(&node["id"]), normal);
        }
        let members = meta["workspace_members"]
            .as_array()
            .expect("workspace_members")
            .iter()
            .map(str_of)
            .collect();
        Self {
            name,
            deps,
            members,
        }
    }

    fn id_of(&self, name: &str) -> Option<&String> {
        self.members.iter().find(|id| self.name[*id] == name)
    }

    /// For each forbidden crate `root` reaches, the chain of names from
    /// `root` to it (shortest, breadth first).
    fn forbidden_chains(&self, root: &str) -> Vec<String> {
        let mut parent: HashMap<&str, &str> = HashMap::new();
        let mut queue = VecDeque::from([root]);
        let mut chains = Vec::new();
        while let Some(id) = queue.pop_front() {
            if FORBIDDEN.contains(&self.name[id].as_str()) {
                let mut chain = vec![self.name[id].as_str()];
                let mut at = id;
                while let Some(&p) = parent.get(at) {
                    chain.push(&self.name[p]);
                    at = p;
                }
                chain.reverse();
                chains.push(chain.join(" -> "));
                // What lies behind a forbidden crate is its own business.
                continue;
            }
            for d in self.deps.get(id).into_iter().flatten() {
                if d != root && !parent.contains_key(d.as_str()) {
                    parent.insert(d, id);
                    queue.push_back(d);
                }
            }
        }
        chains
    }
}

/// Workspace members whose library declares `no_std` (also under
/// `cfg_attr`).
fn no_std_members(meta: &Value, g: &Graph) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in meta["packages"].as_array().expect("packages") {
        let id = p["id"].as_str().expect("id");
        if !g.members.iter().any(|m| m == id) {
            continue;
        }
        for t in p["targets"].as_array().expect("targets") {
            let is_lib = t["kind"]
                .as_array()
                .expect("kind")
                .iter()
                .any(|k| k.as_str() == Some("lib"));
            if !is_lib {
                continue;
            }
            let src = t["src_path"].as_str().expect("src_path");
            let text = std::fs::read_to_string(src).expect("read a library root");
            if text
                .lines()
                .any(|l| l.trim_start().starts_with("#![") && l.contains("no_std"))
            {
                out.insert(g.name[id].clone());
            }
        }
    }
    out
}

#[test]
fn test_no_guest_crate_depends_on_a_dom0_or_daemon_crate() {
    let meta = metadata(&repo_root().join("Cargo.toml"));
    let g = Graph::new(&meta);
    for name in FORBIDDEN {
        assert!(
            g.id_of(name).is_some(),
            "{name} is not a workspace member any more: update FORBIDDEN"
        );
    }
    let no_std = no_std_members(&meta, &g);
    assert!(
        no_std.contains("xen-abi") && no_std.contains("xen-blkfront"),
        "the no_std detection found only {no_std:?}"
    );
    let guests: BTreeSet<String> = GUEST.iter().map(|s| s.to_string()).chain(no_std).collect();

    let mut violations = Vec::new();
    for name in &guests {
        let id = g
            .id_of(name)
            .unwrap_or_else(|| panic!("{name} is not a workspace member any more: update GUEST"));
        violations.extend(
            g.forbidden_chains(id)
                .into_iter()
                .map(|c| format!("guest crate {name} reaches a Dom0/daemon crate: {c}")),
        );
    }
    assert!(
        violations.is_empty(),
        "layering broken (normal dependencies, dev-dependencies aside):\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn test_guest_only_workspaces_have_no_dom0_or_daemon_crate() {
    for ws in ["frontend-drivers/pvhvm-kernel", "tests/nostd-check"] {
        let meta = metadata(&repo_root().join(ws).join("Cargo.toml"));
        let g = Graph::new(&meta);
        assert!(!g.members.is_empty(), "{ws} has no member");
        let violations: Vec<String> = g
            .members
            .iter()
            .flat_map(|id| {
                g.forbidden_chains(id)
                    .into_iter()
                    .map(move |c| format!("{ws}: {c}"))
            })
            .collect();
        assert!(
            violations.is_empty(),
            "layering broken in a guest workspace:\n  {}",
            violations.join("\n  ")
        );
    }
}
