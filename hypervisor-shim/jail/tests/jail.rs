//! The jail on real processes (needs root: it changes uids and drops
//! capabilities; fails loudly otherwise). Each case forks a child that
//! starts threads, enters the jail, and reports through its exit status.

use std::time::Duration;

use xen_jail::{domain_uid, Cap, Confinement, Jail};

fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the jail tests need root");
}

/// Syscalls the children below use after jailing (besides the jail's own
/// `BASE_SYSCALLS` and `THREAD_SYSCALLS`).
const CHILD_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_getdents64,
    libc::SYS_lseek,
];

/// Forks; the child runs `f` and exits with its code. Returns the wait
/// status.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: fork in a test process; the child only runs `f` and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child without running the parent's atexit state.
        unsafe { libc::_exit(code) };
    }
    let mut st = 0;
    // SAFETY: waits for our own child.
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    st
}

/// Mean cost of a raw `getpid` (an allowed syscall), in ns.
fn syscall_ns() -> f64 {
    const N: u32 = 200_000;
    let t0 = std::time::Instant::now();
    for _ in 0..N {
        // SAFETY: getpid has no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    t0.elapsed().as_nanos() as f64 / f64::from(N)
}

fn sleepers(n: usize) {
    for _ in 0..n {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(5));
        });
    }
}

#[test]
fn test_jail_every_thread_gets_the_uid_kept_caps_nnp_and_seccomp() {
    require_root();
    let uid = domain_uid(4000);
    let st = in_child(|| {
        sleepers(3);
        let keep = [Cap::Kill];
        let j = Jail {
            uid,
            gid: uid,
            keep: &keep,
            syscalls: CHILD_SYSCALLS,
            report_fd: None,
            root: None,
        };
        let before = syscall_ns();
        let t0 = std::time::Instant::now();
        if let Err(e) = j.enter() {
            eprintln!("enter: {e}");
            return 2;
        }
        let took = t0.elapsed();
        let after = syscall_ns();
        eprintln!(
            "jail entered in {} us (4 threads); getpid {before:.0} ns unjailed, {after:.0} ns under the filter",
            took.as_micros()
        );
        let pid = std::process::id();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 3;
        };
        let mut n = 0;
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
                return 4;
            };
            let Ok(c) = Confinement::of(pid, Some(tid)) else {
                return 5;
            };
            let want = Confinement::mask(&[Cap::Kill]);
            if c.uids != [uid; 4] || c.gids != [uid; 4] {
                eprintln!("thread {tid}: uids {:?} gids {:?}", c.uids, c.gids);
                return 6;
            }
            if c.cap_eff != want || c.cap_prm != want || c.cap_bnd != want || c.cap_amb != 0 {
                eprintln!("thread {tid}: {c:?}");
                return 7;
            }
            if !c.no_new_privs || c.seccomp != 2 {
                eprintln!("thread {tid}: {c:?}");
                return 8;
            }
            n += 1;
        }
        if n < 4 {
            return 9;
        }
        0
    });
    assert!(libc::WIFEXITED(st), "child status {st:#x}");
    assert_eq!(libc::WEXITSTATUS(st), 0, "child exit code");
}

#[test]
fn test_jail_denied_syscall_kills_with_sigsys() {
    require_root();
    let st = in_child(|| {
        sleepers(1);
        let j = Jail {
            uid: domain_uid(4001),
            gid: domain_uid(4001),
            keep: &[],
            syscalls: CHILD_SYSCALLS,
            report_fd: None,
            root: None,
        };
        if j.enter().is_err() {
            return 2;
        }
        // Not in the allow-list: the filter traps, the process dies.
        // SAFETY: a raw syscall without arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
        0
    });
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS,
        "the child was not killed by SIGSYS: status {st:#x}"
    );
}

#[test]
fn test_jail_uid_cannot_open_root_only_files_or_chroot_back() {
    require_root();
    let dir = std::env::temp_dir().join(format!("xen-jail-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("empty")).expect("mkdir");
    let secret = dir.join("secret");
    std::fs::write(&secret, b"x").expect("write");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let root = dir.join("empty");
    let st = in_child(|| {
        let j = Jail {
            uid: domain_uid(4002),
            gid: domain_uid(4002),
            keep: &[],
            syscalls: CHILD_SYSCALLS,
            report_fd: None,
            root: None,
        };
        if j.enter().is_err() {
            return 2;
        }
        match std::fs::File::open(&secret) {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => 0,
            _ => 3,
        }
    });
    assert!(libc::WIFEXITED(st), "child status {st:#x}");
    assert_eq!(
        libc::WEXITSTATUS(st),
        0,
        "a root-only file opened by the jailed uid"
    );
    let st = in_child(|| {
        let j = Jail {
            uid: domain_uid(4003),
            gid: domain_uid(4003),
            keep: &[],
            syscalls: CHILD_SYSCALLS,
            report_fd: None,
            root: Some(&root),
        };
        if j.enter().is_err() {
            return 2;
        }
        // The old root is gone: /proc is not in the empty directory.
        if std::path::Path::new("/proc/self").exists() {
            return 3;
        }
        0
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(libc::WIFEXITED(st), "child status {st:#x}");
    assert_eq!(libc::WEXITSTATUS(st), 0, "the chroot did not hide the host");
}

#[test]
fn test_jail_threads_start_but_a_fork_kills_with_sigsys() {
    require_root();
    let st = in_child(|| {
        let j = Jail {
            uid: domain_uid(4004),
            gid: domain_uid(4004),
            keep: &[],
            syscalls: CHILD_SYSCALLS,
            report_fd: None,
            root: None,
        };
        if j.enter().is_err() {
            return 2;
        }
        // A thread after jailing (clone3 is ENOSYS, glibc falls back to
        // clone with CLONE_THREAD).
        if std::thread::spawn(|| 7).join().ok() != Some(7) {
            return 3;
        }
        // A new process is not: clone without CLONE_THREAD traps.
        // SAFETY: fork; the filter kills the process before it returns.
        unsafe { libc::fork() };
        4
    });
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS,
        "a fork must die of SIGSYS, a thread must start: status {st:#x} (exit {})",
        libc::WEXITSTATUS(st)
    );
}
