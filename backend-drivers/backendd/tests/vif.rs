//! backendd's `vif` type (xen-netback) through xenstore, as a frontend
//! closes and restarts: a private shim daemon and xenstored (threads of
//! this process), the service with the real `VifFactory`, and a guest
//! domain attached in this process whose test code plays netfront (it
//! grants the rings and rx pages, publishes the netif keys and its state).
//! The vif's TAP carrier is off until the frontend connects, on while it
//! is connected, off once it closes; a frontend that comes back through
//! Initialising gets InitWait, connects fresh rings, and the carrier is on
//! again; a frontend that corrupts its ring fails the device (Closing) and
//! the carrier goes off.
//!
//! The test thread and the service run in a private network namespace
//! (`unshare(CLONE_NEWNET)`), where the vif's default bridge `xenbr0` is
//! created; nothing host-wide is touched. Needs root and iproute2.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::netif::*;
use xen_backendd::vif::VifFactory;
use xen_front_platform::{Platform, SharedPages};
use xen_pvguest::runtime::Runtime;
use xen_ring::{FrontRing, SharedRing};
use xen_shim_proto::protocol::DomainConfig;
use xen_testhost::shim::{unique_name, ShimDaemon};
use xenstore_client::{Client, XsOps};
use zerocopy::IntoBytes;

mod common;
use common::{Backendd, Xenstored};

const TIMEOUT: Duration = Duration::from_secs(15);
type TxSlot = [u8; 12];
type TxRsp = [u8; 4];
type RxSlot = [u8; 8];

/// Everything the test needs; dropped in reverse order.
struct World {
    _svc: Backendd,
    xs: Client,
    rt: Runtime,
    _xsd: Xenstored,
    _shim: ShimDaemon,
}

impl World {
    /// Starts everything; the service thread is spawned from the calling
    /// thread, so it (and its device threads) share its network namespace.
    fn start(tag: &str) -> Self {
        let shim = ShimDaemon::start(tag).expect("shim daemon");
        let control = shim.control().expect("control");
        let created = control
            .create_domain(&DomainConfig::pv(&unique_name(tag), 32))
            .expect("create the guest domain");
        let rt = Runtime::start_with(shim.socket(), created.domid, &created.token)
            .expect("runtime attaches");
        let xsd = Xenstored::start("backendd-vif-");
        let xs = Client::connect_path(&xsd.socket).expect("xenstore");
        let svc_xs = Arc::new(Client::connect_path(&xsd.socket).expect("xenstore"));
        let svc = Backendd::start(
            svc_xs,
            Duration::from_millis(20),
            vec![Arc::new(VifFactory::new(shim.socket().to_path_buf()))],
        );
        Self {
            _svc: svc,
            xs,
            rt,
            _xsd: xsd,
            _shim: shim,
        }
    }

    fn domid(&self) -> u16 {
        self.rt.domid()
    }

    fn be(&self) -> String {
        format!("/local/domain/0/backend/vif/{}/0", self.domid())
    }

    fn fe(&self) -> String {
        format!("/local/domain/{}/device/vif/0", self.domid())
    }

    fn tap(&self) -> String {
        format!("vif{}.0", self.domid())
    }

    /// The toolstack's nodes (what `xl create` writes for a vif).
    fn add_vif(&self) {
        let (be, fe) = (self.be(), self.fe());
        let domid = self.domid().to_string();
        self.xs
            .transaction(|tx| {
                tx.write(&format!("{fe}/backend"), &be)?;
                tx.write(&format!("{fe}/backend-id"), "0")?;
                tx.write(&format!("{fe}/handle"), "0")?;
                tx.write(&format!("{fe}/mac"), "00:16:3e:00:00:01")?;
                tx.write(&format!("{fe}/state"), "1")?;
                tx.write(&format!("{be}/frontend"), &fe)?;
                tx.write(&format!("{be}/frontend-id"), &domid)?;
                tx.write(&format!("{be}/handle"), "0")?;
                tx.write(&format!("{be}/mac"), "00:16:3e:00:00:01")?;
                tx.write(&format!("{be}/online"), "1")?;
                tx.write(&format!("{be}/state"), "1")?;
                Ok(())
            })
            .expect("toolstack nodes");
    }

    fn set_fe_state(&self, s: &str) {
        self.xs
            .write(&format!("{}/state", self.fe()), s)
            .expect("frontend state");
    }

    fn wait_be_state(&self, want: &str) {
        let deadline = Instant::now() + TIMEOUT;
        let p = format!("{}/state", self.be());
        loop {
            let v = self
                .xs
                .read_opt(&p)
                .expect("read")
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            if v.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backend state {v:?}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `ip -o link show dev IF` in this thread's namespace.
fn link(ifname: &str) -> String {
    let o = Command::new("ip")
        .args(["-o", "link", "show", "dev", ifname])
        .output()
        .expect("run ip (iproute2)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits until the link of `ifname` shows `flag`; the last output.
fn wait_link(ifname: &str, flag: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let l = link(ifname);
        if l.contains(flag) || Instant::now() >= deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The test's netfront: a tx and an rx ring, 16 posted rx pages, one port.
struct Front {
    tx_page: SharedPages,
    tx_ref: grant_ref_t,
    rx_ref: grant_ref_t,
    port: u32,
    _tx: FrontRing<TxSlot, TxRsp>,
    _rx: FrontRing<RxSlot, RxSlot>,
    _rx_pages: SharedPages,
}

fn ring<Q: xen_ring::RingEntry, R: xen_ring::RingEntry>(p: &SharedPages) -> FrontRing<Q, R> {
    // SAFETY: the page stays allocated for the life of the test process
    // (never freed) and only this FrontRing touches it in the guest.
    let mem = unsafe { SharedRing::new(p.as_ptr(), p.len()) }.expect("ring memory");
    FrontRing::init(mem).expect("front ring")
}

impl Front {
    fn new(rt: &Runtime) -> Self {
        let p = rt.platform();
        let grant = |pages: &SharedPages, i: usize| {
            p.grant_access(0, pages.gfn(i).expect("gfn"), false)
                .expect("grant")
        };
        let tx_page = p.alloc_pages(1).expect("tx ring");
        let rx_page = p.alloc_pages(1).expect("rx ring");
        let (tx_ref, rx_ref) = (grant(&tx_page, 0), grant(&rx_page, 0));
        let rx_pages = p.alloc_pages(16).expect("rx pages");
        let mut rx: FrontRing<RxSlot, RxSlot> = ring(&rx_page);
        for i in 0..16 {
            let r = netif_rx_request {
                id: i as u16,
                pad: 0,
                gref: grant(&rx_pages, i),
            };
            let mut s = [0u8; 8];
            s.copy_from_slice(r.as_bytes());
            rx.push_request(&s).expect("rx slot");
        }
        rx.publish_requests();
        Self {
            _tx: ring(&tx_page),
            tx_page,
            tx_ref,
            rx_ref,
            port: p.evtchn_alloc_unbound(0).expect("port"),
            _rx: rx,
            _rx_pages: rx_pages,
        }
    }

    /// Publishes the rings and switches to `state` (Linux netfront goes
    /// straight to Connected).
    fn publish(&self, w: &World, state: &str) {
        let fe = w.fe();
        w.xs.transaction(|tx| {
            tx.write(&format!("{fe}/tx-ring-ref"), self.tx_ref.to_string())?;
            tx.write(&format!("{fe}/rx-ring-ref"), self.rx_ref.to_string())?;
            tx.write(&format!("{fe}/event-channel"), self.port.to_string())?;
            tx.write(&format!("{fe}/request-rx-copy"), "1")?;
            tx.write(&format!("{fe}/feature-rx-notify"), "1")?;
            tx.write(&format!("{fe}/feature-sg"), "1")?;
            tx.write(&format!("{fe}/state"), state)?;
            Ok(())
        })
        .expect("frontend nodes");
    }
}

#[test]
fn test_vif_carrier_follows_the_frontend_through_close_restart_and_failure() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "this test runs the shim daemon and TAPs: needs root"
    );
    std::thread::spawn(|| {
        // Arrange: this thread, the service and its devices in a new
        // network namespace.
        // SAFETY: unshare(2) with CLONE_NEWNET affects only the calling thread.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare(CLONE_NEWNET)");
        let w = World::start("bkd-vif");
        w.add_vif();
        w.wait_be_state("2");
        let tap = w.tap();
        let probed = wait_link(&tap, "NO-CARRIER");

        // Act
        let a = Front::new(&w.rt);
        a.publish(&w, "4");
        w.wait_be_state("4");
        let connected = wait_link(&tap, "LOWER_UP");
        // The frontend closes.
        w.set_fe_state("5");
        w.wait_be_state("5");
        w.set_fe_state("6");
        w.wait_be_state("6");
        let closed = wait_link(&tap, "NO-CARRIER");
        // It restarts: Initialising, then fresh rings.
        w.set_fe_state("1");
        w.wait_be_state("2");
        let b = Front::new(&w.rt);
        b.publish(&w, "4");
        w.wait_be_state("4");
        let restarted = wait_link(&tap, "LOWER_UP");
        // It corrupts its tx ring: req_prod far past the ring.
        b.tx_page
            .write(0, &1000u32.to_le_bytes())
            .expect("write req_prod");
        w.rt.platform().evtchn_notify(b.port).expect("notify");
        w.wait_be_state("5");
        let failed = wait_link(&tap, "NO-CARRIER");

        // Assert
        assert!(
            probed.contains("NO-CARRIER") && probed.contains("master xenbr0"),
            "the probed vif is a bridge port without carrier: {probed}"
        );
        assert!(connected.contains("LOWER_UP"), "connected: {connected}");
        assert!(closed.contains("NO-CARRIER"), "after close: {closed}");
        assert!(restarted.contains("LOWER_UP"), "restarted: {restarted}");
        assert!(failed.contains("NO-CARRIER"), "failed: {failed}");
        assert_ne!(a.tx_ref, b.tx_ref, "the restart used fresh rings");
    })
    .join()
    .expect("the namespace thread");
}
