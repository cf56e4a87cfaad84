//! `xl save` and `xl restore` of PVHVM guests, in Xen 4.17's save file format
//! (`xen-stream`).
//!
//! `xl save [-c] [-p] DOM FILE`: a guest that advertises `control/feature-suspend`
//! is asked to suspend first (Xen's suspend protocol, as libxl: `suspend` in its
//! `control/shutdown`, then the domain shut down with reason suspend), so that
//! once restored its suspend hypercall returns 0 and it sets its connections up
//! again in the new domain; a guest without the feature is saved without its
//! cooperation (its vCPU 0 parked where it runs). Then asks the domain's VMM, over
//! its control socket (`<rundir>/vmm-<name>.sock`), to park its vCPUs and write
//! FILE (the xl header with the domain's config, its pages, vCPU state, HVM
//! params); then destroys the domain, or lets it run on (`-c`, a checkpoint: a
//! suspended guest is resumed in place, its hypercall returning 1) or leaves it
//! paused (`-p`). PV process guests are refused: their state is a Linux process
//! tree.
//!
//! `xl restore [-p] [-c] FILE`: reads the config from FILE's xl header, validates
//! the whole file (every record, every page number against the config's memory)
//! before anything is created, then creates the domain as `xl create` does, its VMM
//! loading FILE instead of booting, its vCPUs held until it is loaded and
//! introduced (its console nodes and xenstore introduction come after the
//! load, as libxl's); `-c` attaches the console (`-p` is refused for
//! now: see [`restore`]).

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use xen_shim_proto::layout::{DomainLayout, DomainType, DEFAULT_MAX_GRANT_FRAMES, PAGE_SIZE};

use crate::config::{GuestType, XlConfig};
use crate::toolstack::{self, RestoreFrom, ToolstackError};

/// Why a save or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveRestoreError {
    /// A PV process guest.
    #[error("domain {0} is a PV process guest: xl save supports PVHVM guests only (a PV guest's state is a Linux process tree, not pages and registers)")]
    PvGuest(u16),
    /// The VMM's control channel failed.
    #[error("the VMM of domain {domid} cannot be reached at {socket}")]
    Control {
        /// Domain.
        domid: u16,
        /// Its socket.
        socket: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VMM refused or failed the save.
    #[error("the VMM of domain {domid} could not save it: {why}")]
    Vmm {
        /// Domain.
        domid: u16,
        /// What it said.
        why: String,
    },
    /// The save file is refused.
    #[error("{path} is not a save file this xl can restore")]
    Stream {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: xen_stream::StreamError,
    },
    /// The save file's config is unusable.
    #[error("the config in {path} cannot be restored: {why}")]
    Config {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// A toolstack step failed.
    #[error(transparent)]
    Toolstack(#[from] ToolstackError),
}

impl From<SaveRestoreError> for ToolstackError {
    fn from(e: SaveRestoreError) -> Self {
        match e {
            SaveRestoreError::Toolstack(t) => t,
            other => ToolstackError::Unsupported(xen_diag::ErrorChain(&other).to_string()),
        }
    }
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::with_draw_target(
        Some(total),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
    {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what.to_owned());
    b
}

/// `xl save [-c] [-p] DOM FILE`.
pub fn save(
    which: &str,
    file: &Path,
    checkpoint: bool,
    paused: bool,
) -> Result<(), SaveRestoreError> {
    let control = toolstack::shim(false)?;
    let d = toolstack::find_domain(&control, which)?;
    if d.domid == 0 {
        return Err(ToolstackError::Unsupported("cannot save Domain-0".into()).into());
    }
    if d.kind == DomainType::Pv {
        return Err(SaveRestoreError::PvGuest(d.domid));
    }
    let file = std::path::absolute(file).map_err(|source| ToolstackError::Io {
        what: format!("resolve {}", file.display()),
        source,
    })?;
    let socket = toolstack::vmm_control_socket(&d.name);
    let ctl_err = |source| SaveRestoreError::Control {
        domid: d.domid,
        socket: socket.display().to_string(),
        source,
    };
    let conn = UnixStream::connect(&socket).map_err(ctl_err)?;
    let t_suspend = std::time::Instant::now();
    let suspended = toolstack::suspend_for_save(&control, &d)?;
    if suspended {
        eprintln!(
            "Domain {} suspended (control/shutdown) in {} ms",
            d.domid,
            t_suspend.elapsed().as_millis()
        );
    }
    // A failed save leaves a suspended guest running in place.
    let undo = |e: SaveRestoreError| {
        if suspended {
            let _ = toolstack::resume_cancelled(&control, d.domid);
        }
        e
    };
    let mut out = conn.try_clone().map_err(ctl_err)?;
    let mut lines = BufReader::new(conn).lines();
    eprintln!(
        "Saving to {} new xl format (info 0x3/0x0/{})",
        file.display(),
        d.domid
    );
    // The VMM is jailed (chroot, its own uid): xl opens the file and sends
    // its descriptor with the command.
    let dest = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)
        .map_err(|source| {
            undo(
                ToolstackError::Io {
                    what: format!("create {}", file.display()),
                    source,
                }
                .into(),
            )
        })?;
    let fds = [dest.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        out.as_raw_fd(),
        &[std::io::IoSlice::new(b"save\n")],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| undo(ctl_err(std::io::Error::from(e))))?;
    drop(dest);
    let b = bar(d.layout.total_bytes(), "Saving");
    let (pages, bytes) = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| Err(std::io::ErrorKind::UnexpectedEof.into()))
            .map_err(|e| undo(ctl_err(e)))?;
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("progress"), Some(done), _) => b.set_position(done.parse().unwrap_or(0)),
            (Some("saved"), Some(p), Some(n)) => {
                break (p.parse::<u64>().unwrap_or(0), n.parse::<u64>().unwrap_or(0))
            }
            _ => {
                b.abandon();
                let why = line.strip_prefix("error ").unwrap_or(&line).to_owned();
                return Err(undo(SaveRestoreError::Vmm {
                    domid: d.domid,
                    why,
                }));
            }
        }
    };
    b.finish_and_clear();
    if checkpoint || paused {
        writeln!(out, "resume").map_err(ctl_err)?;
        let _ = lines.next();
        if suspended {
            // The suspend cancelled: the guest goes on in this domain.
            toolstack::resume_cancelled(&control, d.domid)?;
        }
        if paused {
            toolstack::pause(&d.domid.to_string(), true)?;
        }
    } else {
        // Destroyed while its vCPUs are parked: it never runs past the save.
        toolstack::destroy_by_id(d.domid)?;
    }
    eprintln!(
        "Saved domain {} ({pages} pages, {} MiB) to {}",
        d.domid,
        bytes >> 20,
        file.display()
    );
    Ok(())
}

/// Validates the save file at `path` completely (no domain exists yet):
/// returns its config text and parsed config.
fn validate(path: &Path) -> Result<(Vec<u8>, XlConfig), SaveRestoreError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| ToolstackError::Io {
        what: format!("open {p}"),
        source,
    })?;
    let len = f.metadata().map_or(0, |m| m.len());
    let b = bar(len, "Checking");
    let mut input = BufReader::with_capacity(1 << 20, f);
    let stream = |source| SaveRestoreError::Stream {
        path: p.clone(),
        source,
    };
    let header = xen_stream::read_xl_header(&mut input).map_err(stream)?;
    let cfg_err = |why: String| SaveRestoreError::Config {
        path: p.clone(),
        why,
    };
    if header.json {
        return Err(cfg_err(
            "its config is libxl JSON; this xl reads xl.cfg text".into(),
        ));
    }
    let text = String::from_utf8(header.config.clone())
        .map_err(|_| cfg_err("the config is not UTF-8 text".into()))?;
    let cfg = XlConfig::parse(&p, &text).map_err(|e| cfg_err(e.to_string()))?;
    if cfg.guest_type == GuestType::Pv {
        return Err(cfg_err("it describes a PV process guest".into()));
    }
    let layout = DomainLayout::new(cfg.memory_mib, DEFAULT_MAX_GRANT_FRAMES)
        .map_err(|e| cfg_err(e.to_string()))?;
    let max_pfns = layout.total_bytes() / PAGE_SIZE as u64;
    let mut done = 0u64;
    let mut sink = |_: u64, page: &[u8]| -> Result<(), xen_stream::PageSinkError> {
        done += page.len() as u64;
        b.set_position(done);
        Ok(())
    };
    let state = xen_stream::read_xl_stream(&mut input, max_pfns, &mut sink).map_err(stream)?;
    b.finish_and_clear();
    if state.hvm.vcpus.len() != 1 {
        return Err(cfg_err(format!(
            "it holds {} vCPUs; restoring secondary vCPUs is not supported",
            state.hvm.vcpus.len()
        )));
    }
    Ok((header.config, cfg))
}

/// `xl restore [-p] [-c] FILE`.
pub fn restore(file: &Path, paused: bool, console: bool) -> Result<u16, SaveRestoreError> {
    if paused {
        // A restored VMM stopped (SIGSTOP, as `xl pause`) within its first
        // ~300 ms was seen to end up crashed; until that is understood, -p is
        // refused rather than risk the guest (pause it with `xl pause`).
        return Err(ToolstackError::Unsupported(
            "xl restore -p is not supported yet (restore, then xl pause)".into(),
        )
        .into());
    }
    let file = std::path::absolute(file).map_err(|source| ToolstackError::Io {
        what: format!("resolve {}", file.display()),
        source,
    })?;
    let (config, cfg) = validate(&file)?;
    let cfg_dir = xen_stream::config_origin(&config)
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .or_else(|| file.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = crate::daemons::rundir();
    std::fs::create_dir_all(&dir).map_err(|source| ToolstackError::Io {
        what: format!("create {}", dir.display()),
        source,
    })?;
    let restored_cfg = dir.join(format!("{}.restore.cfg", cfg.name));
    std::fs::write(&restored_cfg, &config).map_err(|source| ToolstackError::Io {
        what: format!("write {}", restored_cfg.display()),
        source,
    })?;
    eprintln!(
        "Loading new save file {} (new xl fmt info 0x3/0x0/{})",
        file.display(),
        config.len()
    );
    let from = RestoreFrom {
        file: file.clone(),
        cfg_dir,
        incoming: false,
    };
    let c = toolstack::create_from(&restored_cfg, true, Some(&from))?;
    // Held once loaded: introduced (console, xenstore), then let run, as
    // libxl's build_post and unpause after the stream.
    let started = toolstack::await_loaded(&c.name, c.domid).and_then(|vmm| {
        let log = toolstack::introduce_restored(c.domid, &c.name)?;
        toolstack::unpause_loaded(vmm, c.domid)?;
        Ok(log)
    });
    let log = match started {
        Ok(log) => log,
        Err(e) => {
            let _ = toolstack::destroy_by_id(c.domid);
            return Err(e.into());
        }
    };
    eprintln!(
        "Domain {} restored from {} (console log {})",
        c.domid,
        file.display(),
        log.display()
    );
    if console {
        let xs = toolstack::xenstore(false)?;
        crate::console::attach(&xs, c.domid)?;
    }
    Ok(c.domid)
}
