//! The state a PVHVM kernel starts in (see `xen_abi::pvhvm`): identity page
//! tables and a boot GDT in low guest memory, 64-bit long mode registers,
//! Xen's CPUID signature and the `vcpu_time_info` of the guest's TSC.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, CpuId};
use xen_abi::pvhvm::{BOOT_CS, BOOT_DS, BOOT_GDT, BOOT_MAGIC, BOOT_PML4, IDENTITY_MAP_BYTES};
use xen_abi::xen::vcpu_time_info;

use crate::gmem::GuestPhys;
use crate::VmmError;

const PTE_P: u64 = 1;
const PTE_W: u64 = 2;
const PTE_U: u64 = 4;
const PTE_PS: u64 = 1 << 7;

/// Guest-physical address of the boot TSS (the kernel loads its own).
const BOOT_TSS: u64 = BOOT_GDT + 0x100;

/// Writes the identity map of the first [`IDENTITY_MAP_BYTES`] (2 MiB
/// pages, user-accessible, writable) at [`BOOT_PML4`]: PML4, one PDPT, then
/// one page directory per GiB.
pub fn write_page_tables(m: &GuestPhys) -> Result<(), VmmError> {
    let gib = IDENTITY_MAP_BYTES >> 30;
    let pdpt = BOOT_PML4 + 0x1000;
    let pd0 = pdpt + 0x1000;
    m.zero(BOOT_PML4, 0x1000 * (2 + gib as usize))?;
    m.write_obj(BOOT_PML4, &(pdpt | PTE_P | PTE_W | PTE_U))?;
    for g in 0..gib {
        let pd = pd0 + g * 0x1000;
        m.write_obj(pdpt + g * 8, &(pd | PTE_P | PTE_W | PTE_U))?;
        let entries: Vec<u64> = (0..512u64)
            .map(|i| ((g << 30) + (i << 21)) | PTE_P | PTE_W | PTE_U | PTE_PS)
            .collect();
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        m.write(pd, &bytes)?;
    }
    Ok(())
}

const GDT_CODE64: u64 = 0x00af_9b00_0000_ffff;
const GDT_DATA: u64 = 0x00cf_9300_0000_ffff;

/// Writes the boot GDT (null, 64-bit code, data, a 16-byte TSS descriptor)
/// at [`BOOT_GDT`].
pub fn write_gdt(m: &GuestPhys) -> Result<(), VmmError> {
    let limit = 0x67u64;
    let base = BOOT_TSS;
    let tss_lo = limit | ((base & 0xff_ffff) << 16) | (0x8b << 40) | (((base >> 24) & 0xff) << 56);
    let tss_hi = base >> 32;
    for (i, e) in [0, GDT_CODE64, GDT_DATA, tss_lo, tss_hi].iter().enumerate() {
        m.write_obj(BOOT_GDT + 8 * i as u64, e)?;
    }
    m.zero(BOOT_TSS, 0x68)
}

fn seg(selector: u16, type_: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Long mode at CPL0 with the boot tables and SSE on.
pub fn long_mode_sregs(mut s: kvm_sregs) -> kvm_sregs {
    let code = seg(BOOT_CS, 0xb, 1, 0);
    let data = seg(BOOT_DS, 0x3, 0, 1);
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = kvm_segment {
        base: BOOT_TSS,
        limit: 0x67,
        selector: 0x18,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    s.ldt = kvm_segment {
        selector: 0,
        type_: 0x2,
        present: 1,
        limit: 0xffff,
        ..Default::default()
    };
    s.gdt.base = BOOT_GDT;
    s.gdt.limit = 5 * 8 - 1;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr3 = BOOT_PML4;
    // PAE | OSFXSR | OSXMMEXCPT
    s.cr4 = (1 << 5) | (1 << 9) | (1 << 10);
    // PE | MP | ET | NE | WP | PG
    s.cr0 = 1 | 2 | 0x10 | 0x20 | 0x1_0000 | 0x8000_0000;
    // LME | LMA
    s.efer = 0x100 | 0x400;
    s
}

/// Registers at entry: `rip` = entry, `rsi` = `start_info`, `rdi` = magic.
pub fn entry_regs(entry: u64, start_info_gpa: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsi: start_info_gpa,
        rdi: BOOT_MAGIC,
        rflags: 2,
        ..Default::default()
    }
}

/// x87/SSE defaults (FCW 0x37f, MXCSR 0x1f80).
pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Replaces the hypervisor leaves 0x4000_0000.. with Xen's: signature
/// `XenVMMXenVMM`, version 4.17, no hypercall page (the gate is a port).
pub fn xen_cpuid(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if (0x4000_0000..0x4000_0100).contains(&e.function) {
            let (a, b, c, d) = match e.function {
                0x4000_0000 => (
                    0x4000_0002,
                    u32::from_le_bytes(*b"XenV"),
                    u32::from_le_bytes(*b"MMXe"),
                    u32::from_le_bytes(*b"nVMM"),
                ),
                0x4000_0001 => (0x0004_0011, 0, 0, 0),
                _ => (0, 0, 0, 0),
            };
            e.eax = a;
            e.ebx = b;
            e.ecx = c;
            e.edx = d;
        }
    }
}

/// The `vcpu_time_info` of a TSC ticking at `tsc_khz` that was 0 at system
/// time 0: `ns = ((tsc << shift or >> -shift) * mul) >> 32`, with `mul`
/// normalised into `[2^31, 2^32)` as Xen's `set_time_scale` does.
pub fn time_info(tsc_khz: u64) -> vcpu_time_info {
    // ns per tick as 32.32: 10^6 / khz.
    let mut shift: i8 = 0;
    let mut tps = tsc_khz.max(1) * 1000; // ticks per second
    let ns = 1_000_000_000u64;
    // Want mul = ns * 2^32 / tps in [2^31, 2^32).
    while tps > ns * 2 {
        tps >>= 1;
        shift -= 1;
    }
    while tps <= ns {
        tps <<= 1;
        shift += 1;
    }
    let mul = ((u128::from(ns) << 32) / u128::from(tps)) as u32;
    vcpu_time_info {
        version: 2,
        tsc_timestamp: 0,
        system_time: 0,
        tsc_to_system_mul: mul,
        tsc_shift: shift,
        flags: xen_abi::xen::XEN_PVCLOCK_TSC_STABLE_BIT,
        ..Default::default()
    }
}

/// System time in ns of `tsc` under `t` (what the guest computes).
pub fn system_time_ns(t: &vcpu_time_info, tsc: u64) -> u64 {
    let d = tsc.wrapping_sub(t.tsc_timestamp);
    let d = if t.tsc_shift >= 0 {
        d << t.tsc_shift
    } else {
        d >> -t.tsc_shift
    };
    t.system_time
        .wrapping_add(((u128::from(d) * u128::from(t.tsc_to_system_mul)) >> 32) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_time_info_converts_one_second_of_ticks() {
        for khz in [1_000_000u64, 2_596_000, 3_000_000, 500_000] {
            let t = time_info(khz);
            let ns = system_time_ns(&t, khz * 1000);
            assert!((999_000_000..=1_001_000_000).contains(&ns), "{khz}: {ns}");
        }
    }
}
