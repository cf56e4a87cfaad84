//! A [`BlockDevice`] as a file that ordinary programs use (`mkfs.ext4`,
//! `losetup`, `mount -o loop`, `fsck`, `fio`): a FUSE file system whose
//! root *is* the disk, a regular file of the disk's size, mounted over an
//! empty regular file (`/dev/xvda` in the guest).
//!
//! - FUSE without libfuse: as root, `fuser` mounts `/dev/fuse` directly
//!   (`mount -t fuse`); no `fusermount` is needed. The file is opened in
//!   direct-I/O mode, so no page cache sits between programs and the PV
//!   disk: every read and write becomes blkif requests, `fsync` a
//!   `BLKIF_OP_FLUSH_DISKCACHE`;
//! - [`private_mount_namespace`] and [`private_dev`] give the guest its own
//!   mount namespace and its own `/dev` (a tmpfs re-creating the host's
//!   device nodes, plus `loop0..63` for `losetup`), so `/dev/xvda` exists
//!   only inside the guest.
//!
//! The server is single-threaded (one FUSE request at a time); a transfer
//! still keeps several blkif requests in flight ([`crate::vbd`]).

use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyData, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, Session, SessionUnmounter, TimeOrNow,
};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::vbd::{BlockDevice, VbdError};
use xen_diag::LogLimiter;

/// `FOPEN_DIRECT_IO`: bypass the page cache for this open file.
const FOPEN_DIRECT_IO: u32 = 1;
/// The root inode (the disk file).
const ROOT_INO: u64 = 1;
/// Attributes are the disk's: they never change, cache them.
const TTL: Duration = Duration::from_secs(3600);
/// Loop device nodes created in a private `/dev`.
const LOOP_NODES: u32 = 64;
/// The loop block devices' major.
const LOOP_MAJOR: u64 = 7;

/// Why exposing a disk as a file failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockfileError {
    /// Mounting the FUSE file system failed (is `/dev/fuse` there? are we
    /// root?).
    #[error("cannot mount the block file on {path}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Serving the FUSE requests failed.
    #[error("the block file server failed")]
    Serve(#[source] std::io::Error),
    /// A namespace or `/dev` set-up step failed.
    #[error("cannot {what}")]
    Setup {
        /// The step.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

fn setup_err(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> BlockfileError {
    let what = what.into();
    move |e| BlockfileError::Setup {
        what,
        source: std::io::Error::from(e),
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BlockfileError {
    let what = what.into();
    move |source| BlockfileError::Setup { what, source }
}

/// The FUSE file system: one regular file, the disk.
#[derive(Debug)]
pub struct BlockFileFs<D: BlockDevice> {
    dev: D,
    uid: u32,
    gid: u32,
    perm: u16,
    created: SystemTime,
    errors: LogLimiter,
    /// Open files of the disk (a mount's loop device holds one).
    opens: Arc<AtomicUsize>,
}

impl<D: BlockDevice> BlockFileFs<D> {
    /// The file system over `dev`, owned by root, mode 0660 (0440 when
    /// read-only).
    pub fn new(dev: D) -> Self {
        let perm = if dev.read_only() { 0o440 } else { 0o660 };
        BlockFileFs {
            dev,
            uid: 0,
            gid: 0,
            perm,
            created: SystemTime::now(),
            errors: LogLimiter::new(1, Duration::from_secs(1)),
            opens: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The file's owner is `uid`:`gid` (the guest machine's root and its
    /// `disk` group: [`crate::guestns`]).
    #[must_use]
    pub fn owned_by(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// The device (after the session ended).
    pub fn into_device(self) -> D {
        self.dev
    }

    fn attr(&self) -> FileAttr {
        let size = self.dev.size_bytes();
        let bs = self.dev.block_size();
        FileAttr {
            ino: ROOT_INO,
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind: FileType::RegularFile,
            perm: self.perm,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: bs,
            flags: 0,
        }
    }

    fn log_error(&mut self, op: &str, offset: u64, e: &VbdError) {
        if self.errors.allow() {
            tracing::warn!(op, offset, error = %e, "block file I/O failed");
        }
    }
}

impl<D: BlockDevice> Filesystem for BlockFileFs<D> {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // Large requests: one FUSE write can carry up to 1 MiB.
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn destroy(&mut self) {
        // Unmounted: make what was written durable.
        if let Err(e) = self.dev.flush() {
            self.log_error("flush at unmount", 0, &e);
        }
    }

    fn lookup(&mut self, _req: &Request<'_>, _parent: u64, _name: &OsStr, reply: ReplyEntry) {
        // The root is a file: it has no children.
        reply.error(libc::ENOTDIR);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        if ino == ROOT_INO {
            reply.attr(&TTL, &self.attr());
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        if ino != ROOT_INO {
            return reply.error(libc::ENOENT);
        }
        // A disk's size is fixed. The kernel turns `open(O_TRUNC)` (what a
        // shell's `>` does) into a size-0 setattr; on a block device Linux
        // ignores O_TRUNC, so the size is ignored here too.
        let _ = size;
        if let Some(m) = mode {
            self.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            self.uid = u;
        }
        if let Some(g) = gid {
            self.gid = g;
        }
        reply.attr(&TTL, &self.attr());
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if ino != ROOT_INO {
            return reply.error(libc::ENOENT);
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY && self.dev.read_only() {
            return reply.error(libc::EROFS);
        }
        self.opens.fetch_add(1, Ordering::Relaxed);
        reply.opened(0, FOPEN_DIRECT_IO);
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _ = self
            .opens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        reply.ok();
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        let end = self.dev.size_bytes();
        if offset >= end {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(end - offset) as usize;
        let mut buf = vec![0u8; len];
        match self.dev.read_at(offset, &mut buf) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                self.log_error("read", offset, &e);
                reply.error(e.errno());
            }
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        let end = self.dev.size_bytes();
        if offset >= end {
            return reply.error(libc::ENOSPC);
        }
        let len = (data.len() as u64).min(end - offset) as usize;
        match self.dev.write_at(offset, &data[..len]) {
            Ok(()) => reply.written(len as u32),
            Err(e) => {
                self.log_error("write", offset, &e);
                reply.error(e.errno());
            }
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        // close(2) of a block device does not flush its cache either.
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        match self.dev.flush() {
            Ok(()) => reply.ok(),
            Err(e) => {
                self.log_error("fsync", 0, &e);
                reply.error(e.errno());
            }
        }
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        if ino == ROOT_INO {
            reply.ok();
        } else {
            reply.error(libc::ENOENT);
        }
    }
}

/// A block file mounted and ready to serve; see the [module docs](self).
#[derive(Debug)]
pub struct BlockFile<D: BlockDevice> {
    session: Session<BlockFileFs<D>>,
    path: PathBuf,
    opens: Arc<AtomicUsize>,
}

/// Unmounts a [`BlockFile`] from another thread (its `serve` then
/// returns once no program holds the file open).
#[derive(Debug)]
pub struct BlockFileUnmounter {
    inner: SessionUnmounter,
}

impl BlockFileUnmounter {
    /// Detaches the mount (`umount2(MNT_DETACH)`).
    pub fn unmount(&mut self) -> Result<(), BlockfileError> {
        self.inner.unmount().map_err(BlockfileError::Serve)
    }
}

impl<D: BlockDevice> BlockFile<D> {
    /// Mounts `dev` as the file `path`, which must exist and be an (empty)
    /// regular file: the mount covers it. The file is root's.
    pub fn mount(dev: D, path: &Path) -> Result<Self, BlockfileError> {
        Self::mount_owned(dev, path, 0, 0)
    }

    /// [`Self::mount`] with the file owned by `uid`:`gid`.
    pub fn mount_owned(dev: D, path: &Path, uid: u32, gid: u32) -> Result<Self, BlockfileError> {
        Self::mount_counted(dev, path, uid, gid, Arc::new(AtomicUsize::new(0)))
    }

    /// [`Self::mount_owned`], counting the open files of the disk in
    /// `opens` ([`Self::open_count`]).
    pub fn mount_counted(
        dev: D,
        path: &Path,
        uid: u32,
        gid: u32,
        opens: Arc<AtomicUsize>,
    ) -> Result<Self, BlockfileError> {
        let mut opts = vec![
            MountOption::FSName("xen-blkfront".into()),
            MountOption::Subtype("pvdisk".into()),
            MountOption::DefaultPermissions,
            // The guest machine's root (an unprivileged host uid,
            // `crate::guestns`) owns its disks: the file's owner and mode
            // decide, not who mounted it.
            MountOption::AllowOther,
        ];
        if dev.read_only() {
            opts.push(MountOption::RO);
        }
        let mut fs = BlockFileFs::new(dev).owned_by(uid, gid);
        fs.opens = Arc::clone(&opens);
        let session = Session::new(fs, path, &opts).map_err(|source| BlockfileError::Mount {
            path: path.to_owned(),
            source,
        })?;
        Ok(BlockFile {
            session,
            path: path.to_owned(),
            opens,
        })
    }

    /// How many files of the disk programs hold open now (a mounted file
    /// system's loop device holds one): the disk is in use while not 0.
    pub fn open_count(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.opens)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that unmounts the file from another thread.
    pub fn unmounter(&mut self) -> BlockFileUnmounter {
        BlockFileUnmounter {
            inner: self.session.unmount_callable(),
        }
    }

    /// Serves requests until the file is unmounted and released.
    pub fn serve(mut self) -> Result<(), BlockfileError> {
        self.session.run().map_err(BlockfileError::Serve)
    }
}

/// Creates `path` as an empty regular file (mode 0600) to mount a block
/// file over, unless it exists.
pub fn create_mount_point(path: &Path) -> Result<(), BlockfileError> {
    // The mode at creation (no fchmod: a jailed runtime creates the mount
    // points of disks attached later, `crate::hotplug`).
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(format!("create {}", path.display()))(e)),
    }
}

/// Moves the calling thread (and so the threads and processes it starts
/// afterwards) into a new mount namespace whose mounts do not propagate
/// back to the host (`unshare(CLONE_NEWNS)`, then `/` made `rprivate`).
pub fn private_mount_namespace() -> Result<(), BlockfileError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(setup_err("unshare the mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(setup_err("make / private"))
}

/// In a private mount namespace: mounts a tmpfs over `/dev` that re-creates
/// the host's top-level device nodes and symbolic links, bind-mounts its
/// directories (`pts`, `shm`, ...), and adds `loop0..63` (so `losetup`
/// finds the nodes of loop devices created after this point).
pub fn private_dev() -> Result<(), BlockfileError> {
    let dev = Path::new("/dev");
    enum Entry {
        Node(PathBuf, SFlag, u32, u64),
        Link(PathBuf, PathBuf),
        Dir(PathBuf, fs::File),
    }
    let mut entries = Vec::new();
    let rd = fs::read_dir(dev).map_err(io_err("list /dev"))?;
    // Bounded by the size of the host's /dev.
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        if ft.is_char_device() {
            entries.push(Entry::Node(p, SFlag::S_IFCHR, mode, md.rdev()));
        } else if ft.is_block_device() {
            entries.push(Entry::Node(p, SFlag::S_IFBLK, mode, md.rdev()));
        } else if ft.is_symlink() {
            if let Ok(t) = fs::read_link(&p) {
                entries.push(Entry::Link(p, t));
            }
        } else if ft.is_dir() {
            if let Ok(f) = fs::File::open(&p) {
                entries.push(Entry::Dir(p, f));
            }
        }
    }
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=755,size=65536k"),
    )
    .map_err(setup_err("mount a tmpfs on /dev"))?;
    for e in entries {
        match e {
            Entry::Node(p, kind, mode, rdev) => {
                mknod(&p, kind, Mode::from_bits_truncate(mode), rdev)
                    .map_err(setup_err(format!("mknod {}", p.display())))?;
                // The host's mode whatever the umask (`/dev/fuse` stays
                // 0666: the jailed runtime opens it for disks attached
                // later, `crate::hotplug`).
                fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                    .map_err(io_err(format!("chmod {}", p.display())))?;
            }
            Entry::Link(p, t) => {
                std::os::unix::fs::symlink(&t, &p)
                    .map_err(io_err(format!("symlink {}", p.display())))?;
            }
            Entry::Dir(p, f) => {
                fs::create_dir(&p).map_err(io_err(format!("mkdir {}", p.display())))?;
                let src = format!("/proc/self/fd/{}", f.as_raw_fd());
                mount(
                    Some(src.as_str()),
                    &p,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(setup_err(format!("bind-mount {}", p.display())))?;
            }
        }
    }
    for n in 0..LOOP_NODES {
        let p = dev.join(format!("loop{n}"));
        if !p.exists() {
            mknod(
                &p,
                SFlag::S_IFBLK,
                Mode::from_bits_truncate(0o660),
                makedev(LOOP_MAJOR, u64::from(n)),
            )
            .map_err(setup_err(format!("mknod {}", p.display())))?;
        }
    }
    Ok(())
}

/// `LOOP_CTL_GET_FREE` (`linux/loop.h`).
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

/// Makes sure the private `/dev` ([`private_dev`]) has the node of a free
/// loop device, for the `losetup --find` that follows: `LOOP_CTL_GET_FREE`
/// names the lowest free device (creating one when none is free), and its
/// node is made when missing (its number from sysfs). [`private_dev`] has
/// only the nodes of the devices that existed when it ran and `loop0..63`:
/// with every one of those in use (the scale benchmark's 65th guest, each
/// guest's root holding one), `losetup` found no node and failed with
/// `ENOENT`. Returns the node's path.
pub fn ensure_free_loop_node() -> Result<PathBuf, BlockfileError> {
    let ctl = fs::File::open("/dev/loop-control").map_err(io_err("open /dev/loop-control"))?;
    // SAFETY: an ioctl without argument on an fd we own.
    let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    if n < 0 {
        return Err(io_err("LOOP_CTL_GET_FREE")(std::io::Error::last_os_error()));
    }
    let p = PathBuf::from(format!("/dev/loop{n}"));
    if !p.exists() {
        let rdev = fs::read_to_string(format!("/sys/devices/virtual/block/loop{n}/dev"))
            .ok()
            .and_then(|s| {
                let (ma, mi) = s.trim().split_once(':')?;
                Some(makedev(ma.parse().ok()?, mi.parse().ok()?))
            })
            .unwrap_or_else(|| makedev(LOOP_MAJOR, n as u64));
        match mknod(&p, SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), rdev) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(setup_err(format!("mknod {}", p.display()))(e)),
        }
    }
    Ok(p)
}

/// `losetup --find --show FILE` where `/dev` is a private tmpfs
/// ([`private_dev`]): attaches `file` to the free loop device whose node
/// [`ensure_free_loop_node`] made, naming it (plain `--find` picks the free
/// number itself and fails with `ENOENT` when its node is missing: every
/// disk but the root, and the root too when the free-node step lost a race
/// with another guest). Another process taking that device first (`EBUSY`)
/// makes it try the next free one. Without `/dev/loop-control`, plain
/// `--find`. Returns the loop device's path.
///
/// # Errors
/// `losetup`'s message.
pub fn attach_free_loop(file: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..16 {
        let Ok(node) = ensure_free_loop_node() else {
            return crate::machine::run("losetup", &["--find", "--show", file]);
        };
        let node = node.to_string_lossy().into_owned();
        match crate::machine::run("losetup", &["--show", &node, file]) {
            Ok(dev) => return Ok(dev),
            Err(e) if e.to_ascii_lowercase().contains("busy") => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vbd::RamDisk;

    /// In a mount namespace whose `/dev` is a tmpfs holding only
    /// `loop-control` and `null` (a guest's private `/dev` once the nodes it was made
    /// with are all in use), two files are attached to loop devices, each
    /// through a node made for it. Plain `losetup --find` failed there
    /// with `ENOENT` (the soak's 33rd guest: "cannot attach a loop device
    /// to /dev/xvdb"). Needs root and the loop driver.
    #[test]
    fn test_attach_free_loop_in_a_dev_without_loop_nodes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files: Vec<String> = (0..2)
            .map(|i| {
                let p = dir.path().join(format!("disk{i}"));
                fs::File::create(&p)
                    .and_then(|f| f.set_len(1 << 20))
                    .expect("make the file");
                p.to_string_lossy().into_owned()
            })
            .collect();
        let r = std::thread::spawn(move || -> Result<Vec<(String, bool)>, String> {
            private_mount_namespace().map_err(|e| format!("{e}"))?;
            mount(
                Some("tmpfs"),
                "/dev",
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=755"),
            )
            .map_err(|e| format!("mount a tmpfs on /dev: {e}"))?;
            for (node, major, minor) in [("/dev/loop-control", 10, 237), ("/dev/null", 1, 3)] {
                mknod(
                    node,
                    SFlag::S_IFCHR,
                    Mode::from_bits_truncate(0o666),
                    makedev(major, minor),
                )
                .map_err(|e| format!("mknod {node}: {e}"))?;
            }
            let mut out = Vec::new();
            for f in &files {
                let dev = attach_free_loop(f)?;
                out.push((dev.clone(), Path::new(&dev).exists()));
            }
            for (dev, _) in &out {
                let _ = crate::machine::run("losetup", &["-d", dev]);
            }
            Ok(out)
        })
        .join()
        .expect("the thread ran");
        let devs = r.expect("both files attached");
        assert_eq!(devs.len(), 2);
        assert_ne!(devs[0].0, devs[1].0, "{devs:?}");
        assert!(
            devs.iter().all(|d| d.0.starts_with("/dev/loop") && d.1),
            "{devs:?}"
        );
    }

    #[test]
    fn test_block_file_attr_is_read_only_for_read_only_disk() {
        struct Ro(RamDisk);
        impl BlockDevice for Ro {
            fn size_bytes(&self) -> u64 {
                self.0.size_bytes()
            }
            fn block_size(&self) -> u32 {
                4096
            }
            fn read_only(&self) -> bool {
                true
            }
            fn read_at(&mut self, o: u64, b: &mut [u8]) -> Result<(), VbdError> {
                self.0.read_at(o, b)
            }
            fn write_at(&mut self, _o: u64, _d: &[u8]) -> Result<(), VbdError> {
                Err(VbdError::ReadOnly)
            }
            fn flush(&mut self) -> Result<(), VbdError> {
                Ok(())
            }
        }
        let fs = BlockFileFs::new(Ro(RamDisk::new(8192)));
        let a = fs.attr();
        assert_eq!(a.perm, 0o440);
        assert_eq!(a.blksize, 4096);
    }

    #[test]
    fn test_block_file_attr_is_regular_file_of_disk_size() {
        let fs = BlockFileFs::new(RamDisk::new(1 << 20));
        let a = fs.attr();
        assert_eq!(a.kind, FileType::RegularFile);
        assert_eq!(a.size, 1 << 20);
        assert_eq!(a.blocks, 2048);
        assert_eq!(a.perm, 0o660);
    }
}
