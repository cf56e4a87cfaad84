//! The two-host rig ([`xen_testhost::twohosts`]): two complete Dom0 stacks,
//! each started by `xl` inside its own network and mount namespaces, on
//! one L2 segment with a client and an NBD server both reach. PVHVM guests
//! (the VMM tests' kernel) run on both with their disks on NBD exports;
//! each host lists only its own; a host survives the other's Dom0 dying; a
//! guest saved on A and restored on B answers the client on the same
//! address, and a download running across the move completes intact on
//! the same TCP connection (also when the client's window updates are
//! lost in the move); a guest live-migrated A -> B -> A -> B with
//! `xl migrate --tcp` keeps one download's connection, its address and its
//! disk self-test passing, and a migration whose receiver is killed
//! half-way leaves it running on the source; nothing is left after the
//! drop, also after a failing test or a killed run. Needs root, `/dev/kvm`, `nbdkit`, `curl`;
//! fails loudly without them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use xen_testhost::twohosts::{Host, TwoHosts, SEGMENT, TWO_HOSTS_BINARIES};

/// How long a guest gets to come up (debug binaries, a shared machine).
const T: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `<target>/<profile>` of this test binary (`.../deps/twohosts-...`).
fn profile_dir() -> PathBuf {
    std::env::current_exe()
        .expect("the test's own path")
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/deps")
        .to_path_buf()
}

/// Builds what runs inside the hosts (once per test binary).
fn libexec() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        xen_testhost::build_binaries(&profile_dir(), &workspace(), &TWO_HOSTS_BINARIES)
            .unwrap_or_else(|e| panic!("build the hosts' binaries: {e:#}"))
    })
    .clone()
}

/// The PVHVM kernel the guests boot (built once per test binary).
fn kernel() -> PathBuf {
    static K: OnceLock<PathBuf> = OnceLock::new();
    K.get_or_init(|| {
        let target = profile_dir().parent().expect("<target>").to_path_buf();
        xen_testhost::build_pvhvm_kernel(&target, &workspace()).unwrap_or_else(|e| panic!("{e:#}"))
    })
    .clone()
}

/// Fails loudly unless KVM and the tools are there; builds; starts the rig
/// and checks it came up within 10 s.
fn rig() -> TwoHosts {
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        "/dev/kvm is missing or cannot be opened: these tests run PVHVM guests (load kvm, run as root)"
    );
    xen_testhost::need("curl", "curl").unwrap_or_else(|e| panic!("{e:#}"));
    let (libexec, _) = (libexec(), kernel());
    let t0 = Instant::now();
    let t = TwoHosts::start(&libexec).unwrap_or_else(|e| panic!("start the two hosts: {e:#}"));
    let took = t0.elapsed();
    eprintln!("two hosts set up in {took:?}");
    assert!(took < Duration::from_secs(10), "setting up took {took:?}");
    t
}

/// A guest's MAC, unique to this test (pid) and guest (`n`).
fn mac(n: u8) -> String {
    let pid = std::process::id();
    format!(
        "00:16:3e:{:02x}:{:02x}:{n:02x}",
        (pid >> 8) as u8,
        pid as u8
    )
}

/// Writes a PVHVM config for guest `name` (64 MiB) running `extra`, with
/// its disk on NBD export `target` and, given a MAC, a vif on the hosts'
/// bridge, into the shared directory; its path.
fn config(t: &TwoHosts, name: &str, extra: &str, target: &str, mac: Option<&str>) -> String {
    let vif = mac.map_or_else(String::new, |m| {
        format!("vif = [ 'mac={m}, bridge={}' ]\n", t.bridge)
    });
    // An RBD disk is libxl's qdisk kind.
    let qdisk = if target.starts_with("rbd:") {
        "backendtype=qdisk, "
    } else {
        ""
    };
    let text = format!(
        "name = \"{name}\"\ntype = \"pvh\"\nmemory = 64\nvcpus = 1\nkernel = \"{}\"\n\
         extra = \"{extra}\"\ndisk = [ 'format=raw, vdev=xvda, access=rw, {qdisk}target={target}' ]\n\
         {vif}on_poweroff = \"preserve\"\non_crash = \"preserve\"\n",
        kernel().display()
    );
    let p = t.shared().join(format!("{name}.cfg"));
    std::fs::write(&p, text).expect("write the config");
    p.to_str().expect("utf-8 path").to_owned()
}

/// Creates on `host` a netserve guest `name` at `<SEGMENT>.<ip>` with its
/// disk on a new 16 MiB NBD export `<name>.img`; waits until it serves.
fn netserve_guest(t: &TwoHosts, host: &Host, name: &str, ip: u8) {
    let target = t.nbd_export(&format!("{name}.img"), 16).expect("an export");
    let cfg = config(
        t,
        name,
        &format!("netserve ip={SEGMENT}.{ip}/24"),
        &target,
        Some(&mac(ip)),
    );
    host.xl_ok(&["create", &cfg])
        .unwrap_or_else(|e| panic!("{e:#}"));
    host.wait_log(name, &format!("netserve: {SEGMENT}.{ip}/24 up"), T)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Whether a new 1000-byte download from the guest at `addr` succeeds
/// (tells a stalled connection from a guest that lost its network).
fn fresh_download_ok(t: &TwoHosts, addr: &str) -> anyhow::Result<bool> {
    t.client_exec(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            &format!("http://{addr}/bytes/1000"),
        ],
    )
    .map(|o| o.status.success() && o.stdout == bytes_body(1000))
}

/// `/bytes/N`'s body: byte `i` is `b'a' + i % 26`.
fn bytes_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The client pings `<SEGMENT>.<ip>` and fetches 100 kB from its HTTP
/// server; panics with why not.
fn client_reaches(t: &TwoHosts, ip: u8) {
    let addr = format!("{SEGMENT}.{ip}");
    assert!(
        t.client_pings(&addr, 5).expect("run ping"),
        "the client gets no ping answer from {addr}"
    );
    let out = t
        .client_exec(
            "curl",
            &[
                "-sS",
                "--max-time",
                "20",
                &format!("http://{addr}/bytes/100000"),
            ],
        )
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl from {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == bytes_body(100_000),
        "the body from {addr} differs"
    );
}

/// The largest gap between two successive replies in `ping -D` output
/// (`None`: fewer than two replies).
fn largest_reply_gap(out: &str) -> Option<Duration> {
    let stamps: Vec<f64> = out
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    stamps
        .windows(2)
        .map(|w| Duration::from_secs_f64((w[1] - w[0]).max(0.0)))
        .max()
}

/// The client's `TCPToZeroWindowAdv` count (zero windows it advertised).
fn zero_window_adverts(t: &TwoHosts) -> u64 {
    let out = t
        .client_exec("cat", &["/proc/net/netstat"])
        .expect("read the client's /proc/net/netstat");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ext = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (ext.next(), ext.next());
    names
        .zip(values)
        .and_then(|(n, v)| {
            n.split_whitespace()
                .zip(v.split_whitespace())
                .find(|(n, _)| *n == "TCPToZeroWindowAdv")
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("no TCPToZeroWindowAdv in the client's netstat:\n{text}"))
}

/// A process (its pid written to a file) that the test stops and
/// continues; continued on drop, so that a failing test never leaves it
/// stopped (and the threads waiting for it).
struct Stopped(nix::unistd::Pid);

impl Stopped {
    /// Waits up to 5 s for the pid in `pidfile`.
    fn new(pidfile: &Path) -> Stopped {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pid = std::fs::read_to_string(pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let Some(pid) = pid {
                return Stopped(nix::unistd::Pid::from_raw(pid));
            }
            assert!(
                Instant::now() < deadline,
                "no pid in {} within 5 s",
                pidfile.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.0, sig).unwrap_or_else(|e| panic!("{sig} to {}: {e}", self.0));
    }

    fn stop(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    fn cont(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// Whether every listed pid is a process.
fn alive(pids: &[i32]) -> bool {
    pids.iter()
        .all(|p| Path::new(&format!("/proc/{p}")).exists())
}

#[test]
fn test_two_hosts_run_separate_stacks_on_one_segment_and_leave_nothing() {
    let t = rig();
    let (a, b) = (&t.a, &t.b);

    // A netserve guest on each host, disks on the shared NBD server.
    netserve_guest(&t, a, "ga", 10);
    netserve_guest(&t, b, "gb", 11);
    // Real I/O through each host's blkback to the NBD server: a disk
    // self-test guest on each.
    for (h, name, seed) in [(a, "sa", 7u64), (b, "sb", 8)] {
        let target = t.nbd_export(&format!("{name}.img"), 16).expect("an export");
        let cfg = config(&t, name, &format!("selftest seed={seed}"), &target, None);
        h.xl_ok(&["create", &cfg])
            .unwrap_or_else(|e| panic!("{e:#}"));
        let log = h
            .wait_log(name, "disk self-test:", T)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(log.contains("disk self-test: PASS"), "{name}:\n{log}");
        let mut head = [0u8; 512];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(t.exports().join(format!("{name}.img"))).expect("open export"),
            &mut head,
            0,
        )
        .expect("read the export");
        assert!(
            head.iter().any(|&x| x != 0),
            "{name}'s writes did not reach the NBD export"
        );
    }

    // Both stacks run, each in its own namespaces, none shared.
    let pa = a.service_pids().unwrap_or_else(|e| panic!("{e:#}"));
    let pb = b.service_pids().unwrap_or_else(|e| panic!("{e:#}"));
    let (in_a, in_b) = (a.processes(), b.processes());
    for p in &pa {
        assert!(in_a.contains(p) && !in_b.contains(p), "A's service {p}");
        assert!(!pb.contains(p), "A's service {p} is also B's");
    }
    for p in &pb {
        assert!(in_b.contains(p) && !in_a.contains(p), "B's service {p}");
    }
    assert!(
        !in_a.contains(&(std::process::id() as i32)),
        "the test process is not in a host"
    );
    // ...on the default paths, which are each host's own directories.
    for h in [a, b] {
        for p in [
            "run/xen-shim/control.sock",
            "run/xenstored/socket",
            "lib/xenstored",
        ] {
            assert!(h.dir.join(p).exists(), "host {}: no /{p}", h.tag);
        }
        let mems = std::fs::read_dir(h.shm.join("xen-shim"))
            .expect("the host's memory directory")
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.ends_with(".mem") && !n.starts_with("dom0-")
            })
            .count();
        assert_eq!(mems, 2, "host {}: memory files of its two guests", h.tag);
    }

    // The client reaches both guests across the two bridges.
    client_reaches(&t, 10);
    client_reaches(&t, 11);

    // Each host lists only its own guests.
    let mut la = a.domains().expect("xl list on A");
    let mut lb = b.domains().expect("xl list on B");
    la.sort();
    lb.sort();
    assert_eq!(la, ["ga", "sa"], "xl list on A");
    assert_eq!(lb, ["gb", "sb"], "xl list on B");

    // B's Dom0 dies; A and its guest go on.
    let killed = b.kill_services().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(killed.len(), 6, "B's services and supervisors: {killed:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pb.iter().any(|p| alive(&[*p])) {
        assert!(Instant::now() < deadline, "B's services still run: {pb:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(&pa), "A's services died with B's");
    client_reaches(&t, 10);
    let mut la = a.domains().expect("xl list on A after B's Dom0 died");
    la.sort();
    assert_eq!(la, ["ga", "sa"], "xl list on A after B's Dom0 died");
    assert!(
        !b.xl(&["list"]).expect("run xl").status.success(),
        "xl list on B answers without B's shim"
    );

    // Everything goes with the rig.
    let footprint = t.footprint();
    assert!(
        footprint.pids.len() > 12,
        "the footprint misses processes: {footprint:?}"
    );
    drop(t);
    let left = footprint.leftovers();
    assert!(left.is_empty(), "left after the drop:\n{}", left.join("\n"));
}

#[test]
fn test_two_hosts_guest_saved_on_a_restored_on_b_keeps_its_address_and_connection() {
    let t = rig();
    let (a, b) = (&t.a, &t.b);
    netserve_guest(&t, a, "gm", 20);
    client_reaches(&t, 20);

    // The client downloads from the guest (curl reading at most 8 MB/s)
    // and pings it every 10 ms while it is saved on A and restored on B.
    // The hard case, made certain: curl stops reading before the save, so
    // the client's buffer fills and it advertises a zero window with all
    // the guest sent acknowledged; curl reads on while the guest is saved,
    // so the client's window updates are lost. The restored guest must
    // probe the window (netserve's keep-alive), or the connection stalls
    // for good.
    let file = t.shared().join("gm.save");
    let file = file.to_str().expect("utf-8 path");
    let addr = format!("{SEGMENT}.20");
    const N: usize = 40_000_000;
    let pidfile = t.dir().join("curl.pid");
    let script = format!(
        "echo $$ > {}; exec curl -sS --max-time 30 --limit-rate 8M http://{addr}/bytes/{N}",
        pidfile.display()
    );
    let zero_windows_before = zero_window_adverts(&t);
    let (download, pings, saved, moved) = std::thread::scope(|s| {
        let dl = s.spawn(|| t.client_exec("sh", &["-c", &script]));
        let pg = s.spawn(|| t.client_exec("ping", &["-D", "-n", "-i", "0.01", "-w", "10", &addr]));
        let curl = Stopped::new(&pidfile);
        std::thread::sleep(Duration::from_millis(500));
        curl.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while zero_window_adverts(&t) == zero_windows_before {
            assert!(
                Instant::now() < deadline,
                "the client advertised no zero window within 10 s of curl stopping"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let t0 = Instant::now();
        a.xl_ok(&["save", "gm", file])
            .unwrap_or_else(|e| panic!("{e:#}"));
        let saved = t0.elapsed();
        curl.cont();
        assert!(
            a.domains().expect("xl list on A").is_empty(),
            "gm still on A"
        );
        std::thread::sleep(Duration::from_millis(300));
        b.xl_ok(&["restore", file])
            .unwrap_or_else(|e| panic!("{e:#}"));
        b.wait_vmm_log("gm", "netserve: gratuitous ARP sent", T)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let moved = t0.elapsed();
        (
            dl.join().expect("the curl thread").expect("run curl"),
            pg.join().expect("the ping thread").expect("run ping"),
            saved,
            moved,
        )
    });
    let gap = largest_reply_gap(&String::from_utf8_lossy(&pings.stdout));
    eprintln!(
        "xl save on A: {saved:?}; to the restored guest's ARP on B: {moved:?}; \
         largest gap between ping replies at the client: {gap:?}"
    );
    if !download.status.success() {
        // Tell a stalled connection from a guest that lost its network.
        let again = fresh_download_ok(&t, &addr);
        panic!(
            "curl across the move: {}\nthe guest answers a ping now: {:?}; \
             a new download from it succeeds: {again:?}\nits console on B:\n{}",
            String::from_utf8_lossy(&download.stderr),
            t.client_pings(&addr, 2),
            b.guest_log("gm"),
        );
    }
    assert_eq!(download.stdout.len(), N, "bytes received across the move");
    assert!(
        download.stdout == bytes_body(N),
        "the body received across the move differs"
    );
    let gap = gap.expect("ping replies before and after the move");
    assert!(
        gap < Duration::from_secs(5),
        "the client lost the guest for {gap:?}"
    );

    // The same address answers, now from B: its vif is a port of B's
    // bridge, none is left on A's.
    client_reaches(&t, 20);
    assert_eq!(b.domains().expect("xl list on B"), ["gm"]);
    assert!(a.domains().expect("xl list on A").is_empty());
    let ports = |h: &Host| {
        xen_testhost::net::bridge_ports(&h.netns, &t.bridge)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .into_iter()
            .filter(|p| p.starts_with("vif"))
            .collect::<Vec<_>>()
    };
    assert_eq!(ports(a), Vec::<String>::new(), "vifs on A's bridge");
    assert_eq!(ports(b).len(), 1, "vifs on B's bridge: {:?}", ports(b));

    let footprint = t.footprint();
    drop(t);
    let left = footprint.leftovers();
    assert!(left.is_empty(), "left after the drop:\n{}", left.join("\n"));
}

/// A test that fails half-way (a panic with guests running on a host)
/// still leaves nothing behind: the rig's drop runs while unwinding.
#[test]
fn test_two_hosts_clean_up_after_a_failing_test() {
    let mut footprint = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = rig();
        netserve_guest(&t, &t.b, "gf", 30);
        footprint = Some(t.footprint());
        panic!("the test fails with a guest running on B");
    }));
    assert!(r.is_err(), "the inner test did not fail");
    let footprint = footprint.expect("the rig came up");
    assert!(!footprint.pids.is_empty());
    let left = footprint.leftovers();
    assert!(
        left.is_empty(),
        "left after the failure:\n{}",
        left.join("\n")
    );
}

/// Where [`helper_rig_of_a_run_to_be_killed`] writes its rig's footprint.
const HELPER_ENV: &str = "XEN_TWOHOSTS_HELPER_OUT";

/// Not a test of its own: the run that
/// [`test_two_hosts_of_a_killed_run_are_swept_by_the_next_rig`] starts as
/// a child process and SIGKILLs (no drop runs): a rig with a guest on A,
/// its footprint written to `$XEN_TWOHOSTS_HELPER_OUT`, then a wait.
#[test]
#[ignore = "started by test_two_hosts_of_a_killed_run_are_swept_by_the_next_rig"]
fn helper_rig_of_a_run_to_be_killed() {
    let out = std::env::var_os(HELPER_ENV)
        .expect("run only by test_two_hosts_of_a_killed_run_are_swept_by_the_next_rig");
    let t = rig();
    netserve_guest(&t, &t.a, "gk", 40);
    let f = t.footprint();
    let text = serde_json::json!({
        "netns": f.netns,
        "pids": f.pids,
        "dirs": f.dirs,
        "cgroup_parents": f.cgroup_parents,
        "name": f.name,
    });
    std::fs::write(&out, text.to_string()).expect("write the footprint");
    std::thread::sleep(Duration::from_secs(600));
}

/// A run killed before its drop (SIGKILL: no unwinding) leaves its rig
/// behind; the next rig's start removes all of it (processes, namespaces,
/// directories, cgroup parents), recognising it by its prefix and dead pid.
#[test]
fn test_two_hosts_of_a_killed_run_are_swept_by_the_next_rig() {
    let _ = (libexec(), kernel());
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = dir.path().join("footprint.json");
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--exact",
            "helper_rig_of_a_run_to_be_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_ENV, &out)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start the run to be killed");
    let t0 = Instant::now();
    while !out.exists() || std::fs::read(&out).map_or(true, |b| b.is_empty()) {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the helper run ended before its rig was up: {st}");
        }
        if t0.elapsed() > T {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the helper run's rig was not up within {T:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    child.kill().expect("SIGKILL the run");
    child.wait().expect("reap it");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("read")).expect("json");
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .expect("an array")
            .iter()
            .map(|x| x.as_str().expect("a string").to_owned())
            .collect()
    };
    let footprint = xen_testhost::twohosts::Footprint {
        netns: strings("netns"),
        pids: v["pids"]
            .as_array()
            .expect("pids")
            .iter()
            .map(|p| p.as_i64().expect("a pid") as i32)
            .collect(),
        dirs: strings("dirs").into_iter().map(PathBuf::from).collect(),
        cgroup_parents: strings("cgroup_parents"),
        name: v["name"].as_str().expect("name").to_owned(),
    };
    let left = footprint.leftovers();
    assert!(
        left.iter().any(|l| l.starts_with("network namespace"))
            && left.iter().any(|l| l.starts_with("process"))
            && left.iter().any(|l| l.starts_with("cgroup parent")),
        "the killed run left less than expected: {left:?}"
    );

    let next = rig();
    let left = footprint.leftovers();
    assert!(
        left.is_empty(),
        "left by the killed run after the next rig started:\n{}",
        left.join("\n")
    );
    drop(next);
}

/// The addresses of the clients watching RBD image `image` (`rbd status`:
/// `watcher=ADDR:0/NONCE client.N cookie=C`), sorted.
fn rbd_watchers(ceph: &xen_testhost::ceph::CephCluster, image: &str) -> Vec<String> {
    let out = ceph
        .rbd(&["status", &format!("rbd/{image}")])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut v: Vec<String> = out
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("watcher="))
        .filter_map(|w| w.split(':').next())
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// Waits up to [`T`] until exactly `addrs` watch RBD image `image`.
fn wait_rbd_watchers(ceph: &xen_testhost::ceph::CephCluster, image: &str, addrs: &[&str]) {
    let deadline = Instant::now() + T;
    loop {
        let w = rbd_watchers(ceph, image);
        if w == addrs {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rbd/{image} is watched by {w:?}, not {addrs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Shared storage on RBD (issue 20): a PVHVM guest whose disk is an RBD
/// image of a cluster in the client namespace (both hosts' backendd open
/// it through librbd) runs its disk self-test after each resume and is
/// live-migrated A -> B -> A. After each move the self-test passes in the
/// new domain, and the image is watched by the destination's backend only:
/// the source's closed it (librbd's exclusive lock, on by default, passes
/// to the writer that asks).
#[test]
fn test_two_hosts_live_migration_with_the_disk_on_rbd() {
    let t = rig();
    let ceph = t
        .start_ceph(256 << 20)
        .unwrap_or_else(|e| panic!("start ceph in the client namespace: {e:#}"));
    let name = "gr";
    let ip = 60u8;
    let addr = format!("{SEGMENT}.{ip}");
    ceph.create_image(name, 16)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let target = format!("rbd:rbd/{name}:conf={}", ceph.conf().display());
    let cfg = config(
        &t,
        name,
        &format!("netserve ip={addr}/24 disk seed=9"),
        &target,
        Some(&mac(ip)),
    );
    let (a, b) = (&t.a, &t.b);
    a.xl_ok(&["create", &cfg])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let first = domid(a, name);
    a.wait_vmm_log(name, &format!("disk self-test: PASS in domain {first}"), T)
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait_rbd_watchers(&ceph, name, &[&a.addr]);
    for (src, dest) in [(a, b), (b, a)] {
        let recv = receiver(dest);
        let (st, out) = start_migrate(src, dest, name).finish();
        let (rst, rlog) = recv.finish();
        assert!(
            st.success() && rst.success(),
            "{} -> {}: xl migrate: {st}\n{out}\nmigrate-receive: {rst}\n{rlog}",
            src.tag,
            dest.tag
        );
        let new = domid(dest, name);
        let log = dest
            .wait_vmm_log(name, &format!("disk self-test: PASS in domain {new}"), T)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(!log.contains("FAIL"), "{}:\n{log}", dest.tag);
        assert!(src.domains().expect("xl list").is_empty());
        wait_rbd_watchers(&ceph, name, &[&dest.addr]);
        eprintln!(
            "rbd move {} -> {}: {}",
            src.tag,
            dest.tag,
            out.lines()
                .find(|l| l.starts_with("migration successful"))
                .unwrap_or_default()
        );
    }
    a.xl_ok(&["destroy", name])
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait_rbd_watchers(&ceph, name, &[]);
    // What the guest wrote is on the image, read from outside.
    let export = t.dir().join("gr.export");
    ceph.rbd(&[
        "export",
        &format!("rbd/{name}"),
        export.to_str().expect("utf-8"),
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));
    let data = std::fs::read(&export).expect("read the export");
    assert_eq!(data.len(), 16 << 20);
    assert!(
        data.iter().any(|&b| b != 0),
        "the self-test's writes are not on the image"
    );
}

/// A process of a host (`xl migrate`, `xl migrate-receive`) whose stderr
/// is read line by line as it comes; killed on drop if still running (a
/// failing test never leaves one behind).
struct Xl {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// What was read so far.
    seen: String,
}

impl Xl {
    /// Starts `xl ARGS` in `host`.
    fn start(host: &Host, args: &[&str]) -> Xl {
        use std::io::BufRead;
        let mut child = host
            .command(host.libexec.join("xl"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start xl {} on {}: {e}", args.join(" "), host.tag));
        let err = std::io::BufReader::new(child.stderr.take().expect("its stderr"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                let _ = tx.send(format!("{l}\n"));
            }
        });
        Xl {
            child,
            lines,
            seen: String::new(),
        }
    }

    /// Waits up to [`T`] for a line containing `needle`; panics at the end
    /// of its stderr or after [`T`].
    fn wait_line(&mut self, needle: &str) -> String {
        let t0 = Instant::now();
        loop {
            match self.lines.recv_timeout(T.saturating_sub(t0.elapsed())) {
                Ok(l) => {
                    self.seen.push_str(&l);
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(e) => panic!("xl: no {needle:?} ({e}) in:\n{}", self.seen),
            }
        }
    }

    /// Waits up to [`T`] for it to end; its status and whole stderr.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait for xl") {
                break st;
            }
            assert!(
                t0.elapsed() < T,
                "xl did not end within {T:?}:\n{}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader thread ends with the pipe.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push_str(&l);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Xl {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child process killed and reaped on drop if still running.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The port `xl migrate-receive --listen` uses (each host has its own
/// network namespace).
const MIGRATE_PORT: u16 = 8002;

/// `xl migrate-receive --listen <dest>:PORT` on `dest`, once it listens.
fn receiver(dest: &Host) -> Xl {
    let addr = format!("{}:{MIGRATE_PORT}", dest.addr);
    let mut r = Xl::start(dest, &["migrate-receive", "--listen", &addr]);
    r.wait_line("listening on");
    r
}

/// `xl migrate --tcp NAME <dest>:PORT` on `src`.
fn start_migrate(src: &Host, dest: &Host, name: &str) -> Xl {
    let addr = format!("{}:{MIGRATE_PORT}", dest.addr);
    Xl::start(src, &["migrate", "--tcp", name, &addr])
}

/// `xl domid NAME` on `h`.
fn domid(h: &Host, name: &str) -> u32 {
    h.xl_ok(&["domid", name])
        .unwrap_or_else(|e| panic!("{e:#}"))
        .trim()
        .parse()
        .expect("a domid")
}

/// Pages of each round in `xl migrate`'s report.
fn pages_per_round(sender: &str) -> Vec<u64> {
    sender
        .lines()
        .filter_map(|l| l.strip_prefix("migration round "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// Now as seconds since the epoch (as `ping -D` stamps its replies).
fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs_f64()
}

/// The stamps of the echo replies in `ping -D` output.
fn reply_stamps(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// The largest gap between successive replies that touches `[from, to]`
/// (`None`: no reply before or after the window).
fn gap_during(stamps: &[f64], from: f64, to: f64) -> Option<Duration> {
    stamps
        .windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| Duration::from_secs_f64((w[1] - w[0]).max(0.0)))
        .max()
        .filter(|_| {
            stamps.first().is_some_and(|&s| s <= from) && stamps.last().is_some_and(|&s| s >= to)
        })
}

/// Whether the console-ring log of migrated guest `name` on `h`,
/// `guest-NAME.log` (the receiver introduces the domain under its final
/// name, after the stream's load), gets `needle` within 5 s; printed with
/// backendd's console lines when missing.
fn console_has(h: &Host, name: &str, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if h.guest_log(name).contains(needle) {
            return true;
        }
        if Instant::now() >= deadline {
            let consback: Vec<String> = h
                .run_log("backendd.log")
                .lines()
                .filter(|l| l.contains("console"))
                .map(str::to_owned)
                .collect();
            eprintln!(
                "host {}: no {needle:?} in guest {name}'s console-ring log (its VMM log has it); \
                 backendd's console lines:\n{}",
                h.tag,
                consback.join("\n")
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one migration step measured.
struct Move {
    what: String,
    /// From starting `xl migrate` to the guest's ARP on the destination
    /// (for the killed one: to the sender's end).
    took: Duration,
    /// Its window on the epoch clock (to the self-test's verdict in the
    /// new domain), where the ping gap is looked for.
    window: (f64, f64),
    /// The sender's pages per round.
    rounds: Vec<u64>,
    /// The sender's `migration successful` line (or its failure).
    summary: String,
    /// Whether the self-test's verdict reached the console-ring log too.
    console: bool,
}

/// A PVHVM guest serving HTTP and running its disk self-test after each
/// resume (`netserve ... disk`), its disk on the shared NBD export, is
/// live-migrated A -> B -> A -> B with `xl migrate --tcp` to an
/// `xl migrate-receive --listen` on the other host; between the second and
/// third move a migration to B whose receiver is SIGKILLed half-way (the
/// incoming domain created, the stream under way) leaves the guest running
/// on A in its domain. A client downloads from it throughout on one TCP
/// connection (every byte checked; curl stopped before the first move so
/// that the guest's side sits at a zero window while it moves) and pings
/// it every 10 ms: the largest gap per move is printed with the time and
/// pages per round `xl migrate` reports; the self-test passes in each new
/// domain (its verdict in the guest's console output as its VMM on the
/// host it is on logs it, `pvguest-NAME.log`, and consback in the console-ring
/// log `guest-NAME.log` of that host, see [`console_has`]).
#[test]
fn test_two_hosts_live_migration_back_and_forth_keeps_download_and_disk() {
    let t = rig();
    let (a, b) = (&t.a, &t.b);
    let name = "gl";
    let ip = 50u8;
    let addr = format!("{SEGMENT}.{ip}");
    let target = t.nbd_export("gl.img", 16).expect("an export");
    let cfg = config(
        &t,
        name,
        &format!("netserve ip={addr}/24 disk seed=5"),
        &target,
        Some(&mac(ip)),
    );
    a.xl_ok(&["create", &cfg])
        .unwrap_or_else(|e| panic!("{e:#}"));
    a.wait_log(name, &format!("netserve: {addr}/24 up"), T)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let first = domid(a, name);
    a.wait_log(name, &format!("disk self-test: PASS in domain {first}"), T)
        .unwrap_or_else(|e| panic!("{e:#}"));
    client_reaches(&t, ip);

    const N: usize = 120_000_000;
    const RATE: &str = "6M";
    let pidfile = t.dir().join("curl-gl.pid");
    let script = format!(
        "echo $$ > {}; exec curl -sS --max-time 50 --limit-rate {RATE} http://{addr}/bytes/{N}",
        pidfile.display()
    );
    let mut ping = Reaped(
        t.client
            .cmd("ping")
            .args(["-D", "-n", "-i", "0.01", "-w", "58", &addr])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start ping in the client"),
    );
    // Read as it comes (a full pipe would stop ping).
    let ping_out = {
        let mut out = ping.0.stdout.take().expect("ping's stdout");
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            s
        })
    };
    let zero_windows_before = zero_window_adverts(&t);
    let t_all = Instant::now();
    let (download, moves) = std::thread::scope(|s| {
        let dl = s.spawn(|| t.client_exec("sh", &["-c", &script]));
        let curl = Stopped::new(&pidfile);
        std::thread::sleep(Duration::from_millis(500));
        curl.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while zero_window_adverts(&t) == zero_windows_before {
            assert!(
                Instant::now() < deadline,
                "the client advertised no zero window within 10 s of curl stopping"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut moves = Vec::new();
        let mut id = first;
        let steps: [(&Host, &Host, bool); 4] =
            [(a, b, true), (b, a, true), (a, b, false), (a, b, true)];
        for (n, (src, dest, completes)) in steps.into_iter().enumerate() {
            let mut recv = receiver(dest);
            let from = epoch_now();
            let t0 = Instant::now();
            let mut sender = start_migrate(src, dest, name);
            if !completes {
                // Half-way: the incoming domain exists, the stream flows.
                recv.wait_line("created as");
                recv.child.kill().expect("SIGKILL the receiver");
                let _ = recv.child.wait();
            }
            if n == 0 {
                sender.wait_line("migration round 0");
                curl.cont();
            }
            let (st, out) = sender.finish();
            let (rst, rlog) = recv.finish();
            let rounds = pages_per_round(&out);
            if completes {
                assert!(
                    st.success() && rst.success(),
                    "move {} {} -> {}: xl migrate: {st}\n{out}\nmigrate-receive: {rst}\n{rlog}\n\
                     source VMM log:\n{}",
                    n + 1,
                    src.tag,
                    dest.tag,
                    src.run_log(&format!("pvguest-{name}.log"))
                );
                let new = domid(dest, name);
                dest.wait_vmm_log(name, "netserve: gratuitous ARP sent", T)
                    .unwrap_or_else(|e| panic!("{e:#}"));
                let took = t0.elapsed();
                let pass = format!("disk self-test: PASS in domain {new}");
                let log = dest
                    .wait_vmm_log(name, &pass, T)
                    .unwrap_or_else(|e| panic!("{e:#}"));
                // (The ping window runs to the self-test's end: the
                // sockets wait while it runs.)
                let to = epoch_now();
                assert!(!log.contains("FAIL"), "{}:\n{log}", dest.tag);
                let console = console_has(dest, name, &pass);
                assert!(
                    console,
                    "move {} {} -> {}: the self-test's verdict is missing from guest-{name}.log",
                    n + 1,
                    src.tag,
                    dest.tag
                );
                assert!(
                    dest.guest_log(&format!("{name}--incoming")).is_empty(),
                    "{}: the guest's output went to a console log under its incoming name",
                    dest.tag
                );
                assert!(
                    src.domains().expect("xl list").is_empty(),
                    "the source {} still lists a domain after the move",
                    src.tag
                );
                assert_eq!(dest.domains().expect("xl list"), [name]);
                let summary = out
                    .lines()
                    .find(|l| l.starts_with("migration successful"))
                    .unwrap_or_default()
                    .to_owned();
                moves.push(Move {
                    what: format!("{} -> {}", src.tag, dest.tag),
                    took,
                    window: (from, to),
                    rounds,
                    summary,
                    console,
                });
                id = new;
            } else {
                let took = t0.elapsed();
                assert!(
                    !st.success(),
                    "xl migrate succeeded with its receiver killed:\n{out}"
                );
                assert!(
                    out.contains("migration transport") || out.contains("could not send"),
                    "the sender did not report the lost target:\n{out}"
                );
                assert_eq!(
                    domid(src, name),
                    id,
                    "the guest left its domain on {}",
                    src.tag
                );
                let deadline = Instant::now() + T;
                while !dest.domains().expect("xl list").is_empty() {
                    assert!(
                        Instant::now() < deadline,
                        "{} keeps a partial domain: {:?}",
                        dest.tag,
                        dest.domains()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                let list = src.xl_ok(&["list", name]).expect("xl list");
                assert!(
                    !list.contains("--s") && !list.contains("migratedaway"),
                    "the guest is not running on {}:\n{list}",
                    src.tag
                );
                moves.push(Move {
                    what: format!("{} -> {} (receiver killed)", src.tag, dest.tag),
                    took,
                    window: (from, epoch_now() + 0.5),
                    rounds,
                    summary: out
                        .lines()
                        .filter(|l| l.contains("rror") || l.contains("cannot"))
                        .collect::<Vec<_>>()
                        .join(" | "),
                    console: true,
                });
                // The guest keeps serving on the source meanwhile.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let downloading = !dl.is_finished();
        let download = dl.join().expect("the curl thread").expect("run curl");
        assert!(
            downloading,
            "the download ended before the last move: it did not run throughout \
             (curl: {}, {} bytes: {})",
            download.status,
            download.stdout.len(),
            String::from_utf8_lossy(&download.stderr)
        );
        (download, moves)
    });
    let total = t_all.elapsed();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ping.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = ping.0.wait();
    let stamps = reply_stamps(&ping_out.join().expect("the ping reader"));
    for (i, m) in moves.iter().enumerate() {
        eprintln!(
            "step {} ({}): {:?}; largest ping gap {:?}; pages per round {:?}; {}{}",
            i + 1,
            m.what,
            m.took,
            gap_during(&stamps, m.window.0, m.window.1),
            m.rounds,
            m.summary,
            if m.console {
                ""
            } else {
                " (verdict missing from the console-ring log)"
            }
        );
    }
    eprintln!(
        "{} ping replies; download and moves in {total:?}",
        stamps.len()
    );
    let final_host = b;
    if !download.status.success() {
        let again = fresh_download_ok(&t, &addr);
        panic!(
            "curl across the moves: {}\nthe guest answers a ping now: {:?}; \
             a new download from it succeeds: {again:?}\nits console on {}:\n{}",
            String::from_utf8_lossy(&download.stderr),
            t.client_pings(&addr, 2),
            final_host.tag,
            final_host.guest_log(name),
        );
    }
    assert_eq!(download.stdout.len(), N, "bytes received across the moves");
    assert!(
        download.stdout == bytes_body(N),
        "the body received across the moves differs"
    );
    for m in &moves {
        let gap = gap_during(&stamps, m.window.0, m.window.1)
            .unwrap_or_else(|| panic!("no ping replies around step {}", m.what));
        assert!(
            gap < Duration::from_secs(3),
            "the client lost the guest for {gap:?} in step {}",
            m.what
        );
    }
    for m in moves.iter().filter(|m| !m.what.contains("killed")) {
        assert!(m.rounds.len() >= 2, "{}: rounds {:?}", m.what, m.rounds);
    }
    client_reaches(&t, ip);
    let footprint = t.footprint();
    drop(t);
    let left = footprint.leftovers();
    assert!(left.is_empty(), "left after the drop:\n{}", left.join("\n"));
}
