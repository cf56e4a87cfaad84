//! Per-device counters, shared by the queue workers.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters (relaxed atomics, updated by the workers).
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    errors: AtomicU64,
    unsupported: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    notifications: AtomicU64,
    wakeups: AtomicU64,
    polled_wakeups: AtomicU64,
    persistent_grants: AtomicU64,
    grant_maps: AtomicU64,
    merged: AtomicU64,
    out_of_requests: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Requests taken from the rings.
    pub requests: u64,
    /// Reads answered with success.
    pub reads: u64,
    /// Writes (including barriers) answered with success.
    pub writes: u64,
    /// Flushes answered with success.
    pub flushes: u64,
    /// Discards answered with success.
    pub discards: u64,
    /// Requests answered with `BLKIF_RSP_ERROR`.
    pub errors: u64,
    /// Requests answered with `BLKIF_RSP_EOPNOTSUPP`.
    pub unsupported: u64,
    /// Bytes read from the disk into guest pages.
    pub bytes_read: u64,
    /// Bytes written from guest pages to the disk.
    pub bytes_written: u64,
    /// Event-channel notifications sent to the frontend.
    pub notifications: u64,
    /// Times a worker woke up from the event channel.
    pub wakeups: u64,
    /// Times an idle worker found new requests while polling its ring
    /// (no notification, no sleep).
    pub polled_wakeups: u64,
    /// Persistent grants currently mapped (all queues).
    pub persistent_grants: u64,
    /// Grant maps done (persistent grants count once).
    pub grant_maps: u64,
    /// Reads and writes served in the transfer of an adjacent earlier
    /// request of their batch (`DiskConfig::merge_max_bytes`).
    pub merged: u64,
    /// Batches in which the worker found the ring full (a whole ring of
    /// unanswered requests: the frontend was out of request slots and had
    /// to wait for answers), Xen's `oo_req` of a vbd's `statistics/`.
    pub out_of_requests: u64,
}

impl MetricsSnapshot {
    /// Sectors (512 bytes, as Xen's `rd_sect`) read.
    #[must_use]
    pub fn sectors_read(&self) -> u64 {
        self.bytes_read / 512
    }

    /// Sectors (512 bytes, as Xen's `wr_sect`) written.
    #[must_use]
    pub fn sectors_written(&self) -> u64 {
        self.bytes_written / 512
    }
}

/// The counters a worker bumps.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Requests,
    Reads,
    Writes,
    Flushes,
    Discards,
    Errors,
    Unsupported,
    BytesRead,
    BytesWritten,
    Notifications,
    Wakeups,
    PolledWakeups,
    PersistentGrants,
    GrantMaps,
    Merged,
    OutOfRequests,
}

impl Metrics {
    fn cell(&self, c: Counter) -> &AtomicU64 {
        match c {
            Counter::Requests => &self.requests,
            Counter::Reads => &self.reads,
            Counter::Writes => &self.writes,
            Counter::Flushes => &self.flushes,
            Counter::Discards => &self.discards,
            Counter::Errors => &self.errors,
            Counter::Unsupported => &self.unsupported,
            Counter::BytesRead => &self.bytes_read,
            Counter::BytesWritten => &self.bytes_written,
            Counter::Notifications => &self.notifications,
            Counter::Wakeups => &self.wakeups,
            Counter::PolledWakeups => &self.polled_wakeups,
            Counter::PersistentGrants => &self.persistent_grants,
            Counter::GrantMaps => &self.grant_maps,
            Counter::Merged => &self.merged,
            Counter::OutOfRequests => &self.out_of_requests,
        }
    }

    pub(crate) fn add(&self, c: Counter, n: u64) {
        self.cell(c).fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, c: Counter, n: u64) {
        self.cell(c).fetch_sub(n, Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c| self.cell(c).load(Ordering::Relaxed);
        MetricsSnapshot {
            requests: g(Counter::Requests),
            reads: g(Counter::Reads),
            writes: g(Counter::Writes),
            flushes: g(Counter::Flushes),
            discards: g(Counter::Discards),
            errors: g(Counter::Errors),
            unsupported: g(Counter::Unsupported),
            bytes_read: g(Counter::BytesRead),
            bytes_written: g(Counter::BytesWritten),
            notifications: g(Counter::Notifications),
            wakeups: g(Counter::Wakeups),
            polled_wakeups: g(Counter::PolledWakeups),
            persistent_grants: g(Counter::PersistentGrants),
            grant_maps: g(Counter::GrantMaps),
            merged: g(Counter::Merged),
            out_of_requests: g(Counter::OutOfRequests),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_metrics_add_shows_in_snapshot() {
        let m = Metrics::default();
        m.add(Counter::Reads, 2);
        m.add(Counter::BytesRead, 8192);
        m.add(Counter::PersistentGrants, 3);
        m.sub(Counter::PersistentGrants, 1);
        m.add(Counter::OutOfRequests, 1);
        let s = m.snapshot();
        assert_eq!((s.reads, s.bytes_read, s.persistent_grants), (2, 8192, 2));
        assert_eq!((s.out_of_requests, s.sectors_read()), (1, 16));
    }
}
