//! The PV NIC across backend restarts, and its carrier, end to end (project
//! issue 7): `xl create` of a PV guest with a vif on the test's bridge;
//! backendd (in the test's "Dom0" network namespace) is SIGKILLed and
//! started again, as `backendd_sigkill.rs` does for disks.
//!
//! - restart: while Dom0 runs `iperf3` to the guest, backendd is killed
//!   (its TAP goes with it) and restarted; the new one makes the TAP again
//!   on the bridge, netfront sees the InitWait, tears its rings down,
//!   offers fresh ones and reconnects: Dom0 reaches the guest again within
//!   seconds, the TCP stream survives, and the guest's `eth0` (same
//!   ifindex), its address and its route are untouched. Twice.
//! - carrier: the guest's `eth0` loses its carrier while its backend is
//!   away (the test plays a backend that is back in InitWait but not
//!   connected yet) and gets it back when the new backendd connects; the
//!   Dom0 vif's carrier goes off when the guest stops taking packets (the
//!   guest runtime SIGSTOPped while Dom0 floods it: netback's rx stall
//!   detection, here after 1 s) and comes back once it takes them again.
//!
//! - supervised: the same restart with backendd under `xen-supervise`
//!   (as `xl` starts it): the test only kills it, twice, during `iperf3`.
//!
//! Private `xen-shimd` and `xenstored`, the real `xl`, `xen-supervise`,
//! `backendd` and `xen-pvguest`. Needs root, iproute2, iputils-ping, iperf3.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use xen_testhost::net::{
    bridge_name, bridge_ports, iperf_receiver_gbps, kill_backendd, link, make_bridge,
    start_backendd_in, start_supervised_backendd_in, stop_supervisor, wait_link, Daemon, Guests,
    Netns,
};
use xen_testhost::{need, Dom0};
use xenstore_client::XsOps;

/// The private Dom0 of this test ([`Dom0::start_for_pv_guests`]).
fn dom0(prefix: &str) -> Result<Dom0> {
    Dom0::start_for_pv_guests(
        prefix,
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

const GUEST_RUN: Duration = Duration::from_secs(120);
/// How long Dom0 may wait for the guest to answer after a restart.
const RECOVERY: Duration = Duration::from_secs(20);

fn vif(mac_last: u8, br: &str, ip: &str) -> String {
    format!(
        "mac=00:16:3e:5e:{:02x}:{mac_last:02x}, bridge={br}, ip={ip}",
        std::process::id() as u8
    )
}

fn wait_flag(flag: &std::path::Path) -> String {
    format!(
        "i=0; while [ ! -e {f} ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i+1)); done\n",
        f = flag.display()
    )
}

/// One ping from `ns` to `ip`, one second to answer.
fn ping_once(ns: &Netns, ip: &str) -> bool {
    ns.exec("ping", &["-c", "1", "-W", "1", ip])
        .expect("run ping in the namespace")
        .status
        .success()
}

/// Pings `ip` from `ns` until it answers; how long that took.
fn time_to_answer(ns: &Netns, ip: &str, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if ping_once(ns, ip) {
            return Some(t0.elapsed());
        }
    }
    None
}

/// The value after `key=` on the guest log's line starting with `tag`.
fn field(log: &str, tag: &str, key: &str) -> Option<String> {
    log.lines()
        .find(|l| l.starts_with(tag))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

fn backendd_log(host: &Dom0) -> String {
    std::fs::read_to_string(host.rundir().join("backendd.log")).unwrap_or_default()
}

#[test]
fn test_backendd_sigkill_restart_reconnects_the_pv_nic_and_traffic_resumes() -> Result<()> {
    // Arrange
    need("ping", "iputils-ping")?;
    need("iperf3", "iperf3")?;
    let host = dom0("pvnet-rc-")?;
    let ns = Netns::unique("xsn", "r")?;
    let br = bridge_name("xb", "r")?;
    make_bridge(&ns, &br, "10.77.0.1/24")?;
    let mut backendd = start_backendd_in(&host, &ns, &[])?;
    let go = host.dir.path().join("go");
    let mut guests = Guests::new(&host);
    let name = format!("netrc{}", std::process::id());
    guests.create(
        &name,
        &[vif(2, &br, "10.77.0.2")],
        &format!(
            "#!/bin/sh\nset -e\n\
             echo \"link-before $(ip -o link show dev eth0)\"\n\
             ping -c 2 -i 0.2 -W 5 10.77.0.1 >/dev/null\necho ping-before-ok\n\
             iperf3 -s -D -B 10.77.0.2 -p 5203\n\
             echo guest-ready\n\
             {wait}\
             i=0; until ping -c 1 -W 1 10.77.0.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 30 ]; done\n\
             echo ping-after-ok\n\
             echo \"link-after $(ip -o link show dev eth0)\"\n\
             echo \"addr-after $(ip -o -4 addr show dev eth0)\"\n\
             echo \"route-after $(ip -4 route show dev eth0)\"\n\
             echo guest-init-ok\n",
            wait = wait_flag(&go)
        ),
    )?;
    guests.wait_log(&name, "guest-ready", GUEST_RUN)?;
    let domid = guests.domid(&name)?;
    let tap = format!("vif{domid}.0");
    let before = ping_once(&ns, "10.77.0.2");

    // Act 1: Dom0 streams TCP to the guest; backendd is killed 3 s in and
    // started again.
    // Killed on an early return, waited for below.
    let iperf = Daemon::new(
        ns.cmd("iperf3")
            .args(["-c", "10.77.0.2", "-p", "5203", "-t", "12"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start iperf3"),
    );
    std::thread::sleep(Duration::from_secs(3));
    let mut restarts = Vec::new();
    for round in 0..2 {
        if round == 1 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let pid = kill_backendd(&host, backendd)?;
        std::thread::sleep(Duration::from_millis(200));
        let tap_gone = link(&ns, &tap).is_empty();
        let unreachable = !ping_once(&ns, "10.77.0.2");
        std::thread::sleep(Duration::from_millis(300));
        backendd = start_backendd_in(&host, &ns, &[])?;
        let recovered = time_to_answer(&ns, "10.77.0.2", RECOVERY);
        let (tap_link, carrier) = wait_link(&ns, &tap, Duration::from_secs(5), |l| {
            l.contains("LOWER_UP")
        });
        let ports = bridge_ports(&ns, &br)?;
        restarts.push((
            pid,
            tap_gone,
            unreachable,
            recovered,
            tap_link,
            carrier,
            ports,
        ));
    }
    let iperf = iperf.take().wait_with_output().expect("iperf3 ends");
    let iperf_out = String::from_utf8_lossy(&iperf.stdout).into_owned();
    std::fs::write(&go, b"1").expect("write the flag");
    let log = guests.wait_log(&name, "guest-init-ok", GUEST_RUN)?;
    eprintln!(
        "restarts (old pid, TAP gone, unreachable, time to answer, link, carrier, ports): {restarts:#?}\n\
         iperf3:\n{iperf_out}\nguest log:\n{log}\nbackendd log:\n{}",
        backendd_log(&host)
    );

    // Assert
    assert!(before, "Dom0 reaches the guest before the kills");
    for (pid, tap_gone, unreachable, recovered, tap_link, carrier, ports) in &restarts {
        assert!(tap_gone, "the killed backendd ({pid})'s TAP went with it");
        assert!(
            unreachable,
            "the guest is unreachable while no backendd runs"
        );
        assert!(
            recovered.is_some(),
            "Dom0 reaches the guest again within {RECOVERY:?} of the restart"
        );
        assert!(*carrier, "the new TAP has carrier: {tap_link}");
        assert_eq!(
            ports,
            &vec![tap.clone()],
            "the new TAP is a port of the bridge"
        );
    }
    assert!(
        iperf.status.success(),
        "the TCP stream survives the restarts: {iperf_out}{}",
        String::from_utf8_lossy(&iperf.stderr)
    );
    let rates = iperf_receiver_gbps(&iperf_out);
    assert!(
        rates.len() == 1 && rates[0] > 0.0,
        "iperf3 moved data: {iperf_out}"
    );
    assert!(
        log.contains("ping-after-ok"),
        "the guest reaches Dom0 again"
    );
    let ifindex = |tag: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(tag))
            .and_then(|l| l.split(':').next())
            .map(|s| s.trim().to_owned())
    };
    assert!(
        ifindex("link-before ").is_some() && ifindex("link-before ") == ifindex("link-after "),
        "the guest's eth0 is the same interface: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("addr-after") && l.contains("10.77.0.2/24")),
        "its address stays: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("route-after") && l.contains("10.77.0.0/24")),
        "its route stays: {log}"
    );
    let downs = log.matches("pvnet link-down").count();
    let ups = log.matches("pvnet link-up").count();
    assert!(
        downs >= 2 && ups >= 2,
        "netfront went down and up at each restart ({downs} down, {ups} up)"
    );
    assert!(!log.contains("pump-failed") && !log.contains("link-failed"));
    // The pages whose grants the killed backendds had mapped come back:
    // the shim unmapped them for the dead process, so netfront's last
    // `pvnet deferred` report (if it had to keep any) is zero.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let last_deferred = loop {
        let log = guests.wait_log(&name, "guest-init-ok", GUEST_RUN)?;
        let last = log
            .lines()
            .filter(|l| l.starts_with("pvnet deferred devid=0 "))
            .filter_map(|l| l.rsplit("pages=").next())
            .filter_map(|n| n.trim().parse::<usize>().ok())
            .next_back();
        if last.unwrap_or(0) == 0 || std::time::Instant::now() >= deadline {
            break last;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        last_deferred.unwrap_or(0),
        0,
        "netfront gets back every page the killed backendds had mapped"
    );
    guests.destroy(&name)?;
    drop(backendd);
    Ok(())
}

#[test]
fn test_pv_nic_carrier_follows_the_backend_and_the_vif_carrier_follows_guest_rx() -> Result<()> {
    // Arrange
    need("ping", "iputils-ping")?;
    let host = dom0("pvnet-car-")?;
    let ns = Netns::unique("xsn", "c")?;
    let br = bridge_name("xb", "c")?;
    make_bridge(&ns, &br, "10.77.0.1/24")?;
    let stall = ["--vif-rx-stall-timeout-ms", "1000"];
    let mut backendd = start_backendd_in(&host, &ns, &stall)?;
    let done = host.dir.path().join("done");
    let mut guests = Guests::new(&host);
    let name = format!("netcar{}", std::process::id());
    // The guest also leaves a file (its console log is written by
    // backendd's consback, which is down while the backend is away).
    let until = |what: &str, tag: &str| {
        format!(
            "i=0; until ip -o link show dev eth0 | grep -q {what}; do i=$((i+1)); \
             [ $i -lt 1200 ] || {{ echo {tag}-timeout; exit 1; }}; sleep 0.05; done; \
             touch {dir}/{tag}; echo {tag}\n",
            dir = host.dir.path().display()
        )
    };
    guests.create(
        &name,
        &[vif(3, &br, "10.77.0.3")],
        &format!(
            "#!/bin/sh\nset -e\n\
             ping -c 2 -i 0.2 -W 5 10.77.0.1 >/dev/null\n\
             echo \"link-connected $(ip -o link show dev eth0)\"\n\
             echo guest-ready\n\
             {off}{on}\
             i=0; until ping -c 1 -W 1 10.77.0.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 30 ]; done\n\
             echo ping-after-ok\n\
             {wait}echo guest-init-ok\n",
            off = until("NO-CARRIER", "guest-carrier-off"),
            on = until("LOWER_UP", "guest-carrier-on"),
            wait = wait_flag(&done)
        ),
    )?;
    let ready = guests.wait_log(&name, "guest-ready", GUEST_RUN)?;
    let domid = guests.domid(&name)?;
    let tap = format!("vif{domid}.0");
    let be = format!("/local/domain/0/backend/vif/{domid}/0");
    let fe = format!("/local/domain/{domid}/device/vif/0");
    let xs = xenstore_client::Client::connect_path(host.dir.path().join("xenstored.sock"))
        .expect("xenstore");
    let fe_state = |xs: &xenstore_client::Client| {
        xs.read_opt(&format!("{fe}/state"))
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    let (vif_connected, vif_on) = wait_link(&ns, &tap, Duration::from_secs(5), |l| {
        l.contains("LOWER_UP")
    });

    // Act 1: the backend goes away and is back in InitWait without
    // connecting yet (the test plays it); then a real backendd connects.
    kill_backendd(&host, backendd)?;
    xs.write(&format!("{be}/state"), "2")
        .expect("backend InitWait");
    let seen_off = host.dir.path().join("guest-carrier-off");
    let t0 = Instant::now();
    while !seen_off.exists() && t0.elapsed() < GUEST_RUN {
        std::thread::sleep(Duration::from_millis(20));
    }
    let off = seen_off.exists();
    let offered = fe_state(&xs);
    backendd = start_backendd_in(&host, &ns, &stall)?;
    let on = guests.wait_log(&name, "ping-after-ok", GUEST_RUN)?;

    // Act 2: the guest stops taking packets while Dom0 sends them.
    let pid: i32 = field(&ready, "pvguest ready", "pid")
        .and_then(|p| p.parse().ok())
        .expect("the runtime's pid on its console");
    let (before_stall, carrier_before) = wait_link(&ns, &tap, Duration::from_secs(5), |l| {
        l.contains("LOWER_UP")
    });
    let gpid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(gpid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP the guest");
    let t0 = Instant::now();
    let _flood = ns.exec(
        "ping",
        &["-q", "-i", "0.002", "-c", "600", "-W", "1", "10.77.0.3"],
    )?;
    let (stalled_link, stalled) = wait_link(&ns, &tap, Duration::from_secs(15), |l| {
        l.contains("NO-CARRIER")
    });
    let stalled_after = t0.elapsed();
    nix::sys::signal::kill(gpid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT the guest");
    let (ready_link, ready_again) = wait_link(&ns, &tap, Duration::from_secs(15), |l| {
        l.contains("LOWER_UP")
    });
    let answers = time_to_answer(&ns, "10.77.0.3", RECOVERY);
    std::fs::write(&done, b"1").expect("write the flag");
    let log = guests.wait_log(&name, "guest-init-ok", GUEST_RUN)?;
    eprintln!(
        "stall: {stalled_link} after {stalled_after:?}; ready: {ready_link}\nguest log:\n{log}\n\
         backendd log:\n{}",
        backendd_log(&host)
    );

    // Assert
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("link-connected") && l.contains("LOWER_UP")),
        "the guest's eth0 has carrier while connected: {ready}"
    );
    assert!(
        vif_on,
        "the Dom0 vif has carrier while connected: {vif_connected}"
    );
    assert!(off, "no carrier on eth0 while the backend is away");
    assert!(log.contains("guest-carrier-off") && log.contains("pvnet link-down"));
    assert_eq!(
        offered.as_deref(),
        Some("3"),
        "netfront offered fresh rings (Initialised) to the backend in InitWait"
    );
    assert!(
        on.contains("guest-carrier-on"),
        "carrier again once reconnected"
    );
    assert!(carrier_before, "{before_stall}");
    assert!(
        stalled,
        "a guest that stops receiving loses the vif's carrier: {stalled_link}"
    );
    assert!(
        ready_again,
        "the carrier comes back once the guest receives again: {ready_link}"
    );
    assert!(answers.is_some(), "the guest answers Dom0 again");
    assert!(backendd_log(&host).contains("guest rx stalled"));
    guests.destroy(&name)?;
    drop(backendd);
    Ok(())
}

/// backendd SIGKILLed twice during an `iperf3` from Dom0 to the guest, and
/// nothing in the test starts it again: its supervisor does (a new pid in
/// the pid file within 2 s), the new backendd makes the TAP again, netfront
/// reconnects, Dom0 reaches the guest and the TCP stream survives.
#[test]
fn test_supervised_backendd_sigkill_during_iperf_is_restarted_and_traffic_resumes() -> Result<()> {
    // Arrange
    need("ping", "iputils-ping")?;
    need("iperf3", "iperf3")?;
    let host = dom0("pvnet-sup-")?;
    let ns = Netns::unique("xsn", "s")?;
    let br = bridge_name("xb", "s")?;
    make_bridge(&ns, &br, "10.78.0.1/24")?;
    let supervisor = start_supervised_backendd_in(&host, &ns)?;
    let go = host.dir.path().join("go");
    let mut guests = Guests::new(&host);
    let name = format!("netsup{}", std::process::id());
    guests.create(
        &name,
        &[vif(3, &br, "10.78.0.2")],
        &format!(
            "#!/bin/sh\nset -e\n\
             ping -c 2 -i 0.2 -W 5 10.78.0.1 >/dev/null\necho ping-before-ok\n\
             iperf3 -s -D -B 10.78.0.2 -p 5204\n\
             echo guest-ready\n\
             {wait}\
             i=0; until ping -c 1 -W 1 10.78.0.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 30 ]; done\n\
             echo ping-after-ok\n\
             echo guest-init-ok\n",
            wait = wait_flag(&go)
        ),
    )?;
    guests.wait_log(&name, "guest-ready", GUEST_RUN)?;

    // Act: Dom0 streams TCP to the guest; backendd is SIGKILLed 3 s in and
    // again 1 s after it answers; the test never starts it.
    let iperf = Daemon::new(
        ns.cmd("iperf3")
            .args(["-c", "10.78.0.2", "-p", "5204", "-t", "12"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start iperf3"),
    );
    std::thread::sleep(Duration::from_secs(3));
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let old = host.backendd_pid().expect("backendd runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL backendd");
        let t0 = Instant::now();
        let new = loop {
            if let Some(p) = host.backendd_pid().filter(|&p| p != old) {
                break Some((p, t0.elapsed()));
            }
            if t0.elapsed() > Duration::from_secs(2) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let recovered = time_to_answer(&ns, "10.78.0.2", RECOVERY);
        rounds.push((old, new, recovered));
        std::thread::sleep(Duration::from_secs(1));
    }
    let iperf = iperf.take().wait_with_output().expect("iperf3 ends");
    let iperf_out = String::from_utf8_lossy(&iperf.stdout).into_owned();
    std::fs::write(&go, b"1").expect("write the flag");
    let log = guests.wait_log(&name, "guest-init-ok", GUEST_RUN)?;
    let blog = backendd_log(&host);
    eprintln!(
        "rounds (old pid, (new pid, back after), Dom0 reaches the guest after): {rounds:?}\n\
         iperf3:\n{iperf_out}\nguest log:\n{log}\nbackendd log:\n{blog}"
    );
    guests.destroy(&name)?;
    let stopped = stop_supervisor(supervisor)?;

    // Assert
    for (old, new, recovered) in &rounds {
        assert!(new.is_some(), "no new backendd within 2 s of killing {old}");
        assert!(
            recovered.is_some(),
            "Dom0 reaches the guest again within {RECOVERY:?}"
        );
    }
    assert!(
        iperf.status.success(),
        "the TCP stream survives: {iperf_out}{}",
        String::from_utf8_lossy(&iperf.stderr)
    );
    let rates = iperf_receiver_gbps(&iperf_out);
    assert!(rates.len() == 1 && rates[0] > 0.0, "{iperf_out}");
    assert!(log.contains("ping-after-ok"), "{log}");
    assert_eq!(
        blog.matches("backendd killed by signal 9 (SIGKILL)")
            .count(),
        2,
        "{blog}"
    );
    assert!(stopped.success(), "xen-supervise on SIGTERM: {stopped}");
    assert!(host.backendd_pid().is_none(), "backendd stopped with it");
    Ok(())
}
