//! Wrong callers: the runtime refuses to run as a domain without the right
//! token, or without a domid. (Its frontends' distrust of hostile backends
//! is tested with the demos, `tests/pvguest-demos/tests/negative.rs`, and
//! per device in the e2e tests.)

use std::process::{Command, Stdio};

use xen_shim_proto::protocol::DomainConfig;
use xen_testhost::shim::{unique_name, ShimDom0, MEMORY_MIB};

#[test]
fn test_runtime_wrong_token_is_refused() {
    // Arrange
    let d = ShimDom0::start("token").expect("the private shim starts");
    let created = d
        .control
        .create_domain(&DomainConfig::pv(&unique_name("tok"), MEMORY_MIB))
        .expect("create");

    // Act
    let out = Command::new(env!("CARGO_BIN_EXE_xen-pvguest"))
        .env(xen_shim_proto::ENV_SOCKET, d.daemon.socket())
        .env(xen_shim_proto::ENV_DOMID, created.domid.to_string())
        .env(xen_shim_proto::ENV_TOKEN, "not-the-token")
        .stdin(Stdio::null())
        .output()
        .expect("the runtime runs");

    // Assert: exit status 2 (could not attach), no "ready", nothing attached.
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pvguest ready"));
    let info = d.info(created.domid).expect("domain still exists");
    assert_eq!(info.pid, None);
    d.control.destroy_domain(created.domid).expect("destroy");
}

#[test]
fn test_runtime_without_domid_exits_with_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_xen-pvguest"))
        .env_remove(xen_shim_proto::ENV_DOMID)
        .env_remove(xen_shim_proto::ENV_TOKEN)
        .env(xen_shim_proto::ENV_SOCKET, "/nonexistent/xen-shim.sock")
        .stdin(Stdio::null())
        .output()
        .expect("the runtime runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("domid"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
