//! A vCPU's and the memory's snapshot in Xen's save format: KVM's register state
//! (`kvm_regs`, `kvm_sregs`, `kvm_fpu`, debug registers, the MSRs Xen saves, the
//! local APIC) mapped onto Xen's HVM save records (`hvm_hw_cpu`, `hvm_hw_lapic`,
//! `hvm_hw_lapic_regs`) and back, and the domain's memory file written as PAGE_DATA
//! with its holes skipped (`SEEK_DATA`/`SEEK_HOLE`: a hole is never read, so saving
//! never populates memory the guest did not touch).
//!
//! Segment attributes use Xen's packed `segment_register.attr` ("arbytes"): type
//! 0..4, S 4, DPL 5..7, P 7, AVL 8, L 9, D/B 10, G 11; a segment that is not present
//! is KVM's "unusable" one. The FPU is the 64-bit FXSAVE image.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use kvm_bindings::{
    kvm_debugregs, kvm_dtable, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment,
    kvm_sregs, Msrs,
};
use kvm_ioctls::VcpuFd;
use xen_shim_guest::Hypervisor;
use xen_stream::abi::x86_tsc_info;
use xen_stream::abi::{
    hvm_hw_cpu, hvm_hw_lapic, hvm_hw_lapic_regs, MAX_BATCH_PAGES, PAGE_SIZE,
    XEN_X86_FPU_INITIALISED,
};
use xen_stream::{DomainState, HvmContext, HvmVcpu, PageSinkError, StreamWriter, XlHeader};

use crate::gmem::GuestPhys;
use crate::VmmError;

/// Why a snapshot could not be taken or applied.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A KVM ioctl failed.
    #[error("KVM: cannot {what}")]
    Kvm {
        /// What was tried.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM returned fewer MSRs than asked for.
    #[error("KVM returned {got} of the {want} MSRs Xen saves")]
    Msrs {
        /// MSRs asked for.
        want: usize,
        /// MSRs returned.
        got: usize,
    },
    /// Reading the memory file or writing the stream failed.
    #[error("cannot {what}")]
    Io {
        /// What was tried.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

/// MSRs Xen's `hvm_hw_cpu` and `hvm_hw_lapic` carry, besides EFER and APIC_BASE
/// (in `kvm_sregs`).
pub const SAVED_MSRS: [u32; 10] = [
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_ESP,
    MSR_IA32_SYSENTER_EIP,
    MSR_KERNEL_GS_BASE,
    MSR_LSTAR,
    MSR_STAR,
    MSR_CSTAR,
    MSR_SYSCALL_MASK,
    MSR_TSC_AUX,
    MSR_IA32_TSC_DEADLINE,
];
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_TSC_AUX: u32 = 0xc000_0103;
/// The APIC's task-priority register in the register page.
const APIC_TPR: usize = 0x80;

/// One vCPU's state as KVM holds it.
#[derive(Debug, Clone, Default)]
pub struct KvmVcpuState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segments, control registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87/SSE state.
    pub fpu: kvm_fpu,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// (index, value) of [`SAVED_MSRS`] and the TSC.
    pub msrs: Vec<(u32, u64)>,
    /// The local APIC's registers (`None`: the VM has no in-kernel APIC, as the
    /// VMM's own VMs, whose guests take events through shared_info).
    pub lapic: Option<kvm_lapic_state>,
}

impl KvmVcpuState {
    fn msr(&self, index: u32) -> u64 {
        self.msrs
            .iter()
            .find(|(i, _)| *i == index)
            .map_or(0, |(_, v)| *v)
    }

    /// Reads a stopped vCPU's state (called on the thread that runs it, or while
    /// it is not in `KVM_RUN`).
    pub fn capture(vcpu: &VcpuFd) -> Result<Self, SnapshotError> {
        let regs = vcpu.get_regs().map_err(kvm("get registers"))?;
        let sregs = vcpu.get_sregs().map_err(kvm("get sregs"))?;
        let fpu = vcpu.get_fpu().map_err(kvm("get the FPU state"))?;
        let debugregs = vcpu.get_debug_regs().map_err(kvm("get debug registers"))?;
        let lapic = match vcpu.get_lapic() {
            Ok(l) => Some(l),
            Err(e) if e.errno() == libc::EINVAL || e.errno() == libc::ENXIO => None,
            Err(e) => return Err(kvm("get the local APIC")(e)),
        };
        let want: Vec<u32> = SAVED_MSRS.iter().copied().chain([MSR_IA32_TSC]).collect();
        let entries: Vec<kvm_msr_entry> = want
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::Msrs {
            want: want.len(),
            got: 0,
        })?;
        let got = vcpu.get_msrs(&mut msrs).map_err(kvm("get MSRs"))?;
        if got != want.len() {
            return Err(SnapshotError::Msrs {
                want: want.len(),
                got,
            });
        }
        let msrs = msrs.as_slice().iter().map(|e| (e.index, e.data)).collect();
        Ok(Self {
            regs,
            sregs,
            fpu,
            debugregs,
            msrs,
            lapic,
        })
    }

    /// Loads this state into a vCPU that is not running: sregs before the APIC (so
    /// the APIC's TPR wins over CR8), the TSC last.
    pub fn apply(&self, vcpu: &VcpuFd) -> Result<(), SnapshotError> {
        vcpu.set_sregs(&self.sregs).map_err(kvm("set sregs"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("set registers"))?;
        vcpu.set_fpu(&self.fpu).map_err(kvm("set the FPU state"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(kvm("set debug registers"))?;
        if let Some(l) = &self.lapic {
            match vcpu.set_lapic(l) {
                // No in-kernel APIC in this VM: nothing to load it into.
                Err(e) if e.errno() == libc::EINVAL || e.errno() == libc::ENXIO => {}
                r => r.map_err(kvm("set the local APIC"))?,
            }
        }
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::Msrs {
            want: entries.len(),
            got: 0,
        })?;
        let set = vcpu.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
        if set != entries.len() {
            return Err(SnapshotError::Msrs {
                want: entries.len(),
                got: set,
            });
        }
        Ok(())
    }

    /// Xen's records for this vCPU.
    pub fn to_hvm(&self) -> HvmVcpu {
        let r = &self.regs;
        let s = &self.sregs;
        let seg = |k: &kvm_segment| (u32::from(k.selector), k.limit, k.base, arbytes(k));
        let (cs_sel, cs_limit, cs_base, cs_arbytes) = seg(&s.cs);
        let (ds_sel, ds_limit, ds_base, ds_arbytes) = seg(&s.ds);
        let (es_sel, es_limit, es_base, es_arbytes) = seg(&s.es);
        let (fs_sel, fs_limit, fs_base, fs_arbytes) = seg(&s.fs);
        let (gs_sel, gs_limit, gs_base, gs_arbytes) = seg(&s.gs);
        let (ss_sel, ss_limit, ss_base, ss_arbytes) = seg(&s.ss);
        let (tr_sel, tr_limit, tr_base, tr_arbytes) = seg(&s.tr);
        let (ldtr_sel, ldtr_limit, ldtr_base, ldtr_arbytes) = seg(&s.ldt);
        let d = &self.debugregs;
        let cpu = hvm_hw_cpu {
            fpu_regs: fxsave(&self.fpu),
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rbp: r.rbp,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            dr0: d.db[0],
            dr1: d.db[1],
            dr2: d.db[2],
            dr3: d.db[3],
            dr6: d.dr6,
            dr7: d.dr7,
            cs_sel,
            ds_sel,
            es_sel,
            fs_sel,
            gs_sel,
            ss_sel,
            tr_sel,
            ldtr_sel,
            cs_limit,
            ds_limit,
            es_limit,
            fs_limit,
            gs_limit,
            ss_limit,
            tr_limit,
            ldtr_limit,
            idtr_limit: u32::from(s.idt.limit),
            gdtr_limit: u32::from(s.gdt.limit),
            cs_base,
            ds_base,
            es_base,
            fs_base,
            gs_base,
            ss_base,
            tr_base,
            ldtr_base,
            idtr_base: s.idt.base,
            gdtr_base: s.gdt.base,
            cs_arbytes,
            ds_arbytes,
            es_arbytes,
            fs_arbytes,
            gs_arbytes,
            ss_arbytes,
            tr_arbytes,
            ldtr_arbytes,
            sysenter_cs: self.msr(MSR_IA32_SYSENTER_CS),
            sysenter_esp: self.msr(MSR_IA32_SYSENTER_ESP),
            sysenter_eip: self.msr(MSR_IA32_SYSENTER_EIP),
            shadow_gs: self.msr(MSR_KERNEL_GS_BASE),
            msr_flags: 0,
            msr_lstar: self.msr(MSR_LSTAR),
            msr_star: self.msr(MSR_STAR),
            msr_cstar: self.msr(MSR_CSTAR),
            msr_syscall_mask: self.msr(MSR_SYSCALL_MASK),
            msr_efer: s.efer,
            msr_tsc_aux: self.msr(MSR_TSC_AUX),
            tsc: self.msr(MSR_IA32_TSC),
            pending_event: 0,
            error_code: 0,
            flags: XEN_X86_FPU_INITIALISED,
            pad0: 0,
        };
        let regs = self.lapic.as_ref().map(|l| {
            let mut regs = hvm_hw_lapic_regs::default();
            for (d, s) in regs.data.iter_mut().zip(l.regs.iter()) {
                *d = *s as u8;
            }
            regs
        });
        HvmVcpu {
            cpu,
            lapic: Some(hvm_hw_lapic {
                apic_base_msr: s.apic_base,
                disabled: 0,
                timer_divisor: 0,
                tdt_msr: self.msr(MSR_IA32_TSC_DEADLINE),
            }),
            lapic_regs: regs,
        }
    }

    /// KVM's state from Xen's records.
    pub fn from_hvm(v: &HvmVcpu) -> Self {
        let c = &v.cpu;
        let regs = kvm_regs {
            rax: c.rax,
            rbx: c.rbx,
            rcx: c.rcx,
            rdx: c.rdx,
            rsi: c.rsi,
            rdi: c.rdi,
            rsp: c.rsp,
            rbp: c.rbp,
            r8: c.r8,
            r9: c.r9,
            r10: c.r10,
            r11: c.r11,
            r12: c.r12,
            r13: c.r13,
            r14: c.r14,
            r15: c.r15,
            rip: c.rip,
            rflags: c.rflags,
        };
        let lapic = v.lapic_regs.as_ref().map(|r| {
            let mut lapic = kvm_lapic_state::default();
            for (d, s) in lapic.regs.iter_mut().zip(r.data.iter()) {
                *d = *s as _;
            }
            lapic
        });
        let apic_base = v.lapic.map_or(0xfee0_0900, |l| l.apic_base_msr);
        let sregs = kvm_sregs {
            cs: segment(c.cs_sel, c.cs_limit, c.cs_base, c.cs_arbytes),
            ds: segment(c.ds_sel, c.ds_limit, c.ds_base, c.ds_arbytes),
            es: segment(c.es_sel, c.es_limit, c.es_base, c.es_arbytes),
            fs: segment(c.fs_sel, c.fs_limit, c.fs_base, c.fs_arbytes),
            gs: segment(c.gs_sel, c.gs_limit, c.gs_base, c.gs_arbytes),
            ss: segment(c.ss_sel, c.ss_limit, c.ss_base, c.ss_arbytes),
            tr: segment(c.tr_sel, c.tr_limit, c.tr_base, c.tr_arbytes),
            ldt: segment(c.ldtr_sel, c.ldtr_limit, c.ldtr_base, c.ldtr_arbytes),
            gdt: kvm_dtable {
                base: c.gdtr_base,
                limit: c.gdtr_limit as u16,
                ..Default::default()
            },
            idt: kvm_dtable {
                base: c.idtr_base,
                limit: c.idtr_limit as u16,
                ..Default::default()
            },
            cr0: c.cr0,
            cr2: c.cr2,
            cr3: c.cr3,
            cr4: c.cr4,
            cr8: lapic
                .as_ref()
                .map_or(0, |l| u64::from(l.regs[APIC_TPR] as u8 >> 4)),
            efer: c.msr_efer,
            apic_base,
            interrupt_bitmap: [0; 4],
        };
        let debugregs = kvm_debugregs {
            db: [c.dr0, c.dr1, c.dr2, c.dr3],
            dr6: c.dr6,
            dr7: c.dr7,
            ..Default::default()
        };
        let msrs = vec![
            (MSR_IA32_SYSENTER_CS, c.sysenter_cs),
            (MSR_IA32_SYSENTER_ESP, c.sysenter_esp),
            (MSR_IA32_SYSENTER_EIP, c.sysenter_eip),
            (MSR_KERNEL_GS_BASE, c.shadow_gs),
            (MSR_LSTAR, c.msr_lstar),
            (MSR_STAR, c.msr_star),
            (MSR_CSTAR, c.msr_cstar),
            (MSR_SYSCALL_MASK, c.msr_syscall_mask),
            (MSR_TSC_AUX, c.msr_tsc_aux),
            (MSR_IA32_TSC_DEADLINE, v.lapic.map_or(0, |l| l.tdt_msr)),
            (MSR_IA32_TSC, c.tsc),
        ];
        Self {
            regs,
            sregs,
            fpu: from_fxsave(&c.fpu_regs),
            debugregs,
            msrs,
            lapic,
        }
    }
}

/// Xen's packed attributes of a KVM segment (0 for an unusable one).
pub fn arbytes(k: &kvm_segment) -> u32 {
    if k.unusable != 0 {
        return 0;
    }
    u32::from(k.type_ & 0xf)
        | u32::from(k.s & 1) << 4
        | u32::from(k.dpl & 3) << 5
        | u32::from(k.present & 1) << 7
        | u32::from(k.avl & 1) << 8
        | u32::from(k.l & 1) << 9
        | u32::from(k.db & 1) << 10
        | u32::from(k.g & 1) << 11
}

/// A KVM segment from Xen's fields; not present means unusable.
pub fn segment(sel: u32, limit: u32, base: u64, ar: u32) -> kvm_segment {
    let bit = |n: u32| ((ar >> n) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: sel as u16,
        type_: (ar & 0xf) as u8,
        s: bit(4),
        dpl: ((ar >> 5) & 3) as u8,
        present: bit(7),
        avl: bit(8),
        l: bit(9),
        db: bit(10),
        g: bit(11),
        unusable: 1 - bit(7),
        padding: 0,
    }
}

/// The 64-bit FXSAVE image of KVM's FPU state.
pub fn fxsave(f: &kvm_fpu) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftwx;
    b[6..8].copy_from_slice(&f.last_opcode.to_le_bytes());
    b[8..16].copy_from_slice(&f.last_ip.to_le_bytes());
    b[16..24].copy_from_slice(&f.last_dp.to_le_bytes());
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&0xffffu32.to_le_bytes()); // MXCSR_MASK
    for (i, r) in f.fpr.iter().enumerate() {
        b[32 + i * 16..48 + i * 16].copy_from_slice(r);
    }
    for (i, r) in f.xmm.iter().enumerate() {
        b[160 + i * 16..176 + i * 16].copy_from_slice(r);
    }
    b
}

/// KVM's FPU state from a 64-bit FXSAVE image.
pub fn from_fxsave(b: &[u8; 512]) -> kvm_fpu {
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let mut f = kvm_fpu {
        fcw: u16_at(0),
        fsw: u16_at(2),
        ftwx: b[4],
        last_opcode: u16_at(6),
        last_ip: u64_at(8),
        last_dp: u64_at(16),
        mxcsr: u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")),
        ..Default::default()
    };
    for (i, r) in f.fpr.iter_mut().enumerate() {
        r.copy_from_slice(&b[32 + i * 16..48 + i * 16]);
    }
    for (i, r) in f.xmm.iter_mut().enumerate() {
        r.copy_from_slice(&b[160 + i * 16..176 + i * 16]);
    }
    f
}

/// What [`write_memory`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Pages written.
    pub pages: u64,
    /// Pages in holes or all zero, not written.
    pub skipped: u64,
}

fn seek(file: &File, off: u64, whence: libc::c_int) -> Result<Option<u64>, SnapshotError> {
    let off = libc::off_t::try_from(off).map_err(|_| SnapshotError::Io {
        what: "seek in the memory file",
        source: std::io::Error::from_raw_os_error(libc::EOVERFLOW),
    })?;
    // SAFETY: lseek on a file descriptor we borrow; no memory is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None); // no data at or after `off`
        }
        return Err(SnapshotError::Io {
            what: "seek in the memory file",
            source: e,
        });
    }
    Ok(Some(r as u64))
}

/// Writes pages `0..nr_pages` of the memory file `file` as PAGE_DATA records: only
/// the ranges `SEEK_DATA` finds (holes are never read), and of those only pages that
/// are not all zero (a restored domain's memory starts zeroed). `progress` is called
/// with the bytes of the file covered so far.
pub fn write_memory<W: Write>(
    file: &File,
    nr_pages: u64,
    out: &mut StreamWriter<W>,
    mut progress: impl FnMut(u64),
) -> Result<MemoryStats, SnapshotError> {
    let end = nr_pages * PAGE_SIZE as u64;
    let mut stats = MemoryStats::default();
    let mut buf = vec![0u8; MAX_BATCH_PAGES * PAGE_SIZE];
    let mut pfns: Vec<u64> = Vec::with_capacity(MAX_BATCH_PAGES);
    let mut data: Vec<u8> = Vec::with_capacity(MAX_BATCH_PAGES * PAGE_SIZE);
    let mut pos = 0u64;
    while pos < end {
        let Some(start) = seek(file, pos, libc::SEEK_DATA)? else {
            break;
        };
        if start >= end {
            break;
        }
        let start = start & !(PAGE_SIZE as u64 - 1);
        let stop = seek(file, start, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        let stop = (stop + PAGE_SIZE as u64 - 1) & !(PAGE_SIZE as u64 - 1);
        stats.skipped += (start - pos) / PAGE_SIZE as u64;
        let mut at = start;
        while at < stop {
            let n = ((stop - at) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|source| SnapshotError::Io {
                    what: "read the memory file",
                    source,
                })?;
            for (i, page) in buf[..n].chunks(PAGE_SIZE).enumerate() {
                if page.iter().all(|b| *b == 0) {
                    stats.skipped += 1;
                    continue;
                }
                pfns.push(at / PAGE_SIZE as u64 + i as u64);
                data.extend_from_slice(page);
                if pfns.len() == MAX_BATCH_PAGES {
                    flush(out, &mut pfns, &mut data, &mut stats)?;
                }
            }
            at += n as u64;
            progress(at);
        }
        pos = stop;
    }
    flush(out, &mut pfns, &mut data, &mut stats)?;
    stats.skipped += end.saturating_sub(pos) / PAGE_SIZE as u64;
    progress(end);
    Ok(stats)
}

fn flush<W: Write>(
    out: &mut StreamWriter<W>,
    pfns: &mut Vec<u64>,
    data: &mut Vec<u8>,
    stats: &mut MemoryStats,
) -> Result<(), SnapshotError> {
    if pfns.is_empty() {
        return Ok(());
    }
    out.write_pages(pfns, data)
        .map_err(|source| SnapshotError::Io {
            what: "write the save stream",
            source,
        })?;
    stats.pages += pfns.len() as u64;
    pfns.clear();
    data.clear();
    Ok(())
}

/// `HVM_PARAM_STORE_PFN`, `_STORE_EVTCHN`, `_CONSOLE_PFN`, `_CONSOLE_EVTCHN`.
const HVM_PARAM_STORE_PFN: u64 = 1;
const HVM_PARAM_STORE_EVTCHN: u64 = 2;
const HVM_PARAM_CONSOLE_PFN: u64 = 17;
const HVM_PARAM_CONSOLE_EVTCHN: u64 = 18;

/// Starts a save stream on `out`: the xl header with `config`, libxl's and
/// libxc's headers (Xen 4.17, HVM).
pub fn begin_stream<W: Write>(out: W, config: &[u8]) -> Result<StreamWriter<W>, SnapshotError> {
    let header = XlHeader {
        config: config.to_vec(),
        json: false,
    };
    StreamWriter::begin(out, &header, (4, 17), &[], &[]).map_err(|source| SnapshotError::Io {
        what: "write the save stream",
        source,
    })
}

/// Writes pages `pfns` (ascending, each below the memory file's end) of the
/// memory file `file` as PAGE_DATA records, zero pages included (a page sent
/// in an earlier round may have been zeroed since); `sent(pfn, page)` sees
/// each page as written. Returns the pages written.
pub fn write_pfns<W: Write>(
    file: &File,
    pfns: &[u64],
    out: &mut StreamWriter<W>,
    sent: &mut dyn FnMut(u64, &[u8]),
) -> Result<u64, SnapshotError> {
    let mut stats = MemoryStats::default();
    let mut batch: Vec<u64> = Vec::with_capacity(MAX_BATCH_PAGES);
    let mut data: Vec<u8> = Vec::with_capacity(MAX_BATCH_PAGES * PAGE_SIZE);
    let mut page = vec![0u8; PAGE_SIZE];
    for &pfn in pfns {
        file.read_exact_at(&mut page, pfn * PAGE_SIZE as u64)
            .map_err(|source| SnapshotError::Io {
                what: "read the memory file",
                source,
            })?;
        sent(pfn, &page);
        batch.push(pfn);
        data.extend_from_slice(&page);
        if batch.len() == MAX_BATCH_PAGES {
            flush(out, &mut batch, &mut data, &mut stats)?;
        }
    }
    flush(out, &mut batch, &mut data, &mut stats)?;
    Ok(stats.pages)
}

/// Ends a save stream: X86_TSC_INFO, HVM_CONTEXT (vCPU 0's state `cpu`),
/// HVM_PARAMS of the domain `hv`, the END records; flushes and returns the
/// output.
pub fn finish_stream<W: Write>(
    w: StreamWriter<W>,
    hv: &Hypervisor,
    cpu: &KvmVcpuState,
    tsc_khz: u64,
) -> Result<W, SnapshotError> {
    let layout = hv.layout();
    let info = hv.info();
    let khz = u32::try_from(tsc_khz).unwrap_or(u32::MAX);
    let state = DomainState {
        xen_version: (4, 17),
        tsc: x86_tsc_info {
            mode: 0,
            khz,
            nsec: 0,
            incarnation: 0,
            _res1: 0,
        },
        hvm: HvmContext::new(vec![cpu.to_hvm()], 0, khz),
        params: vec![
            (HVM_PARAM_STORE_PFN, layout.xenstore_gfn()),
            (HVM_PARAM_STORE_EVTCHN, u64::from(info.store_port)),
            (HVM_PARAM_CONSOLE_PFN, layout.console_gfn()),
            (HVM_PARAM_CONSOLE_EVTCHN, u64::from(info.console_port)),
        ],
        cpuid_policy: Vec::new(),
        msr_policy: Vec::new(),
    };
    w.finish(&state).map_err(|source| SnapshotError::Io {
        what: "write the save stream",
        source,
    })
}

/// Writes the save file of the parked domain `hv` (vCPU 0's state `cpu`) to
/// `file` (opened by the toolstack: a jailed VMM opens no host path): the xl header with `config`, the memory file's pages, the TSC, the HVM
/// context and params. Returns (pages, bytes); the file is synced.
pub fn save_file(
    file: File,
    hv: &Hypervisor,
    cpu: &KvmVcpuState,
    config: &[u8],
    tsc_khz: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u64, u64), SnapshotError> {
    let io = |what| move |source| SnapshotError::Io { what, source };
    let out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut w = begin_stream(out, config)?;
    let total = hv.memory().len() as u64;
    let stats = write_memory(hv.memory_file(), total / PAGE_SIZE as u64, &mut w, |done| {
        progress(done, total)
    })?;
    let bytes_before = w.bytes();
    let out = finish_stream(w, hv, cpu, tsc_khz)?;
    let file = out.into_inner().map_err(|e| SnapshotError::Io {
        what: "write the save file",
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io("sync the save file"))?;
    let bytes = file.metadata().map_or(bytes_before, |m| m.len());
    Ok((stats.pages, bytes))
}

/// How long an incoming domain's VMM waits for the first bytes of its
/// stream.
pub const INCOMING_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the FIFO `path` for reading without blocking, waits up to
/// [`INCOMING_WAIT`] for data, then makes it blocking (a writer that goes
/// away later reads as EOF).
fn open_incoming(path: &std::path::Path) -> Result<File, VmmError> {
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: String| move |source| VmmError::Io { what, source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io(format!("open the migration stream {}", path.display())))?;
    let t0 = std::time::Instant::now();
    loop {
        let left = INCOMING_WAIT.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Err(VmmError::Restore(format!(
                "no migration stream came on {} within {INCOMING_WAIT:?}",
                path.display()
            )));
        }
        let mut fds = [nix::poll::PollFd::new(
            file.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(io("wait for the migration stream".into())(e.into())),
        }
    }
    let fl = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| io("read the stream's flags".into())(e.into()))?;
    let fl = nix::fcntl::OFlag::from_bits_truncate(fl) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl))
        .map_err(|e| io("make the stream blocking".into())(e.into()))?;
    Ok(file)
}

/// Reads the save file at `path` into guest memory `mem` (every page checked to
/// lie inside it) and returns vCPU 0's state. `xl restore` has validated the whole
/// file before it created the domain; this reads it again, checking as much.
///
/// `incoming`: `path` is the FIFO of a migration's stream, fed by `xl
/// migrate-receive`; it is opened without waiting for its writer, which must
/// come within [`INCOMING_WAIT`] (a receiver killed before it fails this
/// domain instead of leaving it blocked), and ends the stream with EOF if it
/// dies later.
pub fn restore_file(
    path: &std::path::Path,
    mem: &GuestPhys,
    incoming: bool,
) -> Result<KvmVcpuState, VmmError> {
    let file = if incoming {
        open_incoming(path)?
    } else {
        File::open(path).map_err(|source| VmmError::Io {
            what: format!("open the save file {}", path.display()),
            source,
        })?
    };
    let mut input = std::io::BufReader::with_capacity(1 << 20, file);
    let max_pfns = (mem.len() / PAGE_SIZE) as u64;
    let mut sink = |pfn: u64, page: &[u8]| -> Result<(), PageSinkError> {
        mem.write(pfn * PAGE_SIZE as u64, page)
            .map_err(|e| e.to_string().into())
    };
    let (_, state) = xen_stream::read_save_file(&mut input, |_| Ok(max_pfns), &mut sink)
        .map_err(|e| VmmError::Restore(xen_diag::ErrorChain(&e).to_string()))?;
    match state.hvm.vcpus.as_slice() {
        [v0] => Ok(KvmVcpuState::from_hvm(v0)),
        v => Err(VmmError::Restore(format!(
            "the save file has {} vCPUs; restoring secondary vCPUs is not supported",
            v.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(present: u8) -> kvm_segment {
        kvm_segment {
            base: 0x1234,
            limit: 0xffff_ffff,
            selector: 0x10,
            type_: 0xb,
            present,
            dpl: 3,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 1 - present,
            padding: 0,
        }
    }

    #[test]
    fn test_segment_arbytes_round_trip_same() {
        let s = seg(1);
        assert_eq!(
            arbytes(&s),
            0xb | 1 << 4 | 3 << 5 | 1 << 7 | 1 << 9 | 1 << 11
        );
        assert_eq!(segment(0x10, s.limit, s.base, arbytes(&s)), s);
    }

    #[test]
    fn test_unusable_segment_round_trip_unusable() {
        let s = segment(0, 0, 0, arbytes(&seg(0)));
        assert_eq!(s.unusable, 1);
        assert_eq!(s.present, 0);
    }

    #[test]
    fn test_fxsave_round_trip_same() {
        let mut f = kvm_fpu {
            fcw: 0x37f,
            fsw: 0x1234,
            ftwx: 0xaa,
            last_opcode: 7,
            ..Default::default()
        };
        f.last_ip = 0xdead_beef_0000;
        f.mxcsr = 0x1f80;
        f.fpr[7][9] = 3;
        f.xmm[15][15] = 0x42;
        let img = fxsave(&f);
        assert_eq!(&img[24..28], &0x1f80u32.to_le_bytes());
        let back = from_fxsave(&img);
        assert_eq!(back.fcw, f.fcw);
        assert_eq!(back.ftwx, f.ftwx);
        assert_eq!(back.last_ip, f.last_ip);
        assert_eq!(back.fpr, f.fpr);
        assert_eq!(back.xmm, f.xmm);
        assert_eq!(back.mxcsr, f.mxcsr);
    }
}
