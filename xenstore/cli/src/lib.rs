//! The `xenstore` command: Xen's verbs (`read write rm exists list ls chmod
//! watch`) with Xen's options, output and exit codes, plus `mkdir` and
//! `getperms`. Also answers to `xenstore-<verb>` names (symlinks), as Xen's
//! multi-call binary does.

pub mod sanitise;

use std::ffi::OsString;
use std::io::Write;

use clap::{Args, Parser, Subcommand};

use sanitise::{sanitise, unsanitise};
use xenstore_client::{Client, XsClientError, XsOps};
use xenstore_wire::{Perm, PERM_BOTH, PERM_NONE, PERM_READ, PERM_WRITE};

/// How often a command's transaction is retried on `EAGAIN`.
pub const MAX_TRANSACTION_RETRIES: u32 = 1000;
/// `STRING_MAX` of Xen's client: longest path `ls` reads.
const STRING_MAX: usize = xenstore_wire::XENSTORE_ABS_PATH_MAX + 1024;
/// `ls`'s width when standard output is not a terminal.
const DEFAULT_WIDTH: usize = 80;
/// Column that `ls -p` pads to.
const DESIRED_WIDTH: usize = 60;
/// `TAG_LEN`: `strlen(" = \"...\"")`.
const TAG_LEN: usize = 8;

#[derive(Debug, Parser)]
#[command(
    name = "xenstore",
    about = "Read and change xenstore, as Xen's xenstore-* tools do"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Accepted for compatibility with Xen 4.17 (`-s`: use the socket); the
/// socket is always used.
#[derive(Debug, Args)]
struct SocketFlag {
    #[arg(short = 's', long = "socket", hide = true)]
    _socket: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the values of keys.
    Read {
        /// Print "key: " before each value.
        #[arg(short = 'p', long)]
        prefix: bool,
        /// Print values raw, without quoting.
        #[arg(short = 'R', long)]
        raw: bool,
        #[command(flatten)]
        s: SocketFlag,
        #[arg(required = true, allow_hyphen_values = true)]
        keys: Vec<String>,
    },
    /// Write key value pairs.
    Write {
        /// Take values raw, without unquoting.
        #[arg(short = 'R', long)]
        raw: bool,
        #[command(flatten)]
        s: SocketFlag,
        #[arg(required = true, allow_hyphen_values = true)]
        pairs: Vec<String>,
    },
    /// Remove keys.
    Rm {
        /// Also remove empty parents that have no value.
        #[arg(short = 't', long)]
        tidy: bool,
        #[command(flatten)]
        s: SocketFlag,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Exit 0 if all keys exist, 1 otherwise.
    Exists {
        #[command(flatten)]
        s: SocketFlag,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// List the children of keys.
    List {
        /// Print the full path of each child.
        #[arg(short = 'p', long)]
        prefix: bool,
        #[command(flatten)]
        s: SocketFlag,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print the tree below paths (default /).
    Ls {
        /// Print full paths.
        #[arg(short = 'f', long)]
        flat: bool,
        /// Print permissions.
        #[arg(short = 'p', long)]
        prefix: bool,
        #[command(flatten)]
        s: SocketFlag,
        paths: Vec<String>,
    },
    /// Set the permissions of a key: modes are n|r|w|b followed by a domid.
    Chmod {
        /// Also apply to all parents.
        #[arg(short = 'u', long)]
        upto: bool,
        /// Also apply to all children.
        #[arg(short = 'r', long)]
        recurse: bool,
        #[command(flatten)]
        s: SocketFlag,
        key: String,
        #[arg(required = true)]
        modes: Vec<String>,
    },
    /// Watch keys and print each path that fires.
    Watch {
        /// Stop after NR events.
        #[arg(
            short = 'n',
            long = "number",
            value_name = "NR",
            allow_negative_numbers = true
        )]
        number: Option<i64>,
        #[command(flatten)]
        s: SocketFlag,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Create keys with an empty value (if missing).
    Mkdir {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print the permissions of keys, one line each ("n0 r5").
    Getperms {
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

impl Cmd {
    /// Whether Xen runs this command inside a transaction.
    fn transactional(&self) -> bool {
        match self {
            Self::Read { keys, .. } => keys.len() > 1,
            Self::Write { pairs, .. } => pairs.len() > 2,
            Self::Ls { .. } | Self::Watch { .. } => false,
            _ => true,
        }
    }
}

/// A command failure that ends the program at once (Xen's `err`/`errx`).
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
struct Fatal {
    msg: String,
}

fn fatal(msg: impl Into<String>) -> Fatal {
    Fatal { msg: msg.into() }
}

/// `strerror` text of an error, as Xen's `err()` appends it.
fn strerror(e: &XsClientError) -> String {
    let s = std::io::Error::from_raw_os_error(e.errno()).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Where output goes; buffered output is printed once the command's
/// transaction is over, as Xen does.
struct Out<'a> {
    buf: Vec<u8>,
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
    prog: &'a str,
    width: usize,
}

impl Out<'_> {
    fn warnx(&mut self, msg: &str) {
        let _ = writeln!(self.stderr, "{}: {msg}", self.prog);
    }
}

/// Runs the command line `args` (with `args[0]` the program name) against
/// the socket from the environment, writing to `stdout`/`stderr`; returns the
/// exit code.
pub fn run(args: Vec<OsString>, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    let argv0 = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prog = argv0.rsplit('/').next().unwrap_or("xenstore").to_owned();
    let mut argv: Vec<OsString> = vec![OsString::from(&prog)];
    if let Some(verb) = prog.strip_prefix("xenstore-") {
        argv.push(verb.into());
    }
    argv.extend(args.into_iter().skip(1));
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let rendered = e.render().to_string();
            let _ = if e.use_stderr() {
                stderr.write_all(rendered.as_bytes())
            } else {
                stdout.write_all(rendered.as_bytes())
            };
            return code;
        }
    };
    if let Cmd::Write { pairs, .. } = &cli.cmd {
        if pairs.len() % 2 == 1 {
            let verb = if prog.starts_with("xenstore-") {
                ""
            } else {
                " write"
            };
            let _ = writeln!(
                stderr,
                "{prog}: Usage: {argv0}{verb} [-h] [-s] [-R] key value [...]"
            );
            return 1;
        }
    }
    let width = if matches!(cli.cmd, Cmd::Ls { .. }) {
        terminal_width()
    } else {
        DEFAULT_WIDTH
    };
    let mut out = Out {
        buf: Vec::new(),
        stdout,
        stderr,
        prog: &prog,
        width,
    };
    let client = match Client::connect() {
        Ok(c) => c,
        Err(e) => {
            out.warnx(&format!("xs_open: {}", strerror(&e)));
            return 1;
        }
    };
    match run_cmd(&client, &cli.cmd, &mut out) {
        Ok(code) => {
            let _ = out.stdout.write_all(&out.buf);
            let _ = out.stdout.flush();
            code
        }
        Err(f) => {
            let _ = out.stdout.flush();
            out.warnx(&f.msg);
            1
        }
    }
}

fn terminal_width() -> usize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which
    // points to a live, writable `winsize` owned by this frame; fd 1 is only
    // queried, and a failure leaves `ws` untouched.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_col > 2 {
        usize::from(ws.ws_col) - 2
    } else {
        DEFAULT_WIDTH
    }
}

fn run_cmd(client: &Client, cmd: &Cmd, out: &mut Out<'_>) -> Result<i32, Fatal> {
    if !cmd.transactional() {
        return perform(client, client, cmd, out);
    }
    for _ in 0..MAX_TRANSACTION_RETRIES {
        let tx = client
            .transaction_start()
            .map_err(|_| fatal("couldn't start transaction"))?;
        let ret = perform(client, &tx, cmd, out)?;
        match tx.end(ret == 0) {
            Ok(()) => return Ok(ret),
            Err(e) if ret == 0 && e.is_eagain() => out.buf.clear(),
            Err(_) => return Err(fatal("couldn't end transaction")),
        }
    }
    Err(fatal("couldn't end transaction"))
}

fn perform<O: XsOps>(client: &Client, xs: &O, cmd: &Cmd, out: &mut Out<'_>) -> Result<i32, Fatal> {
    match cmd {
        Cmd::Read {
            prefix, raw, keys, ..
        } => {
            for k in keys {
                let Ok(val) = xs.read(k) else {
                    out.warnx(&format!("couldn't read path {k}"));
                    return Ok(1);
                };
                if *prefix {
                    out.buf.extend_from_slice(format!("{k}: ").as_bytes());
                }
                if *raw {
                    out.buf.extend_from_slice(&val);
                } else {
                    out.buf.extend_from_slice(sanitise(&val).as_bytes());
                    out.buf.push(b'\n');
                }
            }
        }
        Cmd::Write { raw, pairs, .. } => {
            for kv in pairs.chunks_exact(2) {
                let val = if *raw {
                    kv[1].as_bytes().to_vec()
                } else {
                    unsanitise(&kv[1])
                };
                if xs.write(&kv[0], val).is_err() {
                    out.warnx(&format!("could not write path {}", kv[0]));
                    return Ok(1);
                }
            }
        }
        Cmd::Rm { tidy, keys, .. } => {
            for k in keys {
                if rm_one(xs, k, *tidy, out) != 0 {
                    return Ok(1);
                }
            }
        }
        Cmd::Exists { keys, .. } => {
            if keys.iter().any(|k| xs.read(k).is_err()) {
                return Ok(1);
            }
        }
        Cmd::List { prefix, keys, .. } => {
            for k in keys {
                let Ok(list) = xs.directory(k) else {
                    out.warnx(&format!("could not list path {k}"));
                    return Ok(1);
                };
                // Xen 4.17 prints "//child" for "/": kept byte for byte.
                let pref = k.as_str();
                for child in list {
                    if *prefix {
                        out.buf.extend_from_slice(format!("{pref}/").as_bytes());
                    }
                    out.buf.extend_from_slice(format!("{child}\n").as_bytes());
                }
            }
        }
        Cmd::Ls {
            flat,
            prefix,
            paths,
            ..
        } => {
            let default = ["/".to_owned()];
            let paths = if paths.is_empty() {
                &default[..]
            } else {
                &paths[..]
            };
            let mut ls = Ls::new(*flat, *prefix, out.width);
            for p in paths {
                ls.run(client, p, 0, out)?;
            }
        }
        Cmd::Chmod {
            upto,
            recurse,
            key,
            modes,
            ..
        } => {
            let perms = modes
                .iter()
                .map(|m| parse_mode(m))
                .collect::<Result<Vec<_>, _>>()?;
            chmod(xs, key, &perms, *upto, *recurse)?;
        }
        Cmd::Watch { number, keys, .. } => {
            for k in keys {
                if client.watch(k, k).is_err() {
                    return Err(fatal(format!("Unable to add watch on {k}\n")));
                }
            }
            let mut count: i64 = 0;
            let number = number.filter(|n| *n != -1);
            while number.is_none_or(|n| count < n) {
                match client.wait_watch_event(None) {
                    Ok(Some(ev)) => {
                        let _ = writeln!(out.stdout, "{}", ev.path);
                        let _ = out.stdout.flush();
                    }
                    Ok(None) => {}
                    Err(_) => return Ok(1),
                }
                count = count.saturating_add(1);
            }
        }
        Cmd::Mkdir { keys } => {
            for k in keys {
                if xs.mkdir(k).is_err() {
                    out.warnx(&format!("could not create path {k}"));
                    return Ok(1);
                }
            }
        }
        Cmd::Getperms { keys } => {
            for k in keys {
                let Ok(perms) = xs.get_perms(k) else {
                    out.warnx(&format!("could not get permissions of path {k}"));
                    return Ok(1);
                };
                let line: Vec<String> = perms.iter().map(ToString::to_string).collect();
                out.buf
                    .extend_from_slice(format!("{}\n", line.join(" ")).as_bytes());
            }
        }
    }
    Ok(0)
}

/// `rm`, with `-t`: then also removes each parent that has an empty value
/// and no children left, up to the root.
fn rm_one<O: XsOps>(xs: &O, key: &str, tidy: bool, out: &mut Out<'_>) -> i32 {
    let mut path = key.to_owned();
    // Each round removes one path component, so the path's length bounds it.
    for _ in 0..=key.len() {
        if xs.rm(&path).is_err() {
            out.warnx(&format!("could not remove path {path}"));
            return 1;
        }
        if !tidy {
            return 0;
        }
        let Some(slash) = path.rfind('/') else {
            return 0;
        };
        path.truncate(slash);
        let empty_value = xs.read(&path).is_ok_and(|v| v.is_empty());
        if !(empty_value && xs.directory(&path).is_ok_and(|l| l.is_empty())) {
            return 0;
        }
    }
    0
}

/// A chmod mode: `n|r|w|b` then a domid, read with `atoi` like Xen.
fn parse_mode(m: &str) -> Result<Perm, Fatal> {
    let mut chars = m.chars();
    let letter = chars.next().unwrap_or('\0');
    let access = match letter {
        'n' => PERM_NONE,
        'r' => PERM_READ,
        'w' => PERM_WRITE,
        'b' => PERM_BOTH,
        _ => {
            return Err(fatal(format!(
                "Invalid permission specification: '{letter}'"
            )))
        }
    };
    let id = atoi(chars.as_str());
    let domid = u16::try_from(id).map_err(|_| fatal(format!("Invalid domain id in '{m}'")))?;
    Ok(Perm::new(domid, access))
}

/// C's `atoi` then the cast to `unsigned int`: leading blanks, an optional
/// sign, digits up to the first non-digit; garbage reads as 0.
fn atoi(s: &str) -> u32 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for c in digits.bytes().take_while(u8::is_ascii_digit) {
        v = v.saturating_mul(10).saturating_add(i64::from(c - b'0'));
    }
    let v = if neg { -v } else { v };
    // Wrap to 32 bits exactly as the C conversion does.
    u32::from_le_bytes(v.to_le_bytes()[..4].try_into().expect("4 bytes"))
}

fn chmod<O: XsOps>(
    xs: &O,
    path: &str,
    perms: &[Perm],
    upto: bool,
    recurse: bool,
) -> Result<(), Fatal> {
    if path.is_empty() {
        return Ok(());
    }
    if let Err(e) = xs.set_perms(path, perms) {
        return Err(fatal(format!(
            "Error occurred setting permissions on '{path}': {}",
            strerror(&e)
        )));
    }
    if upto {
        let Some(slash) = path.rfind('/') else {
            return Err(fatal(format!(
                "Unable to locate path separator '/' in '{path}'"
            )));
        };
        chmod(xs, &path[..slash], perms, true, false)?;
    }
    if recurse {
        if let Ok(children) = xs.directory(path) {
            for c in children {
                chmod(xs, &format!("{path}/{c}"), perms, false, true)?;
            }
        }
    }
    Ok(())
}

/// `xenstore-ls`: the indented tree, with Xen's width rules.
struct Ls {
    max_width: usize,
    desired_width: usize,
    whole_path: bool,
    show_perms: bool,
}

impl Ls {
    fn new(flat: bool, show_perms: bool, width: usize) -> Self {
        if flat {
            Self {
                max_width: (i32::MAX / 2) as usize,
                desired_width: 0,
                whole_path: true,
                show_perms,
            }
        } else {
            Self {
                max_width: width,
                desired_width: DESIRED_WIDTH,
                whole_path: false,
                show_perms,
            }
        }
    }

    fn run(
        &mut self,
        client: &Client,
        path: &str,
        depth: usize,
        out: &mut Out<'_>,
    ) -> Result<(), Fatal> {
        let children = match client.directory(path) {
            Ok(c) => c,
            // A node that disappears while recursing is skipped.
            Err(e) if depth > 0 && e.is_enoent() => return Ok(()),
            Err(e) => return Err(fatal(format!("xs_directory ({path}): {}", strerror(&e)))),
        };
        for name in children {
            let sep = if path.ends_with('/') { "" } else { "/" };
            let newpath = format!("{path}{sep}{name}");
            let mut line = String::new();
            if self.whole_path {
                line.push_str(&newpath);
            } else {
                line.push_str(&" ".repeat(depth));
                let room = self.max_width.saturating_sub(TAG_LEN + depth);
                line.extend(name.chars().take(room));
            }
            // linewid counts what was printed, except the whole path (as Xen).
            let mut linewid = if self.whole_path { 0 } else { line.len() };
            let val = if newpath.len() < STRING_MAX {
                client.read(&newpath).ok()
            } else {
                None
            };
            match &val {
                None => line.push_str(":\n"),
                Some(v) => {
                    let s = sanitise(v);
                    if self.max_width < linewid + v.len() + TAG_LEN {
                        let room = self.max_width.saturating_sub(TAG_LEN + linewid);
                        line.push_str(" = \"");
                        line.extend(s.chars().take(room));
                        line.push_str("\\...\"");
                    } else {
                        let tag = format!(" = \"{s}\"");
                        linewid += tag.len();
                        line.push_str(&tag);
                        if self.show_perms {
                            line.push(' ');
                            linewid += 1;
                            while linewid < self.desired_width.min(self.max_width) {
                                line.push(if linewid & 1 == 1 { '.' } else { ' ' });
                                linewid += 1;
                            }
                        }
                    }
                }
            }
            if self.show_perms {
                match client.get_perms(&newpath) {
                    Ok(perms) => {
                        let p: Vec<String> = perms.iter().map(ToString::to_string).collect();
                        line.push_str("  (");
                        line.push_str(&p.join(","));
                        line.push(')');
                    }
                    Err(e) => {
                        let _ = out.stdout.write_all(line.as_bytes());
                        line.clear();
                        out.warnx(&format!(
                            "\ncould not access permissions for {name}: {}",
                            strerror(&e)
                        ));
                    }
                }
            }
            line.push('\n');
            let _ = out.stdout.write_all(line.as_bytes());
            self.run(client, &newpath, depth + 1, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_atoi_c_semantics() {
        assert_eq!(atoi("5"), 5);
        assert_eq!(atoi("12abc"), 12);
        assert_eq!(atoi("abc"), 0);
        assert_eq!(atoi(" 7"), 7);
        assert_eq!(atoi("-1"), u32::MAX);
    }

    #[test]
    fn test_parse_mode_letters_and_bad_letter() {
        assert_eq!(parse_mode("b3").expect("ok"), Perm::new(3, PERM_BOTH));
        assert_eq!(parse_mode("n").expect("ok"), Perm::new(0, PERM_NONE));
        assert!(parse_mode("x1").is_err());
        assert!(parse_mode("r70000").is_err());
    }

    #[test]
    fn test_transactional_matches_xen() {
        let read1 = Cmd::Read {
            prefix: false,
            raw: false,
            s: SocketFlag { _socket: false },
            keys: vec!["/a".into()],
        };
        assert!(!read1.transactional());
        let rm = Cmd::Rm {
            tidy: false,
            s: SocketFlag { _socket: false },
            keys: vec!["/a".into()],
        };
        assert!(rm.transactional());
    }
}
