//! A PVHVM domain's VMM runs in the domain's cgroup (`xl create`): memory
//! limited to `maxmem` plus the VMM's allowance, a CPU quota of `vcpus`
//! CPUs, its guest RAM (the domain's shared-memory file) charged to that
//! group as the VMM touches it; `xl vcpu-pin` pins one vCPU thread and
//! `xl vcpu-list` shows it; `xl destroy` removes the group. Needs root
//! and `/dev/kvm`.

mod common;

use std::time::Duration;

use common::{ok, Host};

const T: Duration = Duration::from_secs(30);

#[test]
fn test_pvhvm_vmm_runs_in_its_domains_cgroup_with_its_limits() {
    let mut h = Host::start("pvhvm-cg-");
    let img = h.image("cg.img", 64);
    let cfg = h.config_vcpus(
        "pvh-cg",
        "blkload pattern=randread bs=4096 qd=8 secs=600",
        &[format!(
            "format=raw, vdev=xvda, access=rw, target={}",
            img.display()
        )],
        2,
    );
    ok("xl create", &h.create("pvh-cg", &cfg));
    h.wait_log("pvh-cg", "Connected in", T);
    let row = h.list_row("pvh-cg").expect("listed");
    let domid: u16 = row
        .split_whitespace()
        .nth(1)
        .and_then(|d| d.parse().ok())
        .expect("a domid column");
    let g = h
        .guest_cgroup(domid)
        .expect("read the cgroups")
        .expect("the domain has a cgroup");
    let vmm = xen_shim_dom0::Control::connect(&h.shim_socket())
        .and_then(|c| c.domain_info(domid))
        .expect("domain info")
        .pid
        .expect("the VMM attached");
    assert!(
        g.procs().expect("procs").contains(&vmm),
        "VMM not in {}",
        g.name()
    );
    assert_eq!(g.memory_limit().expect("limit"), Some((64 + 64) << 20));
    assert_eq!(
        g.cpu_quota().expect("quota").map(|q| q.as_millicpus()),
        Some(2000)
    );
    let usage = g.memory_usage().expect("usage");
    let shmem = g
        .dirs()
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("memory.stat")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("shmem ").and_then(|v| v.parse::<u64>().ok()))
        });
    eprintln!(
        "PVHVM guest (memory = 64): its group holds {} KiB, shmem (guest RAM touched by the VMM) {:?} KiB",
        usage >> 10,
        shmem.map(|s| s >> 10)
    );
    // Guest RAM the VMM touched is charged here, not to Dom0's services.
    assert!(usage >= 1 << 20, "only {usage} bytes charged");
    // Its vCPUs are the VMM's vCPU threads: xl vcpu-list and xl top -v
    // show each one's CPU and time.
    let vl = ok("xl vcpu-list", &h.xl(&["vcpu-list", "pvh-cg"]));
    let rows: Vec<Vec<&str>> = vl
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{vl}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[2], i.to_string(), "{vl}");
        assert!(r[3].parse::<u32>().is_ok(), "a host CPU: {vl}");
        assert!(r[5].parse::<f64>().is_ok(), "a time: {vl}");
    }
    let top = ok("xl top", &h.xl(&["top", "-b", "-i", "1", "-v"]));
    let at = top
        .lines()
        .position(|l| l.split_whitespace().next() == Some("pvh-cg"))
        .unwrap_or_else(|| panic!("no row:\n{top}"));
    let vline = top.lines().nth(at + 1).unwrap_or_default();
    assert!(
        vline.starts_with("VCPUs(sec):   0: ") && vline.contains("  1: "),
        "{top}"
    );
    eprintln!("xl vcpu-list:\n{vl}xl top -v: {vline}");
    // xl vcpu-pin: vCPU 1's thread alone on CPU 0, then both on all the
    // domain's CPUs again; xl vcpu-list shows each one's affinity.
    let all = g.cpuset().expect("cpuset").to_string();
    ok("xl vcpu-pin", &h.xl(&["vcpu-pin", "pvh-cg", "1", "0"]));
    let aff = |h: &Host| -> Vec<String> {
        ok("xl vcpu-list", &h.xl(&["vcpu-list", "pvh-cg"]))
            .lines()
            .skip(1)
            .map(|l| {
                l.split_whitespace()
                    .rev()
                    .nth(2)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(aff(&h), vec![all.clone(), "0".to_owned()]);
    ok(
        "xl vcpu-pin all",
        &h.xl(&["vcpu-pin", "pvh-cg", "all", "all"]),
    );
    assert_eq!(aff(&h), vec![all.clone(), all]);
    let o = h.xl(&["vcpu-pin", "pvh-cg", "5", "0"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no vCPU 5"),
        "{o:?}"
    );
    ok("xl destroy", &h.xl(&["destroy", "pvh-cg"]));
    assert!(!g.exists(), "the group outlived xl destroy");
}
