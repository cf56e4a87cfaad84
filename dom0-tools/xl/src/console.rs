//! `xl console NAME|DOMID`: the terminal attached to the guest's primary
//! console, as Xen's `xenconsole` client does it: the pty named in
//! `/local/domain/<id>/console/tty` (written by backendd's consback, the
//! xenconsoled role), the local terminal in raw mode, `Ctrl-]` (0x1d)
//! detaches. It waits for the tty node (so `xl create -c` can attach at
//! once), follows a new pty when the console service restarts, and returns
//! when the domain is gone.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};
use xenstore_client::{Client, XsOps};

use crate::toolstack::{self, ToolstackError};

/// The detach key: `Ctrl-]`.
pub const ESCAPE: u8 = 0x1d;
/// How long `xl console` waits for the console's pty to be published.
pub const TTY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most typed bytes held for a console that takes no input (more is
/// dropped).
pub const MAX_TYPED_AHEAD: usize = 64 * 1024;
/// How often it checks that the domain still exists.
const CHECK: Duration = Duration::from_millis(200);

/// Splits terminal input at the escape byte: the bytes to send to the guest,
/// and whether the escape was typed (the rest is dropped).
#[must_use]
pub fn split_escape(input: &[u8]) -> (&[u8], bool) {
    match input.iter().position(|&b| b == ESCAPE) {
        Some(i) => (&input[..i], true),
        None => (input, false),
    }
}

/// Why `console` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// `Ctrl-]` was typed.
    Escape,
    /// The domain is gone.
    DomainGone,
    /// The terminal closed (end of input).
    InputClosed,
}

/// The local terminal in raw mode; restored on drop (also `xl top`'s).
pub(crate) struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    pub(crate) fn enter() -> Self {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return Self { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &raw).is_err() {
            return Self { saved: None };
        }
        Self { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSAFLUSH, t);
        }
    }
}

fn read_tty(xs: &Client, domid: u16) -> Option<String> {
    xs.read_opt(&format!("/local/domain/{domid}/console/tty"))
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .filter(|p| p.starts_with("/dev/"))
}

fn domain_alive(xs: &Client, domid: u16) -> bool {
    !matches!(xs.read_opt(&format!("/local/domain/{domid}")), Ok(None))
}

/// Waits for a console tty other than `not` to be published.
fn wait_tty(xs: &Client, domid: u16, not: Option<&str>) -> Result<Option<File>, ToolstackError> {
    let deadline = Instant::now() + TTY_TIMEOUT;
    loop {
        if !domain_alive(xs, domid) {
            return Ok(None);
        }
        if let Some(p) = read_tty(xs, domid).filter(|p| Some(p.as_str()) != not) {
            match File::options()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                .open(&p)
            {
                Ok(f) => return Ok(Some(f)),
                Err(e) if Instant::now() >= deadline => {
                    return Err(ToolstackError::Io {
                        what: format!("open the console {p}"),
                        source: e,
                    })
                }
                Err(_) => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(ToolstackError::Unsupported(format!(
                "domain {domid} has no console (no console/tty after {TTY_TIMEOUT:?}; is backendd running?)"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// `xl console NAME|DOMID`.
///
/// # Errors
/// An unknown domain, no console, or an I/O failure on the terminal.
pub fn console(which: &str) -> Result<Detach, ToolstackError> {
    let control = toolstack::shim(false)?;
    let xs = toolstack::xenstore(false)?;
    let d = toolstack::find_domain(&control, which)?;
    attach(&xs, d.domid)
}

/// Attaches to `domid`'s console until it detaches; see the module docs.
///
/// # Errors
/// No console, or an I/O failure on the terminal.
pub fn attach(xs: &Client, domid: u16) -> Result<Detach, ToolstackError> {
    let Some(mut pty) = wait_tty(xs, domid, None)? else {
        return Ok(Detach::DomainGone);
    };
    let mut path = read_tty(xs, domid);
    let _raw = RawMode::enter();
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| ToolstackError::Io { what, source }
    };
    let mut last_check = Instant::now();
    let mut buf = [0u8; 4096];
    // Typed bytes the console has not taken yet (a guest that reads no
    // input); stdin is read on regardless, so Ctrl-] always works.
    let mut typed: Vec<u8> = Vec::new();
    loop {
        let (pty_ev, in_ev) = {
            // SAFETY: fd 0 is this process's stdin, open for its life.
            let in_fd = unsafe { BorrowedFd::borrow_raw(0) };
            let mut pty_flags = PollFlags::POLLIN;
            if !typed.is_empty() {
                pty_flags |= PollFlags::POLLOUT;
            }
            let mut fds = [
                PollFd::new(pty.as_fd(), pty_flags),
                PollFd::new(in_fd, PollFlags::POLLIN),
            ];
            let ms = u16::try_from(CHECK.as_millis()).unwrap_or(200);
            match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(io("wait for the console")(e.into())),
            }
            (
                fds[0].revents().unwrap_or(PollFlags::empty()),
                fds[1].revents().unwrap_or(PollFlags::empty()),
            )
        };
        if in_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            let n = stdin.read(&mut buf).map_err(io("read the terminal"))?;
            if n == 0 {
                return Ok(Detach::InputClosed);
            }
            let (send, escape) = split_escape(&buf[..n]);
            if escape {
                let _ = pty.write(send);
                return Ok(Detach::Escape);
            }
            if typed.len() + send.len() <= MAX_TYPED_AHEAD {
                typed.extend_from_slice(send);
            }
        }
        if !typed.is_empty() {
            match pty.write(&typed) {
                Ok(n) => {
                    typed.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io("write to the console")(e)),
            }
        }
        if pty_ev.contains(PollFlags::POLLIN) {
            match nix::unistd::read(pty.as_raw_fd(), &mut buf) {
                Ok(n) if n > 0 => {
                    stdout
                        .write_all(&buf[..n])
                        .and_then(|()| stdout.flush())
                        .map_err(io("write to the terminal"))?;
                }
                _ => {}
            }
        }
        if pty_ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            // The console service closed it (stopped, restarted, or the
            // console failed): follow a new one while the domain lives.
            std::thread::sleep(Duration::from_millis(100));
            match wait_tty(xs, domid, path.as_deref()) {
                Ok(Some(p)) => {
                    pty = p;
                    path = read_tty(xs, domid);
                    typed.clear();
                }
                Ok(None) => return Ok(Detach::DomainGone),
                Err(e) => return Err(e),
            }
        }
        if last_check.elapsed() >= CHECK {
            last_check = Instant::now();
            if !domain_alive(xs, domid) {
                return Ok(Detach::DomainGone);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_split_escape_without_escape_sends_all() {
        assert_eq!(split_escape(b"ls -l\r"), (&b"ls -l\r"[..], false));
    }

    #[test]
    fn test_split_escape_sends_bytes_before_escape_and_detaches() {
        assert_eq!(split_escape(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_escape(b"\x1d"), (&b""[..], true));
    }
}
