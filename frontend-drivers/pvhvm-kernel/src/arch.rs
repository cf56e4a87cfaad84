//! CPL0 set-up, done once at boot (every instruction here is emulated by
//! this KVM, about a microsecond each, so it is kept to a few hundred):
//! GDT with user segments and a TSS, the TSS's I/O bitmap granting the
//! hypercall gate, doorbell, debug and emulated-disk ports to CPL3, an IDT
//! whose exception handlers run on an IST stack, then `iretq` to CPL3.

use core::arch::{asm, global_asm};

use xen_abi::pvhvm::{fvdisk, DEBUG_PORT, DOORBELL_PORT, FVDISK_PORT, HYPERCALL_PORT};

/// Kernel code selector.
const KCODE: u16 = 0x08;
/// Kernel data selector.
const KDATA: u16 = 0x10;
/// User data selector (RPL 3).
const UDATA: u16 = 0x18 | 3;
/// User code selector (RPL 3).
const UCODE: u16 = 0x20 | 3;
/// TSS selector.
const TSS_SEL: u16 = 0x28;

/// GDT: null, kernel code64, kernel data, user data, user code64, TSS (2).
#[repr(C, align(16))]
struct Gdt([u64; 7]);
static mut GDT: Gdt = Gdt([
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00cf_f300_0000_ffff,
    0x00af_fb00_0000_ffff,
    0,
    0,
]);

/// Bytes of the TSS before the I/O bitmap.
const TSS_HEAD: usize = 104;
/// The I/O bitmap (65536 ports) and its terminating 0xff byte.
const IOMAP: usize = 8192 + 1;
const TSS_SIZE: usize = TSS_HEAD + IOMAP;

#[repr(C, align(16))]
struct Tss([u8; TSS_SIZE]);

const fn allow(mut t: [u8; TSS_SIZE], first: u16, count: u16) -> [u8; TSS_SIZE] {
    let mut p = first as usize;
    while p < first as usize + count as usize {
        t[TSS_HEAD + p / 8] &= !(1 << (p % 8));
        p += 1;
    }
    t
}

const fn tss_image() -> [u8; TSS_SIZE] {
    let mut t = [0xffu8; TSS_SIZE];
    let mut i = 0;
    while i < TSS_HEAD {
        t[i] = 0;
        i += 1;
    }
    // iomap_base at offset 102.
    t[102] = TSS_HEAD as u8;
    t[103] = 0;
    let t = allow(t, HYPERCALL_PORT, 4);
    let t = allow(t, DEBUG_PORT, 1);
    let t = allow(t, DOORBELL_PORT, 4);
    allow(t, FVDISK_PORT, fvdisk::SPAN)
}

static mut TSS: Tss = Tss(tss_image());

const STACK: usize = 64 * 1024;
#[repr(C, align(16))]
struct Stack([u8; STACK]);
/// The IST stack of exception handlers (also the CPL0 stack of `rsp0`).
static mut IST_STACK: Stack = Stack([0; STACK]);
/// The CPL3 stack of the kernel's main loop.
const USER_STACK: usize = 1024 * 1024;
#[repr(C, align(16))]
struct UStack([u8; USER_STACK]);
static mut MAIN_STACK: UStack = UStack([0; USER_STACK]);

#[repr(C, align(16))]
struct Idt([u64; 512]);
static mut IDT: Idt = Idt([0; 512]);

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

unsafe extern "C" {
    /// The 32 exception entry stubs, 16 bytes apart (`global_asm!` below).
    static exception_stubs: u8;
}

// The boot entry: a stack, then `boot` (Rust, CPL0) with rsi = start_info.
// The exception stubs: push a zero error code where the CPU pushes none,
// then the vector, and go to the common handler with rdi -> the frame.
global_asm!(
    ".section .text.boot, \"ax\"",
    ".global _start",
    "_start:",
    "lea rsp, [rip + {boot_stack} + {stack}]",
    "mov rdi, rsi",
    "call {boot}",
    "2: hlt",
    "jmp 2b",
    ".text",
    ".balign 16",
    ".global exception_stubs",
    "exception_stubs:",
    ".set vec, 0",
    ".rept 32",
    ".balign 16",
    ".if vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30",
    ".byte 0x6a, vec", // push imm8
    ".else",
    ".byte 0x6a, 0",
    ".byte 0x6a, vec",
    ".endif",
    "jmp {common}",
    ".set vec, vec + 1",
    ".endr",
    boot_stack = sym IST_STACK,
    stack = const STACK,
    boot = sym boot,
    common = sym exception_common,
);

/// Common exception path (CPL0, IST stack): `rdi` = the frame
/// `[vector, error, rip, cs, rflags, rsp, ss]`; reports and never returns.
#[unsafe(naked)]
unsafe extern "C" fn exception_common() {
    core::arch::naked_asm!(
        "mov rdi, rsp",
        "sub rsp, 8",
        "call {fault}",
        "2: hlt",
        "jmp 2b",
        fault = sym fault,
    );
}

extern "C" fn fault(frame: *const u64) -> ! {
    // SAFETY: the stub built a 7-word frame at `frame` on the IST stack.
    let (vector, error, rip) = unsafe { (*frame, *frame.add(1), *frame.add(2)) };
    let cr2: u64;
    // SAFETY: reading cr2 at CPL0 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    crate::hypercall::vmm_fault(vector, error, rip, cr2)
}

/// CPL0 boot: tables, then CPL3 `crate::main(start_info)`.
extern "C" fn boot(start_info: u64) -> ! {
    // SAFETY: single vCPU, interrupts off, nothing else runs: the statics
    // are ours to initialise; the addresses loaded into GDTR/IDTR/TR are of
    // statics that live forever.
    unsafe {
        // SSE on (the VMM set it too; the kernel must not depend on that).
        let mut cr4: u64;
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
        cr4 |= (1 << 9) | (1 << 10);
        asm!("mov cr4, {}", in(reg) cr4, options(nomem, nostack));

        let tss = core::ptr::addr_of_mut!(TSS) as u64;
        let ist_top = core::ptr::addr_of_mut!(IST_STACK) as u64 + STACK as u64;
        let t = core::ptr::addr_of_mut!(TSS).cast::<u8>();
        // rsp0 at 4, ist1 at 36.
        t.add(4).cast::<u64>().write_unaligned(ist_top);
        t.add(36).cast::<u64>().write_unaligned(ist_top);
        let limit = (TSS_SIZE - 1) as u64;
        let gdt = core::ptr::addr_of_mut!(GDT).cast::<u64>();
        gdt.add(5).write_volatile(
            (limit & 0xffff)
                | ((tss & 0xff_ffff) << 16)
                | (0x89 << 40)
                | (((limit >> 16) & 0xf) << 48)
                | (((tss >> 24) & 0xff) << 56),
        );
        gdt.add(6).write_volatile(tss >> 32);

        let stubs = core::ptr::addr_of!(exception_stubs) as u64;
        let idt = core::ptr::addr_of_mut!(IDT).cast::<u64>();
        let mut v = 0;
        while v < 32 {
            let h = stubs + 16 * v;
            let lo = (h & 0xffff)
                | (u64::from(KCODE) << 16)
                | (1 << 32) // IST 1
                | (0x8e << 40) // present, DPL 0, interrupt gate
                | (((h >> 16) & 0xffff) << 48);
            idt.add(2 * v as usize).write_volatile(lo);
            idt.add(2 * v as usize + 1).write_volatile(h >> 32);
            v += 1;
        }

        let gdtr = Pointer {
            limit: (7 * 8 - 1) as u16,
            base: gdt as u64,
        };
        let idtr = Pointer {
            limit: (256 * 16 - 1) as u16,
            base: idt as u64,
        };
        asm!(
            "lgdt [{gdtr}]",
            "lidt [{idtr}]",
            "push {kcode}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {kdata:x}",
            "mov es, {kdata:x}",
            "mov ss, {kdata:x}",
            "mov fs, {zero:x}",
            "mov gs, {zero:x}",
            "ltr {tsssel:x}",
            gdtr = in(reg) &gdtr,
            idtr = in(reg) &idtr,
            kcode = const KCODE as u64,
            kdata = in(reg) u64::from(KDATA),
            zero = in(reg) 0u64,
            tsssel = in(reg) u64::from(TSS_SEL),
            tmp = out(reg) _,
        );

        // A function is entered with rsp = 8 mod 16 (after a call pushed a
        // return address): leave room for the missing one.
        let user_top = core::ptr::addr_of_mut!(MAIN_STACK) as u64 + USER_STACK as u64 - 8;
        asm!(
            "push {uds}",
            "push {ursp}",
            "push 0x2", // rflags: IF = 0, IOPL = 0
            "push {ucs}",
            "push {entry}",
            "iretq",
            uds = const UDATA as u64,
            ursp = in(reg) user_top,
            ucs = const UCODE as u64,
            entry = in(reg) user_entry as *const () as u64,
            in("rdi") start_info,
            options(noreturn),
        );
    }
}

extern "C" fn user_entry(start_info: u64) -> ! {
    crate::main(start_info)
}

// A secondary vCPU's first (and only) code, at CPL0 in the VMM's boot state
// (so emulated: kept to a few thousand instructions): rdi -> [state,
// counter]; state = 1, count to 1000, state = 2, then vmm_op(vcpu_down).
global_asm!(
    ".text",
    ".global ap_entry",
    "ap_entry:",
    "mov qword ptr [rdi], 1",
    "mov rcx, 1000",
    "2:",
    "inc qword ptr [rdi + 8]",
    "dec rcx",
    "jnz 2b",
    "mov qword ptr [rdi], 2",
    "mov eax, {vmm_op}",
    "mov edi, {down}",
    "out 0xe4, eax",
    "3: hlt",
    "jmp 3b",
    vmm_op = const xen_abi::pvhvm::HYPERVISOR_vmm_op,
    down = const xen_abi::pvhvm::VMMOP_vcpu_down,
);

unsafe extern "C" {
    /// See the `global_asm!` above.
    pub fn ap_entry();
}

/// Reads the TSC (native at CPL3 on this KVM).
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; CR4.TSD is clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Destroys the IDT (every gate not present) and executes `ud2`: #UD cannot
/// be delivered, nor the #NP/#GP that follow, nor the double fault: the CPU
/// triple-faults (the hostile-guest test).
pub fn triple_fault() -> ! {
    // SAFETY: deliberately destroys the IDT (this kernel's pages are all
    // writable from CPL3), then faults; nothing runs afterwards.
    unsafe {
        let idt = core::ptr::addr_of_mut!(IDT).cast::<u64>();
        for i in 0..512 {
            idt.add(i).write_volatile(0);
        }
        asm!("ud2", options(noreturn));
    }
}

/// Touches an unmapped address at CPL3: a page fault the handler reports.
pub fn page_fault() -> ! {
    // SAFETY: deliberately faults; the handler never returns here.
    unsafe {
        let p = 0x7fff_ffff_f000u64 as *mut u64;
        p.write_volatile(1);
        asm!("ud2", options(noreturn));
    }
}
