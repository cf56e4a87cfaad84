//! A small pool of I/O threads: the queue workers hand it the data
//! transfers of a batch so that several requests are on the disk at once
//! (synchronous `preadv`/`pwritev` in each thread).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A job run by a pool thread.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

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

/// A fixed set of threads running [`Job`]s in submission order.
#[derive(Debug)]
pub struct IoPool {
    tx: Mutex<Option<Sender<Job>>>,
    threads: Vec<JoinHandle<()>>,
}

impl IoPool {
    /// Starts `threads` threads (at least one) named `name-N`.
    pub fn new(name: &str, threads: usize) -> Result<Self, PoolError> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let rx: Arc<Mutex<Receiver<Job>>> = Arc::clone(&rx);
            let h = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(j) => j(),
                        Err(_) => return,
                    }
                })
                .map_err(PoolError::Spawn)?;
            handles.push(h);
        }
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            threads: handles,
        })
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Queues a job.
    pub fn submit(&self, job: Job) -> Result<(), PoolError> {
        let g = self.tx.lock().map_err(|_| PoolError::Stopped)?;
        g.as_ref()
            .ok_or(PoolError::Stopped)?
            .send(job)
            .map_err(|_| PoolError::Stopped)
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        for t in self.threads.drain(..) {
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
}
