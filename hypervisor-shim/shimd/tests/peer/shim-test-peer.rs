//! `shim-test-peer`: a guest runtime that attaches as domain N (from the
//! `XEN_SHIM_*` environment) and executes one command per stdin line, answering
//! one line on stdout: `ok [values...]` or `err <code> <message>` (code: the
//! errno for event-channel errors, the `GNTST_*` for grant errors). Used by
//! this crate's cross-process tests (`tests/common`) to drive a real guest
//! process: a test-only binary, in no library's API.
//!
//! Commands (numbers in decimal; data in hex):
//! `info`, `grant REF DOMID GFN ro|rw`, `end REF`, `flags REF`,
//! `write GFN OFF HEX`, `read GFN OFF LEN`, `setup_table N`, `query_size`,
//! `set_version V`, `copy SRCDOM SRC(ref) SRCOFF DSTGFN DSTOFF LEN`,
//! `alloc_unbound REMOTE`, `bind_interdomain RDOM RPORT`, `bind_virq VIRQ`,
//! `bind_ipi`, `send PORT`, `flood PORT N`, `poll PORT MS`, `block MS`,
//! `scan`, `mask PORT`, `unmask PORT`, `pending PORT`, `clear PORT`,
//! `status PORT`, `close PORT`, `reset`, `stats PORT`, `events`,
//! `ratelimit PER_SEC BURST`, `process`, `shutdown REASON`, `reattach`,
//! `fds`, `exit`.
//!
//! With `XEN_SHIM_PEER_DOM0=1` it is a Dom0 grant mapper instead (see
//! `dom0_main`), for the tests of what happens to a dead mapper's grants.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use xen_abi::event_channel::*;
use xen_abi::grant_table::*;
use xen_abi::xen::{sched_shutdown, DOMID_SELF};
use xen_diag::ErrorChain;

use xen_shim_guest::Hypervisor;
use xen_shim_proto::evtchn::{EvtchnError, EvtchnRateLimit};
use xen_shim_proto::grant::{self, GrantError};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn ev(e: EvtchnError) -> String {
    format!("err {} {}", e.errno(), ErrorChain(&e))
}

fn gr(e: GrantError) -> String {
    format!("err {} {}", e.gntst(), ErrorChain(&e))
}

fn num<T: std::str::FromStr>(a: &[&str], i: usize) -> Result<T, String> {
    a.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("err 22 argument {i} missing or malformed"))
}

#[allow(non_upper_case_globals)] // Xen constant names in patterns
fn exec(hv: &Hypervisor, line: &str) -> Result<String, String> {
    let a: Vec<&str> = line.split_whitespace().collect();
    let Some(&cmd) = a.first() else {
        return Ok("ok".into());
    };
    Ok(match cmd {
        "info" => {
            let si = hv
                .start_info()
                .map_err(|e| format!("err 5 {}", ErrorChain(&e)))?;
            let l = hv.layout();
            format!(
                "ok domid={} nr_pages={} shared_info={} store_mfn={} store_evtchn={} console_mfn={} console_evtchn={} xenstore_gfn={} console_gfn={}",
                hv.domid(),
                si.nr_pages,
                si.shared_info,
                si.store_mfn,
                si.store_evtchn,
                si.console.domU().mfn,
                si.console.domU().evtchn,
                l.xenstore_gfn(),
                l.console_gfn()
            )
        }
        "grant" => {
            let ro = a.get(4) == Some(&"ro");
            hv.grant_foreign_access(num(&a, 1)?, num(&a, 2)?, num(&a, 3)?, ro)
                .map_err(gr)?;
            "ok".into()
        }
        "end" => match hv.end_foreign_access(num(&a, 1)?) {
            Ok(()) => "ok".into(),
            Err(GrantError::InUse { .. }) => "inuse".into(),
            Err(e) => gr(e),
        },
        "flags" => {
            let t = hv.grant_table().map_err(gr)?;
            match grant::entry_flags(&t, num(&a, 1)?) {
                Some((f, d)) => format!("ok {f} {d}"),
                None => "err -3 bad ref".into(),
            }
        }
        "write" => {
            let data = unhex(a.get(3).copied().unwrap_or("")).ok_or("err 22 bad hex")?;
            let p = hv
                .memory()
                .page(num(&a, 1)?)
                .map_err(|e| format!("err 22 {e}"))?;
            p.write(num(&a, 2)?, &data)
                .map_err(|e| format!("err 22 {e}"))?;
            "ok".into()
        }
        "read" => {
            let mut buf = vec![0u8; num::<usize>(&a, 3)?.min(1 << 20)];
            let p = hv
                .memory()
                .page(num(&a, 1)?)
                .map_err(|e| format!("err 22 {e}"))?;
            p.read(num(&a, 2)?, &mut buf)
                .map_err(|e| format!("err 22 {e}"))?;
            format!("ok {}", hex(&buf))
        }
        "setup_table" => {
            let n: u32 = num(&a, 1)?;
            let mut op = gnttab_setup_table {
                dom: DOMID_SELF,
                nr_frames: n,
                ..Default::default()
            };
            let mut frames = vec![0u64; n as usize];
            hv.gnttabop_setup_table(&mut op, &mut frames).map_err(gr)?;
            let f: Vec<String> = frames.iter().map(|f| f.to_string()).collect();
            format!("ok {}", f.join(" "))
        }
        "query_size" => {
            let mut op = gnttab_query_size {
                dom: DOMID_SELF,
                ..Default::default()
            };
            hv.gnttabop_query_size(&mut op).map_err(gr)?;
            format!("ok {} {}", op.nr_frames, op.max_nr_frames)
        }
        "set_version" => {
            let mut op = gnttab_set_version {
                version: num(&a, 1)?,
            };
            match hv.gnttabop_set_version(&mut op) {
                Ok(()) => format!("ok {}", op.version),
                Err(GrantError::Control(e)) => {
                    format!("err {} {}", e.errno().unwrap_or(5), ErrorChain(&e))
                }
                Err(e) => gr(e),
            }
        }
        "copy" => {
            let mut op = gnttab_copy {
                len: num(&a, 6)?,
                flags: GNTCOPY_source_gref,
                ..Default::default()
            };
            op.source.domid = num(&a, 1)?;
            op.source.u = gnttab_copy_ptr_u::from_ref(num(&a, 2)?);
            op.source.offset = num(&a, 3)?;
            op.dest.domid = DOMID_SELF;
            op.dest.u = gnttab_copy_ptr_u::from_gmfn(num(&a, 4)?);
            op.dest.offset = num(&a, 5)?;
            let mut ops = [op];
            hv.gnttabop_copy(&mut ops).map_err(gr)?;
            format!("ok {}", ops[0].status)
        }
        "alloc_unbound" => {
            let mut op = evtchn_alloc_unbound {
                dom: DOMID_SELF,
                remote_dom: num(&a, 1)?,
                port: 0,
            };
            hv.evtchnop_alloc_unbound(&mut op).map_err(ev)?;
            format!("ok {}", op.port)
        }
        "bind_interdomain" => {
            let mut op = evtchn_bind_interdomain {
                remote_dom: num(&a, 1)?,
                remote_port: num(&a, 2)?,
                ..Default::default()
            };
            hv.evtchnop_bind_interdomain(&mut op).map_err(ev)?;
            format!("ok {}", op.local_port)
        }
        "bind_virq" => {
            let mut op = evtchn_bind_virq {
                virq: num(&a, 1)?,
                vcpu: 0,
                port: 0,
            };
            hv.evtchnop_bind_virq(&mut op).map_err(ev)?;
            format!("ok {}", op.port)
        }
        "bind_ipi" => {
            let mut op = evtchn_bind_ipi { vcpu: 0, port: 0 };
            hv.evtchnop_bind_ipi(&mut op).map_err(ev)?;
            format!("ok {}", op.port)
        }
        "send" => {
            hv.evtchnop_send(&evtchn_send { port: num(&a, 1)? })
                .map_err(ev)?;
            "ok".into()
        }
        "flood" => {
            let port = num(&a, 1)?;
            let n: u64 = num(&a, 2)?;
            for _ in 0..n {
                hv.evtchnop_send(&evtchn_send { port }).map_err(ev)?;
            }
            "ok".into()
        }
        "poll" => {
            let port: u32 = num(&a, 1)?;
            let ms: u64 = num(&a, 2)?;
            if hv
                .schedop_poll(&[port], Some(Duration::from_millis(ms)))
                .map_err(ev)?
            {
                "ok pending".into()
            } else {
                "ok timeout".into()
            }
        }
        "block" => {
            let ms: u64 = num(&a, 1)?;
            if hv
                .schedop_block(Some(Duration::from_millis(ms)))
                .map_err(ev)?
            {
                "ok upcall".into()
            } else {
                "ok timeout".into()
            }
        }
        "process" => {
            let n = hv.process_events().map_err(ev)?;
            format!("ok {n}")
        }
        "scan" => {
            let mut ports = Vec::new();
            hv.handle_upcall(0, |p| ports.push(p.to_string()));
            format!("ok {}", ports.join(" "))
        }
        "mask" => {
            hv.mask(num(&a, 1)?);
            "ok".into()
        }
        "unmask" => {
            hv.evtchnop_unmask(&evtchn_unmask { port: num(&a, 1)? })
                .map_err(ev)?;
            "ok".into()
        }
        "pending" => format!("ok {}", u8::from(hv.is_pending(num(&a, 1)?))),
        "clear" => {
            hv.clear_pending(num(&a, 1)?);
            "ok".into()
        }
        "status" => {
            let mut op = evtchn_status {
                dom: DOMID_SELF,
                port: num(&a, 1)?,
                ..Default::default()
            };
            hv.evtchnop_status(&mut op).map_err(ev)?;
            let (d, p) = match op.status {
                EVTCHNSTAT_interdomain => (op.u.interdomain().dom, op.u.interdomain().port),
                EVTCHNSTAT_unbound => (op.u.unbound().dom, 0),
                EVTCHNSTAT_virq => (0, op.u.virq()),
                _ => (0, 0),
            };
            format!("ok {} {} {}", op.status, d, p)
        }
        "close" => {
            hv.evtchnop_close(&evtchn_close { port: num(&a, 1)? })
                .map_err(ev)?;
            "ok".into()
        }
        "reset" => {
            hv.evtchnop_reset(&evtchn_reset { dom: DOMID_SELF })
                .map_err(ev)?;
            "ok".into()
        }
        "stats" => match hv.port_stats(num(&a, 1)?) {
            Some(s) => format!("ok {} {} {}", s.events, s.wakeups, s.throttled),
            None => "err 22 unknown port".into(),
        },
        "ratelimit" => {
            hv.set_rate_limit(Some(EvtchnRateLimit {
                per_second: num(&a, 1)?,
                burst: num(&a, 2)?,
            }));
            "ok".into()
        }
        "events" => {
            let e: Vec<String> = hv
                .take_control_events()
                .iter()
                .map(|e| serde_json::to_string(e).unwrap_or_default())
                .collect();
            format!("ok {}", e.join(" "))
        }
        "shutdown" => {
            hv.schedop_shutdown(&sched_shutdown {
                reason: num(&a, 1)?,
            })
            .map_err(|e| format!("err 5 {}", ErrorChain(&e)))?;
            "ok".into()
        }
        "reattach" => {
            hv.reattach()
                .map_err(|e| format!("err 5 {}", ErrorChain(&e)))?;
            "ok".into()
        }
        "fds" => format!("ok {}", xen_shim_proto::sys::count_open_fds().unwrap_or(0)),
        "exit" => return Err("exit".into()),
        other => format!("err 22 unknown command {other}"),
    })
}

/// Dom0 mode (`XEN_SHIM_PEER_DOM0=1`): a Dom0 mapper process holding
/// `xen_shim_dom0::Gntdev` mappings. Commands: `map DOMID REF ro|rw` and
/// `mapn DOMID REF,REF,... ro|rw` (answer `ok INDEX`), `unmap INDEX`,
/// `pin_halfway DOMID REF ro|rw` (stops inside a pin, the entry locked, as
/// a mapper killed there),
/// `write INDEX OFF HEX`, `read INDEX OFF LEN`, `close_gntdev` (drops the
/// handle, the mappings stay), `exit`.
fn dom0_main() -> ExitCode {
    use xen_shim_dom0::Gntdev;
    let mut gntdev = match Gntdev::open_default() {
        Ok(g) => Some(g),
        Err(e) => {
            println!("err 5 gntdev open failed: {}", ErrorChain(&e));
            return ExitCode::FAILURE;
        }
    };
    let mut maps: Vec<Option<xen_shim_dom0::GrantMapping>> = Vec::new();
    serve_lines(
        &format!("ok attached 0 pid {}", std::process::id()),
        |line| {
            let a: Vec<&str> = line.split_whitespace().collect();
            let idx = |i: usize| -> Result<usize, String> { num::<usize>(&a, i) };
            let reply: Result<String, String> = (|| {
                Ok(match a.first().copied().unwrap_or("") {
                    "map" | "mapn" => {
                        let g = gntdev.as_ref().ok_or("err 9 gntdev closed")?;
                        let domid: u16 = num(&a, 1)?;
                        let refs: Vec<u32> = a
                            .get(2)
                            .ok_or("err 22 refs missing")?
                            .split(',')
                            .map(|r| r.parse().map_err(|_| "err 22 bad ref".to_string()))
                            .collect::<Result<_, _>>()?;
                        let rw = a.get(3) == Some(&"rw");
                        let m = if a[0] == "map" {
                            g.map_grant_ref(domid, refs[0], rw)
                        } else {
                            g.map_grant_refs(domid, &refs, rw)
                        }
                        .map_err(gr)?;
                        maps.push(Some(m));
                        format!("ok {}", maps.len() - 1)
                    }
                    "pin_halfway" => {
                        let g = gntdev.as_ref().ok_or("err 9 gntdev closed")?;
                        let d = g.domain(num(&a, 1)?).map_err(gr)?;
                        d.pin_halfway_for_tests(num(&a, 2)?, 0, a.get(3) == Some(&"rw"))
                            .map_err(gr)?;
                        "ok".into()
                    }
                    "unmap" => {
                        let m = maps
                            .get_mut(idx(1)?)
                            .and_then(Option::take)
                            .ok_or("err 22 no such mapping")?;
                        m.unmap().map_err(gr)?;
                        "ok".into()
                    }
                    "write" => {
                        let m = maps
                            .get(idx(1)?)
                            .and_then(Option::as_ref)
                            .ok_or("err 22 no such mapping")?;
                        let data =
                            unhex(a.get(3).copied().unwrap_or("")).ok_or("err 22 bad hex")?;
                        m.write(num(&a, 2)?, &data)
                            .map_err(|e| format!("err 22 {e}"))?;
                        "ok".into()
                    }
                    "read" => {
                        let m = maps
                            .get(idx(1)?)
                            .and_then(Option::as_ref)
                            .ok_or("err 22 no such mapping")?;
                        let mut buf = vec![0u8; num::<usize>(&a, 3)?.min(1 << 20)];
                        m.read(num(&a, 2)?, &mut buf)
                            .map_err(|e| format!("err 22 {e}"))?;
                        format!("ok {}", hex(&buf))
                    }
                    "close_gntdev" => {
                        gntdev = None;
                        "ok".into()
                    }
                    "exit" => return Err("exit".into()),
                    "" => "ok".into(),
                    other => format!("err 22 unknown command {other}"),
                })
            })();
            reply
        },
    )
}

/// Writes `greeting`, then answers each line of stdin with `exec`'s reply
/// until stdin ends or `exec` returns `Err("exit")` ("ok bye").
fn serve_lines(greeting: &str, mut exec: impl FnMut(&str) -> Result<String, String>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{greeting}")
        .and_then(|_| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else {
            break;
        };
        let reply = match exec(&line) {
            Ok(r) => r,
            Err(e) if e == "exit" => {
                let _ = writeln!(out, "ok bye");
                let _ = out.flush();
                return ExitCode::SUCCESS;
            }
            Err(e) => e,
        };
        if writeln!(out, "{reply}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    if std::env::var_os("XEN_SHIM_PEER_DOM0").is_some_and(|v| v == "1") {
        return dom0_main();
    }
    let hv = match Hypervisor::attach_from_env() {
        Ok(h) => h,
        Err(e) => {
            println!("err 5 attach failed: {}", ErrorChain(&e));
            return ExitCode::FAILURE;
        }
    };
    serve_lines(&format!("ok attached {}", hv.domid()), |line| {
        exec(&hv, line)
    })
}
