//! The qcow2 engine against images made and checked by QEMU's own tools:
//! `qemu-img create` (v3 and v2, several cluster sizes), `qemu-io` (data
//! QEMU wrote, read by us), `qemu-img check` (clean after our writes) and
//! `qemu-img convert -O raw` (our writes, read by QEMU). Negative: corrupt
//! tables, backing files, compressed clusters. Needs qemu-utils
//! (`apt-get install qemu-utils`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use xen_blkback::io::{DiskImage, Qcow2Error, Qcow2Image};
use xen_blkback::ImageError;

mod image_io;
use image_io::{pattern, read, write};

fn tool(name: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {name} ({e}): install qemu-utils (apt-get install qemu-utils)")
    });
    out
}

fn ok(name: &str, args: &[&str]) -> String {
    let out = tool(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn create(dir: &Path, name: &str, opts: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            opts,
            p.to_str().expect("utf-8"),
            size,
        ],
    );
    p
}

fn check_clean(p: &Path) {
    let out = tool("qemu-img", &["check", p.to_str().expect("utf-8")]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-img check is not clean:\n{text}");
    assert!(text.contains("No errors were found"), "{text}");
    assert!(!text.contains("leaked"), "{text}");
}

/// The image as raw bytes, converted by QEMU.
fn as_raw(p: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("converted.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            p.to_str().expect("utf-8"),
            raw.to_str().expect("utf-8"),
        ],
    );
    std::fs::read(raw).expect("read the converted image")
}

/// Writes at scattered offsets (crossing clusters, L2 tables and refcount
/// blocks), checks reads against a model, QEMU's check and QEMU's view.
fn roundtrip(opts: &str, size: u64, version: u32) {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = create(dir.path(), "d.qcow2", opts, &size.to_string());
    let mut model = vec![0u8; size as usize];
    {
        let img = Qcow2Image::open(&p, false, true).expect("open");
        assert_eq!(img.version(), version);
        assert_eq!(DiskImage::size(&img), size);
        // Unallocated clusters read as zeros.
        assert!(read(&img, 0, 65536).expect("read").iter().all(|&b| b == 0));
        let writes: &[(u64, usize)] = &[
            (0, 4096),
            (512, 512),
            (4096 * 3 - 512, 8192),
            (size / 2 + 1536, 70_000 - 70_000 % 512),
            (size - 4096, 4096),
            (size / 3 / 512 * 512, 131_072),
            (12 << 20, 1 << 20),
            (20 << 20, 4 << 20),
        ];
        for (i, &(off, len)) in writes.iter().enumerate() {
            let mut d = pattern(i as u64 + 1, len);
            model[off as usize..off as usize + len].copy_from_slice(&d);
            write(&img, off, &mut d).expect("write");
        }
        for &(off, len) in writes {
            let lo = off.saturating_sub(4096);
            let hi = (off + len as u64 + 4096).min(size);
            let got = read(&img, lo, (hi - lo) as usize).expect("read back");
            assert!(
                got == model[lo as usize..hi as usize],
                "read back differs around {off}"
            );
        }
        img.flush().expect("flush");
    }
    check_clean(&p);
    assert!(as_raw(&p, dir.path()) == model, "QEMU reads other data");
    // Reopened, the data is still there.
    let img = Qcow2Image::open(&p, true, false).expect("reopen read-only");
    let got = read(&img, 0, size as usize).expect("read all");
    assert!(got == model, "reopened image differs");
}

#[test]
fn test_qcow2_v3_64k_clusters_writes_check_clean_and_qemu_reads_them() {
    roundtrip("compat=1.1", 64 << 20, 3);
}

#[test]
fn test_qcow2_v3_small_clusters_allocate_l2_tables_and_refcount_blocks() {
    // 4 KiB clusters: an L2 table covers 2 MiB, a refcount block 8 MiB,
    // so the writes above need new ones of both.
    roundtrip("compat=1.1,cluster_size=4096", 64 << 20, 3);
}

#[test]
fn test_qcow2_v3_8bit_refcounts_roundtrip() {
    roundtrip("compat=1.1,cluster_size=4096,refcount_bits=8", 32 << 20, 3);
}

#[test]
fn test_qcow2_v3_64bit_refcounts_need_new_refcount_blocks() {
    // A 4 KiB refcount block of 64-bit entries covers 2 MiB of the file;
    // the ~6.5 MiB written need three more.
    roundtrip("compat=1.1,cluster_size=4096,refcount_bits=64", 32 << 20, 3);
}

#[test]
fn test_qcow2_v2_roundtrip() {
    roundtrip("compat=0.10", 64 << 20, 2);
}

#[test]
fn test_qcow2_reads_data_qemu_wrote_and_zero_clusters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = create(dir.path(), "q.qcow2", "compat=1.1", "16M");
    let ps = p.to_str().expect("utf-8");
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 1M 128k",
            "-c",
            "write -P 0xcd 5M 4k",
            "-c",
            "write -z 1M 64k",
            ps,
        ],
    );
    let img = Qcow2Image::open(&p, false, false).expect("open");
    let b = read(&img, 1 << 20, 128 << 10).expect("read");
    assert!(b[..65536].iter().all(|&x| x == 0), "zero cluster");
    assert!(b[65536..].iter().all(|&x| x == 0xab));
    let b = read(&img, 5 << 20, 8192).expect("read");
    assert!(b[..4096].iter().all(|&x| x == 0xcd));
    assert!(b[4096..].iter().all(|&x| x == 0));
    // Writing into the zero cluster keeps the rest of it zero.
    let mut d = vec![0x11u8; 512];
    write(&img, (1 << 20) + 4096, &mut d).expect("write into a zero cluster");
    let b = read(&img, 1 << 20, 65536).expect("read");
    assert!(b[..4096].iter().all(|&x| x == 0));
    assert!(b[4096..4608].iter().all(|&x| x == 0x11));
    assert!(b[4608..].iter().all(|&x| x == 0));
    img.flush().expect("flush");
    drop(img);
    check_clean(&p);
    ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "read -P 0x11 1052672 512", ps],
    );
}

#[test]
fn test_qcow2_discard_frees_clusters_and_reads_zeros() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = create(dir.path(), "d.qcow2", "compat=1.1", "8M");
    let img = Qcow2Image::open(&p, false, false).expect("open");
    let mut d = vec![0x5au8; 256 << 10];
    write(&img, 0, &mut d).expect("write");
    // Whole clusters 1..3 go; the partial ones at the ends stay.
    img.discard(65536 - 512, 3 * 65536).expect("discard");
    let b = read(&img, 0, 256 << 10).expect("read");
    assert!(b[..65536].iter().all(|&x| x == 0x5a));
    assert!(b[65536..3 * 65536].iter().all(|&x| x == 0));
    assert!(b[3 * 65536..].iter().all(|&x| x == 0x5a));
    // Written again, the cluster is allocated anew.
    let mut d = vec![0x77u8; 4096];
    write(&img, 65536, &mut d).expect("rewrite");
    img.flush().expect("flush");
    drop(img);
    check_clean(&p);
    let raw = as_raw(&p, dir.path());
    assert!(raw[65536..69632].iter().all(|&x| x == 0x77));
    assert!(raw[69632..131072].iter().all(|&x| x == 0));
}

#[test]
fn test_qcow2_parallel_writers_leave_a_clean_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = create(dir.path(), "p.qcow2", "compat=1.1,cluster_size=4096", "32M");
    let img = Arc::new(Qcow2Image::open(&p, false, true).expect("open"));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let img = Arc::clone(&img);
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    // Interleaved 4 KiB blocks: neighbours share L2 tables
                    // and refcount blocks.
                    let off = ((i * 4 + t) * 4096 * 9) % (32 << 20);
                    let mut d = pattern(t * 1000 + i, 4096);
                    write(img.as_ref(), off, &mut d).expect("write");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    img.flush().expect("flush");
    let mut model = vec![0u8; 32 << 20];
    for t in 0..4u64 {
        for i in 0..200u64 {
            let off = (((i * 4 + t) * 4096 * 9) % (32 << 20)) as usize;
            model[off..off + 4096].copy_from_slice(&pattern(t * 1000 + i, 4096));
        }
    }
    drop(img);
    check_clean(&p);
    assert!(as_raw(&p, dir.path()) == model);
}

#[test]
fn test_qcow2_corrupt_l1_entry_outside_the_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = create(dir.path(), "c.qcow2", "compat=1.1", "8M");
    let ps = p.to_str().expect("utf-8");
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 1 0 4k", ps]);
    let h = std::fs::read(&p).expect("read");
    let l1 = u64::from_be_bytes(h[40..48].try_into().expect("8 bytes"));
    let mut f = std::fs::read(&p).expect("read");
    let bad: u64 = (1 << 63) | (1 << 40);
    f[l1 as usize..l1 as usize + 8].copy_from_slice(&bad.to_be_bytes());
    std::fs::write(&p, f).expect("corrupt");
    let e = Qcow2Image::open(&p, false, false).expect_err("refused");
    assert!(matches!(e, Qcow2Error::Corrupt { .. }), "{e:?}");
    assert!(e.is_fatal());
    let msg = e.to_string();
    assert!(
        msg.contains("L1 entry 0") && msg.contains("c.qcow2"),
        "{msg}"
    );
}

#[test]
fn test_qcow2_corrupt_l2_entry_fails_reads_fatally_without_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = create(dir.path(), "c.qcow2", "compat=1.1", "8M");
    let ps = p.to_str().expect("utf-8");
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 1 0 4k", ps]);
    let mut f = std::fs::read(&p).expect("read");
    let l1 = u64::from_be_bytes(f[40..48].try_into().expect("8 bytes")) as usize;
    let l2 = (u64::from_be_bytes(f[l1..l1 + 8].try_into().expect("8 bytes"))
        & 0x00ff_ffff_ffff_fe00) as usize;
    // Entry 0 points far past the end; entry 1 is misaligned.
    f[l2..l2 + 8].copy_from_slice(&((1u64 << 63) | (1 << 44)).to_be_bytes());
    f[l2 + 8..l2 + 16].copy_from_slice(&((1u64 << 63) | (65536 + 4096)).to_be_bytes());
    std::fs::write(&p, f).expect("corrupt");
    let img = Qcow2Image::open(&p, false, false).expect("the header is fine");
    for off in [0u64, 65536] {
        let e = read(&img, off, 4096).expect_err("corrupt entry");
        assert!(e.is_fatal(), "{e:?}");
        assert!(
            matches!(e, ImageError::Qcow2(Qcow2Error::Corrupt { .. })),
            "{e:?}"
        );
        let mut d = vec![1u8; 4096];
        assert!(write(&img, off, &mut d).expect_err("write").is_fatal());
    }
    // Other clusters still work.
    assert!(read(&img, 1 << 20, 4096).is_ok());
}

#[test]
fn test_qcow2_backing_file_and_bad_magic_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = create(dir.path(), "base.qcow2", "compat=1.1", "8M");
    let over = dir.path().join("over.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str().expect("utf-8"),
            over.to_str().expect("utf-8"),
        ],
    );
    let e = Qcow2Image::open(&over, false, false).expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("backing file") && msg.contains("base.qcow2"),
        "{msg}"
    );
    let raw = dir.path().join("raw.img");
    std::fs::write(&raw, vec![0u8; 65536]).expect("raw");
    let e = Qcow2Image::open(&raw, false, false).expect_err("not qcow2");
    assert!(matches!(e, Qcow2Error::NotQcow2 { .. }), "{e:?}");
}

#[test]
fn test_qcow2_compressed_clusters_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("src.raw");
    std::fs::write(&src, vec![0x42u8; 1 << 20]).expect("raw");
    let c = dir.path().join("c.qcow2");
    ok(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            src.to_str().expect("utf-8"),
            c.to_str().expect("utf-8"),
        ],
    );
    let img = Qcow2Image::open(&c, false, false).expect("open");
    let e = read(&img, 0, 4096).expect_err("compressed");
    assert!(
        matches!(e, ImageError::Qcow2(Qcow2Error::Compressed(0))),
        "{e:?}"
    );
    assert!(!e.is_fatal());
}

#[test]
fn test_qcow2_readonly_refuses_writes_and_out_of_range_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = create(dir.path(), "r.qcow2", "compat=1.1", "1M");
    let img = Qcow2Image::open(&p, true, false).expect("open");
    let mut d = vec![0u8; 512];
    assert!(matches!(
        write(&img, 0, &mut d),
        Err(ImageError::Qcow2(Qcow2Error::ReadOnly))
    ));
    assert!(matches!(
        read(&img, (1 << 20) - 512, 1024),
        Err(ImageError::Qcow2(Qcow2Error::OutOfRange { .. }))
    ));
}

#[test]
fn test_qcow2_encrypted_image_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join("e.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "--object",
            "secret,id=sec0,data=123456",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0",
            p.to_str().expect("utf-8"),
            "1M",
        ],
    );
    let e = Qcow2Image::open(&p, false, false).expect_err("encrypted");
    assert!(matches!(e, Qcow2Error::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("encrypted"), "{e}");
}

#[test]
fn test_qcow2_discard_rewrite_cycles_reuse_clusters_and_file_stays_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = create(dir.path(), "g.qcow2", "compat=1.1", "16M");
    let mut sizes = Vec::new();
    {
        let img = Qcow2Image::open(&p, false, false).expect("open");
        for round in 0..10u64 {
            // Each round writes 4 MiB somewhere else, then discards it.
            let off = (round % 3) * (4 << 20);
            let mut d = pattern(round, 4 << 20);
            write(&img, off, &mut d).expect("write");
            img.discard(off, 4 << 20).expect("discard");
            sizes.push(std::fs::metadata(&p).expect("stat").len());
        }
        assert!(img.free_clusters() >= 64, "{}", img.free_clusters());
        img.flush().expect("flush");
    }
    // The file grew once, by the 4 MiB the first round needed.
    assert!(sizes.iter().all(|&s| s == sizes[0]), "{sizes:?}");
    check_clean(&p);
    // A new session finds the free clusters and fills them first.
    let img = Qcow2Image::open(&p, false, false).expect("reopen");
    assert!(img.free_clusters() >= 64, "{}", img.free_clusters());
    let mut d = pattern(99, 2 << 20);
    write(&img, 8 << 20, &mut d).expect("write");
    img.flush().expect("flush");
    drop(img);
    assert_eq!(std::fs::metadata(&p).expect("stat").len(), sizes[0]);
    check_clean(&p);
    let raw = as_raw(&p, dir.path());
    assert!(raw[8 << 20..10 << 20] == pattern(99, 2 << 20)[..]);
    assert!(raw[..8 << 20].iter().all(|&b| b == 0));
    assert!(raw[10 << 20..].iter().all(|&b| b == 0));
}
