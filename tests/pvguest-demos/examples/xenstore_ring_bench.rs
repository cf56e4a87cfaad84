//! Xenstore over a guest's ring versus Dom0's socket, in the same run.
//!
//! A private `xen-shimd` and our `xenstored` (threads of this process); per
//! round a PV guest process (`pvguest-demo --demo xenstore-bench`) does
//! `--messages` `XS_READ`s then `XS_WRITE`s of a 64-byte node one at a time
//! over its ring, and this process does the same over the Unix socket
//! (`xenstore-client`) as the reference. Prints one JSON object per
//! measurement and a summary with the median and spread (min..max) of the
//! rates over the rounds and the ring/socket ratios.
//!
//! ```text
//! cargo build --release -p pvguest-demos --bins --examples
//! sudo target/release/examples/xenstore_ring_bench [messages] [rounds]
//! ```
//! (or `cargo run --release -p pvguest-demos --example xenstore_ring_bench`
//! after building the binary). Needs root, like the shim daemon.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pvguest_demos::xsdemo::latency_summary;
use xen_testhost::shim::{unique_name, GuestProcess, ShimDaemon};
use xenstore_client::{Client, Perm, XsOps, PERM_NONE, PERM_READ};

const STEP: Duration = Duration::from_secs(120);

struct Sample {
    path: &'static str,
    op: String,
    ops_per_s: f64,
    p50_ns: u64,
    p99_ns: u64,
}

fn introduce(control: &xen_shim_dom0::Control, xs: &Client, domid: u16) -> anyhow::Result<()> {
    let info = control.domain_info(domid)?;
    let home = format!("/local/domain/{domid}");
    let ro = [Perm::new(0, PERM_NONE), Perm::new(domid, PERM_READ)];
    xs.write(&format!("{home}/domid"), domid.to_string())?;
    xs.set_perms(&home, &ro)?;
    xs.set_perms(&format!("{home}/domid"), &ro)?;
    xs.mkdir(&format!("{home}/data"))?;
    xs.set_perms(&format!("{home}/data"), &[Perm::new(domid, PERM_NONE)])?;
    xs.introduce(domid, info.layout.xenstore_gfn(), info.store_port)?;
    Ok(())
}

fn socket_round(xs: &Client, messages: u64) -> anyhow::Result<Vec<Sample>> {
    let value = [b'v'; 64];
    xs.write("/bench/v", value)?;
    let mut out = Vec::new();
    for op in ["read", "write"] {
        let mut lat = Vec::new();
        let start = Instant::now();
        for _ in 0..messages {
            let t = Instant::now();
            if op == "read" {
                xs.read("/bench/v")?;
            } else {
                xs.write("/bench/v", value)?;
            }
            lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        let (ops_per_s, p50_ns, p99_ns) = latency_summary(lat, start.elapsed());
        out.push(Sample {
            path: "socket",
            op: op.into(),
            ops_per_s,
            p50_ns,
            p99_ns,
        });
    }
    Ok(out)
}

fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let exe = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("pvguest-demo"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target directory"))?;
    anyhow::ensure!(
        exe.exists(),
        "{} is missing: cargo build --release -p pvguest-demos --bins",
        exe.display()
    );
    let shim = ShimDaemon::start("xsbench")?;
    let control = Arc::new(shim.control()?);
    let dir = std::env::temp_dir().join(unique_name("xenstored-bench"));
    std::fs::create_dir_all(&dir)?;
    let xsd = xen_testhost::Xenstored::start(&dir.join("socket"), shim.socket())?;
    let xs = Client::connect_path(xsd.socket())?;
    let mut samples = Vec::new();
    for round in 0..rounds {
        let m = messages.to_string();
        let mut g = GuestProcess::spawn(
            Arc::clone(&control),
            shim.socket(),
            &unique_name("xsbench"),
            8,
            &exe,
            &[
                "--demo",
                "xenstore-bench",
                "--messages",
                &m,
                "--timeout-secs",
                "120",
            ],
        )?;
        introduce(&control, &xs, g.domid())?;
        for _ in 0..2 {
            let l = g.expect("xsbench", STEP)?;
            samples.push(Sample {
                path: "ring",
                op: l.fields.get("op").cloned().unwrap_or_default(),
                ops_per_s: l.num("ops_per_s").unwrap_or(0.0),
                p50_ns: l.num("p50_ns").unwrap_or(0),
                p99_ns: l.num("p99_ns").unwrap_or(0),
            });
        }
        g.destroy()?;
        samples.extend(socket_round(&xs, messages)?);
        for s in &samples[samples.len().saturating_sub(4)..] {
            println!(
                "{{\"round\":{round},\"path\":\"{}\",\"op\":\"{}\",\"messages\":{messages},\"ops_per_s\":{:.0},\"p50_ns\":{},\"p99_ns\":{}}}",
                s.path, s.op, s.ops_per_s, s.p50_ns, s.p99_ns
            );
        }
    }
    for op in ["read", "write"] {
        let rate = |path: &str| {
            median_spread(
                samples
                    .iter()
                    .filter(|s| s.path == path && s.op == op)
                    .map(|s| s.ops_per_s)
                    .collect(),
            )
        };
        let p50 = |path: &str| {
            median_spread(
                samples
                    .iter()
                    .filter(|s| s.path == path && s.op == op)
                    .map(|s| s.p50_ns as f64)
                    .collect(),
            )
            .0
        };
        let (rm, rlo, rhi) = rate("ring");
        let (sm, slo, shi) = rate("socket");
        println!(
            "{{\"summary\":\"{op}\",\"rounds\":{rounds},\"ring_ops_per_s_median\":{rm:.0},\"ring_min\":{rlo:.0},\"ring_max\":{rhi:.0},\"socket_ops_per_s_median\":{sm:.0},\"socket_min\":{slo:.0},\"socket_max\":{shi:.0},\"ring_over_socket\":{:.3},\"ring_p50_ns_median\":{:.0},\"socket_p50_ns_median\":{:.0}}}",
            if sm > 0.0 { rm / sm } else { 0.0 },
            p50("ring"),
            p50("socket"),
        );
    }
    drop(xsd);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
