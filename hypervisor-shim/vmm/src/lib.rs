//! `xen-vmm`: the PVHVM VMM. It runs one domain of the hypervisor shim as a
//! KVM virtual machine whose RAM is the domain's memory file (so Dom0
//! backends map the guest's granted pages zero-copy, exactly as for a PV
//! process guest).
//!
//! ```text
//!   xl create (type = "pvh")  ──spawns──►  xen-vmm --kernel K   (env: domid, token)
//!     Hypervisor::attach  → memory file mapped once → KVM memslot 0 at gpa 0
//!     ELF PT_LOAD → RAM; identity page tables, boot GDT, long mode (boot.rs)
//!     CPUID 0x4000_0000 = "XenVMMXenVMM"
//!     vCPU thread:  KVM_RUN ─ out 0xe4 (hypercall gate) → sched/evtchn/gnttab/console ops
//!                           ─ memory_op: the balloon's XENMEM_decrease_reservation /
//!                             populate_physmap punch or allocate pages of the
//!                             memory file ([`balloon`])
//!                           ─ triple fault / emulation failure / unbacked access → crash
//!     doorbells:    out 0x5000 ← port  = KVM_IOEVENTFD (datamatch port) on the
//!                   channel's eventfd: a send never exits to userspace
//!     event thread: incoming eventfds → Xen 2-level pending bits in shared_info
//!                   (the guest polls them at CPL3; SCHEDOP_poll blocks here)
//!     watchdog thread: SCHEDOP_watchdog timers; on expiry the domain is shut
//!                   down (SHUTDOWN_watchdog) and the vCPU threads are
//!                   signalled out of KVM_RUN (a guest spinning at CPL3 never exits)
//!     main thread:  waits for the thread that ends the run to hand it the
//!                   outcome; only `main` exits the process
//! ```
//!
//! Once the VM is built, the VMM jails itself ([`jail`]: its domain's
//! directory as root, the domain's uid, no capabilities, seccomp) when the
//! toolstack asks.
//!
//! The guest ABI (entry state, gate registers, ports) is documented in
//! `xen_abi::pvhvm`. The end of the run (`SCHEDOP_shutdown`, or a crash) is
//! reported to the shim with `SCHEDOP_shutdown`, so `xl list` shows the
//! domain shut down or crashed; a guest can never crash the VMM's host: every
//! guest value is bounds-checked and every bad exit ends only this domain.

pub mod balloon;
pub mod boot;
pub mod control;
pub mod elf;
mod error;
pub mod events;
pub mod fvdisk;
pub mod gmem;
pub mod jail;
pub mod migrate;
pub mod snapshot;
pub mod vm;
pub mod watchdog;

pub use error::VmmError;
pub use vm::{run, Outcome, Vmm, VmmConfig};
