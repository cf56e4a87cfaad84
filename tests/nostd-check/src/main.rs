//! Freestanding check: this binary has no `std`, no libc and no C runtime.
//! It links the project's `no_std` crates, exercises them a little, prints
//! `nostd-check: ok` with a raw `write` system call and exits with status 0.
#![no_std]
#![no_main]

mod rt;

fn exercise() -> bool {
    // Filled in as the no_std crates grow: each one gets a small use here so the
    // linker has to pull it in.
    true
}

// Entry point called by the kernel (no crt0): align the stack as the SysV ABI
// expects at a call, then enter Rust.
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym nostd_main,
);

extern "C" fn nostd_main() -> ! {
    if exercise() {
        rt::write(1, b"nostd-check: ok\n");
        rt::exit(0)
    } else {
        rt::write(1, b"nostd-check: FAIL\n");
        rt::exit(1)
    }
}
