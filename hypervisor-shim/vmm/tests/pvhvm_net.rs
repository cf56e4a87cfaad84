//! The PVHVM guest's network end to end: `xl create` of a `type = "pvh"`
//! guest with `vif = [ 'mac=..., bridge=BR' ]` and the kernel's `netserve`
//! workload (`xen-netfront` + `smoltcp`); backendd, inside the test's own
//! "Dom0" network namespace where the test made bridge BR with Dom0's
//! address, creates the TAP `vif<domid>.0` on BR; from that namespace Dom0
//! pings the guest, fetches its HTTP pages with `curl` (also ten in a row,
//! more than the guest's HTTP sockets) and makes a TCP echo round trip
//! (python3); `xl destroy` removes the TAP.
//!
//! Needs root, `/dev/kvm`, iproute2, iputils-ping, curl and python3
//! (tests/setup-host.sh); fails loudly without. Traffic stays in the test's
//! namespace (10.78.0.0/24 exists only there).

mod common;

use std::time::Duration;

use common::net::{
    bridge_name, bridge_ports, bytes_body, domid, exec, make_bridge, need, netns,
    start_backendd_in, wait_guest,
};
use common::{ok, Host};

const T: Duration = Duration::from_secs(30);

/// A TCP echo round trip of `n` random bytes to `addr` port 7, in python3
/// (sends and reads concurrently; prints `echo-ok N` when every byte came
/// back unchanged).
const ECHO_PY: &str = r#"
import os, socket, sys, threading
host, n = sys.argv[1], int(sys.argv[2])
data = os.urandom(n)
s = socket.create_connection((host, 7), timeout=10)
t = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
t.start()
got = bytearray()
while True:
    b = s.recv(65536)
    if not b:
        break
    got += b
t.join()
print("echo-ok", len(got) if bytes(got) == data else "MISMATCH got %d of %d" % (len(got), n))
"#;

fn text(o: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn test_pvhvm_guest_answers_ping_curl_and_tcp_echo_from_dom0_and_destroy_removes_its_tap() {
    // Arrange
    need("ping", "iputils-ping");
    need("curl", "curl");
    need("python3", "python3");
    let mut h = Host::start("pvhvm-net-");
    let ns = netns("n");
    let br = bridge_name("n");
    make_bridge(&ns, &br, "10.78.0.1/24");
    let _backendd = start_backendd_in(&h, &ns);
    let pid = std::process::id();
    let name = format!("pvnet{pid}");
    let mac = format!("00:16:3e:4f:{:02x}:02", pid as u8);
    let cfg = h.config_full(
        &name,
        "netserve ip=10.78.0.2/24",
        &[],
        1,
        &[format!("mac={mac}, bridge={br}")],
        common::PRESERVE_ALL,
    );

    // Act
    ok("xl create", &h.create(&name, &cfg));
    let boot = wait_guest(&h, &name, "netserve: 10.78.0.2/24 up", T);
    let ping = exec(
        &ns,
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "5", "10.78.0.2"],
    );
    let curl_in = |path: &str, secs: &str| {
        exec(
            &ns,
            "curl",
            &[
                "-sS",
                "--max-time",
                secs,
                "-D",
                "/dev/stderr",
                &format!("http://10.78.0.2{path}"),
            ],
        )
    };
    let curl = |path: &str| curl_in(path, "20");
    let index = curl("/");
    let bytes = curl("/bytes/1000000");
    let missing = curl("/nothing-here");
    // More connections in a row than the guest has HTTP sockets (4), each
    // answered within 5 s (less than smoltcp's 10 s TIME-WAIT).
    let repeated: Vec<_> = (0..10).map(|_| curl_in("/", "5")).collect();
    let echo = exec(&ns, "python3", &["-c", ECHO_PY, "10.78.0.2", "300000"]);
    let d = domid(&h, &name);
    let tap = format!("vif{d}.0");
    let ports_before = bridge_ports(&ns, &br);
    ok(
        "xl destroy",
        &h.dom0.destroy_guest(&name).expect("run xl destroy"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let ports_after = bridge_ports(&ns, &br);
    let tap_after = exec(&ns, "ip", &["link", "show", &tap]);

    // Assert
    assert!(
        boot.contains(&format!("mac {mac}")),
        "netfront read the vif's MAC:\n{boot}"
    );
    let p = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping.status.success() && p.contains("3 packets transmitted, 3 received"),
        "Dom0 pings the guest: {}\nguest log:\n{}",
        text(&ping),
        h.log(&name)
    );
    assert!(
        index.status.success()
            && String::from_utf8_lossy(&index.stdout).contains("pvhvm-kernel netserve"),
        "curl /: {}",
        text(&index)
    );
    assert!(
        String::from_utf8_lossy(&index.stderr).starts_with("HTTP/1.0 200 OK"),
        "curl / headers: {}",
        text(&index)
    );
    assert!(bytes.status.success(), "curl /bytes: {}", text(&bytes));
    assert_eq!(bytes.stdout.len(), 1_000_000, "/bytes/1000000's length");
    assert!(
        bytes.stdout == bytes_body(1_000_000),
        "/bytes/1000000's body is the pattern"
    );
    assert!(
        String::from_utf8_lossy(&missing.stderr).starts_with("HTTP/1.0 404"),
        "curl of an unknown path: {}",
        text(&missing)
    );
    for (i, o) in repeated.iter().enumerate() {
        assert!(
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("pvhvm-kernel netserve"),
            "curl / number {} of 10 in a row: {}",
            i + 1,
            text(o)
        );
    }
    assert!(
        echo.status.success() && String::from_utf8_lossy(&echo.stdout).trim() == "echo-ok 300000",
        "TCP echo round trip: {}",
        text(&echo)
    );
    assert_eq!(
        ports_before,
        vec![tap.clone()],
        "the vif's TAP is a port of the bridge"
    );
    assert!(
        ports_after.is_empty(),
        "xl destroy removes the bridge port: {ports_after:?}"
    );
    assert!(
        !tap_after.status.success(),
        "xl destroy removes the TAP {tap}"
    );
}

#[test]
fn test_pvhvm_guest_reconnects_after_a_backendd_sigkill_and_restart() {
    // Arrange
    need("ping", "iputils-ping");
    need("curl", "curl");
    let mut h = Host::start("pvhvm-netrc-");
    let ns = netns("k");
    let br = bridge_name("k");
    make_bridge(&ns, &br, "10.78.0.1/24");
    let mut backendd = start_backendd_in(&h, &ns);
    let pid = std::process::id();
    let name = format!("pvrc{pid}");
    let mac = format!("00:16:3e:4f:{:02x}:03", pid as u8);
    let cfg = h.config_full(
        &name,
        "netserve ip=10.78.0.3/24",
        &[],
        1,
        &[format!("mac={mac}, bridge={br}")],
        common::PRESERVE_ALL,
    );
    ok("xl create", &h.create(&name, &cfg));
    wait_guest(&h, &name, "netserve: 10.78.0.3/24 up", T);
    let ping_once = || {
        exec(&ns, "ping", &["-c", "1", "-W", "1", "10.78.0.3"])
            .status
            .success()
    };
    let before = ping_once();

    // Act: SIGKILL backendd (its TAP goes with it), start a new one.
    let mut answers_after = Vec::new();
    for _ in 0..2 {
        let mut child = backendd.take();
        child.kill().expect("SIGKILL backendd");
        let _ = child.wait();
        // A killed backendd leaves its pid file behind.
        let _ = std::fs::remove_file(h.rundir().join("backendd.pid"));
        std::thread::sleep(Duration::from_millis(300));
        let gone = !ping_once();
        backendd = start_backendd_in(&h, &ns);
        let t0 = std::time::Instant::now();
        let mut back = None;
        while t0.elapsed() < Duration::from_secs(20) {
            if ping_once() {
                back = Some(t0.elapsed());
                break;
            }
        }
        answers_after.push((gone, back));
    }
    let bytes = exec(
        &ns,
        "curl",
        &["-sS", "--max-time", "20", "http://10.78.0.3/bytes/1000000"],
    );
    let log = wait_guest(&h, &name, "reconnected", T);
    let d = domid(&h, &name);
    let ports = bridge_ports(&ns, &br);
    eprintln!("(unreachable while down, time to answer after the restart): {answers_after:?}");

    // Assert
    assert!(before, "Dom0 pings the guest before the kills");
    for (gone, back) in &answers_after {
        assert!(gone, "the guest is unreachable while no backendd runs");
        assert!(
            back.is_some(),
            "Dom0 reaches the guest again after the restart:\n{log}"
        );
    }
    assert!(
        bytes.status.success() && bytes.stdout == bytes_body(1_000_000),
        "HTTP after the restarts: {}",
        text(&bytes)
    );
    assert_eq!(log.matches("reconnected").count(), 2, "{log}");
    assert!(!log.contains("FAIL"), "{log}");
    assert_eq!(
        ports,
        vec![format!("vif{d}.0")],
        "the new TAP is a bridge port"
    );
    ok(
        "xl destroy",
        &h.dom0.destroy_guest(&name).expect("run xl destroy"),
    );
}
