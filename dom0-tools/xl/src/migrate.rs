//! `xl migrate` and `xl migrate-receive`: live migration of PVHVM guests, with
//! Xen's handshake and stream.
//!
//! ```text
//!  sender (xl migrate DOM HOST)              receiver (xl migrate-receive)
//!    runs `SSHCOMMAND HOST xl migrate-receive` (or --tcp HOST:PORT)
//!                                   <- banner "xl migration receiver ready, ..."
//!    the save stream (xl header with the config, libxl/libxc v2 records,
//!    PAGE_DATA round after round: the VMM's `migrate` control command)  ->
//!                                      creates NAME--incoming from the header
//!                                      as soon as it arrives, its VMM loading
//!                                      the stream from a FIFO, vCPUs held
//!                                   <- "domain received, ready to unpause\0"
//!    source renamed NAME--migratedaway
//!    "domain is yours, you are cleared to unpause\0" ->
//!                                      renamed NAME, introduced (console
//!                                      nodes, xenstore), VMM "unpause"
//!                                   <- "my copy unpause results are as follows\0" + 0
//!    source destroyed
//! ```
//!
//! Live rounds run while the guest runs; then the guest is suspended as by
//! `xl save` (`control/shutdown` = `suspend`) and the last round sent while
//! it is parked. Any failure before the permission to go leaves the guest
//! running on the source (its suspend cancelled, as `xl save -c`) and the
//! receiver destroys its partial domain. `--tcp HOST:PORT` and
//! `migrate-receive --listen ADDR:PORT` are our extension: a plain TCP
//! transport for hosts without ssh (Xen's xl has only the ssh rune).

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xen_shim_proto::layout::{DomainLayout, DomainType, DEFAULT_MAX_GRANT_FRAMES, PAGE_SIZE};

use crate::config::{GuestType, XlConfig};
use crate::toolstack::{self, RestoreFrom, ToolstackError};

/// The receiver's first words (written without a NUL, as Xen's xl).
pub const BANNER: &[u8] = b"xl migration receiver ready, send binary domain data.\n";
/// The receiver has the whole domain (Xen sends the NUL too).
pub const READY: &[u8] = b"domain received, ready to unpause\0";
/// The sender gives the domain up.
pub const GO: &[u8] = b"domain is yours, you are cleared to unpause\0";
/// The receiver's report, followed by one byte: 0 the domain runs.
pub const REPORT: &[u8] = b"my copy unpause results are as follows\0";

/// The destination domain's name until it runs: `NAME--incoming` (Xen's).
pub const INCOMING_SUFFIX: &str = "--incoming";

/// How long the sender retries a refused TCP connection (a receiver still
/// starting to listen).
const CONNECT_RETRY: Duration = Duration::from_secs(10);
/// How long the receiver waits for the incoming VMM to open its stream or
/// to have loaded it.
const VMM_WAIT: Duration = Duration::from_secs(30);
/// The largest `-C` config accepted.
const MAX_CONFIG: u64 = 1 << 20;

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A PV process guest.
    #[error("domain {0} is a PV process guest: xl migrate supports PVHVM guests only (a PV guest's state is a Linux process tree, not pages and registers)")]
    PvGuest(u16),
    /// The transport to the other side failed.
    #[error("migration transport: cannot {what}")]
    Transport {
        /// What was tried.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The other side said something else than the protocol's next message.
    #[error("migration protocol: expected {expected:?}, got {got:?}")]
    Protocol {
        /// The expected message.
        expected: String,
        /// What came.
        got: String,
    },
    /// The VMM failed the migration.
    #[error("the VMM of domain {domid} could not send it: {why}")]
    Vmm {
        /// Domain.
        domid: u16,
        /// What it said.
        why: String,
    },
    /// The stream is refused.
    #[error("the incoming stream is refused")]
    Stream(#[source] xen_stream::StreamError),
    /// The stream's config is unusable.
    #[error("the incoming config cannot be used: {0}")]
    Config(String),
    /// The receiver failed to start the domain after the permission to go;
    /// the source runs on.
    #[error(
        "the migration target reports that the domain did not start there; it was resumed here"
    )]
    TargetFailed,
    /// The receiver vanished after the permission to go: which copy runs
    /// is unknown, so the source is left suspended (Xen's rule).
    #[error("the migration target did not confirm after the permission to go; domain {0} is left suspended here (check the target before resuming it)")]
    Uncertain(u16),
    /// A toolstack step failed.
    #[error(transparent)]
    Toolstack(#[from] ToolstackError),
}

impl From<MigrateError> for ToolstackError {
    fn from(e: MigrateError) -> Self {
        match e {
            MigrateError::Toolstack(t) => t,
            other => ToolstackError::Unsupported(xen_diag::ErrorChain(&other).to_string()),
        }
    }
}

fn transport(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MigrateError {
    let what = what.into();
    move |source| MigrateError::Transport { what, source }
}

/// Reads exactly `msg.len()` bytes and checks they are `msg`.
fn expect_msg(r: &mut impl Read, msg: &[u8], what: &str) -> Result<(), MigrateError> {
    let mut got = vec![0u8; msg.len()];
    r.read_exact(&mut got)
        .map_err(transport(format!("read the {what}")))?;
    if got != msg {
        return Err(MigrateError::Protocol {
            expected: String::from_utf8_lossy(msg).into_owned(),
            got: String::from_utf8_lossy(&got).into_owned(),
        });
    }
    Ok(())
}

/// What `xl migrate` is asked.
#[derive(Debug, Clone, Default)]
pub struct MigrateArgs {
    /// Domain name or id.
    pub domain: String,
    /// The destination host (ssh) or `HOST:PORT` (`tcp`).
    pub host: String,
    /// `-s SSHCOMMAND` (default `ssh`).
    pub ssh: Option<String>,
    /// `-C CONFIG`: the config sent instead of the domain's.
    pub config: Option<PathBuf>,
    /// Plain TCP to `host` instead of ssh (our extension).
    pub tcp: bool,
    /// Live rounds, round 0 included (Xen: 5).
    pub max_iters: u32,
}

/// The sender's link to the receiver.
struct Link {
    /// Where the stream and the permission go (a descriptor for the VMM).
    tx: OwnedFd,
    /// The receiver's messages.
    rx: Box<dyn Read>,
    /// Last: waited for once `tx` and `rx` are closed.
    _rune: Option<Rune>,
}

/// The ssh rune's process, waited for (not killed) when dropped: with our
/// end of the link closed first (it is dropped after [`Link`]'s other
/// fields) it ends by itself.
struct Rune(Child);

impl Drop for Rune {
    fn drop(&mut self) {
        let _ = self.0.wait();
    }
}

fn connect(a: &MigrateArgs) -> Result<Link, MigrateError> {
    if a.tcp {
        let t0 = Instant::now();
        let s = loop {
            match TcpStream::connect(&a.host) {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && t0.elapsed() < CONNECT_RETRY =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(transport(format!("connect to {}", a.host))(e)),
            }
        };
        let _ = s.set_nodelay(true);
        let tx = s.try_clone().map_err(transport("duplicate the socket"))?;
        return Ok(Link {
            tx: OwnedFd::from(tx),
            rx: Box::new(s),
            _rune: None,
        });
    }
    // Xen's rune; an empty SSHCOMMAND runs HOST itself.
    let rune = match a.ssh.as_deref() {
        Some("") => a.host.clone(),
        ssh => format!(
            "exec {} {} xl migrate-receive",
            ssh.unwrap_or("ssh"),
            a.host
        ),
    };
    eprintln!("migration target: running {rune:?}");
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&rune)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(transport(format!("run {rune:?}")))?;
    let (Some(tx), Some(rx)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(MigrateError::Transport {
            what: "set up the ssh pipes".into(),
            source: std::io::ErrorKind::BrokenPipe.into(),
        });
    };
    Ok(Link {
        tx: OwnedFd::from(tx),
        rx: Box::new(rx),
        _rune: Some(Rune(child)),
    })
}

/// A file with `bytes` and no name, for the VMM (it opens no path).
fn anonymous_file(bytes: &[u8]) -> Result<std::fs::File, MigrateError> {
    let fd = nix::sys::memfd::memfd_create(
        c"xl-migrate-config",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| transport("create the config memfd")(e.into()))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)
        .map_err(transport("write the config memfd"))?;
    std::io::Seek::rewind(&mut f).map_err(transport("rewind the config memfd"))?;
    Ok(f)
}

/// `xl migrate [--live] [-s SSHCOMMAND] [-C CONFIG] [--tcp] DOM HOST` (always
/// live, as Xen's).
pub fn migrate(a: &MigrateArgs) -> Result<(), MigrateError> {
    let t_start = Instant::now();
    let control = toolstack::shim(false)?;
    let d = toolstack::find_domain(&control, &a.domain)?;
    if d.domid == 0 {
        return Err(ToolstackError::Unsupported("cannot migrate Domain-0".into()).into());
    }
    if d.kind == DomainType::Pv {
        return Err(MigrateError::PvGuest(d.domid));
    }
    let config = match &a.config {
        Some(p) => {
            let len = std::fs::metadata(p).map_or(0, |m| m.len());
            if len > MAX_CONFIG {
                return Err(MigrateError::Config(format!(
                    "{} is larger than {MAX_CONFIG} bytes",
                    p.display()
                )));
            }
            let text = std::fs::read(p).map_err(|source| ToolstackError::Io {
                what: format!("read {}", p.display()),
                source,
            })?;
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            Some(xen_stream::with_config_origin(&text, &abs))
        }
        None => None,
    };
    let socket = toolstack::vmm_control_socket(&d.name);
    let conn = UnixStream::connect(&socket).map_err(transport(format!(
        "reach the VMM of domain {} at {}",
        d.domid,
        socket.display()
    )))?;
    let mut link = connect(a)?;
    expect_msg(&mut link.rx, BANNER, "receiver's banner")?;
    let mut suspended = false;
    let mut out = conn.try_clone().map_err(transport("use the VMM socket"))?;
    let mut lines = BufReader::new(conn).lines();
    let mut parked = false;
    // Before the permission to go, every failure leaves the guest running here.
    let undo = |e: MigrateError, suspended: bool, parked: bool, out: &mut UnixStream| {
        if parked {
            let _ = writeln!(out, "resume");
        }
        if suspended {
            let _ = toolstack::resume_cancelled(&control, d.domid);
        }
        e
    };
    let iters = a.max_iters.max(1);
    let cfg_file = match &config {
        Some(c) => Some(anonymous_file(c)?),
        None => None,
    };
    let mut fds = vec![link.tx.as_raw_fd()];
    if let Some(f) = &cfg_file {
        fds.push(f.as_raw_fd());
    }
    nix::sys::socket::sendmsg::<()>(
        out.as_raw_fd(),
        &[std::io::IoSlice::new(
            format!("migrate {iters}\n").as_bytes(),
        )],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| {
        undo(
            transport("send the migrate command")(e.into()),
            suspended,
            parked,
            &mut out,
        )
    })?;
    drop(cfg_file);
    let mut rounds: Vec<(u64, u64)> = Vec::new();
    let mut t_suspend = None;
    // The downtime's steps, each with the time it ended.
    let mut phases: Vec<(&str, Instant)> = Vec::new();
    let total = loop {
        let line = match lines.next() {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                return Err(undo(
                    transport("read the VMM's answer")(e),
                    suspended,
                    parked,
                    &mut out,
                ))
            }
            None => {
                return Err(undo(
                    transport("read the VMM's answer")(std::io::ErrorKind::UnexpectedEof.into()),
                    suspended,
                    parked,
                    &mut out,
                ))
            }
        };
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("round"), Some(n), Some(p), Some(ms)) => {
                let (p, ms) = (p.parse().unwrap_or(0), ms.parse().unwrap_or(0));
                eprintln!("migration round {n}: {p} pages in {ms} ms");
                rounds.push((p, ms));
            }
            (Some("live-done"), _, _, _) => {
                // The live rounds are over: the guest suspends (as for
                // `xl save`) and the VMM sends the last round parked.
                t_suspend = Some(Instant::now());
                match toolstack::suspend_for_save(&control, &d) {
                    Ok(s) => {
                        suspended = s;
                        phases.push(("suspend", Instant::now()));
                    }
                    Err(e) => {
                        let _ = writeln!(out, "cancel");
                        return Err(undo(e.into(), false, parked, &mut out));
                    }
                }
                if let Err(e) = writeln!(out, "final") {
                    return Err(undo(
                        transport("send final")(e),
                        suspended,
                        parked,
                        &mut out,
                    ));
                }
            }
            (Some("sent"), Some(p), _, _) => {
                parked = true;
                phases.push(("last round", Instant::now()));
                break p.parse::<u64>().unwrap_or(0);
            }
            _ => {
                let why = line.strip_prefix("error ").unwrap_or(&line).to_owned();
                return Err(undo(
                    MigrateError::Vmm {
                        domid: d.domid,
                        why,
                    },
                    suspended,
                    parked,
                    &mut out,
                ));
            }
        }
    };
    if let Err(e) = expect_msg(&mut link.rx, READY, "receiver's ready message") {
        return Err(undo(e, suspended, parked, &mut out));
    }
    phases.push(("target ready", Instant::now()));
    // Xen renames the source before giving the domain up.
    let away = format!("{}--migratedaway", d.name);
    if let Err(e) = toolstack::rename(&control, d.domid, &d.name, &away) {
        return Err(undo(e.into(), suspended, parked, &mut out));
    }
    let mut tx = std::fs::File::from(
        link.tx
            .try_clone()
            .map_err(transport("duplicate the link"))?,
    );
    let go = tx.write_all(GO).and_then(|()| tx.flush());
    let mut report = vec![0u8; REPORT.len() + 1];
    let confirmed = go.and_then(|()| link.rx.read_exact(&mut report));
    match confirmed {
        Ok(()) if report[..REPORT.len()] == *REPORT && report[REPORT.len()] == 0 => {
            phases.push(("target unpaused", Instant::now()));
            let downtime = t_suspend.map(|t| t.elapsed().as_millis());
            if let Some(mut t) = t_suspend {
                let steps: Vec<String> = phases
                    .iter()
                    .map(|(what, end)| {
                        let ms = end.duration_since(t).as_secs_f64() * 1e3;
                        t = *end;
                        format!("{what} {ms:.1} ms")
                    })
                    .collect();
                eprintln!("migration downtime steps: {}", steps.join(", "));
            }
            toolstack::destroy_by_id(d.domid)?;
            let pages: Vec<String> = rounds.iter().map(|(p, _)| p.to_string()).collect();
            eprintln!(
                "migration successful: {total} pages in {} rounds ({}), {} ms in all, {} ms from the suspend to the target's confirmation",
                rounds.len(),
                pages.join(" "),
                t_start.elapsed().as_millis(),
                downtime.map_or_else(|| "-".into(), |d| d.to_string()),
            );
            Ok(())
        }
        Ok(()) => {
            let _ = toolstack::rename(&control, d.domid, &away, &d.name);
            Err(undo(
                MigrateError::TargetFailed,
                suspended,
                parked,
                &mut out,
            ))
        }
        Err(_) => Err(MigrateError::Uncertain(d.domid)),
    }
}

/// Forwards what the stream reader consumes to `w`.
struct Tee<'a, R: Read, W: Write> {
    r: &'a mut R,
    w: W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Opens the FIFO `path` for writing once its reader (the incoming VMM) has
/// it open; fails if the domain `domid`'s VMM ends or takes too long.
fn open_fifo(path: &Path, domid: u16) -> Result<std::fs::File, MigrateError> {
    let t0 = Instant::now();
    let control = toolstack::shim(false)?;
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => {
                let fl = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
                    .map_err(|e| transport("read the FIFO's flags")(e.into()))?;
                let fl = nix::fcntl::OFlag::from_bits_truncate(fl) & !nix::fcntl::OFlag::O_NONBLOCK;
                nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl))
                    .map_err(|e| transport("make the FIFO blocking")(e.into()))?;
                return Ok(f);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                let alive = control.domain_info(domid).is_ok_and(|i| i.pid.is_some());
                if !alive || t0.elapsed() > VMM_WAIT {
                    return Err(transport(format!(
                        "hand the stream to domain {domid}'s VMM (it did not open {})",
                        path.display()
                    ))(e));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(transport(format!("open {}", path.display()))(e)),
        }
    }
}

/// What the receiver created, removed on failure.
struct Incoming {
    domid: Option<u16>,
    files: Vec<PathBuf>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        if let Some(domid) = self.domid {
            if let Err(e) = toolstack::destroy_by_id(domid) {
                eprintln!(
                    "migration receiver: cannot destroy the partial domain {domid}: {}",
                    xen_diag::ErrorChain(&e)
                );
            }
        }
    }
}

/// `xl migrate-receive [--listen ADDR:PORT]`: on stdin/stdout (the ssh
/// rune), or one TCP connection accepted on ADDR:PORT.
pub fn migrate_receive(listen: Option<&str>) -> Result<u16, MigrateError> {
    match listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).map_err(transport(format!("listen on {addr}")))?;
            eprintln!("migration receiver: listening on {addr}");
            let (s, peer) = l.accept().map_err(transport("accept a connection"))?;
            eprintln!("migration receiver: connection from {peer}");
            let _ = s.set_nodelay(true);
            let w = s.try_clone().map_err(transport("duplicate the socket"))?;
            receive(s, w)
        }
        None => receive(std::io::stdin().lock(), std::io::stdout().lock()),
    }
}

fn receive<R: Read, W: Write>(input: R, mut output: W) -> Result<u16, MigrateError> {
    output
        .write_all(BANNER)
        .and_then(|()| output.flush())
        .map_err(transport("send the banner"))?;
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut head = Vec::new();
    let header = xen_stream::read_xl_header(&mut Tee {
        r: &mut input,
        w: &mut head,
    })
    .map_err(MigrateError::Stream)?;
    if header.json {
        return Err(MigrateError::Config(
            "its config is libxl JSON; this xl reads xl.cfg text".into(),
        ));
    }
    let text = String::from_utf8(header.config.clone())
        .map_err(|_| MigrateError::Config("the config is not UTF-8 text".into()))?;
    let cfg = XlConfig::parse("the incoming config", &text)
        .map_err(|e| MigrateError::Config(e.to_string()))?;
    if cfg.guest_type == GuestType::Pv {
        return Err(MigrateError::Config(
            "it describes a PV process guest".into(),
        ));
    }
    let layout = DomainLayout::new(cfg.memory_mib, DEFAULT_MAX_GRANT_FRAMES)
        .map_err(|e| MigrateError::Config(e.to_string()))?;
    let name = cfg.name.clone();
    let incoming_name = format!("{name}{INCOMING_SUFFIX}");
    let dir = crate::daemons::rundir();
    std::fs::create_dir_all(&dir).map_err(|source| ToolstackError::Io {
        what: format!("create {}", dir.display()),
        source,
    })?;
    let cfg_path = dir.join(format!("{incoming_name}.migrate.cfg"));
    let fifo = dir.join(format!("{incoming_name}.stream"));
    let mut inc = Incoming {
        domid: None,
        files: vec![cfg_path.clone(), fifo.clone()],
    };
    std::fs::write(&cfg_path, &header.config).map_err(|source| ToolstackError::Io {
        what: format!("write {}", cfg_path.display()),
        source,
    })?;
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| transport(format!("create {}", fifo.display()))(e.into()))?;
    let _ = std::fs::remove_file(toolstack::vmm_control_socket(&incoming_name));
    let cfg_dir = xen_stream::config_origin(&header.config)
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let from = RestoreFrom {
        file: fifo.clone(),
        cfg_dir,
        incoming: true,
    };
    let created =
        toolstack::create_incoming(&cfg_path, &[format!("name = \"{incoming_name}\"")], &from)?;
    inc.domid = Some(created.domid);
    eprintln!(
        "migration receiver: domain {} created as {incoming_name}",
        created.domid
    );
    let pipe = open_fifo(&fifo, created.domid)?;
    // A larger pipe lets a round's batches through in fewer wake-ups.
    let _ = nix::fcntl::fcntl(
        pipe.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20),
    );
    let mut pipe = BufWriter::with_capacity(1 << 20, pipe);
    pipe.write_all(&head).map_err(transport("feed the VMM"))?;
    let max_pfns = layout.total_bytes() / PAGE_SIZE as u64;
    let mut sink = |_: u64, _: &[u8]| -> Result<(), xen_stream::PageSinkError> { Ok(()) };
    let state = xen_stream::read_migration_stream(
        &mut Tee {
            r: &mut input,
            w: &mut pipe,
        },
        max_pfns,
        &mut sink,
    )
    .map_err(MigrateError::Stream)?;
    pipe.flush().map_err(transport("feed the VMM"))?;
    drop(pipe);
    if state.hvm.vcpus.len() != 1 {
        return Err(MigrateError::Config(format!(
            "it holds {} vCPUs; secondary vCPUs are not supported",
            state.hvm.vcpus.len()
        )));
    }
    let vmm = toolstack::await_loaded(&incoming_name, created.domid)?;
    output
        .write_all(READY)
        .and_then(|()| output.flush())
        .map_err(transport("send the ready message"))?;
    expect_msg(&mut input, GO, "permission to go")?;
    // As Xen's receiver: renamed, then let run; in between introduced
    // (console nodes, xenstore) under its final name, so that consback logs
    // it to `guest-NAME.log` from its first line in this domain.
    let started = (|| -> Result<(), MigrateError> {
        let control = toolstack::shim(false)?;
        toolstack::rename(&control, created.domid, &incoming_name, &name)?;
        toolstack::introduce_restored(created.domid, &name)?;
        toolstack::unpause_loaded(vmm, created.domid)?;
        Ok(())
    })();
    let rc = u8::from(started.is_err());
    let sent = output
        .write_all(REPORT)
        .and_then(|()| output.write_all(&[rc]))
        .and_then(|()| output.flush());
    started?;
    sent.map_err(transport("send the report"))?;
    // The config stays: the domain's monitor reads it (on_reboot).
    inc.domid = None;
    inc.files.retain(|f| *f == fifo);
    eprintln!(
        "migration receiver: domain {} running as {name}",
        created.domid
    );
    Ok(created.domid)
}
