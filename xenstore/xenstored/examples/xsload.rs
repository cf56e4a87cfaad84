//! A small load generator for any xenstored on a socket (ours or Xen's):
//!
//! `xsload <socket> [seconds] [idle-connections]`
//!
//! Opens `idle-connections` connections that never send anything, then
//! measures, on one more connection, the latency of synchronous
//! READ/WRITE round trips (median, p99) and the throughput of sequential
//! mixed operations. Prints one JSON object. Measure ours and Xen's in the
//! same run to compare (ratios, not absolute numbers).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use xenstore_wire::{Decoder, Request};

fn call(s: &mut UnixStream, dec: &mut Decoder, r: &Request<'_>, id: u32) {
    let mut out = Vec::with_capacity(64);
    r.encode(id, 0, &mut out).expect("small request");
    s.write_all(&out).expect("write");
    loop {
        if let Some((h, _)) = dec.next_packet().expect("valid reply") {
            assert_eq!(h.req_id, id);
            return;
        }
        let buf = dec.read_buf(4096);
        let n = s.read(buf).expect("read");
        assert!(n > 0, "daemon closed the connection");
        dec.commit(n);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sock = args
        .get(1)
        .expect("usage: xsload <socket> [seconds] [idle]");
    let secs: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let idle: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
    let _idle: Vec<UnixStream> = (0..idle)
        .map(|_| UnixStream::connect(sock).expect("idle connect"))
        .collect();
    let mut s = UnixStream::connect(sock).expect("connect");
    let mut dec = Decoder::new();
    let mut id = 1u32;
    for i in 0..100 {
        let p = format!("/bench/k{i}");
        call(
            &mut s,
            &mut dec,
            &Request::Write {
                path: &p,
                value: b"value",
            },
            id,
        );
        id += 1;
    }
    // Latency of single round trips.
    let mut lat = Vec::with_capacity(20000);
    for i in 0..20000u32 {
        let p = format!("/bench/k{}", i % 100);
        let t = Instant::now();
        if i % 2 == 0 {
            call(&mut s, &mut dec, &Request::Read { path: &p }, id);
        } else {
            call(
                &mut s,
                &mut dec,
                &Request::Write {
                    path: &p,
                    value: b"v2",
                },
                id,
            );
        }
        lat.push(t.elapsed().as_nanos() as u64);
        id += 1;
    }
    lat.sort_unstable();
    let p50 = lat[lat.len() / 2];
    let p99 = lat[lat.len() * 99 / 100];
    // Throughput: sequential mixed read/write/directory for `secs`.
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut ops = 0u64;
    while Instant::now() < deadline {
        for i in 0..100u32 {
            let p = format!("/bench/k{i}");
            match i % 4 {
                0 | 1 => call(&mut s, &mut dec, &Request::Read { path: &p }, id),
                2 => call(
                    &mut s,
                    &mut dec,
                    &Request::Write {
                        path: &p,
                        value: b"v3",
                    },
                    id,
                ),
                _ => call(&mut s, &mut dec, &Request::Directory { path: "/bench" }, id),
            }
            id = id.wrapping_add(1);
            ops += 1;
        }
    }
    let ops_per_s = ops as f64 / start.elapsed().as_secs_f64();
    println!(
        "{{\"socket\":\"{sock}\",\"idle_connections\":{idle},\"p50_ns\":{p50},\"p99_ns\":{p99},\"ops_per_s\":{ops_per_s:.0}}}"
    );
}
