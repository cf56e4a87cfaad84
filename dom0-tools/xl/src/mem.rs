//! A running domain's memory: `xl mem-set` and `xl mem-max`.
//!
//! As libxl: `mem-set` writes the domain's balloon target
//! `memory/target` (KiB; never above `memory/static-max`), `mem-max` its
//! `memory/static-max` (never below the target). A PV domain's "balloon"
//! is its cgroup: the memory limit follows the target, plus the runtime's
//! own [`crate::resources::PV_RUNTIME_ALLOWANCE_MIB`] as `xl create` sets
//! it, so a guest above the new size is reclaimed and then OOM-killed
//! inside itself. `xl list` shows a PV domain's target as its Mem.
//!
//! A PVHVM domain's kernel has a balloon driver: it watches the target
//! and gives pages back with `XENMEM_decrease_reservation` (its VMM
//! punches them out of the domain's memory file, so the host gets the
//! memory back) or takes them again with `XENMEM_populate_physmap`.
//! `mem-max` also sets the VMM's page limit (Xen's `XEN_DOMCTL_max_mem`,
//! through the VMM's control socket, capped at the domain's RAM), which
//! it refuses to populate above. `xl list` shows the pages the VMM counts
//! ([`vmm_pages`]).

use xen_shim_proto::layout::DomainType;
use xen_shim_proto::protocol::DomainInfo;
use xenstore_client::{Client, XsClientError, XsOps};

use crate::resources::{self, ResourcesError, PV_RUNTIME_ALLOWANCE_MIB};
use crate::toolstack::{self, ToolstackError};

/// Errors of the memory verbs.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// Finding the domain failed.
    #[error(transparent)]
    Toolstack(#[from] ToolstackError),
    /// Finding the domain's group failed.
    #[error(transparent)]
    Resources(#[from] ResourcesError),
    /// A size Xen's syntax does not allow.
    #[error("invalid memory size {0:?} (a number with an optional unit t, g, m, k or b; none is MiB as xl reads it)")]
    Size(String),
    /// Too small to run anything.
    #[error("{0} KiB is below the smallest domain ({MIN_MIB} MiB)")]
    TooSmall(u64),
    /// The target would exceed the maximum.
    #[error(
        "target {target} KiB is above the domain's maximum {max} KiB (raise it with xl mem-max)"
    )]
    AboveMax {
        /// Requested target.
        target: u64,
        /// `memory/static-max`.
        max: u64,
    },
    /// The maximum would fall below the target.
    #[error("maximum {max} KiB is below the domain's target {target} KiB (lower it with xl mem-set first)")]
    BelowTarget {
        /// Requested maximum.
        max: u64,
        /// `memory/target`.
        target: u64,
    },
    /// The PVHVM domain's VMM did not answer on its control socket.
    #[error("cannot reach the VMM of domain {domid} on {socket}")]
    Vmm {
        /// Domain.
        domid: u16,
        /// The control socket.
        socket: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The PVHVM domain's VMM refused.
    #[error("the VMM of domain {domid} refused: {why}")]
    VmmRefused {
        /// Domain.
        domid: u16,
        /// Its answer.
        why: String,
    },
    /// Dom0 is the host.
    #[error("Domain-0 is the host itself: its memory is not set by xl")]
    Dom0,
    /// A node is missing or not a number.
    #[error("domain {domid}: {path} is missing or not a number")]
    Node {
        /// Domain.
        domid: u16,
        /// The node.
        path: String,
    },
    /// xenstore refused or failed.
    #[error("cannot write {path}")]
    Xenstore {
        /// The node.
        path: String,
        /// Why.
        #[source]
        source: XsClientError,
    },
    /// The domain has no cgroup.
    #[error("domain {0} has no cgroup (was it made by xl create?)")]
    NoGroup(u16),
    /// The cgroup refused the limit.
    #[error("cannot set the memory limit of domain {domid} to {bytes} bytes")]
    Limit {
        /// Domain.
        domid: u16,
        /// The limit.
        bytes: u64,
        /// Why.
        #[source]
        source: xen_cgroup::CgroupError,
    },
}

/// The smallest target, MiB.
pub const MIN_MIB: u64 = 4;

/// Xen's memory size (`parse_mem_size_kb` of xl): a number with an
/// optional unit `t`, `g`, `m`, `k` or `b` (any case); a bare number is
/// MiB, as xl's code reads it (its manual says KiB). KiB.
///
/// # Errors
/// [`MemError::Size`].
pub fn parse_size_kib(text: &str) -> Result<u64, MemError> {
    let bad = || MemError::Size(text.to_owned());
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let kib = match unit.to_ascii_lowercase().as_str() {
        "t" => n.checked_mul(1 << 30),
        "g" => n.checked_mul(1 << 20),
        "" | "m" => n.checked_mul(1 << 10),
        "k" => Some(n),
        "b" => Some(n >> 10),
        _ => None,
    };
    kib.ok_or_else(bad)
}

fn node(xs: &Client, domid: u16, leaf: &str) -> Result<u64, MemError> {
    let path = format!("/local/domain/{domid}/memory/{leaf}");
    xs.read_opt(&path)
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8_lossy(&v).trim().parse().ok())
        .ok_or(MemError::Node { domid, path })
}

fn write(xs: &Client, domid: u16, leaf: &str, kib: u64) -> Result<(), MemError> {
    let path = format!("/local/domain/{domid}/memory/{leaf}");
    xs.write(&path, kib.to_string())
        .map_err(|source| MemError::Xenstore { path, source })
}

fn check(d: &DomainInfo, kib: u64) -> Result<(), MemError> {
    if d.domid == 0 {
        return Err(MemError::Dom0);
    }
    if kib < MIN_MIB << 10 {
        return Err(MemError::TooSmall(kib));
    }
    Ok(())
}

/// The cgroup memory limit of a PV domain with target `kib`.
#[must_use]
pub fn pv_limit_bytes(kib: u64) -> u64 {
    kib.saturating_mul(1024)
        .saturating_add(PV_RUNTIME_ALLOWANCE_MIB << 20)
}

/// `xl mem-set DOM SIZE`.
///
/// # Errors
/// As [`MemError`]'s variants say.
pub fn mem_set(which: &str, size: &str) -> Result<(), MemError> {
    let kib = parse_size_kib(size)?;
    let control = toolstack::shim(false)?;
    let d = toolstack::find_domain(&control, which)?;
    check(&d, kib)?;
    let xs = toolstack::xenstore(false)?;
    let max = node(&xs, d.domid, "static-max")?;
    if kib > max {
        return Err(MemError::AboveMax { target: kib, max });
    }
    if d.kind == DomainType::Pvhvm {
        // Its balloon driver acts on the target.
        return write(&xs, d.domid, "target", kib);
    }
    let h = resources::hierarchy()?;
    let g = h
        .open(&resources::group_name(d.domid, &d.name))
        .ok()
        .flatten()
        .ok_or(MemError::NoGroup(d.domid))?;
    let bytes = pv_limit_bytes(kib);
    // The limit first: a target the kernel cannot reclaim down to is
    // refused (EBUSY) before xenstore says otherwise.
    g.set_memory_limit(Some(bytes))
        .map_err(|source| MemError::Limit {
            domid: d.domid,
            bytes,
            source,
        })?;
    write(&xs, d.domid, "target", kib)
}

/// `xl mem-max DOM SIZE`.
///
/// # Errors
/// As [`MemError`]'s variants say.
pub fn mem_max(which: &str, size: &str) -> Result<(), MemError> {
    let kib = parse_size_kib(size)?;
    let control = toolstack::shim(false)?;
    let d = toolstack::find_domain(&control, which)?;
    check(&d, kib)?;
    let xs = toolstack::xenstore(false)?;
    let target = node(&xs, d.domid, "target")?;
    if kib < target {
        return Err(MemError::BelowTarget { max: kib, target });
    }
    if d.kind == DomainType::Pvhvm {
        // The VMM's limit first (Xen's XEN_DOMCTL_max_mem), then the node.
        let pages = (kib / 4).min(d.layout.nr_ram_pages);
        let answer = vmm_command(d.domid, &d.name, &format!("max-pages {pages}"))?;
        if answer != "ok" {
            return Err(MemError::VmmRefused {
                domid: d.domid,
                why: answer.trim_start_matches("error ").to_owned(),
            });
        }
    }
    write(&xs, d.domid, "static-max", kib)
}

/// One command on a PVHVM domain's VMM control socket; its answer line.
fn vmm_command(domid: u16, name: &str, cmd: &str) -> Result<String, MemError> {
    use std::io::{BufRead, Write};
    let socket = toolstack::vmm_control_socket(name);
    let err = |source| MemError::Vmm {
        domid,
        socket: socket.display().to_string(),
        source,
    };
    let conn = std::os::unix::net::UnixStream::connect(&socket).map_err(err)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .map_err(err)?;
    (&conn)
        .write_all(format!("{cmd}\n").as_bytes())
        .map_err(err)?;
    let mut line = String::new();
    std::io::BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(err)?;
    Ok(line.trim_end().to_owned())
}

/// A PVHVM domain's pages and maximum pages as its VMM counts them (Xen's
/// `tot_pages`, `max_pages`).
///
/// # Errors
/// [`MemError::Vmm`], [`MemError::VmmRefused`] (an answer it cannot read).
pub fn vmm_pages(domid: u16, name: &str) -> Result<(u64, u64), MemError> {
    let answer = vmm_command(domid, name, "pages")?;
    let mut w = answer.split_whitespace();
    match (w.next(), w.next().map(str::parse), w.next().map(str::parse)) {
        (Some("pages"), Some(Ok(cur)), Some(Ok(max))) => Ok((cur, max)),
        _ => Err(MemError::VmmRefused { domid, why: answer }),
    }
}

/// A PV domain's balloon target, MiB (for `xl list`), if xenstore has it.
#[must_use]
pub fn target_mib(xs: &Client, domid: u16) -> Option<u64> {
    node(xs, domid, "target").ok().map(|k| k / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sizes_as_xl_reads_them() {
        assert_eq!(parse_size_kib("256m").expect("m"), 256 << 10);
        assert_eq!(parse_size_kib("256M").expect("M"), 256 << 10);
        assert_eq!(parse_size_kib("1g").expect("g"), 1 << 20);
        assert_eq!(parse_size_kib("1t").expect("t"), 1 << 30);
        assert_eq!(parse_size_kib("65536k").expect("k"), 65536);
        assert_eq!(parse_size_kib("2097152b").expect("b"), 2048);
        assert_eq!(parse_size_kib("128").expect("bare"), 128 << 10);
        for bad in [
            "",
            "m",
            "12x",
            "1.5g",
            "-1m",
            "12mb",
            "99999999999999999999t",
        ] {
            assert!(parse_size_kib(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size_kib("18446744073709551615t").is_err());
    }

    fn info(domid: u16, kind: DomainType) -> DomainInfo {
        DomainInfo {
            domid,
            name: "g".into(),
            memory_mib: 64,
            vcpus: 1,
            kind,
            state: xen_shim_proto::protocol::DomainState::Running,
            flags: "r-----".into(),
            layout: xen_shim_proto::layout::DomainLayout::new(64, 64).expect("layout"),
            pid: None,
            store_port: 1,
            console_port: 2,
            grant_version: 1,
            grant_frames: 1,
            instance: 1,
        }
    }

    #[test]
    fn test_dom0_and_tiny_targets_are_refused_with_the_reason() {
        assert!(check(&info(3, DomainType::Pvhvm), 32 << 10).is_ok());
        assert!(matches!(
            check(&info(0, DomainType::Pv), 32 << 10),
            Err(MemError::Dom0)
        ));
        assert!(matches!(
            check(&info(3, DomainType::Pv), 1 << 10),
            Err(MemError::TooSmall(1024))
        ));
        assert!(check(&info(3, DomainType::Pv), 32 << 10).is_ok());
    }

    #[test]
    fn test_pv_limit_keeps_the_runtime_allowance() {
        assert_eq!(
            pv_limit_bytes(64 << 10),
            (64 + PV_RUNTIME_ALLOWANCE_MIB) << 20
        );
    }
}
