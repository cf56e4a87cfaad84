//! What the many-guest runs (`scalebench`, `soak`) share: the busybox base
//! image and the qcow2 overlays guests boot from (as clouds provision
//! them), whether a domain's backends are Connected, and what `/proc` says
//! about the Dom0 services (memory, descriptors, threads, mappings).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xenstore_client::{Client, XsOps};

use crate::{build_binaries, mkroot, need, run, DOM0_BINARIES, SUPERVISED_BINARIES};

/// The binaries a many-guest run's `--libexec` holds: `xl`, `xen-supervise`,
/// `backendd`, `xen-pvguest`, `xen-shimd`, `xenstored`.
pub const FLEET_BINARIES: [(&str, &str); 6] = [
    DOM0_BINARIES[0],
    DOM0_BINARIES[1],
    DOM0_BINARIES[2],
    ("xen-pvguest", "xen-pvguest"),
    SUPERVISED_BINARIES[0],
    SUPERVISED_BINARIES[1],
];

/// Checks what a many-guest run (`what`: its name) needs: root,
/// `/dev/fuse` and `tools` (`(tool, Debian package)`).
pub fn preflight(what: &str, tools: &[(&str, &str)]) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "{what} needs root (shim guests, FUSE, loop devices, namespaces): run it as root"
        );
    }
    if !Path::new("/dev/fuse").exists() {
        anyhow::bail!("/dev/fuse is missing: load the fuse module (modprobe fuse)");
    }
    for (t, p) in tools {
        need(t, p)?;
    }
    Ok(())
}

/// The directory of [`FLEET_BINARIES`]: `given` (a `--libexec`) or the
/// running binary's (package `package`, named in the error that says how to
/// build them when one is missing).
pub fn libexec_dir(given: Option<&Path>, package: &str) -> Result<PathBuf> {
    let dir = match given {
        Some(p) => p.to_path_buf(),
        None => crate::exe_dir()?,
    };
    for (_, b) in FLEET_BINARIES {
        if !dir.join(b).is_file() {
            anyhow::bail!(
                "{} is missing: build it (cargo build --release -p xen-xl -p xen-backendd \
                 -p xen-pvguest -p xen-shimd -p xenstored -p {package}) or pass --libexec",
                dir.join(b).display()
            );
        }
    }
    Ok(dir)
}

/// Builds [`FLEET_BINARIES`] next to `exe` (a test's `CARGO_BIN_EXE_...`:
/// same target directory and profile) from the workspace at `workspace`;
/// that directory (the run's `--libexec`).
pub fn build_fleet_binaries(exe: &Path, workspace: &Path) -> Result<PathBuf> {
    build_binaries(
        exe.parent().context("<target>/<profile>")?,
        workspace,
        &FLEET_BINARIES,
    )
}

/// The busybox root of `examples/mkroot.sh` (raw ext4) in `dir`, built
/// from the workspace at `workspace` (a crate's directory there); its path.
pub fn base_image(workspace: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    mkroot(workspace, dir)?;
    // Only the raw image is the base; the others are not needed.
    let _ = std::fs::remove_file(dir.join("pv-root.qcow2"));
    let _ = std::fs::remove_file(dir.join("pv-root.cpio"));
    Ok(dir.join("pv-root.img"))
}

/// Creates the qcow2 overlay `overlay` on the raw image `base`
/// (`qemu-img create -f qcow2 -F raw -b BASE`).
pub fn qcow2_overlay(base: &Path, overlay: &Path) -> Result<()> {
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            base.to_str().context("utf-8 path")?,
            overlay.to_str().context("utf-8 path")?,
        ],
    )?;
    Ok(())
}

/// Whether every backend of `domid` is Connected (state 4), there being at
/// least `want` of them.
pub fn backends_connected(xs: &Client, domid: u16, want: usize) -> Result<bool> {
    let mut n = 0;
    for kind in xs.directory("/local/domain/0/backend").unwrap_or_default() {
        let dir = format!("/local/domain/0/backend/{kind}/{domid}");
        let Ok(devs) = xs.directory(&dir) else {
            continue;
        };
        for dev in devs {
            n += 1;
            let state = xs
                .read_string(&format!("{dir}/{dev}/state"))
                .unwrap_or_default();
            if state != "4" {
                return Ok(false);
            }
        }
    }
    Ok(n >= want)
}

/// `Rss` and `Pss` of process `pid` in KiB (`/proc/PID/smaps_rollup`; 0
/// when it is gone).
pub fn rss_pss(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// `RssAnon` of process `pid` in KiB (`/proc/PID/status`).
pub fn rss_anon(pid: i32) -> u64 {
    status_kib(pid, "RssAnon:")
}

/// The KiB figure `field` (e.g. `RssShmem:`) of `/proc/PID/status` (0
/// when missing).
pub fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Open descriptors and threads of process `pid` (0 when it is gone).
pub fn fds_threads(pid: i32) -> (usize, usize) {
    let count = |d: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{d}"))
            .map(Iterator::count)
            .unwrap_or(0)
    };
    (count("fd"), count("task"))
}

/// The files process `pid` maps (`/proc/PID/maps` path column, one entry
/// a line, with a ` (deleted)` suffix for removed files).
pub fn mapped_files(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            // address perms offset dev inode path
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5..)?.join(" ");
            path.starts_with('/').then_some(path)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Pids whose command line contains every one of `words`.
pub fn pids_with_cmdline(words: &[&str]) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            words.iter().all(|w| c.contains(w))
        })
        .collect()
}

/// KiB allocated by the files directly under `dir`.
pub fn allocated_kib(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.blocks() * 512 / 1024)
        .sum()
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    crate::loadavg().map_or(0.0, |l| l[0])
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
