//! `scalebench --guests 4` end to end (the CI-cheap run of the scale
//! benchmark's code path): four PV guests, each booting busybox from its
//! own qcow2 overlay on one base image with a NIC on the run's bridge;
//! checks that all four came up with their figures, that idle they wake
//! up a few times a second, not hundreds (each runtime and its monitor:
//! at most [`MAX_IDLE_WAKEUPS`]), that destroying them after 15 s up takes
//! seconds, not 10 s a guest, and that nothing of the run is left (its
//! namespace with the bridge, its directory).
//! Needs root, /dev/fuse, qemu-utils, busybox-static, e2fsprogs, iproute2
//! (tests/setup-host.sh).

use std::path::Path;
use std::process::Command;

/// Most wake-ups a second of an idle guest's runtime and monitor together
/// (measured: about 2; every idle loop polling on a timeout made it 360).
const MAX_IDLE_WAKEUPS: f64 = 10.0;

#[test]
fn test_scalebench_four_guests_with_overlay_disks_and_nics_come_up_and_are_cleaned_up() {
    // Arrange
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (shim guests, FUSE, loop devices): run it as root"
    );
    let exe = Path::new(env!("CARGO_BIN_EXE_scalebench"));
    let libexec =
        xen_testhost::fleet::build_fleet_binaries(exe, Path::new(env!("CARGO_MANIFEST_DIR")))
            .expect("build the binaries");

    // Act
    let out = Command::new(exe)
        .args([
            "--guests",
            "4",
            "--memory",
            "32",
            "--idle-secs",
            "5",
            "--hold-secs",
            "5",
            "--libexec",
        ])
        .arg(&libexec)
        .output()
        .expect("run scalebench");

    // Assert
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scalebench failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        // The per-guest table's rows start with the guest's number.
        .filter(|l| {
            l.strip_prefix("| ")
                .and_then(|r| r.split(' ').next())
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 4, "one row per guest:\n{stdout}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[0], (i + 1).to_string(), "{stdout}");
        let connected: f64 = r[3].parse().expect("to Connected ms");
        let shell: f64 = r[4].parse().expect("to shell ms");
        let guest_mib: f64 = r[5].parse().expect("runtime PSS");
        let backendd_mib: f64 = r[6].parse().expect("backendd RSS");
        let backendd_anon: f64 = r[7].parse().expect("backendd anon");
        let xs_p50: f64 = r[11].parse().expect("xs p50");
        assert!(connected > 0.0 && shell > 0.0, "{stdout}");
        assert!(
            guest_mib > 0.1 && backendd_mib > 0.1 && backendd_anon > 0.1,
            "memory measured:\n{stdout}"
        );
        assert!(xs_p50 > 0.0, "{stdout}");
    }
    assert!(
        stdout.contains("- Stopped: at the asked count."),
        "{stdout}"
    );
    let per_guest = |role: &str| -> f64 {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {role} |")))
            .and_then(|l| l.trim_matches('|').split('|').nth(3)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no wake-ups row for {role}:\n{stdout}"))
    };
    let idle = per_guest("runtime (xen-pvguest, xen-vmm)") + per_guest("monitor (xl)");
    assert!(
        idle <= MAX_IDLE_WAKEUPS,
        "an idle guest's runtime and monitor wake {idle:.1} times a second (at most {MAX_IDLE_WAKEUPS}):\n{stdout}"
    );
    // Nothing of the run is left: its namespace (with the bridge) is gone.
    let (pid, dir) = stderr
        .lines()
        .find_map(|l| l.strip_prefix("scalebench: run ")?.split_once(" in "))
        .expect("the run's pid line");
    assert!(
        !Path::new(dir).exists(),
        "the run's directory (overlays, configs) is removed: {dir}"
    );
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains(&format!("xsc{pid}s")),
        "the run's namespace is removed: {netns}"
    );
}
