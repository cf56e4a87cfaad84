//! `xen-supervise` as a process: a service that is SIGKILLed is started
//! again within a second (new pid), one that fails at once backs off with
//! growing delays and its log says why, SIGTERM to the supervisor stops the
//! service, a clean exit is not restarted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SUPERVISE: &str = env!("CARGO_BIN_EXE_xen-supervise");

/// A supervisor run; killed (SIGKILL, its service too) on drop.
struct Run {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Run {
    fn start(program: &[&str], child_pid: bool) -> Run {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let log2 = log.try_clone().expect("dup");
        let mut c = Command::new(SUPERVISE);
        c.args(["--name", "svc", "--pid-file"])
            .arg(dir.path().join("sup.pid"));
        if child_pid {
            c.arg("--child-pid-file").arg(dir.path().join("svc.pid"));
        }
        let child = c
            .arg("--")
            .args(program)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .expect("spawn xen-supervise");
        Run {
            child: Some(child),
            dir,
        }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("log")).unwrap_or_default()
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        let end = Instant::now() + within;
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < end,
                "supervisor still runs; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The whole process group: the supervisor and its service.
            let pg = nix::unistd::Pid::from_raw(-(c.id() as i32));
            let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

use std::os::unix::process::CommandExt;

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn wait_pid(p: &Path, not: Option<i32>, within: Duration) -> (i32, Duration) {
    let t = Instant::now();
    loop {
        if let Some(pid) = read_pid(p).filter(|&pid| Some(pid) != not && alive(pid)) {
            return (pid, t.elapsed());
        }
        assert!(
            t.elapsed() < within,
            "no new live pid in {} within {within:?}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn test_sigkilled_service_is_back_within_a_second_and_sigterm_stops_it() {
    // Arrange
    let mut run = Run::start(&["sleep", "1000"], true);
    let (first, _) = wait_pid(&run.path("svc.pid"), None, Duration::from_secs(5));

    // Act: SIGKILL the service twice; nothing but the supervisor restarts it.
    let mut pids = vec![first];
    let mut gaps = Vec::new();
    for _ in 0..2 {
        let old = *pids.last().expect("a pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL the service");
        let (new, took) = wait_pid(&run.path("svc.pid"), Some(old), Duration::from_secs(1));
        pids.push(new);
        gaps.push(took);
    }
    let sup = read_pid(&run.path("sup.pid")).expect("the supervisor's pid file");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM the supervisor");
    let st = run.wait_exit(Duration::from_secs(5));
    eprintln!("pids {pids:?}, back after {gaps:?}\n{}", run.log());

    // Assert
    let log = run.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(!alive(pids[2]), "the service outlived its supervisor");
    assert_eq!(
        log.matches("killed by signal 9 (SIGKILL)").count(),
        2,
        "{log}"
    );
    assert!(log.contains("restart 1 in 0.100 s"), "{log}");
    assert!(log.contains("restart 2 in 0.200 s"), "{log}");
}

/// The seconds stamp of each `restart N` line.
fn restart_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("; restart "))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

#[test]
fn test_service_failing_at_once_backs_off_with_growing_delays_and_says_why() {
    // Arrange: a service that exits 3 at once.
    let run = Run::start(&["sh", "-c", "exit 3"], false);

    // Act: 3.5 s of crash loop (delays 0.1, 0.2, 0.4, 0.8, 1.6 s).
    std::thread::sleep(Duration::from_millis(3500));
    let log = run.log();
    eprintln!("{log}");

    // Assert: the reason and count are logged; the delays double and the
    // failures are at least that far apart.
    let t = restart_times(&log);
    assert!(
        (3..=6).contains(&t.len()),
        "expected 3-6 restarts in 3.5 s: {t:?}\n{log}"
    );
    let delays: Vec<f64> = log
        .lines()
        .filter_map(|l| {
            l.split("; restart ")
                .nth(1)?
                .split(" in ")
                .nth(1)?
                .strip_suffix(" s")?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(delays.len(), t.len(), "{log}");
    for (i, d) in delays.iter().enumerate() {
        assert!(
            (d - 0.1 * f64::from(1u32 << i)).abs() < 1e-9,
            "delays {delays:?}\n{log}"
        );
    }
    let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("gaps between failures (s): {gaps:?}");
    for (g, d) in gaps.iter().zip(&delays) {
        assert!(g + 0.002 >= *d, "failures {g} s apart, delay {d} s\n{log}");
    }
    assert!(log.contains("svc exit status 3 after"), "{log}");
    assert!(log.contains("restart 3 in 0.400 s"), "{log}");
}

#[test]
fn test_clean_exit_is_not_restarted_and_bad_program_is_retried() {
    let mut ok = Run::start(&["true"], false);
    assert!(ok.wait_exit(Duration::from_secs(5)).success());
    assert!(
        ok.log().contains("exited cleanly, not restarted"),
        "{}",
        ok.log()
    );

    let missing = Run::start(&["/nonexistent/service"], false);
    std::thread::sleep(Duration::from_millis(500));
    let log = missing.log();
    assert!(log.contains("cannot start /nonexistent/service"), "{log}");
    assert!(log.contains("did not start after"), "{log}");
    assert!(log.contains("restart 2 in 0.200 s"), "{log}");
}

#[test]
fn test_usage_errors_exit_nonzero_with_usage() {
    let out = Command::new(SUPERVISE)
        .args(["--name", "x"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: xen-supervise"));
}
