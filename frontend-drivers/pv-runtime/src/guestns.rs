//! The guest's user namespace and the namespaces it owns: guest root is an
//! unprivileged host id range of its own ([`IdRange`]), and the guest's
//! network, UTS, IPC, cgroup (and PID) namespaces are created inside that
//! user namespace, so guest root administers them (its `eth0`, its
//! hostname, its own `/proc` and `/sys`) and nothing of the host.
//!
//! ## The id scheme
//!
//! Domain `d` maps guest ids `0..65536` to host ids
//! `FIRST_ID + d * 65536 ..` ([`IdRange::for_domain`]), the block layout of
//! systemd-nspawn (`0x80000` is the lowest base it hands out) and LXD: every
//! domain has its own range, and every range ends below the runtimes' own
//! uids (`xen_jail::DOMAIN_UID_BASE`, `0x7F000000 + domid`), hence below 2^31
//! (tools that read ids as signed ints keep working): domids up to `0x7EF7`
//! have a range, the 248 highest of Xen's ordinary domids do not. The runtime
//! refuses to start a guest whose range would pass that limit or meets an
//! id the host gives out: a user or group of
//! `/etc/passwd` or `/etc/group`, a subordinate range of `/etc/subuid` or
//! `/etc/subgid` ([`IdRange::check_free`]).
//!
//! ## Creating the namespaces
//!
//! The runtime is multi-threaded and must keep its own (host) user
//! namespace, so [`GuestNamespaces::create`] forks a holder process: it
//! enters a new user namespace, the runtime writes its `uid_map` and
//! `gid_map` (`0 <base> 65536`), then the holder creates the other
//! namespaces (owned by the user namespace, since it creates them from
//! inside: a network namespace made before the user namespace would not be
//! administrable by guest root) and sets the hostname. The runtime keeps a
//! file descriptor of each and lets the holder go. The runtime's NICs are
//! made in the guest's network namespace ([`GuestNamespaces::enter_net`]);
//! init's waiter enters the others, then the user namespace as its root
//! ([`crate::machine`]), and makes the PID namespace there (a PID
//! namespace's first process is its PID 1, so it is made by the process
//! that forks init); init makes its mount namespace.
//!
//! In the user namespace the kernel itself refuses guest root what would
//! reach the host: `mknod` of devices, `/proc/sys` knobs that are not its
//! network namespace's, module loading, block file system mounts, raw
//! access to files whose owner is not mapped (every host file keeps its
//! host owner, shown as `nobody`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use xen_abi::xen::domid_t;

/// How many ids a guest has (its uids and its gids `0..IDS_PER_DOMAIN`).
pub const IDS_PER_DOMAIN: u32 = 0x1_0000;
/// The host id guest root of domain 0 would have (see the [module
/// docs](self)).
pub const FIRST_ID: u32 = 0x8_0000;
/// No range passes this host id: the jailed runtimes' uids start there.
pub const ID_LIMIT: u32 = xen_jail::DOMAIN_UID_BASE;

/// Why the guest's namespaces could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GuestnsError {
    /// The domain's range would pass [`ID_LIMIT`].
    #[error("domain {domid}: its id range would pass {ID_LIMIT:#x}, where the jailed runtimes' uids begin (guest namespaces exist for domids up to 0x7EF7)")]
    Overflow {
        /// The domain.
        domid: domid_t,
    },
    /// The range meets an id the host gives out.
    #[error("domain {domid}: its host ids {first}..{end} meet {what} (refusing to share ids with the host)")]
    Collision {
        /// The domain.
        domid: domid_t,
        /// The range's first host id.
        first: u32,
        /// One past its last.
        end: u32,
        /// What it meets.
        what: String,
    },
    /// A step failed.
    #[error("cannot {what}")]
    Os {
        /// The step.
        what: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

fn os(what: impl Into<String>) -> impl FnOnce(io::Error) -> GuestnsError {
    let what = what.into();
    move |source| GuestnsError::Os { what, source }
}

/// A domain's host id range: guest id `n` is host id `first + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The host id of guest root.
    pub first: u32,
    /// How many ids.
    pub count: u32,
}

impl IdRange {
    /// Domain `domid`'s range (see the [module docs](self)).
    ///
    /// # Errors
    /// The range would pass [`ID_LIMIT`].
    pub fn for_domain(domid: domid_t) -> Result<Self, GuestnsError> {
        let first = u32::from(domid)
            .checked_mul(IDS_PER_DOMAIN)
            .and_then(|o| o.checked_add(FIRST_ID))
            .filter(|f| f.checked_add(IDS_PER_DOMAIN).is_some_and(|e| e <= ID_LIMIT))
            .ok_or(GuestnsError::Overflow { domid })?;
        Ok(Self {
            first,
            count: IDS_PER_DOMAIN,
        })
    }

    /// One past the last host id.
    #[must_use]
    pub fn end(&self) -> u32 {
        self.first + self.count
    }

    /// The host id of guest id `id`, if the guest has it.
    #[must_use]
    pub fn host_id(&self, id: u32) -> Option<u32> {
        (id < self.count).then(|| self.first + id)
    }

    /// The `uid_map`/`gid_map` line.
    #[must_use]
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.first, self.count)
    }

    /// Checks that no id of the host's account files falls in the range:
    /// `passwd` and `group` (third field), `subuid` and `subgid` ranges
    /// (`name:first:count`), each given as (file name, text).
    ///
    /// # Errors
    /// [`GuestnsError::Collision`] naming the first id met.
    pub fn check_free(&self, domid: domid_t, files: &[(&str, &str)]) -> Result<(), GuestnsError> {
        let (lo, hi) = (u64::from(self.first), u64::from(self.end()));
        for (name, text) in files {
            let sub = name.ends_with("subuid") || name.ends_with("subgid");
            for line in text.lines() {
                let f: Vec<&str> = line.split(':').collect();
                let (start, len) = if sub {
                    match (f.get(1), f.get(2)) {
                        (Some(a), Some(n)) => match (a.parse::<u64>(), n.parse::<u64>()) {
                            (Ok(a), Ok(n)) => (a, n),
                            _ => continue,
                        },
                        _ => continue,
                    }
                } else {
                    match f.get(2).map(|s| s.parse::<u64>()) {
                        Some(Ok(id)) => (id, 1),
                        _ => continue,
                    }
                };
                if start < hi && start.saturating_add(len) > lo {
                    return Err(GuestnsError::Collision {
                        domid,
                        first: self.first,
                        end: self.end(),
                        what: format!("{name}: {}", f.first().copied().unwrap_or("")),
                    });
                }
            }
        }
        Ok(())
    }

    /// [`Self::check_free`] against the host's `/etc` files (a missing one
    /// has no ids).
    ///
    /// # Errors
    /// As [`Self::check_free`].
    pub fn check_host(&self, domid: domid_t) -> Result<(), GuestnsError> {
        let names = ["/etc/passwd", "/etc/group", "/etc/subuid", "/etc/subgid"];
        let texts: Vec<String> = names
            .iter()
            .map(|n| std::fs::read_to_string(n).unwrap_or_default())
            .collect();
        let files: Vec<(&str, &str)> = names
            .iter()
            .copied()
            .zip(texts.iter().map(String::as_str))
            .collect();
        self.check_free(domid, &files)
    }
}

/// The guest's namespaces, held by file descriptor (see the [module
/// docs](self)).
#[derive(Debug)]
pub struct GuestNamespaces {
    /// The id range of the user namespace.
    pub ids: IdRange,
    user: OwnedFd,
    net: OwnedFd,
    uts: OwnedFd,
    ipc: OwnedFd,
    cgroup: OwnedFd,
}

/// The namespaces' descriptors as init enters them (raw: init's child
/// code runs between fork and exec, where only system calls are allowed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NsFds {
    pub(crate) user: RawFd,
    pub(crate) net: RawFd,
    pub(crate) uts: RawFd,
    pub(crate) ipc: RawFd,
    pub(crate) cgroup: RawFd,
}

/// A pipe (read end, write end), close-on-exec: what a forked helper and
/// the runtime talk over.
pub(crate) fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads one byte (0 at end of file).
fn read_byte(fd: &OwnedFd) -> io::Result<u8> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: one byte into a live one-byte buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if n >= 0 {
            return Ok(if n == 1 { b[0] } else { 0 });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The holder's steps (between fork and its `_exit`: system calls only).
/// Returns the errno of the step that failed, as the holder's exit code
/// (step number in the high bits).
fn holder(go: RawFd, ready: RawFd, hostname: &CString) -> i32 {
    let byte = [1u8; 1];
    let mut b = [0u8; 1];
    let fail =
        |step: i32| (step << 8) | (io::Error::last_os_error().raw_os_error().unwrap_or(1) & 0xff);
    // SAFETY: system calls on the holder's own descriptors and on
    // buffers that live on its stack or in `hostname` (made before fork).
    unsafe {
        if libc::unshare(libc::CLONE_NEWUSER) != 0 {
            return fail(1);
        }
        if libc::write(ready, byte.as_ptr().cast(), 1) != 1 {
            return fail(2);
        }
        // The runtime writes the maps, then says go.
        if libc::read(go, b.as_mut_ptr().cast(), 1) != 1 {
            return fail(3);
        }
        if libc::unshare(
            libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWCGROUP,
        ) != 0
        {
            return fail(4);
        }
        if libc::sethostname(hostname.as_ptr(), hostname.as_bytes().len()) != 0 {
            return fail(5);
        }
        if libc::write(ready, byte.as_ptr().cast(), 1) != 1 {
            return fail(6);
        }
        // Until the runtime has its descriptors and kills it.
        let _ = libc::read(go, b.as_mut_ptr().cast(), 1);
    }
    0
}

fn open_ns(pid: libc::pid_t, name: &str) -> Result<OwnedFd, GuestnsError> {
    let f = std::fs::File::open(format!("/proc/{pid}/ns/{name}"))
        .map_err(os(format!("open the guest's {name} namespace")))?;
    Ok(OwnedFd::from(f))
}

impl GuestNamespaces {
    /// Makes domain `domid`'s user namespace (its [`IdRange`], checked
    /// against the host's ids) and the namespaces it owns, with the
    /// hostname `hostname`; see the [module docs](self).
    ///
    /// # Errors
    /// The range is not free, the kernel refused a step.
    pub fn create(domid: domid_t, hostname: &str) -> Result<Self, GuestnsError> {
        let ids = IdRange::for_domain(domid)?;
        ids.check_host(domid)?;
        let host = CString::new(hostname).map_err(|_| {
            os("set a hostname with a NUL byte")(io::Error::from(io::ErrorKind::InvalidInput))
        })?;
        let (go_r, go_w) = cloexec_pipe().map_err(os("make a pipe"))?;
        let (ready_r, ready_w) = cloexec_pipe().map_err(os("make a pipe"))?;
        let (go_fd, ready_fd) = (go_r.as_raw_fd(), ready_w.as_raw_fd());
        // SAFETY: the child only makes system calls on memory prepared
        // before the fork (`holder`) and ends with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os("fork the namespace holder")(io::Error::last_os_error()));
        }
        if pid == 0 {
            let code = holder(go_fd, ready_fd, &host);
            // SAFETY: ends the forked child without running the parent's
            // exit handlers.
            unsafe { libc::_exit(code) };
        }
        drop(go_r);
        drop(ready_w);
        let r = (|| {
            let why = |step: &str| os(format!("{step} (namespace holder {pid})"));
            if read_byte(&ready_r).map_err(why("wait for the user namespace"))? != 1 {
                return Err(os("make the guest's user namespace")(holder_error(pid)));
            }
            let map = ids.map_line();
            std::fs::write(format!("/proc/{pid}/uid_map"), &map)
                .map_err(os(format!("write the guest's uid_map {}", map.trim())))?;
            std::fs::write(format!("/proc/{pid}/gid_map"), &map)
                .map_err(os(format!("write the guest's gid_map {}", map.trim())))?;
            // SAFETY: one byte from a live buffer to our pipe end.
            if unsafe { libc::write(go_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
                return Err(os("start the namespace holder")(io::Error::last_os_error()));
            }
            if read_byte(&ready_r).map_err(why("wait for the namespaces"))? != 1 {
                return Err(os("make the guest's namespaces")(holder_error(pid)));
            }
            Ok(Self {
                ids,
                user: open_ns(pid, "user")?,
                net: open_ns(pid, "net")?,
                uts: open_ns(pid, "uts")?,
                ipc: open_ns(pid, "ipc")?,
                cgroup: open_ns(pid, "cgroup")?,
            })
        })();
        // SAFETY: signals and reaps our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        r
    }

    /// Moves the calling thread (and the threads and programs it starts
    /// afterwards) into the guest's network namespace (the NICs are made
    /// there).
    ///
    /// # Errors
    /// The kernel refused.
    pub fn enter_net(&self) -> Result<(), GuestnsError> {
        setns(&self.net, libc::CLONE_NEWNET).map_err(os("enter the guest's network namespace"))
    }

    /// The user namespace's descriptor (for an idmapped mount).
    #[must_use]
    pub fn user_fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }

    pub(crate) fn fds(&self) -> NsFds {
        NsFds {
            user: self.user.as_raw_fd(),
            net: self.net.as_raw_fd(),
            uts: self.uts.as_raw_fd(),
            ipc: self.ipc.as_raw_fd(),
            cgroup: self.cgroup.as_raw_fd(),
        }
    }
}

fn setns(fd: &OwnedFd, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: setns on a live namespace descriptor.
    if unsafe { libc::setns(fd.as_raw_fd(), kind) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why the holder stopped: its exit code (step << 8 | errno).
fn holder_error(pid: libc::pid_t) -> io::Error {
    let mut st = 0;
    // SAFETY: waits for our own child into a live int.
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    if r == pid && libc::WIFEXITED(st) {
        let code = libc::WEXITSTATUS(st);
        return io::Error::other(format!(
            "the namespace holder failed at step {} ({})",
            code >> 8,
            io::Error::from_raw_os_error(code & 0xff)
        ));
    }
    io::Error::other("the namespace holder ended")
}

/// In init's forked child (system calls only): enters the guest's
/// network, UTS, IPC and cgroup namespaces, then its user namespace as
/// root (uid and gid 0, no supplementary groups). A failure names its
/// step: 0 to 7 in that order.
pub(crate) fn enter_as_root(fds: &NsFds) -> Result<(), (usize, io::Error)> {
    let check = |n: usize, r: libc::c_int| {
        if r < 0 {
            Err((n, io::Error::last_os_error()))
        } else {
            Ok(())
        }
    };
    // SAFETY: system calls on descriptors the runtime holds open for the
    // child's life, and a null group list.
    unsafe {
        check(0, libc::setns(fds.net, libc::CLONE_NEWNET))?;
        check(1, libc::setns(fds.uts, libc::CLONE_NEWUTS))?;
        check(2, libc::setns(fds.ipc, libc::CLONE_NEWIPC))?;
        check(3, libc::setns(fds.cgroup, libc::CLONE_NEWCGROUP))?;
        check(4, libc::setns(fds.user, libc::CLONE_NEWUSER))?;
        check(5, libc::setgroups(0, std::ptr::null()))?;
        check(6, libc::setresgid(0, 0, 0))?;
        check(7, libc::setresuid(0, 0, 0))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ranges_are_disjoint_blocks_below_2_pow_31() {
        let r1 = IdRange::for_domain(1).expect("domain 1");
        assert_eq!(r1.first, FIRST_ID + IDS_PER_DOMAIN);
        assert_eq!(r1.end() - r1.first, IDS_PER_DOMAIN);
        let r2 = IdRange::for_domain(2).expect("domain 2");
        assert_eq!(r2.first, r1.end());
        assert_eq!(r1.host_id(0), Some(r1.first));
        assert_eq!(r1.host_id(65535), Some(r1.end() - 1));
        assert_eq!(r1.host_id(65536), None);
        assert_eq!(r1.map_line(), format!("0 {} 65536\n", r1.first));
        // The last range ends where the runtimes' uids begin; the next
        // domid, Xen's last ordinary one and its reserved ones have none.
        let last = IdRange::for_domain(0x7EF7).expect("domid 0x7EF7");
        assert_eq!(last.end(), ID_LIMIT);
        assert!(last.end() <= xen_jail::domain_uid(0));
        for domid in [0x7EF8, 0x7FEF, 0x7FF8] {
            assert!(matches!(
                IdRange::for_domain(domid),
                Err(GuestnsError::Overflow { domid: d }) if d == domid
            ));
        }
        assert!(matches!(
            IdRange::for_domain(domid_t::MAX),
            Err(GuestnsError::Overflow { .. })
        ));
    }

    #[test]
    fn test_check_free_refuses_host_users_and_subordinate_ranges() {
        let r = IdRange::for_domain(3).expect("domain 3");
        let inside = r.first + 10;
        let passwd = format!("root:x:0:0::/root:/bin/sh\nodd:x:{inside}:100::/:/bin/sh\n");
        let err = r
            .check_free(3, &[("/etc/passwd", &passwd)])
            .expect_err("a user in the range");
        assert!(err.to_string().contains("odd"), "{err}");
        // A subordinate range that overlaps from below.
        let sub = format!("alice:{}:100\n", r.first - 50);
        assert!(r.check_free(3, &[("/etc/subuid", &sub)]).is_err());
        // One that ends right where the range starts does not.
        let sub = format!("alice:{}:50\n", r.first - 50);
        r.check_free(3, &[("/etc/subuid", &sub)])
            .expect("adjacent range");
        // Ordinary files, comments and junk lines pass.
        r.check_free(
            3,
            &[
                ("/etc/passwd", "root:x:0:0::/root:/bin/sh\n# c\nbad\n"),
                ("/etc/group", "root:x:0:\ntty:x:5:\n"),
                ("/etc/subgid", "bob:100000:65536\n"),
            ],
        )
        .expect("free");
    }
}
