//! The guest's kernel command line (`extra`/`root`/`cmdline` of xl.cfg, in
//! `start_info.cmd_line`), parsed by Linux's rules (`lib/cmdline.c`
//! `next_arg`, `init/main.c` `unknown_bootoption`/`set_init_arg`):
//!
//! - words are separated by spaces; a word may be quoted (`"a b"`,
//!   `key="a b"`): the quotes group, and are removed;
//! - the runtime's own parameters: `root=`, `rootfstype=`, `rootflags=`,
//!   `ro`, `rw`, `init=`, `rdinit=`, `console=`, `quiet`, `loglevel=`,
//!   `debug`, and its "module parameters" `pvguest.timeout=SECONDS`;
//! - other dotted names (`module.param=...`) are a module's and dropped,
//!   as Linux does for modules it has not got;
//! - any other `key=value` goes to the environment of init (a later one
//!   replaces an earlier one of the same key), any other plain word to
//!   init's arguments;
//! - everything after `--` is init's arguments, verbatim (quotes removed).
//!
//! As Linux, init's environment starts with `HOME=/` and `TERM=linux`, and
//! the root file system is mounted read-only unless `rw` is given.

use std::time::Duration;

/// Most arguments and environment strings init gets (Linux's
/// `MAX_INIT_ARGS`/`MAX_INIT_ENVS` are 32 each).
pub const MAX_INIT_STRINGS: usize = 32;

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// A parameter's value is not what it must be.
    #[error("bad value for {param}: {value:?} ({why})")]
    BadValue {
        /// The parameter.
        param: String,
        /// Its value.
        value: String,
        /// What it must be.
        why: &'static str,
    },
    /// More init arguments or environment strings than Linux allows.
    #[error("too many init {0} (at most {MAX_INIT_STRINGS})")]
    TooMany(&'static str),
}

/// What the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// `root=`: the root device (`/dev/xvda`), if any.
    pub root: Option<String>,
    /// `rootfstype=`: file system types to try, in order (empty: probe).
    pub rootfstype: Vec<String>,
    /// `rootflags=`: mount options of the root file system.
    pub rootflags: Option<String>,
    /// Mount the root read-write (`rw`); read-only by default (`ro`).
    pub rw: bool,
    /// `init=`: the init program (default: Linux's list, [`INIT_CANDIDATES`]).
    pub init: Option<String>,
    /// `rdinit=`: the init program of an initramfs (default `/init`).
    pub rdinit: Option<String>,
    /// `console=` values, in order.
    pub consoles: Vec<String>,
    /// `quiet`: the runtime prints only errors on the console.
    pub quiet: bool,
    /// `pvguest.timeout=`: how long to wait for each backend.
    pub timeout: Option<Duration>,
    /// init's arguments after `argv[0]`.
    pub init_args: Vec<String>,
    /// init's environment (`KEY=value`).
    pub init_env: Vec<String>,
}

/// The programs Linux tries as init when `init=` is not given (or fails),
/// in order.
pub const INIT_CANDIDATES: [&str; 4] = ["/sbin/init", "/etc/init", "/bin/init", "/bin/sh"];

impl Default for BootParams {
    fn default() -> Self {
        Self {
            root: None,
            rootfstype: Vec::new(),
            rootflags: None,
            rw: false,
            init: None,
            rdinit: None,
            consoles: Vec::new(),
            quiet: false,
            timeout: None,
            init_args: Vec::new(),
            init_env: vec!["HOME=/".to_owned(), "TERM=linux".to_owned()],
        }
    }
}

/// Splits off the next word of `s` as Linux's `next_arg` does: returns
/// `(param, value, rest)` with quotes removed, or `None` at the end.
fn next_arg(s: &str) -> Option<(String, Option<String>, &str)> {
    let s = s.trim_start_matches(|c: char| c.is_ascii_whitespace());
    if s.is_empty() {
        return None;
    }
    let quoted = s.starts_with('"');
    let w = if quoted { &s[1..] } else { s };
    let b = w.as_bytes();
    let mut in_quote = quoted;
    let mut equals = None;
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() && !in_quote {
            break;
        }
        if equals.is_none() && b[i] == b'=' {
            equals = Some(i);
        }
        if b[i] == b'"' {
            in_quote = !in_quote;
        }
        i += 1;
    }
    let rest = &w[i..];
    let word = &w[..i];
    // `"` and `=` are ASCII: every cut below is on a character boundary.
    let ends_quoted = word.ends_with('"');
    let (param, value) = match equals {
        None => {
            let p = if quoted && ends_quoted {
                &word[..word.len() - 1]
            } else {
                word
            };
            (p.to_owned(), None)
        }
        Some(eq) => {
            let mut v = &word[eq + 1..];
            let mut strip_end = quoted && ends_quoted;
            if let Some(stripped) = v.strip_prefix('"') {
                v = stripped;
                strip_end |= ends_quoted;
            }
            if strip_end && v.ends_with('"') {
                v = &v[..v.len() - 1];
            }
            (word[..eq].to_owned(), Some(v.to_owned()))
        }
    };
    Some((param, value, rest))
}

/// Joins a parameter and its value back (`key=value`, or `key`).
fn joined(param: &str, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{param}={v}"),
        None => param.to_owned(),
    }
}

fn push_limited(v: &mut Vec<String>, s: String, what: &'static str) -> Result<(), CmdlineError> {
    if v.len() >= MAX_INIT_STRINGS {
        return Err(CmdlineError::TooMany(what));
    }
    v.push(s);
    Ok(())
}

/// Parses a kernel command line (see the [module docs](self)).
///
/// # Errors
/// A bad `pvguest.timeout=`, or more than [`MAX_INIT_STRINGS`] init
/// arguments or environment strings.
pub fn parse(line: &str) -> Result<BootParams, CmdlineError> {
    let mut p = BootParams::default();
    let mut rest = line;
    while let Some((param, value, r)) = next_arg(rest) {
        rest = r;
        if param == "--" && value.is_none() {
            // Init's arguments, verbatim.
            while let Some((param, value, r)) = next_arg(rest) {
                rest = r;
                push_limited(
                    &mut p.init_args,
                    joined(&param, value.as_deref()),
                    "arguments",
                )?;
            }
            break;
        }
        match (param.as_str(), value) {
            ("root", Some(v)) => p.root = Some(v),
            ("rootfstype", Some(v)) => {
                p.rootfstype = v
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            ("rootflags", Some(v)) => p.rootflags = Some(v),
            ("ro", None) => p.rw = false,
            ("rw", None) => p.rw = true,
            ("init", Some(v)) => p.init = Some(v),
            ("rdinit", Some(v)) => p.rdinit = Some(v),
            ("console", Some(v)) => p.consoles.push(v),
            ("quiet", None) => p.quiet = true,
            ("debug", None) | ("loglevel", Some(_)) => {}
            ("pvguest.timeout", Some(v)) => {
                let secs: u64 = v.parse().map_err(|_| CmdlineError::BadValue {
                    param: param.clone(),
                    value: v.clone(),
                    why: "a number of seconds",
                })?;
                p.timeout = Some(Duration::from_secs(secs));
            }
            // A module's parameter (`name.param`): not ours, dropped.
            (name, _) if name.contains('.') => {}
            (name, Some(v)) => {
                let prefix = format!("{name}=");
                let s = format!("{prefix}{v}");
                match p.init_env.iter_mut().find(|e| e.starts_with(&prefix)) {
                    Some(e) => *e = s,
                    None => push_limited(&mut p.init_env, s, "environment strings")?,
                }
            }
            (name, None) => push_limited(&mut p.init_args, name.to_owned(), "arguments")?,
        }
    }
    Ok(p)
}

/// The command line stored in `start_info.cmd_line` (NUL-terminated, as
/// Xen's domain builder writes it), as text.
#[must_use]
pub fn from_start_info(cmd_line: &[i8]) -> String {
    let bytes: Vec<u8> = cmd_line
        .iter()
        .map(|&c| c.to_ne_bytes()[0])
        .take_while(|&c| c != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<(String, Option<String>)> {
        let mut v = Vec::new();
        let mut rest = s;
        while let Some((p, val, r)) = next_arg(rest) {
            v.push((p, val));
            rest = r;
        }
        v
    }

    #[test]
    fn test_next_arg_quotes_group_and_are_removed() {
        assert_eq!(
            words(r#"a  "b c" d="e f" g=h"#),
            vec![
                ("a".into(), None),
                ("b c".into(), None),
                ("d".into(), Some("e f".into())),
                ("g".into(), Some("h".into())),
            ]
        );
        assert_eq!(words("   "), vec![]);
        assert_eq!(words("k="), vec![("k".into(), Some(String::new()))]);
        assert_eq!(
            words(r#""unterminated word"#),
            vec![("unterminated word".into(), None)]
        );
    }

    #[test]
    fn test_parse_default_is_read_only_with_linux_environment() {
        let p = parse("").expect("empty is valid");
        assert!(!p.rw && p.root.is_none() && p.init.is_none());
        assert_eq!(p.init_env, vec!["HOME=/", "TERM=linux"]);
        assert_eq!(p.timeout, None);
    }

    #[test]
    fn test_parse_kernel_parameters_are_consumed() {
        let p = parse(
            "root=/dev/xvda rw rootfstype=ext4,ext2 rootflags=noatime init=/bin/sh console=hvc0 quiet loglevel=3 pvguest.timeout=60",
        )
        .expect("valid");
        assert_eq!(p.root.as_deref(), Some("/dev/xvda"));
        assert!(p.rw && p.quiet);
        assert_eq!(p.rootfstype, vec!["ext4", "ext2"]);
        assert_eq!(p.rootflags.as_deref(), Some("noatime"));
        assert_eq!(p.init.as_deref(), Some("/bin/sh"));
        assert_eq!(p.consoles, vec!["hvc0"]);
        assert_eq!(p.timeout, Some(Duration::from_secs(60)));
        assert!(p.init_args.is_empty());
        assert_eq!(p.init_env, vec!["HOME=/", "TERM=linux"]);
    }

    #[test]
    fn test_parse_unknown_key_values_go_to_env_and_words_to_argv() {
        let p = parse(r#"rw single ip=10.0.0.2::10.0.0.1:255.255.255.0 msg="hello world" TERM=vt100 usbcore.autosuspend=1 ip=10.0.0.3"#)
            .expect("valid");
        assert_eq!(p.init_args, vec!["single"]);
        assert_eq!(
            p.init_env,
            vec!["HOME=/", "TERM=vt100", "ip=10.0.0.3", "msg=hello world"]
        );
    }

    #[test]
    fn test_parse_after_dashes_everything_goes_to_init_verbatim() {
        let p = parse(r#"ro init=/bin/sh -- -c "echo a b" rw x=y"#).expect("valid");
        assert_eq!(p.init.as_deref(), Some("/bin/sh"));
        assert!(!p.rw, "rw after -- is init's");
        assert_eq!(p.init_args, vec!["-c", "echo a b", "rw", "x=y"]);
    }

    #[test]
    fn test_parse_later_ro_rw_wins() {
        assert!(!parse("rw ro").expect("valid").rw);
        assert!(parse("ro rw").expect("valid").rw);
    }

    #[test]
    fn test_parse_bad_timeout_is_refused() {
        let e = parse("pvguest.timeout=soon").expect_err("refused");
        assert!(matches!(e, CmdlineError::BadValue { .. }), "{e}");
    }

    #[test]
    fn test_parse_too_many_init_strings_are_refused() {
        let line: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        assert_eq!(
            parse(&line.join(" ")),
            Err(CmdlineError::TooMany("arguments"))
        );
        let line: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            parse(&line.join(" ")),
            Err(CmdlineError::TooMany("environment strings"))
        );
    }

    #[test]
    fn test_from_start_info_stops_at_nul() {
        let mut raw = [0i8; 16];
        for (d, s) in raw.iter_mut().zip(b"root=/x\0junk") {
            *d = *s as i8;
        }
        assert_eq!(from_start_info(&raw), "root=/x");
    }
}
