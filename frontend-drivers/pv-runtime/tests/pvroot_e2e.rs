//! The PV guest as a machine booted from its own root disk, end to end:
//! `examples/mkroot.sh` builds the busybox root (raw, qcow2 and a newc
//! ramdisk) into a temp dir; `xl create -c` of an `examples/pv-root.cfg`
//! style config (`root = "/dev/xvda"`, `extra = "rw"`) runs under a pty as
//! a user's terminal would. At the guest's shell prompt the test checks
//! that the shell's machine is the guest's: its hostname is the domain's
//! name, PID 1 is its init, `ps` lists only its processes, `/` is the PV
//! disk; it writes a file and `poweroff`s: the domain powers off and Dom0
//! finds the file in the image (debugfs; the qcow2 converted first).
//! `reboot` at the prompt restarts the guest as a new domain (on_reboot =
//! restart). A ramdisk guest (`ramdisk = ...`, no disk) boots from its
//! tmpfs root with init as PID 1.
//!
//! Private `xen-shimd` and `xenstored` (threads of this process), the real
//! `xl`, `backendd` and `xen-pvguest` binaries. Needs root, busybox-static,
//! cpio, e2fsprogs, qemu-utils (tests/setup-host.sh).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xen_testhost::term::Terminal;
use xen_testhost::{need, stdout_of, Dom0};

const STEP: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Dom0 for these tests and the root images of `examples/mkroot.sh` in
/// its directory's `root/`.
fn dom0_with_root(prefix: &str) -> Result<(Dom0, PathBuf)> {
    Dom0::start_with_root(
        prefix,
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

/// `xl ARGS` on a pty.
fn terminal(host: &Dom0, args: &[&str]) -> Result<(Terminal, Child)> {
    let (mut t, c) = Terminal::spawn(host.xl_command(args))?;
    t.limit = STEP;
    Ok((t, c))
}

fn wait_exit(child: &mut Child) -> Result<std::process::ExitStatus> {
    xen_testhost::term::wait_exit(child, STEP)
}

/// An `examples/pv-root.cfg`-style config booting `image`.
fn root_cfg(name: &str, image: &Path, format: &str, actions: &str) -> String {
    format!(
        "name = \"{name}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\n\
         root = '/dev/xvda'\nextra = 'rw console=hvc0 pvguest.timeout=60'\n\
         disk = [ 'format={format}, vdev=xvda, access=rw, target={}' ]\n{actions}",
        image.display()
    )
}

/// `debugfs -R 'cat PATH'` of the ext4 image `img`.
fn debugfs_cat(img: &Path, path: &str) -> Result<String> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(img)
        .output()
        .context("run debugfs")?;
    stdout_of("debugfs", &out)
}

/// Boots `format` (raw or qcow2) to its shell, checks the machine from
/// inside, writes a file, powers off; Dom0 finds the file.
fn boot_shell_poweroff(format: &str) -> Result<()> {
    let (mut host, dir) = dom0_with_root(&format!("pvroot-{format}-"))?;
    let image = dir.join(if format == "raw" {
        "pv-root.img"
    } else {
        "pv-root.qcow2"
    });
    let name = format!("root{}{}", &format[..1], std::process::id());
    let cfg = host.write_config(&name, &root_cfg(&name, &image, format, ""))?;
    let cfg = cfg.to_str().context("utf-8")?.to_owned();

    // Act: xl create -c, as a user at a terminal.
    let (mut term, mut xl) = terminal(&host, &["create", "-c", &cfg])?;
    host.track_guest(&name);
    term.expect_from(0, &format!("{name}:/# "))
        .with_context(|| host.guest_log(&name))?;

    // Assert: the shell's machine is the guest's.
    let hostname = term.run("hostname")?;
    assert_eq!(hostname.trim(), name, "hostname");
    let init = term.run("cat /proc/1/comm; echo pid1=$(readlink /proc/1/exe)")?;
    assert!(init.contains("init"), "PID 1 is the guest's init: {init}");
    let ps = term.run("ps -o pid,comm")?;
    let procs: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        procs.len() <= 6 && !ps.contains("xen-pvguest") && !ps.contains("backendd"),
        "ps shows only the guest's processes: {ps}"
    );
    assert!(
        procs
            .iter()
            .any(|l| l.split_whitespace().next() == Some("1")),
        "PID 1 is listed: {ps}"
    );
    // Every guest process is in the domain's cgroup (xl's, `xen/dom<id>-<name>`),
    // which is the root of the guest's own cgroup namespace: inside, every
    // hierarchy reads `/`, and a cgroup file system mounted there holds only
    // the guest's processes (no host tree to move a process out to).
    let cg = term.run("cat /proc/self/cgroup")?;
    let cg_lines: Vec<&str> = cg.lines().filter(|l| l.contains(':')).collect();
    assert!(
        !cg_lines.is_empty() && cg_lines.iter().all(|l| l.trim_end().ends_with(":/")),
        "the guest sees its group as the root of its cgroup namespace: {cg}"
    );
    let mounted = term.run(
        "mkdir -p /run/cgt && mount -t cgroup -o pids none /run/cgt && \
         ls /run/cgt | grep -c '^xen$'; wc -l < /run/cgt/cgroup.procs; umount /run/cgt",
    )?;
    let counts: Vec<u64> = mounted
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        counts.len() == 2 && counts[0] == 0 && (1..=8).contains(&counts[1]),
        "a pids hierarchy mounted in the guest shows no host groups and only the guest's few processes: {mounted}"
    );
    // From Dom0: the guest's shell is in the domain's group.
    let domid = host
        .domid(&name)?
        .with_context(|| format!("{name} is not in xl list"))?;
    let group = host
        .guest_cgroup(domid)?
        .with_context(|| format!("the cgroup of domain {domid}"))?;
    let comms: Vec<String> = group
        .procs()?
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    assert!(
        comms.iter().any(|c| c == "sh") && comms.iter().any(|c| c == "xen-pvguest"),
        "the runtime and the guest's shell are in the domain's group: {comms:?}"
    );
    // The domain's OOM killer picks the guest's programs, not its kernel
    // (the runtime serves the disks they run from): they start ranked first.
    let adj = term.run("cat /proc/self/oom_score_adj")?;
    assert_eq!(
        adj.trim(),
        "1000",
        "the guest's programs are the OOM killer's first choice"
    );
    let runtime_adj: Vec<i32> = group
        .procs()?
        .iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "xen-pvguest")
        })
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/oom_score_adj")).ok())
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    assert!(
        runtime_adj.len() == 1 && runtime_adj[0] <= 0,
        "the runtime ranks below its guest's programs: {runtime_adj:?}"
    );
    // The runtime itself (the guest's kernel) is jailed once the guest
    // runs: the domain's own uid, the kept capabilities, seccomp.
    let runtime: Vec<u32> = group
        .procs()?
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "xen-pvguest")
        })
        .collect();
    assert_eq!(runtime.len(), 1, "one runtime: {runtime:?}");
    xen_testhost::assert_jailed(runtime[0], domid, xen_pvguest::jail::RUNTIME_KEPT_CAPS)?;
    assert!(
        host.guest_log(&name).contains(&format!(
            "pvguest jailed uid={}",
            xen_jail::domain_uid(domid)
        )),
        "the runtime says it is jailed: {}",
        host.guest_log(&name)
    );
    let root = term.run("test -x /sbin/demo && echo root-is-the-disk; stat -f -c %T /")?;
    assert!(root.contains("root-is-the-disk"), "{root}");
    assert!(root.contains("ext2/ext3"), "/ is ext4: {root}");
    let dev = term.run("ls /dev")?;
    for d in [
        "xvda", "hvc0", "console", "null", "zero", "urandom", "ptmx", "pts",
    ] {
        assert!(
            dev.split_whitespace().any(|w| w == d),
            "/dev has {d}: {dev}"
        );
    }
    assert!(!dev.contains("sda") && !dev.contains("fuse"), "{dev}");
    let w = term.run(&format!(
        "echo written-in-{name} > /root/note.txt && sync && echo wrote-ok"
    ))?;
    assert!(w.contains("wrote-ok"), "{w}");
    let from = term.mark();
    term.type_bytes(b"poweroff\n")?;
    term.expect_from(from, "pvguest shutdown reason=poweroff")
        .with_context(|| host.guest_log(&name))?;
    let st = wait_exit(&mut xl)?;
    assert!(st.success(), "xl create -c: {st}");
    // on_poweroff = destroy: the domain goes.
    let deadline = Instant::now() + STEP;
    while host.xl_ok(&["list"])?.contains(&name) {
        if Instant::now() >= deadline {
            bail!("{name} still listed after poweroff");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    host.untrack_guest(&name);

    // Dom0 finds the file in the image.
    let raw = if format == "raw" {
        image.clone()
    } else {
        let raw = dir.join("check.img");
        let out = Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&image)
            .arg(&raw)
            .output()?;
        stdout_of("qemu-img convert", &out)?;
        raw
    };
    eprintln!("the session on the terminal:\n{}", term.text());
    let note = debugfs_cat(&raw, "/root/note.txt")?;
    assert_eq!(note.trim(), format!("written-in-{name}"));
    let out = Command::new("fsck.ext4")
        .args(["-n", "-f"])
        .arg(&raw)
        .output()?;
    stdout_of("fsck.ext4 -n", &out)?;
    Ok(())
}

#[test]
fn test_pv_root_raw_boots_to_its_shell_and_poweroff_keeps_the_file() -> Result<()> {
    boot_shell_poweroff("raw")
}

#[test]
fn test_pv_root_qcow2_boots_to_its_shell_and_poweroff_keeps_the_file() -> Result<()> {
    boot_shell_poweroff("qcow2")
}

#[test]
fn test_pv_root_reboot_at_the_prompt_restarts_it_as_a_new_domain() -> Result<()> {
    let (mut host, dir) = dom0_with_root("pvroot-reboot-")?;
    let name = format!("rootb{}", std::process::id());
    let cfg = root_cfg(
        &name,
        &dir.join("pv-root.img"),
        "raw",
        "on_reboot = 'restart'\n",
    );
    host.create_guest(&name, &cfg)?;
    let first = host.domid(&name)?.context("listed")?;
    let (mut term, mut xl) = terminal(&host, &["console", &name])?;
    // The prompt may have been printed before we attached: ask for one.
    term.type_bytes(b"\n")?;
    term.expect_from(0, &format!("{name}:/# "))
        .with_context(|| host.guest_log(&name))?;
    term.type_bytes(b"reboot\n")?;
    // xl console returns when the domain goes.
    let _ = wait_exit(&mut xl)?;
    let deadline = Instant::now() + STEP;
    let second = loop {
        if let Some(d) = host.domid(&name)? {
            if d != first {
                break d;
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} did not come back as a new domain; log:\n{}",
                host.guest_log(&name)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(second, first);
    // The console log is appended to: the first boot's reboot, then the
    // second boot.
    let log = host.wait_log(&name, "pvguest shutdown reason=reboot", STEP)?;
    let deadline = Instant::now() + STEP;
    while host.guest_log(&name).matches("pv-root: up on").count() < 2 {
        if Instant::now() >= deadline {
            bail!("no second boot in the log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // xl destroy kills the runtime: the guest's init (and its whole PID
    // namespace) goes with it.
    let log = host.guest_log(&name);
    let init_pid: u32 = log
        .lines()
        .filter_map(|l| l.strip_prefix("pvboot init-started "))
        .next_back()
        .and_then(|l| l.split("pid=").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .context("the second boot's init pid")?;
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    assert_eq!(comm(init_pid).as_deref().map(str::trim), Some("init"));
    stdout_of("xl destroy", &host.destroy_guest(&name)?)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while comm(init_pid).as_deref().map(str::trim) == Some("init") {
        if Instant::now() >= deadline {
            bail!("the guest's init {init_pid} outlived xl destroy");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn test_pv_ramdisk_boots_a_tmpfs_root_with_init_as_pid_1() -> Result<()> {
    let (mut host, dir) = dom0_with_root("pvroot-ramdisk-")?;
    let name = format!("rootr{}", std::process::id());
    let cfg = format!(
        "name = \"{name}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\n\
         ramdisk = '{}'\n\
         extra = 'init=/bin/sh GREETING=\"hello there\" -- -c \"echo pid=$$ host=$(hostname) greeting=$GREETING root=$(stat -f -c %T /); poweroff -f\"'\n\
         on_poweroff = 'preserve'\n",
        dir.join("pv-root.cpio").display()
    );
    host.create_guest(&name, &cfg)?;
    let log = host.wait_log(&name, "pvguest shutdown", STEP)?;
    assert!(
        log.contains(&format!(
            "pid=1 host={name} greeting=hello there root=tmpfs"
        )),
        "{log}"
    );
    assert!(log.contains("pvguest shutdown reason=poweroff"), "{log}");
    Ok(())
}

#[test]
fn test_pv_root_init_exiting_is_a_crash_as_linux_panics() -> Result<()> {
    let (mut host, dir) = dom0_with_root("pvroot-panic-")?;
    let name = format!("rootp{}", std::process::id());
    let mut cfg = root_cfg(
        &name,
        &dir.join("pv-root.img"),
        "raw",
        "on_crash = 'preserve'\n",
    );
    cfg = cfg.replace("rw console=hvc0", "init=/bin/true");
    host.create_guest(&name, &cfg)?;
    let log = host.wait_log(&name, "pvguest shutdown", STEP)?;
    // /bin/true ran (it was not a failed exec) and its exit is the crash.
    assert!(
        log.contains("pvboot init-exited status=exit_status:_0 reason=crash"),
        "{log}"
    );
    assert!(log.contains("pvguest shutdown reason=crash"), "{log}");
    // An init that is not executable: EACCES, with what init saw of it.
    let name4 = format!("roote{}", std::process::id());
    let cfg = root_cfg(
        &name4,
        &dir.join("pv-root.img"),
        "raw",
        "on_crash = 'preserve'\n",
    )
    .replace("rw console=hvc0", "init=/etc/passwd");
    host.create_guest(&name4, &cfg)?;
    let log = host.wait_log(&name4, "pvguest shutdown", STEP)?;
    assert!(
        log.contains("no_working_init_found_(tried_/etc/passwd;_the_last_as_init_saw_it:_mode_100644_owner_0:0_on_a_mount_with_flags"),
        "{log}"
    );
    assert!(log.contains("/_mode_40755_owner_0,_init_as_0:0)"), "{log}");
    assert!(log.contains("Permission_denied"), "{log}");
    assert!(log.contains("pvguest shutdown reason=crash"), "{log}");
    // A root= that names a partition is a clear error.
    let name2 = format!("rootq{}", std::process::id());
    let cfg = root_cfg(
        &name2,
        &dir.join("pv-root.img"),
        "raw",
        "on_crash = 'preserve'\n",
    )
    .replace("root = '/dev/xvda'", "root = '/dev/xvda1'");
    host.create_guest(&name2, &cfg)?;
    let log = host.wait_log(&name2, "pvguest shutdown", STEP)?;
    assert!(log.contains("partitions_are_not_supported"), "{log}");
    assert!(log.contains("pvguest shutdown reason=crash"), "{log}");
    // rootfstype= is the list mount tries (none fits: Linux's "VFS: Unable
    // to mount root fs" panic); quiet leaves out the runtime's boot lines.
    let name3 = format!("rootv{}", std::process::id());
    let cfg = root_cfg(
        &name3,
        &dir.join("pv-root.img"),
        "raw",
        "on_crash = 'preserve'\n",
    )
    .replace("rw console=hvc0", "rootfstype=vfat,msdos quiet");
    host.create_guest(&name3, &cfg)?;
    let log = host.wait_log(&name3, "pvguest shutdown", STEP)?;
    assert!(
        log.contains("cannot_mount_the_root_file_system_from_/dev/xvda"),
        "{log}"
    );
    assert!(!log.contains("pvboot cmdline"), "quiet: {log}");
    assert!(log.contains("pvguest shutdown reason=crash"), "{log}");
    Ok(())
}

#[test]
fn test_pv_root_xl_shutdown_and_reboot_reach_busybox_init() -> Result<()> {
    let (mut host, dir) = dom0_with_root("pvroot-xlshut-")?;
    let name = format!("roots{}", std::process::id());
    let cfg = root_cfg(&name, &dir.join("pv-root.img"), "raw", "");
    host.create_guest(&name, &cfg)?;
    host.wait_log(&name, "pv-root: up on", STEP)?;
    // xl reboot: busybox init takes SIGTERM as reboot, ends with reboot(2)
    // (SIGHUP seen by the runtime), well before the 10 s SIGKILL.
    let first = host.domid(&name)?.context("listed")?;
    let t0 = Instant::now();
    host.xl_ok(&["reboot", &name])?;
    let deadline = Instant::now() + STEP;
    while host.domid(&name)?.is_none_or(|d| d == first) {
        if Instant::now() >= deadline {
            bail!("no restart; log:\n{}", host.guest_log(&name));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = host.guest_log(&name);
    assert!(
        log.contains("pvboot init-exited status=signal:_1_(SIGHUP)"),
        "init rebooted itself: {log}"
    );
    assert!(t0.elapsed() < Duration::from_secs(9), "{:?}", t0.elapsed());
    // xl shutdown: SIGUSR2, busybox init powers off (SIGINT).
    let deadline = Instant::now() + STEP;
    while host.guest_log(&name).matches("pv-root: up on").count() < 2 {
        if Instant::now() >= deadline {
            bail!("no second boot:\n{}", host.guest_log(&name));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    host.xl_ok(&["shutdown", "-w", &name])?;
    assert!(t0.elapsed() < Duration::from_secs(9), "{:?}", t0.elapsed());
    host.untrack_guest(&name);
    let log = host.guest_log(&name);
    assert!(
        log.contains("pvboot init-exited status=signal:_2_(SIGINT)"),
        "init powered off itself: {log}"
    );
    assert!(log.contains("pvguest shutdown reason=poweroff"), "{log}");
    Ok(())
}

#[test]
fn test_demo_guest_config_runs_its_init_as_pid_1_and_writes_the_image() -> Result<()> {
    // examples/pv-root-demo.cfg as the demo runs it, on a temp image and
    // without its vif (this test's Dom0 has no bridge).
    let (mut host, dir) = dom0_with_root("pvroot-demo-")?;
    let text = std::fs::read_to_string(workspace().join("examples/pv-root-demo.cfg"))?;
    let name = format!("rootd{}", std::process::id());
    let image = dir.join("pv-root.img");
    let cfg: String = text
        .lines()
        .filter(|l| !l.starts_with("vif"))
        .map(|l| {
            l.replace("\"pv-root-demo\"", &format!("\"{name}\""))
                .replace("target=pv-root.img", &format!("target={}", image.display()))
        })
        .collect::<Vec<_>>()
        .join("\n");
    host.create_guest(&name, &cfg)?;
    let log = host.wait_log(&name, "pvguest shutdown", STEP)?;
    assert!(
        log.contains(&format!("demo: I am PID 1 on {name}")),
        "{log}"
    );
    assert!(log.contains("demo: / is /dev/loop"), "{log}");
    assert!(log.contains("pvguest shutdown reason=poweroff"), "{log}");
    let txt = debugfs_cat(&image, "/root/demo.txt")?;
    assert!(
        txt.contains(&format!("written by {name} as PID 1")),
        "{txt}"
    );
    Ok(())
}

#[test]
fn test_pv_root_eth0_from_the_ip_kernel_argument_reaches_dom0() -> Result<()> {
    // A "Dom0" network namespace with a bridge (10.76.0.1) and backendd in
    // it; the guest's vif has no ip=: its rcS (examples/mkroot.sh) applies
    // Linux's ip=CLIENT::GW:NETMASK from the kernel command line.
    need("ping", "iputils-ping")?;
    let (mut host, dir) = dom0_with_root("pvroot-net-")?;
    let ns = xen_testhost::net::Netns::unique("xsr", "n")?;
    let br = xen_testhost::net::bridge_name("xr", "n")?;
    xen_testhost::net::make_bridge(&ns, &br, "10.76.0.1/24")?;
    let _backendd = xen_testhost::net::start_backendd_in(&host, &ns, &[])?;
    let name = format!("rootn{}", std::process::id());
    let cfg = format!(
        "name = \"{name}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\nroot = '/dev/xvda'\n\
         extra = 'ro ip=10.76.0.2::10.76.0.1:255.255.255.0 init=/bin/sh -- -c \"/etc/init.d/rcS; ip -4 -o addr show eth0; ip route; ping -c 2 -W 5 10.76.0.1 && echo ping-dom0-ok; poweroff -f\"'\n\
         disk = [ 'format=raw, vdev=xvda, access=ro, target={}' ]\n\
         vif = [ 'bridge={br}' ]\non_poweroff = 'preserve'\n",
        dir.join("pv-root.img").display()
    );
    host.create_guest(&name, &cfg)?;
    let log = host.wait_log(&name, "pvguest shutdown", STEP)?;
    assert!(log.contains("10.76.0.2/24"), "eth0 from ip=: {log}");
    assert!(log.contains("default via 10.76.0.1"), "the gateway: {log}");
    assert!(log.contains("ping-dom0-ok"), "{log}");
    assert!(log.contains("pvguest shutdown reason=poweroff"), "{log}");
    Ok(())
}

/// A guest filling a tmpfs past its memory: the domain's OOM killer takes
/// the guest's programs (they rank first), never the runtime that serves
/// its root disk, so the guest ends as a crash (its init killed, as Linux
/// panics), the runtime unmounts its root and exits, and `xl` reaps the
/// domain and its cgroup. (When the runtime itself was the victim, its exit
/// hung unmounting the root it served, and `xl destroy` could not reap it.)
#[test]
fn test_pv_root_tmpfs_hog_kills_the_guest_not_its_runtime() -> Result<()> {
    let (mut host, dir) = dom0_with_root("pvroot-tmpfs-")?;
    let name = format!("roott{}", std::process::id());
    let cfg = format!(
        "name = \"{name}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\n\
         root = '/dev/xvda'\n\
         extra = 'rw console=hvc0 pvguest.timeout=60 init=/bin/sh -- -c \"mkdir -p /run/fill && mount -t tmpfs -o size=500m t /run/fill && echo filling && dd if=/dev/zero of=/run/fill/f bs=1M count=400; echo fill-survived; sleep 1000\"'\n\
         disk = [ 'format=raw, vdev=xvda, access=rw, target={}' ]\n",
        dir.join("pv-root.img").display()
    );
    host.create_guest(&name, &cfg)?;
    let domid = host
        .domid(&name)?
        .with_context(|| format!("{name} is not in xl list"))?;
    let group = host
        .guest_cgroup(domid)?
        .with_context(|| format!("the cgroup of domain {domid}"))?;
    let log = host.wait_log(&name, "pvguest shutdown", STEP)?;
    // (Whole lines: the command line itself is logged too.)
    assert!(log.lines().any(|l| l.trim() == "filling"), "{log}");
    assert!(
        !log.lines().any(|l| l.trim() == "fill-survived"),
        "the hog was not stopped:\n{log}"
    );
    assert!(
        log.contains("init-exited status=signal:_9_(SIGKILL)"),
        "{log}"
    );
    // The runtime lived to report the end: the guest's init was killed.
    assert!(log.contains("pvguest shutdown reason=crash"), "{log}");
    assert!(
        group.oom_kills().unwrap_or(0) >= 1 || !group.exists(),
        "no OOM kill"
    );
    // xl reaps the domain (on_crash = destroy) and its group.
    let deadline = Instant::now() + Duration::from_secs(20);
    while host.xl_ok(&["list"])?.contains(&name) || group.exists() {
        if Instant::now() >= deadline {
            bail!(
                "domain {name} or its cgroup outlived the crash:\n{}\n{log}",
                host.xl_ok(&["list"])?
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
