//! The on-disk structures of a Xen 4.17 save file, mirrored from the C sources: the xl
//! header (`tools/xl/xl_saverestore.c`), the libxl and libxc stream headers and record
//! types (`docs/specs/libxl-migration-stream.pandoc`, `libxc-migration-stream.pandoc`)
//! and Xen's HVM save records (`xen/arch-x86/hvm/save.h`, `xen/hvm/save.h`).
//!
//! Everything is little-endian except the libxl and libxc image headers, which the
//! specification writes in network order. The layouts are checked against the C
//! headers' `sizeof`/`offsetof` in the tests below.
#![allow(non_camel_case_types)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[cfg(target_endian = "big")]
compile_error!("xen-stream writes Xen's little-endian streams from native structures");

/// The 32-byte magic that opens an xl save file.
pub const XL_MAGIC: &[u8; 32] = b"Xen saved domain, xl format\n \0 \r";
/// `SAVEFILE_BYTEORDER_VALUE`: written in the saving host's byte order.
pub const XL_BYTEORDER: u32 = 0x0102_0304;
/// `XL_MANDATORY_FLAG_JSON`: the config is libxl's JSON rather than xl.cfg text.
pub const XL_MANDATORY_FLAG_JSON: u32 = 1 << 0;
/// `XL_MANDATORY_FLAG_STREAMv2`: the body is a libxl stream v2.
pub const XL_MANDATORY_FLAG_STREAMV2: u32 = 1 << 1;

/// libxl stream header identity, "LibxlFmt".
pub const LIBXL_IDENT: u64 = 0x4c69_6278_6c46_6d74;
/// The libxl stream version Xen 4.17 writes and reads.
pub const LIBXL_VERSION: u32 = 2;

/// libxl record types.
pub mod libxl_rec {
    /// END.
    pub const END: u32 = 0;
    /// LIBXC_CONTEXT: a libxc stream follows.
    pub const LIBXC_CONTEXT: u32 = 1;
    /// EMULATOR_XENSTORE_DATA.
    pub const EMULATOR_XENSTORE_DATA: u32 = 2;
    /// EMULATOR_CONTEXT.
    pub const EMULATOR_CONTEXT: u32 = 3;
    /// CHECKPOINT_END (Remus/COLO).
    pub const CHECKPOINT_END: u32 = 4;
    /// CHECKPOINT_STATE (COLO).
    pub const CHECKPOINT_STATE: u32 = 5;
}

/// libxc image header marker (all ones).
pub const IHDR_MARKER: u64 = u64::MAX;
/// libxc image header identity, "XENF".
pub const IHDR_IDENT: u32 = 0x5845_4e46;
/// The libxc stream version Xen 4.17 writes (3: static data records).
pub const IHDR_VERSION: u32 = 3;
/// Domain header guest type: x86 PV.
pub const DHDR_TYPE_X86_PV: u32 = 1;
/// Domain header guest type: x86 HVM.
pub const DHDR_TYPE_X86_HVM: u32 = 2;
/// Page shift of every stream Xen writes on x86.
pub const PAGE_SHIFT: u16 = 12;
/// Bytes in a guest page.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

/// libxc record types (`REC_TYPE_*`).
pub mod libxc_rec {
    /// END.
    pub const END: u32 = 0x00;
    /// PAGE_DATA.
    pub const PAGE_DATA: u32 = 0x01;
    /// X86_PV_INFO.
    pub const X86_PV_INFO: u32 = 0x02;
    /// X86_PV_P2M_FRAMES.
    pub const X86_PV_P2M_FRAMES: u32 = 0x03;
    /// X86_PV_VCPU_BASIC.
    pub const X86_PV_VCPU_BASIC: u32 = 0x04;
    /// X86_PV_VCPU_EXTENDED.
    pub const X86_PV_VCPU_EXTENDED: u32 = 0x05;
    /// X86_PV_VCPU_XSAVE.
    pub const X86_PV_VCPU_XSAVE: u32 = 0x06;
    /// SHARED_INFO.
    pub const SHARED_INFO: u32 = 0x07;
    /// X86_TSC_INFO (the specification's TSC_INFO).
    pub const X86_TSC_INFO: u32 = 0x08;
    /// HVM_CONTEXT.
    pub const HVM_CONTEXT: u32 = 0x09;
    /// HVM_PARAMS.
    pub const HVM_PARAMS: u32 = 0x0a;
    /// TOOLSTACK (deprecated).
    pub const TOOLSTACK: u32 = 0x0b;
    /// X86_PV_VCPU_MSRS.
    pub const X86_PV_VCPU_MSRS: u32 = 0x0c;
    /// VERIFY.
    pub const VERIFY: u32 = 0x0d;
    /// CHECKPOINT.
    pub const CHECKPOINT: u32 = 0x0e;
    /// CHECKPOINT_DIRTY_PFN_LIST.
    pub const CHECKPOINT_DIRTY_PFN_LIST: u32 = 0x0f;
    /// STATIC_DATA_END (v3).
    pub const STATIC_DATA_END: u32 = 0x10;
    /// X86_CPUID_POLICY (v3).
    pub const X86_CPUID_POLICY: u32 = 0x11;
    /// X86_MSR_POLICY (v3).
    pub const X86_MSR_POLICY: u32 = 0x12;
}

/// Bits 0..52 of a PAGE_DATA entry: the pfn.
pub const PAGE_DATA_PFN_MASK: u64 = (1 << 52) - 1;
/// Bits 52..60: reserved, zero.
pub const PAGE_DATA_RESERVED_MASK: u64 = ((1 << 60) - 1) & !PAGE_DATA_PFN_MASK;
/// Bits 60..64: the page type (`XEN_DOMCTL_PFINFO_*` >> 28).
pub const PAGE_DATA_TYPE_SHIFT: u32 = 60;
/// A normal page, with data.
pub const PAGE_TYPE_NOTAB: u64 = 0x0;
/// A broken page, no data.
pub const PAGE_TYPE_BROKEN: u64 = 0xd;
/// Allocate only, no data.
pub const PAGE_TYPE_XALLOC: u64 = 0xe;
/// Not a page (a hole), no data.
pub const PAGE_TYPE_XTAB: u64 = 0xf;
/// Xen's `MAX_BATCH_SIZE`: pages per PAGE_DATA record.
pub const MAX_BATCH_PAGES: usize = 1024;

/// `struct xc_sr_rec_x86_tsc_info`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct x86_tsc_info {
    /// TSC mode (`XEN_TSC_MODE_*`, 0 default).
    pub mode: u32,
    /// Guest TSC frequency in kHz.
    pub khz: u32,
    /// Nanoseconds elapsed (the guest's TSC offset base).
    pub nsec: u64,
    /// Incarnation (number of migrations).
    pub incarnation: u32,
    /// Reserved, zero.
    pub _res1: u32,
}

/// `struct hvm_save_descriptor` (`xen/hvm/save.h`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct hvm_save_descriptor {
    /// `HVM_SAVE_CODE(...)` of the entry that follows.
    pub typecode: u16,
    /// Instance: the vCPU for per-vCPU entries.
    pub instance: u16,
    /// Bytes of the entry, without this descriptor.
    pub length: u32,
}

/// `HVM_FILE_MAGIC`.
pub const HVM_FILE_MAGIC: u32 = 0x5438_1286;
/// `HVM_FILE_VERSION`.
pub const HVM_FILE_VERSION: u32 = 1;

/// HVM save type codes (`HVM_SAVE_CODE(...)`).
pub mod hvm_code {
    /// END.
    pub const END: u16 = 0;
    /// HEADER (`struct hvm_save_header`).
    pub const HEADER: u16 = 1;
    /// CPU (`struct hvm_hw_cpu`).
    pub const CPU: u16 = 2;
    /// LAPIC (`struct hvm_hw_lapic`).
    pub const LAPIC: u16 = 5;
    /// LAPIC_REGS (`struct hvm_hw_lapic_regs`).
    pub const LAPIC_REGS: u16 = 6;
    /// MTRR (`struct hvm_hw_mtrr`).
    pub const MTRR: u16 = 14;
    /// CPU_XSAVE (variable length).
    pub const CPU_XSAVE: u16 = 16;
    /// CPU_MSR (variable length).
    pub const CPU_MSR: u16 = 20;
    /// `HVM_SAVE_CODE_MAX`.
    pub const MAX: u16 = 20;
}

/// `struct hvm_save_header`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct hvm_save_header {
    /// `HVM_FILE_MAGIC`.
    pub magic: u32,
    /// `HVM_FILE_VERSION`.
    pub version: u32,
    /// Version of Xen that saved the file.
    pub changeset: u64,
    /// CPUID[1].EAX of the saving machine.
    pub cpuid: u32,
    /// Guest TSC frequency in kHz.
    pub gtsc_khz: u32,
}

/// `struct hvm_hw_cpu`: one vCPU's registers, as Xen saves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct hvm_hw_cpu {
    /// FXSAVE image.
    pub fpu_regs: [u8; 512],
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr0: u64,
    pub dr1: u64,
    pub dr2: u64,
    pub dr3: u64,
    pub dr6: u64,
    pub dr7: u64,
    pub cs_sel: u32,
    pub ds_sel: u32,
    pub es_sel: u32,
    pub fs_sel: u32,
    pub gs_sel: u32,
    pub ss_sel: u32,
    pub tr_sel: u32,
    pub ldtr_sel: u32,
    pub cs_limit: u32,
    pub ds_limit: u32,
    pub es_limit: u32,
    pub fs_limit: u32,
    pub gs_limit: u32,
    pub ss_limit: u32,
    pub tr_limit: u32,
    pub ldtr_limit: u32,
    pub idtr_limit: u32,
    pub gdtr_limit: u32,
    pub cs_base: u64,
    pub ds_base: u64,
    pub es_base: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ss_base: u64,
    pub tr_base: u64,
    pub ldtr_base: u64,
    pub idtr_base: u64,
    pub gdtr_base: u64,
    /// Segment attributes in VMX's packed "arbytes" form.
    pub cs_arbytes: u32,
    pub ds_arbytes: u32,
    pub es_arbytes: u32,
    pub fs_arbytes: u32,
    pub gs_arbytes: u32,
    pub ss_arbytes: u32,
    pub tr_arbytes: u32,
    pub ldtr_arbytes: u32,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    /// MSR_KERNEL_GS_BASE.
    pub shadow_gs: u64,
    /// Obsolete, ignored.
    pub msr_flags: u64,
    pub msr_lstar: u64,
    pub msr_star: u64,
    pub msr_cstar: u64,
    pub msr_syscall_mask: u64,
    pub msr_efer: u64,
    pub msr_tsc_aux: u64,
    /// The guest's TSC.
    pub tsc: u64,
    /// Pending event: vector 0..8, type 8..11, error valid 11, valid 31.
    pub pending_event: u32,
    /// Error code of the pending event.
    pub error_code: u32,
    /// `XEN_X86_FPU_INITIALISED`.
    pub flags: u32,
    pub pad0: u32,
}

/// `XEN_X86_FPU_INITIALISED` in [`hvm_hw_cpu::flags`].
pub const XEN_X86_FPU_INITIALISED: u32 = 1;

impl Default for hvm_hw_cpu {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

/// `struct hvm_hw_lapic`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct hvm_hw_lapic {
    /// IA32_APIC_BASE.
    pub apic_base_msr: u64,
    /// `VLAPIC_xx_DISABLED` bits.
    pub disabled: u32,
    /// Timer divisor.
    pub timer_divisor: u32,
    /// IA32_TSC_DEADLINE.
    pub tdt_msr: u64,
}

/// `struct hvm_hw_lapic_regs`: the APIC register page's first KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct hvm_hw_lapic_regs {
    /// Registers at 16-byte strides, as the APIC's MMIO page.
    pub data: [u8; 1024],
}

impl Default for hvm_hw_lapic_regs {
    fn default() -> Self {
        Self { data: [0; 1024] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    // The numbers come from a C program compiled against libxen-dev's
    // /usr/include/xen/arch-x86/hvm/save.h (sizeof and offsetof).
    #[test]
    fn test_hvm_hw_cpu_layout_matches_save_h() {
        assert_eq!(size_of::<hvm_hw_cpu>(), 1032);
        assert_eq!(offset_of!(hvm_hw_cpu, rax), 512);
        assert_eq!(offset_of!(hvm_hw_cpu, rip), 640);
        assert_eq!(offset_of!(hvm_hw_cpu, cr0), 656);
        assert_eq!(offset_of!(hvm_hw_cpu, dr0), 688);
        assert_eq!(offset_of!(hvm_hw_cpu, cs_sel), 736);
        assert_eq!(offset_of!(hvm_hw_cpu, cs_limit), 768);
        assert_eq!(offset_of!(hvm_hw_cpu, cs_base), 808);
        assert_eq!(offset_of!(hvm_hw_cpu, cs_arbytes), 888);
        assert_eq!(offset_of!(hvm_hw_cpu, sysenter_cs), 920);
        assert_eq!(offset_of!(hvm_hw_cpu, shadow_gs), 944);
        assert_eq!(offset_of!(hvm_hw_cpu, msr_flags), 952);
        assert_eq!(offset_of!(hvm_hw_cpu, msr_efer), 992);
        assert_eq!(offset_of!(hvm_hw_cpu, msr_tsc_aux), 1000);
        assert_eq!(offset_of!(hvm_hw_cpu, tsc), 1008);
        assert_eq!(offset_of!(hvm_hw_cpu, pending_event), 1016);
        assert_eq!(offset_of!(hvm_hw_cpu, error_code), 1020);
        assert_eq!(offset_of!(hvm_hw_cpu, flags), 1024);
    }

    #[test]
    fn test_small_records_layout_matches_headers() {
        assert_eq!(size_of::<hvm_save_header>(), 24);
        assert_eq!(size_of::<hvm_hw_lapic>(), 24);
        assert_eq!(size_of::<hvm_hw_lapic_regs>(), 1024);
        assert_eq!(size_of::<hvm_save_descriptor>(), 8);
        assert_eq!(size_of::<x86_tsc_info>(), 24);
        assert_eq!(offset_of!(x86_tsc_info, incarnation), 16);
    }
}
