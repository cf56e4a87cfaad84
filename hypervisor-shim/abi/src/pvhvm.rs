//! The PVHVM platform ABI of this project's VMM (`xen-vmm`): how a guest
//! kernel running in a KVM virtual machine reaches the hypervisor shim.
//! Not from Xen's headers: this is the one place where a PVHVM guest of this
//! stack differs from a guest of real Xen (its hypercall entry). Every
//! structure the guest shares (`shared_info`, `start_info`, grant frames,
//! rings) is Xen's.
//!
//! # Boot
//!
//! The VMM loads the kernel's ELF `PT_LOAD` segments at their physical
//! addresses and enters it at the ELF entry point in 64-bit long mode at
//! CPL0, like Linux's 64-bit boot protocol (and unlike PVH's 32-bit entry,
//! which would cost thousands of emulated instructions here):
//! - paging on, the first [`IDENTITY_MAP_BYTES`] identity-mapped with 2 MiB
//!   pages that CPL3 may read and write (page tables at [`BOOT_PML4`] ..),
//!   a flat boot GDT (code [`BOOT_CS`], data [`BOOT_DS`]),
//! - `CR4.OSFXSR`/`OSXMMEXCPT` set (SSE usable), interrupts off,
//! - `rsi` = guest-physical address of `start_info` (as a Xen PV guest),
//!   `rdi` = [`BOOT_MAGIC`], `rsp` = 0 (the kernel brings its own stack).
//!
//! `start_info.shared_info` is the guest-physical address of `shared_info`;
//! `store_mfn`/`console.domU.mfn` are guest frame numbers; `nr_pages` is the
//! RAM in pages (gfn 0 .. nr_pages, the kernel image included); the
//! command line is `cmd_line`. The grant frames are at gfn
//! `nr_pages + GRANT_FRAMES_OFFSET ..`. `shared_info.vcpu_info[0].time` holds
//! a Xen `vcpu_time_info` for the guest's TSC.
//!
//! # Hypercalls
//!
//! `out` of `eax` = the hypercall number (`__HYPERVISOR_*`) to port
//! [`HYPERCALL_PORT`] (an `out imm8, eax`), with the arguments in `rdi`,
//! `rsi`, `rdx`, `r10`, `r8` as Xen's 64-bit ABI; the result comes back in
//! `rax`. Pointers are guest-physical addresses (the kernel is
//! identity-mapped). Works at CPL3 when the TSS I/O bitmap grants the port.
//! Implemented: `sched_op` (`yield`, `block`, `poll`, `shutdown`),
//! `event_channel_op` (`alloc_unbound`, `bind_interdomain`, `close`, `send`,
//! `unmask`, `status`), `grant_table_op` (`setup_table`, `query_size`),
//! `console_io` (`write`: appended to the domain's console log),
//! `memory_op` (`decrease_reservation`, `populate_physmap`,
//! `current_reservation`, `maximum_reservation`: the balloon), and
//! [`HYPERVISOR_vmm_op`] (this VMM's own operations).
//!
//! # Event channels
//!
//! Sending on port P: `out` of `eax` = P to [`DOORBELL_PORT`]. The VMM
//! registers an ioeventfd per bound port (datamatch P), so a send signals the
//! channel's eventfd in the host kernel without an exit to userspace; a port
//! the VMM has no ioeventfd for exits and is sent by the VMM. Incoming events
//! set Xen's 2-level pending bits in `shared_info` (the VMM's event thread),
//! so a guest polls them at CPL3 and sleeps with `SCHEDOP_poll`.
//!
//! # Debug console
//!
//! Bytes written to [`DEBUG_PORT`] (Bochs' `0xe9`) are appended to the
//! domain's console log (for panics before the console works).
#![allow(non_upper_case_globals)] // Xen-style names (`__HYPERVISOR_*`, `EVTCHNOP_*`)

/// Port of the hypercall gate (an `out imm8` port).
pub const HYPERCALL_PORT: u16 = 0xe4;
/// Port of the event-channel doorbell (`out dx, eax` with the port number).
pub const DOORBELL_PORT: u16 = 0x5000;
/// The debug console port (one byte per `out`).
pub const DEBUG_PORT: u16 = 0xe9;
/// Base port of the emulated PIO disk (see [`fvdisk`]).
pub const FVDISK_PORT: u16 = 0x1f0;

/// `rdi` at entry.
pub const BOOT_MAGIC: u64 = 0x5856_4d4d_5056_484d; // "XVMMPVHM"
/// Identity-mapped bytes at entry.
pub const IDENTITY_MAP_BYTES: u64 = 4 << 30;
/// Guest-physical address of the boot PML4 (then the PDPT and 4 PDs); the
/// kernel must not use pages below [`BOOT_RESERVED_END`] for anything else
/// until it has its own tables.
pub const BOOT_PML4: u64 = 0x1000;
/// Guest-physical address of the boot GDT.
pub const BOOT_GDT: u64 = 0x8000;
/// End of the VMM's boot data (the kernel loads above it).
pub const BOOT_RESERVED_END: u64 = 0x10000;
/// Boot code selector.
pub const BOOT_CS: u16 = 0x08;
/// Boot data selector.
pub const BOOT_DS: u16 = 0x10;

/// Hypercall number of this VMM's own operations (`__HYPERVISOR_arch_0`).
pub const HYPERVISOR_vmm_op: u32 = 48;
/// `vmm_op`: the guest reports a fatal fault: `rsi` = vector, `rdx` = error
/// code, `r10` = faulting `rip`, `r8` = `cr2`. The VMM logs it and reports
/// the domain crashed (`SHUTDOWN_crash`).
pub const VMMOP_fault: u64 = 0;
/// `vmm_op`: clock synchronisation: `rsi` = the guest's TSC now. The VMM
/// writes `vcpu_info[0].time` (system time 0 at that TSC) and returns the
/// TSC frequency in kHz.
pub const VMMOP_clock_sync: u64 = 1;
/// `vmm_op`: brings up secondary vCPU `rsi` (1 ..< vcpus, once): it starts
/// in the boot state (64-bit, CPL0, boot GDT and page tables) at `rip` =
/// `rdx` with `rsp` = `r10` and `rdi` = `r8`, in its own VMM thread.
/// Returns 0, or `-EINVAL` (no such vCPU) / `-EBUSY` (already up).
pub const VMMOP_vcpu_up: u64 = 2;
/// `vmm_op`: the calling secondary vCPU stops (its thread parks); on vCPU 0
/// it is `-EINVAL`.
pub const VMMOP_vcpu_down: u64 = 3;

/// The emulated PIO disk: every sector moved by trapped port accesses, as
/// IDE PIO does (the full-virtualization reference of the benchmarks).
pub mod fvdisk {
    /// `out` (32-bit): the sector number to transfer next (low 32 bits).
    pub const SECTOR_LO: u16 = 0;
    /// `out` (32-bit): the sector number, high 32 bits.
    pub const SECTOR_HI: u16 = 4;
    /// `out` (8-bit): command ([`CMD_READ`], [`CMD_WRITE`], [`CMD_FLUSH`]).
    pub const COMMAND: u16 = 8;
    /// `in` (32-bit): status ([`STATUS_OK`], [`STATUS_ERROR`]); after a
    /// read command, the sector's 512 bytes come from `DATA`, after a write
    /// command they go to it.
    pub const STATUS: u16 = 12;
    /// `in`/`out` (32-bit): the data window, 128 accesses per sector.
    pub const DATA: u16 = 16;
    /// `in` (32-bit): disk size in sectors, low 32 bits.
    pub const SIZE_LO: u16 = 20;
    /// `in` (32-bit): disk size in sectors, high 32 bits.
    pub const SIZE_HI: u16 = 24;
    /// Ports used from the base.
    pub const SPAN: u16 = 28;
    /// Read the sector into the data window.
    pub const CMD_READ: u8 = 1;
    /// Write the data window to the sector (after 128 `DATA` writes).
    pub const CMD_WRITE: u8 = 2;
    /// Flush the image.
    pub const CMD_FLUSH: u8 = 3;
    /// The last command succeeded.
    pub const STATUS_OK: u32 = 0;
    /// The last command failed.
    pub const STATUS_ERROR: u32 = 1;
}
