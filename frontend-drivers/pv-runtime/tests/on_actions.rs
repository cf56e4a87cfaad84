//! xl.cfg's `on_poweroff` for PV guests (the process guest runtime), carried
//! out by the monitor `xl create` leaves behind: the default `destroy`
//! removes the domain and its xenstore home once its init ends; `preserve`
//! keeps it listed as shut down. Needs root.

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

fn cfg(host: &Dom0, name: &str, actions: &str) -> Result<String> {
    host.pv_config(name, 32, "#!/bin/sh\necho init-ran\n", actions)
}

/// The `xl list` row of `name`.
fn row(host: &Dom0, name: &str) -> Result<Option<String>> {
    Ok(host
        .xl_ok(&["list"])?
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(str::to_owned))
}

fn homes(host: &Dom0) -> Result<String> {
    let out = std::process::Command::new("xenstore-list")
        .arg("/local/domain")
        .env("XENSTORED_PATH", host.dir.path().join("xenstored.sock"))
        .output()
        .expect("run xenstore-list (xenstore-utils)");
    stdout_of("xenstore-list", &out)
}

#[test]
fn test_pv_poweroff_default_destroys_and_preserve_keeps_the_domain() -> Result<()> {
    let mut host = dom0("pv-on-actions-")?;
    // Default (destroy): gone once its init has run, home and all.
    let d = format!("pvd{}", std::process::id());
    host.xl_ok(&["create", &cfg(&host, &d, "")?])?;
    let t0 = Instant::now();
    while row(&host, &d)?.is_some() {
        assert!(
            t0.elapsed() < STEP,
            "{d} not destroyed: {:?}",
            row(&host, &d)?
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(host.rundir().join(format!("xl-{d}.log")))
        .expect("the monitor's log");
    assert!(
        log.contains("ended (Shutdown { reason: Poweroff }): destroy"),
        "{log}"
    );
    assert_eq!(homes(&host)?.trim(), "", "nodes left behind");

    // on_poweroff = "preserve": listed as shut down.
    let p = format!("pvp{}", std::process::id());
    host.xl_ok(&["create", &cfg(&host, &p, "on_poweroff = 'preserve'\n")?])?;
    host.track_guest(&p);
    let t0 = Instant::now();
    loop {
        let r = row(&host, &p)?.expect("a preserved domain stays listed");
        if r.split_whitespace().nth(4).is_some_and(|f| f.contains('s')) {
            break;
        }
        assert!(t0.elapsed() < STEP, "{p} did not shut down: {r}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(row(&host, &p)?.is_some(), "a preserved domain was removed");
    assert!(!homes(&host)?.trim().is_empty());
    Ok(())
}
