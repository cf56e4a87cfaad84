//! Shared fixture of backendd's integration tests: our xenstored in a thread
//! of the test process, on a private socket; stopped and removed on drop.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use xen_backendd::{BackendFactory, Service, ServiceConfig};
use xenstore_client::Client;
use xenstored::server::{Server, ServerConfig, StopHandle};

/// How long xenstored may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// xenstored in a thread of this process.
pub struct Xenstored {
    /// The private directory holding the socket.
    pub dir: tempfile::TempDir,
    /// The socket clients connect to.
    pub socket: PathBuf,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl Xenstored {
    /// Starts xenstored (no persistence, no shim) in a temporary directory
    /// named with `prefix`.
    pub fn start(prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("socket");
        let cfg = ServerConfig {
            socket: socket.clone(),
            read_only_socket: false,
            state_dir: None,
            fsync: false,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut s = Server::new(&cfg).expect("xenstored starts");
            tx.send(s.stop_handle()).expect("test waits");
            s.run().expect("xenstored runs");
        });
        let stop = rx.recv_timeout(START_TIMEOUT).expect("xenstored started");
        Self {
            dir,
            socket,
            stop,
            thread: Some(thread),
        }
    }

    /// A client connected to it.
    pub fn client(&self) -> Client {
        Client::connect_path(&self.socket).expect("connect to xenstored")
    }
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// backendd's service on a thread of the test, with `factories`, looking
/// at xenstore every `poll`; stopped and joined on drop.
pub struct Backendd {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backendd {
    pub fn start(xs: Arc<Client>, poll: Duration, factories: Vec<Arc<dyn BackendFactory>>) -> Self {
        let cfg = ServiceConfig { domid: 0, poll };
        let mut svc = Service::new(xs, &cfg, factories);
        let stop = svc.stop_flag();
        let thread = std::thread::spawn(move || {
            let _ = svc.run();
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Backendd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
