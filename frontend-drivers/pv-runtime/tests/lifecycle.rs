//! xl-style lifecycle of a PV runtime process: create, pause/unpause,
//! shutdown with a reason observed by the guest and the toolstack, destroy
//! (kills the runtime, frees its memory), a crashed runtime reported.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use xen_abi::xen::VIRQ_DOM_EXC;
use xen_shim_proto::protocol::{DomainState, ShutdownReason};
use xen_testhost::shim::{proc_state, wait_port, GuestProcess, ShimDom0, STEP};

/// Starts an idle `xen-pvguest` (an empty command line) as a new domain of `d`.
fn idle_guest(d: &ShimDom0) -> GuestProcess {
    d.guest(Path::new(env!("CARGO_BIN_EXE_xen-pvguest")), &[])
        .expect("the runtime process starts")
}

fn wait_proc_state(pid: u32, want: impl Fn(char) -> bool, what: &str) {
    let deadline = Instant::now() + STEP;
    loop {
        let st = proc_state(pid);
        if st.is_some_and(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} never {what}: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn mem_files(d: &ShimDom0) -> usize {
    std::fs::read_dir(d.daemon.mem_dir())
        .map(|r| r.count())
        .unwrap_or(0)
}

#[test]
fn test_lifecycle_pause_unpause_stops_and_resumes_runtime() {
    // Arrange
    let d = ShimDom0::start("pause").expect("the private shim starts");
    let mut g = idle_guest(&d);
    g.expect("idle running", STEP).expect("the guest runs");
    let pid = g.pid();

    // Act / Assert: pause stops the process, unpause resumes it.
    d.control.pause_domain(g.domid()).expect("pause");
    wait_proc_state(pid, |c| c == 'T' || c == 't', "stopped");
    let info = d.info(g.domid()).expect("domain exists");
    assert_eq!(info.state, DomainState::Paused);
    assert!(info.flags.contains('p'), "xl flags {:?}", info.flags);

    d.control.unpause_domain(g.domid()).expect("unpause");
    wait_proc_state(pid, |c| c != 'T' && c != 't', "resumed");
    let info = d.info(g.domid()).expect("domain exists");
    assert_eq!(info.state, DomainState::Running);
    assert!(!info.flags.contains('p'), "xl flags {:?}", info.flags);

    // The resumed runtime still answers: a shutdown request is handled.
    d.control
        .shutdown_domain(g.domid(), ShutdownReason::Poweroff)
        .expect("shutdown");
    g.expect("pvguest shutdown", STEP)
        .expect("the resumed guest handles the request");
}

#[test]
fn test_lifecycle_shutdown_reason_observed_by_guest_and_dom0() {
    // Arrange
    let d = ShimDom0::start("shutdown").expect("the private shim starts");
    let virq = d.evtchn.bind_virq(VIRQ_DOM_EXC).expect("bind VIRQ_DOM_EXC");
    let mut g = idle_guest(&d);
    g.expect("idle running", STEP).expect("the guest runs");
    // Drain what the creation raised.
    let _ = d.evtchn.try_pending();
    let _ = d.evtchn.unmask(virq);

    // Act
    d.control
        .shutdown_domain(g.domid(), ShutdownReason::Reboot)
        .expect("shutdown");

    // Assert: the guest saw the reason, reported it and exited cleanly; Dom0
    // got VIRQ_DOM_EXC and the domain's state carries the reason.
    let line = g.expect("pvguest shutdown", STEP).expect("shutdown line");
    assert_eq!(
        line.fields.get("reason").map(String::as_str),
        Some("reboot")
    );
    let st = g.wait_exit(STEP).expect("wait").expect("the runtime exits");
    assert!(st.success(), "runtime exit status {st:?}");
    wait_port(&d.evtchn, virq, STEP, "VIRQ_DOM_EXC").expect("VIRQ_DOM_EXC fired");
    d.wait_state(g.domid(), "shutdown(reboot)", |s| {
        s == Some(&DomainState::Shutdown {
            reason: ShutdownReason::Reboot,
        })
    })
    .expect("the domain reaches the state");
    let info = d.info(g.domid()).expect("domain kept until destroyed");
    assert!(info.flags.contains('s'), "xl flags {:?}", info.flags);
}

#[test]
fn test_lifecycle_destroy_kills_runtime_and_frees_memory() {
    // Arrange
    let d = ShimDom0::start("destroy").expect("the private shim starts");
    let virq = d.evtchn.bind_virq(VIRQ_DOM_EXC).expect("bind VIRQ_DOM_EXC");
    let before = mem_files(&d);
    let mut g = idle_guest(&d);
    g.expect("idle running", STEP).expect("the guest runs");
    assert!(mem_files(&d) > before, "the domain's memory file exists");
    let _ = d.evtchn.try_pending();
    let _ = d.evtchn.unmask(virq);

    // Act
    let st = g.destroy().expect("destroy");

    // Assert: killed (not a clean exit), gone from the list, its files gone,
    // Dom0 told.
    assert_eq!(st.signal(), Some(libc::SIGKILL), "runtime status {st:?}");
    assert!(d.info(g.domid()).is_none(), "domain still listed");
    let listed = d.control.list_domains().expect("list");
    assert!(listed.iter().all(|i| i.domid != g.domid()));
    assert_eq!(mem_files(&d), before, "memory files left behind");
    wait_port(&d.evtchn, virq, STEP, "VIRQ_DOM_EXC").expect("VIRQ_DOM_EXC fired");
}

#[test]
fn test_lifecycle_runtime_killed_is_reported_crashed() {
    // Arrange
    let d = ShimDom0::start("crash").expect("the private shim starts");
    let mut g = idle_guest(&d);
    g.expect("idle running", STEP).expect("the guest runs");

    // Act: the runtime dies without SCHEDOP_shutdown.
    // SAFETY: kill(2) on the pid of our own child process.
    let r = unsafe { libc::kill(g.pid() as i32, libc::SIGKILL) };
    assert_eq!(r, 0);

    // Assert
    d.wait_state(g.domid(), "crashed", |s| {
        matches!(
            s,
            Some(DomainState::Crashed)
                | Some(DomainState::Shutdown {
                    reason: ShutdownReason::Crash
                })
        )
    })
    .expect("the domain reaches the state");
}

#[test]
fn test_lifecycle_create_destroy_cycles_leave_no_domains_or_files() {
    // Arrange
    let d = ShimDom0::start("cycles").expect("the private shim starts");
    let before = mem_files(&d);

    // Act: a few full create → attach → destroy cycles.
    for _ in 0..5 {
        let mut g = idle_guest(&d);
        g.expect("idle running", STEP).expect("the guest runs");
        g.destroy().expect("destroy");
    }

    // Assert: only Dom0 is left.
    let listed = d.control.list_domains().expect("list");
    assert_eq!(listed.len(), 1, "domains left: {listed:?}");
    assert_eq!(mem_files(&d), before);
}
