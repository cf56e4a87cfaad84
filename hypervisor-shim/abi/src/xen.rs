//! Mirrors `xen/xen.h`, `xen/arch-x86/xen.h` and `xen/arch-x86/xen-x86_64.h`
//! (included by `xen/arch-x86_64.h`), plus the scheduler operations of
//! `xen/sched.h`: basic types, domain ids, VIRQs, hypercall numbers, the
//! shared-info page (`shared_info`, `vcpu_info`, `vcpu_time_info`) and
//! `start_info`.
//!
//! `xen_ulong_t`, `xen_pfn_t` and C `unsigned long` are 64-bit (x86_64).
#![allow(non_camel_case_types, non_upper_case_globals)]

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::union::xen_union;

pub use crate::event_channel::{evtchn_port_t, BITS_PER_EVTCHN_WORD, EVTCHN_2L_NR_CHANNELS};
pub use crate::grant_table::grant_ref_t;

/// `__XEN_LATEST_INTERFACE_VERSION__` of the Xen 4.17 headers
/// (`xen-compat.h`); this crate mirrors that interface version.
pub const __XEN_LATEST_INTERFACE_VERSION__: u32 = 0x0004_0e00;

/// Domain id (`domid_t`).
pub type domid_t = u16;
/// Machine word as seen by the hypervisor (`xen_ulong_t`, x86_64).
pub type xen_ulong_t = u64;
/// Page frame number (`xen_pfn_t`, x86_64 `unsigned long`).
pub type xen_pfn_t = u64;

/// A guest handle (`XEN_GUEST_HANDLE(type)`): on x86 a struct holding one
/// guest-virtual pointer, `struct { type *p; }`, 8 bytes on x86_64.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct xen_guest_handle {
    /// Guest-virtual address of the pointed-to object.
    pub p: u64,
}

// ---------------------------------------------------------------------------
// Domain ids.

/// Domain ids at or above this value are not ordinary domains.
pub const DOMID_FIRST_RESERVED: domid_t = 0x7FF0;
/// Refers to the calling domain.
pub const DOMID_SELF: domid_t = 0x7FF0;
/// Pseudo-domain owning I/O memory.
pub const DOMID_IO: domid_t = 0x7FF1;
/// Pseudo-domain owning Xen's own pages.
pub const DOMID_XEN: domid_t = 0x7FF2;
/// Pseudo-domain owning copy-on-write shared pages.
pub const DOMID_COW: domid_t = 0x7FF3;
/// Owner of pages whose owner is unknown.
pub const DOMID_INVALID: domid_t = 0x7FF4;
/// The idle domain.
pub const DOMID_IDLE: domid_t = 0x7FFF;
/// Mask of valid domain id bits.
pub const DOMID_MASK: domid_t = 0x7FFF;

// ---------------------------------------------------------------------------
// Virtual IRQs (`enum virq`): V = per-vCPU, G = global.

/// V: timebase update and/or requested timeout.
pub const VIRQ_TIMER: u32 = 0;
/// V: request to dump debug info.
pub const VIRQ_DEBUG: u32 = 1;
/// G (Dom0): bytes received on the emergency console.
pub const VIRQ_CONSOLE: u32 = 2;
/// G (Dom0): exceptional event for some domain.
pub const VIRQ_DOM_EXC: u32 = 3;
/// G (Dom0): trace buffer has records available.
pub const VIRQ_TBUF: u32 = 4;
/// G (Dom0): a domain has paused for debugging.
pub const VIRQ_DEBUGGER: u32 = 6;
/// V: XenOprofile sample available.
pub const VIRQ_XENOPROF: u32 = 7;
/// G (Dom0): bytes received on the console ring.
pub const VIRQ_CON_RING: u32 = 8;
/// G (Dom0): physical CPU state changed.
pub const VIRQ_PCPU_STATE: u32 = 9;
/// G (Dom0): a memory event has occurred.
pub const VIRQ_MEM_EVENT: u32 = 10;
/// G: Argo interdomain message notification.
pub const VIRQ_ARGO: u32 = 11;
/// G (Dom0): low on heap memory.
pub const VIRQ_ENOMEM: u32 = 12;
/// V: PMC interrupt.
pub const VIRQ_XENPMU: u32 = 13;
/// Architecture-specific VIRQ 0.
pub const VIRQ_ARCH_0: u32 = 16;
/// Architecture-specific VIRQ 1.
pub const VIRQ_ARCH_1: u32 = 17;
/// Architecture-specific VIRQ 2.
pub const VIRQ_ARCH_2: u32 = 18;
/// Architecture-specific VIRQ 3.
pub const VIRQ_ARCH_3: u32 = 19;
/// Architecture-specific VIRQ 4.
pub const VIRQ_ARCH_4: u32 = 20;
/// Architecture-specific VIRQ 5.
pub const VIRQ_ARCH_5: u32 = 21;
/// Architecture-specific VIRQ 6.
pub const VIRQ_ARCH_6: u32 = 22;
/// Architecture-specific VIRQ 7.
pub const VIRQ_ARCH_7: u32 = 23;
/// Number of VIRQs.
pub const NR_VIRQS: u32 = 24;

// ---------------------------------------------------------------------------
// Hypercall numbers. These are the current numbers: for interface versions
// below 0x00030101 (sched_op) and 0x00030202 (event_channel_op, physdev_op)
// the header aliases those names to the `_compat` hypercalls.

/// `HYPERVISOR_set_trap_table`.
pub const __HYPERVISOR_set_trap_table: u32 = 0;
/// `HYPERVISOR_mmu_update`.
pub const __HYPERVISOR_mmu_update: u32 = 1;
/// `HYPERVISOR_set_gdt`.
pub const __HYPERVISOR_set_gdt: u32 = 2;
/// `HYPERVISOR_stack_switch`.
pub const __HYPERVISOR_stack_switch: u32 = 3;
/// `HYPERVISOR_set_callbacks`.
pub const __HYPERVISOR_set_callbacks: u32 = 4;
/// `HYPERVISOR_fpu_taskswitch`.
pub const __HYPERVISOR_fpu_taskswitch: u32 = 5;
/// Legacy `sched_op` (compat since 0x00030101).
pub const __HYPERVISOR_sched_op_compat: u32 = 6;
/// `HYPERVISOR_platform_op`.
pub const __HYPERVISOR_platform_op: u32 = 7;
/// `HYPERVISOR_set_debugreg`.
pub const __HYPERVISOR_set_debugreg: u32 = 8;
/// `HYPERVISOR_get_debugreg`.
pub const __HYPERVISOR_get_debugreg: u32 = 9;
/// `HYPERVISOR_update_descriptor`.
pub const __HYPERVISOR_update_descriptor: u32 = 10;
/// `HYPERVISOR_memory_op`.
pub const __HYPERVISOR_memory_op: u32 = 12;
/// `HYPERVISOR_multicall`.
pub const __HYPERVISOR_multicall: u32 = 13;
/// `HYPERVISOR_update_va_mapping`.
pub const __HYPERVISOR_update_va_mapping: u32 = 14;
/// `HYPERVISOR_set_timer_op`.
pub const __HYPERVISOR_set_timer_op: u32 = 15;
/// Legacy `event_channel_op` (compat since 0x00030202).
pub const __HYPERVISOR_event_channel_op_compat: u32 = 16;
/// `HYPERVISOR_xen_version`.
pub const __HYPERVISOR_xen_version: u32 = 17;
/// `HYPERVISOR_console_io`.
pub const __HYPERVISOR_console_io: u32 = 18;
/// Legacy `physdev_op` (compat since 0x00030202).
pub const __HYPERVISOR_physdev_op_compat: u32 = 19;
/// `HYPERVISOR_grant_table_op` (`GNTTABOP_*`).
pub const __HYPERVISOR_grant_table_op: u32 = 20;
/// `HYPERVISOR_vm_assist`.
pub const __HYPERVISOR_vm_assist: u32 = 21;
/// `HYPERVISOR_update_va_mapping_otherdomain`.
pub const __HYPERVISOR_update_va_mapping_otherdomain: u32 = 22;
/// `HYPERVISOR_iret` (x86 only).
pub const __HYPERVISOR_iret: u32 = 23;
/// `HYPERVISOR_vcpu_op`.
pub const __HYPERVISOR_vcpu_op: u32 = 24;
/// `HYPERVISOR_set_segment_base` (x86_64 only).
pub const __HYPERVISOR_set_segment_base: u32 = 25;
/// `HYPERVISOR_mmuext_op`.
pub const __HYPERVISOR_mmuext_op: u32 = 26;
/// `HYPERVISOR_xsm_op`.
pub const __HYPERVISOR_xsm_op: u32 = 27;
/// `HYPERVISOR_nmi_op`.
pub const __HYPERVISOR_nmi_op: u32 = 28;
/// `HYPERVISOR_sched_op` (`SCHEDOP_*`).
pub const __HYPERVISOR_sched_op: u32 = 29;
/// `HYPERVISOR_callback_op`.
pub const __HYPERVISOR_callback_op: u32 = 30;
/// `HYPERVISOR_xenoprof_op`.
pub const __HYPERVISOR_xenoprof_op: u32 = 31;
/// `HYPERVISOR_event_channel_op` (`EVTCHNOP_*`).
pub const __HYPERVISOR_event_channel_op: u32 = 32;
/// `HYPERVISOR_physdev_op`.
pub const __HYPERVISOR_physdev_op: u32 = 33;
/// `HYPERVISOR_hvm_op`.
pub const __HYPERVISOR_hvm_op: u32 = 34;
/// `HYPERVISOR_sysctl`.
pub const __HYPERVISOR_sysctl: u32 = 35;
/// `HYPERVISOR_domctl`.
pub const __HYPERVISOR_domctl: u32 = 36;
/// `HYPERVISOR_kexec_op`.
pub const __HYPERVISOR_kexec_op: u32 = 37;
/// `HYPERVISOR_tmem_op`.
pub const __HYPERVISOR_tmem_op: u32 = 38;
/// `HYPERVISOR_argo_op`.
pub const __HYPERVISOR_argo_op: u32 = 39;
/// `HYPERVISOR_xenpmu_op`.
pub const __HYPERVISOR_xenpmu_op: u32 = 40;
/// `HYPERVISOR_dm_op`.
pub const __HYPERVISOR_dm_op: u32 = 41;
/// `HYPERVISOR_hypfs_op`.
pub const __HYPERVISOR_hypfs_op: u32 = 42;
/// Architecture-specific hypercall 0.
pub const __HYPERVISOR_arch_0: u32 = 48;
/// Architecture-specific hypercall 1.
pub const __HYPERVISOR_arch_1: u32 = 49;
/// Architecture-specific hypercall 2.
pub const __HYPERVISOR_arch_2: u32 = 50;
/// Architecture-specific hypercall 3.
pub const __HYPERVISOR_arch_3: u32 = 51;
/// Architecture-specific hypercall 4.
pub const __HYPERVISOR_arch_4: u32 = 52;
/// Architecture-specific hypercall 5.
pub const __HYPERVISOR_arch_5: u32 = 53;
/// Architecture-specific hypercall 6.
pub const __HYPERVISOR_arch_6: u32 = 54;
/// Architecture-specific hypercall 7.
pub const __HYPERVISOR_arch_7: u32 = 55;

/// `HYPERVISOR_console_io` command: write to the console.
pub const CONSOLEIO_write: u32 = 0;
/// `HYPERVISOR_console_io` command: read from the console.
pub const CONSOLEIO_read: u32 = 1;

// ---------------------------------------------------------------------------
// Shared info page.

/// Maximum number of vCPUs with a `vcpu_info` in the shared-info page.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;

/// `vcpu_time_info.flags`: the TSC is stable across vCPUs.
pub const XEN_PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// `vcpu_time_info.flags`: the guest was stopped.
pub const XEN_PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// Per-vCPU system time (32 bytes). Updates are bracketed by increments of
/// `version` (odd = update in progress), like a seqlock.
///
/// Field names are those of interface versions > 0x040600; the legacy
/// interface has `int8_t pad1[3]` in place of `flags` + `pad1[2]`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct vcpu_time_info {
    /// Update counter (odd while an update is in progress).
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// TSC at the last update of the time values.
    pub tsc_timestamp: u64,
    /// Time, in nanoseconds, since boot.
    pub system_time: u64,
    /// Multiplier converting (shifted) TSC deltas to nanoseconds (32.32).
    pub tsc_to_system_mul: u32,
    /// Shift applied to TSC deltas before the multiplication.
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: u8,
    /// Padding.
    pub pad1: [u8; 2],
}

/// x86_64 architecture part of `vcpu_info` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct arch_vcpu_info {
    /// Faulting address of the last page fault (PV guests).
    pub cr2: u64,
    /// Padding so that `sizeof(vcpu_info_t) == 64`.
    pub pad: u64,
}

/// Per-vCPU event and time state in the shared-info page (64 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct vcpu_info {
    /// Written non-zero by Xen when an upcall is pending for this vCPU.
    pub evtchn_upcall_pending: u8,
    /// Non-zero masks event upcalls to this vCPU.
    pub evtchn_upcall_mask: u8,
    /// Implicit C padding (not a field of the header).
    pub _pad0: [u8; 6],
    /// Selector: bit N set means word N of `evtchn_pending` may have work.
    pub evtchn_pending_sel: xen_ulong_t,
    /// Architecture-specific state.
    pub arch: arch_vcpu_info,
    /// System time.
    pub time: vcpu_time_info,
}

/// x86_64 architecture part of `shared_info` (48 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct arch_shared_info {
    /// Number of valid entries in the p2m table(s).
    pub max_pfn: u64,
    /// Frame of the list of frames of the list of p2m frames.
    pub pfn_to_mfn_frame_list_list: xen_pfn_t,
    /// NMI reason bits.
    pub nmi_reason: u64,
    /// cr3 of the address space where `p2m_vaddr` is valid (0 = unused).
    pub p2m_cr3: u64,
    /// Virtual address of the linear p2m list.
    pub p2m_vaddr: u64,
    /// Generation count of the p2m mapping (odd while updating).
    pub p2m_generation: u64,
}

/// The shared-info page (3136 bytes): per-vCPU info, the 2-level event
/// channel pending and mask bitmaps, and the wallclock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct shared_info {
    /// Per-vCPU state for the first `XEN_LEGACY_MAX_VCPUS` vCPUs.
    pub vcpu_info: [vcpu_info; XEN_LEGACY_MAX_VCPUS],
    /// 2-level event channel PENDING bits, one per port.
    pub evtchn_pending: [xen_ulong_t; BITS_PER_EVTCHN_WORD],
    /// 2-level event channel MASK bits, one per port.
    pub evtchn_mask: [xen_ulong_t; BITS_PER_EVTCHN_WORD],
    /// Wallclock version counter (see `vcpu_time_info::version`).
    pub wc_version: u32,
    /// Wallclock seconds since the Unix epoch (low 32 bits).
    pub wc_sec: u32,
    /// Wallclock nanoseconds.
    pub wc_nsec: u32,
    /// Wallclock seconds, high 32 bits.
    pub wc_sec_hi: u32,
    /// Architecture-specific state.
    pub arch: arch_shared_info,
}

impl Default for shared_info {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

// ---------------------------------------------------------------------------
// start_info (PV guest boot information).

/// `start_info.flags`: the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `start_info.flags`: this is the initial control domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `start_info.flags`: `mod_start` is a multiboot module list.
pub const SIF_MULTIBOOT_MOD: u32 = 1 << 2;
/// `start_info.flags`: `mod_start` is a PFN.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// `start_info.flags`: tools understand a virtually mapped p2m list.
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;
/// `start_info.flags`: byte reserved for xen-pm options.
pub const SIF_PM_MASK: u32 = 0xFF << 8;
/// Size of `start_info.cmd_line`.
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// `start_info.console.domU`: the console ring of an unprivileged domain.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct start_info_console_domU {
    /// Machine frame of the console page.
    pub mfn: xen_pfn_t,
    /// Event channel of the console page.
    pub evtchn: u32,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u32,
}

/// `start_info.console.dom0`: where Dom0's `console_info` lives.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct start_info_console_dom0 {
    /// Offset of the `console_info` struct.
    pub info_off: u32,
    /// Size of the `console_info` struct from its start.
    pub info_size: u32,
}

xen_union! {
    /// `start_info.console` (16 bytes, 8-aligned).
    pub union start_info_console: [u64; 2] {
        /// Unprivileged domain console ring.
        domU: start_info_console_domU, set_domU, from_domU;
        /// Dom0 console info location.
        dom0: start_info_console_dom0, set_dom0, from_dom0;
    }
}

/// Boot information handed to a PV guest (1168 bytes on x86_64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct start_info {
    /// `"xen-<version>-<platform>"`.
    pub magic: [u8; 32],
    /// Total pages allocated to this domain.
    pub nr_pages: u64,
    /// Machine address of the shared-info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u32,
    /// Machine frame of the xenstore page.
    pub store_mfn: xen_pfn_t,
    /// Event channel for xenstore.
    pub store_evtchn: u32,
    /// Implicit C padding (not a field of the header).
    pub _pad1: u32,
    /// Console location (`domU` or `dom0` member).
    pub console: start_info_console,
    /// Virtual address of the page directory.
    pub pt_base: u64,
    /// Number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the page-frame list.
    pub mfn_list: u64,
    /// Virtual address (or PFN, with `SIF_MOD_START_PFN`) of the module.
    pub mod_start: u64,
    /// Size in bytes of the pre-loaded module.
    pub mod_len: u64,
    /// Kernel command line.
    pub cmd_line: [i8; MAX_GUEST_CMDLINE],
    /// First PFN of the initial p2m table.
    pub first_p2m_pfn: u64,
    /// Number of PFNs of the initial p2m table.
    pub nr_p2m_frames: u64,
}

impl Default for start_info {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

// ---------------------------------------------------------------------------
// sched.h: scheduler operations.

/// `SCHEDOP_yield`: give up the CPU voluntarily.
pub const SCHEDOP_yield: u32 = 0;
/// `SCHEDOP_block`: block until an event arrives.
pub const SCHEDOP_block: u32 = 1;
/// `SCHEDOP_shutdown` (`sched_shutdown`): halt the domain.
pub const SCHEDOP_shutdown: u32 = 2;
/// `SCHEDOP_poll` (`sched_poll`): poll a set of event channel ports.
pub const SCHEDOP_poll: u32 = 3;
/// `SCHEDOP_remote_shutdown` (`sched_remote_shutdown`).
pub const SCHEDOP_remote_shutdown: u32 = 4;
/// `SCHEDOP_shutdown_code`: latch a shutdown code.
pub const SCHEDOP_shutdown_code: u32 = 5;
/// `SCHEDOP_watchdog` (`sched_watchdog`).
pub const SCHEDOP_watchdog: u32 = 6;
/// `SCHEDOP_pin_override` (`sched_pin_override`).
pub const SCHEDOP_pin_override: u32 = 7;

/// Shutdown reason: the domain exited normally.
pub const SHUTDOWN_poweroff: u32 = 0;
/// Shutdown reason: clean up, kill, and restart.
pub const SHUTDOWN_reboot: u32 = 1;
/// Shutdown reason: clean up, save suspend info, kill.
pub const SHUTDOWN_suspend: u32 = 2;
/// Shutdown reason: the domain crashed.
pub const SHUTDOWN_crash: u32 = 3;
/// Shutdown reason: the watchdog expired.
pub const SHUTDOWN_watchdog: u32 = 4;
/// Shutdown reason: soft reset (keep memory, reset state).
pub const SHUTDOWN_soft_reset: u32 = 5;
/// Largest valid shutdown reason.
pub const SHUTDOWN_MAX: u32 = 5;

/// Argument of `SCHEDOP_shutdown`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct sched_shutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

/// Argument of `SCHEDOP_poll`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct sched_poll {
    /// Guest handle to an array of `evtchn_port_t`.
    pub ports: xen_guest_handle,
    /// Number of ports in the array.
    pub nr_ports: u32,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u32,
    /// Absolute system-time timeout in ns (0 = none).
    pub timeout: u64,
}

/// Argument of `SCHEDOP_remote_shutdown`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct sched_remote_shutdown {
    /// Remote domain id.
    pub domain_id: domid_t,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

/// Argument of `SCHEDOP_watchdog`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct sched_watchdog {
    /// Watchdog id (0 = allocate a new one).
    pub id: u32,
    /// Timeout in seconds (0 = destroy the watchdog).
    pub timeout: u32,
}

/// Argument of `SCHEDOP_pin_override`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct sched_pin_override {
    /// Physical CPU to pin to (negative = undo the override).
    pub pcpu: i32,
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn test_shared_info_layout_matches_header_numbers() {
        assert_eq!(size_of::<shared_info>(), 3136);
        assert_eq!(offset_of!(shared_info, evtchn_pending), 2048);
        assert_eq!(offset_of!(shared_info, evtchn_mask), 2560);
        assert_eq!(offset_of!(shared_info, wc_version), 3072);
        assert_eq!(offset_of!(shared_info, arch), 3088);
    }

    #[test]
    fn test_vcpu_info_layout_is_64_bytes() {
        assert_eq!(size_of::<vcpu_info>(), 64);
        assert_eq!(offset_of!(vcpu_info, evtchn_pending_sel), 8);
        assert_eq!(offset_of!(vcpu_info, arch), 16);
        assert_eq!(offset_of!(vcpu_info, time), 32);
        assert_eq!(size_of::<vcpu_time_info>(), 32);
        assert_eq!(size_of::<arch_shared_info>(), 48);
    }

    #[test]
    fn test_start_info_console_union_domu_roundtrips() {
        // Arrange
        let domu = start_info_console_domU {
            mfn: 0x1234_5678_9abc,
            evtchn: 7,
            _pad0: 0,
        };

        // Act
        let console = start_info_console::from_domU(domu);

        // Assert
        assert_eq!(console.domU(), domu);
        assert_eq!(console.dom0().info_off, 0x5678_9abc);
        assert_eq!(size_of::<start_info_console>(), 16);
        assert_eq!(offset_of!(start_info, console), 72);
    }

    #[test]
    fn test_shared_info_default_is_zeroed() {
        let info = shared_info::default();
        assert!(info.as_bytes().iter().all(|&b| b == 0));
    }
}
