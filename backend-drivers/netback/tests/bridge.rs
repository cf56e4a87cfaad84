//! The vif's TAP and bridge, as Xen's `vif-bridge` script makes them: a
//! missing `xenbr0` is created, the TAP `vif<domid>.<devid>` becomes its
//! port with Xen's backend MAC, and dropping the backend removes the TAP
//! and the port. Runs in a private network namespace of the test thread
//! (`unshare(CLONE_NEWNET)`), so the host's `xenbr0`, if any, is never
//! touched. Needs root and iproute2.

use std::process::Command;

use xen_netback::{NetBackend, NetConfig, BACKEND_MAC};

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn test_netback_creates_missing_xenbr0_and_removes_its_port_on_drop() {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(uid, 0, "this test needs root (network namespaces, TAP)");
    std::thread::spawn(|| {
        // Arrange: this thread (and the ip commands it runs) in a new namespace.
        // SAFETY: unshare(2) with CLONE_NEWNET affects only the calling thread.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare(CLONE_NEWNET)");
        assert!(!xen_netback::tap::exists("xenbr0"));

        // Act
        let be = NetBackend::new(NetConfig::new(7, 0)).expect("vif up");
        let ports = ip(&["-o", "link", "show", "master", "xenbr0"]);
        let tap = ip(&["-o", "link", "show", "vif7.0"]);
        drop(be);
        let after = ip(&["-o", "link", "show", "master", "xenbr0"]);

        // Assert
        assert!(xen_netback::tap::exists("xenbr0"), "xenbr0 was created");
        assert!(
            ports.contains("vif7.0"),
            "the TAP is a port of xenbr0: {ports}"
        );
        let mac = BACKEND_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert!(tap.contains(&mac) && tap.contains("mtu 1500"), "{tap}");
        assert!(
            after.trim().is_empty(),
            "dropping the backend removes the port: {after}"
        );
        assert!(!xen_netback::tap::exists("vif7.0"));
    })
    .join()
    .expect("the namespace thread");
}

#[test]
fn test_netback_attaches_to_an_existing_vif_tap_and_keeps_its_bridge_port() {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(uid, 0, "this test needs root (network namespaces, TAP)");
    std::thread::spawn(|| {
        // Arrange: a vif whose TAP another holder still has (a restarted
        // service finding its predecessor's device).
        // SAFETY: unshare(2) with CLONE_NEWNET affects only the calling thread.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare(CLONE_NEWNET)");
        let old = NetBackend::new(NetConfig::new(8, 1)).expect("vif up");

        // Act
        let new = NetBackend::new(NetConfig::new(8, 1)).expect("attaches to the TAP");
        let ports = ip(&["-o", "link", "show", "master", "xenbr0"]);
        drop(old);
        let still = xen_netback::tap::exists("vif8.1");
        let ports_after = ip(&["-o", "link", "show", "master", "xenbr0"]);
        let link = ip(&["-o", "link", "show", "vif8.1"]);
        drop(new);

        // Assert
        assert!(ports.contains("vif8.1"), "{ports}");
        assert!(still, "the TAP stays while the new backend holds it");
        assert!(
            ports_after.contains("vif8.1"),
            "still a port: {ports_after}"
        );
        assert!(link.contains("NO-CARRIER"), "no frontend yet: {link}");
        assert!(!xen_netback::tap::exists("vif8.1"));
    })
    .join()
    .expect("the namespace thread");
}
