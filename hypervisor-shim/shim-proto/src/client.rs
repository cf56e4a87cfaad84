//! A client connection to `xen-shimd`'s control socket, shared by the guest
//! and Dom0 handles: one request at a time, unsolicited events queued.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::protocol::{ControlError, ControlEvent, Message, Reply, Request};
use crate::sys;

/// Most unsolicited events kept while nobody reads them (older ones dropped).
const MAX_QUEUED_EVENTS: usize = 1024;

/// One connection: requests are strictly one at a time.
#[derive(Debug)]
pub struct Conn {
    sock: OwnedFd,
    path: PathBuf,
    events: VecDeque<ControlEvent>,
}

impl Conn {
    /// Connects to the daemon's socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ControlError> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let err = |e: nix::errno::Errno| ControlError::Connect {
            path: path.display().to_string(),
            source: std::io::Error::from(e),
        };
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(err)?;
        let addr = UnixAddr::new(path).map_err(err)?;
        connect(sock.as_raw_fd(), &addr).map_err(err)?;
        Ok(Self {
            sock,
            path: path.to_path_buf(),
            events: VecDeque::new(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket fd (readable when an event or reply arrived).
    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Whether the daemon closed this connection (it went away: a restart).
    /// A live connection, even with messages waiting, is not hung up.
    pub fn is_hung_up(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: polls one live fd of ours for zero milliseconds.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0
            && pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }

    /// Queues an unsolicited event (the oldest is dropped beyond
    /// `MAX_QUEUED_EVENTS`).
    pub fn push_event(&mut self, e: ControlEvent) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Sends `req` with `fds` and waits for its reply (queueing events that
    /// arrive first).
    pub fn call(
        &mut self,
        req: &Request,
        fds: &[RawFd],
    ) -> Result<(Reply, Vec<OwnedFd>), ControlError> {
        let data = serde_json::to_vec(req)?;
        sys::send_msg(self.sock.as_fd(), &data, fds)?;
        for _ in 0..1_000_000 {
            let Some((bytes, fds)) = sys::recv_msg(self.sock.as_fd(), false)? else {
                return Err(ControlError::Disconnected);
            };
            match serde_json::from_slice::<Message>(&bytes)? {
                Message::Reply { result: Ok(r) } => return Ok((r, fds)),
                Message::Reply { result: Err(e) } => return Err(ControlError::Remote(e)),
                Message::Event { event } => self.push_event(event),
            }
        }
        Err(ControlError::Unexpected(
            "no reply among a million events".into(),
        ))
    }

    /// Reads events already waiting on the socket, without blocking.
    /// `Err(Disconnected)` if the daemon went away.
    pub fn poll_events(&mut self) -> Result<(), ControlError> {
        for _ in 0..MAX_QUEUED_EVENTS {
            match sys::recv_msg(self.sock.as_fd(), true) {
                Ok(Some((bytes, _fds))) => {
                    if let Ok(Message::Event { event }) = serde_json::from_slice::<Message>(&bytes)
                    {
                        self.push_event(event);
                    }
                }
                Ok(None) => return Err(ControlError::Disconnected),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(()),
                Err(e) => return Err(ControlError::Io(e)),
            }
        }
        Ok(())
    }

    /// Takes the queued events.
    pub fn take_events(&mut self) -> Vec<ControlEvent> {
        self.events.drain(..).collect()
    }
}

/// The daemon's notifications a handle has received but not yet handed out.
pub type EventQueue = std::sync::Mutex<VecDeque<ControlEvent>>;

/// Moves the events `conn` queued while reading into the handle's `queue`.
pub fn stash_events(conn: &mut Conn, queue: &EventQueue) {
    let evs = conn.take_events();
    if !evs.is_empty() {
        if let Ok(mut q) = queue.lock() {
            q.extend(evs);
        }
    }
}

/// One request on a handle's shared connection; notifications that arrived
/// with the reply go to the handle's `queue`.
pub fn call_stashing(
    conn: &std::sync::Mutex<Conn>,
    queue: &EventQueue,
    req: &Request,
) -> Result<(Reply, Vec<OwnedFd>), ControlError> {
    let mut c = conn
        .lock()
        .map_err(|_| ControlError::Unexpected("control connection lock poisoned".into()))?;
    let r = c.call(req, &[]);
    stash_events(&mut c, queue);
    r
}

/// Reads whatever notifications the daemon sent, then hands out every
/// queued one.
pub fn poll_and_drain(conn: &std::sync::Mutex<Conn>, queue: &EventQueue) -> Vec<ControlEvent> {
    if let Ok(mut c) = conn.lock() {
        let _ = c.poll_events();
        stash_events(&mut c, queue);
    }
    queue
        .lock()
        .map(|mut q| q.drain(..).collect())
        .unwrap_or_default()
}

/// Takes the reply's fds in order, failing if too few came.
pub fn take_fds(
    fds: &mut std::vec::IntoIter<OwnedFd>,
    n: usize,
) -> Result<Vec<OwnedFd>, ControlError> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            fds.next()
                .ok_or_else(|| ControlError::Unexpected("reply carried too few fds".into()))?,
        );
    }
    Ok(out)
}
