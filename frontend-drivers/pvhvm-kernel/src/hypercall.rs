//! The hypercall gate of `xen-vmm` (`xen_abi::pvhvm`): `out 0xe4, eax` with
//! Xen's 64-bit argument registers, and the ioeventfd doorbell.

use core::arch::asm;

use xen_abi::pvhvm::{HYPERVISOR_vmm_op, VMMOP_clock_sync, VMMOP_fault, DOORBELL_PORT};
use xen_abi::xen::{
    __HYPERVISOR_console_io, __HYPERVISOR_event_channel_op, __HYPERVISOR_grant_table_op,
    __HYPERVISOR_memory_op, __HYPERVISOR_sched_op, sched_poll, sched_shutdown, sched_watchdog,
    xen_guest_handle, CONSOLEIO_write, SCHEDOP_poll, SCHEDOP_shutdown, SCHEDOP_watchdog,
};

/// A raw hypercall.
///
/// # Safety
/// Pointer arguments must be guest-physical addresses (= this kernel's
/// addresses: it is identity-mapped) of memory valid for what the operation
/// reads and writes.
#[inline]
pub unsafe fn hypercall(nr: u32, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: the caller's contract covers the memory the VMM touches; the
    // gate clobbers nothing but rax.
    unsafe {
        asm!(
            "out 0xe4, eax",
            inout("rax") u64::from(nr) => ret,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            in("r10") a4,
            in("r8") a5,
            options(nostack),
        );
    }
    ret
}

/// `HYPERVISOR_event_channel_op(cmd, op)` on a struct of this kernel.
pub fn evtchn_op<T>(cmd: u32, op: &mut T) -> i64 {
    // SAFETY: `op` is a live, identity-mapped struct of the size the VMM
    // reads for `cmd`.
    unsafe {
        hypercall(
            __HYPERVISOR_event_channel_op,
            u64::from(cmd),
            op as *mut T as u64,
            0,
            0,
            0,
        )
    }
}

/// `HYPERVISOR_grant_table_op(cmd, op, 1)`.
pub fn gnttab_op<T>(cmd: u32, op: &mut T) -> i64 {
    // SAFETY: as for `evtchn_op`; the op's own guest handles are set by the
    // caller to live buffers.
    unsafe {
        hypercall(
            __HYPERVISOR_grant_table_op,
            u64::from(cmd),
            op as *mut T as u64,
            1,
            0,
            0,
        )
    }
}

/// `HYPERVISOR_memory_op(cmd, op)` on a struct of this kernel (the
/// balloon's `XENMEM_*`).
pub fn memory_op<T>(cmd: u32, op: &mut T) -> i64 {
    // SAFETY: `op` is a live, identity-mapped struct of the size the VMM
    // reads for `cmd`; its guest handles are set by the caller to live
    // buffers.
    unsafe {
        hypercall(
            __HYPERVISOR_memory_op,
            u64::from(cmd),
            op as *mut T as u64,
            0,
            0,
            0,
        )
    }
}

/// `SCHEDOP_poll` on `ports` until `timeout_ns` of system time (0: none).
pub fn sched_poll(ports: &[u32], timeout_ns: u64) -> i64 {
    let mut op = sched_poll {
        ports: xen_guest_handle {
            p: ports.as_ptr() as u64,
        },
        nr_ports: ports.len() as u32,
        _pad0: 0,
        timeout: timeout_ns,
    };
    // SAFETY: `op` and `ports` are live, identity-mapped.
    unsafe {
        hypercall(
            __HYPERVISOR_sched_op,
            u64::from(SCHEDOP_poll),
            &mut op as *mut sched_poll as u64,
            0,
            0,
            0,
        )
    }
}

/// `SCHEDOP_watchdog`: `id` 0 arms a new watchdog of `timeout` seconds and
/// returns its id; `id` N re-arms it (`timeout` > 0) or destroys it (0).
pub fn watchdog(id: u32, timeout: u32) -> i64 {
    let mut op = sched_watchdog { id, timeout };
    // SAFETY: `op` is live and identity-mapped.
    unsafe {
        hypercall(
            __HYPERVISOR_sched_op,
            u64::from(SCHEDOP_watchdog),
            &mut op as *mut sched_watchdog as u64,
            0,
            0,
            0,
        )
    }
}

/// `SCHEDOP_shutdown(reason)`: does not return.
pub fn shutdown(reason: u32) -> ! {
    let mut op = sched_shutdown { reason };
    loop {
        // SAFETY: `op` is live and identity-mapped.
        unsafe {
            hypercall(
                __HYPERVISOR_sched_op,
                u64::from(SCHEDOP_shutdown),
                &mut op as *mut sched_shutdown as u64,
                0,
                0,
                0,
            );
        }
    }
}

/// `SCHEDOP_shutdown(SHUTDOWN_suspend)` (Linux's `HYPERVISOR_suspend`;
/// an HVM guest passes no start_info frame): returns 1 when the suspend
/// was cancelled (same domain), 0 in a new domain, negative if refused.
pub fn suspend() -> i64 {
    let mut op = sched_shutdown {
        reason: xen_abi::xen::SHUTDOWN_suspend,
    };
    // SAFETY: `op` is live and identity-mapped.
    unsafe {
        hypercall(
            __HYPERVISOR_sched_op,
            u64::from(SCHEDOP_shutdown),
            &mut op as *mut sched_shutdown as u64,
            0,
            0,
            0,
        )
    }
}

/// `CONSOLEIO_write`: the bytes go to the domain's console log.
pub fn console_write(b: &[u8]) {
    // SAFETY: `b` is live and identity-mapped; the VMM only reads it.
    unsafe {
        hypercall(
            __HYPERVISOR_console_io,
            u64::from(CONSOLEIO_write),
            b.len() as u64,
            b.as_ptr() as u64,
            0,
            0,
        );
    }
}

/// `vmm_op(clock_sync, tsc)`: returns the TSC frequency in kHz.
pub fn clock_sync(tsc: u64) -> i64 {
    // SAFETY: no memory arguments.
    unsafe { hypercall(HYPERVISOR_vmm_op, VMMOP_clock_sync, tsc, 0, 0, 0) }
}

/// `vmm_op(fault, ...)`: reports a fatal exception; does not return.
pub fn vmm_fault(vector: u64, error: u64, rip: u64, cr2: u64) -> ! {
    loop {
        // SAFETY: no memory arguments.
        unsafe { hypercall(HYPERVISOR_vmm_op, VMMOP_fault, vector, error, rip, cr2) };
    }
}

/// Rings the doorbell of event channel `port` (an ioeventfd: no exit).
#[inline]
pub fn doorbell(port: u32) {
    // SAFETY: port I/O to the doorbell port, granted by the TSS bitmap; the
    // asm is a compiler memory barrier so ring writes precede it.
    unsafe {
        asm!("out dx, eax", in("dx") DOORBELL_PORT, in("eax") port, options(nostack, preserves_flags));
    }
}

/// Port input (for the emulated disk).
#[inline]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: port I/O granted by the TSS bitmap.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") v, options(nostack, preserves_flags)) };
    v
}

/// Port output (for the emulated disk).
#[inline]
pub fn outl(port: u16, v: u32) {
    // SAFETY: port I/O granted by the TSS bitmap.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nostack, preserves_flags)) };
}

/// Byte port output (for the emulated disk).
#[inline]
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O granted by the TSS bitmap.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nostack, preserves_flags)) };
}
