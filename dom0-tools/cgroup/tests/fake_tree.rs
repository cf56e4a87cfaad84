//! The interface on fake directory trees laid out as each version's
//! cgroupfs (plain files in a tempdir): which files each operation writes
//! and what it reads back, for v1 and for v2 (which this machine cannot
//! mount with controllers).

use std::fs;
use std::path::Path;
use std::time::Duration;

use xen_cgroup::{CpuQuota, CpuSet, Hierarchy, V1Mounts, Version};

fn put(p: &Path, text: &str) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).expect("mkdir");
    }
    fs::write(p, text).expect("write fake file");
}

fn get(p: &Path) -> String {
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_owned()
}

fn v1_tree(root: &Path) -> V1Mounts {
    for c in ["memory", "cpu", "cpuacct", "cpuset", "pids", "freezer"] {
        fs::create_dir_all(root.join(c)).expect("mkdir");
    }
    put(&root.join("cpuset/cpuset.cpus"), "0-3\n");
    put(&root.join("cpuset/cpuset.mems"), "0\n");
    V1Mounts {
        memory: root.join("memory"),
        cpu: root.join("cpu"),
        cpuacct: root.join("cpuacct"),
        cpuset: root.join("cpuset"),
        pids: root.join("pids"),
        freezer: Some(root.join("freezer")),
    }
}

#[test]
fn test_v1_create_copies_cpuset_into_parent_and_group() {
    let t = tempfile::tempdir().expect("tempdir");
    let h = Hierarchy::v1_at(v1_tree(t.path()), "xen").expect("v1");
    assert_eq!(h.version(), Version::V1);
    let g = h.create("dom1-a").expect("create");
    for d in ["xen", "xen/dom1-a"] {
        let d = t.path().join("cpuset").join(d);
        assert_eq!(get(&d.join("cpuset.cpus")), "0-3");
        assert_eq!(get(&d.join("cpuset.mems")), "0");
    }
    assert_eq!(
        get(&t.path().join("memory/xen/dom1-a/memory.oom_control")),
        "0",
        "OOM killer enabled in the group"
    );
    assert_eq!(g.dirs().len(), 6);
    assert!(matches!(
        h.create("dom1-a"),
        Err(xen_cgroup::CgroupError::Exists(_))
    ));
    assert_eq!(h.groups().expect("list"), vec!["dom1-a".to_owned()]);
}

#[test]
fn test_v1_limits_write_kernel_files() {
    let t = tempfile::tempdir().expect("tempdir");
    let h = Hierarchy::v1_at(v1_tree(t.path()), "xen").expect("v1");
    let g = h.create("dom2-b").expect("create");
    let m = t.path().join("memory/xen/dom2-b");
    // As the kernel does when swap is accounted.
    put(
        &m.join("memory.memsw.limit_in_bytes"),
        "9223372036854771712\n",
    );
    g.set_memory_limit(Some(64 << 20)).expect("memory");
    assert_eq!(get(&m.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(get(&m.join("memory.memsw.limit_in_bytes")), "67108864");
    assert_eq!(g.memory_limit().expect("read"), Some(64 << 20));

    g.set_cpu_quota(Some(CpuQuota::millicpus(1500).expect("1.5")))
        .expect("cpu");
    let c = t.path().join("cpu/xen/dom2-b");
    assert_eq!(get(&c.join("cpu.cfs_quota_us")), "150000");
    assert_eq!(get(&c.join("cpu.cfs_period_us")), "100000");
    assert_eq!(
        g.cpu_quota().expect("read").map(CpuQuota::as_millicpus),
        Some(1500)
    );
    g.set_cpu_quota(None).expect("unlimited");
    assert_eq!(get(&c.join("cpu.cfs_quota_us")), "-1");
    assert_eq!(g.cpu_quota().expect("read"), None);
    g.set_cpu_shares(2048).expect("shares");
    assert_eq!(get(&c.join("cpu.shares")), "2048");
    assert_eq!(g.cpu_shares().expect("read"), 2048);
    g.set_cpu_shares(1).expect("clamped");
    assert_eq!(get(&c.join("cpu.shares")), "2");

    g.set_cpuset(&CpuSet::parse("1,3").expect("list"))
        .expect("cpuset");
    assert_eq!(get(&t.path().join("cpuset/xen/dom2-b/cpuset.cpus")), "1,3");
    g.set_pids_limit(Some(1024)).expect("pids");
    assert_eq!(get(&t.path().join("pids/xen/dom2-b/pids.max")), "1024");
    g.set_pids_limit(None).expect("pids");
    assert_eq!(g.pids_limit().expect("read"), None);

    put(
        &t.path().join("cpuacct/xen/dom2-b/cpuacct.usage"),
        "2500000000\n",
    );
    assert_eq!(g.cpu_time().expect("time"), Duration::from_millis(2500));
    put(&m.join("memory.usage_in_bytes"), "1048576\n");
    assert_eq!(g.memory_usage().expect("usage"), 1 << 20);
    put(
        &m.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    );
    assert_eq!(g.oom_kills().expect("oom"), 2);
    put(&t.path().join("pids/xen/dom2-b/pids.events"), "max 7\n");
    assert_eq!(g.pids_limit_hits().expect("events"), 7);
    g.freeze(true).expect("freeze");
    assert_eq!(
        get(&t.path().join("freezer/xen/dom2-b/freezer.state")),
        "FROZEN"
    );
}

#[test]
fn test_v1_memory_limit_lowers_memsw_last_and_raises_it_first() {
    let t = tempfile::tempdir().expect("tempdir");
    let h = Hierarchy::v1_at(v1_tree(t.path()), "xen").expect("v1");
    let g = h.create("dom3-c").expect("create");
    let m = t.path().join("memory/xen/dom3-c");
    put(&m.join("memory.memsw.limit_in_bytes"), "67108864\n");
    // Unlimited: both files "-1".
    g.set_memory_limit(None).expect("unlimited");
    assert_eq!(get(&m.join("memory.limit_in_bytes")), "-1");
    assert_eq!(get(&m.join("memory.memsw.limit_in_bytes")), "-1");
}

#[test]
fn test_v1_destroy_of_a_missing_group_is_fine() {
    let t = tempfile::tempdir().expect("tempdir");
    let h = Hierarchy::v1_at(v1_tree(t.path()), "xen").expect("v1");
    let g = h.group("dom9-gone").expect("name");
    assert!(!g.exists());
    g.destroy().expect("nothing to do");
    assert!(h.open("dom9-gone").expect("name").is_none());
    assert!(h.group("../escape").is_err());
}

fn v2_tree(root: &Path) {
    put(
        &root.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    );
    put(&root.join("cgroup.subtree_control"), "cpu\n");
    put(&root.join("xen/cgroup.subtree_control"), "\n");
}

#[test]
fn test_v2_create_delegates_controllers_and_writes_unified_files() {
    let t = tempfile::tempdir().expect("tempdir");
    v2_tree(t.path());
    let h = Hierarchy::v2_at(t.path(), "/xen/").expect("v2");
    assert_eq!(h.version(), Version::V2);
    let g = h.create("dom1-a").expect("create");
    // The root had cpu already; xen had nothing.
    assert_eq!(
        get(&t.path().join("cgroup.subtree_control")),
        "+memory +cpuset +pids"
    );
    assert_eq!(
        get(&t.path().join("xen/cgroup.subtree_control")),
        "+memory +cpu +cpuset +pids"
    );
    let d = t.path().join("xen/dom1-a");
    assert!(d.is_dir());
    put(&d.join("memory.swap.max"), "max\n");
    g.set_memory_limit(Some(128 << 20)).expect("memory");
    assert_eq!(get(&d.join("memory.max")), "134217728");
    assert_eq!(get(&d.join("memory.swap.max")), "0");
    g.set_cpu_quota(Some(CpuQuota::cpus(1).expect("one")))
        .expect("cpu");
    assert_eq!(get(&d.join("cpu.max")), "100000 100000");
    g.set_cpu_quota(None).expect("cpu");
    assert_eq!(get(&d.join("cpu.max")), "max");
    g.set_cpu_shares(2048).expect("shares");
    assert_eq!(get(&d.join("cpu.weight")), "79");
    assert_eq!(
        xen_cgroup::parse::shares_to_weight(g.cpu_shares().expect("read")),
        79
    );
    g.set_cpuset(&CpuSet::range(0, 1).expect("range"))
        .expect("cpuset");
    assert_eq!(get(&d.join("cpuset.cpus")), "0-1");
    g.set_pids_limit(Some(64)).expect("pids");
    assert_eq!(get(&d.join("pids.max")), "64");
    put(
        &d.join("cpu.stat"),
        "usage_usec 1500000\nuser_usec 1000000\n",
    );
    assert_eq!(g.cpu_time().expect("time"), Duration::from_millis(1500));
    put(&d.join("memory.current"), "4096\n");
    assert_eq!(g.memory_usage().expect("usage"), 4096);
    put(
        &d.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
    );
    assert_eq!(g.oom_kills().expect("oom"), 1);
    put(&d.join("cgroup.procs"), "12\n34\n");
    assert_eq!(g.procs().expect("procs"), vec![12, 34]);
    g.freeze(true).expect("freeze");
    assert_eq!(get(&d.join("cgroup.freeze")), "1");
}

#[test]
fn test_v2_without_controllers_is_refused() {
    let t = tempfile::tempdir().expect("tempdir");
    put(&t.path().join("cgroup.controllers"), "cpu io\n");
    let e = Hierarchy::v2_at(t.path(), "xen")
        .expect_err("no memory controller")
        .to_string();
    assert!(e.contains("memory") && e.contains("pids"), "{e}");
}
