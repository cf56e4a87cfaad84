//! `XS_CONTROL` commands, as `xenstore-control` sends them: `check`, `log`,
//! `logfile`, `memreport`, `print`, `quota`, `quota-soft`, `help`.

use xenstore_wire::{strings, XsError};

use crate::core::Core;
use crate::persist::Record;
use crate::quota;

const HELP: &[(&str, &str)] = &[
    ("check", ""),
    ("log", "[on|off]"),
    ("logfile", "<file>"),
    ("memreport", "[<file>]"),
    ("print", "<string>"),
    ("quota", "[set <name> <val>|<domid>]"),
    ("quota-soft", "[set <name> <val>]"),
    ("help", ""),
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
    match cmd {
        b"check" => {
            if !params.is_empty() {
                return Err(XsError::Einval);
            }
            let fixes = core.tree.check();
            if fixes > 0 {
                tracing::warn!(fixes, "store check repaired inconsistencies");
            }
            Ok(None)
        }
        b"log" => match params.as_slice() {
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
        },
        b"logfile" => {
            if params.len() != 1 {
                return Err(XsError::Einval);
            }
            tracing::info!(
                file = params[0],
                "control: logfile request (logging goes to the daemon's log)"
            );
            Ok(None)
        }
        b"memreport" => {
            if params.len() > 1 {
                return Err(XsError::Einval);
            }
            tracing::info!("memreport:\n{}", core.stats());
            Ok(None)
        }
        b"print" => {
            if params.len() != 1 {
                return Err(XsError::Einval);
            }
            tracing::info!("control: {}", params[0]);
            Ok(None)
        }
        b"quota" => match params.as_slice() {
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
        },
        b"quota-soft" => match params.as_slice() {
            [] => Ok(Some(String::from("Quota settings:\n"))),
            _ => Err(XsError::Einval),
        },
        b"help" => {
            let mut s = String::new();
            for (c, p) in HELP {
                s.push_str(&format!("{c:<15} {p}\n"));
            }
            Ok(Some(s))
        }
        _ => Err(XsError::Einval),
    }
}
