//! The null server: the least a socket xenstored can do per request.
//!
//! One thread, an epoll set, one `recv` per readable connection and one
//! `send` per batch of replies, and for logic a map from path to value
//! (enough for xs-bench's write+read pairs and transactions and for the
//! load generator; no permissions, watches, transactions, persistence).
//! Its figures are the floor of the kernel's and the client's cost on this
//! machine: no xenstored using sockets can beat it, so its ratio to the C
//! xenstored bounds the ratio any server can reach.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use xenstore_wire::{Decoder, MsgType, PacketWriter, XsError};

/// A running null server (stopped and joined on drop).
#[derive(Debug)]
pub struct NullServer {
    socket: PathBuf,
    tid: libc::pid_t,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// An epoll instance, closed on drop.
struct Epoll(RawFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointer; the fd it returns is owned
        // by the value and closed in Drop.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live local the kernel only reads; both fds are
        // open (the caller keeps the watched fd alive while registered).
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: the kernel writes at most `max` entries into `events`,
        // which is valid for that many.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), max, -1) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this value and not used after this.
        unsafe { libc::close(self.0) };
    }
}

struct Conn {
    stream: UnixStream,
    decoder: Decoder,
    out: Vec<u8>,
}

const LISTENER: u64 = u64::MAX;

/// Appends the reply to one request.
fn reply(
    values: &mut HashMap<Vec<u8>, Vec<u8>>,
    next_tx: &mut u32,
    ty: u32,
    req_id: u32,
    tx_id: u32,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let path_end = payload.iter().position(|&b| b == 0);
    let result = match MsgType::from_u32(ty) {
        Some(MsgType::Read) => match values.get(&payload[..path_end.unwrap_or(payload.len())]) {
            Some(v) => PacketWriter::whole(out, MsgType::Read, req_id, tx_id, v),
            None => {
                PacketWriter::error(out, req_id, tx_id, XsError::Enoent);
                Ok(())
            }
        },
        Some(MsgType::Write) => {
            let split = path_end.unwrap_or(payload.len());
            let value = payload.get(split + 1..).unwrap_or(&[]);
            values.insert(payload[..split].to_vec(), value.to_vec());
            PacketWriter::whole(out, MsgType::Write, req_id, tx_id, b"OK\0")
        }
        Some(MsgType::TransactionStart) => {
            *next_tx = next_tx.wrapping_add(1).max(1);
            let mut w = PacketWriter::begin(out, MsgType::TransactionStart, req_id, tx_id);
            w.push_u64_0(u64::from(*next_tx));
            w.finish().map(|_| ())
        }
        Some(t) => PacketWriter::whole(out, t, req_id, tx_id, b"OK\0"),
        None => {
            PacketWriter::error(out, req_id, tx_id, XsError::Enosys);
            Ok(())
        }
    };
    if result.is_err() {
        PacketWriter::error(out, req_id, tx_id, XsError::E2big);
    }
}

fn serve(listener: &UnixListener, stop: &AtomicBool) -> io::Result<()> {
    let epoll = Epoll::new()?;
    epoll.add(listener.as_raw_fd(), LISTENER)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut values: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut next_tx = 0u32;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    while !stop.load(Ordering::Relaxed) {
        let n = match epoll.wait(&mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            let token = ev.u64;
            if token == LISTENER {
                if let Ok((stream, _)) = listener.accept() {
                    let id = conns.len();
                    epoll.add(stream.as_raw_fd(), id as u64)?;
                    conns.push(Some(Conn {
                        stream,
                        decoder: Decoder::new(),
                        out: Vec::new(),
                    }));
                }
                continue;
            }
            let id = usize::try_from(token).unwrap_or(usize::MAX);
            let Some(slot) = conns.get_mut(id) else {
                continue;
            };
            let Some(c) = slot.as_mut() else {
                continue;
            };
            // Blocking socket, reported readable: one read returns what is
            // queued without waiting.
            let buf = c.decoder.read_buf(64 * 1024);
            match c.stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => {
                    // Dropping the stream closes it, which also removes it
                    // from the epoll set.
                    *slot = None;
                    continue;
                }
                Ok(k) => c.decoder.commit(k),
            }
            c.out.clear();
            while let Ok(Some((hdr, payload))) = c.decoder.next_packet() {
                reply(
                    &mut values,
                    &mut next_tx,
                    hdr.ty,
                    hdr.req_id,
                    hdr.tx_id,
                    payload,
                    &mut c.out,
                );
            }
            if !c.out.is_empty() && c.stream.write_all(&c.out).is_err() {
                *slot = None;
            }
        }
    }
    Ok(())
}

impl NullServer {
    /// Listens on `dir/null.sock` and serves from a new thread.
    ///
    /// # Errors
    /// Binding the socket or starting the thread failed.
    pub fn start(dir: &Path) -> io::Result<NullServer> {
        let socket = dir.join("null.sock");
        let listener = UnixListener::bind(&socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("null-xenstored".into())
                .spawn(move || {
                    // SAFETY: gettid has no arguments and cannot fail.
                    let tid = unsafe { libc::gettid() };
                    let _ = tx.send(tid);
                    if let Err(e) = serve(&listener, &stop) {
                        eprintln!("xsbench: null server stopped: {e}");
                    }
                })?
        };
        let tid = rx
            .recv()
            .map_err(|_| io::Error::other("null server thread died"))?;
        Ok(NullServer {
            socket,
            tid,
            stop,
            thread: Some(thread),
        })
    }

    /// Its socket.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The serving thread's id (for its CPU time and affinity).
    #[must_use]
    pub fn tid(&self) -> libc::pid_t {
        self.tid
    }
}

impl Drop for NullServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the epoll wait so the thread sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_null_server_write_then_read_returns_value() {
        let dir = tempfile_dir();
        let s = NullServer::start(&dir).expect("starts");
        let c = xenstore_client::Client::connect_path(s.socket()).expect("connects");
        use xenstore_client::XsOps;
        c.write("/a", "v1").expect("write");
        assert_eq!(c.read("/a").expect("read"), b"v1");
        assert!(c.read("/missing").is_err());
        drop(c);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "xsbench-null-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        p
    }
}
