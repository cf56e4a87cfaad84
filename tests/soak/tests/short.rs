//! The short soak (CI's): 3 guests doing verified disk records and
//! checksummed network transfers for 36 s while each Dom0 service is
//! SIGKILLed at least once (a SIGKILL about every 6 s, the three in turn
//! in a shuffled order; only their supervisors restart them), an extra
//! guest is created, used and destroyed, and a disk and a NIC are
//! hot-plugged into a guest and detached. Asserts the end conditions the
//! soak checks (no verify error, no acknowledged record lost, every guest
//! reachable, nothing of a destroyed domain left, descriptors and RSS
//! within their tolerances) and, with `--self-check`, that the leak and
//! record checks do fire on a planted leak of each kind and a damaged
//! record. Runs the real `soak` binary (its JSON report).
//! Needs root, /dev/fuse, qemu-utils, busybox-static, e2fsprogs, iproute2
//! (tests/setup-host.sh).

use std::path::Path;
use std::process::Command;

#[test]
fn test_short_soak_with_each_service_killed_churn_and_hotplug_loses_nothing_and_leaks_nothing() {
    // Arrange
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (shim guests, FUSE, loop devices, namespaces): run it as root"
    );
    let exe = Path::new(env!("CARGO_BIN_EXE_soak"));
    let libexec =
        xen_testhost::fleet::build_fleet_binaries(exe, Path::new(env!("CARGO_MANIFEST_DIR")))
            .expect("build the binaries");

    // Act
    let out = Command::new(exe)
        .args([
            "--guests",
            "3",
            "--minutes",
            "0.6",
            "--fault-every",
            "6",
            "--extra-churn",
            "--churn-every",
            "20",
            "--hotplug-every",
            "30",
            "--warmup-secs",
            "10",
            // A short run samples the services before their heaps settle
            // (a backendd restarted late has just reconnected every
            // device): 6 MiB of slack instead of 2; the long run uses the
            // defaults. Descriptors and leaks are checked as in any run.
            "--rss-slack-mib",
            "6",
            "--sample-every",
            "5",
            "--write-pause",
            "0.5",
            "--self-check",
            "--json",
            "--libexec",
        ])
        .arg(&libexec)
        .output()
        .expect("run soak");

    // Assert
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "a JSON report ({e}): {}\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        )
    });
    let failures = report["failures"].as_array().expect("failures");
    assert!(
        out.status.success() && failures.is_empty(),
        "soak failed ({}): {failures:#?}",
        out.status
    );
    let kills = report["kills"].as_array().expect("kills");
    for s in soak::SERVICES {
        assert!(
            kills
                .iter()
                .any(|k| k["service"] == s && k["new_pid"].as_i64() > Some(0)),
            "{s} was SIGKILLed and restarted by its supervisor: {kills:#?}"
        );
    }
    let churn = report["churn"].as_array().expect("churn");
    assert!(
        !churn.is_empty() && churn.iter().all(|c| c["error"] == ""),
        "an extra guest came and went cleanly: {churn:#?}"
    );
    let hot = report["hotplugs"].as_array().expect("hotplugs");
    assert!(
        !hot.is_empty() && hot.iter().all(|h| h["error"] == ""),
        "a disk and a NIC were hot-plugged and detached: {hot:#?}"
    );
    assert!(report["net"]["ok"].as_u64() > Some(0), "{}", report["net"]);
    let records = report["records"].as_array().expect("records");
    assert_eq!(records.len(), 3, "{records:#?}");
    for r in records {
        assert!(r["acked"].as_u64() > Some(0), "{r}");
        assert_eq!(r["lost"].as_array().map(Vec::len), Some(0), "{r}");
        assert_eq!(r["verify_errors"], 0, "{r}");
    }
    // The checks fire on what they look for.
    let seen = report["self_check"].as_array().expect("self_check");
    for want in ["xenstore node", "TAP", "file", "damaged record"] {
        assert!(
            seen.iter()
                .any(|s| s.as_str().is_some_and(|s| s.contains(want))),
            "the self-check found the planted {want}: {seen:#?}"
        );
    }
    let samples = report["samples"].as_array().expect("samples");
    assert!(
        samples.iter().any(|s| s["label"] == "warm-up")
            && samples.iter().any(|s| s["label"] == "end"),
        "{samples:#?}"
    );
    // Nothing of the run is left: its namespace is gone.
    let pid = stderr
        .lines()
        .find_map(|l| l.strip_prefix("soak: run ")?.split_whitespace().next())
        .expect("the run's pid line");
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains(&format!("xso{pid}k")),
        "the run's namespace is removed: {netns}"
    );
}
