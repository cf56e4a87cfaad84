//! `xl create`'s flags and the informational verbs end to end, on a
//! private Dom0 with the real `xl`, `backendd` and `xen-pvguest`:
//!
//! - `xl create -n` prints libxl's JSON of each of Xen's own
//!   `/etc/xen/xlexample.*` and creates nothing;
//! - `KEY=VALUE` overrides win over the file (dry run and a real domain);
//! - `xl create -p` leaves the domain paused (its runtime stopped) until
//!   `xl unpause`;
//! - `xl list -l`, `xl domid`, `xl domname`, `xl uptime`, `xl vcpu-list`
//!   and `xl info` on that domain.
//!
//! Needs root and Debian's `xen-utils-common` (tests/setup-host.sh).

mod common;

use std::time::{Duration, Instant};

use common::{libexec, require_root};
use serde_json::Value;
use xen_testhost::Dom0;

fn dom0(prefix: &str) -> Dom0 {
    require_root();
    Dom0::start(prefix, libexec()).expect("start the private Dom0")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// The `name = "..."` of an xl.cfg text.
fn cfg_name(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("name"))
        .filter_map(|r| r.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
        .next()
        .expect("a name line")
}

#[test]
fn test_xl_create_dry_run_prints_json_of_each_xen_example_and_creates_nothing() {
    let host = dom0("xl-info-n-");
    let mut examples: Vec<_> = std::fs::read_dir("/etc/xen")
        .expect("/etc/xen exists: install xen-utils-common (tests/setup-host.sh)")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("xlexample."))
        })
        .collect();
    examples.sort();
    assert!(
        examples.len() >= 3,
        "Xen's xlexample.* configs are missing: install xen-utils-common ({examples:?})"
    );
    for ex in &examples {
        let path = ex.to_str().expect("utf-8 path");
        let out = host.xl(&["create", "-n", path]).expect("run xl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "xl create -n {path}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let v = json(&stdout);
        let text = std::fs::read_to_string(ex).expect("read the example");
        assert_eq!(v["c_info"]["name"], cfg_name(&text), "{path}");
        assert!(
            v["b_info"]["max_vcpus"].as_u64().is_some_and(|n| n >= 1),
            "{path}"
        );
        assert!(
            v["b_info"]["target_memkb"].as_u64().is_some_and(|n| n > 0),
            "{path}"
        );
        assert_eq!(v["disks"][0]["vdev"], "xvda", "{path}");
        assert!(v["nics"].is_array(), "{path}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Parsing config from"),
            "{path}"
        );
    }
    let list = host.xl_ok(&["list"]).expect("xl list");
    assert_eq!(list.lines().count(), 2, "only Domain-0:\n{list}");
}

#[test]
fn test_xl_create_overrides_win_over_the_file_in_a_dry_run() {
    let host = dom0("xl-info-o-");
    let cfg = host
        .write_config(
            "ov",
            "name = 'ov'\nmemory = 64\nvcpus = 1\nextra = 'console=hvc0'\non_crash = 'destroy'\n",
        )
        .expect("config");
    let cfg = cfg.to_str().expect("utf-8 path");
    let v = json(
        &host
            .xl_ok(&[
                "create",
                "-q",
                "-n",
                cfg,
                "memory=256",
                "extra=\"init=/bin/sh\"",
                "on_crash='preserve'",
                "vcpus=2",
            ])
            .expect("xl create -n with overrides"),
    );
    assert_eq!(v["b_info"]["target_memkb"], 256 * 1024);
    assert_eq!(v["b_info"]["max_vcpus"], 2);
    assert_eq!(v["b_info"]["type.pv"]["cmdline"], "init=/bin/sh");
    assert_eq!(v["on_crash"], "preserve");
    // A bad override is named as such.
    let out = host
        .xl(&["create", "-n", cfg, "memory=lots"])
        .expect("run xl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ov.cfg + command line:7"), "{err}");
    let out = host.xl(&["create", "-n", cfg, "memory=0"]).expect("run xl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("command line") && err.contains("memory"),
        "{err}"
    );
}

/// The state letter column of `xl list NAME`.
fn state(host: &Dom0, name: &str) -> String {
    let l = host.xl_ok(&["list", name]).expect("xl list");
    l.lines()
        .nth(1)
        .and_then(|r| r.split_whitespace().nth(4))
        .unwrap_or_else(|| panic!("no row for {name}:\n{l}"))
        .to_owned()
}

/// The scheduler state of process `pid` (`R`, `S`, `T`...).
fn proc_state(pid: i32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .unwrap_or('?')
}

#[test]
fn test_xl_create_paused_with_override_then_info_verbs_and_unpause() {
    let mut host = dom0("xl-info-p-");
    let name = format!("ip{}", std::process::id());
    let img = host.dir.path().join("p.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("disk image");
    let cfg = host
        .pv_config(
            &name,
            48,
            "#!/bin/sh\nwhile :; do echo beat; sleep 0.2; done\n",
            &format!(
                "disk = [ 'format=raw, vdev=xvda, access=rw, target={}' ]\n",
                img.display()
            ),
        )
        .expect("config");
    host.track_guest(&name);
    let out = host
        .xl(&["create", "-p", &cfg, "memory=72", "maxmem=96"])
        .expect("run xl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("paused"));
    // Paused: the flag, and it is still paused (and alive) once xl has exited.
    std::thread::sleep(Duration::from_millis(500));
    let st = state(&host, &name);
    assert_eq!(&st[2..3], "p", "{st}");
    let domid = host.domid(&name).expect("xl list").expect("listed");
    let pid = xen_shim_dom0::Control::connect(&host.shim_socket())
        .and_then(|c| c.domain_info(domid))
        .expect("the shim knows it")
        .pid
        .expect("attached");
    // Frozen with the rest of its group (a stop signal waits for the thaw).
    let ps = proc_state(pid);
    assert!(
        matches!(ps, 'T' | 'D' | 'S'),
        "the paused domain's runtime: {ps}"
    );
    let group = host
        .guest_cgroup(domid)
        .expect("cgroups")
        .expect("the group");
    let frozen = group
        .dirs()
        .into_iter()
        .map(|d| d.join("freezer.state"))
        .find(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap_or_default());
    assert_eq!(frozen.as_deref().map(str::trim), Some("FROZEN"));
    let beats_paused = host.guest_log(&name).matches("beat").count();

    // The override won: memory 72, maxmem 96.
    let row = host.xl_ok(&["list", &name]).expect("xl list");
    assert_eq!(
        row.lines().nth(1).and_then(|r| r.split_whitespace().nth(2)),
        Some("72"),
        "{row}"
    );
    let v = json(&host.xl_ok(&["list", "-l", &name]).expect("xl list -l"));
    let d = &v[0];
    assert_eq!(d["domid"], u64::from(domid));
    assert_eq!(d["config"]["c_info"]["name"], name.as_str());
    assert_eq!(d["config"]["c_info"]["type"], "pv");
    assert_eq!(d["config"]["b_info"]["target_memkb"], 72 * 1024);
    assert_eq!(d["config"]["b_info"]["max_memkb"], 96 * 1024);
    assert_eq!(d["config"]["disks"][0]["vdev"], "xvda");
    assert_eq!(
        d["config"]["disks"][0]["pdev_path"],
        img.to_str().expect("utf-8")
    );
    assert_eq!(d["config"]["disks"][0]["readwrite"], 1);
    assert!(d["config"]["nics"].as_array().is_some_and(Vec::is_empty));
    let uuid = d["config"]["c_info"]["uuid"].as_str().expect("uuid");
    assert_eq!(uuid.len(), 36);

    // domid / domname.
    assert_eq!(
        host.xl_ok(&["domid", &name]).expect("xl domid").trim(),
        domid.to_string()
    );
    assert_eq!(
        host.xl_ok(&["domname", &domid.to_string()])
            .expect("xl domname")
            .trim(),
        name
    );
    assert!(
        host.xl(&["domid", "no-such-domain"])
            .expect("run")
            .status
            .code()
            == Some(1)
    );

    // uptime: a few seconds at most.
    let up = host.xl_ok(&["uptime", &name]).expect("xl uptime");
    assert!(up.starts_with("Name"), "{up}");
    let row: Vec<&str> = up.lines().nth(1).expect("row").split_whitespace().collect();
    assert_eq!(row[0], name);
    assert_eq!(row[1], domid.to_string());
    assert!(row[2].starts_with("0:00:"), "{up}");

    // vcpu-list: one vCPU.
    let vl = host.xl_ok(&["vcpu-list", &name]).expect("xl vcpu-list");
    assert!(vl.starts_with("Name") && vl.contains("Affinity"), "{vl}");
    let rows: Vec<&str> = vl.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{vl}");
    assert!(rows[0].starts_with(&name), "{vl}");

    // info: the host and the guests' memory.
    let info = host.xl_ok(&["info"]).expect("xl info");
    for key in [
        "host",
        "release",
        "nr_cpus",
        "total_memory",
        "free_memory",
        "xen_version",
        "xen_caps",
    ] {
        assert!(
            info.lines().any(|l| l.starts_with(&format!("{key:<23}: "))),
            "no {key}:\n{info}"
        );
    }
    assert!(info.contains("guest_memory           : 72\n"), "{info}");
    assert!(info.contains("shim_running           : yes\n"), "{info}");

    // Nothing ran while paused; xl unpause lets it run.
    let beats = host.guest_log(&name).matches("beat").count();
    assert_eq!(beats, beats_paused, "the guest ran while paused");
    host.xl_ok(&["unpause", &name]).expect("xl unpause");
    assert_eq!(&state(&host, &name)[2..3], "-");
    assert_ne!(proc_state(pid), 'T');
    let deadline = Instant::now() + Duration::from_secs(30);
    while host.guest_log(&name).matches("beat").count() < beats + 3 {
        assert!(
            Instant::now() < deadline,
            "the guest does not run after xl unpause:\n{}",
            host.guest_log(&name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
