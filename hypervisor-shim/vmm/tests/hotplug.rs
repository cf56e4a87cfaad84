//! Device hotplug into a running PVHVM guest: the kernel's `hotplug`
//! workload watches its `device/` directory, connects the disks and NICs
//! the toolstack adds while it runs, uses them (the disk self-test's
//! checksummed round trip; a smoltcp interface Dom0 pings), and takes them
//! down when the toolstack detaches them (frontend Closed, grants ended,
//! the device out of its table). Attach and detach write libxl's nodes
//! with the toolstack's code ([`common::hotplug`]).
//!
//! Checked from Dom0: the backend file holds the guest's pattern, the
//! TAP comes and goes, the nodes are gone, and after a detach the guest's
//! grant table and Dom0's mappings of it are as before the attach. The
//! NIC is detached under a ping flood, a disk in the middle of its I/O.
//!
//! Needs root, `/dev/kvm`, iproute2 and iputils-ping (tests/setup-host.sh);
//! fails loudly without. Traffic stays in the test's own namespace.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use common::hotplug::{
    block_attach, detach, grant_use, network_attach, played_disk_attach, wait_grant_use, wait_node,
    GrantUse,
};
use common::net::{
    bridge_name, bridge_ports, domid, exec, make_bridge, need, netns, start_backendd_in, wait_guest,
};
use common::{ok, pattern, Host};

const T: Duration = Duration::from_secs(60);

/// The seed of the last `hotplug: NAME self-test PASS round R seed S` line
/// for `name` in `log`.
fn pass_seed(log: &str, name: &str) -> Option<u64> {
    let head = format!("hotplug: {name} self-test PASS round ");
    log.lines()
        .rev()
        .filter_map(|l| l.split_once(&head).map(|(_, r)| r))
        .filter_map(|r| r.split_once(" seed ").map(|(_, s)| s))
        .find_map(|s| s.split_whitespace().next()?.parse().ok())
}

/// Whether the image at `path` holds the self-test's pattern with `seed`
/// at its first and last sector (the first and last of its spots).
fn image_has_pattern(path: &std::path::Path, seed: u64) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    for off in [0, size - 512] {
        let mut got = vec![0u8; 512];
        f.seek(SeekFrom::Start(off)).map_err(|e| e.to_string())?;
        f.read_exact(&mut got).map_err(|e| e.to_string())?;
        let mut want = vec![0u8; 512];
        pattern(&mut want, off, seed);
        if got != want {
            return Err(format!(
                "the sector at {off} is not the pattern of seed {seed}"
            ));
        }
    }
    Ok(())
}

/// Guest `name` (domain `d`, whose every device is gone) grants nothing
/// and Dom0 maps nothing of it (within 5 s), and it runs on.
fn assert_released_and_running(h: &Host, name: &str, d: u16) {
    let none = GrantUse {
        granted: 0,
        pinned: 0,
    };
    wait_grant_use(&h.shim_socket(), d, none, Duration::from_secs(5));
    let row = h.list_row(name).expect("the guest is listed");
    assert!(
        !row.contains('c'),
        "the guest did not crash: {row}\n{}",
        h.log(name)
    );
}

#[test]
fn test_pvhvm_guest_connects_uses_and_releases_a_hot_added_disk_and_nic() {
    // Arrange: a guest with a boot disk (xvda) and a NIC (eth0) on the
    // test's bridge, running the hotplug workload.
    need("ping", "iputils-ping");
    let mut h = Host::start("pvhvm-hotplug-");
    let ns = netns("hp");
    let br = bridge_name("hp");
    make_bridge(&ns, &br, "10.82.0.1/24");
    let _backendd = start_backendd_in(&h, &ns);
    let pid = std::process::id();
    let name = format!("pvhp{pid}");
    let boot_img = h.image("xvda.img", 8);
    let hot_img = h.image("xvdb.img", 16);
    let mac0 = format!("00:16:3e:52:{:02x}:05", pid as u8);
    let mac1 = format!("00:16:3e:52:{:02x}:06", pid as u8);
    let cfg = h.config_full(
        &name,
        "hotplug ip0=10.82.0.5/24 ip1=10.82.0.6/24",
        &[format!(
            "format=raw, vdev=xvda, access=rw, target={}",
            boot_img.display()
        )],
        1,
        &[format!("mac={mac0}, bridge={br}")],
        common::PRESERVE_ALL,
    );
    ok("xl create", &h.create(&name, &cfg));
    wait_guest(&h, &name, "hotplug: xvda self-test PASS round 1", T);
    wait_guest(&h, &name, "hotplug: eth0 10.82.0.5/24 up", T);
    let d = domid(&h, &name);
    let ping = |addr: &str| {
        exec(&ns, "ping", &["-c", "3", "-i", "0.2", "-W", "5", addr])
            .status
            .success()
    };
    assert!(ping("10.82.0.5"), "Dom0 pings the boot NIC");
    let shim = h.shim_socket();
    let before = grant_use(&shim, d);

    // Act: attach a second disk and a second NIC, use them, detach them.
    let t_attach = std::time::Instant::now();
    let disk = block_attach(
        &h,
        d,
        &format!(
            "format=raw, vdev=xvdb, access=rw, target={}",
            hot_img.display()
        ),
    );
    let nic = network_attach(&h, d, 1, &format!("mac={mac1}, bridge={br}"));
    let log = wait_guest(&h, &name, "hotplug: xvdb self-test PASS round 1", T);
    wait_guest(&h, &name, "hotplug: eth1 10.82.0.6/24 up", T);
    let attached_in = t_attach.elapsed();
    let pinged_hot = ping("10.82.0.6");
    let seed = pass_seed(&log, "xvdb").expect("the xvdb PASS line names its seed");
    let on_disk = image_has_pattern(&hot_img, seed);
    let tap1 = format!("vif{d}.1");
    let ports_attached = bridge_ports(&ns, &br);
    // The NIC is detached under a ping flood (every 10 ms until it is
    // gone; `-w` bounds it if the test fails first).
    let flood = ns
        .cmd("ping")
        .args(["-q", "-i", "0.01", "-w", "120", "10.82.0.6"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ping");
    std::thread::sleep(Duration::from_millis(500));
    let t_detach = std::time::Instant::now();
    detach(&h, &name, &disk, T);
    let disk_detached_in = t_detach.elapsed();
    detach(&h, &name, &nic, T);
    let nic_detached_in = t_detach.elapsed() - disk_detached_in;
    let log = wait_guest(&h, &name, "hotplug: xvdb removed", T);
    let log_nic = wait_guest(&h, &name, "hotplug: eth1 removed", T);
    eprintln!(
        "hotplug figures: attach of xvdb and eth1 to the self-test passed and eth1 up: {attached_in:?}; \
         detach (online=0, Closing, both Closed, nodes removed): xvdb {disk_detached_in:?}, eth1 {nic_detached_in:?}"
    );
    // Pings sent after the removal go unanswered; SIGINT has ping print
    // its summary (`ip netns exec` execs it: the child is ping itself).
    std::thread::sleep(Duration::from_millis(300));
    let ping_pid = nix::unistd::Pid::from_raw(flood.id() as i32);
    nix::sys::signal::kill(ping_pid, nix::sys::signal::Signal::SIGINT).expect("stop the flood");
    let flood = flood.wait_with_output().expect("wait for ping");
    let ports_detached = bridge_ports(&ns, &br);

    // Assert
    assert!(pinged_hot, "Dom0 pings the hot-added NIC:\n{log}");
    let flood_out = String::from_utf8_lossy(&flood.stdout);
    let count = |what: &str| -> u32 {
        flood_out
            .split([',', '\n'])
            .find_map(|w| w.trim().strip_suffix(what)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let (sent, received) = (count("packets transmitted"), count("received"));
    eprintln!("hotplug figures: ping flood over the detach: {sent} sent, {received} answered");
    assert!(
        received >= 10 && sent > received,
        "the NIC answered the flood until it was detached under it ({sent} sent, {received} answered):\n{flood_out}"
    );
    assert_eq!(on_disk, Ok(()), "the guest's writes reached the new disk");
    assert!(
        log.contains("hotplug: xvdb: new vbd 51728")
            && log.contains("hotplug: xvdb backend closing: frontend Closed"),
        "the guest probed the disk and closed it:\n{log}"
    );
    assert!(
        log_nic.contains("hotplug: eth1 backend closing: frontend Closed (interface down)"),
        "the guest closed the NIC:\n{log_nic}"
    );
    assert!(
        ports_attached.contains(&tap1),
        "the new vif's TAP {tap1} joined the bridge: {ports_attached:?}"
    );
    assert!(
        !ports_detached.contains(&tap1),
        "the detach removed the TAP {tap1}: {ports_detached:?}"
    );
    for path in [&disk.frontend, &disk.backend, &nic.frontend, &nic.backend] {
        assert_eq!(h.xs_read(path), None, "{path} was removed");
    }
    wait_grant_use(&shim, d, before, Duration::from_secs(5));
    assert!(!log_nic.contains("FAIL"), "no device failed:\n{log_nic}");
    // The boot devices are untouched: the NIC answers, the guest runs.
    assert!(ping("10.82.0.5"), "the boot NIC still answers");
    let row = h.list_row(&name).expect("the guest is listed");
    assert!(
        !row.contains('c'),
        "the guest did not crash: {row}\n{}",
        h.log(&name)
    );
}

#[test]
fn test_pvhvm_disk_detached_during_io_fails_its_requests_cleanly_and_reattaches() {
    // Arrange: a guest with no device at all; the hot-added disk runs its
    // self-test round after round.
    let mut h = Host::start("pvhvm-hotio-");
    let ns = netns("hi");
    let _backendd = start_backendd_in(&h, &ns);
    let pid = std::process::id();
    let name = format!("pvhi{pid}");
    let img = h.image("xvdb.img", 32);
    let cfg = h.config_full(
        &name,
        "hotplug loop=xvdb qd=16",
        &[],
        1,
        &[],
        common::PRESERVE_ALL,
    );
    ok("xl create", &h.create(&name, &cfg));
    wait_guest(&h, &name, "hotplug: watching device/", T);
    let d = domid(&h, &name);
    let shim = h.shim_socket();
    let spec = format!("format=raw, vdev=xvdb, access=rw, target={}", img.display());

    // Act: attach, let I/O run, detach in the middle of a round; attach
    // the same disk again.
    let disk = block_attach(&h, d, &spec);
    wait_guest(&h, &name, "hotplug: xvdb self-test PASS round 2", T);
    detach(&h, &name, &disk, T);
    let log = wait_guest(&h, &name, "hotplug: xvdb removed", T);
    let after_detach = grant_use(&shim, d);
    let again = block_attach(&h, d, &spec);
    wait_guest(&h, &name, "hotplug: xvdb: new vbd 51728", T);
    let log2 = {
        // The second connection's first round.
        let t0 = std::time::Instant::now();
        loop {
            let l = h.log(&name);
            if l.matches("hotplug: xvdb self-test PASS round 1 ").count() == 2 {
                break l;
            }
            assert!(
                t0.elapsed() < T,
                "the re-attached disk did not pass a round:\n{l}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    detach(&h, &name, &again, T);
    wait_guest(
        &h,
        &name,
        "hotplug: xvdb removed (vbd 51728): grants in use 0\n",
        T,
    );
    let final_log = h.log(&name);

    // Assert
    let closing = log
        .lines()
        .find(|l| l.contains("hotplug: xvdb backend closing: frontend Closed ("))
        .unwrap_or_else(|| panic!("no close report:\n{log}"));
    let nums: Vec<u64> = closing
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        nums.len() >= 2 && nums[nums.len() - 2] + nums[nums.len() - 1] >= 1,
        "requests were in flight at the detach (completed or failed): {closing}\n{log}"
    );
    assert!(
        log.contains("hotplug: xvdb removed (vbd 51728): grants in use 0"),
        "the guest ended every grant of the removed disk:\n{log}"
    );
    assert_eq!(
        after_detach,
        GrantUse {
            granted: 0,
            pinned: 0
        },
        "no grant left granted or mapped after the detach during I/O:\n{log}"
    );
    assert!(
        !final_log.contains("FAIL"),
        "no device failed, the re-attached disk passed:\n{log2}"
    );
    assert_released_and_running(&h, &name, d);
    let _ = ns;
}

#[test]
fn test_pvhvm_hostile_hot_added_backend_fails_only_its_device() {
    // Arrange: a guest with no device; the test plays the backend of a
    // hot-added disk and describes it with garbage once the frontend has
    // offered its ring.
    let mut h = Host::start("pvhvm-hothostile-");
    let ns = netns("hh");
    let _backendd = start_backendd_in(&h, &ns);
    let pid = std::process::id();
    let name = format!("pvhh{pid}");
    let img = h.image("xvdc.img", 8);
    let cfg = h.config_full(&name, "hotplug", &[], 1, &[], common::PRESERVE_ALL);
    ok("xl create", &h.create(&name, &cfg));
    wait_guest(&h, &name, "hotplug: watching device/", T);
    let d = domid(&h, &name);
    let shim = h.shim_socket();

    // Act: the played backend offers (InitWait), the frontend grants its
    // ring (Initialised), the backend "connects" with a size that is not
    // a number; then a real disk is attached.
    let bad = played_disk_attach(
        &h,
        d,
        "vdev=xvdb, access=rw, target=/nonexistent",
        "hostile",
    );
    h.xs_write(&format!("{}/state", bad.backend), "2");
    wait_node(
        &h,
        &name,
        &format!("{}/state", bad.frontend),
        "3",
        T,
        "the frontend offers its ring to the played backend",
    );
    let offered = grant_use(&shim, d);
    h.xs_write(&format!("{}/sectors", bad.backend), "lots");
    h.xs_write(&format!("{}/state", bad.backend), "4");
    let log = wait_guest(&h, &name, "hotplug: xvdb removed", T);
    let after_fail = grant_use(&shim, d);
    let good = block_attach(
        &h,
        d,
        &format!("format=raw, vdev=xvdc, access=rw, target={}", img.display()),
    );
    let log_good = wait_guest(&h, &name, "hotplug: xvdc self-test PASS round 1", T);
    detach(&h, &name, &good, T);
    wait_guest(&h, &name, "hotplug: xvdc removed", T);

    // Assert
    assert!(
        log.contains("hotplug: xvdb FAIL:") && log.contains("sectors"),
        "the frontend refused the garbage and failed the device:\n{log}"
    );
    assert!(
        offered.granted >= 1,
        "the ring was granted to the played backend: {offered:?}"
    );
    assert_eq!(
        after_fail,
        GrantUse {
            granted: 0,
            pinned: 0
        },
        "the failed device's grants were ended:\n{log}"
    );
    assert!(
        !log_good.contains("hotplug: xvdc self-test FAIL"),
        "the next disk works:\n{log_good}"
    );
    assert_released_and_running(&h, &name, d);
    let _ = (ns, bad);
}
