//! PVHVM guests end to end, as a user runs them: `xl create` of a
//! `type = "pvh"` configuration boots the PVHVM kernel under `xen-vmm` in a
//! KVM virtual machine; blkfront connects to backendd's blkback through
//! xenstore; `xl list` and `xl destroy` work. Needs root and `/dev/kvm`.

mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::{ok, pattern, Host};

const T: Duration = Duration::from_secs(30);

#[test]
fn test_pvhvm_kernel_boots_prints_and_powers_off() {
    let mut h = Host::start("pvhvm-hello-");
    let cfg = h.config("pvh-hello", "hello", &[]);
    ok("xl create", &h.create("pvh-hello", &cfg));
    let log = h.wait_log("pvh-hello", "hello from a PVHVM guest", T);
    assert!(log.contains("up at CPL3"), "log:\n{log}");
    // SCHEDOP_shutdown(poweroff) through the gate: shut down, not crashed.
    let row = h.wait_state("pvh-hello", 's', T);
    assert!(!row.contains('c'), "{row}");
}

#[test]
fn test_pvhvm_second_vcpu_runs_in_its_own_thread() {
    let mut h = Host::start("pvhvm-smp-");
    let cfg = h.config_vcpus("pvh-smp", "smp", &[], 2);
    ok("xl create", &h.create("pvh-smp", &cfg));
    let log = h.wait_log("pvh-smp", "pvhvm-kernel: shutdown", T);
    assert!(
        log.contains("smp: vCPU 1 came up in its own thread, counted to 1000"),
        "log:\n{log}"
    );
    let row = h.wait_state("pvh-smp", 's', T);
    assert_eq!(row.split_whitespace().nth(3), Some("2"), "{row}");
}

#[test]
fn test_pvhvm_guest_reads_xenstore_over_its_ring() {
    let mut h = Host::start("pvhvm-xs-");
    let cfg = h.config("pvh-xs", "xenstore", &[]);
    ok("xl create", &h.create("pvh-xs", &cfg));
    h.wait_log("pvh-xs", "xenstore name = pvh-xs", T);
    h.wait_state("pvh-xs", 's', T);
}

#[test]
fn test_pvhvm_disk_selftest_passes_and_data_reaches_the_image() {
    let mut h = Host::start("pvhvm-disk-");
    let img = h.image("disk.img", 64);
    let cfg = h.config(
        "pvh-disk",
        "selftest seed=42",
        &[format!(
            "format=raw, vdev=xvda, access=rw, target={}",
            img.display()
        )],
    );
    let t0 = Instant::now();
    ok("xl create", &h.create("pvh-disk", &cfg));
    let log = h.wait_log("pvh-disk", "disk self-test:", T);
    let elapsed = t0.elapsed();
    assert!(log.contains("disk self-test: PASS"), "log:\n{log}");
    assert!(log.contains("Connected in"), "log:\n{log}");
    eprintln!("xl create to self-test verdict: {elapsed:?}");
    h.wait_state("pvh-disk", 's', T);
    // Dom0 sees what the guest wrote: the first spot (offset 0, one sector)
    // and the last (the disk's last sector) hold the seed-42 pattern.
    let f = std::fs::File::open(&img).expect("open image");
    let mut got = vec![0u8; 512];
    let mut want = vec![0u8; 512];
    f.read_exact_at(&mut got, 0).expect("read image");
    pattern(&mut want, 0, 42);
    assert_eq!(got, want, "sector 0 of the image");
}

#[test]
fn test_pvhvm_guest_is_listed_while_busy_and_destroy_stops_it() {
    let mut h = Host::start("pvhvm-busy-");
    let img = h.image("busy.img", 64);
    let cfg = h.config(
        "pvh-busy",
        "blkload pattern=randread bs=4096 qd=8 secs=600",
        &[format!(
            "format=raw, vdev=xvda, access=rw, target={}",
            img.display()
        )],
    );
    ok("xl create", &h.create("pvh-busy", &cfg));
    h.wait_log("pvh-busy", "Connected in", T);
    let row = h.list_row("pvh-busy").expect("listed while it runs");
    let flags = row.split_whitespace().nth(4).unwrap_or_default().to_owned();
    assert!(!flags.contains('s') && !flags.contains('c'), "{row}");
    // The VMM is jailed as Firecracker's jailer does: its domain's uid, no
    // capabilities, seccomp, no_new_privs, its domain's directory as root;
    // the guest runs on.
    let domid = h.domid("pvh-busy").expect("xl list").expect("listed");
    let group = h
        .guest_cgroup(domid)
        .expect("the domain's cgroup")
        .expect("a cgroup");
    let vmm: Vec<u32> = group
        .procs()
        .expect("procs")
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "xen-vmm")
        })
        .collect();
    assert_eq!(vmm.len(), 1, "one VMM in the domain's cgroup: {vmm:?}");
    xen_testhost::assert_jailed(vmm[0], domid, &[]).expect("the VMM is jailed");
    let root = std::fs::read_link(format!("/proc/{}/root", vmm[0])).expect("its root");
    assert_eq!(
        root,
        xen_shim_proto::domain_socket_dir(&h.dir.path().join("shim.sock"), domid),
        "the VMM's root is its domain's directory"
    );
    let log = h.wait_vmm_log("pvh-busy", "jailed", T);
    assert!(log.contains("jailed"), "{log}");
    ok("xl destroy", &h.xl(&["destroy", "pvh-busy"]));
    assert!(
        h.list_row("pvh-busy").is_none(),
        "still listed after destroy"
    );
    // The VMM process (and its KVM VM) is gone: no process is left with
    // this test's shim socket in its environment.
    let marker = format!(
        "{}={}",
        xen_shim_proto::ENV_SOCKET,
        h.dir.path().join("shim.sock").display()
    );
    let t0 = Instant::now();
    while vmm_alive(&marker) {
        assert!(t0.elapsed() < T, "the VMM survived xl destroy");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn test_pvhvm_toolstack_shutdown_stops_a_busy_guest() {
    let mut h = Host::start("pvhvm-shut-");
    let img = h.image("shut.img", 64);
    let cfg = h.config(
        "pvh-shut",
        "blkload pattern=randread bs=4096 qd=4 secs=600",
        &[format!(
            "format=raw, vdev=xvda, access=rw, target={}",
            img.display()
        )],
    );
    ok("xl create", &h.create("pvh-shut", &cfg));
    h.wait_log("pvh-shut", "Connected in", T);
    let control = xen_shim_dom0::Control::connect(&h.dir.path().join("shim.sock"))
        .expect("connect to the shim");
    let d = control
        .list_domains()
        .expect("list")
        .into_iter()
        .find(|d| d.name == "pvh-shut")
        .expect("the guest is a shim domain");
    control
        .shutdown_domain(d.domid, xen_shim_proto::protocol::ShutdownReason::Poweroff)
        .expect("shutdown");
    h.wait_vmm_log("pvh-shut", "the toolstack shut the domain down", T);
    h.wait_state("pvh-shut", 's', T);
    let marker = format!(
        "{}={}",
        xen_shim_proto::ENV_SOCKET,
        h.dir.path().join("shim.sock").display()
    );
    let t0 = Instant::now();
    while vmm_alive(&marker) {
        assert!(t0.elapsed() < T, "the VMM survived the shutdown");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn test_pvhvm_guest_survives_a_shim_daemon_restart() {
    let mut h = Host::start("pvhvm-restart-");
    let img = h.image("restart.img", 64);
    let cfg = h.config(
        "pvh-restart",
        "blkload pattern=randread bs=4096 qd=4 secs=4",
        &[format!(
            "format=raw, vdev=xvda, access=rw, target={}",
            img.display()
        )],
    );
    ok("xl create", &h.create("pvh-restart", &cfg));
    h.wait_log("pvh-restart", "Connected in", T);
    // The data path (ring, grants, ioeventfd doorbells) never goes through
    // the daemon: the load goes on while it restarts, and the VMM
    // reattaches so that the guest's shutdown reaches the new daemon.
    h.restart_shim();
    let log = h.wait_log("pvh-restart", "pvhvm-kernel: shutdown (reason 0)", T);
    assert!(log.contains("{\"blkload\":1"), "log:\n{log}");
    h.wait_state("pvh-restart", 's', T);
}

fn vmm_alive(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path().join("exe"))
                .is_ok_and(|x| x.file_name() == Some(std::ffi::OsStr::new("xen-vmm")))
        })
        .filter_map(|e| std::fs::read(e.path().join("environ")).ok())
        .any(|env| env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()))
}
