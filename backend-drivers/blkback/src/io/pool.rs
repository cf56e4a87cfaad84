//! A small pool of I/O threads: the queue workers hand it the data
//! transfers of a batch so that several requests are on the disk at once
//! (synchronous `preadv`/`pwritev` in each thread). Threads start on
//! demand and leave when idle ([`IDLE_EXIT`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A job run by a pool thread.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// How long a thread with nothing to do stays before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A thread could not be started.
    #[error("cannot start an I/O thread")]
    Spawn(#[source] std::io::Error),
    /// The pool is shutting down.
    #[error("the I/O pool is stopped")]
    Stopped,
}

/// What the pool's threads share.
#[derive(Debug)]
struct Shared {
    rx: Mutex<Receiver<Job>>,
    /// Jobs submitted and not yet taken by a thread.
    queued: AtomicUsize,
    /// Threads waiting for a job.
    idle: AtomicUsize,
    /// Threads running.
    live: AtomicUsize,
}

/// Up to a fixed number of threads running [`Job`]s in submission order.
///
/// Threads start when jobs wait and no thread is free, and exit after
/// [`IDLE_EXIT`] without work: a device that does little I/O (most of a
/// host's guests, most of the time) holds no I/O thread; the scale
/// benchmark's idle guests had four each before.
#[derive(Debug)]
pub struct IoPool {
    name: String,
    max: usize,
    tx: Mutex<Option<Sender<Job>>>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl IoPool {
    /// A pool of at most `threads` threads (at least one) named `name-N`;
    /// none runs yet.
    pub fn new(name: &str, threads: usize) -> Result<Self, PoolError> {
        let (tx, rx) = channel::<Job>();
        Ok(Self {
            name: name.to_owned(),
            max: threads.max(1),
            tx: Mutex::new(Some(tx)),
            shared: Arc::new(Shared {
                rx: Mutex::new(rx),
                queued: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
                live: AtomicUsize::new(0),
            }),
            threads: Mutex::new(Vec::new()),
        })
    }

    /// Most threads it runs.
    pub fn threads(&self) -> usize {
        self.max
    }

    /// Threads running now.
    pub fn live_threads(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Queues a job, starting a thread if every running one is busy and
    /// there are fewer than the most.
    pub fn submit(&self, job: Job) -> Result<(), PoolError> {
        {
            let g = self.tx.lock().map_err(|_| PoolError::Stopped)?;
            let tx = g.as_ref().ok_or(PoolError::Stopped)?;
            self.shared.queued.fetch_add(1, Ordering::SeqCst);
            if tx.send(job).is_err() {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(PoolError::Stopped);
            }
        }
        let sh = &self.shared;
        if sh.queued.load(Ordering::SeqCst) > sh.idle.load(Ordering::SeqCst)
            && sh.live.load(Ordering::SeqCst) < self.max
        {
            self.spawn()?;
        }
        Ok(())
    }

    /// Starts one thread (a failure matters only when none runs: the
    /// others serve the queue).
    fn spawn(&self) -> Result<(), PoolError> {
        let mut threads = self.threads.lock().map_err(|_| PoolError::Stopped)?;
        let sh = Arc::clone(&self.shared);
        if sh.live.load(Ordering::SeqCst) >= self.max {
            return Ok(());
        }
        threads.retain(|t| !t.is_finished());
        sh.live.fetch_add(1, Ordering::SeqCst);
        let n = threads.len();
        let r = std::thread::Builder::new()
            .name(format!("{}-{n}", self.name))
            .spawn(move || worker(&sh));
        match r {
            Ok(h) => {
                threads.push(h);
                Ok(())
            }
            Err(e) => {
                self.shared.live.fetch_sub(1, Ordering::SeqCst);
                if self.shared.live.load(Ordering::SeqCst) == 0 {
                    Err(PoolError::Spawn(e))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A pool thread: jobs until the pool stops or none comes for
/// [`IDLE_EXIT`]. It counts itself out of `live` when it leaves.
fn worker(sh: &Shared) {
    loop {
        sh.idle.fetch_add(1, Ordering::SeqCst);
        let Ok(rx) = sh.rx.lock() else {
            sh.idle.fetch_sub(1, Ordering::SeqCst);
            sh.live.fetch_sub(1, Ordering::SeqCst);
            return;
        };
        let job = match rx.recv_timeout(IDLE_EXIT) {
            Ok(j) => {
                sh.idle.fetch_sub(1, Ordering::SeqCst);
                j
            }
            Err(RecvTimeoutError::Timeout) => {
                // Out of the counts first, then one last look: a submitter
                // that still saw this thread idle started no other, and its
                // job is in the channel by now; one that comes later sees
                // it gone and starts a thread.
                sh.live.fetch_sub(1, Ordering::SeqCst);
                sh.idle.fetch_sub(1, Ordering::SeqCst);
                match rx.try_recv() {
                    Ok(j) => {
                        sh.live.fetch_add(1, Ordering::SeqCst);
                        j
                    }
                    Err(_) => return,
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                sh.idle.fetch_sub(1, Ordering::SeqCst);
                sh.live.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        };
        drop(rx);
        sh.queued.fetch_sub(1, Ordering::SeqCst);
        job();
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        let threads = match self.threads.get_mut() {
            Ok(t) => std::mem::take(t),
            Err(p) => std::mem::take(p.into_inner()),
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn test_pool_runs_every_job_before_drop_returns() {
        let pool = IoPool::new("t", 3).expect("pool");
        let n = Arc::new(AtomicU32::new(0));
        let (tx, rx) = channel();
        for _ in 0..100 {
            let n = Arc::clone(&n);
            let tx = tx.clone();
            pool.submit(Box::new(move || {
                n.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(());
            }))
            .expect("submit");
        }
        for _ in 0..100 {
            rx.recv().expect("done");
        }
        drop(pool);
        assert_eq!(n.load(Ordering::SeqCst), 100);
    }

    #[test]
    fn test_pool_starts_threads_on_demand_up_to_its_size_and_idle_ones_exit() {
        let pool = IoPool::new("t", 3).expect("pool");
        assert_eq!(pool.live_threads(), 0, "no thread before the first job");
        // Four jobs that block until released: three threads, no more.
        let (go_tx, go_rx) = channel::<()>();
        let go_rx = Arc::new(Mutex::new(go_rx));
        let (done_tx, done_rx) = channel();
        for _ in 0..4 {
            let go = Arc::clone(&go_rx);
            let done = done_tx.clone();
            pool.submit(Box::new(move || {
                let _ = go.lock().map(|g| g.recv());
                let _ = done.send(());
            }))
            .expect("submit");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pool.live_threads() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pool.live_threads(), 3);
        for _ in 0..4 {
            go_tx.send(()).expect("release");
        }
        for _ in 0..4 {
            done_rx.recv_timeout(Duration::from_secs(5)).expect("done");
        }
        // Idle, they leave; a later job starts one again. They wait for
        // work one at a time (the receiver is behind a lock), so the three
        // leave one IDLE_EXIT after another: 15 s, which the old deadline of
        // exactly 3 x IDLE_EXIT missed on a loaded machine (CI).
        let deadline = std::time::Instant::now() + IDLE_EXIT * 5;
        while pool.live_threads() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(pool.live_threads(), 0, "idle threads exit");
        let done = done_tx.clone();
        pool.submit(Box::new(move || {
            let _ = done.send(());
        }))
        .expect("submit after idle");
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a job after the threads left runs");
    }
}
