//! xl.cfg's `on_poweroff` for PV guests (the process guest runtime), carried
//! out by the monitor `xl create` leaves behind: the default `destroy`
//! removes the domain and its xenstore home once its init ends; `preserve`
//! keeps it listed as shut down. Needs root.

use std::time::{Duration, Instant};

#[path = "common/xlhost.rs"]
mod xlhost;

use xlhost::{ok, Host};

const STEP: Duration = Duration::from_secs(30);

fn cfg(host: &Host, name: &str, actions: &str) -> String {
    host.pv_config(name, 32, "#!/bin/sh\necho init-ran\n", actions)
}

/// The `xl list` row of `name`.
fn row(host: &Host, name: &str) -> Option<String> {
    ok("xl list", &host.xl(&["list"]))
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(str::to_owned)
}

fn homes(host: &Host) -> String {
    let out = std::process::Command::new("xenstore-list")
        .arg("/local/domain")
        .env("XENSTORED_PATH", host.dir.path().join("xenstored.sock"))
        .output()
        .expect("run xenstore-list (xenstore-utils)");
    ok("xenstore-list", &out)
}

#[test]
fn test_pv_poweroff_default_destroys_and_preserve_keeps_the_domain() {
    let mut host = Host::start("pv-on-actions-");
    // Default (destroy): gone once its init has run, home and all.
    let d = format!("pvd{}", std::process::id());
    let out = host.xl(&["create", &cfg(&host, &d, "")]);
    ok("xl create", &out);
    let t0 = Instant::now();
    while row(&host, &d).is_some() {
        assert!(
            t0.elapsed() < STEP,
            "{d} not destroyed: {:?}",
            row(&host, &d)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(host.rundir().join(format!("xl-{d}.log")))
        .expect("the monitor's log");
    assert!(
        log.contains("ended (Shutdown { reason: Poweroff }): destroy"),
        "{log}"
    );
    assert_eq!(homes(&host).trim(), "", "nodes left behind");

    // on_poweroff = "preserve": listed as shut down.
    let p = format!("pvp{}", std::process::id());
    ok(
        "xl create",
        &host.xl(&["create", &cfg(&host, &p, "on_poweroff = 'preserve'\n")]),
    );
    host.guest = Some(p.clone());
    let t0 = Instant::now();
    loop {
        let r = row(&host, &p).expect("a preserved domain stays listed");
        if r.split_whitespace().nth(4).is_some_and(|f| f.contains('s')) {
            break;
        }
        assert!(t0.elapsed() < STEP, "{p} did not shut down: {r}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(row(&host, &p).is_some(), "a preserved domain was removed");
    assert!(!homes(&host).trim().is_empty());
}
