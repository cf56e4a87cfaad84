//! A pty a test plays a user's terminal on: a command (`xl console`, `xl
//! create -c`) runs with the pty's slave as its stdin, stdout and stderr;
//! the test reads what it shows and types into it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// How long [`Terminal::expect`] waits by default.
pub const STEP: Duration = Duration::from_secs(30);

/// The pty's master side and everything it showed so far.
#[derive(Debug)]
pub struct Terminal {
    master: File,
    seen: Vec<u8>,
    /// How long each `expect` waits.
    pub limit: Duration,
}

impl Terminal {
    /// Runs `cmd` on a new pty.
    pub fn spawn(mut cmd: Command) -> Result<(Terminal, Child)> {
        let pty = nix::pty::openpty(None, None).context("openpty")?;
        let slave = File::from(pty.slave);
        let child = cmd
            .stdin(Stdio::from(slave.try_clone().context("dup")?))
            .stdout(Stdio::from(slave.try_clone().context("dup")?))
            .stderr(Stdio::from(slave))
            .spawn()
            .context("start the terminal's command")?;
        let master = File::from(pty.master);
        let fd = master.as_raw_fd();
        let fl = fcntl(fd, FcntlArg::F_GETFL).context("F_GETFL")?;
        fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK),
        )
        .context("F_SETFL")?;
        Ok((
            Terminal {
                master,
                seen: Vec::new(),
                limit: STEP,
            },
            child,
        ))
    }

    /// Everything shown so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// How many bytes were shown so far (a mark for [`Terminal::expect_from`]).
    pub fn mark(&self) -> usize {
        self.seen.len()
    }

    /// Reads until `what` was shown; everything shown.
    pub fn expect(&mut self, what: &str) -> Result<String> {
        self.expect_from(0, what)
    }

    /// Reads until `what` was shown after byte `from`; the text from `from`.
    pub fn expect_from(&mut self, from: usize, what: &str) -> Result<String> {
        let deadline = Instant::now() + self.limit;
        let mut buf = [0u8; 4096];
        loop {
            let t = String::from_utf8_lossy(&self.seen[from.min(self.seen.len())..]).into_owned();
            if t.contains(what) {
                return Ok(t);
            }
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
            if Instant::now() >= deadline {
                bail!(
                    "{what:?} never shown on the terminal; it showed:\n{}",
                    self.text()
                );
            }
        }
    }

    /// Types `b`.
    pub fn type_bytes(&mut self, b: &[u8]) -> Result<()> {
        self.master.write_all(b).context("type on the terminal")
    }

    /// At a shell prompt: types `cmd`, then an `echo` of a marker; returns
    /// what the command printed (between the echoed line and the marker).
    pub fn run(&mut self, cmd: &str) -> Result<String> {
        let from = self.mark();
        // The marker's text differs from what is typed (the tty echoes it).
        self.type_bytes(format!("{cmd}; echo END-$((6*7))\n").as_bytes())?;
        let t = self.expect_from(from, "END-42")?;
        let body = t.split("END-42").next().unwrap_or_default();
        Ok(body.split_once('\n').map_or("", |(_, r)| r).to_owned())
    }
}

/// Waits up to `limit` for `child` to exit (killing it then).
pub fn wait_exit(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("the terminal's command did not return within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
