//! The block load generator end to end: `xl create` of PV guests running
//! the `blkload` guest binary (`kernel =`) against backendd's blkback on a
//! raw image, once with
//! registered buffers over two queues (multi-queue with a multi-page ring,
//! as Linux's blkfront writes it: one `ring-page-order` for all queues),
//! once with the copying API over one queue. Each run writes the whole disk
//! sequentially (wrapping) and reads it at random; Dom0 then checks that
//! every byte of the image holds the generator's pattern (0xA5), so the
//! zero-copy write path put the guest's bytes on disk.
//!
//! Private `xen-shimd` and `xenstored` (threads of this process), the real
//! `xl`, `backendd` and `blkload` binaries. Needs root.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use xen_testhost::Dom0;

const GUEST_RUN: Duration = Duration::from_secs(120);
const DISK: u64 = 8 << 20;

/// Runs one blkload guest with `extra` on a fresh zeroed image, each
/// pattern moving at least the whole disk (its seconds alone did not reach
/// its end on a loaded machine); returns its log and the image's bytes.
fn run_blkload(host: &mut Dom0, tag: &str, extra: &str) -> Result<(String, Vec<u8>)> {
    let name = format!("blkload{tag}{}", std::process::id());
    let img = host.dir.path().join(format!("{tag}.img"));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(DISK))
        .expect("create the disk image");
    let cfg = host.dir.path().join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\n\
             kernel = '{}'\n\
             extra = '--timeout-secs 30 --min-bytes {DISK} {extra}'\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, target={}' ]\n",
            env!("CARGO_BIN_EXE_blkload"),
            img.display()
        ),
    )
    .expect("write the config");
    host.xl_ok(&["create", cfg.to_str().expect("utf-8 path")])?;
    host.track_guest(&name);
    let deadline = Instant::now() + GUEST_RUN;
    let log = loop {
        let log = host.guest_log(&name);
        if log.contains("pvguest shutdown") || log.contains("frontend-failed") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not finish in {GUEST_RUN:?}; its log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = host.destroy_guest(&name);
    let bytes = std::fs::read(&img).expect("read the image");
    Ok((log, bytes))
}

fn check(log: &str, bytes: &[u8]) {
    assert!(!log.contains("frontend-failed"), "{log}");
    for pattern in ["seqwrite", "randread"] {
        let line = log
            .lines()
            .find(|l| l.starts_with("{\"blkload\"") && l.contains(pattern))
            .unwrap_or_else(|| panic!("no {pattern} result in the guest log:\n{log}"));
        assert!(!line.contains("\"ios\":0,"), "{line}");
    }
    assert_eq!(bytes.len() as u64, DISK);
    let bad = bytes.iter().position(|&b| b != 0xA5);
    assert_eq!(bad, None, "the image is not the written pattern at {bad:?}");
}

#[test]
fn test_blkload_registered_buffers_two_queues_and_copy_api_write_whole_disk() -> Result<()> {
    // Arrange
    let mut host = Dom0::start_for_pv_guests(
        "blkload-e2e-",
        Path::new(env!("CARGO_BIN_EXE_blkload")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )?;

    // Act: zero copy over two queues (ring order 2 each), 128 KiB I/Os;
    // then the copying API over one queue.
    let (zc_log, zc_img) = run_blkload(
        &mut host,
        "zc",
        "--pattern seqwrite,randread --bs 131072 --qd 8 --seconds 0.3 --queues 2",
    )?;
    let (cp_log, cp_img) = run_blkload(
        &mut host,
        "cp",
        "--pattern seqwrite,randread --bs 65536 --qd 4 --seconds 0.3 --blkload-copy",
    )?;

    // Assert
    check(&zc_log, &zc_img);
    check(&cp_log, &cp_img);
    Ok(())
}
