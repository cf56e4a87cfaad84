//! The Dom0 end of a guest console: a pty pair as xenconsoled makes it
//! (`openpty`, the slave in raw mode and kept open by the service so the
//! master never sees a hang-up when a client detaches; the master
//! non-blocking).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

/// A pty pair.
#[derive(Debug)]
pub struct Pty {
    /// The master (non-blocking): guest output is written here, input read.
    pub master: OwnedFd,
    /// The slave, held open (clients such as `xl console` open its path).
    pub slave: OwnedFd,
    /// The slave's path (`/dev/pts/N`), written to `console/tty`.
    pub path: PathBuf,
}

impl Pty {
    /// Opens a pair with the slave in raw mode.
    ///
    /// # Errors
    /// The failing system call's error.
    pub fn open() -> std::io::Result<Self> {
        let r = nix::pty::openpty(None, None)?;
        let mut t = tcgetattr(r.slave.as_fd())?;
        cfmakeraw(&mut t);
        tcsetattr(r.slave.as_fd(), SetArg::TCSANOW, &t)?;
        let fl = OFlag::from_bits_truncate(fcntl(r.master.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            r.master.as_raw_fd(),
            FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK),
        )?;
        let path = nix::unistd::ttyname(r.slave.as_fd())?;
        Ok(Self {
            master: r.master,
            slave: r.slave,
            path,
        })
    }
}
