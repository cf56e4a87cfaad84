//! `xl shutdown` and `xl reboot` of PV guests through Xen's PV shutdown
//! protocol: xl writes `control/shutdown`, the guest runtime (which
//! advertised `control/feature-poweroff`/`feature-reboot`) acknowledges it,
//! stops its init with SIGTERM and ends the domain with the requested
//! reason; xl's `on_poweroff` (destroy) and `on_reboot` (restart) apply.
//! Needs root and xenstore-utils.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use xen_testhost::{stdout_of, Dom0};

/// The private Dom0 of this test ([`Dom0::start_for_pv_guests`]).
fn dom0(prefix: &str) -> Result<Dom0> {
    Dom0::start_for_pv_guests(
        prefix,
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

const STEP: Duration = Duration::from_secs(30);

/// A config whose init waits (forever) and reports the SIGTERM it gets.
fn cfg(host: &Dom0, name: &str) -> Result<String> {
    host.pv_config(
        name,
        32,
        "#!/bin/sh\ntrap 'echo init-got-term; exit 0' TERM\necho init-waiting\n\
         while :; do sleep 1; done\n",
        "",
    )
}

fn wait_log(host: &Dom0, name: &str, needle: &str, n: usize) -> String {
    let t0 = Instant::now();
    loop {
        let log = host.guest_log(name);
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(
            t0.elapsed() < STEP,
            "{name}: {needle:?} x{n} not in its log within {STEP:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn xs_read(host: &Dom0, path: &str) -> Result<String> {
    let out = std::process::Command::new("xenstore-read")
        .arg(path)
        .env("XENSTORED_PATH", host.dir.path().join("xenstored.sock"))
        .output()
        .expect("run xenstore-read (xenstore-utils)");
    stdout_of(&format!("xenstore-read {path}"), &out)
}

#[test]
fn test_xl_shutdown_w_stops_the_pv_guest_init_and_the_domain_is_destroyed() -> Result<()> {
    // Arrange
    let mut host = dom0("pv-shutdown-")?;
    let name = format!("pvs{}", std::process::id());
    host.xl_ok(&["create", &cfg(&host, &name)?])?;
    host.track_guest(&name);
    wait_log(&host, &name, "init-waiting", 1);
    let id = host.domid(&name)?.expect("listed");
    let home = format!("/local/domain/{id}");
    // The runtime advertises the protocol.
    let t0 = Instant::now();
    while xs_read(&host, &format!("{home}/control/feature-poweroff"))?.trim() != "1" {
        assert!(t0.elapsed() < STEP, "no control/feature-poweroff");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        xs_read(&host, &format!("{home}/control/feature-reboot"))?.trim(),
        "1"
    );

    // Act
    let out = host.xl(&["shutdown", "-w", &name])?;

    // Assert: xl waited for it, the init was asked to stop, the domain
    // ended with reason poweroff and on_poweroff (destroy) removed it.
    let said = stdout_of("xl shutdown -w", &out)?;
    assert!(said.contains("Waiting for 1 domains"), "{said}");
    assert!(said.contains(&format!("Domain {id} has been")), "{said}");
    let log = wait_log(&host, &name, "pvguest shutdown", 1);
    assert!(log.contains("init-got-term"), "{log}");
    assert!(log.contains("reason=poweroff"), "{log}");
    let t0 = Instant::now();
    while host.domid(&name)?.is_some() {
        assert!(t0.elapsed() < STEP, "{name} still listed");
        std::thread::sleep(Duration::from_millis(20));
    }
    host.untrack_guest(&name);
    Ok(())
}

#[test]
fn test_xl_reboot_restarts_the_pv_guest_as_on_reboot_says() -> Result<()> {
    // Arrange
    let mut host = dom0("pv-reboot-")?;
    let name = format!("pvr{}", std::process::id());
    host.xl_ok(&["create", &cfg(&host, &name)?])?;
    host.track_guest(&name);
    wait_log(&host, &name, "init-waiting", 1);
    let first = host.domid(&name)?.expect("listed");
    let t0 = Instant::now();
    while xs_read(
        &host,
        &format!("/local/domain/{first}/control/feature-reboot"),
    )?
    .trim()
        != "1"
    {
        assert!(t0.elapsed() < STEP, "no control/feature-reboot");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Act
    host.xl_ok(&["reboot", &name])?;

    // Assert: the first run ended with reason reboot and the monitor
    // started the guest again (on_reboot's default, restart) as a new
    // domain whose init runs again.
    let log = wait_log(&host, &name, "init-waiting", 2);
    assert!(log.contains("reason=reboot"), "{log}");
    assert!(log.contains("init-got-term"), "{log}");
    let second = host.domid(&name)?.expect("listed again");
    assert_ne!(first, second, "the restarted guest is a new domain");
    Ok(())
}

#[test]
fn test_xl_shutdown_of_unknown_domain_fails_by_name() -> Result<()> {
    let host = dom0("pv-shutdown-none-")?;
    let out = host.xl(&["shutdown", "no-such-guest"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-guest"), "{err}");
    Ok(())
}
