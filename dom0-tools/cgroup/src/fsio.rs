//! The file operations both versions share: reading and writing cgroup
//! files with the path in the error, member lists, joining a group from
//! a child before exec, and killing every member before `rmdir`.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{parse, CgroupError, DESTROY_TIMEOUT};

pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `value` to a cgroup file (one `write(2)`).
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io("write", path))
}

/// Reads a cgroup file.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io("read", path))
}

/// Reads a number file.
pub(crate) fn read_u64(path: &Path, what: &'static str) -> Result<u64, CgroupError> {
    parse::parse_u64(what, &read(path)?).map_err(|source| CgroupError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a limit file (`max`/unlimited is `None`).
pub(crate) fn read_limit(path: &Path, what: &'static str) -> Result<Option<u64>, CgroupError> {
    parse::parse_limit(what, &read(path)?).map_err(|source| CgroupError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// A keyed value of a flat keyed file (0 when the key is absent).
pub(crate) fn read_keyed(path: &Path, key: &str) -> Result<u64, CgroupError> {
    Ok(parse::keyed(&read(path)?, key).unwrap_or(0))
}

/// The pids in `cgroup.procs`/`tasks`/`cgroup.threads` (none when the
/// group is gone; 0, a member outside our pid namespace, is left out).
pub(crate) fn read_pids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|&p: &i32| p > 0)
            .collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// The names of the directories in `dir` (none when it does not exist).
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(io("list", dir))?;
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `mkdir`; whether it was made (false: it existed).
pub(crate) fn mkdir(dir: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io("create", dir)(e)),
    }
}

/// `rmdir`; a directory that is gone already is fine.
pub(crate) fn rmdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", dir)(e)),
    }
}

/// Has the process `cmd` spawns write `0` (itself) to each directory's
/// `file` (`cgroup.procs`, or v1's `tasks`) between fork and exec.
pub(crate) fn enter_on_exec(
    dirs: &[PathBuf],
    file: &str,
    cmd: &mut Command,
) -> Result<(), CgroupError> {
    let mut fds = Vec::new();
    for d in dirs {
        let p = d.join(file);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(io("open", &p))?;
        fds.push(OwnedFd::from(f));
    }
    let hook = move || {
        for fd in &fds {
            // SAFETY: write(2) on a descriptor this closure owns, from a
            // valid one-byte buffer; it is async-signal-safe, as code
            // between fork and exec must be (nothing here allocates).
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec; it only
    // calls write(2) on descriptors it owns (opened above with
    // O_CLOEXEC, so they close at exec) and builds an io::Error from
    // errno, which does not allocate.
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(())
}

/// A pidfd of `pid` (`None` if it is gone).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&f| f >= 0)?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIGKILLs every member listed in `procs`, race-free against pid reuse:
/// each pid is pinned by a pidfd first and signalled only if it is still
/// listed after that; returns how many were listed.
fn kill_members(procs: &Path) -> Result<usize, CgroupError> {
    let pids = read_pids(procs)?;
    let pinned: Vec<(i32, OwnedFd)> = pids
        .iter()
        .filter_map(|&p| pidfd_open(p).map(|fd| (p, fd)))
        .collect();
    let still = read_pids(procs)?;
    for (pid, fd) in &pinned {
        if still.contains(pid) {
            // SAFETY: pidfd_send_signal with a pidfd we own, a signal
            // number and a null siginfo; no memory is passed.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
        }
    }
    Ok(pids.len())
}

/// Kills every member of the group (listed in `procs`, and in each
/// directory's `cgroup.procs`) until none is left, then removes the
/// directories.
pub(crate) fn kill_and_remove(dirs: &[PathBuf], procs: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + DESTROY_TIMEOUT;
    let lists: Vec<PathBuf> = std::iter::once(procs.to_path_buf())
        .chain(dirs.iter().map(|d| d.join("cgroup.procs")))
        .collect();
    loop {
        let mut left = 0;
        for l in &lists {
            left += kill_members(l)?;
        }
        if left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Busy {
                path: procs.parent().map(Path::to_path_buf).unwrap_or_default(),
                pids: read_pids(procs)?,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for d in dirs {
        loop {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                // The last members are still leaving.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    let _ = kill_members(&d.join("cgroup.procs"));
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(io("remove", d)(e)),
            }
        }
    }
    Ok(())
}
