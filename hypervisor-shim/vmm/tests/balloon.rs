//! `xl mem-set` / `xl mem-max` on a running PVHVM guest through Xen's
//! balloon protocol: the kernel's balloon gives pages back with
//! `XENMEM_decrease_reservation` (the VMM punches them out of the domain's
//! memory file) and takes them again with `XENMEM_populate_physmap`; the
//! memory file's allocated blocks, the host's shared memory and the VMM's
//! RSS follow within a second (the host's MemFree is printed),
//! the guest's disk self-test passes after each change, `xl list` shows
//! the VMM's count. A ballooned guest saved and restored gives its pages
//! back again in the new domain and reconnects its disk. Negative: a target
//! above `maxmem`, a populate above the VMM's maximum, and the hypercalls
//! of a hostile kernel. Needs root and `/dev/kvm`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{ok, Host};

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

/// The domain's memory file, as its VMM holds it open.
fn memory_file(vmm: i32, domid: u16) -> PathBuf {
    let want = format!("dom{domid}-");
    for e in std::fs::read_dir(format!("/proc/{vmm}/fd")).expect("the VMM's fds") {
        let p = e.expect("fd entry").path();
        if let Ok(target) = std::fs::read_link(&p) {
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with(&want) && name.ends_with(".mem") {
                return p;
            }
        }
    }
    panic!("the VMM {vmm} holds no memory file of domain {domid}");
}

/// Bytes the file has allocated (`st_blocks`).
fn allocated(file: &PathBuf) -> u64 {
    std::fs::metadata(file)
        .expect("stat the memory file")
        .blocks()
        * 512
}

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("a meminfo field")
        * 1024
}

/// The VMM's resident shared memory (its mapping of guest RAM), bytes.
fn rss_shmem(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("RssShmem:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("RssShmem")
        * 1024
}

/// Waits until `cond(allocated bytes)` holds; returns how long it took.
fn follow(file: &PathBuf, what: &str, cond: impl Fn(u64) -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        let a = allocated(file);
        if cond(a) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: the memory file still holds {} MiB after 10 s",
            a / MIB
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the guest's console has `needle` `n` times.
fn wait_count(h: &Host, name: &str, needle: &str, n: usize) {
    let t0 = Instant::now();
    loop {
        let log = h.log(name);
        if log.matches(needle).count() >= n {
            return;
        }
        assert!(t0.elapsed() < T, "{needle:?} not {n} times; log:\n{log}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn list_mem(h: &Host, name: &str) -> u64 {
    h.list_row(name)
        .and_then(|r| r.split_whitespace().nth(2)?.parse().ok())
        .expect("a Mem column")
}

fn config(h: &Host, name: &str, extra: &str, mib: u64, disks: &[String]) -> PathBuf {
    let p = h.config(name, extra, disks);
    let text = std::fs::read_to_string(&p).expect("config");
    std::fs::write(
        &p,
        text.replace("memory = 64\n", &format!("memory = {mib}\n")),
    )
    .expect("write config");
    p
}

#[test]
fn test_mem_set_down_and_up_moves_the_memory_file_and_the_guest_keeps_its_disk() {
    let mut h = Host::start("pvhvm-bal-");
    let img = h.image("bal.img", 64);
    let cfg = config(
        &h,
        "pvh-bal",
        "balloon memtouch",
        256,
        &[format!(
            "format=raw, vdev=xvda, access=rw, target={}",
            img.display()
        )],
    );
    ok("xl create", &h.create("pvh-bal", &cfg));
    h.wait_log("pvh-bal", "disk self-test: PASS at 262144 KiB", T);
    let domid = common::net::domid(&h, "pvh-bal");
    let vmm = xen_shim_dom0::Control::connect(&h.shim_socket())
        .and_then(|c| c.domain_info(domid))
        .expect("domain info")
        .pid
        .expect("the VMM attached");
    let file = memory_file(vmm, domid);
    assert_eq!(list_mem(&h, "pvh-bal"), 256);

    // Down: 256 -> 96 MiB.
    let full = allocated(&file);
    let (free0, shm0, rss0) = (meminfo("MemFree"), meminfo("Shmem"), rss_shmem(vmm));
    assert!(full > 170 * MIB, "memtouch left only {} MiB", full / MIB);
    ok("xl mem-set 96", &h.xl(&["mem-set", "pvh-bal", "96"]));
    let took = follow(&file, "mem-set 96", |a| a + 150 * MIB <= full);
    std::thread::sleep(Duration::from_millis(200));
    let (low, free1, shm1, rss1) = (
        allocated(&file),
        meminfo("MemFree"),
        meminfo("Shmem"),
        rss_shmem(vmm),
    );
    eprintln!(
        "mem-set 256 -> 96: memory file {} -> {} MiB in {took:?}; VMM RssShmem {} -> {} MiB; host Shmem -{} MiB, MemFree {:+} MiB",
        full / MIB,
        low / MIB,
        rss0 / MIB,
        rss1 / MIB,
        shm0.saturating_sub(shm1) / MIB,
        (free1 as i64 - free0 as i64) / MIB as i64
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(low <= 100 * MIB, "the file still holds {} MiB", low / MIB);
    assert!(
        rss1 + 150 * MIB <= rss0,
        "the VMM's mapping kept the pages: {} -> {} MiB",
        rss0 / MIB,
        rss1 / MIB
    );
    // The host's shared memory and MemFree move with everything else the
    // machine does (other tests' guests start and stop meanwhile: in CI
    // Shmem fell 110 of the 158 MiB): printed, not asserted; the memory
    // file's blocks and the VMM's mapping above are this domain's own.
    h.wait_log("pvh-bal", "disk self-test: PASS at 98304 KiB", T);
    assert_eq!(list_mem(&h, "pvh-bal"), 96);

    // Up again: the pages come back (allocated in the file by populate).
    let (free2, shm2) = (meminfo("MemFree"), meminfo("Shmem"));
    ok("xl mem-set 256", &h.xl(&["mem-set", "pvh-bal", "256"]));
    let took = follow(&file, "mem-set 256", |a| a >= low + 150 * MIB);
    let (high, free3, shm3) = (allocated(&file), meminfo("MemFree"), meminfo("Shmem"));
    eprintln!(
        "mem-set 96 -> 256: memory file {} -> {} MiB in {took:?}; host Shmem {:+} MiB, MemFree {:+} MiB",
        low / MIB,
        high / MIB,
        (shm3 as i64 - shm2 as i64) / MIB as i64,
        (free3 as i64 - free2 as i64) / MIB as i64
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // The file's own growth is what `follow` waited for; the host's Shmem
    // is printed only, as on the way down (CI saw it fall by 11 MiB while
    // this file grew by 155: other tests' guests ended meanwhile).
    wait_count(&h, "pvh-bal", "disk self-test: PASS at 262144 KiB", 2);
    assert_eq!(list_mem(&h, "pvh-bal"), 256);

    // Negative: above maxmem (= memory here).
    let out = h.xl(&["mem-set", "pvh-bal", "300"]);
    assert!(!out.status.success(), "mem-set above maxmem was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("above the domain's maximum"), "{err}");

    // The VMM's maximum holds even when the target says otherwise: down
    // to 96, maximum 128, then a target of 256 written past xl.
    ok("xl mem-set 96", &h.xl(&["mem-set", "pvh-bal", "96"]));
    wait_count(&h, "pvh-bal", "disk self-test: PASS at 98304 KiB", 2);
    ok("xl mem-max 128", &h.xl(&["mem-max", "pvh-bal", "128"]));
    h.xs_write(
        &format!("/local/domain/{domid}/memory/target"),
        &(256 * 1024).to_string(),
    );
    h.wait_log("pvh-bal", "balloon: stopped at 131072 KiB", T);
    assert_eq!(list_mem(&h, "pvh-bal"), 128);
    assert!(
        allocated(&file) <= 132 * MIB,
        "{} MiB",
        allocated(&file) / MIB
    );
    // Still running its workload.
    h.wait_log("pvh-bal", "disk self-test: PASS at 131072 KiB", T);
    let row = h.list_row("pvh-bal").expect("listed");
    assert!(!row.contains('c'), "crashed: {row}");
}

#[test]
fn test_hostile_balloon_hypercalls_are_refused_and_the_vmm_runs_on() {
    let mut h = Host::start("pvhvm-balh-");
    let img = h.image("balh.img", 16);
    let cfg = config(
        &h,
        "pvh-balh",
        "balloonhostile disk",
        64,
        &[format!(
            "format=raw, vdev=xvda, access=rw, target={}",
            img.display()
        )],
    );
    ok("xl create", &h.create("pvh-balh", &cfg));
    let log = h.wait_log("pvh-balh", "balloon-hostile: PASS", T);
    for (what, rc) in [
        ("decrease past RAM", "0"),
        ("decrease boot area", "0"),
        ("decrease order 10", "0"),
        ("decrease with a frame list outside memory", "-14"),
        ("populate a present page", "0"),
        ("decrease one free page", "1"),
        ("populate it twice", "1"),
        ("decrease a grant-mapped page", "0"),
    ] {
        assert!(
            log.contains(&format!("balloon-hostile: {what} -> {rc}\n")),
            "{what}: want {rc}; log:\n{log}"
        );
    }
    // The VMM says why (rate-limited) in its log.
    h.wait_vmm_log("pvh-balh", "is mapped by a backend through a grant", T);
    let row = h.wait_state("pvh-balh", 's', T);
    assert!(!row.contains('c'), "crashed: {row}");
}

#[test]
fn test_a_ballooned_guest_saved_and_restored_gives_its_pages_back_again_and_keeps_its_disk() {
    // Arrange: a 256 MiB guest ballooned down to 96 MiB.
    let mut h = Host::start("pvhvm-balsr-");
    let img = h.image("balsr.img", 16);
    let cfg = config(
        &h,
        "pvh-balsr",
        "balloon memtouch",
        256,
        &[format!(
            "format=raw, vdev=xvda, access=rw, target={}",
            img.display()
        )],
    );
    ok("xl create", &h.create("pvh-balsr", &cfg));
    h.wait_log("pvh-balsr", "disk self-test: PASS at 262144 KiB", T);
    ok("xl mem-set 96", &h.xl(&["mem-set", "pvh-balsr", "96"]));
    h.wait_log("pvh-balsr", "disk self-test: PASS at 98304 KiB", T);
    let file = h.rundir().join("balsr.save");

    // Act: save, restore.
    ok(
        "xl save",
        &h.xl(&["save", "pvh-balsr", file.to_str().expect("utf-8 path")]),
    );
    let saved = std::fs::metadata(&file).expect("the save file").len();
    ok(
        "xl restore",
        &h.xl(&["restore", file.to_str().expect("utf-8 path")]),
    );

    // Assert: the holes were not saved; the new VMM took back every page
    // given back; the vbd reconnected and the self-test passes in the new
    // domain; then (the restored config's target is its `memory`, as
    // xl's header carries the config text) the balloon grows back to it.
    eprintln!(
        "save of the guest ballooned to 96 of 256 MiB: {} MiB",
        saved / MIB
    );
    assert!(
        saved < 96 * MIB,
        "the pages given back were saved: {} MiB",
        saved / MIB
    );
    // (The new VMM's log has the new domain's lines only.)
    let given = "balloon: 163840 KiB given back again in the new domain";
    h.wait_vmm_log("pvh-balsr", given, T);
    h.wait_vmm_log("pvh-balsr", "vbd 51712 reconnected in domain", T);
    let log = h.wait_vmm_log("pvh-balsr", "disk self-test: PASS at 262144 KiB", T);
    assert!(!log.contains("refused") && !log.contains("FAIL"), "{log}");
    assert_eq!(list_mem(&h, "pvh-balsr"), 256);
}
