//! The PV console end to end: `xl create` of a PV guest whose init prints
//! a marker, reads a line from its console and answers it; `xl console`
//! runs under a pty as a user's terminal would: the test reads the marker
//! through it, types a line, sees the guest's answer (and the guest tty's
//! echo of the line), detaches with `Ctrl-]` and checks the console log
//! (`$XEN_CONSOLE_LOGDIR/guest-<name>.log`) holds the whole session.
//! Then `xl create -c` of a second guest attaches at once and `xl console`
//! returns by itself when the guest is destroyed. Last, with backendd
//! serving no consoles, the test is a hostile console backend: it serves
//! the ring until the init speaks, then corrupts `out_cons`; the guest's
//! init, writing 100 KiB, still runs to its end (the broken console
//! discards output rather than blocking programs) and the domain powers off.
//!
//! Private `xen-shimd` and `xenstored` (threads of this process), the real
//! `xl`, `backendd` (consback) and `xen-pvguest` binaries. Needs root.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xen_testhost::net::Daemon;
use xen_testhost::term::Terminal;
use xen_testhost::{stdout_of, Dom0};

/// The private Dom0 of this test ([`Dom0::start_for_pv_guests`]).
fn dom0(prefix: &str) -> Result<Dom0> {
    Dom0::start_for_pv_guests(
        prefix,
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

const STEP: Duration = Duration::from_secs(30);

/// `xl ARGS` on a pty ([`Terminal`]).
fn terminal(host: &Dom0, args: &[&str]) -> Result<(Terminal, Child)> {
    Terminal::spawn(host.xl_command(args))
}

fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{what}: xl console did not return");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_log(host: &Dom0, name: &str, what: &str) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let l = host.guest_log(name);
        if l.contains(what) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{what:?} not in the console log of {name}:\n{l}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A guest config whose init is `script`, kept listed when it powers off.
fn guest_cfg(host: &Dom0, name: &str, script: &str) -> Result<String> {
    host.pv_config(name, 32, script, "on_poweroff = 'preserve'\n")
}

#[test]
fn test_xl_console_shows_guest_output_types_input_detaches_and_log_has_session() -> Result<()> {
    // Arrange: a guest whose init talks over its console.
    let mut host = dom0("console-e2e-")?;
    let name = format!("con{}", std::process::id());
    let cfg = guest_cfg(
        &host,
        &name,
        "#!/bin/sh\n\
         echo console-marker-ready\n\
         read line\n\
         echo \"guest-got:[$line]\"\n\
         echo guest-init-done\n",
    )?;
    host.xl_ok(&["create", &cfg])?;
    host.track_guest(&name);

    // Act: attach, read the marker, type a line, read the answer, detach.
    let (mut term, mut xl) = terminal(&host, &["console", &name])?;
    term.expect("console-marker-ready")?;
    term.type_bytes(b"hello from dom0\r")?;
    let shown = term.expect("guest-got:[hello from dom0]")?;
    term.type_bytes(&[0x1d])?;
    let st = wait_exit(&mut xl, "Ctrl-]");

    // Assert
    assert!(st.success(), "xl console: {st}\n{}", term.text());
    // The guest's tty echoed the typed line, with a tty's line endings.
    assert!(shown.contains("hello from dom0\r\n"), "{shown:?}");
    assert!(shown.contains("console-marker-ready\r\n"), "{shown:?}");
    let log = wait_log(&host, &name, "pvguest shutdown");
    for want in [
        "pvguest ready",
        "console-marker-ready\r\n",
        "hello from dom0\r\n",
        "guest-got:[hello from dom0]\r\n",
        "guest-init-done",
        "reason=poweroff",
    ] {
        assert!(log.contains(want), "{want:?} not in the log:\n{log}");
    }
    // The pty showed nothing the log lacks (from the marker on).
    let from = shown.find("console-marker-ready").expect("marker shown");
    let tail = &shown[from..];
    let tail = &tail[..tail.find("guest-got:[hello from dom0]").expect("answer")];
    assert!(log.contains(tail), "{tail:?} not in the log:\n{log}");
    stdout_of("xl destroy", &host.destroy_guest(&name)?)?;
    Ok(())
}

#[test]
fn test_xl_create_c_attaches_and_console_returns_when_domain_destroyed() -> Result<()> {
    // Arrange: a guest that prints and then waits for input forever.
    let mut host = dom0("console-c-e2e-")?;
    let name = format!("conc{}", std::process::id());
    let cfg = guest_cfg(
        &host,
        &name,
        "#!/bin/sh\necho create-c-marker\nwhile read line; do echo \"again:$line\"; done\n",
    )?;

    // Act: xl create -c shows the guest's output at once.
    let (mut term, mut xl) = terminal(&host, &["create", "-c", &cfg])?;
    host.track_guest(&name);
    term.expect("create-c-marker")?;
    term.type_bytes(b"ping\r")?;
    term.expect("again:ping")?;
    let destroyed = host.destroy_guest(&name)?;
    let st = wait_exit(&mut xl, "domain destroyed");

    // Assert
    stdout_of("xl destroy", &destroyed)?;
    assert!(st.success(), "xl create -c: {st}\n{}", term.text());
    let log = host.guest_log(&name);
    assert!(log.contains("create-c-marker"), "{log}");
    assert!(log.contains("again:ping"), "{log}");
    Ok(())
}

/// Starts `backendd` as `xl` would, but without consoles: the test is the
/// console backend. Killed when the guard drops.
fn start_backendd_without_consoles(host: &Dom0) -> Result<Daemon> {
    let rundir = host.rundir();
    std::fs::create_dir_all(&rundir).context("rundir")?;
    let log = std::fs::File::create(rundir.join("backendd.log")).context("backendd.log")?;
    let child = std::process::Command::new(host.libexec.join("backendd"))
        .arg("--xenstored")
        .arg(host.dir.path().join("xenstored.sock"))
        .arg("--shim-socket")
        .arg(host.dir.path().join("shim.sock"))
        .arg("--pid-file")
        .arg(rundir.join("backendd.pid"))
        .arg("--no-consoles")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("dup")?)
        .stderr(log)
        .spawn()
        .context("start backendd")?;
    let d = Daemon::new(child);
    let deadline = Instant::now() + STEP;
    while !rundir.join("backendd.pid").exists() {
        assert!(Instant::now() < deadline, "backendd wrote no pid file");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(d)
}

#[test]
fn test_hostile_console_backend_never_blocks_the_guests_programs() -> Result<()> {
    use std::sync::atomic::{AtomicU32, Ordering};
    use xen_abi::grant_table::GNTTAB_RESERVED_CONSOLE;
    use xen_ring::bytes::{cons_offsets, ConsRing};
    use xen_ring::SharedRing;
    use xen_shim_dom0::{Control, Evtchn, Gntdev};

    // Arrange: the test is the console backend; the guest's init writes
    // 100 KiB (far more than the ring and the pty hold), then a file.
    let mut host = dom0("console-hostile-be-")?;
    let backendd = start_backendd_without_consoles(&host)?;
    let name = format!("conh{}", std::process::id());
    let done = host.dir.path().join("init-finished");
    let cfg = guest_cfg(
        &host,
        &name,
        &format!(
            "#!/bin/sh\necho init-start\ni=0\nwhile [ $i -lt 2000 ]; do \
             echo \"line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"; i=$((i+1)); done\n\
             touch {}\n",
            done.display()
        ),
    )?;
    host.xl_ok(&["create", &cfg])?;
    host.track_guest(&name);
    let shim = host.dir.path().join("shim.sock");
    let control = Control::connect(&shim).expect("control");
    let info = control
        .list_domains()
        .expect("list")
        .into_iter()
        .find(|d| d.name == name)
        .expect("the guest's domain");
    let gntdev = Gntdev::open(&shim).expect("gntdev");
    let map = gntdev
        .map_grant_ref(info.domid, GNTTAB_RESERVED_CONSOLE, true)
        .expect("map the console page");
    let page = map.as_mut_ptr().expect("writable");
    // SAFETY: the mapping is one writable page that outlives `ring` and
    // `word` (declared after `map`, so dropped first); only atomics and
    // volatile copies touch it here.
    let mut ring =
        ConsRing::backend(unsafe { SharedRing::new(page, 4096) }.expect("page")).expect("ring");
    // SAFETY: inside the mapped page, 4-aligned, accessed atomically only.
    let word = |off: usize| unsafe { AtomicU32::from_ptr(page.add(off).cast()) };
    let evtchn = Evtchn::open(&shim).expect("evtchn");
    let port = evtchn
        .bind_interdomain(info.domid, info.console_port)
        .expect("bind the console port");

    // Act: serve honestly until the init speaks, then corrupt out_cons.
    let deadline = Instant::now() + STEP;
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    while !String::from_utf8_lossy(&seen).contains("init-start") {
        let n = ring.read(&mut buf).expect("a sane guest ring");
        seen.extend_from_slice(&buf[..n]);
        let _ = evtchn.notify(port);
        assert!(
            Instant::now() < deadline,
            "no init output: {:?}",
            String::from_utf8_lossy(&seen)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let prod = word(cons_offsets::OUT_PROD).load(Ordering::SeqCst);
    word(cons_offsets::OUT_CONS).store(prod.wrapping_add(0x4000), Ordering::SeqCst);
    let _ = evtchn.notify(port);

    // Assert: the init ran to its end (its output discarded, not blocked)
    // and the domain powered off.
    let deadline = Instant::now() + STEP;
    while !done.exists() {
        assert!(
            Instant::now() < deadline,
            "the guest's init blocked on a broken console"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + STEP;
    loop {
        let st = control.domain_info(info.domid).map(|i| i.flags);
        if st.as_ref().is_ok_and(|f| f.contains('s')) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the domain did not shut down: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(String::from_utf8_lossy(&seen).contains("pvguest ready"));
    let _ = evtchn.unbind(port);
    // As before: the guest goes first, then the test's backendd.
    host.destroy_guests();
    drop(backendd);
    Ok(())
}
