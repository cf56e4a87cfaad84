//! What the guest-machine tests share: root images made from
//! `examples/mkroot.sh`'s busybox root with files written in by `debugfs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use xen_testhost::stdout_of;

/// Directories `examples/mkroot.sh` makes (a `debugfs mkdir` of one fails).
const ROOT_DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr",
    "/usr/bin",
    "/usr/sbin",
    "/etc",
    "/dev",
    "/proc",
    "/sys",
    "/tmp",
    "/run",
    "/root",
    "/mnt",
    "/var",
];

/// A file for [`image_with`]: the host file, its mode, its path in the
/// image.
pub type ImageFile = (PathBuf, u32, String);

/// Debian's xenstore-utils programs a guest gets (one multi-call binary,
/// named for its applet).
pub const XENSTORE_TOOLS: &[&str] = &[
    "xenstore-read",
    "xenstore-write",
    "xenstore-rm",
    "xenstore-chmod",
    "xenstore-ls",
    "xenstore-watch",
];

/// A copy `name` of the image `base` with directories `mkdirs` made and
/// `files` (host file, mode, path in the image) written in by `debugfs`,
/// after removing `remove`.
pub fn image_with(
    dir: &Path,
    base: &Path,
    name: &str,
    remove: &[&str],
    mkdirs: &[String],
    files: &[ImageFile],
) -> Result<PathBuf> {
    let img = dir.join(name);
    std::fs::copy(base, &img).context("copy the root image")?;
    let mut cmds = String::new();
    for r in remove {
        let _ = writeln!(cmds, "rm {r}");
    }
    for d in mkdirs {
        let _ = writeln!(cmds, "mkdir {d}");
    }
    for (local, mode, target) in files {
        let _ = writeln!(cmds, "write {} {target}", local.display());
        let _ = writeln!(cmds, "sif {target} mode 0{:o}", 0o100_000 | mode);
    }
    let cmdfile = dir.join(format!("{name}.debugfs"));
    std::fs::write(&cmdfile, cmds)?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmdfile)
        .arg(&img)
        .output()
        .context("run debugfs")?;
    let text = stdout_of("debugfs -w", &out)? + &String::from_utf8_lossy(&out.stderr);
    if text.contains("rror") {
        bail!("debugfs: {text}");
    }
    Ok(img)
}

/// Writes `text` to `dir/local` (mode `mode`) for [`image_with`]: the
/// entry that puts it at `target`.
pub fn text_file(
    dir: &Path,
    local: &str,
    text: &str,
    mode: u32,
    target: &str,
) -> Result<ImageFile> {
    let p = dir.join(local);
    std::fs::write(&p, text)?;
    Ok((p, mode, target.to_owned()))
}

/// The host's xenstore-utils programs and the shared libraries they load
/// (as `ldd` finds them, at the same paths) for [`image_with`]: the
/// directories to make and the files. Needs xenstore-utils
/// (tests/setup-host.sh).
pub fn xenstore_tools() -> Result<(Vec<String>, Vec<ImageFile>)> {
    xen_testhost::need("xenstore-read", "xenstore-utils")?;
    let bin = PathBuf::from("/usr/bin/xenstore-read");
    let out = Command::new("ldd").arg(&bin).output().context("run ldd")?;
    let text = stdout_of("ldd", &out)?;
    let mut files: Vec<ImageFile> = XENSTORE_TOOLS
        .iter()
        .map(|t| (bin.clone(), 0o755, format!("/usr/bin/{t}")))
        .collect();
    let mut mkdirs: Vec<String> = Vec::new();
    for l in text.lines() {
        // `libx.so => /lib/.../libx.so (0x...)` or `/lib64/ld-linux... (0x...)`.
        let path = match l.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let mut parent = Path::new(path).parent();
        let mut chain = Vec::new();
        while let Some(d) = parent.filter(|d| *d != Path::new("/")) {
            chain.push(d.display().to_string());
            parent = d.parent();
        }
        for d in chain.into_iter().rev() {
            if !ROOT_DIRS.contains(&d.as_str()) && !mkdirs.contains(&d) {
                mkdirs.push(d);
            }
        }
        files.push((PathBuf::from(path), 0o755, path.to_owned()));
        // glibc loads libgcc_s.so.1 for pthread_cancel (xs_close ends the
        // watch thread so): next to libc.
        if Path::new(path).file_name() == Some(std::ffi::OsStr::new("libc.so.6")) {
            let gcc = Path::new(path).with_file_name("libgcc_s.so.1");
            if gcc.exists() {
                files.push((gcc.clone(), 0o755, gcc.display().to_string()));
            }
        }
    }
    if files.len() <= XENSTORE_TOOLS.len() {
        bail!("ldd found no libraries of {}: {text}", bin.display());
    }
    Ok((mkdirs, files))
}
