//! `xl block-attach`/`block-detach` and `network-attach`/`network-detach`
//! end to end, on a real PV guest: a private Dom0 (the real `xl`,
//! `backendd` in the test's own network namespace with a bridge,
//! `xen-pvguest`, jailed as `xl` runs it) and a guest whose init is a
//! script driven by files the test touches.
//!
//! - a second disk appears as `/dev/xvdb` in the running guest, which
//!   writes a pattern to it with `dd` and reads it back (checksums); a
//!   second NIC appears as `eth1` and pings Dom0 over its own subnet;
//!   `xl block-list`/`network-list` follow; both detach and disappear;
//! - a disk the guest holds open is not released: the detach times out
//!   with a clear error, the disk stays attached, and detaches once let go;
//! - `--force` during a running `dd` removes the disk at once: the `dd`
//!   fails, the guest lives on;
//! - nothing leaks: no device nodes under `backend/` or `device/`, no TAP
//!   on the bridge, no grant pinned in the shim's active-grant table
//!   beyond the boot devices', no extra fds or threads in backendd;
//! - bad input (a missing domain, a bad spec, a missing target, a vdev in
//!   use, an unknown vdev or vif, a NIC for a guest without a network of
//!   its own) fails with a clear error and writes nothing.
//!
//! Needs root, `/dev/fuse`, iproute2, ping (tests/setup-host.sh installs
//! them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{libexec, require_root};
use xen_testhost::net::{bridge_name, bridge_ports, make_bridge, start_backendd_in, Daemon, Netns};
use xen_testhost::{need, Dom0};
use xenstore_client::{Client, XsOps};

const T: Duration = Duration::from_secs(60);

/// The private Dom0, its namespace, bridge and backendd (guests destroyed
/// first on drop).
struct Host {
    backendd: Daemon,
    br: String,
    host: Dom0,
    ns: Netns,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.host.destroy_guests();
    }
}

impl Host {
    fn start(tag: &str, subnets: &[u8]) -> Self {
        require_root();
        for (tool, pkg) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
            need(tool, pkg).expect("a tool this test needs");
        }
        let host = Dom0::start(&format!("xl-hot-{tag}-"), libexec()).expect("private Dom0");
        let ns = Netns::unique("xho", tag).expect("network namespace");
        let br = bridge_name("xh", tag).expect("bridge name");
        let first = subnets.first().copied().unwrap_or(1);
        make_bridge(&ns, &br, &format!("10.{first}.0.1/24")).expect("bridge");
        for s in subnets.iter().skip(1) {
            ns.ip(&["addr", "add", &format!("10.{s}.0.1/24"), "dev", &br])
                .expect("second bridge address");
        }
        let backendd = start_backendd_in(&host, &ns, &[]).expect("backendd");
        Self {
            backendd,
            br,
            host,
            ns,
        }
    }

    fn xl(&self, args: &[&str]) -> Output {
        self.host.xl(args).expect("run xl")
    }

    fn xl_ok(&self, args: &[&str]) -> String {
        self.host
            .xl_ok(args)
            .unwrap_or_else(|e| panic!("{e:#}\nbackendd log:\n{}", self.backendd_log()))
    }

    /// `xl ARGS` must fail; its stderr.
    fn xl_fails(&self, args: &[&str]) -> String {
        let out = self.xl(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "xl {args:?} succeeded: {err}");
        err
    }

    /// backendd's log and the guests' console and runtime logs (for
    /// failure messages).
    fn backendd_log(&self) -> String {
        let mut s =
            std::fs::read_to_string(self.host.rundir().join("backendd.log")).unwrap_or_default();
        for d in [self.host.console_logdir(), self.host.rundir()] {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("guest-") || n.starts_with("pvguest-") {
                    s.push_str(&format!(
                        "\n--- {n}:\n{}",
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    ));
                }
            }
        }
        s
    }

    fn wait_log(&self, name: &str, mark: &str) -> String {
        self.host
            .wait_log(name, mark, T)
            .unwrap_or_else(|e| panic!("{e:#}\nbackendd log:\n{}", self.backendd_log()))
    }

    fn xs(&self) -> Client {
        Client::connect_path(self.host.xenstored_socket()).expect("connect to xenstored")
    }

    fn touch(&self, name: &str) {
        std::fs::write(self.host.dir.path().join(name), b"").expect("touch a go file");
    }

    /// `examples/mkroot.sh`'s images in `root/` of the test's directory.
    fn machine_root(&self) -> PathBuf {
        let root = self.host.dir.path().join("root");
        std::fs::create_dir(&root).expect("root dir");
        xen_testhost::mkroot(Path::new(env!("CARGO_MANIFEST_DIR")), &root).expect("mkroot");
        root
    }

    /// `xl create`s the guest machine `name` booting `ramdisk` with
    /// `/bin/sh -c SCRIPT` as its init.
    fn create_machine(&mut self, name: &str, ramdisk: &Path, script: &str) {
        let cfg = self
            .host
            .write_config(
                name,
                &format!(
                    "name = \"{name}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\n\
                     ramdisk = '{}'\n\
                     extra = 'pvguest.timeout=30 init=/bin/sh -- -c \"{script}\"'\n",
                    ramdisk.display()
                ),
            )
            .expect("config");
        self.host.track_guest(name);
        self.xl_ok(&["create", &cfg.display().to_string()]);
    }

    fn image(&self, name: &str, mib: u64) -> PathBuf {
        let p = self.host.dir.path().join(name);
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(mib << 20))
            .expect("disk image");
        p
    }
}

/// One guest machine test at a time: each private Dom0 numbers its first
/// guest domid 1, and two guest machines of the same domid share their
/// host id range (`guestns`) and runtime uid, so booting two at once failed
/// one init with EACCES.
fn one_machine() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn children(xs: &Client, path: &str) -> Vec<String> {
    let mut v = xs.directory(path).unwrap_or_default();
    v.sort();
    v
}

/// Grant references of `domid` pinned by a Dom0 mapping (the shim's
/// active-grant table).
fn pinned_grants(host: &Dom0, domid: u16) -> usize {
    let control =
        xen_shim_dom0::Control::connect(&host.shim_socket()).expect("connect to the shim");
    let files = control.domain_files(domid).expect("the domain's files");
    let table =
        xen_shim_dom0::grant::active::ActiveTable::map(&files.active).expect("active table");
    (0..1u32 << 16).filter(|&g| table.pins(g) != 0).count()
}

/// Open fds and threads of process `pid`.
fn fds_threads(pid: u32) -> (usize, usize) {
    let count = |d: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{d}"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    (count("fd"), count("task"))
}

/// Where process `pid`'s fds point (sorted).
fn fd_targets(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

/// Waits (up to 10 s) until `f` returns `want`; the last value.
fn settle<T: PartialEq + std::fmt::Debug>(want: &T, mut f: impl FnMut() -> T) -> T {
    let t0 = Instant::now();
    loop {
        let v = f();
        if &v == want || t0.elapsed() > Duration::from_secs(10) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sha256(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(data)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a checksum")
        .to_owned()
}

fn disk_spec(vdev: &str, img: &Path) -> String {
    format!(
        "format=raw, vdev={vdev}, access=rw, target={}",
        img.display()
    )
}

#[test]
fn test_hotplug_disk_and_nic_into_running_pv_guest_and_back_without_leaks() {
    let mut h = Host::start("a", &[81, 82]);
    let name = format!("hot{}", std::process::id());
    let dir = h.host.dir.path().display().to_string();
    let script = format!(
        "#!/bin/sh\nD={dir}\n\
         waitfor() {{ while [ ! -e \"$D/$1\" ]; do sleep 0.1; done; }}\n\
         mounted() {{ grep -q \" /dev/$1 \" /proc/self/mountinfo; }}\n\
         echo guest-up\n\
         waitfor go-disk\n\
         while ! mounted xvdb; do sleep 0.1; done\n\
         dd if=$D/pattern of=/dev/xvdb bs=64k conv=fsync,nocreat 2>/dev/null && echo wrote-ok\n\
         echo \"sum-read=$(dd if=/dev/xvdb bs=64k count=32 2>/dev/null | sha256sum | cut -d' ' -f1)\"\n\
         waitfor go-net\n\
         while ! ip link show eth1 >/dev/null 2>&1; do sleep 0.1; done\n\
         if ping -c 3 -W 2 -I eth1 10.82.0.1 >/dev/null 2>&1; then echo ping-ok; else echo ping-failed; fi\n\
         waitfor go-detach\n\
         while mounted xvdb || [ -e /dev/xvdb ]; do sleep 0.1; done\n\
         echo xvdb-gone\n\
         while ip link show eth1 >/dev/null 2>&1; do sleep 0.1; done\n\
         echo eth1-gone\n\
         waitfor go-hold\n\
         while ! mounted xvdc; do sleep 0.1; done\n\
         exec 3</dev/xvdc\n\
         echo held\n\
         waitfor go-release\n\
         exec 3<&-\n\
         echo released\n\
         while mounted xvdc || [ -e /dev/xvdc ]; do sleep 0.1; done\n\
         echo xvdc-gone\n\
         waitfor go-force\n\
         while ! mounted xvdd; do sleep 0.1; done\n\
         echo dd-start\n\
         while dd if=/dev/zero of=/dev/xvdd bs=64k count=1024 conv=nocreat 2>/dev/null; do :; done\n\
         echo dd-stopped\n\
         while [ -e /dev/xvdd ]; do sleep 0.1; done\n\
         echo still-alive\n\
         exec sleep 1000\n"
    );
    let cfg = h
        .host
        .pv_config(
            &name,
            96,
            &script,
            &format!(
                "vif = [ 'mac=00:16:3e:5a:{:02x}:01, bridge={}, ip=10.81.0.2' ]\n",
                std::process::id() as u8,
                h.br
            ),
        )
        .expect("config");
    h.host.track_guest(&name);
    h.xl_ok(&["create", &cfg]);
    let domid = h.host.domid(&name).expect("xl list").expect("a domid");
    h.wait_log(&name, "guest-up");

    // What the booted guest holds: the baseline for the leak checks.
    let bpid = h.backendd.0.as_ref().expect("backendd").id();
    std::thread::sleep(Duration::from_secs(1));
    let base_fds = fds_threads(bpid);
    let base_pins = pinned_grants(&h.host, domid);
    let base_ports = bridge_ports(&h.ns, &h.br).expect("bridge ports");
    let xs = h.xs();
    let be_vbd = format!("/local/domain/0/backend/vbd/{domid}");
    let be_vif = format!("/local/domain/0/backend/vif/{domid}");
    let fe_vbd = format!("/local/domain/{domid}/device/vbd");
    let fe_vif = format!("/local/domain/{domid}/device/vif");
    assert_eq!(children(&xs, &fe_vif), vec!["0"]);

    // A second disk: written and read back by the guest.
    let mut pattern = vec![0u8; 2 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut pattern))
        .expect("random pattern");
    std::fs::write(h.host.dir.path().join("pattern"), &pattern).expect("pattern file");
    let want = sha256(&pattern);
    let img_b = h.image("b.img", 4);
    let t0 = Instant::now();
    h.xl_ok(&["block-attach", &name, &disk_spec("xvdb", &img_b)]);
    println!("block-attach took {:?}", t0.elapsed());
    h.touch("go-disk");
    let log = h.wait_log(&name, "sum-read=");
    assert!(
        log.contains("pvdisk hotplugged devid=51728 vdev=xvdb"),
        "{log}"
    );
    assert!(log.contains("wrote-ok"), "{log}");
    assert!(log.contains(&format!("sum-read={want}")), "{log}");
    let on_disk = std::fs::read(&img_b).expect("read the image");
    assert_eq!(
        sha256(&on_disk[..2 << 20]),
        want,
        "the image holds what the guest wrote"
    );
    let list = h.xl_ok(&["block-list", &name]);
    let row = list
        .lines()
        .find(|l| l.starts_with("51728"))
        .unwrap_or_else(|| panic!("xvdb in block-list: {list}"));
    assert_eq!(row.split_whitespace().nth(3), Some("4"), "{list}");

    // A second NIC on its own subnet: pings Dom0.
    let mac = format!("00:16:3e:5a:{:02x}:02", std::process::id() as u8);
    let t0 = Instant::now();
    h.xl_ok(&[
        "network-attach",
        &name,
        &format!("bridge={}", h.br),
        "ip=10.82.0.2",
        &format!("mac={mac}"),
    ]);
    println!("network-attach took {:?}", t0.elapsed());
    h.touch("go-net");
    let log = h.wait_log(&name, "ping-");
    assert!(
        log.contains("ping-ok"),
        "{log}\nbackendd:\n{}",
        h.backendd_log()
    );
    assert!(
        log.contains("pvnet hotplugged devid=1 ifname=eth1"),
        "{log}"
    );
    let list = h.xl_ok(&["network-list", &name]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("1 ") && l.contains(&mac)),
        "{list}"
    );
    let ports = bridge_ports(&h.ns, &h.br).expect("bridge ports");
    assert!(ports.contains(&format!("vif{domid}.1")), "{ports:?}");

    // Both detached: gone in the guest, in xenstore and on the bridge.
    h.touch("go-detach");
    let t0 = Instant::now();
    h.xl_ok(&["block-detach", &name, "xvdb"]);
    println!("block-detach took {:?}", t0.elapsed());
    h.xl_ok(&["network-detach", &name, &mac]);
    let log = h.wait_log(&name, "eth1-gone");
    assert!(log.contains("xvdb-gone"), "{log}");
    assert!(children(&xs, &fe_vbd).is_empty());
    assert!(children(&xs, &be_vbd).is_empty());
    assert_eq!(children(&xs, &fe_vif), vec!["0"]);
    assert_eq!(children(&xs, &be_vif), vec!["0"]);
    let list = h.xl_ok(&["block-list", &name]);
    assert!(!list.contains("51728"), "{list}");
    let list = h.xl_ok(&["network-list", &name]);
    assert!(!list.lines().any(|l| l.starts_with("1 ")), "{list}");
    let ports = settle(&base_ports, || bridge_ports(&h.ns, &h.br).expect("ports"));
    assert_eq!(ports, base_ports, "the hot vif's TAP is gone");
    // backendd's vbd type opens its handles on the domain (memory, grant
    // ledger, doorbell) at its first disk and keeps them for the domain's
    // life: the fd baseline is taken after that first cycle; its threads
    // are back to the boot count already.
    let first_cycle = settle(&base_fds, || fds_threads(bpid));
    assert_eq!(first_cycle.1, base_fds.1, "backendd's device threads ended");
    println!(
        "backendd fds: {} at boot, {} after the first disk: {:?}",
        base_fds.0,
        first_cycle.0,
        fd_targets(bpid)
    );
    let base_fds = first_cycle;

    // A disk the guest holds open: the detach times out, the disk stays.
    let img_c = h.image("c.img", 4);
    h.xl_ok(&["block-attach", &name, &disk_spec("xvdc", &img_c)]);
    h.touch("go-hold");
    h.wait_log(&name, "held");
    let t0 = Instant::now();
    let err = h.xl_fails(&["block-detach", &name, "xvdc"]);
    println!("refused block-detach took {:?}", t0.elapsed());
    assert!(
        err.contains("did not release vbd xvdc") && err.contains("--force"),
        "{err}"
    );
    let log = h.host.guest_log(&name);
    assert!(log.contains("pvdisk detach-refused vdev=xvdc"), "{log}");
    let list = h.xl_ok(&["block-list", &name]);
    let row = list
        .lines()
        .find(|l| l.starts_with("51744"))
        .unwrap_or_else(|| panic!("xvdc still attached: {list}"));
    assert_eq!(row.split_whitespace().nth(3), Some("4"), "{list}");
    assert_eq!(
        xs.read_opt(&format!("{be_vbd}/51744/state")).expect("read"),
        Some(b"4".to_vec()),
        "the backend is back in service"
    );
    h.touch("go-release");
    h.wait_log(&name, "released");
    h.xl_ok(&["block-detach", &name, "xvdc"]);
    h.wait_log(&name, "xvdc-gone");

    // --force during a dd: the dd fails, the guest lives on.
    let img_d = h.image("d.img", 64);
    h.xl_ok(&["block-attach", &name, &disk_spec("xvdd", &img_d)]);
    h.touch("go-force");
    h.wait_log(&name, "dd-start");
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    h.xl_ok(&["block-detach", &name, "xvdd", "--force"]);
    println!("forced block-detach took {:?}", t0.elapsed());
    let log = h.wait_log(&name, "still-alive");
    assert!(log.contains("dd-stopped"), "{log}");
    assert!(
        log.contains("pvdisk detached vdev=xvdd forced=true"),
        "{log}"
    );
    assert!(
        h.host.domid(&name).expect("xl list").is_some(),
        "the guest lives on"
    );

    // Nothing leaked.
    assert!(children(&xs, &fe_vbd).is_empty());
    assert!(children(&xs, &be_vbd).is_empty());
    assert!(children(&xs, &format!("/local/domain/0/error/backend/vbd/{domid}")).is_empty());
    let pins = settle(&base_pins, || pinned_grants(&h.host, domid));
    assert_eq!(pins, base_pins, "grants pinned beyond the boot devices'");
    let fds = settle(&base_fds, || fds_threads(bpid));
    assert_eq!(
        fds, base_fds,
        "backendd's (fds, threads) after the detaches"
    );
    let log = h.host.guest_log(&name);
    assert!(!log.contains("hotplug-failed"), "{log}");
    println!("baseline pins {base_pins}, backendd (fds, threads) {base_fds:?}");
}

/// The checksum in a guest line `TAG <sha256> -` (busybox `sha256sum` of
/// stdin).
fn guest_sum<'a>(log: &'a str, tag: &str) -> Option<&'a str> {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(tag))
        .and_then(|rest| rest.split_whitespace().next())
}

#[test]
fn test_hotplug_into_a_guest_machine_shows_in_its_own_dev_and_network() {
    // A guest machine (examples/mkroot.sh's busybox ramdisk: its own
    // user, mount and network namespaces and its own /dev), not a host
    // init: the hot disk must appear in the machine's /dev, the NIC in its
    // network namespace.
    let _one = one_machine();
    let mut h = Host::start("m", &[84]);
    let root = h.machine_root();
    let name = format!("hotm{}", std::process::id());
    // Its marks are `hp-...`, made at run time: the command line (which
    // the log shows) has only `$M-...`.
    let script = "M=hp; echo $M-up; \
        while [ ! -e /dev/xvdb ]; do sleep 0.1; done; \
        dd if=/dev/urandom of=/pattern bs=64k count=16 2>/dev/null; \
        dd if=/pattern of=/dev/xvdb bs=64k conv=notrunc,fsync && echo $M-wrote; \
        echo $M-sumw $(sha256sum </pattern); \
        echo $M-sumr $(dd if=/dev/xvdb bs=64k count=16 | sha256sum); \
        while ! ip link show eth0 >/dev/null 2>&1; do sleep 0.1; done; \
        if ping -c 3 -W 2 10.84.0.1 >/dev/null 2>&1; then echo $M-ping-ok; else echo $M-ping-failed; fi; \
        while [ -e /dev/xvdb ]; do sleep 0.1; done; echo $M-xvdb-gone; \
        while ip link show eth0 >/dev/null 2>&1; do sleep 0.1; done; echo $M-eth0-gone; \
        exec sleep 1000";
    h.create_machine(&name, &root.join("pv-root.cpio"), script);
    let domid = h.host.domid(&name).expect("xl list").expect("a domid");
    h.wait_log(&name, "hp-up");
    let base_ports = bridge_ports(&h.ns, &h.br).expect("bridge ports");

    let img = h.image("m.img", 4);
    h.xl_ok(&["block-attach", &name, &disk_spec("xvdb", &img)]);
    let log = h.wait_log(&name, "hp-sumr ");
    assert!(log.contains("hp-wrote"), "{log}");
    let written = guest_sum(&log, "hp-sumw ").unwrap_or_else(|| panic!("sumw: {log}"));
    assert_eq!(guest_sum(&log, "hp-sumr "), Some(written), "{log}");
    let on_disk = std::fs::read(&img).expect("read the image");
    assert_eq!(sha256(&on_disk[..1 << 20]), written, "the image holds it");

    let mac = format!("00:16:3e:5b:{:02x}:01", std::process::id() as u8);
    h.xl_ok(&[
        "network-attach",
        &name,
        &format!("bridge={}", h.br),
        "ip=10.84.0.2",
        &format!("mac={mac}"),
    ]);
    // The guest booted without a NIC: this one is its eth0.
    let log = h.wait_log(&name, "hp-ping-");
    assert!(
        log.contains("pvnet hotplugged devid=0 ifname=eth0"),
        "{log}"
    );
    assert!(log.contains("hp-ping-ok"), "{log}\n{}", h.backendd_log());

    h.xl_ok(&["block-detach", &name, "xvdb"]);
    h.xl_ok(&["network-detach", &name, &mac]);
    let log = h.wait_log(&name, "hp-eth0-gone");
    assert!(log.contains("hp-xvdb-gone"), "{log}");
    let xs = h.xs();
    for dir in [
        format!("/local/domain/{domid}/device/vbd"),
        format!("/local/domain/0/backend/vbd/{domid}"),
        format!("/local/domain/{domid}/device/vif"),
        format!("/local/domain/0/backend/vif/{domid}"),
    ] {
        assert!(children(&xs, &dir).is_empty(), "{dir}");
    }
    let ports = settle(&base_ports, || bridge_ports(&h.ns, &h.br).expect("ports"));
    assert_eq!(ports, base_ports, "the hot vif's TAP is gone");
    let log = h.host.guest_log(&name);
    assert!(!log.contains("hotplug-failed"), "{log}");
    assert!(!log.contains("guest-dev-failed"), "{log}");
}

/// A copy of `root`'s `pv-root.cpio` with `/e2fs`: `mke2fs` (Debian's
/// busybox has no mkfs.ext2), its libraries and `/e2fs/mkfs.ext2`, which
/// runs it through their dynamic loader (an archive appended: the
/// runtime's ramdisk takes concatenated archives, as Linux's).
fn cpio_with_mke2fs(root: &Path) -> PathBuf {
    need("cpio", "cpio").expect("cpio");
    need("mke2fs", "e2fsprogs").expect("mke2fs");
    let tree = root.join("e2tree");
    let e2 = tree.join("e2fs");
    std::fs::create_dir_all(&e2).expect("e2fs dir");
    let ldd = std::process::Command::new("ldd")
        .arg("/sbin/mke2fs")
        .output()
        .expect("ldd");
    let mut files: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(str::to_owned)
        .collect();
    files.push("/sbin/mke2fs".to_owned());
    let mut loader = String::new();
    for f in &files {
        let base = Path::new(f)
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        if base.starts_with("ld-linux") {
            loader = format!("/e2fs/{base}");
        }
        std::fs::copy(f, e2.join(&base)).expect("copy mke2fs or a library");
    }
    assert!(!loader.is_empty(), "no dynamic loader in {files:?}");
    let wrapper = e2.join("mkfs.ext2");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {loader} --library-path /e2fs /e2fs/mke2fs -t ext2 \"$@\"\n"),
    )
    .expect("mkfs.ext2");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod mkfs.ext2");
    let out = root.join("pv-root-e2fs.cpio");
    std::fs::copy(root.join("pv-root.cpio"), &out).expect("copy the ramdisk");
    let archive = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find e2fs | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet >>'{}'",
            tree.display(),
            out.display()
        ))
        .output()
        .expect("cpio");
    assert!(archive.status.success(), "{archive:?}");
    out
}

#[test]
fn test_hotplug_disk_into_a_guest_machine_is_made_a_file_system_and_mounted_by_its_root() {
    // Guest root formats and mounts a hot-added disk (its loop device's
    // node in its /dev, one of the domain's own disks for the runtime's
    // mount handler); a plain detach is refused while it is mounted, and
    // goes through after umount. The go signal to umount is a second hot
    // disk appearing (the guest machine cannot see the host's files).
    // The ramdisk's root is 0700 and the jailed runtime's mount handler
    // resolves the source in it with its own uid: guest root opens it up
    // first (README: a 0700 root refuses its mounts with EACCES).
    let _one = one_machine();
    let mut h = Host::start("f", &[85]);
    let root = h.machine_root();
    need("debugfs", "e2fsprogs").expect("debugfs");
    let ramdisk = cpio_with_mke2fs(&root);
    let name = format!("hotf{}", std::process::id());
    let script = "M=hf; chmod 755 /; echo $M-up; \
        while [ ! -e /dev/xvdb ]; do sleep 0.1; done; \
        if [ -b /dev/xvdb ]; then echo $M-is-block; fi; \
        /e2fs/mkfs.ext2 -q /dev/xvdb && echo $M-mkfs-ok; \
        mkdir -p /mnt/d && mount -t ext2 /dev/xvdb /mnt/d && echo $M-mounted; \
        echo written-by-guest >/mnt/d/hello && sync && echo $M-wrote; \
        while [ ! -e /dev/xvdc ]; do sleep 0.1; done; \
        umount /mnt/d && echo $M-unmounted; \
        while [ -e /dev/xvdb ]; do sleep 0.1; done; echo $M-xvdb-gone; \
        exec sleep 1000";
    h.create_machine(&name, &ramdisk, script);
    h.wait_log(&name, "hf-up");

    let img = h.image("f.img", 8);
    h.xl_ok(&["block-attach", &name, &disk_spec("xvdb", &img)]);
    let log = h.wait_log(&name, "hf-wrote");
    for mark in ["hf-is-block", "hf-mkfs-ok", "hf-mounted"] {
        assert!(log.contains(mark), "{mark}: {log}\n{}", h.backendd_log());
    }
    let loopdev = log
        .lines()
        .find_map(|l| {
            let rest = l.split("pvdisk hotplugged devid=51728 ").nth(1)?;
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix("loop="))
        })
        .unwrap_or_else(|| panic!("the hot disk's loop device: {log}"))
        .to_owned();
    assert!(loopdev.starts_with("/dev/loop"), "{log}");
    let backing = format!(
        "/sys/block/{}/loop/backing_file",
        loopdev.trim_start_matches("/dev/")
    );
    let held = std::fs::read_to_string(&backing).unwrap_or_default();
    assert!(held.starts_with("/dev/xvdb"), "{loopdev} backs {held:?}");

    // Mounted: Xen's semantics, the guest still uses it.
    let err = h.xl_fails(&["block-detach", &name, "xvdb"]);
    assert!(err.contains("did not release vbd xvdb"), "{err}");
    let log = h.host.guest_log(&name);
    assert!(log.contains("pvdisk detach-refused vdev=xvdb"), "{log}");
    assert!(!log.contains("hf-unmounted"), "{log}");

    // The go signal: the guest unmounts, the detach goes through.
    let img_c = h.image("fc.img", 4);
    h.xl_ok(&["block-attach", &name, &disk_spec("xvdc", &img_c)]);
    h.wait_log(&name, "hf-unmounted");
    h.xl_ok(&["block-detach", &name, "xvdb"]);
    let log = h.wait_log(&name, "hf-xvdb-gone");
    assert!(
        log.contains("pvdisk detached vdev=xvdb forced=false"),
        "{log}"
    );
    // The loop device let go of the disk's block file.
    let now = settle(&true, || {
        !std::fs::read_to_string(&backing)
            .unwrap_or_default()
            .starts_with("/dev/xvdb")
    });
    assert!(now, "{loopdev} still backs xvdb");
    h.xl_ok(&["block-detach", &name, "xvdc"]);

    // Dom0 finds the guest's file in the image.
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /hello"])
        .arg(&img)
        .output()
        .expect("debugfs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "written-by-guest\n",
        "{out:?}"
    );
    let log = h.host.guest_log(&name);
    assert!(!log.contains("hotplug-failed"), "{log}");
    assert!(!log.contains("hotplug-loop-failed"), "{log}");
    assert!(!log.contains("guest-dev-failed"), "{log}");
}

#[test]
fn test_hotplug_bad_input_fails_clearly_and_writes_nothing() {
    let mut h = Host::start("b", &[83]);
    let name = format!("hotb{}", std::process::id());
    // No vif: the guest shares the host's network and must refuse a NIC.
    let cfg = h
        .host
        .pv_config(&name, 64, "#!/bin/sh\necho guest-up\nexec sleep 1000\n", "")
        .expect("config");
    h.host.track_guest(&name);
    h.xl_ok(&["create", &cfg]);
    let domid = h.host.domid(&name).expect("xl list").expect("a domid");
    h.wait_log(&name, "guest-up");
    let xs = h.xs();
    let img = h.image("x.img", 4);
    let snapshot = |xs: &Client| {
        (
            children(xs, &format!("/local/domain/{domid}/device/vbd")),
            children(xs, &format!("/local/domain/0/backend/vbd/{domid}")),
            children(xs, &format!("/local/domain/{domid}/device/vif")),
            children(xs, &format!("/local/domain/0/backend/vif/{domid}")),
        )
    };
    let empty = snapshot(&xs);

    let err = h.xl_fails(&["block-attach", "no-such-domain", &disk_spec("xvdb", &img)]);
    assert!(
        err.contains("domain no-such-domain does not exist"),
        "{err}"
    );
    let err = h.xl_fails(&["block-attach", &name, "format=bogus, vdev=xvdb, target=/x"]);
    assert!(
        err.contains("invalid disk specification \"format=bogus, vdev=xvdb, target=/x\"")
            && err.contains("unknown disk format"),
        "{err}"
    );
    let missing = h.host.dir.path().join("missing.img");
    let err = h.xl_fails(&["block-attach", &name, &disk_spec("xvdb", &missing)]);
    assert!(
        err.contains("disk xvdb") && err.contains("missing.img"),
        "{err}"
    );
    let err = h.xl_fails(&["network-attach", &name, "mac=zz"]);
    assert!(
        err.contains("invalid vif specification \"mac=zz\""),
        "{err}"
    );
    let err = h.xl_fails(&["block-detach", &name, "xvdz"]);
    assert!(
        err.contains(&format!("domain {domid} has no vbd xvdz")),
        "{err}"
    );
    let err = h.xl_fails(&["network-detach", &name, "7"]);
    assert!(
        err.contains(&format!("domain {domid} has no vif 7")),
        "{err}"
    );
    let err = h.xl_fails(&["block-attach", "0", &disk_spec("xvdb", &img)]);
    assert!(err.contains("Domain-0"), "{err}");
    assert_eq!(snapshot(&xs), empty, "nothing written by the refused verbs");

    // A vdev in use: the second attach writes nothing.
    h.xl_ok(&["block-attach", &name, &disk_spec("xvdb", &img)]);
    let attached = snapshot(&xs);
    let err = h.xl_fails(&["block-attach", &name, &disk_spec("xvdb", &img)]);
    assert!(err.contains("vbd xvdb is already attached"), "{err}");
    assert_eq!(snapshot(&xs), attached);
    h.xl_ok(&["block-detach", &name, "xvdb"]);

    // A NIC for a guest without a network namespace of its own: refused
    // by the guest, removed again.
    let err = h.xl_fails(&["network-attach", &name, &format!("bridge={}", h.br)]);
    assert!(
        err.contains(&format!("domain {domid} refused vif 0"))
            && err.contains("no network namespace of its own"),
        "{err}"
    );
    assert_eq!(snapshot(&xs), empty, "the refused devices were removed");
    assert!(
        children(&xs, &format!("/local/domain/{domid}/error/device/vif")).is_empty(),
        "the guest's error node was removed"
    );
}
