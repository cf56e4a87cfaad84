//! Resource control of running domains end to end (`xl sched-credit`,
//! `xl mem-set`, `xl mem-max`): the real `xl`, `xen-pvguest` and
//! `backendd` on a private Dom0 (its own cgroup parent, removed on drop),
//! PV guests whose init is a busy loop, both on CPU 0 (`cpus = "0"`):
//!
//! - at weights 256 and 512 their CPU time (each domain's cgroup CPU
//!   accounting over a few seconds) splits 1:2 (within 10 %);
//! - alone on the CPU, a cap of 50 holds a guest near half a CPU (at
//!   most half; near half when the shared machine lets it have more) and
//!   a cap of 10 at a tenth;
//! - `xl sched-credit` lists and reads back what was set; bad input
//!   (weight 0, no domain, Domain-0) is refused with a clear error;
//! - `xl vcpu-pin DOM all CPUS` moves a PV domain's cpuset (`xl
//!   vcpu-list` shows it); a single vCPU of it is refused;
//! - `xl mem-set` down to 32 MiB holds a guest created with 128 MiB: its
//!   100 MiB hog is OOM-killed inside the guest, whose init goes on, and
//!   `xl list` shows 32; up again only after `xl mem-max` raises the
//!   maximum.
//!
//! Needs root and `/usr/bin/python3` (Debian `python3`).

mod common;

use std::time::{Duration, Instant};

use common::{libexec, require_root};
use xen_cgroup::Cgroup;
use xen_testhost::Dom0;

const T: Duration = Duration::from_secs(30);
const BUSY: &str = "#!/bin/sh\necho busy-up\nwhile :; do :; done\n";

fn create(host: &mut Dom0, name: &str) -> (u16, Cgroup) {
    let cfg = host
        .pv_config(name, 48, BUSY, "cpus = \"0\"\n")
        .expect("config");
    host.track_guest(name);
    host.xl_ok(&["create", &cfg]).expect("xl create");
    let domid = host
        .domid(name)
        .expect("xl list")
        .expect("listed with a domid");
    let g = host
        .guest_cgroup(domid)
        .expect("read the cgroups")
        .expect("the domain has a cgroup");
    host.wait_log(name, "busy-up", T).expect("the loop starts");
    (domid, g)
}

/// `xl sched-credit -d NAME`'s (weight, cap).
fn read_back(host: &Dom0, name: &str) -> (u32, u32) {
    let out = host
        .xl_ok(&["sched-credit", "-d", name])
        .expect("xl sched-credit -d");
    let row = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not in\n{out}"));
    let f: Vec<&str> = row.split_whitespace().collect();
    (f[2].parse().expect("weight"), f[3].parse().expect("cap"))
}

/// CPUs each group used over `secs` seconds of wall time.
fn cpus_used(groups: &[&Cgroup], secs: f64) -> Vec<f64> {
    let t0: Vec<Duration> = groups
        .iter()
        .map(|g| g.cpu_time().expect("cpu time"))
        .collect();
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let wall = w0.elapsed().as_secs_f64();
    groups
        .iter()
        .zip(t0)
        .map(|(g, t)| {
            g.cpu_time()
                .expect("cpu time")
                .saturating_sub(t)
                .as_secs_f64()
                / wall
        })
        .collect()
}

#[test]
fn test_sched_credit_weights_split_one_cpu_and_a_cap_holds_a_guest() {
    require_root();
    let mut host = Dom0::start("xl-sched-", libexec()).expect("start the private Dom0");
    let id = std::process::id();
    let (a, b) = (format!("wa{id}"), format!("wb{id}"));
    let (_, ga) = create(&mut host, &a);
    let (_, gb) = create(&mut host, &b);

    // Xen's defaults as created.
    assert_eq!(read_back(&host, &a), (256, 0));
    host.xl_ok(&["sched-credit", "-d", &b, "-w", "512"])
        .expect("set b's weight");
    assert_eq!(read_back(&host, &b), (512, 0));
    assert_eq!(gb.cpu_shares().expect("shares"), 2048);
    let all = host.xl_ok(&["sched-credit"]).expect("xl sched-credit");
    assert!(all.starts_with("Name"), "{all}");
    for (n, w) in [
        ("Domain-0", "256"),
        (a.as_str(), "256"),
        (b.as_str(), "512"),
    ] {
        assert!(
            all.lines().any(|l| l.split_whitespace().next() == Some(n)
                && l.split_whitespace().nth(2) == Some(w)),
            "{n} at weight {w} not in\n{all}"
        );
    }

    std::thread::sleep(Duration::from_millis(500));
    let used = cpus_used(&[&ga, &gb], 4.0);
    let ratio = used[1] / used[0].max(1e-6);
    eprintln!(
        "one CPU, weights 256:512: {:.3} and {:.3} CPU, ratio {ratio:.3}",
        used[0], used[1]
    );
    assert!(used[0] + used[1] > 0.05, "the guests hardly ran: {used:?}");
    assert!(
        (1.8..=2.2).contains(&ratio),
        "split {used:?}, ratio {ratio:.3}"
    );

    // Alone on the CPU, then capped at 50 %.
    host.destroy_guest(&b).expect("xl destroy");
    std::thread::sleep(Duration::from_millis(300));
    let alone = cpus_used(&[&ga], 2.0)[0];
    host.xl_ok(&["sched-credit", "-d", &a, "-c", "50"])
        .expect("set a's cap");
    assert_eq!(read_back(&host, &a), (256, 50));
    std::thread::sleep(Duration::from_millis(300));
    let capped = cpus_used(&[&ga], 3.0)[0];
    eprintln!("alone on one CPU: {alone:.3} CPU; capped at 50: {capped:.3} CPU");
    // The machine is shared: alone, the guest gets what the other work on
    // CPU 0 leaves it. The cap holds it at half a CPU at most, and (when
    // it had more than that alone) near half.
    assert!(capped <= 0.55, "capped at 50: {capped:.3} CPU");
    assert!(
        capped >= (0.7 * alone).min(0.35),
        "capped at 50: {capped:.3} CPU, alone {alone:.3}"
    );
    // A cap well below what it gets alone shows the cap acting under any
    // load.
    host.xl_ok(&["sched-credit", "-d", &a, "-c", "10"])
        .expect("set a's cap");
    std::thread::sleep(Duration::from_millis(300));
    let tenth = cpus_used(&[&ga], 3.0)[0];
    eprintln!("capped at 10: {tenth:.3} CPU");
    assert!(tenth <= 0.12, "capped at 10: {tenth:.3} CPU");
    assert!(
        alone < 0.15 || tenth < 0.6 * alone,
        "cap 10 did not slow it: {tenth:.3} vs {alone:.3} CPU"
    );
    // Cap 0 lifts it again (back to the vCPU's worth).
    host.xl_ok(&["sched-credit", "-d", &a, "-c", "0"])
        .expect("lift a's cap");
    assert_eq!(read_back(&host, &a), (256, 0));
    assert_eq!(
        ga.cpu_quota().expect("quota").map(|q| q.as_millicpus()),
        Some(1000),
        "the vcpus = 1 quota stays"
    );

    // xl vcpu-pin of a PV domain: `all` moves its cpuset; xl vcpu-list
    // shows it.
    host.xl_ok(&["vcpu-pin", &a, "all", "0-1"])
        .expect("xl vcpu-pin all");
    assert_eq!(ga.cpuset().expect("cpuset").to_string(), "0-1");
    let vl = host.xl_ok(&["vcpu-list", &a]).expect("xl vcpu-list");
    assert!(
        vl.lines().nth(1).is_some_and(|l| l.ends_with(" 0-1 / all")),
        "{vl}"
    );
    host.xl_ok(&["vcpu-pin", &a, "0", "1"])
        .expect("vCPU 0 of a one-vCPU domain");
    assert_eq!(ga.cpuset().expect("cpuset").to_string(), "1");

    // Bad input.
    for (args, says) in [
        (
            vec!["vcpu-pin", a.as_str(), "1", "0"],
            "not threads of their own",
        ),
        (vec!["vcpu-pin", a.as_str(), "all", "4095"], "online CPUs"),
        (vec!["vcpu-pin", a.as_str(), "all", "x"], "CPUs \"x\""),
        (
            vec!["sched-credit", "-d", a.as_str(), "-w", "0"],
            "out of range",
        ),
        (vec!["sched-credit", "-w", "300"], "needs a domain"),
        (
            vec!["sched-credit", "-d", "Domain-0", "-w", "300"],
            "Domain-0",
        ),
        (
            vec!["sched-credit", "-d", "nosuch", "-w", "300"],
            "does not exist",
        ),
    ] {
        let o = host.xl(&args).expect("run xl");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// `name`'s `xl list` Mem column.
fn listed_mem(host: &Dom0, name: &str) -> String {
    let out = host.xl_ok(&["list", name]).expect("xl list");
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("{name} not in\n{out}"))
        .to_owned()
}

#[test]
fn test_mem_set_holds_a_pv_memory_hog_to_the_new_target_and_mem_max_bounds_it() {
    require_root();
    assert!(
        std::path::Path::new("/usr/bin/python3").exists(),
        "this test needs /usr/bin/python3 (Debian package python3)"
    );
    let mut host = Dom0::start("xl-memset-", libexec()).expect("start the private Dom0");
    let name = format!("ms{}", std::process::id());
    // The hog starts 5 s after boot: after xl mem-set has lowered the
    // target. 100 MiB fits the created 128 MiB, not the new 32 MiB.
    let script = "#!/bin/sh\necho booted\nsleep 5\necho hog-start\n\
         /usr/bin/python3 -c 'b = b\"x\" * (100 << 20); print(\"hog-survived\")'\n\
         echo \"hog-exit $?\"\nwhile :; do echo init-alive; sleep 0.2; done\n";
    let cfg = host.pv_config(&name, 128, script, "").expect("config");
    host.track_guest(&name);
    host.xl_ok(&["create", &cfg]).expect("xl create");
    let domid = host.domid(&name).expect("xl list").expect("listed");
    let g = host
        .guest_cgroup(domid)
        .expect("read the cgroups")
        .expect("the domain has a cgroup");
    let allowance = xen_xl::resources::PV_RUNTIME_ALLOWANCE_MIB;
    assert_eq!(listed_mem(&host, &name), "128");

    host.xl_ok(&["mem-set", &name, "32m"]).expect("xl mem-set");
    assert!(
        !host.guest_log(&name).contains("hog-start"),
        "the hog started before xl mem-set returned: the machine is too slow for this test"
    );
    assert_eq!(
        g.memory_limit().expect("limit"),
        Some((32 + allowance) << 20)
    );
    assert_eq!(listed_mem(&host, &name), "32");
    let log = host.wait_log(&name, "hog-exit", T).expect("the hog ends");
    assert!(log.contains("hog-exit 137"), "not SIGKILLed:\n{log}");
    assert!(!log.contains("hog-survived"), "{log}");
    assert!(
        g.oom_kills().expect("oom_kill") >= 1,
        "no OOM kill in the group"
    );
    // The guest's init and kernel go on.
    let before = host.guest_log(&name).matches("init-alive").count();
    std::thread::sleep(Duration::from_secs(1));
    assert!(host.guest_log(&name).matches("init-alive").count() > before);

    // Up again: not above static-max (128 MiB) until mem-max raises it.
    let o = host.xl(&["mem-set", &name, "256m"]).expect("run xl");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("above the domain's maximum"),
        "{err}"
    );
    host.xl_ok(&["mem-max", &name, "256m"]).expect("xl mem-max");
    host.xl_ok(&["mem-set", &name, "262144k"])
        .expect("xl mem-set up");
    assert_eq!(listed_mem(&host, &name), "256");
    assert_eq!(
        g.memory_limit().expect("limit"),
        Some((256 + allowance) << 20)
    );
    let o = host.xl(&["mem-max", &name, "64m"]).expect("run xl");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("below the domain's target"),
        "{err}"
    );
    for (args, says) in [
        (vec!["mem-set", name.as_str(), "12x"], "invalid memory size"),
        (vec!["mem-set", name.as_str(), "1m"], "below the smallest"),
        (vec!["mem-set", "Domain-0", "1g"], "Domain-0"),
        (vec!["mem-set", "nosuch", "1g"], "does not exist"),
    ] {
        let o = host.xl(&args).expect("run xl");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
