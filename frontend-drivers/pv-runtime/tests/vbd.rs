//! The synchronous block adapter (`vbd::Vbd`) over `FakePlatform`, with the
//! backend played by the test (xen-blkfront's own test backend, reused):
//! the waiter serves the ring whenever the adapter waits.

#[path = "../../blkfront/tests/common/mod.rs"]
#[allow(dead_code, clippy::all)]
mod fakeback;

use std::time::Duration;

use fakeback::{connected, FakeBack, Offer, Rng};
use xen_abi::io::blkif::{blkif_response, BLKIF_RSP_ERROR};
use xen_blkfront::request::decode_request;
use xen_blkfront::{BlkFront, BlkfrontConfig};
use xen_front_platform::fake::FakePlatform;
use xen_front_platform::Platform;
use xen_pvguest::vbd::{BlockDevice, Vbd, VbdConfig, VbdError, VbdWaiter};

/// How the played backend behaves when the adapter waits.
enum Mode {
    /// Serves every request.
    Serve,
    /// Answers nothing (the fake clock moves on).
    Silent,
    /// Answers every request with `BLKIF_RSP_ERROR`.
    Fail,
    /// At the first wait the backend dies and a new one probes (InitWait)
    /// while every watch event is lost (none reaches the device); it
    /// connects once the device offers new rings, then serves.
    RestartUnseen,
}

/// Drops every fired watch (events the device never sees).
fn lose_watches(p: &FakePlatform) {
    while let Ok(Some(_)) = p.xs_read_watch(Some(Duration::ZERO)) {}
}

struct Backend<'a> {
    p: &'a FakePlatform,
    back: FakeBack<'a>,
    mode: Mode,
    waits: u64,
}

impl VbdWaiter<FakePlatform> for Backend<'_> {
    fn wait(&mut self, _dev: &mut BlkFront<'_, FakePlatform>) -> Result<(), VbdError> {
        self.waits += 1;
        match self.mode {
            Mode::Serve => {
                self.back.serve();
            }
            Mode::Silent => self.p.advance_clock(Duration::from_millis(100)),
            Mode::RestartUnseen => {
                if self.waits == 1 {
                    self.back.unmap_all();
                    self.back.init_wait();
                } else if self.back.fe_state().as_deref() == Some("3") && self.back.queues() == 0 {
                    self.back.connect();
                } else if self.back.queues() > 0 {
                    self.back.serve();
                }
                lose_watches(self.p);
                self.p.advance_clock(Duration::from_millis(100));
            }
            Mode::Fail => {
                self.back.take_and_hold(usize::MAX, false);
                for (q, slot) in std::mem::take(&mut self.back.held) {
                    let req = decode_request(&slot);
                    self.back.push_raw(
                        q,
                        blkif_response {
                            id: req.id,
                            operation: req.operation,
                            status: BLKIF_RSP_ERROR,
                            ..Default::default()
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

fn platform() -> FakePlatform {
    FakePlatform::with_limits(fakeback::GUEST, 16384, 32768)
}

fn vbd<'a>(p: &'a FakePlatform, offer: Offer, mode: Mode) -> Vbd<'a, FakePlatform, Backend<'a>> {
    // 32 segments a request (128 KiB), as Linux's blkfront takes by
    // default: large transfers split into several requests.
    let bcfg = BlkfrontConfig {
        max_indirect_segments: 32,
        ..BlkfrontConfig::default()
    };
    let (front, back) = connected(p, offer, bcfg);
    let cfg = VbdConfig {
        max_in_flight: 16,
        io_timeout: Duration::from_secs(5),
    };
    let w = Backend {
        p,
        back,
        mode,
        waits: 0,
    };
    Vbd::new(p, front, w, cfg).expect("connected device")
}

#[test]
fn test_vbd_large_write_splits_into_parallel_requests_and_reads_back() {
    // Arrange: 4 MiB disk, 128 KiB per request (32 indirect segments).
    let p = platform();
    let mut d = vbd(&p, Offer::default(), Mode::Serve);
    let data = Rng(7).bytes(1 << 20);

    // Act
    d.write_at(512 * 1024, &data).expect("write");
    let mut back = vec![0u8; data.len()];
    d.read_at(512 * 1024, &mut back).expect("read");

    // Assert
    assert_eq!(back, data);
    let disk = &d.waiter_mut().back.disk;
    assert_eq!(&disk[512 * 1024..512 * 1024 + data.len()], &data[..]);
    let s = d.stats();
    assert_eq!(s.requests, 16, "8 requests of 128 KiB each way");
    assert_eq!(s.max_in_flight_seen, 8);
}

#[test]
fn test_vbd_unaligned_write_keeps_neighbouring_bytes() {
    // Arrange
    let p = platform();
    let mut d = vbd(&p, Offer::default(), Mode::Serve);
    d.write_at(0, &[0xaa; 2048]).expect("fill");

    // Act: 700 bytes from offset 100 touch sectors 0 and 1 partially.
    d.write_at(100, &[0x55; 700]).expect("unaligned write");
    let mut got = [0u8; 1024];
    d.read_at(0, &mut got).expect("read");
    let mut odd = [0u8; 3];
    d.read_at(799, &mut odd).expect("unaligned read");

    // Assert
    assert!(got[..100].iter().all(|&b| b == 0xaa));
    assert!(got[100..800].iter().all(|&b| b == 0x55));
    assert!(got[800..].iter().all(|&b| b == 0xaa));
    assert_eq!(odd, [0x55, 0xaa, 0xaa]);
    assert_eq!(d.stats().rmw, 1);
}

#[test]
fn test_vbd_flush_reaches_backend() {
    let p = platform();
    let mut d = vbd(&p, Offer::default(), Mode::Serve);
    d.write_at(4096, &[1; 4096]).expect("write");
    d.flush().expect("flush");
    assert_eq!(d.waiter_mut().back.flushes, 1);
    assert_eq!(d.stats().flushes, 1);
}

#[test]
fn test_vbd_flush_without_backend_support_is_a_no_op() {
    let p = platform();
    let offer = Offer {
        flush: false,
        ..Offer::default()
    };
    let mut d = vbd(&p, offer, Mode::Serve);
    d.flush().expect("nothing to flush");
    assert_eq!(d.stats().flushes, 0);
}

/// A backend restart whose watch events never reach the device (a
/// xenstored restarted in between, or another device's waiter took them):
/// the device reads the backend's state itself after 2 s without an answer,
/// offers new rings, connects and the waiting write completes (before the
/// 60 s I/O timeout this was, with the device Connected and its backend in
/// InitWait for good).
#[test]
fn test_vbd_backend_restart_with_its_watch_lost_is_found_and_the_write_completes() {
    let p = platform();
    let (front, back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    let cfg = VbdConfig {
        max_in_flight: 16,
        io_timeout: Duration::from_secs(30),
    };
    let w = Backend {
        p: &p,
        back,
        mode: Mode::RestartUnseen,
        waits: 0,
    };
    let mut d = Vbd::new(&p, front, w, cfg).expect("connected device");
    let data = Rng(11).bytes(8192);

    d.write_at(4096, &data)
        .expect("the write completes on the new backend");

    assert_eq!(&d.waiter_mut().back.disk[4096..4096 + 8192], &data[..]);
    assert!(d.stats().rechecks >= 2, "{:?}", d.stats());
    let mut back = vec![0u8; 8192];
    d.read_at(4096, &mut back).expect("read");
    assert_eq!(back, data);
}

#[test]
fn test_vbd_silent_backend_times_out() {
    let p = platform();
    let mut d = vbd(&p, Offer::default(), Mode::Silent);
    let mut buf = vec![0u8; 4096];
    let r = d.read_at(0, &mut buf);
    assert!(matches!(r, Err(VbdError::Timeout(_))), "{r:?}");
    assert!(d.waiter_mut().waits > 1);
}

#[test]
fn test_vbd_backend_error_status_is_io_error() {
    let p = platform();
    let mut d = vbd(&p, Offer::default(), Mode::Fail);
    let r = d.write_at(0, &[3; 8192]);
    assert!(
        matches!(
            r,
            Err(VbdError::Io {
                what: "write",
                offset: 0
            })
        ),
        "{r:?}"
    );
    assert_eq!(r.map_err(|e| e.errno()), Err(libc::EIO));
}

#[test]
fn test_vbd_out_of_range_and_read_only_are_refused() {
    let p = platform();
    let offer = Offer {
        read_only: true,
        ..Offer::default()
    };
    let mut d = vbd(&p, offer, Mode::Serve);
    let size = d.size_bytes();
    let mut buf = [0u8; 512];
    assert!(matches!(
        d.read_at(size - 256, &mut buf),
        Err(VbdError::OutOfRange { .. })
    ));
    let r = d.write_at(0, &buf);
    assert!(matches!(r, Err(VbdError::ReadOnly)), "{r:?}");
    assert_eq!(d.waiter_mut().back.requests_seen, 0);
    d.read_at(size - 512, &mut buf).expect("last sector");
}
