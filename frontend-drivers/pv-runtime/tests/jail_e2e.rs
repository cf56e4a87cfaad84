//! The jailed runtime (`xen_pvguest::jail`) end to end: `xl create` starts
//! the runtime with `XEN_JAIL=1`; once the domain is set up the runtime is
//! its domain's uid with the kept capabilities, `no_new_privs` and its
//! seccomp allow-list, and a syscall outside the list kills it with
//! `SIGSYS`, said in its log, which xl sees as the domain crashing.
//! (The booted machine's jail is checked in `pvroot_e2e`.)
//!
//! Private `xen-shimd` and `xenstored` (threads of this process), the real
//! `xl`, `backendd` and `xen-pvguest` binaries. Needs root.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xen_testhost::Dom0;

const STEP: Duration = Duration::from_secs(60);

fn dom0(prefix: &str) -> Result<Dom0> {
    Dom0::start_for_pv_guests(
        prefix,
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

/// An idle PV domain (no disk, no init: the runtime idles once set up).
fn idle_cfg(name: &str) -> String {
    format!("name = \"{name}\"\ntype = 'pv'\nmemory = 32\nvcpus = 1\non_crash = 'preserve'\n")
}

/// The pid of domain `domid`'s runtime (the `xen-pvguest` in its cgroup).
fn runtime_pid(host: &Dom0, domid: u16) -> Result<u32> {
    let group = host
        .guest_cgroup(domid)?
        .with_context(|| format!("the cgroup of domain {domid}"))?;
    let pids: Vec<u32> = group
        .procs()?
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "xen-pvguest")
        })
        .collect();
    match pids[..] {
        [p] => Ok(p),
        _ => bail!("not one runtime in the domain's cgroup: {pids:?}"),
    }
}

fn runtime_log(host: &Dom0, name: &str) -> String {
    std::fs::read_to_string(host.rundir().join(format!("pvguest-{name}.log"))).unwrap_or_default()
}

#[test]
fn test_jail_idle_runtime_runs_as_its_domain_uid_with_seccomp() -> Result<()> {
    let mut host = dom0("jail-idle-")?;
    let name = format!("jidle{}", std::process::id());
    host.create_guest(&name, &idle_cfg(&name))?;
    let domid = host.domid(&name)?.context("listed")?;
    let pid = runtime_pid(&host, domid)?;
    let t0 = Instant::now();
    while !host.guest_log(&name).contains("pvguest jailed") {
        if t0.elapsed() > STEP {
            bail!(
                "the runtime never said it is jailed:\n{}",
                host.guest_log(&name)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    xen_testhost::assert_jailed(pid, domid, xen_pvguest::jail::RUNTIME_KEPT_CAPS)?;
    // The toolstack's shutdown still reaches the jailed runtime, which
    // reports it through its shim connection.
    host.xl_ok(&["shutdown", "-w", &name])?;
    let t0 = Instant::now();
    while host.domid(&name)?.is_some() {
        if t0.elapsed() > STEP {
            bail!("{name} still listed after xl shutdown -w");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    host.untrack_guest(&name);
    let console = host.guest_log(&name);
    assert!(
        console.contains("pvguest shutdown reason=poweroff"),
        "{console}"
    );
    let log = runtime_log(&host, &name);
    assert!(!log.contains("seccomp denied"), "{log}");
    Ok(())
}

#[test]
fn test_jail_denied_syscall_kills_the_runtime_with_sigsys() -> Result<()> {
    let mut host = dom0("jail-denied-")?;
    let name = format!("jdeny{}", std::process::id());
    let cfg = host.write_config(&name, &idle_cfg(&name))?;
    // The test-only flag: the runtime makes one syscall outside its
    // allow-list (getppid) right after jailing itself.
    let out = host
        .xl_command(&["create", cfg.to_str().context("utf-8")?])
        .env(xen_jail::ENV_JAIL_PROBE, "1")
        .output()?;
    host.track_guest(&name);
    xen_testhost::stdout_of("xl create", &out)?;
    let t0 = Instant::now();
    loop {
        let list = host.xl_ok(&["list", &name]).unwrap_or_default();
        let crashed = list
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(4).is_some_and(|f| f.contains('c')));
        if crashed {
            break;
        }
        if t0.elapsed() > STEP {
            bail!(
                "{name} did not crash: {list}\n{}",
                runtime_log(&host, &name)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = runtime_log(&host, &name);
    assert!(
        log.contains(&format!(
            "xen-jail: seccomp denied syscall {}",
            libc::SYS_getppid
        )),
        "the runtime's log names the denied syscall:\n{log}"
    );
    Ok(())
}

#[test]
fn test_jail_runtime_reattaches_through_its_domain_socket_after_a_shim_restart() -> Result<()> {
    let mut host = dom0("jail-restart-")?;
    let name = format!("jrest{}", std::process::id());
    host.create_guest(&name, &idle_cfg(&name))?;
    let t0 = Instant::now();
    while !host.guest_log(&name).contains("pvguest jailed") {
        if t0.elapsed() > STEP {
            bail!(
                "the runtime never said it is jailed:\n{}",
                host.guest_log(&name)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The jailed runtime cannot reach the root-only control socket: it
    // reattaches through its domain's own socket.
    host.restart_shim()?;
    let t0 = Instant::now();
    while !host.guest_log(&name).contains("pvguest reattached") {
        if t0.elapsed() > STEP {
            bail!(
                "no reattach:\n{}\n{}",
                host.guest_log(&name),
                runtime_log(&host, &name)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The new daemon drives it: xl shutdown reaches it and it reports back.
    host.xl_ok(&["shutdown", "-w", &name])?;
    host.untrack_guest(&name);
    assert!(
        host.guest_log(&name)
            .contains("pvguest shutdown reason=poweroff"),
        "{}",
        host.guest_log(&name)
    );
    Ok(())
}
