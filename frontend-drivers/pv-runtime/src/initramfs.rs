//! The guest's initramfs: xl.cfg's `ramdisk = "FILE"`, a `newc` cpio
//! archive (what `cpio -H newc -o` and Linux's `usr/gen_init_cpio` write;
//! `Documentation/driver-api/early-userspace/buffer-format.rst`), unpacked
//! into the guest's root tmpfs as Linux's `init/initramfs.c` does.
//!
//! The archive is the guest's, so hostile: [`parse_header`] checks each
//! 110-byte header purely (magic `070701`/`070702`, hex fields, name
//! size); [`unpack`] refuses names that leave the root (`..`), paths
//! through a symbolic link the archive made, and sizes beyond the end of
//! the archive, and never follows a link it creates. Regular files,
//! directories, symbolic links, hard links (`nlink > 1`, by inode, as
//! Linux), FIFOs and sockets are created; character and block device nodes
//! are not (the guest's `/dev` is the runtime's: the archive does not name
//! host devices). Compressed archives are refused with a clear error.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Size of a `newc` header.
pub const HEADER_LEN: usize = 110;
/// Longest name accepted (Linux's `PATH_MAX`).
pub const MAX_NAME: u32 = 4096;
/// The name of the last entry.
pub const TRAILER: &str = "TRAILER!!!";

const S_IFMT: u32 = 0o170_000;
const S_IFSOCK: u32 = 0o140_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFREG: u32 = 0o100_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFIFO: u32 = 0o010_000;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// Not a `newc` header.
    #[error("entry {entry}: bad cpio magic {magic:?} (only the newc format, 070701/070702, is supported)")]
    BadMagic {
        /// The entry's index.
        entry: usize,
        /// The first six bytes.
        magic: String,
    },
    /// A gzip, xz, zstd... archive.
    #[error("the ramdisk is compressed ({0}): give an uncompressed newc cpio archive")]
    Compressed(&'static str),
    /// A header field is not 8 hex digits.
    #[error("entry {entry}: header field {field} is not hexadecimal")]
    BadField {
        /// The entry's index.
        entry: usize,
        /// The field.
        field: &'static str,
    },
    /// A name that is empty, too long or not NUL-terminated.
    #[error("entry {entry}: bad name ({why})")]
    BadName {
        /// The entry's index.
        entry: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A name that leaves the root or passes through a link.
    #[error("entry {name:?}: {why}")]
    Escapes {
        /// The name.
        name: String,
        /// What it does.
        why: &'static str,
    },
    /// The archive ends inside an entry.
    #[error("the archive ends inside entry {0} (its sizes go beyond the file)")]
    Truncated(usize),
    /// No trailer.
    #[error("the archive has no TRAILER!!! entry")]
    NoTrailer,
    /// Creating an entry failed.
    #[error("cannot create {path}")]
    Create {
        /// The path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// Reading the archive failed.
    #[error("cannot read the archive")]
    Read(#[source] io::Error),
}

/// One `newc` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Inode number (hard links share it).
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time.
    pub mtime: u32,
    /// Size of the data that follows the name.
    pub filesize: u32,
    /// Device of the inode (hard links: with `ino`).
    pub dev: (u32, u32),
    /// Size of the name, its NUL included.
    pub namesize: u32,
}

/// Parses a header (see the [module docs](self)); `entry` names it in errors.
///
/// # Errors
/// Bad magic, a field not hexadecimal, a name size of 0 or above
/// [`MAX_NAME`].
pub fn parse_header(h: &[u8; HEADER_LEN], entry: usize) -> Result<Header, InitramfsError> {
    let magic = &h[..6];
    if magic != b"070701" && magic != b"070702" {
        return Err(match magic {
            [0x1f, 0x8b, ..] => InitramfsError::Compressed("gzip"),
            [0xfd, b'7', b'z', b'X', b'Z', ..] => InitramfsError::Compressed("xz"),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => InitramfsError::Compressed("zstd"),
            [b'B', b'Z', b'h', ..] => InitramfsError::Compressed("bzip2"),
            _ => InitramfsError::BadMagic {
                entry,
                magic: String::from_utf8_lossy(magic).into_owned(),
            },
        });
    }
    const NAMES: [&str; 13] = [
        "ino",
        "mode",
        "uid",
        "gid",
        "nlink",
        "mtime",
        "filesize",
        "devmajor",
        "devminor",
        "rdevmajor",
        "rdevminor",
        "namesize",
        "check",
    ];
    let mut f = [0u32; 13];
    for (i, v) in f.iter_mut().enumerate() {
        let s = &h[6 + i * 8..6 + (i + 1) * 8];
        let field = NAMES[i];
        let txt = std::str::from_utf8(s).map_err(|_| InitramfsError::BadField { entry, field })?;
        if !txt.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InitramfsError::BadField { entry, field });
        }
        *v = u32::from_str_radix(txt, 16).map_err(|_| InitramfsError::BadField { entry, field })?;
    }
    let namesize = f[11];
    if namesize == 0 || namesize > MAX_NAME {
        return Err(InitramfsError::BadName {
            entry,
            why: "name size 0 or beyond PATH_MAX",
        });
    }
    Ok(Header {
        ino: f[0],
        mode: f[1],
        uid: f[2],
        gid: f[3],
        nlink: f[4],
        mtime: f[5],
        filesize: f[6],
        dev: (f[7], f[8]),
        namesize,
    })
}

/// The path of archive name `name` inside the root, relative: `./`, `/`
/// and `.` parts dropped; `None` for the root itself.
///
/// # Errors
/// A `..` component.
pub fn relative_name(name: &str) -> Result<Option<PathBuf>, InitramfsError> {
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(InitramfsError::Escapes {
                    name: name.to_owned(),
                    why: "a name with `..` leaves the root",
                })
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// What [`unpack`] made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries created.
    pub entries: usize,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Device nodes skipped.
    pub skipped_devices: usize,
}

/// Reads exactly `buf.len()` bytes, or reports the entry truncated.
fn read_exact(r: &mut impl Read, buf: &mut [u8], entry: usize) -> Result<(), InitramfsError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => InitramfsError::Truncated(entry),
        _ => InitramfsError::Read(e),
    })
}

/// Skips to the next multiple of 4 of `pos`.
fn align4(r: &mut impl Read, pos: &mut u64, entry: usize) -> Result<(), InitramfsError> {
    let pad = (4 - (*pos % 4)) % 4;
    let mut b = [0u8; 3];
    // `pad` is at most 3.
    read_exact(r, &mut b[..pad as usize], entry)?;
    *pos += pad;
    Ok(())
}

/// Checks that no existing parent of `rel` under `root` is a symbolic
/// link (or not a directory), creating the missing ones as directories.
fn safe_parent(root: &Path, rel: &Path, name: &str) -> Result<PathBuf, InitramfsError> {
    let mut at = root.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(InitramfsError::Escapes {
                    name: name.to_owned(),
                    why: "its parent is a symbolic link or a file",
                })
            }
            Err(_) => fs::DirBuilder::new()
                .mode(0o755)
                .create(&at)
                .map_err(|source| InitramfsError::Create {
                    path: at.clone(),
                    source,
                })?,
        }
    }
    Ok(root.join(rel))
}

/// Removes what stands at `path` unless it is a directory (an archive
/// may replace an entry, as Linux's `clean_path`).
fn clear(path: &Path) {
    if let Ok(m) = fs::symlink_metadata(path) {
        if !m.file_type().is_dir() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Unpacks the `newc` archive `r` into the directory `root` (see the
/// [module docs](self)). Several archives may follow each other, as
/// Linux's; the input ends after a trailer.
///
/// # Errors
/// See [`InitramfsError`]: the archive is refused at the first bad entry
/// (what came before it stays, inside `root`).
pub fn unpack(mut r: impl Read, root: &Path) -> Result<Unpacked, InitramfsError> {
    let mut done = Unpacked::default();
    let mut pos = 0u64;
    let mut links: HashMap<(u32, u32, u32), PathBuf> = HashMap::new();
    let mut saw_trailer = false;
    let mut entry = 0usize;
    loop {
        let mut h = [0u8; HEADER_LEN];
        // Between archives: NUL padding, or the end.
        let mut first = [0u8; 1];
        loop {
            match r.read(&mut first) {
                Ok(0) if saw_trailer => return Ok(done),
                Ok(0) => return Err(InitramfsError::NoTrailer),
                Ok(_) if first[0] == 0 && saw_trailer => pos += 1,
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(InitramfsError::Read(e)),
            }
        }
        h[0] = first[0];
        read_exact(&mut r, &mut h[1..], entry)?;
        pos += HEADER_LEN as u64;
        let hd = parse_header(&h, entry)?;
        let mut name = vec![0u8; hd.namesize as usize];
        read_exact(&mut r, &mut name, entry)?;
        pos += u64::from(hd.namesize);
        align4(&mut r, &mut pos, entry)?;
        if name.pop() != Some(0) || name.contains(&0) {
            return Err(InitramfsError::BadName {
                entry,
                why: "not NUL-terminated",
            });
        }
        let name = String::from_utf8(name).map_err(|_| InitramfsError::BadName {
            entry,
            why: "not UTF-8",
        })?;
        let idx = entry;
        entry += 1;
        if name == TRAILER {
            saw_trailer = true;
            links.clear();
            continue;
        }
        saw_trailer = false;
        let rel = relative_name(&name)?;
        let kind = hd.mode & S_IFMT;
        let perm = hd.mode & 0o7777;
        let size = u64::from(hd.filesize);
        let Some(rel) = rel else {
            // The root itself: only its permissions.
            let mut sink = io::sink();
            copy_exact(&mut r, &mut sink, size, idx)?;
            pos += size;
            align4(&mut r, &mut pos, idx)?;
            let _ = fs::set_permissions(root, fs::Permissions::from_mode(perm));
            continue;
        };
        let path = safe_parent(root, &rel, &name)?;
        let create = |source| InitramfsError::Create {
            path: path.clone(),
            source,
        };
        match kind {
            S_IFREG => {
                let key = (hd.ino, hd.dev.0, hd.dev.1);
                clear(&path);
                if hd.nlink >= 2 {
                    if let Some(first) = links.get(&key) {
                        // A later name of a hard-linked file (Linux links
                        // it to the first; the data, if any, goes to both).
                        fs::hard_link(first, &path).map_err(create)?;
                    }
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .map_err(create)?;
                copy_exact(&mut r, &mut f, size, idx)?;
                pos += size;
                f.set_permissions(fs::Permissions::from_mode(perm))
                    .map_err(create)?;
                if hd.nlink >= 2 {
                    links.entry(key).or_insert_with(|| path.clone());
                }
                done.bytes += size;
            }
            S_IFDIR => {
                skip(&mut r, size, idx)?;
                pos += size;
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_dir() => {}
                    _ => {
                        clear(&path);
                        fs::DirBuilder::new()
                            .mode(0o700)
                            .create(&path)
                            .map_err(create)?;
                    }
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(perm)).map_err(create)?;
            }
            S_IFLNK => {
                if size > u64::from(MAX_NAME) {
                    return Err(InitramfsError::BadName {
                        entry: idx,
                        why: "link target beyond PATH_MAX",
                    });
                }
                let mut target = vec![0u8; size as usize];
                read_exact(&mut r, &mut target, idx)?;
                pos += size;
                let target = String::from_utf8(target).map_err(|_| InitramfsError::BadName {
                    entry: idx,
                    why: "link target not UTF-8",
                })?;
                clear(&path);
                // The target is only text: it is resolved in the guest's
                // root, never by this unpacker (no path goes through a link).
                std::os::unix::fs::symlink(target.trim_end_matches('\0'), &path).map_err(create)?;
            }
            S_IFIFO | S_IFSOCK => {
                skip(&mut r, size, idx)?;
                pos += size;
                clear(&path);
                let k = if kind == S_IFIFO {
                    nix::sys::stat::SFlag::S_IFIFO
                } else {
                    nix::sys::stat::SFlag::S_IFSOCK
                };
                nix::sys::stat::mknod(&path, k, nix::sys::stat::Mode::from_bits_truncate(perm), 0)
                    .map_err(|e| create(io::Error::from(e)))?;
            }
            S_IFCHR | S_IFBLK => {
                skip(&mut r, size, idx)?;
                pos += size;
                done.skipped_devices += 1;
                align4(&mut r, &mut pos, idx)?;
                continue;
            }
            _ => {
                return Err(InitramfsError::BadName {
                    entry: idx,
                    why: "unknown file type",
                })
            }
        }
        if kind != S_IFLNK {
            let _ = nix::unistd::chown(
                &path,
                Some(nix::unistd::Uid::from_raw(hd.uid)),
                Some(nix::unistd::Gid::from_raw(hd.gid)),
            );
        }
        done.entries += 1;
        align4(&mut r, &mut pos, idx)?;
    }
}

/// Copies exactly `n` bytes from `r` to `w`.
fn copy_exact(
    r: &mut impl Read,
    w: &mut impl Write,
    n: u64,
    entry: usize,
) -> Result<(), InitramfsError> {
    let copied = io::copy(&mut r.by_ref().take(n), w).map_err(InitramfsError::Read)?;
    if copied != n {
        return Err(InitramfsError::Truncated(entry));
    }
    Ok(())
}

fn skip(r: &mut impl Read, n: u64, entry: usize) -> Result<(), InitramfsError> {
    copy_exact(r, &mut io::sink(), n, entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `newc` entry as `cpio -H newc` writes it.
    fn entry(name: &str, mode: u32, ino: u32, nlink: u32, data: &[u8]) -> Vec<u8> {
        let mut v = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        )
        .into_bytes();
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(data);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn trailer() -> Vec<u8> {
        entry(TRAILER, 0, 0, 1, b"")
    }

    fn archive(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut v: Vec<u8> = parts.concat();
        v.extend(trailer());
        v
    }

    #[test]
    fn test_unpack_makes_files_dirs_links_and_hard_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = archive(&[
            entry(".", S_IFDIR | 0o755, 1, 2, b""),
            entry("bin", S_IFDIR | 0o755, 2, 2, b""),
            entry("bin/busybox", S_IFREG | 0o755, 3, 2, b"\x7fELF..."),
            entry("bin/sh", S_IFREG | 0o755, 3, 2, b""),
            entry("init", S_IFLNK | 0o777, 4, 1, b"bin/busybox"),
            entry("etc/motd", S_IFREG | 0o644, 5, 1, b"hello\n"),
            entry("dev/sda", S_IFBLK | 0o600, 6, 1, b""),
            entry("run/fifo", S_IFIFO | 0o600, 7, 1, b""),
        ]);
        let u = unpack(&a[..], dir.path()).expect("unpacks");
        let r = dir.path();
        assert_eq!(
            fs::read(r.join("bin/busybox")).expect("file"),
            b"\x7fELF..."
        );
        assert_eq!(fs::read(r.join("bin/sh")).expect("link"), b"\x7fELF...");
        assert_eq!(
            fs::read_link(r.join("init")).expect("symlink"),
            Path::new("bin/busybox")
        );
        assert_eq!(fs::read(r.join("etc/motd")).expect("motd"), b"hello\n");
        assert!(!r.join("dev/sda").exists(), "device nodes are not made");
        assert_eq!(u.skipped_devices, 1);
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::symlink_metadata(r.join("run/fifo"))
            .expect("fifo")
            .file_type()
            .is_fifo());
        let m = fs::metadata(r.join("bin/busybox")).expect("meta");
        assert_eq!(m.permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn test_unpack_bad_magic_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = archive(&[entry("x", S_IFREG | 0o644, 1, 1, b"x")]);
        a[..6].copy_from_slice(b"070707");
        let e = unpack(&a[..], dir.path()).expect_err("refused");
        assert!(matches!(e, InitramfsError::BadMagic { .. }), "{e}");
        let e = unpack(&[0x1f, 0x8b, 8, 0][..], dir.path()).expect_err("refused");
        // A short gzip stream is already seen as truncated before its magic.
        assert!(
            matches!(
                e,
                InitramfsError::Truncated(0) | InitramfsError::Compressed("gzip")
            ),
            "{e}"
        );
        let mut gz = vec![0x1f, 0x8b];
        gz.resize(200, 0);
        let e = unpack(&gz[..], dir.path()).expect_err("refused");
        assert!(matches!(e, InitramfsError::Compressed("gzip")), "{e}");
    }

    #[test]
    fn test_unpack_dotdot_names_are_refused_and_nothing_is_written_outside() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        fs::create_dir(&root).expect("root");
        for name in ["../evil", "a/../../evil", "/../evil", "./../evil"] {
            let a = archive(&[entry(name, S_IFREG | 0o644, 1, 1, b"pwned")]);
            let e = unpack(&a[..], &root).expect_err(name);
            assert!(matches!(e, InitramfsError::Escapes { .. }), "{name}: {e}");
        }
        assert!(!outer.path().join("evil").exists());
        // An absolute name stays inside.
        let a = archive(&[entry("/etc/x", S_IFREG | 0o644, 1, 1, b"ok")]);
        unpack(&a[..], &root).expect("absolute names are relative to the root");
        assert_eq!(fs::read(root.join("etc/x")).expect("inside"), b"ok");
    }

    #[test]
    fn test_unpack_never_writes_through_its_own_symlinks() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        let victim = outer.path().join("victim");
        fs::create_dir(&root).expect("root");
        fs::create_dir(&victim).expect("victim");
        fs::write(victim.join("file"), b"precious").expect("victim file");
        let target = victim.to_string_lossy().into_owned();
        // A link to a host directory, then a file "through" it.
        let a = archive(&[
            entry("d", S_IFLNK | 0o777, 1, 1, target.as_bytes()),
            entry("d/file", S_IFREG | 0o644, 2, 1, b"pwned"),
        ]);
        let e = unpack(&a[..], &root).expect_err("refused");
        assert!(matches!(e, InitramfsError::Escapes { .. }), "{e}");
        // A link to a host file, then the same name as a file: the link is
        // replaced, the host file untouched.
        let a = archive(&[
            entry(
                "f",
                S_IFLNK | 0o777,
                1,
                1,
                victim.join("file").to_string_lossy().as_bytes(),
            ),
            entry("f", S_IFREG | 0o644, 2, 1, b"pwned"),
        ]);
        unpack(&a[..], &root).expect("unpacks");
        assert_eq!(fs::read(victim.join("file")).expect("victim"), b"precious");
        assert_eq!(fs::read(root.join("f")).expect("f"), b"pwned");
    }

    #[test]
    fn test_unpack_sizes_beyond_the_file_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut e = entry("big", S_IFREG | 0o644, 1, 1, b"abcd");
        // filesize field (the 7th, at 6 + 6*8) says 1 MiB.
        e[54..62].copy_from_slice(b"00100000");
        let err = unpack(&e[..], dir.path()).expect_err("refused");
        assert!(matches!(err, InitramfsError::Truncated(0)), "{err}");
        // A name size beyond the file.
        let mut e = entry("n", S_IFREG | 0o644, 1, 1, b"");
        e[94..102].copy_from_slice(b"00000fff");
        let err = unpack(&e[..], dir.path()).expect_err("refused");
        assert!(matches!(err, InitramfsError::Truncated(0)), "{err}");
        // No trailer.
        let e = entry("x", S_IFREG | 0o644, 1, 1, b"x");
        let err = unpack(&e[..], dir.path()).expect_err("refused");
        assert!(matches!(err, InitramfsError::NoTrailer), "{err}");
    }

    #[test]
    fn test_parse_header_refuses_non_hex_and_huge_names() {
        let mut h = [b'0'; HEADER_LEN];
        h[..6].copy_from_slice(b"070701");
        h[94..102].copy_from_slice(b"00000002");
        parse_header(&h, 0).expect("valid");
        let mut bad = h;
        bad[10] = b'g';
        assert!(matches!(
            parse_header(&bad, 0),
            Err(InitramfsError::BadField { field: "ino", .. })
        ));
        let mut huge = h;
        huge[94..102].copy_from_slice(b"ffffffff");
        assert!(matches!(
            parse_header(&huge, 0),
            Err(InitramfsError::BadName { .. })
        ));
    }

    #[test]
    fn test_unpack_reads_what_cpio_writes() {
        // The real tool, when present (the e2e tests need it anyway).
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub")).expect("src");
        fs::write(src.join("sub/f"), b"data").expect("f");
        std::os::unix::fs::symlink("sub/f", src.join("l")).expect("l");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet")
            .current_dir(&src)
            .output()
            .expect("run cpio (Debian's cpio, tests/setup-host.sh)");
        assert!(out.status.success(), "cpio: {out:?}");
        let root = dir.path().join("root");
        fs::create_dir(&root).expect("root");
        unpack(&out.stdout[..], &root).expect("unpacks");
        assert_eq!(fs::read(root.join("sub/f")).expect("f"), b"data");
        assert_eq!(fs::read(root.join("l")).expect("l"), b"data");
    }
}
