//! Xenstore end to end on the shim: our `xenstored` (in a thread, on a
//! private socket, pointed at a private `xen-shimd`) serves PV guest
//! processes over their `xenstore_domain_interface` rings, mapped through the
//! shim's grant table and signalled through its event channels, while the
//! test plays the toolstack and Dom0 over the socket (`xenstore-client`).
//!
//! - a guest reads and writes its nodes, lists, runs a transaction, is
//!   refused a Dom0-only node, uses the xenbus state helpers, and receives a
//!   watch event when Dom0 writes; Dom0 sees the guest's writes; destroying
//!   the domain through the shim fires `@releaseDomain` and the domain is no
//!   longer introduced;
//! - a hostile guest that scribbles its ring's index costs only its own
//!   connection (Xen's error state); Dom0 and another guest keep being
//!   served, and the hostile guest recovers by the reconnection protocol;
//! - `XS_INTRODUCE` is checked with the shim before it is acknowledged:
//!   unknown domain `ENOENT`, wrong store frame or port `EINVAL`, and no
//!   shim at all `EINVAL` while the socket keeps working.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pvguest_demos::xsdemo::{DOM0_SECRET, TEST_DEVICE};
use xen_pvguest::line::Line;
use xen_shim_proto::protocol::DomainConfig;
use xen_testhost::shim::{unique_name, GuestProcess, ShimDom0 as Dom0, MEMORY_MIB, STEP};
use xenstore_client::{Client, Perm, XsError, XsOps, PERM_NONE, PERM_READ};

/// Our xenstored in a thread of the test process ([`xen_testhost::Xenstored`]),
/// on a private socket, serving domains' rings through the shim at `shim`.
struct Xenstored {
    dir: PathBuf,
    xsd: Option<xen_testhost::Xenstored>,
}

impl Xenstored {
    fn start(shim: &Path) -> Xenstored {
        let dir = std::env::temp_dir().join(unique_name("xenstored-e2e"));
        std::fs::create_dir_all(&dir).expect("xenstored's directory");
        let xsd =
            xen_testhost::Xenstored::start(&dir.join("socket"), shim).expect("xenstored listens");
        Xenstored {
            dir,
            xsd: Some(xsd),
        }
    }

    fn client(&self) -> Client {
        let xsd = self.xsd.as_ref().expect("xenstored runs until dropped");
        Client::connect_path(xsd.socket()).expect("Dom0 connects to xenstored")
    }
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        drop(self.xsd.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shim and our xenstored. On drop xenstored goes first and the shim
/// daemon is given a moment to process its handles' disconnection (it
/// writes its state file then), so that the shim's directories can be
/// removed for good.
struct Stack {
    xsd: Option<Xenstored>,
    d: Dom0,
}

impl Stack {
    fn start(tag: &str) -> Stack {
        let d = Dom0::start(tag).expect("the private shim starts");
        let xsd = Xenstored::start(d.daemon.socket());
        Stack { xsd: Some(xsd), d }
    }

    fn xsd(&self) -> &Xenstored {
        self.xsd
            .as_ref()
            .expect("xenstored runs until the stack drops")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        drop(self.xsd.take());
        for _ in 0..5 {
            let _ = self.d.control.ping();
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn perm(domid: u16, p: u8) -> Perm {
    Perm::new(domid, p)
}

/// What the toolstack does for a new domain: its home and test device,
/// then `XS_INTRODUCE` with the store frame and port the shim's domain
/// builder put in `start_info`.
fn toolstack_introduce(d: &Dom0, xs: &Client, domid: u16) {
    let info = d.control.domain_info(domid).expect("the domain exists");
    let home = format!("/local/domain/{domid}");
    xs.write(&format!("{home}/domid"), domid.to_string())
        .expect("write domid");
    xs.set_perms(&home, &[perm(0, PERM_NONE), perm(domid, PERM_READ)])
        .expect("home perms");
    xs.set_perms(
        &format!("{home}/domid"),
        &[perm(0, PERM_NONE), perm(domid, PERM_READ)],
    )
    .expect("domid perms");
    for dir in ["data", TEST_DEVICE] {
        xs.mkdir(&format!("{home}/{dir}")).expect("mkdir");
        xs.set_perms(&format!("{home}/{dir}"), &[perm(domid, PERM_NONE)])
            .expect("guest-owned dir");
    }
    xs.mkdir(&format!("{home}/control")).expect("mkdir control");
    xs.set_perms(
        &format!("{home}/control"),
        &[perm(0, PERM_NONE), perm(domid, PERM_READ)],
    )
    .expect("control perms");
    let backend = format!("/local/domain/0/backend/vtest/{domid}/0");
    xs.write(&format!("{backend}/state"), "2")
        .expect("backend state");
    xs.set_perms(&backend, &[perm(0, PERM_NONE), perm(domid, PERM_READ)])
        .expect("backend perms");
    xs.set_perms(
        &format!("{backend}/state"),
        &[perm(0, PERM_NONE), perm(domid, PERM_READ)],
    )
    .expect("backend state perms");
    let dev = format!("{home}/{TEST_DEVICE}");
    xs.write(&format!("{dev}/backend"), &backend)
        .expect("device backend");
    xs.write(&format!("{dev}/backend-id"), "0")
        .expect("device backend-id");
    xs.write(&format!("{dev}/state"), "1")
        .expect("device state");
    xs.write(DOM0_SECRET, "s3cr3t").expect("secret");
    xs.set_perms(DOM0_SECRET, &[perm(0, PERM_NONE)])
        .expect("secret perms");
    xs.introduce(domid, info.layout.xenstore_gfn(), info.store_port)
        .expect("XS_INTRODUCE");
}

fn guest(d: &Dom0, demo: &str) -> GuestProcess {
    common::demo(d, &["--demo", demo, "--stay", "--timeout-secs", "60"])
}

fn read(xs: &Client, path: &str) -> String {
    String::from_utf8_lossy(&xs.read(path).expect(path)).into_owned()
}

fn field(l: &Line, k: &str) -> String {
    l.fields.get(k).cloned().unwrap_or_default()
}

/// Drives a guest running the xenstore demo to its end.
fn run_demo(g: &mut GuestProcess, xs: &Client) {
    let domid = g.domid();
    let home = format!("/local/domain/{domid}");

    let l = g
        .expect("xsdemo home", STEP)
        .expect("the guest reads its home");
    assert_eq!(l.num::<u16>("domid"), Some(domid));

    let l = g.expect("xsdemo wrote", STEP).expect("the guest writes");
    assert_eq!(field(&l, "children"), "greeting,sub");
    assert_eq!(
        read(xs, &format!("{home}/data/greeting")),
        "hello-from-domU"
    );
    let perms = xs
        .get_perms(&format!("{home}/data/greeting"))
        .expect("perms");
    assert_eq!(perms[0].domid, domid, "the guest owns what it created");

    g.expect("xsdemo transaction", STEP)
        .expect("the transaction commits");
    assert_eq!(read(xs, &format!("{home}/data/tx-a")), "1");
    assert_eq!(read(xs, &format!("{home}/data/tx-b")), "2");

    let l = g.expect("xsdemo denied", STEP).expect("the denial line");
    assert_eq!(field(&l, "read"), "EACCES");
    assert_eq!(field(&l, "write"), "EACCES");
    assert_eq!(read(xs, DOM0_SECRET), "s3cr3t");

    let l = g.expect("xsdemo xenbus", STEP).expect("the xenbus line");
    assert_eq!(
        field(&l, "backend"),
        format!("/local/domain/0/backend/vtest/{domid}/0")
    );
    assert_eq!(field(&l, "backend_state"), "2");
    assert_eq!(field(&l, "switched"), "1");
    assert_eq!(read(xs, &format!("{home}/{TEST_DEVICE}/state")), "4");

    g.expect("xsdemo watching", STEP)
        .expect("the guest watches");
    xs.write(&format!("{home}/control/cmd"), "go")
        .expect("Dom0 writes the command");
    let l = g
        .expect("xsdemo event", STEP)
        .expect("the guest sees Dom0's write");
    assert_eq!(field(&l, "path"), "control/cmd", "a relative watch");
    assert_eq!(field(&l, "value"), "go");
    g.expect("xsdemo done", STEP).expect("the demo ends");
    assert_eq!(read(xs, &format!("{home}/data/done")), "1");
}

fn wait_event(xs: &Client, path: &str) {
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {path} event");
        if let Some(ev) = xs.wait_watch_event(Some(left)).expect("watch events") {
            if ev.path == path {
                return;
            }
        }
    }
}

fn wait_not_introduced(xs: &Client, domid: u16) {
    let deadline = Instant::now() + STEP;
    while xs.is_domain_introduced(domid).expect("is introduced") {
        assert!(Instant::now() < deadline, "domain {domid} still introduced");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn test_xenstore_ring_guest_uses_store_and_destroy_releases_domain() {
    // Arrange
    let stack = Stack::start("xsring");
    let (d, xsd) = (&stack.d, stack.xsd());
    let xs = xsd.client();
    let mut g = guest(d, "xenstore");
    let domid = g.domid();

    // Act / Assert: the toolstack introduces it, the guest uses its store.
    toolstack_introduce(d, &xs, domid);
    assert!(xs.is_domain_introduced(domid).expect("is introduced"));
    run_demo(&mut g, &xs);

    // Act: `xl destroy` through the shim.
    let watcher = xsd.client();
    watcher
        .watch("@releaseDomain", "rel")
        .expect("watch @releaseDomain");
    wait_event(&watcher, "@releaseDomain");
    g.destroy().expect("destroy");

    // Assert: VIRQ_DOM_EXC made xenstored release the domain.
    wait_event(&watcher, "@releaseDomain");
    wait_not_introduced(&xs, domid);
    xs.write("/still", "served").expect("Dom0 still served");
}

#[test]
fn test_xenstore_ring_hostile_guest_costs_only_its_connection() {
    // Arrange
    let stack = Stack::start("xshostile");
    let (d, xsd) = (&stack.d, stack.xsd());
    let xs = xsd.client();
    let mut bad = guest(d, "xenstore-hostile");
    let mut good = guest(d, "xenstore");
    toolstack_introduce(d, &xs, bad.domid());
    toolstack_introduce(d, &xs, good.domid());

    // Act: the hostile guest corrupts its ring.
    bad.expect("xshostile connected", STEP)
        .expect("the hostile guest connects");
    bad.expect("xshostile scribbled", STEP)
        .expect("the hostile guest scribbles");
    let l = bad
        .expect("xshostile error", STEP)
        .expect("xenstored flags the ring");

    // Assert: only that ring is in the error state.
    assert_eq!(
        l.num::<u32>("code"),
        Some(xen_abi::io::xs_wire::XENSTORE_ERROR_RINGIDX)
    );
    xs.write("/still", "alive").expect("Dom0 is served");
    assert_eq!(read(&xs, "/still"), "alive");
    run_demo(&mut good, &xs);
    assert!(xs.is_domain_introduced(bad.domid()).expect("is introduced"));

    // And the hostile guest gets its connection back by reconnecting.
    let l = bad
        .expect("xshostile recovered", STEP)
        .expect("the reconnection works");
    assert_eq!(field(&l, "value"), "1");
    assert_eq!(l.num::<u64>("reconnections"), Some(1));
    assert_eq!(
        read(
            &xs,
            &format!("/local/domain/{}/data/recovered", bad.domid())
        ),
        "1"
    );
}

#[test]
fn test_xenstore_introduce_checked_with_shim_before_ack() {
    // Arrange: a domain without a runtime (its ring page and port exist).
    let stack = Stack::start("xsintro");
    let (d, xsd) = (&stack.d, stack.xsd());
    let xs = xsd.client();
    let created = d
        .control
        .create_domain(&DomainConfig::pv(&unique_name("intro"), MEMORY_MIB))
        .expect("create");
    let info = d.control.domain_info(created.domid).expect("info");
    let gfn = info.layout.xenstore_gfn();
    xs.watch("@introduceDomain", "intro").expect("watch");
    wait_event(&xs, "@introduceDomain");

    // Act / Assert: each bad argument is refused, with no side effect.
    let e = xs.introduce(999, gfn, 1).expect_err("unknown domain");
    assert!(e.is(XsError::Enoent), "{e}");
    let e = xs
        .introduce(created.domid, gfn + 1, info.store_port)
        .expect_err("wrong mfn");
    assert!(e.is(XsError::Einval), "{e}");
    let e = xs
        .introduce(created.domid, gfn, info.store_port + 100)
        .expect_err("port not allocated for Dom0");
    assert!(e.is(XsError::Einval), "{e}");
    assert!(!xs.is_domain_introduced(created.domid).expect("introduced?"));
    assert!(xs.try_watch_event().is_none(), "no @introduceDomain yet");

    // The right arguments: introduced, @introduceDomain, and the ring is
    // served (the page's server_features is published).
    xs.introduce(created.domid, gfn, info.store_port)
        .expect("introduce");
    wait_event(&xs, "@introduceDomain");
    assert!(xs.is_domain_introduced(created.domid).expect("introduced?"));
    let files = d.control.domain_files(created.domid).expect("files");
    let mem = xen_shim_proto::mem::GuestMemory::map(&files.memory, info.layout).expect("map");
    let page = mem.page(gfn).expect("store page");
    let features: u32 = page
        .read_obj(xen_ring::bytes::xs_offsets::SERVER_FEATURES)
        .expect("read");
    assert_eq!(features & 3, 3, "reconnection and error offered");

    // Introduced again (Xen: to recreate the event channel): accepted, the
    // port bound anew, no second @introduceDomain.
    xs.introduce(created.domid, gfn, info.store_port)
        .expect("introduce again");
    assert!(xs.is_domain_introduced(created.domid).expect("introduced?"));
    let st = d
        .control
        .evtchn_status(created.domid, info.store_port)
        .expect("status");
    assert_eq!(
        st.status,
        xen_abi::event_channel::EVTCHNSTAT_interdomain,
        "the store port is bound to xenstored"
    );
    assert!(xs.try_watch_event().is_none(), "no second @introduceDomain");

    // Destroyed: released.
    d.control.destroy_domain(created.domid).expect("destroy");
    wait_not_introduced(&xs, created.domid);
}

#[test]
fn test_xenstore_introduce_without_shim_fails_and_socket_works() {
    // Arrange: xenstored pointed at a shim that does not run.
    let nowhere = std::env::temp_dir()
        .join(unique_name("no-shim"))
        .join("control.sock");
    let xsd = Xenstored::start(&nowhere);
    let xs = xsd.client();

    // Act
    let e = xs.introduce(5, 0x1002, 1).expect_err("no shim");

    // Assert
    assert!(e.is(XsError::Einval), "{e}");
    assert!(!xs.is_domain_introduced(5).expect("introduced?"));
    xs.write("/local/domain/0/name", "Domain-0")
        .expect("the socket side works");
    assert_eq!(read(&xs, "/local/domain/0/name"), "Domain-0");
}
