//! The systemd units in `dom0-tools/systemd` pass `systemd-analyze verify`
//! (`dom0-tools/systemd/verify.sh`, against this build's binaries) and
//! restart their service on failure, as Xen's `xenstored.service`.
//! Needs `systemd-analyze` (`apt-get install systemd`).

use std::path::Path;
use std::process::Command;

#[test]
fn test_systemd_units_verify_and_restart_on_failure() {
    let exe = Path::new(env!("CARGO_BIN_EXE_xl"));
    let profile = exe.parent().expect("<target>/<profile>");
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    xen_testhost::build_binaries(
        profile,
        &ws,
        &[
            ("xen-shimd", "xen-shimd"),
            ("xenstored", "xenstored"),
            ("xen-backendd", "backendd"),
        ],
    )
    .expect("build the services");
    let units = ws.join("dom0-tools/systemd");
    let out = Command::new(units.join("verify.sh"))
        .arg(profile)
        .output()
        .expect("run verify.sh");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for u in ["xen-shimd", "xenstored", "xen-backendd"] {
        let text = std::fs::read_to_string(units.join(format!("{u}.service"))).expect("unit");
        for key in [
            "Restart=on-failure",
            "RestartSec=",
            "StartLimitIntervalSec=",
            "StartLimitBurst=",
        ] {
            assert!(text.contains(key), "{u}.service lacks {key}");
        }
    }
}
