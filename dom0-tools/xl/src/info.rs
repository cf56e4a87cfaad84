//! The informational verbs, in xl's formats: `xl info` (the host and the
//! shim, `key : value`), `xl uptime`, `xl vcpu-list`, `xl domid`,
//! `xl domname`, `xl list -l` (libxl's JSON of each domain: `domid` and
//! `config` with `c_info`, `b_info`, `disks`, `nics`, `on_*`) and the
//! configuration JSON of `xl create -n` (the same `config` object, from
//! the file).
//!
//! `xl list -l` rebuilds each domain's configuration from what the running
//! domain has (the shim's domain, its xenstore nodes: `vm`, `memory/`, the
//! backend directories of its vbds and vifs), as libxl's
//! `libxl_retrieve_domain_configuration` merges the stored one with the
//! live state; what only the file had (`extra=`, `on_*` actions) is not
//! there.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use xen_shim_proto::layout::DomainType;
use xen_shim_proto::protocol::DomainInfo;
use xenstore_client::{Client, XsOps};

use crate::config::{GuestType, XlConfig};
use crate::stat::Node;
use crate::toolstack::{self, ToolstackError, BACKEND_DOMID};
use crate::top::XEN_VERSION;

fn io(source: std::io::Error) -> ToolstackError {
    ToolstackError::Io {
        what: "write the output".into(),
        source,
    }
}

fn shim_err(
    what: &str,
) -> impl FnOnce(xen_shim_proto::protocol::ControlError) -> ToolstackError + '_ {
    move |source| ToolstackError::Shim {
        what: what.to_owned(),
        source,
    }
}

/// JSON with libxl's 4-space indentation.
#[must_use]
pub fn to_json(v: &Value) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(v, &mut ser).expect("a Value always serializes");
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

/// libxl's `libxl_domain_config` of a configuration file (what `xl create
/// -n` prints).
#[must_use]
pub fn config_json(cfg: &XlConfig) -> Value {
    let mut b_info = Map::new();
    b_info.insert("max_vcpus".into(), json!(cfg.vcpus));
    b_info.insert(
        "avail_vcpus".into(),
        json!((0..cfg.vcpus).collect::<Vec<_>>()),
    );
    if let Some(c) = &cfg.cpus {
        b_info.insert("vcpu_hard_affinity_spec".into(), json!(c.text()));
    }
    b_info.insert("max_memkb".into(), json!(cfg.maxmem_mib * 1024));
    b_info.insert("target_memkb".into(), json!(cfg.memory_mib * 1024));
    b_info.insert("sched_params".into(), json!({}));
    let mut kernel = Map::new();
    put(&mut kernel, "kernel", cfg.kernel.as_ref());
    put(&mut kernel, "cmdline", cfg.cmdline.as_ref());
    put(&mut kernel, "ramdisk", cfg.ramdisk.as_ref());
    let ty = cfg.guest_type.as_str();
    // libxl keeps a PV guest's kernel in `type.pv`, a PVH/HVM guest's at
    // the top of b_info.
    if cfg.guest_type == GuestType::Pv {
        b_info.insert("type.pv".into(), Value::Object(kernel));
    } else {
        b_info.extend(kernel);
        b_info.insert(format!("type.{ty}"), json!({}));
    }
    let disks: Vec<Value> = cfg
        .disks
        .iter()
        .map(|d| {
            let mut m = Map::new();
            put(&mut m, "pdev_path", d.target.as_ref());
            m.insert("vdev".into(), json!(d.vdev));
            if let Some(b) = d.backendtype {
                let name = match b {
                    crate::disk::BackendType::Phy => "phy",
                    crate::disk::BackendType::Tap => "tap",
                    crate::disk::BackendType::Qdisk => "qdisk",
                    crate::disk::BackendType::Standalone => "standalone",
                };
                m.insert("backend".into(), json!(name));
            }
            m.insert("format".into(), json!(d.format.as_str()));
            put(&mut m, "script", d.script.as_ref());
            m.insert(
                "readwrite".into(),
                json!(i32::from(d.access == crate::disk::Access::ReadWrite)),
            );
            if d.devtype == crate::disk::DevType::Cdrom {
                m.insert("is_cdrom".into(), json!(1));
            }
            Value::Object(m)
        })
        .collect();
    let nics: Vec<Value> = cfg
        .vifs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut m = Map::new();
            m.insert("devid".into(), json!(i));
            if let Some(mac) = v.mac {
                m.insert("mac".into(), json!(crate::network::format_mac(mac)));
            }
            if !v.ip.is_empty() {
                m.insert("ip".into(), json!(v.ip.join(" ")));
            }
            put(&mut m, "bridge", v.bridge.as_ref());
            put(&mut m, "ifname", v.vifname.as_ref());
            put(&mut m, "script", v.script.as_ref());
            put(&mut m, "mtu", v.mtu.as_ref());
            put(&mut m, "nictype", v.vif_type.as_ref());
            Value::Object(m)
        })
        .collect();
    json!({
        "c_info": { "type": ty, "name": cfg.name },
        "b_info": Value::Object(b_info),
        "disks": disks,
        "nics": nics,
        "on_poweroff": cfg.on_poweroff.as_str(),
        "on_reboot": cfg.on_reboot.as_str(),
        "on_watchdog": cfg.on_watchdog.as_str(),
        "on_crash": cfg.on_crash.as_str(),
    })
}

/// Sets `key` when there is a value (libxl leaves unset fields out).
fn put<T: serde::Serialize>(m: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(key.into(), json!(v));
    }
}

fn read(xs: &Client, p: &str) -> Option<String> {
    xs.read_opt(p)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).trim().to_owned())
}

/// libxl's `config` of a running domain, from the shim and xenstore.
fn live_config(d: &DomainInfo, xs: Option<&Client>) -> Value {
    let ty = match d.kind {
        DomainType::Pv => "pv",
        _ => "hvm",
    };
    let home = format!("/local/domain/{}", d.domid);
    let rd = |p: &str| xs.and_then(|xs| read(xs, p));
    let uuid = rd(&format!("{home}/vm"))
        .and_then(|v| v.strip_prefix("/vm/").map(str::to_owned))
        .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into());
    let kib = |k: &str, dflt: u64| {
        rd(&format!("{home}/memory/{k}"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(dflt)
    };
    let mem = d.memory_mib * 1024;
    let mut disks = Vec::new();
    let mut nics = Vec::new();
    if let Some(xs) = xs {
        for bt in crate::stat::VBD_TYPES {
            let dir = format!("/local/domain/{BACKEND_DOMID}/backend/{bt}/{}", d.domid);
            for dev in toolstack::list_or_empty(xs, &dir) {
                let be = format!("{dir}/{dev}");
                let params = read(xs, &format!("{be}/params")).unwrap_or_default();
                let (format, path) = match params.split_once(':') {
                    Some((f, p)) if bt == "qdisk" && !f.contains('/') => {
                        (if f == "aio" { "raw" } else { f }.to_owned(), p.to_owned())
                    }
                    _ => ("raw".to_owned(), params.clone()),
                };
                disks.push(json!({
                    "backend_domid": BACKEND_DOMID,
                    "pdev_path": path,
                    "vdev": read(xs, &format!("{be}/dev")).unwrap_or_default(),
                    "backend": if bt == "qdisk" { "qdisk" } else { "phy" },
                    "format": format,
                    "readwrite": i32::from(read(xs, &format!("{be}/mode")).as_deref() == Some("w")),
                }));
            }
        }
        let dir = format!("/local/domain/{BACKEND_DOMID}/backend/vif/{}", d.domid);
        let mut devs: Vec<u32> = toolstack::list_or_empty(xs, &dir)
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        devs.sort_unstable();
        for dev in devs {
            let be = format!("{dir}/{dev}");
            let mut m = Map::new();
            m.insert("backend_domid".into(), json!(BACKEND_DOMID));
            m.insert("devid".into(), json!(dev));
            for (node, key) in [
                ("mac", "mac"),
                ("ip", "ip"),
                ("bridge", "bridge"),
                ("vifname", "ifname"),
            ] {
                if let Some(v) = read(xs, &format!("{be}/{node}")) {
                    m.insert(key.into(), json!(v));
                }
            }
            nics.push(Value::Object(m));
        }
    }
    json!({
        "c_info": { "type": ty, "name": d.name, "uuid": uuid },
        "b_info": {
            "max_vcpus": d.vcpus,
            "avail_vcpus": (0..d.vcpus).collect::<Vec<_>>(),
            "max_memkb": kib("static-max", mem),
            "target_memkb": kib("target", mem),
            "sched_params": {},
        },
        "disks": disks,
        "nics": nics,
    })
}

/// `xl list -l [DOMAIN...]`: a JSON array of `{domid, config}`.
///
/// # Errors
/// A shim failure or an unknown domain.
pub fn list_long(out: &mut dyn Write, which: &[String]) -> Result<(), ToolstackError> {
    let control = toolstack::shim(false)?;
    let all = control.list_domains().map_err(shim_err("list domains"))?;
    let domains: Vec<DomainInfo> = if which.is_empty() {
        all.into_iter().filter(|d| d.domid != 0).collect()
    } else {
        which
            .iter()
            .map(|w| toolstack::find_domain(&control, w))
            .collect::<Result<_, _>>()?
    };
    let xs = toolstack::xenstore(false).ok();
    let v: Vec<Value> = domains
        .iter()
        .map(|d| json!({ "domid": d.domid, "config": live_config(d, xs.as_ref()) }))
        .collect();
    writeln!(out, "{}", to_json(&Value::Array(v))).map_err(io)
}

/// `xl domid NAME`.
///
/// # Errors
/// No such domain, or the shim fails.
pub fn domid(out: &mut dyn Write, name: &str) -> Result<(), ToolstackError> {
    let control = toolstack::shim(false)?;
    let all = control.list_domains().map_err(shim_err("list domains"))?;
    let d = all
        .iter()
        .find(|d| d.name == name || (name == "Domain-0" && d.domid == 0))
        .ok_or_else(|| ToolstackError::NoDomain(name.to_owned()))?;
    writeln!(out, "{}", d.domid).map_err(io)
}

/// `xl domname DOMID`.
///
/// # Errors
/// Not a number, no such domain, or the shim fails.
pub fn domname(out: &mut dyn Write, domid: &str) -> Result<(), ToolstackError> {
    let id: u16 = domid
        .parse()
        .map_err(|_| ToolstackError::NoDomain(domid.to_owned()))?;
    let control = toolstack::shim(false)?;
    let all = control.list_domains().map_err(shim_err("list domains"))?;
    let d = all
        .iter()
        .find(|d| d.domid == id)
        .ok_or_else(|| ToolstackError::NoDomain(domid.to_owned()))?;
    let name = if id == 0 { "Domain-0" } else { d.name.as_str() };
    writeln!(out, "{name}").map_err(io)
}

/// xl's uptime text: `[D day[s], ]HH:MM:SS`.
#[must_use]
pub fn uptime_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!(
            "{d} day{}, {h:2}:{m:02}:{s:02}",
            if d == 1 { "" } else { "s" }
        )
    } else {
        format!("{h:2}:{m:02}:{s:02}")
    }
}

/// `xl uptime [DOMAIN...]`: xl's columns; a domain's uptime since
/// `xl create` (`/vm/<uuid>/start_time`), Domain-0's the host's.
///
/// # Errors
/// A shim failure or an unknown domain.
pub fn uptime(out: &mut dyn Write, which: &[String]) -> Result<(), ToolstackError> {
    let control = toolstack::shim(false)?;
    let all = control.list_domains().map_err(shim_err("list domains"))?;
    let domains: Vec<DomainInfo> = if which.is_empty() {
        all
    } else {
        which
            .iter()
            .map(|w| toolstack::find_domain(&control, w))
            .collect::<Result<_, _>>()?
    };
    let xs = toolstack::xenstore(false).ok();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let host_up = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| s as u64);
    writeln!(out, "{:<33} {:>4} Uptime", "Name", "ID").map_err(io)?;
    for d in domains {
        let (name, secs) = if d.domid == 0 {
            ("Domain-0".to_owned(), host_up)
        } else {
            let start = xs.as_ref().and_then(|xs| {
                let vm = read(xs, &format!("/local/domain/{}/vm", d.domid))?;
                read(xs, &format!("{vm}/start_time"))?.parse::<u64>().ok()
            });
            (d.name.clone(), start.map_or(0, |s| now.saturating_sub(s)))
        };
        writeln!(out, "{name:<33} {:>4} {}", d.domid, uptime_text(secs)).map_err(io)?;
    }
    Ok(())
}

/// `xl vcpu-list [DOMAIN...]`: xl's columns. A PVHVM domain's vCPUs are
/// its VMM's vCPU threads: each has its CPU, state and time. A PV domain's
/// are not separate schedulable things (the runtime's and the guest's
/// tasks share the domain's cgroup), so CPU is `-` and Time(s) is the
/// domain's on its vCPU 0 only when it has one vCPU (`-` otherwise). The
/// affinity is the domain's cpuset (`all` when it has none of its own).
///
/// # Errors
/// A shim failure or an unknown domain.
pub fn vcpu_list(out: &mut dyn Write, which: &[String]) -> Result<(), ToolstackError> {
    let control = toolstack::shim(false)?;
    let all = control.list_domains().map_err(shim_err("list domains"))?;
    let domains: Vec<DomainInfo> = if which.is_empty() {
        all.clone()
    } else {
        which
            .iter()
            .map(|w| toolstack::find_domain(&control, w))
            .collect::<Result<_, _>>()?
    };
    let node = Node::of(&all, None);
    let h = crate::resources::hierarchy().ok();
    writeln!(
        out,
        "{:<32} {:>5} {:>5} {:>5} {:<5} {:>9} Affinity (Hard / Soft)",
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)"
    )
    .map_err(io)?;
    for d in &domains {
        let Some(st) = node.domain(d.domid) else {
            continue;
        };
        let group = h.as_ref().and_then(|h| {
            h.open(&crate::resources::group_name(d.domid, &d.name))
                .ok()
                .flatten()
        });
        let affinity = group
            .as_ref()
            .and_then(|g| g.cpuset().ok())
            .map_or_else(|| "all".to_owned(), |c| c.to_string());
        // A PVHVM vCPU thread's own affinity (xl vcpu-pin).
        let pinned = group
            .as_ref()
            .map(crate::sched::vcpu_affinities)
            .unwrap_or_default();
        let state = if st.state.running {
            "r"
        } else if st.state.blocked {
            "b"
        } else if st.state.paused {
            "p"
        } else {
            "-"
        };
        for v in 0..d.vcpus {
            // A PVHVM vCPU is a VMM thread: its own CPU, state and time.
            let (cpu, vstate, time) = match st.vcpu_stats.iter().find(|c| c.id == v) {
                Some(c) => (
                    c.cpu.to_string(),
                    if st.state.paused {
                        "p"
                    } else if c.running {
                        "r"
                    } else {
                        "b"
                    },
                    format!("{:.1}", c.time_ns as f64 / 1e9),
                ),
                None if d.vcpus == 1 => (
                    "-".to_owned(),
                    state,
                    format!("{:.1}", st.cpu_ns as f64 / 1e9),
                ),
                None => ("-".to_owned(), state, "-".to_owned()),
            };
            writeln!(
                out,
                "{:<32} {:>5} {:>5} {:>5} {:<5} {:>9} {} / all",
                st.name,
                d.domid,
                v,
                cpu,
                format!("{vstate}-"),
                time,
                pinned
                    .iter()
                    .find(|(id, _)| *id == v)
                    .map_or_else(|| affinity.clone(), |(_, c)| c.to_string())
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

/// `xl info`: the host and the shim, as xl's `key : value` lines.
///
/// # Errors
/// Writing fails (the shim's absence leaves its lines out).
pub fn info(out: &mut dyn Write) -> Result<(), ToolstackError> {
    let node = Node::of(&[], None);
    // SAFETY: `uts` is plain data that uname fills.
    let uts = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            std::mem::zeroed()
        } else {
            u
        }
    };
    let field = |f: &[libc::c_char]| -> String {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let kvm = std::path::Path::new("/dev/kvm").exists();
    let (major, minor) = {
        let v = xen_abi::xen::__XEN_LATEST_INTERFACE_VERSION__;
        (v >> 16, (v >> 8) & 0xff)
    };
    let domains = toolstack::shim(false)
        .ok()
        .and_then(|c| c.list_domains().ok());
    let guests_mib: u64 = domains
        .iter()
        .flatten()
        .filter(|d| d.domid != 0)
        .map(|d| d.memory_mib)
        .sum();
    let rows: Vec<(&str, String)> = vec![
        ("host", field(&uts.nodename)),
        ("release", field(&uts.release)),
        ("version", field(&uts.version)),
        ("machine", field(&uts.machine)),
        ("nr_cpus", node.nr_cpus.to_string()),
        ("max_cpu_id", node.nr_cpus.saturating_sub(1).to_string()),
        ("nr_nodes", "1".into()),
        ("cpu_mhz", node.cpu_mhz.to_string()),
        ("virt_caps", if kvm { "pv hvm" } else { "pv" }.into()),
        ("total_memory", (node.tot_mem_kib / 1024).to_string()),
        ("free_memory", (node.free_mem_kib / 1024).to_string()),
        ("guest_memory", guests_mib.to_string()),
        ("free_cpus", "0".into()),
        ("xen_major", major.to_string()),
        ("xen_minor", minor.to_string()),
        (
            "xen_extra",
            XEN_VERSION
                .trim_start_matches(&format!("{major}.{minor}"))
                .to_owned(),
        ),
        ("xen_version", XEN_VERSION.into()),
        (
            "xen_caps",
            if kvm {
                "xen-3.0-x86_64 hvm-3.0-x86_64"
            } else {
                "xen-3.0-x86_64"
            }
            .into(),
        ),
        ("xen_scheduler", "linux-cgroup".into()),
        (
            "xen_pagesize",
            xen_shim_proto::layout::PAGE_SIZE.to_string(),
        ),
        (
            "xen_commandline",
            format!(
                "xen-shimd ({})",
                xen_shim_proto::default_socket_path().display()
            ),
        ),
        (
            "shim_running",
            if domains.is_some() { "yes" } else { "no" }.into(),
        ),
        ("xl_version", env!("CARGO_PKG_VERSION").into()),
        ("xend_config_format", "4".into()),
    ];
    for (k, v) in rows {
        writeln!(out, "{k:<23}: {v}").map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_uptime_text_is_xls() {
        assert_eq!(uptime_text(5), " 0:00:05");
        assert_eq!(uptime_text(3_725), " 1:02:05");
        assert_eq!(uptime_text(86_400 + 61), "1 day,  0:01:01");
        assert_eq!(uptime_text(3 * 86_400 + 36_000), "3 days, 10:00:00");
    }

    #[test]
    fn test_config_json_has_libxls_shape() {
        let c = XlConfig::parse(
            "g.cfg",
            "name='g'\nmemory=64\nmaxmem=128\nvcpus=2\nextra='init=/bin/sh'\n\
             disk=['format=raw, vdev=xvda, access=rw, target=/img']\n\
             vif=['mac=00:16:3e:00:00:01, bridge=xenbr0']\non_crash='preserve'\n",
        )
        .expect("valid");
        let v = config_json(&c);
        assert_eq!(v["c_info"]["name"], "g");
        assert_eq!(v["c_info"]["type"], "pv");
        assert_eq!(v["b_info"]["max_memkb"], 131_072);
        assert_eq!(v["b_info"]["target_memkb"], 65_536);
        assert_eq!(v["b_info"]["avail_vcpus"], json!([0, 1]));
        assert_eq!(v["b_info"]["type.pv"]["cmdline"], "init=/bin/sh");
        assert_eq!(v["disks"][0]["pdev_path"], "/img");
        assert_eq!(v["disks"][0]["vdev"], "xvda");
        assert_eq!(v["disks"][0]["readwrite"], 1);
        assert_eq!(v["nics"][0]["mac"], "00:16:3e:00:00:01");
        assert_eq!(v["on_crash"], "preserve");
        // libxl's 4-space indentation.
        let text = to_json(&v);
        assert!(
            text.contains("\n    \"b_info\": {\n        \"avail_vcpus\": [\n            0,"),
            "{text}"
        );
    }
}
