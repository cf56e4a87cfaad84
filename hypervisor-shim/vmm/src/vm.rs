//! The virtual machine: KVM setup over the domain's memory file, the vCPU
//! loop, the hypercall gate and the ioeventfd doorbells.
#![allow(non_upper_case_globals)] // Xen constant names in patterns

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;
use xen_abi::event_channel::*;
use xen_abi::grant_table::{
    gnttab_query_size, gnttab_setup_table, GNTTABOP_query_size, GNTTABOP_setup_table,
    GTF_permit_access, GTF_readonly, GTF_type_mask,
};
use xen_abi::memory::{
    xen_memory_reservation, XENMEM_current_reservation, XENMEM_decrease_reservation,
    XENMEM_maximum_reservation, XENMEM_populate_physmap,
};
use xen_abi::pvhvm::{
    fvdisk, HYPERVISOR_vmm_op, VMMOP_clock_sync, VMMOP_fault, VMMOP_vcpu_down, VMMOP_vcpu_up,
    BOOT_RESERVED_END, DEBUG_PORT, DOORBELL_PORT, FVDISK_PORT, HYPERCALL_PORT,
};
use xen_abi::xen::{
    __HYPERVISOR_console_io, __HYPERVISOR_event_channel_op, __HYPERVISOR_grant_table_op,
    __HYPERVISOR_memory_op, __HYPERVISOR_sched_op, domid_t, sched_poll, sched_shutdown,
    sched_watchdog, shared_info, vcpu_info, vcpu_time_info, xen_pfn_t, CONSOLEIO_write,
    SCHEDOP_block, SCHEDOP_poll, SCHEDOP_shutdown, SCHEDOP_watchdog, SCHEDOP_yield, SHUTDOWN_crash,
    SHUTDOWN_suspend, SHUTDOWN_watchdog, DOMID_SELF,
};
use xen_shim_guest::Hypervisor;

use crate::balloon::{self, Reservation};
use crate::boot;
use crate::error::kvm;
use crate::events::EventLoop;
use crate::fvdisk::FvDisk;
use crate::gmem::GuestPhys;
use crate::watchdog::Watchdogs;
use crate::VmmError;

const ENOSYS: i64 = -38;
const EINVAL: i64 = -22;
const EFAULT: i64 = -14;
const EBUSY: i64 = -16;
const ESRCH: i64 = -3;
/// Most ports one `SCHEDOP_poll` may name.
const MAX_POLL_PORTS: u32 = 128;
/// Most bytes of one `CONSOLEIO_write`.
const MAX_CONSOLE_WRITE: u64 = 64 * 1024;
/// Most grant frames one `GNTTABOP_setup_table` may ask for.
const MAX_SETUP_FRAMES: u32 = 64;

/// How a domain's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `SCHEDOP_shutdown` with this `SHUTDOWN_*` reason (not crash).
    Shutdown(u32),
    /// The guest crashed (reported by it, or a triple fault, emulation
    /// failure, access to unbacked memory...); the text says what.
    Crashed(String),
}

/// The reserved entries of grant frame 0 (`GNTTAB_NR_RESERVED_ENTRIES` v1
/// entries: a restored guest's table is v1 until it sets it up again).
const RESERVED_GRANT_BYTES: usize = xen_abi::grant_table::GNTTAB_NR_RESERVED_ENTRIES as usize
    * core::mem::size_of::<xen_abi::grant_table::grant_entry_v1>();

/// What the VMM is told to run.
#[derive(Debug, Clone, Default)]
pub struct VmmConfig {
    /// The kernel ELF image.
    pub kernel: std::path::PathBuf,
    /// An image file to expose as the emulated PIO disk.
    pub fvdisk: Option<std::path::PathBuf>,
    /// Restore this save file instead of booting `kernel`.
    pub restore: Option<std::path::PathBuf>,
    /// Serve the control channel (`xl save`) on this Unix socket.
    pub control: Option<std::path::PathBuf>,
    /// The domain's xl.cfg, embedded in save files.
    pub config: Option<std::path::PathBuf>,
    /// The destination of a live migration: `restore` is the stream (a
    /// FIFO the receiving `xl` feeds); the vCPUs wait for the control
    /// channel's "unpause".
    pub incoming: bool,
    /// A restored domain's vCPUs wait for the control channel's "unpause"
    /// (implied by `incoming`).
    pub paused: bool,
}

enum Gate {
    Continue(i64),
    Stop(Outcome),
    /// A secondary vCPU went down.
    Down,
}

/// What the thread that ends the run hands to the main thread
/// ([`Vmm::run`]), the only one that returns (and so ends the process).
enum Exit {
    /// The run is over: the domain's outcome (already reported to the shim,
    /// or shut down by the toolstack), or the error that ended the VMM.
    Ended(Result<Outcome, VmmError>),
    /// vCPU 0's thread panicked: the panic goes on in the main thread.
    Panicked(Box<dyn std::any::Any + Send>),
}

/// A vCPU thread's entry in [`Vmm::vcpu_threads`], removed on drop.
struct VcpuThread<'a> {
    vmm: &'a Vmm,
    me: libc::pthread_t,
}

impl Drop for VcpuThread<'_> {
    fn drop(&mut self) {
        let mut t = self
            .vmm
            .vcpu_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        t.retain(|&x| x != self.me);
    }
}

/// Starts a named thread of the VMM.
fn spawn(name: &str, what: &str, f: impl FnOnce() + Send + 'static) -> Result<(), VmmError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|source| VmmError::Io {
            what: what.into(),
            source,
        })
}

/// Where a secondary vCPU starts: `(rip, rsp, rdi)`.
type ApStart = (u64, u64, u64);

/// A secondary vCPU's start request, set by `VMMOP_vcpu_up`.
#[derive(Debug, Default)]
struct ApSlot {
    start: Mutex<Option<ApStart>>,
    up: std::sync::atomic::AtomicBool,
    cv: std::sync::Condvar,
}

/// Where the domain's suspend stands (`SCHEDOP_shutdown(SHUTDOWN_suspend)`).
#[derive(Debug, Default)]
struct SuspendState {
    /// A vCPU is suspending the domain: the others park.
    suspending: bool,
    /// Every vCPU is parked and the shim has the domain shut down with
    /// reason suspend (what [`Vmm::await_suspended`] waits for).
    suspended: bool,
    /// vCPUs parked (not counting the one that suspends).
    parked: usize,
    /// The suspend hypercall's return value, once decided ([`Vmm::resume`]).
    resume: Option<i64>,
}

/// The suspend state and its condition variable.
#[derive(Debug, Default)]
struct Suspend {
    st: Mutex<SuspendState>,
    cv: std::sync::Condvar,
}

impl Suspend {
    fn lock(&self) -> std::sync::MutexGuard<'_, SuspendState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(
        &self,
        g: std::sync::MutexGuard<'a, SuspendState>,
        t: Duration,
    ) -> std::sync::MutexGuard<'a, SuspendState> {
        match self.cv.wait_timeout(g, t) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }
}

/// How long a suspending vCPU waits for the others to park.
const PARK_TIMEOUT: Duration = Duration::from_secs(5);

/// A running PVHVM domain.
pub struct Vmm {
    hv: &'static Hypervisor,
    mem: GuestPhys,
    vm: VmFd,
    events: Arc<EventLoop>,
    doorbells: Mutex<HashMap<evtchn_port_t, EventFd>>,
    bad_ports: Mutex<std::collections::HashSet<evtchn_port_t>>,
    debug_line: Mutex<Vec<u8>>,
    clock: Mutex<Option<Instant>>,
    fvdisk: Option<Mutex<FvDisk>>,
    /// Secondary vCPUs 1.. (index 0 is vCPU 1).
    aps: Vec<ApSlot>,
    /// The domain's end was reported (by whichever vCPU got there first).
    ended: std::sync::atomic::AtomicBool,
    /// `SCHEDOP_watchdog` timers.
    watchdogs: Watchdogs,
    /// Set when the domain was ended from outside the vCPUs (a watchdog):
    /// every vCPU loop returns [`Outcome::Shutdown`] with this reason.
    stop_reason: std::sync::atomic::AtomicU32,
    /// The threads running vCPUs (signalled out of `KVM_RUN` to stop them).
    vcpu_threads: Mutex<Vec<libc::pthread_t>>,
    /// vCPU 0's loop returned (the VMM is ending).
    done: std::sync::atomic::AtomicBool,
    /// The guest's suspend (see [`Vmm::await_suspended`]).
    suspend: Suspend,
    /// Where vCPU 0 parks while the domain is saved.
    park: crate::control::Park,
    /// The domain's config text, for save files.
    config_text: Vec<u8>,
    /// Guest RAM's KVM memory slot (its flags change for dirty logging).
    region: kvm_userspace_memory_region,
    /// An incoming domain's vCPUs held until the toolstack's "unpause".
    incoming: crate::control::Hold,
    /// The balloon's view of the domain's RAM (`XENMEM_*`).
    reservation: Reservation,
    /// Rate limit of the balloon's refusals in the log.
    balloon_log: xen_diag::LogLimiter,
    /// The pages Dom0 writes through the domain's grants while it is
    /// migrated ([`xen_shim_proto::dirty`]; mapped before the jail).
    grant_dirty: xen_shim_proto::dirty::DirtyLog,
}

/// No [`Vmm::stop_reason`] yet.
const NO_STOP: u32 = u32::MAX;

/// The signal that interrupts a vCPU thread's `KVM_RUN` (`EINTR`).
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("domid", &self.hv.domid())
            .finish_non_exhaustive()
    }
}

fn console(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

impl Vmm {
    /// Sets up the VM of the attached domain `hv`: memory, kernel, boot
    /// state, CPUID, doorbells. Returns it with its vCPUs.
    pub fn new(
        hv: &'static Hypervisor,
        cfg: &VmmConfig,
    ) -> Result<(Arc<Self>, Vec<VcpuFd>), VmmError> {
        let kvm_sys = Kvm::new().map_err(kvm("open /dev/kvm"))?;
        let vm = kvm_sys.create_vm().map_err(kvm("create a VM"))?;
        let memory = hv.memory();
        // SAFETY: the Hypervisor is 'static and owns the mapping of the whole
        // memory file for the life of the process; it is shared memory that
        // the VMM only touches volatilely.
        let mem = unsafe { GuestPhys::new(memory.as_ptr(), memory.len()) };
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem.len() as u64,
            userspace_addr: mem.base() as u64,
        };
        // SAFETY: the region is a live shared mapping of `mem.len()` bytes
        // that stays mapped until the process exits (the VM dies with it).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm("map guest memory"))?;
        let _ = vm.set_tss_address(0xfffb_d000);

        let layout = *hv.layout();
        let grant_dirty =
            xen_shim_proto::dirty::DirtyLog::map(hv.dirty_log_file(), layout.total_pages())?;
        let ram_end = layout.nr_ram_pages * xen_shim_proto::layout::PAGE_SIZE as u64;
        // A restored domain's memory (its kernel included) comes from the save
        // file; a new one boots the kernel image.
        let (entry, restored) = match &cfg.restore {
            Some(path) => {
                // The new domain's start_info (its store and console ports,
                // as the shim seeded it) outlives the saved one: a guest
                // resumed from a suspend reads it again (Xen's restore sets
                // the new domain's HVM params).
                let si_gpa = layout.start_info_gfn() * xen_shim_proto::layout::PAGE_SIZE as u64;
                let mut si = vec![0u8; xen_shim_proto::layout::PAGE_SIZE];
                mem.read(si_gpa, &mut si)?;
                // So do the reserved grant entries (console, xenstore) the
                // shim seeded, as Xen's toolstack seeds them after a restore
                // (`xc_dom_gnttab_seed`): the guest keeps them as they are.
                let gt_gpa = layout
                    .grant_frame_gfn(0)
                    .ok_or_else(|| VmmError::Restore("the domain has no grant frame".into()))?
                    * xen_shim_proto::layout::PAGE_SIZE as u64;
                let mut reserved = [0u8; RESERVED_GRANT_BYTES];
                mem.read(gt_gpa, &mut reserved)?;
                let state = crate::snapshot::restore_file(path, &mem, cfg.incoming)?;
                mem.write(si_gpa, &si)?;
                mem.write(gt_gpa, &reserved)?;
                (0, Some(state))
            }
            None => {
                let image = std::fs::read(&cfg.kernel).map_err(|source| VmmError::Io {
                    what: format!("read the kernel {}", cfg.kernel.display()),
                    source,
                })?;
                let k = crate::elf::parse(&image, BOOT_RESERVED_END, ram_end)
                    .map_err(|e| VmmError::Kernel(e.to_string()))?;
                for s in &k.segments {
                    let off = s.offset as usize;
                    mem.write(s.paddr, &image[off..off + s.filesz as usize])?;
                    mem.zero(s.paddr + s.filesz, (s.memsz - s.filesz) as usize)?;
                }
                boot::write_page_tables(&mem)?;
                boot::write_gdt(&mem)?;
                (k.entry, None)
            }
        };

        let mut cpuid = kvm_sys
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("get the supported CPUID"))?;
        boot::xen_cpuid(&mut cpuid);
        let vcpus = hv.info().vcpus.max(1);
        let mut fds = Vec::new();
        for id in 0..vcpus {
            let v = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm("create a vCPU"))?;
            v.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;
            let s = v.get_sregs().map_err(kvm("get sregs"))?;
            v.set_sregs(&boot::long_mode_sregs(s))
                .map_err(kvm("set sregs"))?;
            v.set_fpu(&boot::fpu()).map_err(kvm("set the FPU state"))?;
            fds.push(v);
        }
        let si = layout.start_info_gfn() * xen_shim_proto::layout::PAGE_SIZE as u64;
        match restored {
            Some(state) => state
                .apply(&fds[0])
                .map_err(|e| VmmError::Restore(xen_diag::ErrorChain(&e).to_string()))?,
            None => fds[0]
                .set_regs(&boot::entry_regs(entry, si))
                .map_err(kvm("set registers"))?,
        }
        let config_text = match &cfg.config {
            Some(p) => xen_stream::with_config_origin(
                &std::fs::read(p).map_err(|source| VmmError::Io {
                    what: format!("read the config {}", p.display()),
                    source,
                })?,
                p,
            ),
            None => Vec::new(),
        };

        let fvdisk = match &cfg.fvdisk {
            Some(p) => Some(Mutex::new(FvDisk::open(p)?)),
            None => None,
        };
        let me = Arc::new(Self {
            hv,
            mem,
            vm,
            events: EventLoop::new(hv),
            doorbells: Mutex::new(HashMap::new()),
            bad_ports: Mutex::new(std::collections::HashSet::new()),
            debug_line: Mutex::new(Vec::new()),
            clock: Mutex::new(None),
            fvdisk,
            aps: (1..vcpus).map(|_| ApSlot::default()).collect(),
            ended: std::sync::atomic::AtomicBool::new(false),
            watchdogs: Watchdogs::new(),
            stop_reason: std::sync::atomic::AtomicU32::new(NO_STOP),
            vcpu_threads: Mutex::new(Vec::new()),
            done: std::sync::atomic::AtomicBool::new(false),
            suspend: Suspend::default(),
            park: crate::control::Park::default(),
            config_text,
            region,
            incoming: crate::control::Hold::new(cfg.incoming || cfg.paused),
            reservation: Reservation::new(
                hv.memory_file(),
                layout.nr_ram_pages,
                BOOT_RESERVED_END / xen_shim_proto::layout::PAGE_SIZE as u64,
            ),
            balloon_log: xen_diag::LogLimiter::new(10, Duration::from_secs(60)),
            grant_dirty,
        });
        // A handler (doing nothing) so that the kick signal interrupts
        // KVM_RUN with EINTR instead of killing the process.
        vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler).map_err(
            |e| VmmError::Io {
                what: "install the vCPU kick signal handler".into(),
                source: std::io::Error::from_raw_os_error(e.errno()),
            },
        )?;
        for p in hv.ports() {
            me.add_doorbell(p);
        }
        // The event thread may busy-poll the channels' doorbell pages before
        // sleeping (a sender that sees it polling skips the eventfd write).
        if let Some(us) = std::env::var("XEN_VMM_POLL_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            hv.set_poll_budget(Duration::from_micros(us));
        }
        Ok((me, fds))
    }

    /// Runs the domain to its end: the event thread, the watchdog thread,
    /// one thread per vCPU (the secondary ones parked until the guest brings
    /// them up with `VMMOP_vcpu_up`); the first vCPU to end the domain
    /// (`SCHEDOP_shutdown`, a crash) reports it to the shim. Whichever
    /// thread ends the run (a vCPU, the toolstack's shutdown seen by the
    /// event thread, a watchdog whose vCPUs do not stop) hands its [`Exit`]
    /// to this thread, which returns it: only `main` ends the process.
    pub fn run(self: &Arc<Self>, mut vcpus: Vec<VcpuFd>) -> Result<Outcome, VmmError> {
        let (tx, rx) = mpsc::channel::<Exit>();
        let ev = {
            let me = Arc::clone(self);
            let tx = tx.clone();
            self.events
                .spawn(move |reason| {
                    // The shim already shut the domain down: nothing to report.
                    me.ended.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = tx.send(Exit::Ended(Ok(Outcome::Shutdown(reason))));
                })
                .map_err(|source| VmmError::Io {
                    what: "start the event thread".into(),
                    source,
                })?
        };
        let me = Arc::clone(self);
        let watchdog_tx = tx.clone();
        spawn("xen-vmm-watchdog", "start the watchdog thread", move || {
            if let Some(id) = me.watchdogs.wait_expiry() {
                if let Some(o) = me.watchdog_fired(id) {
                    let _ = watchdog_tx.send(Exit::Ended(Ok(o)));
                }
            }
        })?;
        let first = (!vcpus.is_empty()).then(|| vcpus.remove(0));
        for (i, v) in vcpus.into_iter().enumerate() {
            let me = Arc::clone(self);
            let tx = tx.clone();
            spawn(
                &format!("xen-vmm-vcpu{}", i + 1),
                "start a vCPU thread",
                move || {
                    if let Some(o) = me.ap_thread(i, v) {
                        let _ = tx.send(Exit::Ended(Ok(o)));
                    }
                },
            )?;
        }
        match first {
            Some(v) => {
                let me = Arc::clone(self);
                spawn("xen-vmm-vcpu0", "start a vCPU thread", move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        me.boot_vcpu_thread(v)
                    }));
                    let _ = tx.send(match r {
                        Ok(r) => Exit::Ended(r),
                        Err(panic) => Exit::Panicked(panic),
                    });
                })?;
            }
            None => {
                drop(tx);
                let outcome = Outcome::Crashed("no vCPU".into());
                self.done.store(true, std::sync::atomic::Ordering::SeqCst);
                self.report(&outcome)?;
                self.events.stop();
                let _ = ev.join();
                return Ok(outcome);
            }
        }
        // vCPU 0's thread always sends (its panic included), so this returns.
        let exit = rx.recv();
        self.events.stop();
        let _ = ev.join();
        match exit {
            Ok(Exit::Ended(r)) => r,
            Ok(Exit::Panicked(panic)) => std::panic::resume_unwind(panic),
            Err(mpsc::RecvError) => Ok(Outcome::Crashed(
                "every VMM thread ended without an outcome".into(),
            )),
        }
    }

    /// vCPU 0's thread: runs it until it ends the domain (or the domain is
    /// ended from outside), then reports the end to the shim.
    fn boot_vcpu_thread(&self, mut v: VcpuFd) -> Result<Outcome, VmmError> {
        let outcome = {
            let _registered = self.register_vcpu_thread();
            loop {
                match self.vcpu_loop(&mut v, 0) {
                    Some(o) => break o,
                    None => continue, // vCPU 0 cannot go down
                }
            }
        };
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.report(&outcome)?;
        Ok(outcome)
    }

    /// Reports the domain's end to the shim, once.
    fn report(&self, outcome: &Outcome) -> Result<(), VmmError> {
        if self.ended.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.watchdogs.stop();
        self.flush_debug();
        let reason = match outcome {
            Outcome::Shutdown(r) => *r,
            Outcome::Crashed(why) => {
                console(format!("xen-vmm: domain {} crashed: {why}\n", self.hv.domid()).as_bytes());
                SHUTDOWN_crash
            }
        };
        self.hv.schedop_shutdown(&sched_shutdown { reason })?;
        Ok(())
    }

    /// Records the calling thread as one that runs a vCPU, until the
    /// returned guard drops (before the thread ends, unwinding included).
    fn register_vcpu_thread(&self) -> VcpuThread<'_> {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        if let Ok(mut t) = self.vcpu_threads.lock() {
            t.push(me);
        }
        VcpuThread { vmm: self, me }
    }

    fn stopping(&self) -> Option<u32> {
        match self.stop_reason.load(std::sync::atomic::Ordering::SeqCst) {
            NO_STOP => None,
            r => Some(r),
        }
    }

    /// Watchdog `id` expired: as Xen's `domain_watchdog_timeout`, the
    /// domain is shut down with `SHUTDOWN_watchdog` at once (the shim and
    /// `xl list` see it); then every vCPU is stopped, even one spinning at
    /// CPL3 that never exits: its thread is signalled until `KVM_RUN`
    /// returns `EINTR` (again every 10 ms, in case a signal lands just
    /// before the thread enters `KVM_RUN`). Returns the outcome that ends
    /// the VMM when the vCPUs did not stop within 5 s (else vCPU 0 ends it).
    fn watchdog_fired(&self, id: u32) -> Option<Outcome> {
        if self.ended.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        console(
            format!(
                "xen-vmm: watchdog timer {id} fired for domain {}\n",
                self.hv.domid()
            )
            .as_bytes(),
        );
        self.stop_reason
            .store(SHUTDOWN_watchdog, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.report(&Outcome::Shutdown(SHUTDOWN_watchdog)) {
            tracing::warn!(error = %e, "cannot report the watchdog shutdown");
        }
        self.events.interrupt();
        let t0 = Instant::now();
        while !self.done.load(std::sync::atomic::Ordering::SeqCst) {
            self.kick_vcpus();
            if t0.elapsed() > Duration::from_secs(5) {
                console(b"xen-vmm: the vCPUs did not stop within 5 s; exiting\n");
                return Some(Outcome::Shutdown(SHUTDOWN_watchdog));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// A secondary vCPU's thread: runs it each time the guest brings it up,
    /// until it ends the domain (`Some`, reported to the shim) or the
    /// domain is ended from outside (`None`: vCPU 0 ends the VMM).
    fn ap_thread(&self, idx: usize, mut v: VcpuFd) -> Option<Outcome> {
        let slot = self.aps.get(idx)?;
        let _registered = self.register_vcpu_thread();
        loop {
            let start = {
                let mut g = slot.start.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if let Some(s) = g.take() {
                        break s;
                    }
                    g = slot.cv.wait(g).unwrap_or_else(|p| p.into_inner());
                }
            };
            let (rip, rsp, rdi) = start;
            let regs = kvm_bindings::kvm_regs {
                rip,
                rsp,
                rdi,
                rflags: 2,
                ..Default::default()
            };
            let outcome = match v.set_regs(&regs) {
                Ok(()) => self.vcpu_loop(&mut v, idx as u32 + 1),
                Err(e) => Some(Outcome::Crashed(format!(
                    "cannot start vCPU {}: {e}",
                    idx + 1
                ))),
            };
            match outcome {
                None => slot.up.store(false, std::sync::atomic::Ordering::SeqCst),
                // Stopped from outside: vCPU 0 ends the VMM.
                Some(_) if self.stopping().is_some() => return None,
                Some(o) => {
                    let _ = self.report(&o);
                    return Some(o);
                }
            }
        }
    }

    fn add_doorbell(&self, port: evtchn_port_t) {
        if let Ok(mut bad) = self.bad_ports.lock() {
            bad.clear();
        }
        let Some(fd) = self.hv.port_out_fd(port) else {
            return;
        };
        // SAFETY: `fd` is a freshly duplicated eventfd we own; EventFd takes
        // ownership of it.
        let efd = unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) };
        let addr = IoEventAddress::Pio(u64::from(DOORBELL_PORT));
        match self.vm.register_ioevent(&efd, &addr, port) {
            Ok(()) => {
                tracing::debug!(port, "ioeventfd doorbell registered");
                if let Ok(mut d) = self.doorbells.lock() {
                    if let Some(old) = d.insert(port, efd) {
                        let _ = self.vm.unregister_ioevent(&old, &addr, port);
                    }
                }
            }
            Err(e) => tracing::warn!(port, error = %e, "no ioeventfd doorbell; sends will exit"),
        }
    }

    /// A doorbell on a port without an ioeventfd (yet): sends it here and
    /// registers one so the next send does not exit. A port that cannot be
    /// sent on is remembered and not asked of the daemon again until the
    /// guest binds a port (a guest ringing random ports costs only itself).
    fn slow_send(&self, port: evtchn_port_t) {
        if port as usize >= EVTCHN_2L_NR_CHANNELS {
            return;
        }
        let Ok(mut bad) = self.bad_ports.lock() else {
            return;
        };
        if bad.contains(&port) {
            return;
        }
        let r = self.hv.evtchnop_send(&evtchn_send { port });
        tracing::debug!(port, ?r, "doorbell without an ioeventfd");
        match r {
            Ok(()) => {
                drop(bad);
                self.add_doorbell(port);
            }
            Err(_) => {
                bad.insert(port);
            }
        }
    }

    fn remove_doorbell(&self, port: evtchn_port_t) {
        let addr = IoEventAddress::Pio(u64::from(DOORBELL_PORT));
        if let Ok(mut d) = self.doorbells.lock() {
            if let Some(old) = d.remove(&port) {
                let _ = self.vm.unregister_ioevent(&old, &addr, port);
            }
        }
    }

    fn flush_debug(&self) {
        if let Ok(mut l) = self.debug_line.lock() {
            if !l.is_empty() {
                l.push(b'\n');
                console(&l);
                l.clear();
            }
        }
    }

    fn debug_byte(&self, b: u8) {
        if let Ok(mut l) = self.debug_line.lock() {
            l.push(b);
            if b == b'\n' || l.len() >= 4096 {
                console(&l);
                l.clear();
            }
        }
    }

    fn crash_report(&self, v: &VcpuFd, why: &str) -> Outcome {
        let regs = v
            .get_regs()
            .map(|r| format!(" rip={:#x} rsp={:#x} rax={:#x}", r.rip, r.rsp, r.rax))
            .unwrap_or_default();
        let sregs = v
            .get_sregs()
            .map(|s| format!(" cs={:#x} cr2={:#x}", s.cs.selector, s.cr2))
            .unwrap_or_default();
        Outcome::Crashed(format!("{why}{regs}{sregs}"))
    }

    /// Runs a vCPU until it ends the domain (`Some`) or, for a secondary
    /// vCPU, goes down (`None`).
    fn vcpu_loop(&self, v: &mut VcpuFd, id: u32) -> Option<Outcome> {
        match self.vcpu_loop_inner(v, id) {
            Some(Outcome::Crashed(why)) if id > 0 => {
                Some(Outcome::Crashed(format!("vCPU {id}: {why}")))
            }
            other => other,
        }
    }

    fn vcpu_loop_inner(&self, v: &mut VcpuFd, id: u32) -> Option<Outcome> {
        loop {
            if let Some(r) = self.stopping() {
                return Some(Outcome::Shutdown(r));
            }
            self.park_while_suspending();
            if id == 0 && self.park.requested() {
                self.park.park_here(v, None);
                continue;
            }
            let (port, val, len) = match v.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    let mut d = [0u8; 4];
                    let n = data.len().min(4);
                    d[..n].copy_from_slice(&data[..n]);
                    (port, u32::from_le_bytes(d), n)
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.io_in(port, data);
                    continue;
                }
                Ok(VcpuExit::Shutdown) => return Some(self.crash_report(v, "triple fault")),
                Ok(VcpuExit::Hlt) => return Some(self.crash_report(v, "hlt with interrupts off")),
                Ok(VcpuExit::InternalError) => {
                    return Some(self.crash_report(v, "KVM internal error (instruction emulation)"))
                }
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    return Some(self.crash_report(v, &format!("VM entry failed ({reason:#x})")))
                }
                Ok(VcpuExit::MmioRead(addr, _)) => {
                    return Some(
                        self.crash_report(v, &format!("read of unbacked address {addr:#x}")),
                    )
                }
                Ok(VcpuExit::MmioWrite(addr, _)) => {
                    return Some(
                        self.crash_report(v, &format!("write to unbacked address {addr:#x}")),
                    )
                }
                Ok(other) => {
                    let what = format!("unexpected exit {other:?}");
                    return Some(self.crash_report(v, &what));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Some(self.crash_report(v, &format!("KVM_RUN failed: {e}"))),
            };
            match port {
                HYPERCALL_PORT => match self.hypercall(v, val, id) {
                    Ok(Some(Gate::Stop(outcome))) => return Some(outcome),
                    Ok(Some(_)) => return None,
                    Ok(None) => {}
                    Err(e) => return Some(self.crash_report(v, &format!("hypercall gate: {e}"))),
                },
                DOORBELL_PORT if len == 4 => self.slow_send(val),
                DEBUG_PORT => self.debug_byte(val as u8),
                p if (FVDISK_PORT..FVDISK_PORT + fvdisk::SPAN).contains(&p) => {
                    if let Some(d) = &self.fvdisk {
                        if let Ok(mut d) = d.lock() {
                            d.out(p - FVDISK_PORT, val, len);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn io_in(&self, port: u16, data: &mut [u8]) {
        let mut v = u32::MAX;
        if (FVDISK_PORT..FVDISK_PORT + fvdisk::SPAN).contains(&port) {
            if let Some(d) = &self.fvdisk {
                if let Ok(mut d) = d.lock() {
                    v = d.inp(port - FVDISK_PORT, data.len());
                }
            }
        }
        let b = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&b[..n]);
    }

    /// One hypercall: `Ok(Some(Stop))` ends the domain, `Ok(Some(Down))`
    /// stops this secondary vCPU.
    fn hypercall(&self, v: &mut VcpuFd, nr: u32, id: u32) -> Result<Option<Gate>, VmmError> {
        let mut regs = v.get_regs().map_err(kvm("get registers"))?;
        let a = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8];
        tracing::trace!(nr, ?a, "hypercall");
        let r = match nr {
            __HYPERVISOR_sched_op => self.sched_op(a[0], a[1], v, id),
            __HYPERVISOR_event_channel_op => Gate::Continue(self.evtchn_op(a[0], a[1])),
            __HYPERVISOR_grant_table_op => Gate::Continue(self.gnttab_op(a[0], a[1], a[2])),
            __HYPERVISOR_console_io => Gate::Continue(self.console_io(a[0], a[1], a[2])),
            __HYPERVISOR_memory_op => Gate::Continue(self.memory_op(a[0], a[1])),
            HYPERVISOR_vmm_op => self.vmm_op(a, id),
            _ => Gate::Continue(ENOSYS),
        };
        match r {
            Gate::Continue(ret) => {
                if nr == __HYPERVISOR_sched_op && a[0] == u64::from(SCHEDOP_shutdown) {
                    // A suspend may have parked this vCPU for a save, which
                    // completed the hypercall's I/O exit (rip moved on).
                    regs = v.get_regs().map_err(kvm("get registers"))?;
                }
                regs.rax = ret as u64;
                v.set_regs(&regs).map_err(kvm("set registers"))?;
                Ok(None)
            }
            other => Ok(Some(other)),
        }
    }

    fn guest_now_ns(&self) -> Option<(Instant, u64)> {
        let c = self.clock.lock().ok()?;
        let epoch = (*c)?;
        Some((
            epoch,
            u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX),
        ))
    }

    fn sched_op(&self, cmd: u64, arg: u64, v: &mut VcpuFd, id: u32) -> Gate {
        match cmd as u32 {
            SCHEDOP_yield => {
                std::thread::yield_now();
                Gate::Continue(0)
            }
            SCHEDOP_block => {
                self.events.block(Duration::from_millis(10));
                Gate::Continue(0)
            }
            SCHEDOP_poll => {
                let Ok(op) = self.mem.read_obj::<sched_poll>(arg) else {
                    return Gate::Continue(EFAULT);
                };
                if op.nr_ports > MAX_POLL_PORTS {
                    return Gate::Continue(EINVAL);
                }
                let mut raw = vec![0u8; op.nr_ports as usize * 4];
                if self.mem.read(op.ports.p, &mut raw).is_err() {
                    return Gate::Continue(EFAULT);
                }
                let ports: Vec<evtchn_port_t> = raw
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let deadline = match (op.timeout, self.guest_now_ns()) {
                    (0, _) => None,
                    // A deadline beyond what Instant holds is "forever".
                    (t, Some((epoch, _))) => epoch.checked_add(Duration::from_nanos(t)),
                    (_, None) => Some(Instant::now() + Duration::from_millis(10)),
                };
                let fired = self.events.poll(&ports, deadline);
                tracing::trace!(?ports, fired, "SCHEDOP_poll");
                Gate::Continue(0)
            }
            SCHEDOP_watchdog => match self.mem.read_obj::<sched_watchdog>(arg) {
                Ok(op) => Gate::Continue(self.watchdogs.op(op.id, op.timeout, Instant::now())),
                Err(_) => Gate::Continue(EFAULT),
            },
            SCHEDOP_shutdown => match self.mem.read_obj::<sched_shutdown>(arg) {
                Ok(op) if op.reason == SHUTDOWN_crash => {
                    Gate::Stop(Outcome::Crashed("the guest reported a crash".into()))
                }
                Ok(op) if op.reason == SHUTDOWN_suspend => self.suspend_domain(v, id),
                Ok(op) if op.reason <= xen_abi::xen::SHUTDOWN_MAX => {
                    Gate::Stop(Outcome::Shutdown(op.reason))
                }
                Ok(_) => Gate::Continue(EINVAL),
                Err(_) => Gate::Continue(EFAULT),
            },
            _ => Gate::Continue(ENOSYS),
        }
    }

    /// A vCPU's `SCHEDOP_shutdown(SHUTDOWN_suspend)`, as Xen's: every
    /// other vCPU is parked (signalled out of `KVM_RUN` if it spins at
    /// CPL3), the domain is reported to the shim as shut down with reason
    /// suspend (`xl list`: `s`; the memory and vCPU state now hold still
    /// for a save), and the vCPU waits for [`Vmm::resume`]: the hypercall
    /// returns 1 for a cancelled suspend (the guest continues in the same
    /// domain with its connections: a checkpoint) or 0 (the guest runs in
    /// a new domain and must set up its connections again). The
    /// toolstack's resume through the shim (`Control::resume_domain`,
    /// Xen's `XEN_DOMCTL_resumedomain`) is a cancelled suspend.
    ///
    /// While suspended, vCPU 0 (`id` 0, `v`) parks for the toolstack's
    /// save as at the top of its loop, its state captured with the
    /// hypercall returning 0: a domain restored from that save learns it
    /// runs in a new domain (Xen's saved state of a guest in
    /// `SCHEDOP_shutdown(SHUTDOWN_suspend)`).
    fn suspend_domain(&self, v: &mut VcpuFd, id: u32) -> Gate {
        let others = self
            .aps
            .iter()
            .filter(|a| a.up.load(std::sync::atomic::Ordering::SeqCst))
            .count();
        {
            let mut g = self.suspend.lock();
            if g.suspending {
                // Another vCPU suspends the domain already.
                return Gate::Continue(EBUSY);
            }
            *g = SuspendState {
                suspending: true,
                ..SuspendState::default()
            };
        }
        let _ = self.events.take_resumed();
        // Park the others (the suspending vCPU itself is not in KVM_RUN: a
        // kick it gets only makes its next KVM_RUN return EINTR).
        let t0 = Instant::now();
        let mut g = self.suspend.lock();
        while g.parked < others {
            if t0.elapsed() > PARK_TIMEOUT {
                g.suspending = false;
                self.suspend.cv.notify_all();
                console(b"xen-vmm: suspend refused: the other vCPUs did not park within 5 s\n");
                return Gate::Continue(EBUSY);
            }
            drop(g);
            self.kick_vcpus();
            g = self.suspend.lock();
            g = self.suspend.wait(g, Duration::from_millis(10));
        }
        drop(g);
        self.flush_debug();
        if let Err(e) = self.hv.schedop_shutdown(&sched_shutdown {
            reason: SHUTDOWN_suspend,
        }) {
            tracing::warn!(error = %e, "cannot report the suspend to the shim");
            let mut g = self.suspend.lock();
            g.suspending = false;
            self.suspend.cv.notify_all();
            return Gate::Continue(EBUSY);
        }
        console(format!("xen-vmm: domain {} suspended\n", self.hv.domid()).as_bytes());
        let mut g = self.suspend.lock();
        g.suspended = true;
        self.suspend.cv.notify_all();
        let ret = loop {
            if let Some(r) = g.resume.take() {
                break r;
            }
            if self.events.take_resumed() {
                break 1;
            }
            if let Some(r) = self.stopping() {
                *g = SuspendState::default();
                self.suspend.cv.notify_all();
                return Gate::Stop(Outcome::Shutdown(r));
            }
            if id == 0 && self.park.requested() {
                drop(g);
                self.park.park_here(v, Some(0));
                g = self.suspend.lock();
                continue;
            }
            g = self.suspend.wait(g, Duration::from_millis(20));
        };
        *g = SuspendState::default();
        self.suspend.cv.notify_all();
        drop(g);
        console(
            format!(
                "xen-vmm: domain {} resumed ({})\n",
                self.hv.domid(),
                if ret == 1 {
                    "suspend cancelled: same domain"
                } else {
                    "new domain"
                }
            )
            .as_bytes(),
        );
        Gate::Continue(ret)
    }

    /// A vCPU's stop at the top of its loop while another suspends the
    /// domain: parked until the resume.
    fn park_while_suspending(&self) {
        let mut g = self.suspend.lock();
        if !g.suspending {
            return;
        }
        g.parked += 1;
        self.suspend.cv.notify_all();
        while g.suspending && self.stopping().is_none() {
            g = self.suspend.wait(g, Duration::from_millis(100));
        }
        g.parked = g.parked.saturating_sub(1);
    }

    /// Signals every vCPU thread out of `KVM_RUN`.
    fn kick_vcpus(&self) {
        if let Ok(threads) = self.vcpu_threads.lock() {
            for &t in threads.iter() {
                // SAFETY: `t` is a live thread of this process: a vCPU
                // thread removes itself from the list (under this lock,
                // `VcpuThread`'s drop) before it ends. The signal's handler
                // does nothing.
                unsafe { libc::pthread_kill(t, kick_signal()) };
            }
        }
    }

    /// Waits up to `timeout` until the guest has suspended (its
    /// `SCHEDOP_shutdown(SHUTDOWN_suspend)`: every vCPU parked, the shim
    /// told); `true` once it has. For the toolstack's save: the guest's
    /// memory and vCPU state hold still until [`Vmm::resume`].
    pub fn await_suspended(&self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        let mut g = self.suspend.lock();
        while !g.suspended {
            let left = timeout.saturating_sub(t0.elapsed());
            if left.is_zero() {
                return false;
            }
            g = self.suspend.wait(g, left.min(Duration::from_millis(100)));
        }
        true
    }

    /// Ends the guest's suspend: its hypercall returns 1 when `cancelled`
    /// (it continues in the same domain with its connections; the shim
    /// must have the domain running again: the toolstack's
    /// `Control::resume_domain` does both) or 0 (it runs in a new domain
    /// and sets up its connections again).
    ///
    /// # Errors
    /// [`VmmError::NotSuspended`] when the guest is not suspended.
    pub fn resume(&self, cancelled: bool) -> Result<(), VmmError> {
        let mut g = self.suspend.lock();
        if !g.suspended || g.resume.is_some() {
            return Err(VmmError::NotSuspended);
        }
        g.resume = Some(i64::from(cancelled));
        self.suspend.cv.notify_all();
        Ok(())
    }

    fn evtchn_op(&self, cmd: u64, arg: u64) -> i64 {
        fn errno(e: &xen_shim_proto::EvtchnError) -> i64 {
            -i64::from(e.errno())
        }
        macro_rules! op {
            ($t:ty, |$op:ident| $body:expr) => {{
                #[allow(unused_mut)]
                let Ok(mut $op) = self.mem.read_obj::<$t>(arg) else {
                    return EFAULT;
                };
                let r: Result<(), xen_shim_proto::EvtchnError> = $body;
                match r {
                    Ok(()) => {
                        if self.mem.write_obj(arg, &$op).is_err() {
                            return EFAULT;
                        }
                        0
                    }
                    Err(e) => errno(&e),
                }
            }};
        }
        match cmd as u32 {
            EVTCHNOP_alloc_unbound => op!(evtchn_alloc_unbound, |op| {
                self.hv.evtchnop_alloc_unbound(&mut op).map(|()| {
                    self.add_doorbell(op.port);
                })
            }),
            EVTCHNOP_bind_interdomain => op!(evtchn_bind_interdomain, |op| {
                self.hv.evtchnop_bind_interdomain(&mut op).map(|()| {
                    self.add_doorbell(op.local_port);
                })
            }),
            EVTCHNOP_close => op!(evtchn_close, |op| {
                self.remove_doorbell(op.port);
                self.hv.evtchnop_close(&op)
            }),
            EVTCHNOP_send => op!(evtchn_send, |op| self.hv.evtchnop_send(&op)),
            EVTCHNOP_unmask => op!(evtchn_unmask, |op| self.hv.evtchnop_unmask(&op)),
            EVTCHNOP_status => op!(evtchn_status, |op| self.hv.evtchnop_status(&mut op)),
            _ => ENOSYS,
        }
    }

    fn gnttab_op(&self, cmd: u64, uop: u64, count: u64) -> i64 {
        if count != 1 {
            return EINVAL;
        }
        match cmd as u32 {
            GNTTABOP_setup_table => {
                let Ok(mut op) = self.mem.read_obj::<gnttab_setup_table>(uop) else {
                    return EFAULT;
                };
                let n = op.nr_frames.min(MAX_SETUP_FRAMES);
                let mut frames = vec![0 as xen_pfn_t; n as usize];
                op.nr_frames = n;
                let _ = self.hv.gnttabop_setup_table(&mut op, &mut frames);
                if op.status == 0 {
                    let bytes: Vec<u8> = frames.iter().flat_map(|f| f.to_le_bytes()).collect();
                    if self.mem.write(op.frame_list.p, &bytes).is_err() {
                        return EFAULT;
                    }
                }
                if self.mem.write_obj(uop, &op).is_err() {
                    return EFAULT;
                }
                0
            }
            GNTTABOP_query_size => {
                let Ok(mut op) = self.mem.read_obj::<gnttab_query_size>(uop) else {
                    return EFAULT;
                };
                let _ = self.hv.gnttabop_query_size(&mut op);
                if self.mem.write_obj(uop, &op).is_err() {
                    return EFAULT;
                }
                0
            }
            _ => ENOSYS,
        }
    }

    /// `HYPERVISOR_memory_op`: the balloon's operations ([`balloon`]).
    fn memory_op(&self, cmd: u64, arg: u64) -> i64 {
        let me = self.hv.domid();
        let ours = |d: domid_t| d == DOMID_SELF || d == me;
        match cmd as u32 {
            XENMEM_current_reservation | XENMEM_maximum_reservation => {
                let Ok(d) = self.mem.read_obj::<domid_t>(arg) else {
                    return EFAULT;
                };
                if !ours(d) {
                    return ESRCH;
                }
                let pages = if cmd as u32 == XENMEM_current_reservation {
                    self.reservation.current_pages()
                } else {
                    self.reservation.max_pages()
                };
                i64::try_from(pages).unwrap_or(i64::MAX)
            }
            op @ (XENMEM_decrease_reservation | XENMEM_populate_physmap) => {
                let Ok(r) = self.mem.read_obj::<xen_memory_reservation>(arg) else {
                    return EFAULT;
                };
                if !ours(r.domid) {
                    return ESRCH;
                }
                if r.nr_extents > balloon::MAX_EXTENTS {
                    return EINVAL;
                }
                let mut bytes = vec![0u8; r.nr_extents as usize * 8];
                if self.mem.read(r.extent_start.p, &mut bytes).is_err() {
                    return EFAULT;
                }
                let gfns: Vec<u64> = bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect();
                let done = if op == XENMEM_decrease_reservation {
                    let mut q = gnttab_query_size {
                        dom: DOMID_SELF,
                        ..Default::default()
                    };
                    let frames = match self.hv.gnttabop_query_size(&mut q) {
                        Ok(()) => q.nr_frames,
                        Err(_) => self.hv.layout().max_grant_frames,
                    };
                    let mapped = balloon::mapped_gfns(&self.mem, self.hv.layout(), frames);
                    self.reservation.decrease(&gfns, r.extent_order, &mapped)
                } else {
                    self.reservation.populate(&gfns, r.extent_order)
                };
                if let Some(why) = &done.stopped {
                    xen_diag::warn_limited!(
                        self.balloon_log,
                        domid = me,
                        op = if op == XENMEM_decrease_reservation {
                            "decrease_reservation"
                        } else {
                            "populate_physmap"
                        },
                        done = done.done,
                        asked = r.nr_extents,
                        error = %xen_diag::ErrorChain(why),
                        "balloon extent refused"
                    );
                }
                i64::try_from(done.done).unwrap_or(i64::MAX)
            }
            _ => ENOSYS,
        }
    }

    /// The domain's pages and maximum (Xen's `tot_pages`, `max_pages`).
    pub fn reservation(&self) -> (u64, u64) {
        (
            self.reservation.current_pages(),
            self.reservation.max_pages(),
        )
    }

    fn console_io(&self, cmd: u64, count: u64, buf: u64) -> i64 {
        if cmd as u32 != CONSOLEIO_write {
            return ENOSYS;
        }
        let n = count.min(MAX_CONSOLE_WRITE) as usize;
        let mut b = vec![0u8; n];
        if self.mem.read(buf, &mut b).is_err() {
            return EFAULT;
        }
        console(&b);
        n as i64
    }

    fn vmm_op(&self, a: [u64; 5], id: u32) -> Gate {
        match a[0] {
            VMMOP_vcpu_up => {
                let Some(slot) = usize::try_from(a[1])
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| self.aps.get(i))
                else {
                    return Gate::Continue(EINVAL);
                };
                if slot.up.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return Gate::Continue(EBUSY);
                }
                let mut g = slot.start.lock().unwrap_or_else(|p| p.into_inner());
                *g = Some((a[2], a[3], a[4]));
                slot.cv.notify_all();
                Gate::Continue(0)
            }
            VMMOP_vcpu_down if id > 0 => Gate::Down,
            VMMOP_vcpu_down => Gate::Continue(EINVAL),
            VMMOP_fault => Gate::Stop(Outcome::Crashed(format!(
                "guest fault: vector {} error code {:#x} at rip {:#x} (cr2 {:#x})",
                a[1], a[2], a[3], a[4]
            ))),
            VMMOP_clock_sync => {
                // a[1] = the guest's TSC now, a[2] = the host TSC kHz the
                // guest should assume (0: let the VMM say).
                let khz = host_tsc_khz();
                let mut t: vcpu_time_info = boot::time_info(khz);
                t.tsc_timestamp = a[1];
                let off = core::mem::offset_of!(shared_info, vcpu_info)
                    + core::mem::offset_of!(vcpu_info, time);
                let gpa = self.hv.layout().shared_info_gfn()
                    * xen_shim_proto::layout::PAGE_SIZE as u64
                    + off as u64;
                if self.mem.write_obj(gpa, &t).is_err() {
                    return Gate::Continue(EFAULT);
                }
                if let Ok(mut c) = self.clock.lock() {
                    *c = Some(Instant::now());
                }
                Gate::Continue(khz as i64)
            }
            _ => Gate::Continue(ENOSYS),
        }
    }
}

/// The host TSC frequency in kHz: from `/sys` when the kernel exports it,
/// else measured against the monotonic clock over 20 ms.
pub fn host_tsc_khz() -> u64 {
    static KHZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
            if let Ok(v) = s.trim().parse::<u64>() {
                return v;
            }
        }
        // SAFETY: rdtsc has no memory-safety preconditions.
        let t0 = unsafe { core::arch::x86_64::_rdtsc() };
        let i0 = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: as above.
        let t1 = unsafe { core::arch::x86_64::_rdtsc() };
        let ns = i0.elapsed().as_nanos().max(1);
        ((u128::from(t1.wrapping_sub(t0)) * 1_000_000) / ns) as u64
    })
}

/// Attaches to the shim as the domain named by the environment
/// (`XEN_SHIM_DOMID`, `XEN_SHIM_TOKEN`, `XEN_SHIM_SOCKET`), builds the VM
/// and runs it to its end.
pub fn run(cfg: &VmmConfig) -> Result<Outcome, VmmError> {
    let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::attach_from_env()?));
    let (vmm, vcpus) = Vmm::new(hv, cfg)?;
    // The control socket is bound before the jail (its directory is root's);
    // its connections are served once jailed.
    let control = match &cfg.control {
        Some(path) => Some(
            crate::control::serve(path, Arc::clone(&vmm) as Arc<dyn crate::control::Saver>)
                .map_err(|source| VmmError::Io {
                    what: format!("serve the control socket {}", path.display()),
                    source,
                })?,
        ),
        None => None,
    };
    if crate::jail::enter_if_requested(hv)? {
        // In the VMM's log (its stderr), as the runtime's `pvguest jailed`.
        eprintln!("xen-vmm: jailed uid={}", xen_jail::domain_uid(hv.domid()));
    }
    if let Some(gate) = control {
        gate.release();
    }
    if cfg.incoming || cfg.paused {
        eprintln!("xen-vmm: domain loaded, waiting for unpause");
        vmm.incoming.wait();
    }
    vmm.run(vcpus)
}

impl Vmm {
    /// Turns KVM's dirty logging of guest RAM on or off.
    fn set_dirty_logging(&self, on: bool) -> Result<(), String> {
        // Dom0's writes through grants from now on (before KVM's log, so
        // that round 0's full pass follows both).
        if on {
            self.grant_dirty.set_migrating(true);
        }
        let region = kvm_userspace_memory_region {
            flags: if on {
                kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            ..self.region
        };
        // SAFETY: the same live mapping as at creation (see `Vmm::new`),
        // only the slot's flags change.
        let r = unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| format!("KVM: cannot set dirty logging {on}: {e}"));
        if !on || r.is_err() {
            self.grant_dirty.set_migrating(false);
            self.grant_dirty.take();
        }
        r
    }

    /// Parks vCPU 0 (events held) for a save; on failure it runs on.
    fn park_for_save(&self) -> Result<crate::snapshot::KvmVcpuState, String> {
        if self
            .aps
            .iter()
            .any(|a| a.up.load(std::sync::atomic::Ordering::SeqCst))
        {
            return Err(
                "the guest has secondary vCPUs online; saving them is not supported".into(),
            );
        }
        if self.ended.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the domain has ended".into());
        }
        self.events.set_hold(true);
        self.park.request(|| self.kick_vcpus()).inspect_err(|_| {
            self.events.set_hold(false);
        })
    }
}

impl crate::migrate::Source for Vmm {
    fn memory_file(&self) -> &std::fs::File {
        self.hv.memory_file()
    }

    fn nr_pages(&self) -> u64 {
        self.mem.len() as u64 / xen_shim_proto::layout::PAGE_SIZE as u64
    }

    fn ram_pages(&self) -> u64 {
        self.hv.layout().nr_ram_pages
    }

    fn dirty(&self) -> Result<Vec<u64>, String> {
        let bitmap = self
            .vm
            .get_dirty_log(self.region.slot, self.region.memory_size as usize)
            .map_err(|e| format!("KVM: cannot read the dirty log: {e}"))?;
        let mut pfns = Vec::new();
        for (i, word) in bitmap.iter().enumerate() {
            let mut w = *word;
            while w != 0 {
                let bit = w.trailing_zeros();
                pfns.push(i as u64 * 64 + u64::from(bit));
                w &= w - 1;
            }
        }
        // And what Dom0 wrote through grants (Xen's marks at the unmap of a
        // writable mapping and at a grant copy).
        pfns.extend(self.grant_dirty.take());
        Ok(pfns)
    }

    fn grant_writable(&self, set: &mut std::collections::BTreeSet<u64>) {
        use xen_shim_proto::grant::GrantTableView;
        let Ok(t) = self.hv.grant_table() else {
            return;
        };
        let pages = crate::migrate::Source::nr_pages(self);
        for gref in 0..t.nr_entries() {
            let raw = t.header(gref).load(std::sync::atomic::Ordering::Acquire);
            let flags = xen_shim_proto::grant::combo_flags(raw);
            if flags & GTF_type_mask != GTF_permit_access || flags & GTF_readonly != 0 {
                continue;
            }
            let frame = match t.word1(gref) {
                Some(w) if t.version() == 2 => w.load(std::sync::atomic::Ordering::Acquire),
                _ => u64::from(t.frame_lo(gref).load(std::sync::atomic::Ordering::Acquire)),
            };
            if frame < pages {
                set.insert(frame);
            }
        }
    }

    fn park(&self) -> Result<crate::snapshot::KvmVcpuState, String> {
        self.park_for_save()
    }

    fn finish<W: std::io::Write>(
        &self,
        w: xen_stream::StreamWriter<W>,
        cpu: &crate::snapshot::KvmVcpuState,
    ) -> Result<W, crate::snapshot::SnapshotError> {
        crate::snapshot::finish_stream(w, self.hv, cpu, host_tsc_khz())
    }
}

impl crate::control::Saver for Vmm {
    fn migrate(
        &self,
        out: std::fs::File,
        config: Option<Vec<u8>>,
        opts: crate::migrate::LiveOptions,
        report: &mut dyn FnMut(&str),
        await_final: &mut dyn FnMut() -> bool,
    ) -> Result<crate::migrate::Sent, String> {
        if self
            .aps
            .iter()
            .any(|a| a.up.load(std::sync::atomic::Ordering::SeqCst))
        {
            return Err(
                "the guest has secondary vCPUs online; migrating them is not supported".into(),
            );
        }
        self.set_dirty_logging(true)?;
        let config = config.as_deref().unwrap_or(&self.config_text);
        let r = crate::migrate::send(self, out, config, opts, report, await_final);
        if let Err(e) = self.set_dirty_logging(false) {
            tracing::warn!(error = %e, "dirty logging left on");
        }
        if r.is_err() && self.park.requested() {
            self.release();
        }
        r
    }

    fn unpause(&self) -> Result<(), String> {
        if self.incoming.release() {
            Ok(())
        } else {
            Err("the domain is not an incoming one waiting to run".into())
        }
    }

    fn save(
        &self,
        file: std::fs::File,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(u64, u64), String> {
        let cpu = self.park_for_save()?;
        let r = crate::snapshot::save_file(
            file,
            self.hv,
            &cpu,
            &self.config_text,
            host_tsc_khz(),
            progress,
        )
        .map_err(|e| xen_diag::ErrorChain(&e).to_string());
        if r.is_err() {
            self.release();
        }
        r
    }

    /// Lets vCPU 0 run again after a save (`-c`, `-p`, or a failed save).
    fn release(&self) {
        self.events.set_hold(false);
        self.park.release();
    }

    fn reservation(&self) -> (u64, u64) {
        Vmm::reservation(self)
    }

    fn set_max_pages(&self, pages: u64) -> Result<(), String> {
        self.reservation
            .set_max_pages(pages)
            .map_err(|e| e.to_string())
    }
}

/// Whether `path` can be opened as `/dev/kvm` (for error messages).
pub fn kvm_available(path: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .is_ok()
}
