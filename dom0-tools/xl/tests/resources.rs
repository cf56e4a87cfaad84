//! Domains held to their resources by the cgroup `xl create` puts them in,
//! end to end: the real `xl`, `xen-pvguest` and `backendd` on a private
//! Dom0 (its own cgroup parent, removed on drop), PV guests whose init is a
//! shell script run by the runtime (`extra = "--init PATH"`):
//!
//! - a memory hog in a `memory = 64` guest is OOM-killed inside that guest
//!   (its init goes on), while a second guest keeps running;
//! - two busy loops in a `vcpus = 1` guest get about one CPU (the group's
//!   CPU accounting), and `xl list` shows its Time(s) growing, an idle
//!   guest's not, and Mem as configured;
//! - a fork loop is stopped by the tasks limit and `xl destroy` kills
//!   every process it left.
//!
//! Needs root and `/usr/bin/python3` (Debian `python3`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{libexec, require_root};
use xen_cgroup::Cgroup;
use xen_testhost::Dom0;

const T: Duration = Duration::from_secs(30);

fn dom0(prefix: &str) -> Dom0 {
    require_root();
    Dom0::start(prefix, libexec()).expect("start the private Dom0")
}

/// Creates PV guest `name` running `script`; its domid and cgroup.
fn create(host: &mut Dom0, name: &str, memory: u32, script: &str, extra: &str) -> (u16, Cgroup) {
    let cfg = host.pv_config(name, memory, script, extra).expect("config");
    host.track_guest(name);
    host.xl_ok(&["create", &cfg]).expect("xl create");
    let domid = row(host, name)
        .and_then(|r| r.split_whitespace().nth(1).and_then(|d| d.parse().ok()))
        .expect("listed with a domid");
    let g = host
        .guest_cgroup(domid)
        .expect("read the cgroups")
        .expect("the domain has a cgroup");
    // The runtime (the guest's kernel) is inside, with all it forked.
    let runtime = xen_shim_dom0::Control::connect(&host.shim_socket())
        .and_then(|c| c.domain_info(domid))
        .expect("the shim knows the domain")
        .pid
        .expect("the runtime attached");
    assert!(
        g.procs().expect("procs").contains(&runtime),
        "runtime {runtime} is not in {}",
        g.name()
    );
    (domid, g)
}

/// `name`'s `xl list` row.
fn row(host: &Dom0, name: &str) -> Option<String> {
    host.xl_ok(&["list"])
        .expect("xl list")
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(str::to_owned)
}

/// Column `i` of `name`'s row (0 Name, 1 ID, 2 Mem, 3 VCPUs, 4 State,
/// 5 Time(s)).
fn col(host: &Dom0, name: &str, i: usize) -> String {
    let r = row(host, name).unwrap_or_else(|| panic!("{name} not listed"));
    r.split_whitespace()
        .nth(i)
        .unwrap_or_else(|| panic!("no column {i} in {r:?}"))
        .to_owned()
}

fn python3() -> &'static str {
    assert!(
        Path::new("/usr/bin/python3").exists(),
        "this test needs /usr/bin/python3 (Debian package python3)"
    );
    "/usr/bin/python3"
}

#[test]
fn test_pv_memory_hog_is_oom_killed_inside_its_domain_only() {
    let mut host = dom0("xl-res-mem-");
    let id = std::process::id();
    let (hog, neighbour) = (format!("memhog{id}"), format!("nb{id}"));
    let (_, nb_group) = create(
        &mut host,
        &neighbour,
        64,
        "#!/bin/sh\nwhile :; do echo beat; sleep 0.2; done\n",
        "",
    );
    let script = format!(
        "#!/bin/sh\necho hog-start\n{} -c 'b = b\"x\" * (200 << 20); print(\"hog-survived\")'\n\
         echo \"hog-exit $?\"\nwhile :; do echo init-alive; sleep 0.2; done\n",
        python3()
    );
    let (_, g) = create(&mut host, &hog, 64, &script, "");
    assert_eq!(
        g.memory_limit().expect("limit"),
        Some((64 + xen_xl::resources::PV_RUNTIME_ALLOWANCE_MIB) << 20)
    );
    let log = host.wait_log(&hog, "hog-exit", T).expect("the hog ends");
    assert!(log.contains("hog-exit 137"), "not SIGKILLed:\n{log}");
    assert!(!log.contains("hog-survived"), "{log}");
    assert!(
        g.oom_kills().expect("oom_kill") >= 1,
        "no OOM kill in the group"
    );
    assert_eq!(nb_group.oom_kills().expect("oom_kill"), 0);
    // The guest's init (and kernel) go on; so does the other guest.
    let before = host.guest_log(&hog).matches("init-alive").count();
    let beats = host.guest_log(&neighbour).matches("beat").count();
    std::thread::sleep(Duration::from_secs(1));
    assert!(host.guest_log(&hog).matches("init-alive").count() > before);
    assert!(host.guest_log(&neighbour).matches("beat").count() > beats);
    for n in [&hog, &neighbour] {
        let state = col(&host, n, 4);
        assert!(!state.contains('s') && !state.contains('c'), "{n}: {state}");
    }
}

fn time_s(host: &Dom0, name: &str) -> f64 {
    col(host, name, 5).parse().expect("Time(s) is a number")
}

#[test]
fn test_pv_cpu_hog_with_one_vcpu_is_held_to_one_cpu_and_xl_list_shows_it() {
    let mut host = dom0("xl-res-cpu-");
    let id = std::process::id();
    let (busy, idle) = (format!("busy{id}"), format!("idle{id}"));
    let (_, g) = create(
        &mut host,
        &busy,
        48,
        "#!/bin/sh\nsh -c 'while :; do :; done' &\nsh -c 'while :; do :; done' &\necho hogs-up\nwait\n",
        "",
    );
    let (_, ig) = create(
        &mut host,
        &idle,
        40,
        "#!/bin/sh\necho idle-up\nexec sleep 1000\n",
        "",
    );
    host.wait_log(&busy, "hogs-up", T).expect("hogs started");
    host.wait_log(&idle, "idle-up", T).expect("idle started");
    std::thread::sleep(Duration::from_millis(500));

    let (b0, i0) = (time_s(&host, &busy), time_s(&host, &idle));
    let c0 = g.cpu_time().expect("cpu time");
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = g.cpu_time().expect("cpu time").saturating_sub(c0);
    let wall = w0.elapsed().as_secs_f64();
    let (b1, i1) = (time_s(&host, &busy), time_s(&host, &idle));
    let per_s = used.as_secs_f64() / wall;
    eprintln!(
        "vcpus=1 guest, two busy loops: {per_s:.2} CPU by its cgroup; xl list Time(s) {b0} -> {b1} (idle guest {i0} -> {i1})"
    );
    eprintln!(
        "memory charged to the groups: busy {} KiB, idle {} KiB",
        g.memory_usage().expect("usage") >> 10,
        ig.memory_usage().expect("usage") >> 10
    );
    // Unlimited, two loops could take both CPUs (2.0). The lower bound only
    // says the hog ran and was counted: on a host loaded by other work (CI
    // runs tests in parallel) it gets well under one CPU.
    assert!((0.05..=1.2).contains(&per_s), "{per_s:.2} CPU");
    assert!(b1 - b0 >= 0.1, "busy guest's Time(s) {b0} -> {b1}");
    assert!(i1 - i0 <= 0.3, "idle guest's Time(s) {i0} -> {i1}");
    assert_eq!(col(&host, &busy, 2), "48");
    assert_eq!(col(&host, &idle, 2), "40");
    // A busy guest is runnable; an idle one blocked (its runtime may wake
    // now and then, as a Xen guest's vCPU does, and wait for a CPU on a
    // loaded host: one sample of twenty, 50 ms apart).
    let states = |n: &str| -> Vec<String> {
        (0..20)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(50));
                col(&host, n, 4)
            })
            .collect()
    };
    let (bs, is) = (states(&busy), states(&idle));
    assert!(bs.iter().all(|s| s == "r-----"), "busy guest: {bs:?}");
    assert!(is.iter().any(|s| s == "-b----"), "idle guest: {is:?}");
    assert!(
        is.iter().all(|s| s == "-b----" || s == "r-----"),
        "idle guest: {is:?}"
    );
    // Dom0: the host's memory less what the guests were given.
    let total_mib: u64 = std::fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("MemTotal")
        / 1024;
    assert_eq!(col(&host, "Domain-0", 2), (total_mib - 48 - 40).to_string());
    assert!(time_s(&host, "Domain-0") > 0.0);
}

#[test]
fn test_pv_fork_loop_is_stopped_by_the_tasks_limit_and_destroy_kills_it_all() {
    let mut host = dom0("xl-res-pids-");
    let name = format!("forks{}", std::process::id());
    let (_, g) = create(
        &mut host,
        &name,
        512,
        "#!/bin/sh\necho bomb-start\n( i=0; while [ $i -lt 3000 ]; do sleep 1000 & i=$((i+1)); done ) 2>/dev/null\n\
         echo bomb-done\nexec sleep 1000\n",
        "",
    );
    host.wait_log(&name, "bomb-done", T)
        .expect("the fork loop ends");
    let tasks = g.threads().expect("tasks").len() as u64;
    let hits = g.pids_limit_hits().expect("pids.events");
    eprintln!("fork loop: {tasks} tasks in the group, {hits} forks refused");
    assert!(hits > 0, "no fork was refused ({tasks} tasks)");
    assert!(
        tasks <= xen_xl::resources::DEFAULT_PIDS_MAX,
        "{tasks} tasks"
    );
    assert_eq!(g.oom_kills().expect("oom"), 0, "memory, not tasks, ran out");
    let state = col(&host, &name, 4);
    assert!(!state.contains('s') && !state.contains('c'), "{state}");
    let procs = g.procs().expect("procs");
    host.destroy_guest(&name).expect("xl destroy");
    assert!(!g.exists(), "the group outlived xl destroy");
    let left: Vec<i32> = procs
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()))
                .is_some_and(|r| !r.starts_with('Z'))
        })
        .collect();
    assert!(left.is_empty(), "still running after destroy: {left:?}");
}
