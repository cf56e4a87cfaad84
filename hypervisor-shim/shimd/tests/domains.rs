//! Domain lifecycle across real processes: create, attach, pause, shutdown,
//! crash, destroy, and resource accounting over many cycles.

mod common;

use std::time::Duration;

use common::{wait_until, Peer, Shimd};
use xen_shim_proto::protocol::{DomainConfig, DomainState, ShutdownReason};

fn proc_state(pid: i32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rfind(')')
        .and_then(|i| s[i + 2..].chars().next())
        .unwrap_or('?')
}

#[test]
fn test_domain_lifecycle_flags_follow_xl() {
    // Arrange
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "lifecycle", 8);
    let flags = |domid| ctl.domain_info(domid).expect("info").flags;

    // Act / Assert
    assert_eq!(flags(d.domid), "-b----", "created, no runtime yet");
    let mut peer = Peer::spawn(&shimd.socket, &d);
    assert_eq!(flags(d.domid), "r-----");
    let list = ctl.list_domains().expect("list");
    assert_eq!(list[0].domid, 0);
    assert_eq!(list[0].name, "Domain-0");
    let me = list.iter().find(|i| i.domid == d.domid).expect("listed");
    assert_eq!((me.memory_mib, me.vcpus, me.pid), (8, 1, Some(peer.pid())));

    ctl.pause_domain(d.domid).expect("pause");
    assert_eq!(flags(d.domid), "--p---");
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(peer.pid()) == 'T'),
        "runtime stopped"
    );
    ctl.unpause_domain(d.domid).expect("unpause");
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(peer.pid()) != 'T'),
        "runtime continued"
    );
    assert_eq!(flags(d.domid), "r-----");

    peer.ok("shutdown 0");
    assert_eq!(
        ctl.domain_info(d.domid).expect("info").state,
        DomainState::Shutdown {
            reason: ShutdownReason::Poweroff
        }
    );
    assert_eq!(flags(d.domid), "---s--");
    peer.ok("exit");
    assert!(peer.wait_exit());
    // The runtime leaving after a shutdown is not a crash.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(flags(d.domid), "---s--");

    ctl.destroy_domain(d.domid).expect("destroy");
    assert!(ctl.domain_info(d.domid).is_err(), "gone");
    assert_eq!(
        shimd
            .mem_files()
            .iter()
            .filter(|f| f.starts_with(&format!("dom{}-", d.domid)))
            .count(),
        0
    );
}

#[test]
fn test_domain_runtime_death_is_a_crash() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "crashy", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);

    peer.kill();

    assert!(wait_until(Duration::from_secs(5), || ctl
        .domain_info(d.domid)
        .expect("info")
        .state
        == DomainState::Crashed));
    assert_eq!(ctl.domain_info(d.domid).expect("info").flags, "----c-");
    // A crash code from the guest is reported the same way.
    let e = shimd.create(&ctl, "crash-code", 4);
    let mut pe = Peer::spawn(&shimd.socket, &e);
    pe.ok("shutdown 3");
    assert_eq!(ctl.domain_info(e.domid).expect("info").flags, "----c-");
}

#[test]
fn test_domain_attach_needs_the_token_and_only_once() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "token", 4);

    let wrong = Peer::try_spawn(&shimd.socket, d.domid, "not-the-token");
    let dom0 = Peer::try_spawn(&shimd.socket, 0, "");
    let _first = Peer::spawn(&shimd.socket, &d);
    let second = Peer::try_spawn(&shimd.socket, d.domid, &d.token);

    assert!(wrong.err().is_some_and(|e| e.contains("wrong token")));
    assert!(dom0.is_err(), "nobody attaches as Dom0");
    assert!(second
        .err()
        .is_some_and(|e| e.contains("already has a runtime")));
}

#[test]
fn test_domain_create_validates_and_never_reuses_domids() {
    let shimd = Shimd::start();
    let ctl = shimd.control();

    let a = shimd.create(&ctl, "a", 4);
    ctl.destroy_domain(a.domid).expect("destroy");
    let b = shimd.create(&ctl, "b", 4);

    assert_eq!(a.domid, 1);
    assert_eq!(b.domid, 2, "domids are not reused until they wrap");
    assert!(
        ctl.create_domain(&DomainConfig::pv("b", 4)).is_err(),
        "duplicate name"
    );
    assert!(
        ctl.create_domain(&DomainConfig::pv("", 4)).is_err(),
        "empty name"
    );
    assert!(ctl.create_domain(&DomainConfig::pv("x/y", 4)).is_err());
    assert!(
        ctl.create_domain(&DomainConfig::pv("zero", 0)).is_err(),
        "no memory"
    );
    let mut many = DomainConfig::pv("vcpus", 4);
    many.vcpus = 33;
    assert!(ctl.create_domain(&many).is_err(), "more than 32 vcpus");
    assert!(ctl.destroy_domain(0).is_err(), "Dom0 stays");
    assert!(ctl.destroy_domain(77).is_err(), "no such domain");
}

/// Xen's suspend and `XEN_DOMCTL_resumedomain`: a guest's
/// `SCHEDOP_shutdown(SHUTDOWN_suspend)` leaves its domain shut down with
/// reason suspend (`xl list`'s `s`); `resume_domain` runs it again in
/// place and tells its runtime (`resumed`); resuming a domain that is not
/// suspended (running, or shut down for another reason) is `EINVAL`.
#[test]
fn test_domain_suspend_then_resume_runs_it_again_in_place() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "suspend-resume", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let info = |domid| ctl.domain_info(domid).expect("info");
    assert!(ctl.resume_domain(d.domid).is_err(), "a running domain");

    peer.ok(&format!("shutdown {}", xen_abi::xen::SHUTDOWN_suspend));
    let i = info(d.domid);
    assert_eq!(
        i.state,
        DomainState::Shutdown {
            reason: ShutdownReason::Suspend
        }
    );
    assert_eq!(i.flags.chars().nth(3), Some('s'), "{}", i.flags);

    ctl.resume_domain(d.domid).expect("resume");
    assert_eq!(info(d.domid).state, DomainState::Running);
    assert!(wait_until(Duration::from_secs(5), || peer
        .ok("events")
        .contains("resumed")));
    assert!(ctl.resume_domain(d.domid).is_err(), "resumed twice");

    // Another shutdown reason is not a suspend: no resume.
    peer.ok(&format!("shutdown {}", xen_abi::xen::SHUTDOWN_poweroff));
    let e = ctl
        .resume_domain(d.domid)
        .expect_err("a powered-off domain");
    assert!(e.to_string().contains("not suspended"), "{e}");
    ctl.destroy_domain(d.domid).expect("destroy");
}
