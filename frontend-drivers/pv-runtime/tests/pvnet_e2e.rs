//! The PV NIC end to end: `xl create` of PV guests with `vif = [ 'mac=...,
//! bridge=BR, ip=...' ]`; backendd (inside the test's own "Dom0" network
//! namespace, where the test made bridge BR and gave Dom0 10.77.0.1)
//! creates a TAP `vif<domid>.0` per vif on BR; each guest runtime connects
//! netfront, makes `eth0` in its own network namespace with the vif's
//! address, and pumps frames; the guests' init scripts run `ping`
//! (and `iperf3`, `curl`) over it. `xl destroy` removes the TAP and its
//! bridge port.
//!
//! Private `xen-shimd` and `xenstored`, the real `xl`, `backendd` and
//! `xen-pvguest`. Needs root, iproute2, iputils-ping (`apt-get install
//! iproute2 iputils-ping iperf3 curl`, tests/setup-host.sh). Traffic stays
//! in the test's namespaces (10.77.0.0/24 exists only there).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use xen_testhost::net::{
    bridge_name, bridge_ports, iperf_receiver_gbps, make_bridge, spawn_in, start_backendd_in,
    wait_listen, Guests, Netns,
};
use xen_testhost::{need, run, Dom0};

/// The private Dom0 of this test ([`Dom0::start_for_pv_guests`]).
fn dom0(prefix: &str) -> Result<Dom0> {
    Dom0::start_for_pv_guests(
        prefix,
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

const GUEST_RUN: Duration = Duration::from_secs(120);

fn vif(mac_last: u8, br: &str, ip: &str) -> String {
    format!(
        "mac=00:16:3e:4e:{:02x}:{mac_last:02x}, bridge={br}, ip={ip}",
        std::process::id() as u8
    )
}

#[test]
fn test_two_pv_guests_on_one_bridge_ping_each_other_and_dom0_then_destroy_removes_taps(
) -> Result<()> {
    // Arrange
    need("ping", "iputils-ping")?;
    let host = dom0("pvnet-ping-")?;
    let ns = Netns::unique("xsn", "p")?;
    let br = bridge_name("xb", "p")?;
    make_bridge(&ns, &br, "10.77.0.1/24")?;
    let _backendd = start_backendd_in(&host, &ns, &[])?;
    let flag = host.dir.path().join("done");
    let wait_flag = format!(
        "i=0; while [ ! -e {f} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n",
        f = flag.display()
    );
    let mut guests = Guests::new(&host);
    let pid = std::process::id();
    let (a, b) = (format!("neta{pid}"), format!("netb{pid}"));

    // Act: B comes up and waits; A pings Dom0 and B.
    guests.create(
        &b,
        &[vif(3, &br, "10.77.0.3")],
        &format!("#!/bin/sh\necho guest-ready\n{wait_flag}echo guest-init-ok\n"),
    )?;
    guests.wait_log(&b, "guest-ready", GUEST_RUN)?;
    guests.create(
        &a,
        &[vif(2, &br, "10.77.0.2")],
        &format!(
            "#!/bin/sh\nset -e\nip -o addr show dev eth0\n\
             ping -c 3 -i 0.2 -W 5 10.77.0.1\necho ping-dom0-ok\n\
             ping -c 3 -i 0.2 -W 5 10.77.0.3\necho ping-peer-ok\n\
             {wait_flag}echo guest-init-ok\n"
        ),
    )?;
    let log_a = guests.wait_log(&a, "ping-peer-ok", GUEST_RUN)?;
    let dom0_to_a = ns.exec("ping", &["-c", "3", "-i", "0.2", "-W", "5", "10.77.0.2"])?;
    let dom0_to_b = ns.exec("ping", &["-c", "3", "-i", "0.2", "-W", "5", "10.77.0.3"])?;
    let (da, db) = (guests.domid(&a)?, guests.domid(&b)?);
    let netlist = host.xl_ok(&["network-list", &a])?;
    let ports_before = bridge_ports(&ns, &br)?;
    std::fs::write(&flag, b"1").expect("write the flag");
    guests.wait_log(&a, "guest-init-ok", GUEST_RUN)?;
    guests.wait_log(&b, "guest-init-ok", GUEST_RUN)?;
    guests.destroy(&a)?;
    guests.destroy(&b)?;
    std::thread::sleep(Duration::from_secs(1));
    let ports_after = bridge_ports(&ns, &br)?;
    let tap_a = ns.exec("ip", &["link", "show", &format!("vif{da}.0")])?;

    // Assert
    assert!(
        log_a.contains("3 packets transmitted, 3 received"),
        "guest A's pings:\n{log_a}"
    );
    assert!(
        log_a.contains("10.77.0.2/24"),
        "eth0 has the vif's address:\n{log_a}"
    );
    let mac_a = vif(2, "", "");
    let mac_a = mac_a
        .split(',')
        .next()
        .unwrap_or("")
        .trim_start_matches("mac=");
    let row: Vec<&str> = netlist
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(netlist.starts_with("Idx"), "{netlist}");
    assert_eq!(row.first().copied(), Some("0"), "{netlist}");
    assert_eq!(row.get(2).copied(), Some(mac_a), "{netlist}");
    assert_eq!(
        row.get(4).copied(),
        Some("4"),
        "the vif is Connected: {netlist}"
    );
    for (what, o) in [("Dom0 -> A", &dom0_to_a), ("Dom0 -> B", &dom0_to_b)] {
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && s.contains("3 received"),
            "{what}: {s}{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let mut want = vec![format!("vif{da}.0"), format!("vif{db}.0")];
    want.sort();
    let mut got = ports_before.clone();
    got.sort();
    assert_eq!(got, want, "each vif's TAP is a port of the bridge");
    assert!(
        ports_after.is_empty(),
        "xl destroy removes the bridge ports: {ports_after:?}"
    );
    assert!(!tap_a.status.success(), "xl destroy removes the TAP");
    Ok(())
}

#[test]
fn test_pv_guests_iperf3_both_directions_and_1gib_curl_download_checksum() -> Result<()> {
    // Arrange
    need("iperf3", "iperf3")?;
    need("curl", "curl")?;
    need("python3", "python3")?;
    need("ss", "iproute2")?;
    let host = dom0("pvnet-tcp-")?;
    let ns = Netns::unique("xsn", "t")?;
    let br = bridge_name("xb", "t")?;
    make_bridge(&ns, &br, "10.77.0.1/24")?;
    let _backendd = start_backendd_in(&host, &ns, &[])?;
    let _iperf = spawn_in(&ns, "iperf3", &["-s", "-B", "10.77.0.1", "-p", "5201"])?;
    let www = host.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    let big = www.join("big.bin");
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", big.display()),
            "bs=1M",
            "count=1024",
            "status=none",
        ],
    )?;
    let want = run("sha256sum", &[big.to_str().expect("utf-8")])?;
    let want = want.split_whitespace().next().expect("a sum").to_owned();
    let _http = spawn_in(
        &ns,
        "python3",
        &[
            "-m",
            "http.server",
            "8080",
            "--bind",
            "10.77.0.1",
            "--directory",
            www.to_str().expect("utf-8"),
        ],
    )?;
    wait_listen(&ns, 5201)?;
    wait_listen(&ns, 8080)?;
    let flag = host.dir.path().join("done");
    let wait_flag = format!(
        "i=0; while [ ! -e {f} ] && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done\n",
        f = flag.display()
    );
    let sum = host.dir.path().join("guest.sha256");
    let mut guests = Guests::new(&host);
    let pid = std::process::id();
    let (a, b) = (format!("tcpa{pid}"), format!("tcpb{pid}"));

    // Act
    // (iperf3's server re-opens its listening socket between tests: the
    // clients pause a second between runs.)
    guests.create(
        &b,
        &[vif(13, &br, "10.77.0.3")],
        &format!("#!/bin/sh\niperf3 -s -D -B 10.77.0.3 -p 5202\necho guest-ready\n{wait_flag}echo guest-init-ok\n"),
    )?;
    guests.wait_log(&b, "guest-ready", GUEST_RUN)?;
    guests.create(
        &a,
        &[vif(12, &br, "10.77.0.2")],
        &format!(
            "#!/bin/sh\nset -e\n\
             iperf3 -c 10.77.0.1 -p 5201 -t 3\n\
             sleep 1\n\
             iperf3 -c 10.77.0.1 -p 5201 -t 3 -R\n\
             sleep 1\n\
             iperf3 -c 10.77.0.3 -p 5202 -t 3\n\
             sleep 1\n\
             iperf3 -c 10.77.0.3 -p 5202 -t 3 -R\n\
             echo iperf-done\n\
             curl -sS --fail http://10.77.0.1:8080/big.bin | sha256sum > {sum}\n\
             echo curl-done\n\
             touch {flag}\necho guest-init-ok\n",
            sum = sum.display(),
            flag = flag.display()
        ),
    )?;
    let log_a = guests.wait_log(&a, "guest-init-ok", Duration::from_secs(300))?;
    guests.wait_log(&b, "guest-init-ok", GUEST_RUN)?;

    // Assert
    let rates = iperf_receiver_gbps(&log_a);
    eprintln!("iperf3 receiver Gbit/s (A->Dom0, Dom0->A, A->B, B->A): {rates:?}");
    assert_eq!(rates.len(), 4, "four iperf3 runs:\n{log_a}");
    assert!(
        rates.iter().all(|&r| r > 0.01),
        "every direction carries data: {rates:?}\n{log_a}"
    );
    let got = std::fs::read_to_string(&sum).expect("the guest's checksum");
    assert_eq!(
        got.split_whitespace().next(),
        Some(want.as_str()),
        "the 1 GiB download arrives intact"
    );
    Ok(())
}

/// `(queue, tx_packets, rx_packets)` of each `pvnet stats devid=0` line.
fn queue_counters(log: &str) -> Vec<(u32, u64, u64)> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("pvnet stats devid=0 "))
        .filter_map(|rest| {
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some((
                u32::try_from(field("queue")?).ok()?,
                field("tx_packets")?,
                field("rx_packets")?,
            ))
        })
        .collect()
}

#[test]
fn test_pv_guest_pumps_every_queue_sixteen_iperf3_flows_use_more_than_one() -> Result<()> {
    // Arrange: backendd offers 2 queues per vif (its default); the guest
    // takes all of them. 16 flows in each direction spread over the queues
    // by flow hash (all on one queue of two: probability 2^-15).
    need("iperf3", "iperf3")?;
    need("ss", "iproute2")?;
    let host = dom0("pvnet-mq-")?;
    let ns = Netns::unique("xsn", "q")?;
    let br = bridge_name("xb", "q")?;
    make_bridge(&ns, &br, "10.77.0.1/24")?;
    let _backendd = start_backendd_in(&host, &ns, &[])?;
    let _iperf = spawn_in(&ns, "iperf3", &["-s", "-B", "10.77.0.1", "-p", "5203"])?;
    wait_listen(&ns, 5203)?;
    let mut guests = Guests::new(&host);
    let a = format!("mqa{}", std::process::id());

    // Act: 16 parallel flows each way; the counters are written when the
    // pumps stop (after init).
    guests.create(
        &a,
        &[vif(22, &br, "10.77.0.2")],
        "#!/bin/sh\nset -e\n\
         iperf3 -c 10.77.0.1 -p 5203 -t 2 -P 16\n\
         sleep 1\n\
         iperf3 -c 10.77.0.1 -p 5203 -t 2 -P 16 -R\n\
         echo guest-init-ok\n",
    )?;
    let log = guests.wait_log(&a, "pvnet stats devid=0 queue=1 ", Duration::from_secs(120))?;

    // Assert
    assert!(
        log.contains("queues=2"),
        "the guest took both queues:\n{log}"
    );
    let sums: String = log
        .lines()
        .filter(|l| l.contains("[SUM]"))
        .map(|l| format!("{l}\n"))
        .collect();
    let rates = iperf_receiver_gbps(&sums);
    assert_eq!(rates.len(), 2, "two iperf3 runs of 16 flows:\n{log}");
    assert!(
        rates.iter().all(|&r| r > 0.01),
        "both directions carry data: {rates:?}\n{log}"
    );
    let qs = queue_counters(&log);
    assert_eq!(qs.len(), 2, "one stats line per queue:\n{log}");
    // A flow carries thousands of frames in 2 s; a few stray ones (ARP,
    // the iperf3 control connection) do not count.
    let busy_tx = qs.iter().filter(|q| q.1 > 1000).count();
    let busy_rx = qs.iter().filter(|q| q.2 > 1000).count();
    assert_eq!(busy_tx, 2, "both queues transmit: {qs:?}\n{log}");
    assert_eq!(busy_rx, 2, "both queues receive: {qs:?}\n{log}");
    Ok(())
}
