//! The qcow2 engine against images made and checked by QEMU's own tools:
//! `qemu-img create` (v3 and v2, several cluster sizes), `qemu-io` (data
//! QEMU wrote, read by us), `qemu-img check` (clean after our writes) and
//! `qemu-img convert -O raw` (our writes, read by QEMU), overlays on raw
//! and qcow2 backing chains (`qemu-img create -b -F`). Negative: corrupt
//! tables, backing loops, chains too deep, missing backing files,
//! compressed clusters. Needs qemu-utils
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
fn test_qcow2_bad_magic_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = dir.path().join("raw.img");
    std::fs::write(&raw, vec![0u8; 65536]).expect("raw");
    let e = Qcow2Image::open(&raw, false, false).expect_err("not qcow2");
    assert!(matches!(e, Qcow2Error::NotQcow2 { .. }), "{e:?}");
}

/// `qemu-img create -f qcow2 -b backing -F fmt` in `dir` (the backing name
/// as given, relative to the overlay's directory), `-u` when the backing
/// file need not exist.
fn overlay(dir: &Path, name: &str, opts: &str, backing: &str, fmt: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    let path = p.to_str().expect("utf-8");
    let mut args = vec![
        "create", "-q", "-f", "qcow2", "-o", opts, "-F", fmt, "-b", backing, path,
    ];
    if !size.is_empty() {
        args.insert(1, "-u");
        args.push(size);
    }
    ok("qemu-img", &args);
    p
}

/// Writes at offsets that cover clusters partly (copy-on-write of the
/// backing data), wholly, past the end of the backing image and across
/// clusters, against a model of backing plus writes; then QEMU's check of
/// the overlay and QEMU's view of the whole chain.
fn overlay_roundtrip(img: &Qcow2Image, over: &Path, dir: &Path, mut model: Vec<u8>, cl: u64) {
    let size = DiskImage::size(img);
    assert_eq!(model.len() as u64, size);
    let got = read(img, 0, size as usize).expect("read all");
    assert!(
        got == model,
        "the overlay does not read as its backing chain"
    );
    let writes: &[(u64, usize)] = &[
        (512, 512),                              // partial: the rest of the cluster copied
        (cl, cl as usize),                       // a whole cluster
        (3 * cl - 1024, 2048),                   // across two clusters, both partial
        (5 * cl + 4096, cl as usize),            // two partial clusters
        (size - 2 * cl - 512, 1024),             // past the backing image's end
        (size / 2 / 512 * 512, 3 * cl as usize), // whole and partial
    ];
    for (i, &(off, len)) in writes.iter().enumerate() {
        let mut d = pattern(100 + i as u64, len);
        model[off as usize..off as usize + len].copy_from_slice(&d);
        write(img, off, &mut d).expect("write");
    }
    let got = read(img, 0, size as usize).expect("read all after writes");
    assert!(got == model, "the overlay reads other data after writes");
    img.flush().expect("flush");
    check_clean(over);
    assert!(
        as_raw(over, dir) == model,
        "QEMU reads other data through the chain"
    );
}

#[test]
fn test_qcow2_overlay_on_raw_base_reads_base_and_copies_on_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cl = 65536u64;
    // The base is shorter than the overlay: past its end reads as zeros.
    let base_len = (8 << 20) + 3 * 512;
    let base = pattern(7, base_len);
    std::fs::write(dir.path().join("base.raw"), &base).expect("base");
    let over = overlay(
        dir.path(),
        "over.qcow2",
        "compat=1.1",
        "base.raw",
        "raw",
        "",
    );
    ok(
        "qemu-img",
        &["resize", "-q", over.to_str().expect("utf-8"), "16M"],
    );
    let mut model = vec![0u8; 16 << 20];
    model[..base_len].copy_from_slice(&base);
    {
        let img = Qcow2Image::open(&over, false, true).expect("open the overlay");
        overlay_roundtrip(&img, &over, dir.path(), model.clone(), cl);
    }
    // The base is untouched.
    assert!(std::fs::read(dir.path().join("base.raw")).expect("base") == base);
    // The overlay found its base by the relative name from another cwd.
    let info = ok("qemu-img", &["info", over.to_str().expect("utf-8")]);
    assert!(info.contains("backing file: base.raw"), "{info}");
}

#[test]
fn test_qcow2_overlay_chain_on_qcow2_and_raw_v2_small_clusters() {
    // raw <- mid.qcow2 (data written by QEMU) <- top.qcow2 (v2, 4 KiB clusters).
    let dir = tempfile::tempdir().expect("temp dir");
    let size = 4usize << 20;
    let base = pattern(3, size);
    std::fs::write(dir.path().join("base.raw"), &base).expect("base");
    let mid = overlay(
        dir.path(),
        "mid.qcow2",
        "compat=1.1,cluster_size=65536",
        "base.raw",
        "raw",
        "",
    );
    let m = mid.to_str().expect("utf-8");
    ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xab 65536 4096", m],
    );
    ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -z 1048576 131072", m],
    );
    let mut model = base.clone();
    model[65536..65536 + 4096].fill(0xab);
    model[1 << 20..(1 << 20) + 131_072].fill(0);
    let top = overlay(
        dir.path(),
        "top.qcow2",
        "compat=0.10,cluster_size=4096",
        "mid.qcow2",
        "qcow2",
        "",
    );
    {
        let img = Qcow2Image::open(&top, false, true).expect("open the chain");
        assert_eq!(img.version(), 2);
        overlay_roundtrip(&img, &top, dir.path(), model, 4096);
    }
    check_clean(&mid);
    // The middle image still reads as QEMU wrote it (nothing written there).
    let mut mid_model = base;
    mid_model[65536..65536 + 4096].fill(0xab);
    mid_model[1 << 20..(1 << 20) + 131_072].fill(0);
    assert!(
        as_raw(&mid, dir.path()) == mid_model,
        "the backing image changed"
    );
}

#[test]
fn test_qcow2_overlay_discard_reads_zeros_not_the_backing_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("base.raw"), vec![0x5au8; 1 << 20]).expect("base");
    let over = overlay(
        dir.path(),
        "over.qcow2",
        "compat=1.1",
        "base.raw",
        "raw",
        "",
    );
    let img = Qcow2Image::open(&over, false, false).expect("open");
    let mut d = vec![1u8; 131_072];
    write(&img, 0, &mut d).expect("write");
    img.discard(0, 131_072).expect("discard");
    assert!(read(&img, 0, 131_072)
        .expect("read")
        .iter()
        .all(|&b| b == 0));
    assert!(read(&img, 131_072, 4096)
        .expect("read")
        .iter()
        .all(|&b| b == 0x5a));
    img.flush().expect("flush");
    drop(img);
    check_clean(&over);
    let raw = as_raw(&over, dir.path());
    assert!(raw[..131_072].iter().all(|&b| b == 0) && raw[131_072..].iter().all(|&b| b == 0x5a));
}

#[test]
fn test_qcow2_overlay_missing_backing_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let over = overlay(
        dir.path(),
        "over.qcow2",
        "compat=1.1",
        "gone.raw",
        "raw",
        "1M",
    );
    let e = Qcow2Image::open(&over, false, false).expect_err("refused");
    assert!(matches!(e, Qcow2Error::Backing { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("backing file") && msg.contains("gone.raw"),
        "{msg}"
    );
}

#[test]
fn test_qcow2_backing_loop_and_too_deep_chain_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    // a -> b -> a.
    overlay(
        dir.path(),
        "b.qcow2",
        "compat=1.1",
        "a.qcow2",
        "qcow2",
        "1M",
    );
    let a = overlay(
        dir.path(),
        "a.qcow2",
        "compat=1.1",
        "b.qcow2",
        "qcow2",
        "1M",
    );
    let e = Qcow2Image::open(&a, false, false).expect_err("loop");
    assert!(matches!(e, Qcow2Error::Chain { .. }), "{e:?}");
    assert!(e.to_string().contains("loops"), "{e}");
    // Itself as its backing file.
    let s = overlay(
        dir.path(),
        "self.qcow2",
        "compat=1.1",
        "self.qcow2",
        "qcow2",
        "1M",
    );
    let e = Qcow2Image::open(&s, true, false).expect_err("self loop");
    assert!(matches!(e, Qcow2Error::Chain { .. }), "{e:?}");
    // A chain of MAX_CHAIN images opens; one more is refused.
    std::fs::write(dir.path().join("c0.raw"), vec![9u8; 1 << 20]).expect("base");
    let mut prev = ("c0.raw".to_string(), "raw");
    let mut last = PathBuf::new();
    for i in 1..=xen_blkback::io::qcow2::MAX_CHAIN {
        let name = format!("c{i}.qcow2");
        last = overlay(dir.path(), &name, "compat=1.1", &prev.0, prev.1, "1M");
        prev = (name, "qcow2");
    }
    // c1..c{MAX_CHAIN-1} plus the raw base: MAX_CHAIN images.
    let ok_top = dir
        .path()
        .join(format!("c{}.qcow2", xen_blkback::io::qcow2::MAX_CHAIN - 1));
    let img = Qcow2Image::open(&ok_top, true, false).expect("a chain of MAX_CHAIN");
    assert!(read(&img, 0, 4096).expect("read").iter().all(|&b| b == 9));
    let e = Qcow2Image::open(&last, true, false).expect_err("too deep");
    assert!(e.to_string().contains("deeper than"), "{e}");
}

#[test]
fn test_qcow2_overlay_without_backing_format_is_refused_not_probed() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("base.raw"), vec![0u8; 1 << 20]).expect("base");
    let over = overlay(
        dir.path(),
        "over.qcow2",
        "compat=1.1",
        "base.raw",
        "raw",
        "",
    );
    // Turn the backing_fmt extension into an unknown (ignored) one.
    let mut bytes = std::fs::read(&over).expect("read");
    let magic = 0xe279_2acau32.to_be_bytes();
    let at = bytes[..65536]
        .windows(4)
        .position(|w| w == magic)
        .expect("backing_fmt extension");
    bytes[at..at + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    std::fs::write(&over, bytes).expect("write");
    let e = Qcow2Image::open(&over, false, false).expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("no recorded format") && msg.contains("base.raw"),
        "{msg}"
    );
    // Bad formats are refused too.
    let v = overlay(
        dir.path(),
        "vmdk.qcow2",
        "compat=1.1",
        "x.vmdk",
        "vmdk",
        "1M",
    );
    let e = Qcow2Image::open(&v, false, false).expect_err("vmdk");
    assert!(e.to_string().contains("only raw and qcow2"), "{e}");
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
