//! A non-blocking connection for event loops: it exposes its file descriptor
//! for `epoll`/`poll`, queues encoded requests, and hands back whole parsed
//! messages (replies tagged with their request id, and watch events).
//!
//! Usage: register [`NbConnection::as_raw_fd`] for readability (and for
//! writability while [`NbConnection::wants_write`]); on readiness call
//! [`NbConnection::flush`] and [`NbConnection::receive`].

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::discovery;
use crate::error::{Result, XsClientError};
use crate::msg::Decoder;
use crate::request::{encode, Request};
use crate::watch::WatchEvent;

/// Most bytes one [`NbConnection::receive`] call reads, so that one busy
/// connection cannot starve the rest of an event loop.
pub const RECEIVE_BUDGET: usize = 256 * 1024;

/// Something xenstored sent.
#[derive(Debug)]
pub enum Incoming {
    /// The reply to request `req_id`: its payload, or the xenstore error.
    Reply {
        /// The request id this answers.
        req_id: u32,
        /// The `XS_*` type of the reply (`XS_ERROR` for errors).
        ty: u32,
        /// The payload, or [`XsClientError::Xenstore`].
        result: Result<Vec<u8>>,
    },
    /// A watch fired.
    WatchEvent(WatchEvent),
}

/// A non-blocking xenstore connection.
#[derive(Debug)]
pub struct NbConnection {
    stream: UnixStream,
    decoder: Decoder,
    out: Vec<u8>,
    out_pos: usize,
    next_req_id: u32,
}

impl NbConnection {
    /// Connects to the socket Xen's clients would use.
    ///
    /// # Errors
    /// [`XsClientError::Connect`].
    pub fn connect() -> Result<Self> {
        Self::connect_path(discovery::socket_path())
    }

    /// Connects to the socket at `path` (the connect itself blocks briefly).
    ///
    /// # Errors
    /// [`XsClientError::Connect`].
    pub fn connect_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let connect_err = |source| XsClientError::Connect {
            path: path.display().to_string(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        stream.set_nonblocking(true).map_err(connect_err)?;
        Ok(Self {
            stream,
            decoder: Decoder::new(),
            out: Vec::new(),
            out_pos: 0,
            next_req_id: 1,
        })
    }

    /// Queues `req` in transaction `tx_id` (0 for none), tries to send it, and
    /// returns its request id.
    ///
    /// # Errors
    /// Encoding errors, or a fatal write error.
    pub fn send(&mut self, tx_id: u32, req: &Request<'_>) -> Result<u32> {
        let req_id = self.next_req_id;
        let bytes = encode(req, req_id, tx_id)?;
        self.next_req_id = req_id.wrapping_add(1);
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        self.out.extend_from_slice(&bytes);
        self.flush()?;
        Ok(req_id)
    }

    /// Writes as much queued output as the socket takes; true when all is out.
    ///
    /// # Errors
    /// A fatal write error.
    pub fn flush(&mut self) -> Result<bool> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(XsClientError::Disconnected),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(true)
    }

    /// True while queued output waits for the socket to become writable.
    #[must_use]
    pub fn wants_write(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Reads what has arrived (up to [`RECEIVE_BUDGET`] bytes) and returns
    /// the whole messages in it; an empty vector means nothing complete yet.
    ///
    /// # Errors
    /// [`XsClientError::Disconnected`] at end of stream, a read error, or
    /// [`XsClientError::Protocol`].
    pub fn receive(&mut self) -> Result<Vec<Incoming>> {
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0usize;
        let mut eof = false;
        while total < RECEIVE_BUDGET {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.decoder.feed(&buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut out = Vec::new();
        while let Some(m) = self.decoder.next_message()? {
            if m.is_watch_event() {
                out.push(Incoming::WatchEvent(WatchEvent::parse(&m.payload)?));
            } else {
                let (req_id, ty) = (m.req_id, m.ty);
                out.push(Incoming::Reply {
                    req_id,
                    ty,
                    result: m.into_result(),
                });
            }
        }
        if eof && out.is_empty() {
            return Err(XsClientError::Disconnected);
        }
        Ok(out)
    }
}

impl AsRawFd for NbConnection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl AsFd for NbConnection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}
