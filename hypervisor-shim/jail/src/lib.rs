//! `xen-jail`: deprivileging a domain's runtime after its set-up, the one
//! mechanism both the PV guest runtime (`xen-pvguest`) and the PVHVM VMM
//! (`xen-vmm`) use (Firecracker's jailer is the reference).
//!
//! A [`Jail`] moves the whole process, every thread of it:
//! 1. to the domain's own host uid and gid ([`domain_uid`]: `0x7F000000 +
//!    domid`, a range of its own, distinct from the guests' user-namespace
//!    ranges), with no supplementary groups;
//! 2. (optionally) into an empty root ([`Jail::root`]: `chroot`, the VMM's
//!    case: it needs no file once its VM is built);
//! 3. to the capabilities of its named kept set only (effective =
//!    permitted = bounding set = the kept list; inheritable and ambient
//!    empty; [`Cap`]);
//! 4. with `PR_SET_NO_NEW_PRIVS`;
//! 5. under a seccomp allow-list (`seccompiler`; `clone` for threads only,
//!    `clone3` answered `ENOSYS`): any other syscall traps;
//!    the trap handler writes `xen-jail: seccomp denied syscall N` to
//!    what stderr was when the jail was entered (the runtime's console or
//!    log) and the process dies of `SIGSYS`.
//!
//! Credentials and capabilities are per thread in Linux: the calling thread
//! changes its own and asks every other thread of the process to do the
//! same with a signal (as glibc's `setxid` broadcast does), then installs
//! the filter on all threads at once (`SECCOMP_FILTER_FLAG_TSYNC`).
//!
//! A process starts jailed only when its toolstack asks ([`ENV_JAIL`]): the
//! tests and tools that run a runtime by hand as root keep their powers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The first host uid (and gid) of the domains' runtimes: domain N's
/// runtime or VMM runs as `DOMAIN_UID_BASE + N`.
pub const DOMAIN_UID_BASE: u32 = 0x7F00_0000;

/// Set to `1` by the toolstack in a runtime's or VMM's environment: jail
/// the process once its domain is set up.
pub const ENV_JAIL: &str = "XEN_JAIL";

/// Test-only: after jailing, make one syscall outside the allow-list (the
/// test that the filter kills the process).
pub const ENV_JAIL_PROBE: &str = "XEN_JAIL_PROBE_DENIED";

/// Debugging aid: with `1`, a syscall outside the allow-list is allowed
/// and logged by the kernel (`SECCOMP_RET_LOG`: `audit: type=1326 ...
/// syscall=N` in `dmesg`) instead of killing the process: how the
/// allow-lists were completed over the end-to-end suites.
pub const ENV_JAIL_AUDIT: &str = "XEN_JAIL_AUDIT";

/// The host uid (and gid) of domain `domid`'s runtime.
pub fn domain_uid(domid: u16) -> u32 {
    DOMAIN_UID_BASE + u32::from(domid)
}

/// Whether the environment asks for a jail ([`ENV_JAIL`] is `1`).
pub fn requested() -> bool {
    std::env::var(ENV_JAIL).is_ok_and(|v| v == "1")
}

/// A capability a jailed process may keep (Linux's numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Cap {
    /// `CAP_KILL`: signal the guest's init, whose uid is not ours.
    Kill = 5,
    /// `CAP_NET_ADMIN`: the guest NICs' TAP carriers and links.
    NetAdmin = 12,
    /// `CAP_SYS_CHROOT`: entering a guest's mount namespace (`setns`) and
    /// root (`chroot`) to attach a mount made on its behalf.
    SysChroot = 18,
    /// `CAP_SYS_PTRACE`: reading a guest process's system call arguments
    /// (`process_vm_readv`) and opening its namespaces, root and working
    /// directory (its uid is not ours).
    SysPtrace = 19,
    /// `CAP_SYS_ADMIN`: unmounting the guest's root and disks at the end,
    /// mounts on the guest's behalf.
    SysAdmin = 21,
}

impl Cap {
    fn bit(self) -> u64 {
        1u64 << (self as u32)
    }
}

/// The jail's errors.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A system call of the set-up failed.
    #[error("cannot {what}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A thread did not take the new credentials.
    #[error("thread {tid} could not drop its privileges (errno {errno})")]
    Thread {
        /// The thread.
        tid: i32,
        /// What failed.
        errno: i32,
    },
    /// Threads did not answer the credential broadcast in time.
    #[error("{missing} threads did not answer the credential broadcast")]
    Broadcast {
        /// How many.
        missing: usize,
    },
    /// The seccomp filter could not be built or installed.
    #[error("seccomp filter")]
    Seccomp(#[source] seccompiler::Error),
    /// Another jail is being entered in this process.
    #[error("the process is already being jailed")]
    Busy,
}

fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Sys { what, source }
}

/// What a process becomes.
#[derive(Clone, Debug)]
pub struct Jail<'a> {
    /// Host uid.
    pub uid: u32,
    /// Host gid.
    pub gid: u32,
    /// The capabilities kept (every other one leaves every set).
    pub keep: &'a [Cap],
    /// The syscalls allowed (`libc::SYS_*`), besides [`BASE_SYSCALLS`] and
    /// [`THREAD_SYSCALLS`].
    pub syscalls: &'a [libc::c_long],
    /// Where a denied syscall is reported (default: a copy of stderr taken
    /// when the jail is entered).
    pub report_fd: Option<std::os::fd::RawFd>,
    /// An empty directory to `chroot` into (after the other threads
    /// dropped their privileges, before the calling thread does).
    pub root: Option<&'a Path>,
}

/// Syscalls every jailed process keeps: returning from signal handlers
/// (and resuming the calls they interrupted), exiting, and what the trap
/// handler needs to report a denied call.
pub const BASE_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_rt_sigreturn,
    // A sleep interrupted by the credential broadcast resumes with it.
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_write,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
];

/// Syscalls every jailed process keeps because it is a multi-threaded Rust
/// program: memory, threads (`clone` for threads only, see [`filter`]),
/// sleeping and time, randomness. The one list the runtime, the VMM and
/// the tests share.
pub const THREAD_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
];

// The plan the broadcast handler applies in each thread.
static PLAN_UID: AtomicU32 = AtomicU32::new(u32::MAX);
static PLAN_GID: AtomicU32 = AtomicU32::new(u32::MAX);
static PLAN_KEEP: AtomicU64 = AtomicU64::new(0);
static PLAN_LAST_CAP: AtomicU32 = AtomicU32::new(40);
static DONE: AtomicUsize = AtomicUsize::new(0);
static FAILED_TID: AtomicI32 = AtomicI32::new(0);
static FAILED_ERRNO: AtomicI32 = AtomicI32::new(0);
static BUSY: AtomicU32 = AtomicU32::new(0);
/// Where the trap handler reports a denied syscall: a copy of stderr taken
/// when the jail was entered (a runtime may point fd 2 elsewhere later).
static REPORT_FD: AtomicI32 = AtomicI32::new(2);

/// The signal of the credential broadcast.
fn broadcast_signal() -> libc::c_int {
    libc::SIGRTMIN() + 6
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Applies the plan to the calling thread with raw system calls only
/// (it runs in a signal handler). Returns 0 or the failing errno.
fn restrict_this_thread() -> i32 {
    let uid = PLAN_UID.load(Ordering::Acquire);
    let gid = PLAN_GID.load(Ordering::Acquire);
    let keep = PLAN_KEEP.load(Ordering::Acquire);
    let last = PLAN_LAST_CAP.load(Ordering::Acquire).min(63);
    // SAFETY: prctl with integer arguments only; keeps the permitted set
    // across the uid change below (this thread only).
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return errno();
    }
    for cap in 0..=last {
        if keep & (1u64 << cap) == 0 {
            // SAFETY: prctl with integer arguments; EINVAL for a capability
            // the kernel does not know is fine.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 && errno() != libc::EINVAL {
                return errno();
            }
        }
    }
    // SAFETY: raw syscalls (the thread's own credentials; glibc's wrappers
    // would broadcast to every thread from a signal handler).
    let r = unsafe {
        if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0 {
            -1
        } else if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
            -2
        } else if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
            -3
        } else {
            0
        }
    };
    if r != 0 {
        return errno();
    }
    let hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let lo = keep as u32;
    let hi = (keep >> 32) as u32;
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads the header and two data structs, both live on
    // this stack for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) } != 0 {
        return errno();
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return errno();
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        {
            return errno();
        }
    }
    0
}

extern "C" fn on_broadcast(_: libc::c_int) {
    let saved = errno();
    let r = restrict_this_thread();
    if r != 0 {
        FAILED_TID.store(gettid(), Ordering::Release);
        FAILED_ERRNO.store(r, Ordering::Release);
    }
    DONE.fetch_add(1, Ordering::AcqRel);
    // SAFETY: restores the interrupted code's errno (a thread-local int).
    unsafe { *libc::__errno_location() = saved };
}

/// SIGSYS from the filter: say which syscall, then die of `SIGSYS`.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `siginfo_t._sigsys`: `_call_addr` (a pointer) at offset 16, then the
    // `int _syscall`.
    // SAFETY: the kernel passes a valid siginfo_t (SA_SIGINFO), 128 bytes;
    // offset 24 is inside it.
    let nr = unsafe { (info as *const u8).add(24).cast::<i32>().read_unaligned() };
    let mut buf = [0u8; 64];
    let head = b"xen-jail: seccomp denied syscall ";
    buf[..head.len()].copy_from_slice(head);
    let mut n = head.len();
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut v = nr.unsigned_abs();
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    buf[n] = b'\n';
    n += 1;
    // SAFETY: raw write of a live stack buffer, resetting SIGSYS to its
    // default action and re-raising it at this thread: allowed by every
    // filter (BASE_SYSCALLS); the signal is delivered when the handler
    // returns and kills the process.
    unsafe {
        libc::write(REPORT_FD.load(Ordering::Relaxed), buf.as_ptr().cast(), n);
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        libc::syscall(libc::SYS_tgkill, libc::getpid(), gettid(), libc::SIGSYS);
    }
}

fn install(sig: libc::c_int, handler: usize, siginfo: bool) -> Result<(), JailError> {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C"
    // function of the right signature for the flags set.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_RESTART | if siginfo { libc::SA_SIGINFO } else { 0 };
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(JailError::Sys {
                what: "install a signal handler",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

fn threads() -> Result<Vec<libc::pid_t>, JailError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").map_err(sys("list /proc/self/task"))? {
        let e = e.map_err(sys("list /proc/self/task"))?;
        if let Some(t) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(t);
        }
    }
    Ok(out)
}

/// How long the other threads have to take the new credentials.
const BROADCAST_TIMEOUT: Duration = Duration::from_secs(5);

/// The highest capability the kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Builds the BPF allow-list: `syscalls`, [`BASE_SYSCALLS`] and
/// [`THREAD_SYSCALLS`] allowed,
/// anything else traps (`SIGSYS`; logged only with [`ENV_JAIL_AUDIT`]).
pub fn filter(syscalls: &[libc::c_long]) -> Result<BpfProgram, JailError> {
    let be = |e| JailError::Seccomp(seccompiler::Error::Backend(e));
    // `clone` makes threads only (a jailed process starts no process and
    // no namespace); `clone3`'s flags are behind a pointer: the second
    // filter ([`no_clone3`]) makes it ENOSYS, and glibc falls back to
    // `clone`.
    let thread_only = seccompiler::SeccompRule::new(vec![seccompiler::SeccompCondition::new(
        0,
        seccompiler::SeccompCmpArgLen::Qword,
        seccompiler::SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )
    .map_err(be)?])
    .map_err(be)?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = syscalls
        .iter()
        .chain(BASE_SYSCALLS)
        .chain(THREAD_SYSCALLS)
        .map(|&s| {
            let rules = if s == libc::SYS_clone {
                vec![thread_only.clone()]
            } else {
                Vec::new()
            };
            (s, rules)
        })
        .collect();
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(be)?;
    let mismatch = if std::env::var(ENV_JAIL_AUDIT).is_ok_and(|v| v == "1") {
        SeccompAction::Log
    } else {
        SeccompAction::Trap
    };
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(be)?;
    BpfProgram::try_from(f).map_err(be)
}

/// The second filter: `clone3` fails with `ENOSYS` (see [`filter`]).
pub fn no_clone3() -> Result<BpfProgram, JailError> {
    let be = |e| JailError::Seccomp(seccompiler::Error::Backend(e));
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(be)?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        [(libc::SYS_clone3, Vec::new())].into_iter().collect();
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(be)?;
    BpfProgram::try_from(f).map_err(be)
}

impl Jail<'_> {
    /// Enters the jail (see the [module docs](self)). Every thread of the
    /// process ends with the new credentials, or this fails (and the caller
    /// must end the process: some threads may have changed).
    pub fn enter(&self) -> Result<(), JailError> {
        if BUSY.swap(1, Ordering::AcqRel) != 0 {
            return Err(JailError::Busy);
        }
        let prog = filter(self.syscalls)?;
        let clone3 = no_clone3()?;
        PLAN_UID.store(self.uid, Ordering::Release);
        PLAN_GID.store(self.gid, Ordering::Release);
        PLAN_KEEP.store(
            self.keep.iter().fold(0, |m, c| m | c.bit()),
            Ordering::Release,
        );
        PLAN_LAST_CAP.store(last_cap(), Ordering::Release);
        install(
            broadcast_signal(),
            on_broadcast as extern "C" fn(libc::c_int) as usize,
            false,
        )?;
        self.broadcast()?;
        // After the broadcast (it lists /proc/self/task), before this thread
        // gives up CAP_SYS_CHROOT; the root is shared by all threads.
        if let Some(root) = self.root {
            std::os::unix::fs::chroot(root).map_err(sys("chroot into the jail"))?;
            std::env::set_current_dir("/").map_err(sys("chdir to the jail's root"))?;
        }
        let r = restrict_this_thread();
        if r != 0 {
            return Err(JailError::Thread {
                tid: gettid(),
                errno: r,
            });
        }
        // SAFETY: fcntl duplicating an fd (if open) to a fresh fd.
        let report = unsafe { libc::fcntl(self.report_fd.unwrap_or(2), libc::F_DUPFD_CLOEXEC, 3) };
        if report >= 0 {
            REPORT_FD.store(report, Ordering::Release);
        }
        install(
            libc::SIGSYS,
            on_sigsys as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as usize,
            true,
        )?;
        // clone3's filter first: installing one makes a prctl the
        // allow-list need not have.
        seccompiler::apply_filter_all_threads(&clone3).map_err(JailError::Seccomp)?;
        seccompiler::apply_filter_all_threads(&prog).map_err(JailError::Seccomp)?;
        if std::env::var(ENV_JAIL_PROBE).is_ok_and(|v| v == "1") {
            // A syscall no filter allows: the process dies of SIGSYS here.
            // SAFETY: a raw syscall with no arguments that changes nothing.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        Ok(())
    }

    /// Asks every other thread to apply the plan and waits for all of them
    /// (threads started meanwhile are found by the next pass).
    fn broadcast(&self) -> Result<(), JailError> {
        let me = gettid();
        // SAFETY: getpid cannot fail.
        let pid = unsafe { libc::getpid() };
        let mut signalled = std::collections::BTreeSet::new();
        DONE.store(0, Ordering::Release);
        let deadline = Instant::now() + BROADCAST_TIMEOUT;
        loop {
            let mut new = 0;
            for t in threads()? {
                if t != me && signalled.insert(t) {
                    // SAFETY: tgkill to a thread of this process with a
                    // signal whose handler is installed.
                    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, t, broadcast_signal()) };
                    if r != 0 && errno() == libc::ESRCH {
                        // Gone meanwhile: nothing to change.
                        signalled.remove(&t);
                        continue;
                    }
                    new += 1;
                }
            }
            while DONE.load(Ordering::Acquire) < signalled.len() {
                if Instant::now() >= deadline {
                    return Err(JailError::Broadcast {
                        missing: signalled.len() - DONE.load(Ordering::Acquire),
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let failed = FAILED_TID.load(Ordering::Acquire);
            if failed != 0 {
                return Err(JailError::Thread {
                    tid: failed,
                    errno: FAILED_ERRNO.load(Ordering::Acquire),
                });
            }
            if new == 0 {
                return Ok(());
            }
        }
    }
}

/// What `/proc/<pid>/status` says of a process's confinement: its uids,
/// `CapEff`, `CapBnd`, `NoNewPrivs`, `Seccomp` (for tests and `xl`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confinement {
    /// Real, effective, saved, fs uid.
    pub uids: Vec<u32>,
    /// Real, effective, saved, fs gid.
    pub gids: Vec<u32>,
    /// Effective capabilities.
    pub cap_eff: u64,
    /// Permitted capabilities.
    pub cap_prm: u64,
    /// Bounding set.
    pub cap_bnd: u64,
    /// Ambient set.
    pub cap_amb: u64,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
}

impl Confinement {
    /// Reads `/proc/<pid>/task/<tid>/status` (or the process's with `tid`
    /// `None`).
    pub fn of(pid: u32, tid: Option<u32>) -> std::io::Result<Self> {
        let path = match tid {
            Some(t) => format!("/proc/{pid}/task/{t}/status"),
            None => format!("/proc/{pid}/status"),
        };
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// Parses a `status` file.
    pub fn parse(status: &str) -> Self {
        let mut c = Self::default();
        for l in status.lines() {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            let hex = || u64::from_str_radix(v, 16).unwrap_or(u64::MAX);
            let ids = || {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            };
            match k {
                "Uid" => c.uids = ids(),
                "Gid" => c.gids = ids(),
                "CapEff" => c.cap_eff = hex(),
                "CapPrm" => c.cap_prm = hex(),
                "CapBnd" => c.cap_bnd = hex(),
                "CapAmb" => c.cap_amb = hex(),
                "NoNewPrivs" => c.no_new_privs = v == "1",
                "Seccomp" => c.seccomp = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        c
    }

    /// The mask of `caps`.
    pub fn mask(caps: &[Cap]) -> u64 {
        caps.iter().fold(0, |m, c| m | c.bit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_domain_uid_is_the_base_plus_domid() {
        assert_eq!(domain_uid(0), 0x7F00_0000);
        assert_eq!(domain_uid(7), 0x7F00_0007);
        assert_eq!(domain_uid(u16::MAX), 0x7F00_FFFF);
    }

    #[test]
    fn test_confinement_parse_reads_the_status_fields() {
        let s = "Name:\tx\nUid:\t5\t5\t5\t5\nGid:\t6\t6\t6\t6\nCapPrm:\t0000000000200020\n\
                 CapEff:\t0000000000200020\nCapBnd:\t0000000000200020\nCapAmb:\t0000000000000000\n\
                 NoNewPrivs:\t1\nSeccomp:\t2\n";
        let c = Confinement::parse(s);
        assert_eq!(c.uids, vec![5, 5, 5, 5]);
        assert_eq!(c.gids, vec![6, 6, 6, 6]);
        assert_eq!(c.cap_eff, Confinement::mask(&[Cap::Kill, Cap::SysAdmin]));
        assert!(c.no_new_privs);
        assert_eq!(c.seccomp, 2);
    }

    #[test]
    fn test_filter_builds_for_this_arch() {
        let p = filter(&[libc::SYS_read]).expect("filter");
        assert!(p.len() > BASE_SYSCALLS.len());
    }
}
