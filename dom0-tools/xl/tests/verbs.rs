//! `xl create/list/block-list/destroy` end to end: a private `xen-shimd` and
//! `xenstored` (threads of this process, on temporary sockets that
//! `XEN_SHIM_SOCKET` and `XENSTORED_PATH` point `xl` at), the real `xl`
//! binary, and the `xen-pvguest` and `backendd` binaries built next to it
//! (`xl` starts `backendd` itself, as it would on a fresh host).
//!
//! Needs root (the shim serves only its own uid's peers and guest memory
//! lives in /dev/shm).

mod common;

use std::ops::Deref;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{libexec, require_root};
use xen_shim_dom0::Control;
use xen_testhost::Dom0;
use xenstore_client::{Client, Perm, XsOps, PERM_NONE, PERM_READ};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The private services and directories of one test (a [`Dom0`]);
/// everything is stopped and removed on drop, including a `backendd` that
/// `xl` started.
struct Host(Dom0);

impl Deref for Host {
    type Target = Dom0;
    fn deref(&self) -> &Dom0 {
        &self.0
    }
}

impl Host {
    fn start() -> Self {
        require_root();
        Host(Dom0::start("xl-test-", libexec()).expect("start the private Dom0"))
    }

    fn xs_socket(&self) -> PathBuf {
        self.xenstored_socket()
    }

    fn xs(&self) -> Client {
        Client::connect_path(self.xs_socket()).expect("connect to xenstored")
    }

    fn control(&self) -> Control {
        Control::connect(&self.shim_socket()).expect("connect to the shim")
    }

    fn xl(&self, args: &[&str]) -> Output {
        self.0.xl(args).expect("run xl")
    }

    fn write_config(&self, name: &str, body: &str) -> PathBuf {
        self.0.write_config(name, body).expect("write config")
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "xl failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(xs: &Client, p: &str) -> Option<String> {
    xs.read_opt(p)
        .expect("read")
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie (nobody reaps orphans in some containers) is gone too.
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
    }
}

#[test]
fn test_xl_create_list_destroy_pv_domain_with_raw_disk_leaves_no_trace() {
    let host = Host::start();
    let name = format!("xltest{}", std::process::id());
    let img = host.dir.path().join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 << 20))
        .expect("create disk image");
    let cfg = host.write_config(
        &name,
        &format!(
            "# test guest\nname = \"{name}\"\ntype = 'pv'\nmemory = 32\nvcpus = 1\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, target=disk.img' ]\n"
        ),
    );

    let out = host.xl(&["create", cfg.to_str().expect("utf-8 path")]);
    ok(&out);

    // xl list shows it.
    let listing = ok(&host.xl(&["list"]));
    let mut lines = listing.lines();
    assert!(lines
        .next()
        .is_some_and(|h| h.starts_with("Name") && h.contains("Time(s)")));
    assert!(listing.contains("Domain-0"), "{listing}");
    let row = listing
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} not listed:\n{listing}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let domid: u16 = cols[1].parse().expect("domid column");
    assert_eq!(cols[2], "32");
    assert_eq!(cols[3], "1");

    // The shim has the domain and its runtime attached.
    let control = host.control();
    let info = control.domain_info(domid).expect("domain exists");
    let pid = info.pid.expect("runtime attached");

    // xenstore nodes, with libxl's permissions.
    let xs = host.xs();
    let home = format!("/local/domain/{domid}");
    assert_eq!(
        read(&xs, &format!("{home}/name")).as_deref(),
        Some(name.as_str())
    );
    assert_eq!(read(&xs, &format!("{home}/domid")), Some(domid.to_string()));
    assert_eq!(
        read(&xs, &format!("{home}/memory/target")).as_deref(),
        Some("32768")
    );
    assert_eq!(
        read(&xs, &format!("{home}/store/port")),
        Some(info.store_port.to_string())
    );
    let vm = read(&xs, &format!("{home}/vm")).expect("vm node");
    assert_eq!(
        read(&xs, &format!("{vm}/name")).as_deref(),
        Some(name.as_str())
    );
    assert_eq!(
        xs.get_perms(&home).expect("perms"),
        vec![Perm::new(domid, PERM_NONE)]
    );
    assert!(xs.is_domain_introduced(domid).expect("introduced query"));

    let fe = format!("{home}/device/vbd/51712");
    let be = format!("/local/domain/0/backend/vbd/{domid}/51712");
    assert_eq!(
        read(&xs, &format!("{fe}/backend")).as_deref(),
        Some(be.as_str())
    );
    assert_eq!(read(&xs, &format!("{fe}/backend-id")).as_deref(), Some("0"));
    assert_eq!(
        read(&xs, &format!("{fe}/virtual-device")).as_deref(),
        Some("51712")
    );
    assert_eq!(
        read(&xs, &format!("{fe}/device-type")).as_deref(),
        Some("disk")
    );
    assert_eq!(
        read(&xs, &format!("{be}/frontend")).as_deref(),
        Some(fe.as_str())
    );
    assert_eq!(
        read(&xs, &format!("{be}/frontend-id")),
        Some(domid.to_string())
    );
    assert_eq!(read(&xs, &format!("{be}/online")).as_deref(), Some("1"));
    assert_eq!(read(&xs, &format!("{be}/mode")).as_deref(), Some("w"));
    assert_eq!(read(&xs, &format!("{be}/dev")).as_deref(), Some("xvda"));
    assert_eq!(read(&xs, &format!("{be}/type")).as_deref(), Some("file"));
    assert_eq!(
        read(&xs, &format!("{be}/params")),
        Some(img.display().to_string())
    );
    assert_eq!(
        xs.get_perms(&fe).expect("perms"),
        vec![Perm::new(domid, PERM_NONE), Perm::new(0, PERM_READ)]
    );
    assert_eq!(
        xs.get_perms(&be).expect("perms"),
        vec![Perm::new(0, PERM_NONE), Perm::new(domid, PERM_READ)]
    );
    assert_eq!(
        xs.get_perms(&format!("{be}/params")).expect("perms"),
        vec![Perm::new(0, PERM_NONE), Perm::new(domid, PERM_READ)]
    );

    // backendd was started by xl, found the vbd, opened the image with
    // blkback and advertised it: InitWait with the disk's size.
    let pidfile = host.rundir().join("backendd.pid");
    assert!(pidfile.exists(), "xl did not start backendd");
    let deadline = Instant::now() + TIMEOUT;
    while read(&xs, &format!("{be}/state")).as_deref() != Some("2") {
        assert!(
            Instant::now() < deadline,
            "backend never reached InitWait: state {:?}, backendd log: {}",
            read(&xs, &format!("{be}/state")),
            std::fs::read_to_string(host.rundir().join("backendd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        read(&xs, &format!("{be}/sectors")).as_deref(),
        Some("32768")
    );
    assert_eq!(
        read(&xs, &format!("{be}/feature-flush-cache")).as_deref(),
        Some("1")
    );

    // block-list.
    let bl = ok(&host.xl(&["block-list", &name]));
    assert!(bl.starts_with("Vdev"), "{bl}");
    assert!(bl.lines().any(|l| l.starts_with("51712 ")), "{bl}");

    // pause / unpause show in the state column.
    ok(&host.xl(&["pause", &name]));
    let listing = ok(&host.xl(&["list", &name]));
    assert!(
        listing.lines().nth(1).is_some_and(|l| l.contains("--p---")),
        "{listing}"
    );
    ok(&host.xl(&["unpause", &domid.to_string()]));
    let listing = ok(&host.xl(&["list", &name]));
    assert!(
        !listing.lines().nth(1).is_some_and(|l| l.contains("--p---")),
        "{listing}"
    );

    // destroy removes every trace.
    ok(&host.xl(&["destroy", &name]));
    assert!(
        control.domain_info(domid).is_err(),
        "domain still in the shim"
    );
    assert_eq!(read(&xs, &home), None);
    assert_eq!(read(&xs, &be), None);
    assert_eq!(read(&xs, &vm), None);
    assert!(!xs.is_domain_introduced(domid).expect("introduced query"));
    let deadline = Instant::now() + TIMEOUT;
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "runtime {pid} still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
    let listing = ok(&host.xl(&["list"]));
    assert!(!listing.contains(&name), "{listing}");
}

#[test]
fn test_xl_create_bad_config_names_file_and_line() {
    let host = Host::start();
    let cfg = host.write_config(
        "bad",
        "name = 'bad'\nmemory = 32\n\n\n\n\ndisk = [ 'format=raw2, vdev=xvda, target=/x' ]\n",
    );
    let out = host.xl(&["create", cfg.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:7: unknown disk format \"raw2\"",
            cfg.display()
        )),
        "{err}"
    );
    // Nothing was created.
    let domains = host.control().list_domains().expect("list");
    assert_eq!(domains.len(), 1, "{domains:?}");
}

#[test]
fn test_xl_create_missing_disk_image_fails_without_domain() {
    let host = Host::start();
    let cfg = host.write_config(
        "nodisk",
        "name = 'nodisk'\nmemory = 32\ndisk = [ '/nonexistent/x.img,raw,xvda,rw' ]\n",
    );
    let out = host.xl(&["create", cfg.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("disk xvda: cannot use /nonexistent/x.img"),
        "{err}"
    );
    assert_eq!(host.control().list_domains().expect("list").len(), 1);
}

#[test]
fn test_xl_destroy_unknown_domain_fails() {
    let host = Host::start();
    let out = host.xl(&["destroy", "no-such-domain"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("domain no-such-domain does not exist"));
}

#[test]
fn test_xl_create_duplicate_name_fails_and_leaves_first_intact() {
    let host = Host::start();
    let name = format!("dup{}", std::process::id());
    let cfg = host.write_config(&name, &format!("name = '{name}'\nmemory = 16\n"));
    ok(&host.xl(&["create", cfg.to_str().expect("utf-8 path")]));
    let out = host.xl(&["create", cfg.to_str().expect("utf-8 path")]);
    assert!(!out.status.success(), "second create succeeded");
    let domains = host.control().list_domains().expect("list");
    assert_eq!(domains.iter().filter(|d| d.name == name).count(), 1);
    let d = domains
        .iter()
        .find(|d| d.name == name)
        .expect("first domain");
    let xs = host.xs();
    assert_eq!(
        read(&xs, &format!("/local/domain/{}/name", d.domid)).as_deref(),
        Some(name.as_str())
    );
    ok(&host.xl(&["destroy", &d.domid.to_string()]));
    assert!(host.control().domain_info(d.domid).is_err());
}

#[test]
fn test_xl_list_unknown_domain_fails() {
    let host = Host::start();
    let out = host.xl(&["list", "nobody"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("domain nobody does not exist"));
}
