//! Running `fio` and reading its JSON output.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{Load, Sample};

/// fio's arguments for `load` on `file` for `runtime` (`engine`: io_uring
/// in Dom0, psync in the guest; `direct`: O_DIRECT, which tmpfs lacks).
pub fn args(
    file: &Path,
    load: &Load,
    runtime: Duration,
    engine: &str,
    direct: bool,
) -> Vec<String> {
    let rw = match load.pattern {
        "randread" => "randread",
        "randwrite" => "randwrite",
        "seqread" => "read",
        _ => "write",
    };
    vec![
        "--name=blkbench".into(),
        format!("--filename={}", file.display()),
        format!("--ioengine={engine}"),
        format!("--direct={}", u8::from(direct)),
        format!("--rw={rw}"),
        format!("--bs={}", load.bs),
        format!("--iodepth={}", load.qd),
        "--time_based=1".into(),
        format!("--runtime={}ms", runtime.as_millis().max(1)),
        "--norandommap=1".into(),
        "--randrepeat=0".into(),
        "--output-format=json".into(),
    ]
}

/// fio's arguments for `load` on RBD image `pool/image` through fio's
/// `rbd` engine (librbd, as blkback's RBD engine); run them with
/// [`run_ceph`] to name the cluster's configuration.
pub fn rbd_args(pool: &str, image: &str, load: &Load, runtime: Duration) -> Vec<String> {
    let mut a: Vec<String> = args(Path::new("-"), load, runtime, "rbd", false)
        .into_iter()
        .filter(|x| !x.starts_with("--filename=") && !x.starts_with("--direct="))
        .collect();
    a.extend([
        "--clientname=admin".into(),
        format!("--pool={pool}"),
        format!("--rbdname={image}"),
    ]);
    a
}

/// Runs fio with `args` and parses its report.
pub fn run(args: &[String], bs: usize) -> Result<Sample> {
    run_env(args, bs, None)
}

/// [`run`] with `CEPH_CONF=conf` (fio's rbd engine reads librados'
/// default configuration search).
pub fn run_ceph(args: &[String], bs: usize, conf: &Path) -> Result<Sample> {
    run_env(args, bs, Some(conf))
}

fn run_env(args: &[String], bs: usize, ceph_conf: Option<&Path>) -> Result<Sample> {
    let mut cmd = Command::new("fio");
    cmd.args(args);
    if let Some(c) = ceph_conf {
        cmd.env("CEPH_CONF", c);
    }
    let out = cmd
        .output()
        .context("cannot run fio (apt-get install -y fio, or tests/setup-host.sh)")?;
    if !out.status.success() {
        bail!(
            "fio {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout), bs)
}

/// Parses fio's `--output-format=json` report (the first job; the read or
/// write side that did I/O). Text before the JSON (warnings) is skipped.
pub fn parse(text: &str, bs: usize) -> Result<Sample> {
    let start = text.find('{').context("no JSON in fio's output")?;
    let v: serde_json::Value =
        serde_json::from_str(&text[start..]).context("fio's JSON report does not parse")?;
    let job = &v["jobs"][0];
    let side = if job["read"]["io_bytes"].as_u64().unwrap_or(0) > 0 {
        &job["read"]
    } else {
        &job["write"]
    };
    let iops = side["iops"].as_f64().context("fio report has no iops")?;
    let bytes_per_s = side["bw_bytes"].as_f64().unwrap_or(iops * bs as f64);
    let pct = &side["clat_ns"]["percentile"];
    Ok(Sample {
        iops,
        bytes_per_s,
        p50_ns: pct["50.000000"].as_u64().unwrap_or(0),
        p99_ns: pct["99.000000"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_read_report_takes_read_side_and_percentiles() {
        // Arrange
        let text = r#"note: a warning
{"jobs":[{"read":{"io_bytes":4096,"iops":1000.5,"bw_bytes":4098048,
"clat_ns":{"percentile":{"50.000000":1200,"99.000000":5000}}},
"write":{"io_bytes":0,"iops":0.0,"bw_bytes":0}}]}"#;
        // Act
        let s = parse(text, 4096).expect("parses");
        // Assert
        assert_eq!(s.iops, 1000.5);
        assert_eq!(s.bytes_per_s, 4098048.0);
        assert_eq!((s.p50_ns, s.p99_ns), (1200, 5000));
    }

    #[test]
    fn test_parse_garbage_is_an_error() {
        assert!(parse("fio: no such engine", 4096).is_err());
    }
}
