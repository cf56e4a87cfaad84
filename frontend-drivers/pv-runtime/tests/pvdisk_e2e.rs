//! The PV disk end to end, as a user runs it, for each kind of disk: a
//! 256 MiB raw image, a 256 MiB qcow2 image (`qemu-img create`), a
//! 256 MiB NBD export (`qemu-nbd` on a Unix socket, serving a raw file)
//! and a 256 MiB Ceph RBD image (a one-node cluster of the test's own,
//! `xen_testhost::ceph`).
//! `xl create` of a PV guest whose `extra=` runs a shell script as the
//! guest's init; the guest runtime connects blkfront to backendd's blkback
//! through xenstore (`vbd` for raw, `qdisk` for qcow2 and NBD, as libxl
//! writes them) and exposes the disk as `/dev/xvda` (FUSE) in its own
//! mount namespace; the script runs a verified `fio` job on `/dev/xvda`,
//! `mkfs.ext4 /dev/xvda`, mounts it, writes 100 MiB of files, checksums
//! them, syncs, unmounts and runs `fsck -n`. Then `xl destroy`, and Dom0
//! checks the image itself: `qemu-img check` (qcow2; then `qemu-img
//! convert -O raw`; `rbd export` for RBD), `fsck -n`, a read-only loop mount and every file's
//! checksum against the ones the guest computed.
//!
//! Private `xen-shimd` and `xenstored` (threads of this process, on
//! temporary sockets), the real `xl`, `backendd` and `xen-pvguest`
//! binaries. Needs root, `/dev/fuse`, loop devices, e2fsprogs, fio and
//! qemu-utils (`apt-get install e2fsprogs mount coreutils fio qemu-utils`),
//! and for RBD ceph-mon, ceph-osd and ceph-common.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use xen_testhost::ceph::CephCluster;
use xen_testhost::{need, run, stdout_of, Dom0};

/// The private Dom0 of this test ([`Dom0::start_for_pv_guests`]).
fn dom0(prefix: &str) -> Result<Dom0> {
    Dom0::start_for_pv_guests(
        prefix,
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

const GUEST_RUN: Duration = Duration::from_secs(300);
/// The disk.
const DISK_MIB: u64 = 256;
/// Files the guest writes (`FILES` x `FILE_MIB`).
const FILES: u32 = 10;
const FILE_MIB: u32 = 10;

/// What backs the guest's disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Raw,
    Qcow2,
    Nbd,
    Rbd,
}

/// `qemu-nbd`, killed (and waited for) on drop.
struct NbdServer {
    child: Option<Child>,
}

impl NbdServer {
    fn start(file: &Path, sock: &Path) -> NbdServer {
        let child = Command::new("qemu-nbd")
            .args([
                "-f",
                "raw",
                "-x",
                "disk",
                "-e",
                "4",
                "--persistent",
                "--discard=unmap",
                "-k",
            ])
            .arg(sock)
            .arg(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start qemu-nbd (apt-get install qemu-utils)");
        let deadline = Instant::now() + Duration::from_secs(20);
        // Listening, not only bound (a connect between bind and listen is
        // refused; `--persistent` outlives the probe).
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            assert!(Instant::now() < deadline, "qemu-nbd did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        NbdServer { child: Some(child) }
    }

    /// Stops the server (it flushes on SIGTERM) and waits for it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn e2e(kind: Kind) -> Result<()> {
    // Arrange
    let t0 = Instant::now();
    let mut host = dom0("pvdisk-e2e-")?;
    need("qemu-img", "qemu-utils")?;
    need("qemu-nbd", "qemu-utils")?;
    let name = format!("pvdisk{kind:?}{}", std::process::id()).to_lowercase();
    let dir = host.dir.path().to_path_buf();
    let raw = dir.join("disk.img");
    let qcow2 = dir.join("disk.qcow2");
    let sock = dir.join("nbd.sock");
    let mut nbd = None;
    let mut ceph = None;
    let target = match kind {
        Kind::Raw => {
            std::fs::File::create(&raw)
                .and_then(|f| f.set_len(DISK_MIB << 20))
                .expect("create the disk image");
            "format=raw, vdev=xvda, access=rw, target=disk.img".to_string()
        }
        Kind::Qcow2 => {
            run(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    qcow2.to_str().expect("utf-8 path"),
                    &format!("{DISK_MIB}M"),
                ],
            )?;
            "format=qcow2, vdev=xvda, access=rw, target=disk.qcow2".to_string()
        }
        Kind::Nbd => {
            std::fs::File::create(&raw)
                .and_then(|f| f.set_len(DISK_MIB << 20))
                .expect("create the exported file");
            nbd = Some(NbdServer::start(&raw, &sock));
            format!(
                "format=raw, vdev=xvda, access=rw, target=nbd+unix:///disk?socket={}",
                sock.display()
            )
        }
        Kind::Rbd => {
            let c = CephCluster::start(1 << 30)?;
            c.create_image("disk", DISK_MIB)?;
            let t = format!(
                "format=raw, vdev=xvda, access=rw, backendtype=qdisk, target=rbd:rbd/disk:conf={}",
                c.conf().display()
            );
            ceph = Some(c);
            t
        }
    };
    let sums = dir.join("guest.sha256");
    let script = dir.join("init.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\n\
             echo guest-init-start\n\
             ls -l /dev/xvda\n\
             fio --name=verify --filename=/dev/xvda --rw=randwrite --bs=4k --size=4M \
             --direct=1 --ioengine=psync --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=terse \
             > /dev/null\n\
             echo guest-fio-ok\n\
             mkfs.ext4 -q -F /dev/xvda\n\
             m=$(mktemp -d)\n\
             mount -o loop /dev/xvda \"$m\"\n\
             mkdir \"$m/data\"\n\
             i=0\n\
             while [ $i -lt {FILES} ]; do\n\
               dd if=/dev/urandom of=\"$m/data/f$i\" bs=1M count={FILE_MIB} status=none\n\
               i=$((i + 1))\n\
             done\n\
             (cd \"$m\" && sha256sum data/*) > {sums}\n\
             sync\n\
             umount \"$m\"\n\
             rmdir \"$m\"\n\
             fsck.ext4 -n -f /dev/xvda\n\
             echo guest-init-ok\n",
            sums = sums.display()
        ),
    )
    .expect("write the init script");
    run("chmod", &["0755", script.to_str().expect("utf-8 path")])?;
    let cfg = dir.join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\n\
             extra = 'pvguest.timeout=120 init={}'\n\
             disk = [ '{target}' ]\n",
            script.display()
        ),
    )
    .expect("write the config");

    // Act: the guest runs its init to the end.
    let t1 = Instant::now();
    host.xl_ok(&["create", cfg.to_str().expect("utf-8 path")])?;
    host.track_guest(&name);
    let listing = host.xl_ok(&["block-list", &name])?;
    let deadline = Instant::now() + GUEST_RUN;
    let log = loop {
        let log = host.guest_log(&name);
        if log.contains("pvguest shutdown") || log.contains("frontend-failed") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not finish in {GUEST_RUN:?}; its log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let guest_time = t1.elapsed();
    let destroyed = host.destroy_guest(&name)?;
    if let Some(n) = nbd.as_mut() {
        n.stop();
    }

    // Assert: the toolstack's and the guest's view.
    let be_kind = if kind == Kind::Raw { "vbd" } else { "qdisk" };
    assert!(
        listing.contains(&format!("/local/domain/0/backend/{be_kind}/")),
        "{listing}"
    );
    assert!(log.contains("pvdisk connected"), "{log}");
    assert!(log.contains("path=/dev/xvda"), "{log}");
    assert!(log.contains("guest-fio-ok"), "{log}");
    assert!(log.contains("guest-init-ok"), "{log}");
    assert!(log.contains("reason=poweroff"), "{log}");
    eprintln!(
        "guest log:\n{log}\nxl destroy: {}",
        String::from_utf8_lossy(&destroyed.stderr)
    );
    // Dom0's view of the image.
    let check_img: PathBuf = match kind {
        Kind::Raw | Kind::Nbd => raw.clone(),
        Kind::Rbd => {
            let c = ceph.as_ref().expect("the cluster");
            c.rbd(&["export", "rbd/disk", raw.to_str().expect("utf-8 path")])?;
            raw.clone()
        }
        Kind::Qcow2 => {
            let q = qcow2.to_str().expect("utf-8 path");
            let check = run("qemu-img", &["check", q])?;
            assert!(check.contains("No errors were found"), "{check}");
            let conv = dir.join("converted.raw");
            run(
                "qemu-img",
                &[
                    "convert",
                    "-f",
                    "qcow2",
                    "-O",
                    "raw",
                    q,
                    conv.to_str().expect("utf-8 path"),
                ],
            )?;
            conv
        }
    };
    let i = check_img.to_str().expect("utf-8 path");
    run("fsck.ext4", &["-n", "-f", i])?;
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let m = mnt.to_str().expect("utf-8 path");
    xen_testhost::mount_loop(i, m, "ro")?;
    let guest_sums = std::fs::read_to_string(&sums).expect("the guest wrote its checksums");
    let dom0_sum = Command::new("sha256sum")
        .arg("-c")
        .arg(&sums)
        .current_dir(&mnt)
        .output();
    let _ = Command::new("umount").arg(m).status();
    stdout_of("sha256sum -c", &dom0_sum.expect("run sha256sum"))?;
    assert_eq!(guest_sums.lines().count(), FILES as usize, "{guest_sums}");
    let size = std::fs::metadata(&check_img).expect("stat").len();
    assert_eq!(size, DISK_MIB << 20);
    eprintln!(
        "pvdisk e2e {kind:?}: guest run {:.1} s, whole test {:.1} s",
        guest_time.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[test]
fn test_xl_create_pv_guest_mkfs_mount_write_fsck_on_xvda_then_dom0_checks_image() -> Result<()> {
    e2e(Kind::Raw)
}

#[test]
fn test_xl_create_pv_guest_on_qcow2_image_then_qemu_img_check_and_dom0_checks() -> Result<()> {
    e2e(Kind::Qcow2)
}

#[test]
fn test_xl_create_pv_guest_on_nbd_export_then_dom0_checks_the_exported_file() -> Result<()> {
    e2e(Kind::Nbd)
}

#[test]
fn test_xl_create_pv_guest_on_rbd_image_then_dom0_checks_the_rbd_export() -> Result<()> {
    e2e(Kind::Rbd)
}

/// Waits until the guest's log contains `what` (or it stopped).
fn wait_log(host: &Dom0, name: &str, what: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let log = host.guest_log(name);
        if log.contains(what) {
            return log;
        }
        assert!(
            !log.contains("pvguest shutdown") && Instant::now() < deadline,
            "no {what:?} in the guest's log in {limit:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn test_pv_guest_on_rbd_sees_io_errors_while_the_cluster_is_down_then_fsck_is_clean() -> Result<()>
{
    // Arrange: a guest with a filesystem (first 128 MiB) and a scratch
    // area (at 200 MiB) on an RBD image whose requests time out in 5 s.
    let t0 = Instant::now();
    let mut host = dom0("pvdisk-rbdfault-")?;
    let ceph = CephCluster::start(1 << 30)?;
    ceph.create_image("disk", DISK_MIB)?;
    let name = format!("pvdiskrbdfault{}", std::process::id());
    let dir = host.dir.path().to_path_buf();
    let sums = dir.join("guest.sha256");
    let script = dir.join("init.sh");
    let dd = "dd if=/dev/urandom of=/dev/xvda bs=4k count=16 seek=51200 oflag=direct \
              conv=notrunc status=none";
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\n\
             mkfs.ext4 -q -F /dev/xvda 128M\n\
             m=$(mktemp -d)\n\
             mount -o loop /dev/xvda \"$m\"\n\
             mkdir \"$m/data\"\n\
             for i in 0 1 2 3; do dd if=/dev/urandom of=\"$m/data/f$i\" bs=1M count=4 status=none; done\n\
             (cd \"$m\" && sha256sum data/*) > {sums}\n\
             umount \"$m\"\n\
             echo guest-fault-ready\n\
             n=0\n\
             while {dd} 2>/dev/null; do n=$((n + 1)); [ $n -lt 20000 ] || exit 7; sleep 0.05; done\n\
             echo guest-io-error\n\
             n=0\n\
             until {dd} 2>/dev/null; do n=$((n + 1)); [ $n -lt 600 ] || exit 8; sleep 0.2; done\n\
             echo guest-io-back\n\
             fsck.ext4 -n -f /dev/xvda\n\
             mount -o loop /dev/xvda \"$m\"\n\
             (cd \"$m\" && sha256sum -c {sums})\n\
             dd if=/dev/urandom of=\"$m/data/after\" bs=1M count=4 status=none\n\
             umount \"$m\"\n\
             fsck.ext4 -n -f /dev/xvda\n\
             echo guest-init-ok\n",
            sums = sums.display()
        ),
    )?;
    run("chmod", &["0755", script.to_str().expect("utf-8 path")])?;
    let cfg = dir.join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\n\
             extra = 'pvguest.timeout=120 init={}'\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, backendtype=qdisk, \
             target=rbd:rbd/disk:conf={}:rados_osd_op_timeout=5' ]\n",
            script.display(),
            ceph.conf().display()
        ),
    )?;
    host.xl_ok(&["create", cfg.to_str().expect("utf-8 path")])?;
    host.track_guest(&name);
    wait_log(&host, &name, "guest-fault-ready", GUEST_RUN);

    // Act: the cluster goes away under the guest's I/O, then comes back.
    ceph.freeze()?;
    let t_down = Instant::now();
    // (On a panic the cluster's drop resumes and stops it.)
    wait_log(&host, &name, "guest-io-error", Duration::from_secs(60));
    let seen_after = t_down.elapsed();
    // Backendd still answers the toolstack while the cluster is down.
    let listing = host.xl(&["block-list", &name]);
    ceph.thaw()?;
    let listing = listing?;
    let log = wait_log(&host, &name, "pvguest shutdown", GUEST_RUN);

    // Assert
    assert!(listing.status.success(), "{listing:?}");
    assert!(log.contains("guest-io-back"), "{log}");
    assert!(log.contains("guest-init-ok"), "{log}");
    assert!(log.contains("reason=poweroff"), "{log}");
    assert!(!log.contains("frontend-failed"), "{log}");
    host.destroy_guest(&name)?;
    // Dom0's copy of the image is clean too.
    let raw = dir.join("export.raw");
    ceph.rbd(&["export", "rbd/disk", raw.to_str().expect("utf-8 path")])?;
    let fs = dir.join("fs.raw");
    run(
        "dd",
        &[
            &format!("if={}", raw.display()),
            &format!("of={}", fs.display()),
            "bs=1M",
            "count=128",
            "status=none",
        ],
    )?;
    run("fsck.ext4", &["-n", "-f", fs.to_str().expect("utf-8 path")])?;
    eprintln!(
        "guest log:\n{log}\nI/O error seen {seen_after:.1?} after the cluster stopped; test {:.1?}",
        t0.elapsed()
    );
    Ok(())
}

#[test]
fn test_xl_create_with_missing_rbd_image_or_unreachable_cluster_fails_naming_the_disk() -> Result<()>
{
    let host = dom0("pvdisk-e2e-rbdbad-")?;
    let c = CephCluster::start(256 << 20)?;
    // A configuration naming a monitor nobody listens on: refused after
    // the engine's default `client_mount_timeout` (10 s).
    let dead = host.dir.path().join("dead.conf");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(
        &dead,
        format!("[global]\nmon host = v2:127.0.0.1:{port}\nauth client required = none\n"),
    )?;
    let cases = [
        (
            "missing",
            format!("rbd:rbd/nothere:conf={}", c.conf().display()),
            "rbd_open(rbd/nothere)",
        ),
        (
            "unreachable",
            format!("rbd:rbd/x:conf={}", dead.display()),
            "rados_connect",
        ),
    ];
    for (what, target, expect) in cases {
        let name = format!("pvdiskrbd{what}{}", std::process::id());
        let cfg = host.dir.path().join(format!("{name}.cfg"));
        std::fs::write(
            &cfg,
            format!(
                "name = \"{name}\"\ntype = 'pv'\nmemory = 64\n\
                 extra = 'pvguest.timeout=5'\n\
                 disk = [ 'format=raw, vdev=xvda, access=rw, backendtype=qdisk, target={target}' ]\n"
            ),
        )?;
        let t0 = Instant::now();
        let out = host.xl(&["create", cfg.to_str().expect("utf-8 path")])?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: xl create must fail: {err}");
        assert!(err.contains("disk xvda"), "{what}: {err}");
        assert!(err.contains(&target), "{what}: {err}");
        assert!(err.contains(expect), "{what}: {err}");
        eprintln!("{what}: refused in {:?}: {err}", t0.elapsed());
        let list = host.xl_ok(&["list"])?;
        assert!(!list.contains(&name), "{list}");
    }
    Ok(())
}

#[test]
fn test_xl_create_with_unreachable_nbd_server_fails_naming_the_disk() -> Result<()> {
    let host = dom0("pvdisk-e2e-bad-")?;
    let name = format!("pvdisknbdbad{}", std::process::id());
    let sock = host.dir.path().join("nobody.sock");
    let cfg = host.dir.path().join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = 64\n\
             extra = 'pvguest.timeout=5'\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, target=nbd+unix:///disk?socket={}' ]\n",
            sock.display()
        ),
    )
    .expect("write the config");
    let out = host.xl(&["create", cfg.to_str().expect("utf-8 path")])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xl create must fail: {err}");
    assert!(err.contains("disk xvda"), "{err}");
    assert!(
        err.contains(&format!("nbd+unix:///disk?socket={}", sock.display())),
        "{err}"
    );
    assert!(err.contains("cannot connect"), "{err}");
    // No domain is left behind.
    let list = host.xl_ok(&["list"])?;
    assert!(!list.contains(&name), "{list}");
    // The runtime, forked as soon as the domain existed, was held before
    // exec and never ran: its early log is empty.
    let early = host.rundir().join(format!("pvguest-{name}.log"));
    let text =
        std::fs::read_to_string(&early).map_err(|e| anyhow::anyhow!("{}: {e}", early.display()))?;
    assert!(text.is_empty(), "the refused guest's runtime ran: {text}");
    Ok(())
}
