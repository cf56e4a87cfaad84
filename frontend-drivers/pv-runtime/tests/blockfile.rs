//! The block file (FUSE) over a RAM disk, used by the real tools:
//! `mkfs.ext4`, `mount -o loop` (losetup on the FUSE file), a file written
//! and read back through ext4, `umount`, `fsck -n`.
//!
//! Also `fio` with verification on the file.
//!
//! Needs root, `/dev/fuse`, loop devices, e2fsprogs, mount and fio
//! (`apt-get install e2fsprogs mount fio`); fails loudly without them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

use xen_pvguest::blockfile::{create_mount_point, BlockFile, BlockFileUnmounter};
use xen_pvguest::vbd::RamDisk;

fn need(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is missing: run `apt-get install -y {package}` (or tests/setup-host.sh)"
    );
}

fn preconditions() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts FUSE and loop devices: run it as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: load the fuse module (modprobe fuse)"
    );
    need("mkfs.ext4", "e2fsprogs");
    need("fsck.ext4", "e2fsprogs");
    need("mount", "mount");
    need("losetup", "mount");
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unmounts what the test mounted, even when it fails half-way.
struct Mounted {
    fs_mount: PathBuf,
    file: PathBuf,
    unmounter: Option<BlockFileUnmounter>,
    server: Option<JoinHandle<()>>,
}

impl Mounted {
    fn finish(&mut self) {
        // Unmounted already when the test got that far: quietly.
        let _ = Command::new("umount")
            .arg(&self.fs_mount)
            .stderr(std::process::Stdio::null())
            .status();
        if let Some(mut u) = self.unmounter.take() {
            let _ = u.unmount();
        }
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.server.is_some() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.fs_mount)
                .status();
            let _ = Command::new("umount").arg("-l").arg(&self.file).status();
            self.finish();
        }
    }
}

#[test]
fn test_block_file_ram_disk_mkfs_mount_write_fsck_clean() {
    // Arrange: a 64 MiB RAM disk as the file <tmp>/xvda.
    preconditions();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("xvda");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    create_mount_point(&file).expect("mount point");
    let mut bf = BlockFile::mount(RamDisk::new(64 << 20), &file).expect("mount the block file");
    let unmounter = bf.unmounter();
    let server = std::thread::spawn(move || bf.serve().expect("serve"));
    let mut m = Mounted {
        fs_mount: mnt.clone(),
        file: file.clone(),
        unmounter: Some(unmounter),
        server: Some(server),
    };
    let f = file.to_str().expect("utf8 path");
    let mp = mnt.to_str().expect("utf8 path");

    // Act
    assert_eq!(
        std::fs::metadata(&file).expect("stat").len(),
        64 << 20,
        "the file has the disk's size"
    );
    run("mkfs.ext4", &["-q", "-F", f]);
    xen_testhost::mount_loop(f, mp, "").unwrap_or_else(|e| panic!("{e:#}"));
    let data: Vec<u8> = (0..(10u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(mnt.join("payload"), &data).expect("write payload");
    // This file system only: a global sync waits on every FUSE file
    // system of the host, other tests' stopped guests' disks among them.
    run(
        "sync",
        &["-f", mnt.join("payload").to_str().expect("utf8 path")],
    );
    run("umount", &[mp]);
    let fsck = run("fsck.ext4", &["-n", "-f", f]);
    xen_testhost::mount_loop(f, mp, "ro").unwrap_or_else(|e| panic!("{e:#}"));
    let back = std::fs::read(mnt.join("payload")).expect("read payload");
    run("umount", &[mp]);
    m.finish();

    // Assert
    assert!(back == data, "the payload read back differs");
    // fsck -n exits 0 only on a clean file system (checked by `run`).
    assert!(fsck.contains(" files "), "{fsck}");
}

#[test]
fn test_block_file_ram_disk_fio_random_write_verifies() {
    // Arrange
    preconditions();
    need("fio", "fio");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("xvdb");
    create_mount_point(&file).expect("mount point");
    let mut bf = BlockFile::mount(RamDisk::new(16 << 20), &file).expect("mount the block file");
    let unmounter = bf.unmounter();
    let server = std::thread::spawn(move || bf.serve().expect("serve"));
    let mut m = Mounted {
        fs_mount: dir.path().join("unused"),
        file: file.clone(),
        unmounter: Some(unmounter),
        server: Some(server),
    };
    let f = format!("--filename={}", file.display());

    // Act: random 4 KiB and unaligned-size writes, each block verified.
    let out = run(
        "fio",
        &[
            "--name=verify",
            &f,
            "--rw=randwrite",
            "--bsrange=512-64k",
            "--size=8M",
            "--direct=1",
            "--ioengine=psync",
            "--verify=crc32c",
            "--verify_fatal=1",
            // No verify state file in the working directory.
            "--verify_state_save=0",
            "--do_verify=1",
            "--output-format=terse",
        ],
    );
    m.finish();

    // Assert: fio exits 0 only when every block verified (checked by `run`).
    assert!(out.starts_with("3;"), "{out}");
}
