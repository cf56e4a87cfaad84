//! `XS_CONTROL` commands, as `xenstore-control` sends them: `check`, `log`,
//! `logfile`, `memreport`, `print`, `quota`, `quota-soft`, `help`: one row of
//! `COMMANDS` (name, usage, function) each, as Xen's `cmds[]`.

use std::fmt::Write as _;

use xenstore_wire::{strings, XsError};

use crate::core::Core;
use crate::persist::Record;
use crate::quota;

/// One command (Xen's `cmds[]` in `xenstored_control.c`): its name, the
/// parameters `help` lists, and what runs it with the parameters.
struct Command {
    name: &'static str,
    usage: &'static str,
    run: fn(&mut Core, &[&str]) -> Result<Option<String>, XsError>,
}

/// The commands, in the order `help` lists them.
#[rustfmt::skip]
const COMMANDS: &[Command] = &[
    Command { name: "check",      usage: "",                           run: check },
    Command { name: "log",        usage: "[on|off]",                   run: log },
    Command { name: "logfile",    usage: "<file>",                     run: logfile },
    Command { name: "memreport",  usage: "[<file>]",                   run: memreport },
    Command { name: "print",      usage: "<string>",                   run: print },
    Command { name: "quota",      usage: "[set <name> <val>|<domid>]", run: quota },
    Command { name: "quota-soft", usage: "[set <name> <val>]",         run: quota_soft },
    Command { name: "help",       usage: "",                           run: help },
];

fn quota_settings(core: &Core) -> String {
    let mut s = String::from("Quota settings:\n");
    for (q, name) in quota::NAMES.iter().enumerate() {
        s.push_str(&format!("{:<17}: {:>8}\n", name, core.quotas.global(q)));
    }
    s
}

/// Runs a control command; `Ok(None)` means reply `OK`, `Ok(Some(text))`
/// replies with the text.
pub fn control(core: &mut Core, args: &[u8]) -> Result<Option<String>, XsError> {
    let mut it = strings(args);
    let cmd = it.next().ok_or(XsError::Einval)?;
    let params: Vec<&str> = it
        .map(|p| std::str::from_utf8(p).map_err(|_| XsError::Einval))
        .collect::<Result<_, _>>()?;
    let c = COMMANDS
        .iter()
        .find(|c| c.name.as_bytes() == cmd)
        .ok_or(XsError::Einval)?;
    (c.run)(core, &params)
}

fn check(core: &mut Core, params: &[&str]) -> Result<Option<String>, XsError> {
    if !params.is_empty() {
        return Err(XsError::Einval);
    }
    let fixes = core.tree.check();
    if fixes > 0 {
        tracing::warn!(fixes, "store check repaired inconsistencies");
    }
    Ok(None)
}

fn log(core: &mut Core, params: &[&str]) -> Result<Option<String>, XsError> {
    match params {
        [] => Ok(Some(format!(
            "Log switch settings:\nrequests: {}\n",
            if core.trace_requests { "on" } else { "off" }
        ))),
        ["on"] => {
            core.trace_requests = true;
            Ok(None)
        }
        ["off"] => {
            core.trace_requests = false;
            Ok(None)
        }
        _ => Err(XsError::Einval),
    }
}

fn logfile(_core: &mut Core, params: &[&str]) -> Result<Option<String>, XsError> {
    let [file] = params else {
        return Err(XsError::Einval);
    };
    tracing::info!(
        file,
        "control: logfile request (logging goes to the daemon's log)"
    );
    Ok(None)
}

fn memreport(core: &mut Core, params: &[&str]) -> Result<Option<String>, XsError> {
    if params.len() > 1 {
        return Err(XsError::Einval);
    }
    let mut report = core.stats();
    for d in core.domains.iter() {
        let u = core.tree.usage(d.domid);
        let _ = writeln!(
            report,
            "domain {}: {} nodes, {} bytes of nodes (quota memory {})",
            d.domid,
            u.nodes,
            u.bytes,
            core.quotas.get(d.domid, quota::MEMORY)
        );
    }
    tracing::info!("memreport:\n{report}");
    Ok(None)
}

fn print(_core: &mut Core, params: &[&str]) -> Result<Option<String>, XsError> {
    let [text] = params else {
        return Err(XsError::Einval);
    };
    tracing::info!("control: {}", text);
    Ok(None)
}

fn quota(core: &mut Core, params: &[&str]) -> Result<Option<String>, XsError> {
    match params {
        [] => Ok(Some(quota_settings(core))),
        ["set", name, val] => {
            let q = quota::by_name(name).map_err(|_| XsError::Einval)?;
            let v: u32 = val.parse().map_err(|_| XsError::Einval)?;
            if v < 1 {
                return Err(XsError::Einval);
            }
            core.quotas.set_global(q, v).map_err(|_| XsError::Einval)?;
            core.journal.record(&Record::Quota {
                domid: None,
                name: (*name).to_owned(),
                value: Some(v),
            });
            Ok(None)
        }
        [domid] => {
            let d: u16 = domid.parse().map_err(|_| XsError::Einval)?;
            if !core.domains.is_introduced(d) {
                return Err(XsError::Enoent);
            }
            Ok(Some(core.domain_quota_report(d)))
        }
        _ => Err(XsError::Einval),
    }
}

fn quota_soft(_core: &mut Core, params: &[&str]) -> Result<Option<String>, XsError> {
    match params {
        [] => Ok(Some(String::from("Quota settings:\n"))),
        _ => Err(XsError::Einval),
    }
}

fn help(_core: &mut Core, _params: &[&str]) -> Result<Option<String>, XsError> {
    let mut s = String::new();
    for c in COMMANDS {
        s.push_str(&format!("{:<15} {}\n", c.name, c.usage));
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_control_help_lists_every_command_in_order() {
        let mut core = Core::default();
        let text = control(&mut core, b"help\0").unwrap().unwrap();
        let names: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "check",
                "log",
                "logfile",
                "memreport",
                "print",
                "quota",
                "quota-soft",
                "help"
            ]
        );
        assert!(text.starts_with("check           \nlog             [on|off]\n"));
    }

    #[test]
    fn test_control_unknown_or_prefix_command_is_einval() {
        let mut core = Core::default();
        for cmd in [&b"nosuch\0"[..], b"quot\0", b"\0", b""] {
            assert_eq!(control(&mut core, cmd), Err(XsError::Einval), "{cmd:?}");
        }
    }

    #[test]
    fn test_control_log_switches_request_tracing() {
        let mut core = Core::default();
        assert_eq!(control(&mut core, b"log\0on\0"), Ok(None));
        assert!(core.trace_requests);
        let text = control(&mut core, b"log\0").unwrap().unwrap();
        assert_eq!(text, "Log switch settings:\nrequests: on\n");
        assert_eq!(control(&mut core, b"log\0maybe\0"), Err(XsError::Einval));
    }
}
