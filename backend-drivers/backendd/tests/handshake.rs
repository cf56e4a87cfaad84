//! backendd against a real xenstored (in this process, on a private
//! socket), a fake `Backend` and a test frontend that writes the
//! frontend's nodes the way a guest's xenbus driver does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xen_backendd::backend::FrontendReader;
use xen_backendd::{Backend, BackendError, BackendFactory, DeviceInfo};
use xenstore_client::{Client, XsOps};

mod common;
use common::{Backendd, Xenstored};

const TIMEOUT: Duration = Duration::from_secs(10);

/// What the fake backends did, per device id.
#[derive(Default, Clone)]
struct Log(Arc<Mutex<HashMap<u32, Vec<String>>>>);

impl Log {
    fn push(&self, devid: u32, what: String) {
        self.0.lock().unwrap().entry(devid).or_default().push(what);
    }
    fn get(&self, devid: u32) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .get(&devid)
            .cloned()
            .unwrap_or_default()
    }
}

struct FakeBackend {
    devid: u32,
    log: Log,
    panic_on_connect: bool,
}

impl Backend for FakeBackend {
    fn advertise(&mut self) -> Result<Vec<(String, String)>, BackendError> {
        self.log.push(self.devid, "advertise".into());
        Ok(vec![("feature-flush-cache".into(), "1".into())])
    }

    fn connect(&mut self, fe: FrontendReader<'_>) -> Result<Vec<(String, String)>, BackendError> {
        if self.panic_on_connect {
            panic!("fake backend panics on connect");
        }
        let ring = fe("ring-ref").ok_or_else(|| BackendError::Frontend("no ring-ref".into()))?;
        let port =
            fe("event-channel").ok_or_else(|| BackendError::Frontend("no event-channel".into()))?;
        self.log.push(
            self.devid,
            format!("connect ring-ref={ring} event-channel={port}"),
        );
        Ok(vec![("sectors".into(), "2048".into())])
    }

    fn disconnect(&mut self) {
        self.log.push(self.devid, "disconnect".into());
    }
}

struct FakeFactory {
    log: Log,
    panic_devid: Option<u32>,
}

impl BackendFactory for FakeFactory {
    fn device_type(&self) -> &str {
        "vbd"
    }

    fn create(&self, info: &DeviceInfo) -> Result<Box<dyn Backend>, BackendError> {
        if info.nodes.get("params").map(String::as_str) == Some("bad") {
            return Err(BackendError::Config("params is bad".into()));
        }
        self.log.push(
            info.devid,
            format!("create params={:?}", info.nodes.get("params")),
        );
        Ok(Box::new(FakeBackend {
            devid: info.devid,
            log: self.log.clone(),
            panic_on_connect: self.panic_devid == Some(info.devid),
        }))
    }
}

/// The service in a thread; stopped on drop.
fn start_backendd(xsd: &Xenstored, factory: FakeFactory) -> Backendd {
    Backendd::start(
        Arc::new(xsd.client()),
        Duration::from_millis(50),
        vec![Arc::new(factory)],
    )
}

fn be_path(domid: u16, devid: u32) -> String {
    format!("/local/domain/0/backend/vbd/{domid}/{devid}")
}

fn fe_path(domid: u16, devid: u32) -> String {
    format!("/local/domain/{domid}/device/vbd/{devid}")
}

/// Writes the toolstack's nodes of one vbd (as libxl does, in a
/// transaction).
fn toolstack_add(xs: &Client, domid: u16, devid: u32, params: &str) {
    let (be, fe) = (be_path(domid, devid), fe_path(domid, devid));
    xs.transaction(|tx| {
        tx.write(&format!("{fe}/backend"), &be)?;
        tx.write(&format!("{fe}/backend-id"), "0")?;
        tx.write(&format!("{fe}/virtual-device"), devid.to_string())?;
        tx.write(&format!("{fe}/state"), "1")?;
        tx.write(&format!("{be}/frontend"), &fe)?;
        tx.write(&format!("{be}/frontend-id"), domid.to_string())?;
        tx.write(&format!("{be}/online"), "1")?;
        tx.write(&format!("{be}/params"), params)?;
        tx.write(&format!("{be}/state"), "1")?;
        Ok(())
    })
    .expect("toolstack transaction");
}

fn read(xs: &Client, path: &str) -> Option<String> {
    xs.read_opt(path)
        .expect("read")
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn wait_value(xs: &Client, path: &str, want: Option<&str>) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let v = read(xs, path);
        if v.as_deref() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} is {v:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_log(log: &Log, devid: u32, entry: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !log.get(devid).iter().any(|e| e == entry) {
        assert!(
            Instant::now() < deadline,
            "device {devid}: no {entry:?} in {:?}",
            log.get(devid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The frontend publishes its ring and switches state.
fn frontend_publish(xs: &Client, domid: u16, devid: u32, ring: u32, port: u32, state: &str) {
    let fe = fe_path(domid, devid);
    xs.transaction(|tx| {
        tx.write(&format!("{fe}/ring-ref"), ring.to_string())?;
        tx.write(&format!("{fe}/event-channel"), port.to_string())?;
        tx.write(&format!("{fe}/state"), state)?;
        Ok(())
    })
    .expect("frontend transaction");
}

fn set_fe_state(xs: &Client, domid: u16, devid: u32, state: &str) {
    xs.write(&format!("{}/state", fe_path(domid, devid)), state)
        .expect("write frontend state");
}

#[test]
fn test_handshake_full_cycle_states_in_order() {
    let xsd = Xenstored::start("backendd-test-");
    let xs = xsd.client();
    let log = Log::default();
    let _svc = start_backendd(
        &xsd,
        FakeFactory {
            log: log.clone(),
            panic_devid: None,
        },
    );
    let (dom, dev) = (1, 51712);
    let be = be_path(dom, dev);
    toolstack_add(&xs, dom, dev, "/srv/disk.img");

    // Probe: features advertised, then InitWait.
    wait_value(&xs, &format!("{be}/state"), Some("2"));
    assert_eq!(
        read(&xs, &format!("{be}/feature-flush-cache")).as_deref(),
        Some("1")
    );
    assert_eq!(
        log.get(dev)[..2],
        [
            "create params=Some(\"/srv/disk.img\")".to_owned(),
            "advertise".to_owned()
        ]
    );

    // Frontend Initialised with its ring: backend connects, Connected.
    frontend_publish(&xs, dom, dev, 8, 5, "3");
    wait_value(&xs, &format!("{be}/state"), Some("4"));
    assert_eq!(read(&xs, &format!("{be}/sectors")).as_deref(), Some("2048"));
    wait_log(&log, dev, "connect ring-ref=8 event-channel=5");
    set_fe_state(&xs, dom, dev, "4");

    // Frontend closes: Closing, then Closed with a disconnect.
    set_fe_state(&xs, dom, dev, "5");
    wait_value(&xs, &format!("{be}/state"), Some("5"));
    set_fe_state(&xs, dom, dev, "6");
    wait_value(&xs, &format!("{be}/state"), Some("6"));
    wait_log(&log, dev, "disconnect");

    // Reconnection: the frontend re-initialises and skips Initialised.
    set_fe_state(&xs, dom, dev, "1");
    wait_value(&xs, &format!("{be}/state"), Some("2"));
    frontend_publish(&xs, dom, dev, 9, 6, "4");
    wait_value(&xs, &format!("{be}/state"), Some("4"));
    wait_log(&log, dev, "connect ring-ref=9 event-channel=6");
    let connects = log
        .get(dev)
        .iter()
        .filter(|e| e.starts_with("connect"))
        .count();
    assert_eq!(connects, 2, "{:?}", log.get(dev));
}

#[test]
fn test_handshake_frontend_connected_at_probe_waits_for_fresh_offer() {
    let xsd = Xenstored::start("backendd-test-");
    let xs = xsd.client();
    let log = Log::default();
    let (dom, dev) = (3, 51712);
    // The frontend is already Connected when backendd first sees the
    // device (a backendd restart): those rings were the previous
    // backend's, which may have consumed requests it never answered.
    toolstack_add(&xs, dom, dev, "/srv/a.img");
    frontend_publish(&xs, dom, dev, 11, 7, "4");
    let _svc = start_backendd(
        &xsd,
        FakeFactory {
            log: log.clone(),
            panic_devid: None,
        },
    );
    wait_value(&xs, &format!("{}/state", be_path(dom, dev)), Some("2"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !log.get(dev).iter().any(|e| e.starts_with("connect")),
        "connected to the stale transport: {:?}",
        log.get(dev)
    );
    // The frontend sees InitWait and offers fresh rings.
    frontend_publish(&xs, dom, dev, 12, 8, "3");
    wait_value(&xs, &format!("{}/state", be_path(dom, dev)), Some("4"));
    wait_log(&log, dev, "connect ring-ref=12 event-channel=8");
}

#[test]
fn test_handshake_garbage_state_fails_only_that_device() {
    let xsd = Xenstored::start("backendd-test-");
    let xs = xsd.client();
    let log = Log::default();
    let _svc = start_backendd(
        &xsd,
        FakeFactory {
            log: log.clone(),
            panic_devid: None,
        },
    );
    let dom = 2;
    for (dev, ring) in [(51712, 8), (51728, 9)] {
        toolstack_add(&xs, dom, dev, "/srv/x.img");
        wait_value(&xs, &format!("{}/state", be_path(dom, dev)), Some("2"));
        frontend_publish(&xs, dom, dev, ring, 5, "3");
        wait_value(&xs, &format!("{}/state", be_path(dom, dev)), Some("4"));
    }

    set_fe_state(&xs, dom, 51728, "banana");
    wait_value(&xs, &format!("{}/state", be_path(dom, 51728)), Some("5"));
    wait_log(&log, 51728, "disconnect");
    let err = read(&xs, "/local/domain/0/error/backend/vbd/2/51728/error").expect("error node");
    assert!(err.contains("banana"), "{err}");

    // The other device is untouched and still answers the handshake.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        read(&xs, &format!("{}/state", be_path(dom, 51712))).as_deref(),
        Some("4")
    );
    assert!(!log.get(51712).iter().any(|e| e == "disconnect"));
    set_fe_state(&xs, dom, 51712, "5");
    wait_value(&xs, &format!("{}/state", be_path(dom, 51712)), Some("5"));

    // The failed device recovers through Closed and Initialising.
    set_fe_state(&xs, dom, 51728, "6");
    wait_value(&xs, &format!("{}/state", be_path(dom, 51728)), Some("6"));
    set_fe_state(&xs, dom, 51728, "1");
    wait_value(&xs, &format!("{}/state", be_path(dom, 51728)), Some("2"));
}

#[test]
fn test_handshake_backend_errors_and_panics_fail_only_their_device() {
    let xsd = Xenstored::start("backendd-test-");
    let xs = xsd.client();
    let log = Log::default();
    let _svc = start_backendd(
        &xsd,
        FakeFactory {
            log: log.clone(),
            panic_devid: Some(51744),
        },
    );
    let dom = 4;
    // A backend whose configuration is refused.
    toolstack_add(&xs, dom, 51712, "bad");
    wait_value(&xs, &format!("{}/state", be_path(dom, 51712)), Some("5"));
    // A frontend that publishes no ring: connect fails.
    toolstack_add(&xs, dom, 51728, "/srv/x.img");
    wait_value(&xs, &format!("{}/state", be_path(dom, 51728)), Some("2"));
    set_fe_state(&xs, dom, 51728, "3");
    wait_value(&xs, &format!("{}/state", be_path(dom, 51728)), Some("5"));
    // A backend that panics in connect.
    toolstack_add(&xs, dom, 51744, "/srv/x.img");
    wait_value(&xs, &format!("{}/state", be_path(dom, 51744)), Some("2"));
    frontend_publish(&xs, dom, 51744, 8, 5, "3");
    wait_value(&xs, &format!("{}/state", be_path(dom, 51744)), Some("5"));
    // A healthy device still connects afterwards.
    toolstack_add(&xs, dom, 51760, "/srv/y.img");
    wait_value(&xs, &format!("{}/state", be_path(dom, 51760)), Some("2"));
    frontend_publish(&xs, dom, 51760, 12, 5, "3");
    wait_value(&xs, &format!("{}/state", be_path(dom, 51760)), Some("4"));
}

#[test]
fn test_handshake_backend_dir_removed_tears_device_down() {
    let xsd = Xenstored::start("backendd-test-");
    let xs = xsd.client();
    let log = Log::default();
    let _svc = start_backendd(
        &xsd,
        FakeFactory {
            log: log.clone(),
            panic_devid: None,
        },
    );
    let (dom, dev) = (5, 51712);
    let be = be_path(dom, dev);
    toolstack_add(&xs, dom, dev, "/srv/x.img");
    wait_value(&xs, &format!("{be}/state"), Some("2"));
    frontend_publish(&xs, dom, dev, 8, 5, "3");
    wait_value(&xs, &format!("{be}/state"), Some("4"));

    xs.rm(&be).expect("rm backend dir");
    wait_log(&log, dev, "disconnect");
    // Nothing is recreated behind the toolstack's back.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(&xs, &be), None);

    // The same device added again is a new device.
    toolstack_add(&xs, dom, dev, "/srv/x.img");
    wait_value(&xs, &format!("{be}/state"), Some("2"));
    let creates = log
        .get(dev)
        .iter()
        .filter(|e| e.starts_with("create"))
        .count();
    assert_eq!(creates, 2);
}

#[test]
fn test_handshake_offline_device_closes_on_frontend_closed() {
    let xsd = Xenstored::start("backendd-test-");
    let xs = xsd.client();
    let log = Log::default();
    let _svc = start_backendd(
        &xsd,
        FakeFactory {
            log: log.clone(),
            panic_devid: None,
        },
    );
    let (dom, dev) = (6, 51712);
    let be = be_path(dom, dev);
    toolstack_add(&xs, dom, dev, "/srv/x.img");
    wait_value(&xs, &format!("{be}/state"), Some("2"));
    frontend_publish(&xs, dom, dev, 8, 5, "4");
    wait_value(&xs, &format!("{be}/state"), Some("4"));
    // libxl's removal: online=0 and backend Closing; the frontend closes.
    xs.write(&format!("{be}/online"), "0").expect("write");
    set_fe_state(&xs, dom, dev, "5");
    set_fe_state(&xs, dom, dev, "6");
    wait_value(&xs, &format!("{be}/state"), Some("6"));
    wait_log(&log, dev, "disconnect");
}

#[test]
fn test_handshake_frontend_path_outside_its_domain_ignored() {
    let xsd = Xenstored::start("backendd-test-");
    let xs = xsd.client();
    let log = Log::default();
    let _svc = start_backendd(
        &xsd,
        FakeFactory {
            log: log.clone(),
            panic_devid: None,
        },
    );
    let be = be_path(7, 51712);
    xs.write(&format!("{be}/frontend-id"), "7").expect("write");
    xs.write(&format!("{be}/state"), "1").expect("write");
    xs.write(
        &format!("{be}/frontend"),
        "/local/domain/0/device/vbd/51712",
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(&xs, &format!("{be}/state")).as_deref(), Some("1"));
    assert!(log.get(51712).is_empty());
}

#[test]
fn test_handshake_restarted_service_reconnects_connected_device() {
    let xsd = Xenstored::start("backendd-test-");
    let xs = xsd.client();
    let log = Log::default();
    let (dom, dev) = (8, 51712);
    let be = be_path(dom, dev);
    let svc = start_backendd(
        &xsd,
        FakeFactory {
            log: log.clone(),
            panic_devid: None,
        },
    );
    toolstack_add(&xs, dom, dev, "/srv/x.img");
    wait_value(&xs, &format!("{be}/state"), Some("2"));
    frontend_publish(&xs, dom, dev, 8, 5, "4");
    wait_value(&xs, &format!("{be}/state"), Some("4"));

    // The service stops (its devices disconnect; xenstore is left as is).
    drop(svc);
    wait_log(&log, dev, "disconnect");
    assert_eq!(read(&xs, &format!("{be}/state")).as_deref(), Some("4"));

    // A new service finds the device, goes back to InitWait and connects
    // it again once the frontend re-offered (as blkfront does on InitWait).
    let _svc = start_backendd(
        &xsd,
        FakeFactory {
            log: log.clone(),
            panic_devid: None,
        },
    );
    wait_value(&xs, &format!("{be}/state"), Some("2"));
    frontend_publish(&xs, dom, dev, 9, 6, "3");
    let deadline = Instant::now() + TIMEOUT;
    while log
        .get(dev)
        .iter()
        .filter(|e| e.starts_with("connect"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{:?}", log.get(dev));
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_value(&xs, &format!("{be}/state"), Some("4"));
}
