//! The cgroup parents of the test runs: a [`Dom0`] removes its own on drop
//! (groups, their processes and all), and one left by a run that died
//! (its pid gone) is swept when the next [`Dom0`] starts. Needs root.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xen_cgroup::Hierarchy;
use xen_testhost::{Dom0, CGROUP_PARENT_PREFIX};

/// A sleeping process inside `g`; its pid.
fn sleeper_in(g: &xen_cgroup::Cgroup) -> std::process::Child {
    let mut c = Command::new("sleep");
    c.arg("600").stdin(Stdio::null());
    g.enter_on_exec(&mut c).expect("open cgroup.procs");
    c.spawn().expect("spawn sleep")
}

fn reaped_within(child: &mut std::process::Child, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn test_dom0_sweeps_dead_runs_cgroup_parents_and_removes_its_own() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it creates cgroups)"
    );
    // A run that died: a pid that is gone.
    let mut gone = Command::new("true").spawn().expect("spawn true");
    let pid = gone.id();
    gone.wait().expect("reap true");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let stale = Hierarchy::detect(&format!("{CGROUP_PARENT_PREFIX}-{pid}-0")).expect("cgroups");
    let g = stale.create("dom1-left").expect("create a stale group");
    let mut left = sleeper_in(&g);

    let d = Dom0::start("cgparents-", Path::new("/nonexistent")).expect("start a Dom0");
    assert!(!g.exists(), "the dead run's group is still there");
    assert!(stale.groups().expect("list").is_empty());
    assert!(
        reaped_within(&mut left, Duration::from_secs(5)),
        "its process survived"
    );

    // The Dom0's own parent goes on drop, with what is in it.
    let own = Hierarchy::detect(&d.cgroup_parent).expect("cgroups");
    let g = own.create("dom2-mine").expect("create a group");
    let mut mine = sleeper_in(&g);
    drop(d);
    assert!(!g.exists(), "the Dom0's group outlived it");
    assert!(
        reaped_within(&mut mine, Duration::from_secs(5)),
        "its process survived"
    );
    let root = Hierarchy::detect("").expect("cgroups");
    let names = root.groups().expect("list the root");
    assert!(
        !names
            .iter()
            .any(|n| n == own.parent().to_str().unwrap_or_default()
                || n == stale.parent().to_str().unwrap_or_default()),
        "parents left: {names:?}"
    );
}
