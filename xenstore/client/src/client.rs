//! The synchronous client: one Unix-socket connection shared by any number of
//! threads, with watch events and replies demultiplexed.
//!
//! Like libxenstore, the connection starts without a reader thread: a request
//! writes and then reads until its reply arrives, queueing any watch event it
//! meets on the way. The first `watch` starts a reader thread that from then on
//! owns the receiving side, so events arrive while no request is in flight.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xenstore_wire::{DomId, MsgType};

use crate::discovery;
use crate::error::{Result, XsClientError};
use crate::msg::{Decoder, Message};
use crate::ops::XsOps;
use crate::request::{check_arg, encode, parse_bool, parse_string, parse_u32, Request};
use crate::watch::{is_subpath, WatchEvent};

/// Events queued beyond this are dropped (oldest first) and counted.
pub const MAX_QUEUED_EVENTS: usize = 1 << 16;
/// Attempts of [`Client::transaction`] before it gives up on `EAGAIN`.
pub const DEFAULT_TRANSACTION_ATTEMPTS: u32 = 64;
/// Attempts of a transaction made back to back; later ones wait
/// [`transaction_backoff`] first.
pub const TRANSACTION_EAGER_ATTEMPTS: u32 = 4;

/// The wait before attempt `attempt` (0-based: 0 is the first try) of a
/// transaction whose earlier attempts conflicted: none up to
/// [`TRANSACTION_EAGER_ATTEMPTS`], then 1 ms doubling to 64 ms. Retried back
/// to back, 64 attempts spanned about 100 ms: a device directory that a
/// guest and its backend were still writing (a disk detached under I/O)
/// could conflict with every one, and `xl block-detach` failed.
#[must_use]
pub fn transaction_backoff(attempt: u32) -> std::time::Duration {
    match attempt.checked_sub(TRANSACTION_EAGER_ATTEMPTS + 1) {
        None => std::time::Duration::ZERO,
        Some(k) => std::time::Duration::from_millis(1 << k.min(6)),
    }
}

/// Transaction id meaning "no transaction" (`XBT_NULL`).
pub const XBT_NULL: u32 = 0;

const READ_CHUNK: usize = 16 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct EventState {
    queue: VecDeque<WatchEvent>,
    dropped: u64,
    closed: bool,
}

#[derive(Debug, Default)]
struct Events {
    state: Mutex<EventState>,
    cv: Condvar,
}

impl Events {
    fn push(&self, ev: WatchEvent) {
        let mut st = lock(&self.state);
        if st.queue.len() >= MAX_QUEUED_EVENTS {
            st.queue.pop_front();
            st.dropped = st.dropped.saturating_add(1);
        }
        st.queue.push_back(ev);
        drop(st);
        self.cv.notify_all();
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.cv.notify_all();
    }
}

#[derive(Debug)]
struct Reader {
    replies: Receiver<Result<Message>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    decoder: Decoder,
    reader: Option<Reader>,
    next_req_id: u32,
    broken: bool,
}

impl Conn {
    /// Direct mode: reads until a reply arrives, queueing watch events.
    fn read_reply_direct(&mut self, events: &Events) -> Result<Message> {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            while let Some(m) = self.decoder.next_message()? {
                if m.is_watch_event() {
                    if let Ok(ev) = WatchEvent::parse(&m.payload) {
                        events.push(ev);
                    }
                } else {
                    return Ok(m);
                }
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(XsClientError::Disconnected),
                Ok(n) => self.decoder.feed(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn reader_loop(
    mut stream: UnixStream,
    mut decoder: Decoder,
    events: &Events,
    replies: &Sender<Result<Message>>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        loop {
            match decoder.next_message() {
                Ok(Some(m)) if m.is_watch_event() => {
                    if let Ok(ev) = WatchEvent::parse(&m.payload) {
                        events.push(ev);
                    }
                }
                Ok(Some(m)) => {
                    if replies.send(Ok(m)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = replies.send(Err(e));
                    return;
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                let _ = replies.send(Err(XsClientError::Disconnected));
                return;
            }
            Ok(n) => decoder.feed(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = replies.send(Err(e.into()));
                return;
            }
        }
    }
}

/// A connection to xenstored over its Unix socket.
///
/// `Client` is `Send + Sync`: share it between threads by reference or in an
/// `Arc`; requests are serialised on the connection, as in libxenstore.
#[derive(Debug)]
pub struct Client {
    conn: Mutex<Conn>,
    events: Arc<Events>,
    path: PathBuf,
}

impl Client {
    /// Connects to the socket found as Xen's clients find it
    /// ([`discovery::socket_path`]).
    ///
    /// # Errors
    /// [`XsClientError::Connect`] if nothing listens there.
    pub fn connect() -> Result<Self> {
        Self::connect_path(discovery::socket_path())
    }

    /// Connects to the socket at `path`.
    ///
    /// # Errors
    /// [`XsClientError::Connect`] if nothing listens there.
    pub fn connect_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| XsClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            conn: Mutex::new(Conn {
                stream,
                decoder: Decoder::new(),
                reader: None,
                next_req_id: 1,
                broken: false,
            }),
            events: Arc::new(Events::default()),
            path,
        })
    }

    /// The socket this client is connected to.
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Sends `req` in transaction `tx_id` ([`XBT_NULL`] for none) and waits
    /// for its reply payload.
    ///
    /// # Errors
    /// [`XsClientError::Xenstore`] for an error reply; connection errors
    /// (after which every request fails).
    pub fn request_in(&self, tx_id: u32, req: &Request<'_>) -> Result<Vec<u8>> {
        if req.msg_type() == MsgType::Watch {
            self.ensure_reader()?;
        }
        let mut bytes = encode(req, 0, tx_id)?;
        let mut conn = lock(&self.conn);
        if conn.broken {
            return Err(XsClientError::Disconnected);
        }
        let req_id = conn.next_req_id;
        conn.next_req_id = req_id.wrapping_add(1);
        bytes[4..8].copy_from_slice(&req_id.to_le_bytes());
        let res = match conn.stream.write_all(&bytes) {
            Err(e) => Err(e.into()),
            Ok(()) => match &conn.reader {
                Some(r) => r.replies.recv().unwrap_or(Err(XsClientError::ReaderGone)),
                None => conn.read_reply_direct(&self.events),
            },
        };
        let msg = match res {
            Ok(m) => m,
            Err(e) => {
                conn.broken = true;
                return Err(e);
            }
        };
        if msg.req_id != req_id {
            conn.broken = true;
            return Err(XsClientError::Protocol(format!(
                "reply for request {} while waiting for {req_id}",
                msg.req_id
            )));
        }
        drop(conn);
        msg.into_result()
    }

    fn ensure_reader(&self) -> Result<()> {
        let mut conn = lock(&self.conn);
        if conn.reader.is_some() {
            return Ok(());
        }
        let stream = conn.stream.try_clone()?;
        let decoder = std::mem::take(&mut conn.decoder);
        let (tx, rx) = mpsc::channel();
        let events = Arc::clone(&self.events);
        let thread = std::thread::Builder::new()
            .name("xs-reader".into())
            .spawn(move || {
                reader_loop(stream, decoder, &events, &tx);
                events.close();
            })?;
        conn.reader = Some(Reader {
            replies: rx,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Starts a transaction; it aborts when dropped unless committed.
    ///
    /// # Errors
    /// `EQUOTA`-style errors (`ENOSPC`, `EBUSY`) or a connection error.
    pub fn transaction_start(&self) -> Result<Transaction<'_>> {
        let reply = self.request_in(XBT_NULL, &Request::TransactionStart)?;
        let id = parse_u32(&reply)?;
        Ok(Transaction {
            client: self,
            id,
            done: false,
        })
    }

    /// Runs `f` in a transaction and commits it, retrying the whole thing when
    /// the commit (or an operation) fails with `EAGAIN`, up to
    /// [`DEFAULT_TRANSACTION_ATTEMPTS`] times.
    ///
    /// # Errors
    /// The first error of `f` or of the commit other than `EAGAIN`, or
    /// [`XsClientError::TransactionRetriesExhausted`].
    pub fn transaction<T>(&self, f: impl FnMut(&Transaction<'_>) -> Result<T>) -> Result<T> {
        self.transaction_with_attempts(DEFAULT_TRANSACTION_ATTEMPTS, f)
    }

    /// [`Client::transaction`] with an explicit attempt limit.
    ///
    /// # Errors
    /// As [`Client::transaction`].
    pub fn transaction_with_attempts<T>(
        &self,
        attempts: u32,
        mut f: impl FnMut(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        for attempt in 0..attempts {
            std::thread::sleep(transaction_backoff(attempt));
            let tx = self.transaction_start()?;
            match f(&tx) {
                Ok(v) => match tx.commit() {
                    Ok(()) => return Ok(v),
                    Err(e) if e.is_eagain() => continue,
                    Err(e) => return Err(e),
                },
                Err(e) if e.is_eagain() => {
                    let _ = tx.abort();
                }
                Err(e) => {
                    let _ = tx.abort();
                    return Err(e);
                }
            }
        }
        Err(XsClientError::TransactionRetriesExhausted { attempts })
    }

    /// Watches `path` (and everything below it) with `token`. xenstored fires
    /// the watch once at once.
    ///
    /// # Errors
    /// `EEXIST` for a duplicate watch, `E2BIG`/`ENOSPC` over quota, `EINVAL`.
    pub fn watch(&self, path: &str, token: &str) -> Result<()> {
        let (path, token) = (check_arg(path)?, check_arg(token)?.as_bytes());
        self.request_in(
            XBT_NULL,
            &Request::Watch {
                path,
                token,
                depth: None,
            },
        )
        .map(drop)
    }

    /// Removes a watch, and drops its queued events.
    ///
    /// # Errors
    /// `ENOENT` if there is no such watch.
    pub fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        let req = Request::Unwatch {
            path: check_arg(path)?,
            token: check_arg(token)?.as_bytes(),
        };
        let r = self.request_in(XBT_NULL, &req).map(drop);
        lock(&self.events.state)
            .queue
            .retain(|e| !(e.token == token && is_subpath(path, &e.path)));
        r
    }

    /// Removes every watch and transaction of this connection
    /// (`XS_RESET_WATCHES`), and drops all queued events.
    ///
    /// # Errors
    /// A connection error.
    pub fn reset_watches(&self) -> Result<()> {
        let r = self.request_in(XBT_NULL, &Request::ResetWatches).map(drop);
        lock(&self.events.state).queue.clear();
        r
    }

    /// The next watch event, waiting at most `timeout` (forever if `None`).
    /// `Ok(None)` means the time ran out.
    ///
    /// # Errors
    /// [`XsClientError::Disconnected`] once the connection is gone and the
    /// queue is empty.
    pub fn wait_watch_event(&self, timeout: Option<Duration>) -> Result<Option<WatchEvent>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = lock(&self.events.state);
        loop {
            if let Some(e) = st.queue.pop_front() {
                return Ok(Some(e));
            }
            if st.closed {
                return Err(XsClientError::Disconnected);
            }
            st = match deadline {
                None => self
                    .events
                    .cv
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    self.events
                        .cv
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// A queued watch event, without waiting.
    #[must_use]
    pub fn try_watch_event(&self) -> Option<WatchEvent> {
        lock(&self.events.state).queue.pop_front()
    }

    /// A blocking iterator over watch events; it ends after yielding the
    /// disconnection error.
    #[must_use]
    pub fn watch_events(&self) -> WatchEvents<'_> {
        WatchEvents {
            client: self,
            ended: false,
        }
    }

    /// Events dropped because the queue was full.
    #[must_use]
    pub fn dropped_events(&self) -> u64 {
        lock(&self.events.state).dropped
    }

    /// Introduces domain `domid` whose xenstore ring is at `mfn`, with event
    /// channel `port` (privileged).
    ///
    /// # Errors
    /// `EACCES`, `EINVAL`, `EEXIST`.
    pub fn introduce(&self, domid: DomId, mfn: u64, port: u32) -> Result<()> {
        self.request_in(XBT_NULL, &Request::Introduce { domid, mfn, port })
            .map(drop)
    }

    /// Releases domain `domid` (privileged).
    ///
    /// # Errors
    /// `EACCES`, `ENOENT`.
    pub fn release(&self, domid: DomId) -> Result<()> {
        self.request_in(XBT_NULL, &Request::Release { domid })
            .map(drop)
    }

    /// Clears the shutdown flag of domain `domid` (privileged).
    ///
    /// # Errors
    /// `EACCES`, `ENOENT`.
    pub fn resume(&self, domid: DomId) -> Result<()> {
        self.request_in(XBT_NULL, &Request::Resume { domid })
            .map(drop)
    }

    /// Lets `domid` act on behalf of `target` (privileged).
    ///
    /// # Errors
    /// `EACCES`, `ENOENT`.
    pub fn set_target(&self, domid: DomId, target: DomId) -> Result<()> {
        self.request_in(XBT_NULL, &Request::SetTarget { domid, target })
            .map(drop)
    }

    /// The home path of domain `domid` (`/local/domain/<domid>`).
    ///
    /// # Errors
    /// `EINVAL` for a bad domid.
    pub fn get_domain_path(&self, domid: DomId) -> Result<String> {
        self.request_in(XBT_NULL, &Request::GetDomainPath { domid })
            .map(|p| parse_string(&p))
    }

    /// Whether domain `domid` is introduced.
    ///
    /// # Errors
    /// `EACCES`, `EINVAL`.
    pub fn is_domain_introduced(&self, domid: DomId) -> Result<bool> {
        self.request_in(XBT_NULL, &Request::IsDomainIntroduced { domid })
            .map(|p| parse_bool(&p))
    }

    /// An `XS_CONTROL` command; returns the raw reply.
    ///
    /// # Errors
    /// `EACCES`, `EINVAL`, `ENOSYS`.
    pub fn control(&self, cmd: &str, data: &[u8]) -> Result<Vec<u8>> {
        let mut args = check_arg(cmd)?.as_bytes().to_vec();
        args.push(0);
        args.extend_from_slice(data);
        self.request_in(XBT_NULL, &Request::Control { args: &args })
    }
}

impl XsOps for Client {
    fn request(&self, req: &Request<'_>) -> Result<Vec<u8>> {
        self.request_in(XBT_NULL, req)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let conn = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = conn.stream.shutdown(Shutdown::Both);
        if let Some(r) = conn.reader.as_mut() {
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Blocking iterator returned by [`Client::watch_events`].
#[derive(Debug)]
pub struct WatchEvents<'c> {
    client: &'c Client,
    ended: bool,
}

impl Iterator for WatchEvents<'_> {
    type Item = Result<WatchEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        match self.client.wait_watch_event(None) {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.ended = true;
                Some(Err(e))
            }
        }
    }
}

/// An open transaction. Operations through it see a snapshot and are applied
/// atomically by [`Transaction::commit`]; dropping it aborts it.
#[derive(Debug)]
pub struct Transaction<'c> {
    client: &'c Client,
    id: u32,
    done: bool,
}

impl Transaction<'_> {
    /// The transaction id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Ends the transaction: commit if `commit`, else abort.
    ///
    /// # Errors
    /// `EAGAIN` if a commit conflicts with another change (retry it all).
    pub fn end(mut self, commit: bool) -> Result<()> {
        self.done = true;
        self.client
            .request_in(self.id, &Request::TransactionEnd { commit })
            .map(drop)
    }

    /// Commits.
    ///
    /// # Errors
    /// As [`Transaction::end`].
    pub fn commit(self) -> Result<()> {
        self.end(true)
    }

    /// Aborts.
    ///
    /// # Errors
    /// A connection error.
    pub fn abort(self) -> Result<()> {
        self.end(false)
    }
}

impl XsOps for Transaction<'_> {
    fn request(&self, req: &Request<'_>) -> Result<Vec<u8>> {
        self.client.request_in(self.id, req)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self
                .client
                .request_in(self.id, &Request::TransactionEnd { commit: false });
        }
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn test_transaction_backoff_eager_then_doubling_to_a_cap() {
        for a in 0..=TRANSACTION_EAGER_ATTEMPTS {
            assert_eq!(transaction_backoff(a), Duration::ZERO, "attempt {a}");
        }
        assert_eq!(transaction_backoff(5), Duration::from_millis(1));
        assert_eq!(transaction_backoff(6), Duration::from_millis(2));
        assert_eq!(transaction_backoff(11), Duration::from_millis(64));
        assert_eq!(transaction_backoff(u32::MAX), Duration::from_millis(64));
        // The default attempts span a few seconds, not a few milliseconds.
        let total: Duration = (0..DEFAULT_TRANSACTION_ATTEMPTS)
            .map(transaction_backoff)
            .sum();
        assert!(
            total > Duration::from_secs(3) && total < Duration::from_secs(5),
            "{total:?}"
        );
    }
}
