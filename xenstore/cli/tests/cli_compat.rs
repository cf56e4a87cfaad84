//! Xen's command-line clients against OUR xenstored: Debian's
//! `xenstore-utils` (Xen 4.17's `xenstore-*` tools) and our own `xenstore`
//! binary run the same scenario, and both must print exactly what Xen's
//! tools print against Xen's C xenstored (the expected texts below were
//! recorded that way). Children are created in alphabetical order so that
//! the expected listings hold whether a daemon keeps insertion order (as C
//! xenstored does) or sorts.

// The daemon fixture of xenstore-client's compatibility tests, shared.
#[path = "../../client/tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require, run, show, Daemon, TempDir};

struct Step {
    args: &'static [&'static str],
    stdout: &'static str,
    /// Expected standard error, checked when not `None`.
    stderr: Option<&'static str>,
    code: i32,
}

const fn ok(args: &'static [&'static str], stdout: &'static str) -> Step {
    Step {
        args,
        stdout,
        stderr: Some(""),
        code: 0,
    }
}

const fn fail(
    args: &'static [&'static str],
    stdout: &'static str,
    stderr: Option<&'static str>,
) -> Step {
    Step {
        args,
        stdout,
        stderr,
        code: 1,
    }
}

/// A 90-character name under /t/f, cut by `ls` at 80 columns.
const LONG_PATH: &str = "/t/f/nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn";
/// A 100-character value, too long for `ls` to print.
const LONG_VALUE: &str = "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv";

fn scenario() -> Vec<Step> {
    vec![
        ok(&["write", "/t/a", "hello", "/t/b", "x\"y", "/t/c/e", "deep", "/t/d", "", "/t/e", "a\\tb\\001\\x7f\\\\z"], ""),
        ok(&["read", "/t/a", "/t/b", "/t/e"], "hello\nx\"y\na\\tb\\001\\x7f\\\\z\n"),
        ok(&["read", "-p", "/t/a"], "/t/a: hello\n"),
        ok(&["read", "-R", "/t/e"], "a\tb\x01\x7f\\z"),
        fail(&["read", "/t/nope"], "", Some("xenstore-read: couldn't read path /t/nope\n")),
        fail(&["read", "/t/a", "/t/nope"], "hello\n", Some("xenstore-read: couldn't read path /t/nope\n")),
        fail(&["write", "/t/odd"], "", None),
        ok(&["ls", "/t"], "a = \"hello\"\nb = \"x\"y\"\nc = \"\"\n e = \"deep\"\nd = \"\"\ne = \"a\\tb\\001\\x7f\\\\z\"\n"),
        ok(
            &["ls", "-p", "/t"],
            "a = \"hello\"  . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n\
             b = \"x\"y\"  . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n\
             c = \"\" . . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n \
             e = \"deep\"  . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n\
             d = \"\" . . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n\
             e = \"a\\tb\\001\\x7f\\\\z\"  . . . . . . . . . . . . . . . . . . .  (n0)\n",
        ),
        ok(
            &["ls", "-f", "/t"],
            "/t/a = \"hello\"\n/t/b = \"x\"y\"\n/t/c = \"\"\n/t/c/e = \"deep\"\n/t/d = \"\"\n/t/e = \"a\\tb\\001\\x7f\\\\z\"\n",
        ),
        ok(
            &["ls", "-f", "-p", "/t/c"],
            "/t/c/e = \"deep\"   (n0)\n",
        ),
        fail(&["ls", "/t/nope"], "", Some("xenstore-ls: xs_directory (/t/nope): No such file or directory\n")),
        ok(&["write", LONG_PATH, LONG_VALUE], ""),
        ok(&["write", "/t/g", "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"], ""),
        ok(
            &["ls", "/t/f", "/t/g"],
            "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn = \"\\...\"\n",
        ),
        ok(
            &["ls", "-p", "/t"],
            "a = \"hello\"  . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n\
             b = \"x\"y\"  . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n\
             c = \"\" . . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n \
             e = \"deep\"  . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n\
             d = \"\" . . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n\
             e = \"a\\tb\\001\\x7f\\\\z\"  . . . . . . . . . . . . . . . . . . .  (n0)\n\
             f = \"\" . . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n \
             nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn = \"\\...\"  (n0)\n\
             g = \"vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\"   (n0)\n",
        ),
        ok(&["list", "/t"], "a\nb\nc\nd\ne\nf\ng\n"),
        ok(&["list", "-p", "/t", "/t/c"], "/t/a\n/t/b\n/t/c\n/t/d\n/t/e\n/t/f\n/t/g\n/t/c/e\n"),
        fail(&["list", "/t/nope"], "", Some("xenstore-list: could not list path /t/nope\n")),
        ok(&["exists", "/t/a"], ""),
        fail(&["exists", "/t/zz"], "", Some("")),
        fail(&["exists", "/t/a", "/t/zz"], "", Some("")),
        ok(&["chmod", "/t/a", "n0", "r5", "w7"], ""),
        ok(&["chmod", "-r", "/t/c", "b3"], ""),
        ok(
            &["ls", "-p", "/t/c"],
            "e = \"deep\" . . . . . . . . . . . . . . . . . . . . . . . . .  (b3)\n",
        ),
        ok(&["chmod", "-u", "/t/d/x", "r2"], "").no_such_node(),
        ok(&["write", "/t/d/x", "1"], ""),
        ok(&["chmod", "-u", "/t/d/x", "r2"], ""),
        ok(
            &["ls", "-p", "/t/d"],
            "x = \"1\"  . . . . . . . . . . . . . . . . . . . . . . . . . .  (r2)\n",
        ),
        fail(
            &["chmod", "/t/nope", "r2"],
            "",
            Some("xenstore-chmod: Error occurred setting permissions on '/t/nope': No such file or directory\n"),
        ),
        fail(&["chmod", "/t/a", "x2"], "", Some("xenstore-chmod: Invalid permission specification: 'x'\n")),
        ok(&["rm", "/t/c"], ""),
        ok(&["rm", "/t/zz"], ""),
        fail(&["rm", "-t", "/t/zz/yy"], "", Some("xenstore-rm: could not remove path /t/zz/yy\n")),
        ok(&["write", "/t/h/i/j", "1"], ""),
        ok(&["rm", "-t", "/t/h/i/j"], ""),
        ok(&["list", "/t"], "a\nb\nd\ne\nf\ng\n"),
        ok(&["rm", "/t"], ""),
        fail(&["read", "/t/a"], "", Some("xenstore-read: couldn't read path /t/a\n")),
    ]
}

impl Step {
    /// `chmod -u` on a missing node fails before touching its parents.
    fn no_such_node(self) -> Step {
        Step {
            code: 1,
            stderr: Some("xenstore-chmod: Error occurred setting permissions on '/t/d/x': No such file or directory\n"),
            ..self
        }
    }
}

/// Runs the scenario with `tool(verb)` giving the command for a verb; reports
/// every mismatching step at once.
fn run_scenario(d: &Daemon, tool: &dyn Fn(&str) -> PathBuf) {
    let mut failures = Vec::new();
    for (i, step) in scenario().iter().enumerate() {
        let (verb, args) = step.args.split_first().expect("a verb");
        let o = run(d.command(tool(verb)).args(args));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        if stdout != step.stdout
            || o.status.code() != Some(step.code)
            || step.stderr.is_some_and(|e| e != stderr)
        {
            failures.push(format!(
                "step {i}: xenstore-{verb} {args:?}\n  expected code {} stdout {:?} stderr {:?}\n  got {}",
                step.code,
                step.stdout,
                step.stderr,
                show(&o).replace('\n', "\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} step(s) differ from Xen's behaviour:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn debian_tool(verb: &str) -> PathBuf {
    let p = format!("/usr/bin/xenstore-{verb}");
    require(&p, "xenstore-utils");
    PathBuf::from(p)
}

/// Our binary under Xen's multi-call names (`xenstore-read` -> `xenstore`).
struct OurTools(TempDir);

impl OurTools {
    fn new() -> Self {
        let dir = TempDir::new("cli");
        for verb in [
            "read", "write", "rm", "exists", "list", "ls", "chmod", "watch",
        ] {
            std::os::unix::fs::symlink(
                env!("CARGO_BIN_EXE_xenstore"),
                dir.0.join(format!("xenstore-{verb}")),
            )
            .expect("symlink");
        }
        Self(dir)
    }

    fn tool(&self, verb: &str) -> PathBuf {
        self.0 .0.join(format!("xenstore-{verb}"))
    }
}

#[test]
fn test_debian_xenstore_utils_scenario_prints_as_with_xen() {
    let d = Daemon::start();
    run_scenario(&d, &debian_tool);
}

#[test]
fn test_our_cli_scenario_prints_as_xen_tools() {
    let d = Daemon::start();
    let ours = OurTools::new();
    run_scenario(&d, &|v| ours.tool(v));
}

/// `xenstore-watch -n 3 /w`: the initial event, then one line per change.
fn check_watch(d: &Daemon, watch_tool: &Path, write_tool: &Path) {
    let mut child = d
        .command(watch_tool)
        .args(["-n", "3", "/w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    // The watch is registered once the initial event is printed.
    let mut stdout = child.stdout.take().expect("piped");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\n") {
        assert_eq!(
            stdout.read(&mut byte).expect("read"),
            1,
            "watch exited early"
        );
        got.push(byte[0]);
    }
    for p in ["/w/a", "/w/b/c"] {
        assert!(run(d.command(write_tool).args([p, "1"])).status.success());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "watch did not stop after 3 events"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stdout.read_to_end(&mut got).expect("rest of output");
    assert_eq!(String::from_utf8_lossy(&got), "/w\n/w/a\n/w/b/c\n");
    assert!(child.wait().expect("wait").success());
}

#[test]
fn test_debian_xenstore_watch_prints_each_path() {
    let d = Daemon::start();
    check_watch(&d, &debian_tool("watch"), &debian_tool("write"));
}

#[test]
fn test_our_cli_watch_prints_each_path() {
    let d = Daemon::start();
    let ours = OurTools::new();
    check_watch(&d, &ours.tool("watch"), &ours.tool("write"));
}

#[test]
fn test_our_cli_verb_form_mkdir_getperms() {
    let d = Daemon::start();
    let x = env!("CARGO_BIN_EXE_xenstore");
    let o = run(d.command(x).args(["mkdir", "/m/a"]));
    assert!(o.status.success(), "{}", show(&o));
    let o = run(d.command(x).args(["chmod", "/m/a", "b0", "r3"]));
    assert!(o.status.success(), "{}", show(&o));
    let o = run(d.command(x).args(["getperms", "/m/a"]));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "b0 r3\n",
        "{}",
        show(&o)
    );
    let o = run(d.command(x).args(["read", "/m/a"]));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "\n", "{}", show(&o));
    let o = run(d.command(x).args(["getperms", "/m/none"]));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
}

#[test]
fn test_our_cli_no_daemon_fails_cleanly() {
    let dir = TempDir::new("nod");
    let o = run(Command::new(env!("CARGO_BIN_EXE_xenstore"))
        .env("XENSTORED_PATH", dir.0.join("none"))
        .args(["read", "/a"]));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).starts_with("xenstore: xs_open: "),
        "{}",
        show(&o)
    );
}
