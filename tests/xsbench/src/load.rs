//! A load generator measuring a server's throughput rather than one
//! client's round trip: `conns` connections, each a thread keeping `depth`
//! requests in flight (`WRITE` then `READ` of one of 100 keys of its own,
//! packed into one `write(2)`, then the replies read). With `depth` 1 it is
//! `conns` synchronous clients; with one connection and a large `depth` the
//! client's share of each request is small and the figure is close to the
//! server's own cost per request.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use xenstore_wire::{Decoder, MsgType, Request};

use crate::{io_err, Result, XsBenchError};

/// What one load run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadResult {
    /// Requests answered.
    pub requests: u64,
    /// Wall time from the first request to the last reply.
    pub elapsed: Duration,
}

impl LoadResult {
    /// Requests per second.
    #[must_use]
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn step_err(what: &str, detail: impl Into<String>) -> XsBenchError {
    XsBenchError::Step {
        what: what.into(),
        detail: detail.into(),
    }
}

/// One connection's share: `pairs` write+read pairs, `depth` requests in
/// flight.
fn one_conn(
    socket: &Path,
    conn: usize,
    depth: usize,
    pairs: usize,
    start: &Barrier,
) -> Result<u64> {
    let conn_result = UnixStream::connect(socket).and_then(|s| {
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map(|()| s)
    });
    // Every thread reaches the barrier, even one that failed to connect.
    start.wait();
    let mut s = conn_result.map_err(io_err("load: connecting"))?;
    let paths: Vec<String> = (0..100)
        .map(|k| format!("/bench/load/{conn}/k{k}"))
        .collect();
    let total = pairs * 2;
    let mut batch = Vec::with_capacity(depth * 64);
    let mut dec = Decoder::new();
    let mut value = String::new();
    let mut sent = 0usize;
    while sent < total {
        batch.clear();
        let n = depth.min(total - sent);
        for i in sent..sent + n {
            let path = &paths[(i / 2) % 100];
            let req_id = u32::try_from(i).unwrap_or(u32::MAX);
            let req = if i % 2 == 0 {
                value.clear();
                value.push_str("value-");
                value.push_str(&i.to_string());
                Request::Write {
                    path,
                    value: value.as_bytes(),
                }
            } else {
                Request::Read { path }
            };
            req.encode(req_id, 0, &mut batch)
                .map_err(|e| step_err("load: encoding", e.to_string()))?;
        }
        s.write_all(&batch).map_err(io_err("load: sending"))?;
        let mut got = 0usize;
        while got < n {
            match dec.next_packet() {
                Ok(Some((hdr, payload))) => {
                    if hdr.msg_type() == Some(MsgType::Error) {
                        return Err(step_err(
                            "load: server replied with an error",
                            String::from_utf8_lossy(payload).into_owned(),
                        ));
                    }
                    got += 1;
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(step_err("load: decoding replies", e.to_string())),
            }
            let buf = dec.read_buf(64 * 1024);
            let k = s.read(buf).map_err(io_err("load: receiving"))?;
            if k == 0 {
                return Err(step_err("load", "the server closed the connection"));
            }
            dec.commit(k);
        }
        sent += n;
    }
    Ok(total as u64)
}

/// Runs `conns` connections of `pairs` write+read pairs each with `depth`
/// requests in flight against `socket`.
///
/// # Errors
/// A connection fails, or the server answers with an error.
pub fn run_load(socket: &Path, conns: usize, depth: usize, pairs: usize) -> Result<LoadResult> {
    let conns = conns.max(1);
    let depth = depth.max(1);
    let start = Arc::new(Barrier::new(conns + 1));
    let mut threads = Vec::with_capacity(conns);
    for c in 0..conns {
        let socket = socket.to_owned();
        let start = start.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("load-{c}"))
                .spawn(move || one_conn(&socket, c, depth, pairs, &start))
                .map_err(io_err("load: starting a thread"))?,
        );
    }
    start.wait();
    let t0 = Instant::now();
    let mut requests = 0u64;
    let mut first_err = None;
    for t in threads {
        match t.join() {
            Ok(Ok(n)) => requests += n,
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(step_err("load", "a client thread panicked"));
            }
        }
    }
    let elapsed = t0.elapsed();
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(LoadResult { requests, elapsed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_load_against_null_server_counts_every_request() {
        let dir = std::env::temp_dir().join(format!("xsbench-load-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let s = crate::null::NullServer::start(&dir).expect("null server");
        let r = run_load(s.socket(), 2, 8, 50).expect("load runs");
        assert_eq!(r.requests, 2 * 2 * 50);
        assert!(r.per_second() > 0.0);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
