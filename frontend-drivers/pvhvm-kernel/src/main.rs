//! The PVHVM guest kernel: a `no_std` Rust kernel that `xen-vmm` boots in a
//! KVM virtual machine, running the project's frontend crates
//! (`xen-blkfront`, `xen-netfront`, `xen-xenbus`) unmodified through [`platform::KPlatform`].
//!
//! Boot (CPL0, emulated by this KVM: a few hundred instructions) is in
//! [`arch`]; everything else runs at CPL3, natively. The command line
//! (`start_info.cmd_line`, `extra=` in xl.cfg) names the workload, see
//! [`workload`].
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod balloon;
mod console;
mod control;
mod global;
mod hotplug;
mod hypercall;
mod net;
mod platform;
mod rt;
mod workload;

use xen_abi::xen::{shared_info, start_info, vcpu_info, vcpu_time_info, SHUTDOWN_poweroff};

unsafe extern "C" {
    static __kernel_end: u8;
}

/// What the kernel learnt at boot.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// RAM pages.
    pub nr_pages: u64,
    /// Guest-physical address of `shared_info`.
    pub shared_info: u64,
    /// xenstore ring gfn and port.
    pub store: (u64, u32),
    /// Console ring gfn and port.
    pub console: (u64, u32),
    /// The command line.
    pub cmdline: alloc::string::String,
    /// TSC kHz (from the VMM).
    pub tsc_khz: u64,
    /// The clock parameters.
    pub time: vcpu_time_info,
    /// First gfn after the kernel image and heap.
    pub free_gfn: u64,
}

/// Guest-physical address of the start info page (read again on a resume
/// in a new domain).
pub static START_INFO: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// CPL3 entry (from `arch::boot`).
pub fn main(si_gpa: u64) -> ! {
    START_INFO.store(si_gpa, core::sync::atomic::Ordering::Relaxed);
    let tsc_khz = hypercall::clock_sync(arch::rdtsc()).max(0) as u64;
    // SAFETY: the VMM passes the guest-physical (= our) address of the
    // start_info page; it is plain data read once.
    let si: start_info = unsafe { core::ptr::read_volatile(si_gpa as *const start_info) };
    let time_gpa = si.shared_info
        + core::mem::offset_of!(shared_info, vcpu_info) as u64
        + core::mem::offset_of!(vcpu_info, time) as u64;
    // SAFETY: the VMM wrote vcpu_info[0].time in clock_sync above.
    let time: vcpu_time_info =
        unsafe { core::ptr::read_volatile(time_gpa as *const vcpu_time_info) };
    let dom_u = si.console.domU();
    // SAFETY: start_info names the domain's console page.
    unsafe { console::init(dom_u.mfn << 12, dom_u.evtchn) };

    // The heap: from the end of the image (2 MiB aligned), a quarter of RAM
    // (4..64 MiB); the pages after it are for the page allocator.
    let ram = si.nr_pages << 12;
    let kend = core::ptr::addr_of!(__kernel_end) as u64;
    let heap_start = kend.next_multiple_of(2 << 20);
    let heap_size = (ram / 4).clamp(4 << 20, 64 << 20);
    let heap_end = heap_start + heap_size;
    if heap_end + (1 << 20) > ram {
        println!("pvhvm-kernel: {} MiB of RAM is too little", ram >> 20);
        hypercall::shutdown(xen_abi::xen::SHUTDOWN_crash);
    }
    // SAFETY: [heap_start, heap_end) is RAM above the kernel image that
    // nothing else uses (the page allocator starts at heap_end).
    unsafe { rt::init_heap(heap_start as usize, heap_end as usize) };

    let len = si
        .cmd_line
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(si.cmd_line.len());
    let bytes: alloc::vec::Vec<u8> = si.cmd_line[..len].iter().map(|&c| c as u8).collect();
    let cmdline = alloc::string::String::from_utf8_lossy(&bytes).into_owned();
    if let Some(us) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("spin_us="))
        .and_then(|v| v.parse::<u64>().ok())
    {
        platform::SPIN_NS.store(
            us.saturating_mul(1000),
            core::sync::atomic::Ordering::Relaxed,
        );
    }
    let boot = BootInfo {
        nr_pages: si.nr_pages,
        shared_info: si.shared_info,
        store: (si.store_mfn, si.store_evtchn),
        console: (dom_u.mfn, dom_u.evtchn),
        cmdline,
        tsc_khz,
        time,
        free_gfn: heap_end >> 12,
    };
    println!(
        "pvhvm-kernel: up at CPL3: {} MiB RAM, TSC {} kHz, cmdline \"{}\"",
        ram >> 20,
        tsc_khz,
        boot.cmdline
    );
    let reason = workload::run(&boot).unwrap_or(SHUTDOWN_poweroff);
    println!("pvhvm-kernel: shutdown (reason {reason})");
    hypercall::shutdown(reason)
}
