//! Mirrors `xen/io/protocols.h`: the ABI names a frontend writes to its
//! `protocol` xenstore node.

/// ABI of 32-bit x86 guests.
pub const XEN_IO_PROTO_ABI_X86_32: &str = "x86_32-abi";
/// ABI of 64-bit x86 guests.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";
/// ABI of Arm guests.
pub const XEN_IO_PROTO_ABI_ARM: &str = "arm-abi";
/// The ABI these mirrors describe (x86_64).
pub const XEN_IO_PROTO_ABI_NATIVE: &str = XEN_IO_PROTO_ABI_X86_64;
