//! The limits enforced by the host's real cgroups (v1 controllers on our
//! machines; whatever [`Hierarchy::detect`] finds): each test makes its
//! own parent `xen-cgroup-test-<pid>-<n>` and groups in it, puts child
//! processes in with `enter_on_exec`, and removes everything on drop (also
//! when it fails). Needs root and `python3` (Debian `python3`).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use xen_cgroup::{Cgroup, CpuQuota, GroupGuard, Hierarchy};

static N: AtomicU32 = AtomicU32::new(0);

/// A parent of its own, emptied and removed on drop.
struct Parent(Hierarchy);

impl Parent {
    fn new() -> Self {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(uid, 0, "this test needs root (it creates cgroups)");
        let name = format!(
            "xen-cgroup-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Parent(Hierarchy::detect(&name).expect("the host mounts usable cgroups"))
    }

    fn create(&self, name: &str) -> GroupGuard {
        GroupGuard::new(self.0.create(name).expect("create the group"))
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        for g in self.0.groups().unwrap_or_default() {
            if let Ok(g) = self.0.group(&g) {
                let _ = g.destroy();
            }
        }
        if let Err(e) = self.0.remove_parent() {
            eprintln!("cannot remove the test parent: {e}");
        }
    }
}

/// A child killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_in(g: &Cgroup, prog: &str, args: &[&str]) -> Reaped {
    let mut c = Command::new(prog);
    c.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    g.enter_on_exec(&mut c).expect("open cgroup.procs");
    Reaped(c.spawn().unwrap_or_else(|e| panic!("spawn {prog}: {e}")))
}

fn python3() -> &'static str {
    assert!(
        std::path::Path::new("/usr/bin/python3").exists(),
        "this test needs /usr/bin/python3 (Debian package python3)"
    );
    "/usr/bin/python3"
}

#[test]
fn test_child_enters_group_before_exec_and_destroy_kills_it() {
    let p = Parent::new();
    let g = p.create("enter");
    let child = spawn_in(&g, "sleep", &["60"]);
    let pid = child.0.id() as i32;
    assert_eq!(g.procs().expect("procs"), vec![pid]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroups");
    assert!(own.contains("/enter"), "{own}");
    g.destroy().expect("destroy");
    assert!(!g.exists(), "directories left: {:?}", g.dirs());
    // Destroying again (the group is gone) is fine.
    g.destroy().expect("destroy twice");
}

#[test]
fn test_memory_hog_in_64mib_group_is_oom_killed_and_neighbour_survives() {
    let p = Parent::new();
    let g = p.create("memhog");
    g.set_memory_limit(Some(64 << 20)).expect("limit");
    let mut neighbour = spawn_in(&g, "sleep", &["60"]);
    let mut hog = spawn_in(
        &g,
        python3(),
        &["-c", "b = b'x' * (200 << 20); print(len(b))"],
    );
    let status = hog.0.wait().expect("wait for the hog");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "hog: {status}");
    assert!(g.oom_kills().expect("oom_kill") >= 1);
    assert!(
        neighbour.0.try_wait().expect("poll").is_none(),
        "the OOM killer took the small member too"
    );
    assert!(g.memory_usage().expect("usage") <= 64 << 20);
}

#[test]
fn test_cpu_hog_in_half_cpu_group_gets_about_half_a_cpu() {
    let p = Parent::new();
    let g = p.create("cpuhog");
    g.set_cpu_quota(Some(CpuQuota::millicpus(500).expect("half")))
        .expect("quota");
    // Two busy loops: unlimited they could take both CPUs (4 s in 2 s).
    let _a = spawn_in(&g, "sh", &["-c", "while :; do :; done"]);
    let _b = spawn_in(&g, "sh", &["-c", "while :; do :; done"]);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = g.cpu_time().expect("time");
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = g.cpu_time().expect("time").saturating_sub(t0);
    let per_s = used.as_secs_f64() / w0.elapsed().as_secs_f64();
    eprintln!("0.5-CPU group with two busy loops used {per_s:.2} CPU");
    assert!(
        (0.2..=0.7).contains(&per_s),
        "expected about 0.5 CPU, got {per_s:.2}"
    );
}

#[test]
fn test_pids_limit_stops_a_fork_loop() {
    let p = Parent::new();
    let g = p.create("forks");
    g.set_pids_limit(Some(16)).expect("pids");
    let mut sh = spawn_in(
        &g,
        "sh",
        &[
            "-c",
            "i=0; while [ $i -lt 100 ]; do sleep 60 & i=$((i+1)); done 2>/dev/null; exit 0",
        ],
    );
    let _ = sh.0.wait();
    let hits = g.pids_limit_hits().expect("pids.events");
    let n = g.threads().expect("tasks").len();
    assert!(hits > 0, "no fork was refused ({n} tasks)");
    assert!(n <= 16, "{n} tasks in a group limited to 16");
    g.destroy().expect("destroy kills the sleeps");
    assert!(!g.exists());
}

#[test]
fn test_freeze_stops_a_busy_loop_and_thaw_resumes_it() {
    let p = Parent::new();
    let g = p.create("freeze");
    let _busy = spawn_in(&g, "sh", &["-c", "while :; do :; done"]);
    std::thread::sleep(Duration::from_millis(200));
    g.freeze(true).expect("freeze");
    // Frozen once the freezer has caught every task.
    std::thread::sleep(Duration::from_millis(200));
    let t0 = g.cpu_time().expect("time");
    std::thread::sleep(Duration::from_millis(500));
    let frozen = g.cpu_time().expect("time").saturating_sub(t0);
    g.freeze(false).expect("thaw");
    let t1 = g.cpu_time().expect("time");
    std::thread::sleep(Duration::from_millis(500));
    let thawed = g.cpu_time().expect("time").saturating_sub(t1);
    eprintln!("busy loop: {frozen:?} of CPU while frozen, {thawed:?} after thaw (0.5 s each)");
    assert!(
        frozen < Duration::from_millis(20),
        "ran while frozen: {frozen:?}"
    );
    assert!(
        thawed > Duration::from_millis(50),
        "did not resume: {thawed:?}"
    );
}
