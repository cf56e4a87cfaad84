//! The PV disk end to end: `xl create` of a PV guest with a 64 MiB raw
//! image whose `extra=` runs a shell script as the guest's init; the guest
//! runtime connects blkfront to backendd's blkback through xenstore and
//! exposes the disk as `/dev/xvda` (FUSE) in its own mount namespace; the
//! script runs a verified `fio` job on `/dev/xvda`, `mkfs.ext4 /dev/xvda`, mounts it, writes 10 MiB, syncs,
//! unmounts and runs `fsck -n`. Then `xl destroy`, and Dom0 checks the
//! image itself: `fsck -n`, a read-only loop mount and the payload's
//! checksum against the one the guest computed.
//!
//! Private `xen-shimd` and `xenstored` (threads of this process, on
//! temporary sockets), the real `xl`, `backendd` and `xen-pvguest`
//! binaries. Needs root, `/dev/fuse`, loop devices and e2fsprogs
//! (`apt-get install e2fsprogs mount coreutils fio`).

use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common/xlhost.rs"]
mod xlhost;

use xlhost::{guest_log, ok, run, Host};

const GUEST_RUN: Duration = Duration::from_secs(180);

#[test]
fn test_xl_create_pv_guest_mkfs_mount_write_fsck_on_xvda_then_dom0_checks_image() {
    // Arrange
    let mut host = Host::start("pvdisk-e2e-");
    let name = format!("pvdisk{}", std::process::id());
    let img = host.dir.path().join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .expect("create the disk image");
    let sum = host.dir.path().join("guest.sha256");
    let script = host.dir.path().join("init.sh");
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
             dd if=/dev/urandom of=\"$m/payload\" bs=1M count=10 status=none\n\
             (cd \"$m\" && sha256sum payload) > {sum}\n\
             sync\n\
             umount \"$m\"\n\
             rmdir \"$m\"\n\
             fsck.ext4 -n -f /dev/xvda\n\
             echo guest-init-ok\n",
            sum = sum.display()
        ),
    )
    .expect("write the init script");
    run("chmod", &["0755", script.to_str().expect("utf-8 path")]);
    let cfg = host.dir.path().join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\n\
             extra = '--frontend disk --timeout-secs 30 --init {}'\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, target=disk.img' ]\n",
            script.display()
        ),
    )
    .expect("write the config");

    // Act: the guest runs its init to the end.
    ok(
        "xl create",
        &host.xl(&["create", cfg.to_str().expect("utf-8 path")]),
    );
    host.guest = Some(name.clone());
    let deadline = Instant::now() + GUEST_RUN;
    let log = loop {
        let log = guest_log(&host, &name).unwrap_or_default();
        if log.contains("pvguest shutdown") || log.contains("frontend-failed") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not finish in {GUEST_RUN:?}; its log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let destroyed = host.xl(&["destroy", &name]);
    host.guest = None;

    // Assert: the guest's view.
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
    let i = img.to_str().expect("utf-8 path");
    run("fsck.ext4", &["-n", "-f", i]);
    let mnt = host.dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let m = mnt.to_str().expect("utf-8 path");
    run("mount", &["-o", "loop,ro", i, m]);
    let dom0_sum = Command::new("sha256sum")
        .arg("payload")
        .current_dir(&mnt)
        .output();
    let _ = Command::new("umount").arg(m).status();
    let dom0_sum = ok("sha256sum", &dom0_sum.expect("run sha256sum"));
    let guest_sum = std::fs::read_to_string(&sum).expect("the guest wrote its checksum");
    assert_eq!(dom0_sum, guest_sum);
    let size = std::fs::metadata(&img).expect("stat").len();
    assert_eq!(size, 64 << 20);
}
