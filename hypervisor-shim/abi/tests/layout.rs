//! ABI check of every `xen-abi` mirror against the Xen public headers.
//!
//! One Rust table below lists, for every mirrored struct, its size, alignment
//! and the offset, size, alignment and signedness of every field, plus the
//! value of every numeric and string constant the headers define. From that
//! table the test writes a C program that includes the real headers from
//! `/usr/include/xen` (Debian `libxen-dev`), compiles it with `cc` twice
//! (at the default, legacy `__XEN_INTERFACE_VERSION__` and at
//! `__XEN_LATEST_INTERFACE_VERSION__`, which exposes the grant v2
//! definitions), runs it, and compares what C says with what Rust says. The
//! test fails listing every mismatch, and fails (never skips) when `cc` or
//! the headers are missing.

use std::any::type_name;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use xen_abi::event_channel::*;
use xen_abi::grant_table::*;
use xen_abi::io::blkif::*;
use xen_abi::io::console::*;
use xen_abi::io::netif::*;
use xen_abi::io::ring::*;
use xen_abi::io::xenbus::XenbusState;
use xen_abi::io::xs_wire::*;
use xen_abi::memory::*;
use xen_abi::xen::*;

/// Where the headers must be (`#include <xen/...>` resolves there).
const XEN_HEADER: &str = "/usr/include/xen/xen.h";
/// Interface version that exposes the grant table v2 definitions.
const GRANT_V2: u32 = 0x0003_020a;
/// Guest handles are `struct { type *p; }` from this version on.
const STRUCT_HANDLES: u32 = 0x0003_0201;
/// `vcpu_time_info` has `flags` + `pad1[2]` above this version.
const PVCLOCK_FLAGS: u32 = 0x0004_0601;

// ---------------------------------------------------------------------------
// The table.

/// The interface versions at which an entry exists in the headers.
#[derive(Clone, Copy, Debug)]
struct Ver {
    min: u32,
}

const ALL: Ver = Ver { min: 0 };

const fn since(min: u32) -> Ver {
    Ver { min }
}

impl Ver {
    fn contains(self, v: u32) -> bool {
        v >= self.min
    }

    fn c_guard(self) -> Option<String> {
        (self.min > 0).then(|| format!("#if __XEN_INTERFACE_VERSION__ >= {:#010x}", self.min))
    }
}

/// Signedness as the C side reports it: 1 signed integer, 0 unsigned
/// integer, 2 anything else (array, struct, union, pointer).
fn sign_of<F>() -> i128 {
    match type_name::<F>() {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => 1,
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "bool" => 0,
        _ => 2,
    }
}

/// One field of a mirrored struct.
struct FieldSpec {
    /// C member designator (`seg`, `u.gso.size`).
    c: String,
    offset: usize,
    size: usize,
    align: usize,
    sign: Option<i128>,
    ver: Option<Ver>,
    /// An explicit `_padN` field standing for C's implicit padding: not
    /// compared with C, only counted in the coverage check.
    pad: bool,
}

impl FieldSpec {
    /// `_get` only carries the field type `F` (`|s: &T| &s.field`).
    fn new<T, F>(c: &str, offset: usize, _get: fn(&T) -> &F) -> Self {
        Self {
            c: c.replace("r#", ""),
            offset,
            size: size_of::<F>(),
            align: align_of::<F>(),
            sign: Some(sign_of::<F>()),
            ver: None,
            pad: false,
        }
    }

    /// A union member, typed by its accessor (`netif_extra_info_u::gso`),
    /// at `offset` in the outer type.
    fn member<U, F>(c: &str, offset: usize, _get: fn(&U) -> F) -> Self {
        Self {
            c: c.to_owned(),
            offset,
            size: size_of::<F>(),
            align: align_of::<F>(),
            sign: Some(sign_of::<F>()),
            ver: None,
            pad: false,
        }
    }

    /// Marks an explicit padding field (implicit padding in C).
    fn pad(mut self) -> Self {
        self.pad = true;
        self
    }

    /// The C field is a pointer (guest handle member); skip signedness.
    fn no_sign(mut self) -> Self {
        self.sign = None;
        self
    }

    fn since(mut self, min: u32) -> Self {
        self.ver = Some(since(min));
        self
    }
}

/// `f!(T, field)`, `f!(T, field => "c designator")`,
/// `f!(T, outer_offset, Inner, field => "c designator")` (nested member).
macro_rules! f {
    ($t:ty, $f:ident) => {
        f!($t, $f => stringify!($f))
    };
    ($t:ty, $f:ident => $c:expr) => {
        FieldSpec::new::<$t, _>($c, offset_of!($t, $f), |s: &$t| &s.$f)
    };
    ($t:ty, $outer:expr, $inner:ty, $f:ident => $c:expr) => {{
        let _ = std::marker::PhantomData::<$t>;
        FieldSpec::new::<$inner, _>($c, $outer + offset_of!($inner, $f), |s: &$inner| &s.$f)
    }};
}

/// `fields!(T; a, b, c)`: every listed field under its own name.
/// `fields!(T; a, b; pad _pad0)` also lists explicit padding fields.
macro_rules! fields {
    ($t:ty; $($f:ident),* $(,)? $(; pad $($p:ident),+ $(,)?)?) => {
        vec![$(f!($t, $f),)* $($(f!($t, $p).pad(),)+)?]
    };
}

/// A mirrored struct and the C type it must match.
struct StructSpec {
    rust: &'static str,
    /// C type name, or `__typeof__(...)` for anonymous members.
    c_type: String,
    size: usize,
    align: usize,
    /// C expression for the size, `None` to use `sizeof(c_type)`.
    size_expr: Option<String>,
    check_size: bool,
    check_align: bool,
    /// A C union: members overlap, and one of them fills the union.
    is_union: bool,
    ver: Ver,
    fields: Vec<FieldSpec>,
}

impl StructSpec {
    fn new<T>(c_type: &str, ver: Ver, fields: Vec<FieldSpec>) -> Self {
        let rust = type_name::<T>().rsplit("::").next().unwrap_or_default();
        Self {
            rust,
            c_type: c_type.to_owned(),
            size: size_of::<T>(),
            align: align_of::<T>(),
            size_expr: None,
            check_size: true,
            check_align: true,
            is_union: false,
            ver,
            fields,
        }
    }

    /// Compare the size with a C expression instead of `sizeof(c_type)`.
    fn size_expr(mut self, expr: &str) -> Self {
        self.size_expr = Some(expr.to_owned());
        self
    }

    /// The Rust struct is only a prefix of the C type: compare fields only.
    fn fields_only(mut self) -> Self {
        self.check_size = false;
        self.check_align = false;
        self
    }

    /// The type is a C union (members overlap at offset 0).
    fn union(mut self) -> Self {
        self.is_union = true;
        self
    }

    /// The C type's alignment also depends on members Rust does not mirror.
    fn no_align(mut self) -> Self {
        self.check_align = false;
        self
    }
}

/// `s!(T, "c type", ver, [fields])` builds a [`StructSpec`].
macro_rules! s {
    ($t:ty, $c:expr, $ver:expr, $fields:expr) => {
        StructSpec::new::<$t>($c, $ver, $fields)
    };
}

/// `__typeof__` of a member of a C type, for anonymous structs and unions.
fn member_type(c_type: &str, member: &str) -> String {
    format!("__typeof__((({c_type} *)0)->{member})")
}

/// What C prints for one check.
enum CValue {
    Int(String),
    Str(String),
}

/// One comparison between a Rust value and a C expression.
struct Check {
    what: String,
    rust: String,
    c: CValue,
    ver: Ver,
}

#[derive(Default)]
struct Table {
    checks: Vec<Check>,
    /// Structs whose listed fields do not cover every byte (a field was
    /// left out of the table).
    incomplete: Vec<String>,
}

/// Checks that the top-level fields of `spec` (listed fields plus explicit
/// padding) tile `0..size` exactly, or for a union that a member fills it;
/// so no Rust field can be missing from the table.
fn coverage_error(spec: &StructSpec) -> Option<String> {
    let mut top: Vec<(usize, usize, &str)> = spec
        .fields
        .iter()
        .filter(|f| !f.c.contains('.'))
        .map(|f| (f.offset, f.size, f.c.as_str()))
        .collect();
    if spec.is_union {
        let largest = top.iter().map(|f| f.1).max().unwrap_or(0);
        return (largest != spec.size || top.iter().any(|f| f.0 != 0)).then(|| {
            format!(
                "{}: union members {top:?} do not fill its {} bytes",
                spec.rust, spec.size
            )
        });
    }
    top.sort_unstable();
    let mut end = 0;
    for (offset, size, name) in &top {
        if *offset < end {
            return Some(format!(
                "{}: `{name}` at {offset} overlaps the field ending at {end}",
                spec.rust
            ));
        }
        if *offset != end {
            return Some(format!(
                "{}: bytes {end}..{offset} (before `{name}`) are not covered by any listed field",
                spec.rust
            ));
        }
        end = offset + size;
    }
    (end != spec.size).then(|| {
        format!(
            "{}: listed fields end at {end}, the struct is {} bytes",
            spec.rust, spec.size
        )
    })
}

impl Table {
    fn int(&mut self, what: impl Into<String>, rust: i128, c_expr: impl Into<String>, ver: Ver) {
        self.checks.push(Check {
            what: what.into(),
            rust: rust.to_string(),
            c: CValue::Int(c_expr.into()),
            ver,
        });
    }

    fn string(&mut self, what: impl Into<String>, rust: &str, c_expr: impl Into<String>, ver: Ver) {
        self.checks.push(Check {
            what: what.into(),
            rust: rust.to_owned(),
            c: CValue::Str(c_expr.into()),
            ver,
        });
    }

    fn strukt(&mut self, spec: StructSpec) {
        if let Some(err) = coverage_error(&spec) {
            self.incomplete.push(err);
        }
        let StructSpec {
            rust,
            c_type,
            size,
            align,
            size_expr,
            check_size,
            check_align,
            ver,
            fields,
            ..
        } = spec;
        let name = format!("{rust} (C `{c_type}`)");
        if check_size {
            let expr = size_expr.unwrap_or_else(|| format!("sizeof({c_type})"));
            self.int(format!("{name}: size"), size as i128, expr, ver);
        }
        if check_align {
            self.int(
                format!("{name}: alignment"),
                align as i128,
                format!("_Alignof({c_type})"),
                ver,
            );
        }
        for field in fields.into_iter().filter(|f| !f.pad) {
            let fver = field.ver.unwrap_or(ver);
            let member = format!("(({c_type} *)0)->{}", field.c);
            let what = format!("{rust}.{} (C `{c_type}`)", field.c);
            let c = &field.c;
            self.int(
                format!("{what}: offset"),
                field.offset as i128,
                format!("offsetof({c_type}, {c})"),
                fver,
            );
            self.int(
                format!("{what}: size"),
                field.size as i128,
                format!("sizeof({member})"),
                fver,
            );
            self.int(
                format!("{what}: alignment"),
                field.align as i128,
                format!("__alignof__({member})"),
                fver,
            );
            if let Some(sign) = field.sign {
                self.int(
                    format!("{what}: signedness (1 signed, 0 unsigned, 2 other)"),
                    sign,
                    format!("SIGNOF({member})"),
                    fver,
                );
            }
        }
    }

    /// A typedef: size and signedness.
    fn typedef<T>(&mut self, c_name: &str, ver: Ver) {
        self.int(
            format!("typedef {c_name}: size"),
            size_of::<T>() as i128,
            format!("sizeof({c_name})"),
            ver,
        );
        self.int(
            format!("typedef {c_name}: signedness"),
            sign_of::<T>(),
            format!("SIGNOF(({c_name})0)"),
            ver,
        );
    }
}

/// `consts!(t, ver; A, B, ...)`: numeric constants with the same name in
/// Rust and C.
macro_rules! consts {
    ($t:expr, $ver:expr; $($name:ident),* $(,)?) => {
        $( $t.int(stringify!($name), $name as i128, stringify!($name), $ver); )*
    };
}

/// `typedefs!(t, ver; A, B, ...)`: type aliases with the same name in Rust and C.
macro_rules! typedefs {
    ($t:expr, $ver:expr; $($name:ident),* $(,)?) => {
        $( $t.typedef::<$name>(stringify!($name), $ver); )*
    };
}

#[allow(clippy::too_many_lines)]
fn rust_table() -> Table {
    let mut t = Table::default();

    // --- xen.h, arch-x86/xen.h, arch-x86/xen-x86_64.h -----------------------
    typedefs!(t, ALL; domid_t, xen_ulong_t, xen_pfn_t, evtchn_port_t, grant_ref_t,
        grant_handle_t, event_word_t, RING_IDX, XENCONS_RING_IDX, XENSTORE_RING_IDX,
        blkif_vdev_t, blkif_sector_t);
    typedefs!(t, since(GRANT_V2); grant_status_t);
    // Guest handles are structs from 0x00030201 on (plain pointers before).
    t.strukt(s!(
        xen_guest_handle,
        "__guest_handle_xen_pfn_t",
        since(STRUCT_HANDLES),
        vec![f!(xen_guest_handle, p).no_sign()]
    ));
    consts!(t, ALL; __XEN_LATEST_INTERFACE_VERSION__,
        DOMID_FIRST_RESERVED, DOMID_SELF, DOMID_IO, DOMID_XEN, DOMID_COW, DOMID_INVALID,
        DOMID_IDLE, DOMID_MASK,
        VIRQ_TIMER, VIRQ_DEBUG, VIRQ_CONSOLE, VIRQ_DOM_EXC, VIRQ_TBUF, VIRQ_DEBUGGER,
        VIRQ_XENOPROF, VIRQ_CON_RING, VIRQ_PCPU_STATE, VIRQ_MEM_EVENT, VIRQ_ARGO, VIRQ_ENOMEM,
        VIRQ_XENPMU, VIRQ_ARCH_0, VIRQ_ARCH_1, VIRQ_ARCH_2, VIRQ_ARCH_3, VIRQ_ARCH_4,
        VIRQ_ARCH_5, VIRQ_ARCH_6, VIRQ_ARCH_7, NR_VIRQS,
        __HYPERVISOR_set_trap_table, __HYPERVISOR_mmu_update, __HYPERVISOR_set_gdt,
        __HYPERVISOR_stack_switch, __HYPERVISOR_set_callbacks, __HYPERVISOR_fpu_taskswitch,
        __HYPERVISOR_sched_op_compat, __HYPERVISOR_platform_op, __HYPERVISOR_set_debugreg,
        __HYPERVISOR_get_debugreg, __HYPERVISOR_update_descriptor, __HYPERVISOR_memory_op,
        __HYPERVISOR_multicall, __HYPERVISOR_update_va_mapping, __HYPERVISOR_set_timer_op,
        __HYPERVISOR_event_channel_op_compat, __HYPERVISOR_xen_version,
        __HYPERVISOR_console_io, __HYPERVISOR_physdev_op_compat, __HYPERVISOR_grant_table_op,
        __HYPERVISOR_vm_assist, __HYPERVISOR_update_va_mapping_otherdomain,
        __HYPERVISOR_iret, __HYPERVISOR_vcpu_op, __HYPERVISOR_set_segment_base,
        __HYPERVISOR_mmuext_op, __HYPERVISOR_xsm_op, __HYPERVISOR_nmi_op,
        __HYPERVISOR_callback_op, __HYPERVISOR_xenoprof_op, __HYPERVISOR_hvm_op,
        __HYPERVISOR_sysctl, __HYPERVISOR_domctl, __HYPERVISOR_kexec_op, __HYPERVISOR_tmem_op,
        __HYPERVISOR_argo_op, __HYPERVISOR_xenpmu_op, __HYPERVISOR_dm_op,
        __HYPERVISOR_hypfs_op, __HYPERVISOR_arch_0, __HYPERVISOR_arch_1, __HYPERVISOR_arch_2,
        __HYPERVISOR_arch_3, __HYPERVISOR_arch_4, __HYPERVISOR_arch_5, __HYPERVISOR_arch_6,
        __HYPERVISOR_arch_7, CONSOLEIO_write, CONSOLEIO_read,
        XEN_LEGACY_MAX_VCPUS, XEN_PVCLOCK_TSC_STABLE_BIT, XEN_PVCLOCK_GUEST_STOPPED,
        SIF_PRIVILEGED, SIF_INITDOMAIN, SIF_MULTIBOOT_MOD, SIF_MOD_START_PFN,
        SIF_VIRT_P2M_4TOOLS, SIF_PM_MASK, MAX_GUEST_CMDLINE,
        SCHEDOP_yield, SCHEDOP_block, SCHEDOP_shutdown, SCHEDOP_poll, SCHEDOP_remote_shutdown,
        SCHEDOP_shutdown_code, SCHEDOP_watchdog, SCHEDOP_pin_override,
        SHUTDOWN_poweroff, SHUTDOWN_reboot, SHUTDOWN_suspend, SHUTDOWN_crash,
        SHUTDOWN_watchdog, SHUTDOWN_soft_reset, SHUTDOWN_MAX);
    // Before these versions the header aliases them to the `_compat` numbers.
    consts!(t, since(0x0003_0101); __HYPERVISOR_sched_op);
    consts!(t, since(0x0003_0202); __HYPERVISOR_event_channel_op, __HYPERVISOR_physdev_op);
    t.int(
        "BITS_PER_EVTCHN_WORD",
        BITS_PER_EVTCHN_WORD as i128,
        "sizeof(xen_ulong_t) * 8",
        ALL,
    );

    t.strukt(s!(
        vcpu_time_info,
        "struct vcpu_time_info",
        ALL,
        vec![
            f!(vcpu_time_info, version),
            f!(vcpu_time_info, pad0),
            f!(vcpu_time_info, tsc_timestamp),
            f!(vcpu_time_info, system_time),
            f!(vcpu_time_info, tsc_to_system_mul),
            f!(vcpu_time_info, tsc_shift),
            f!(vcpu_time_info, flags).since(PVCLOCK_FLAGS),
            f!(vcpu_time_info, pad1).since(PVCLOCK_FLAGS),
        ]
    ));
    t.strukt(s!(
        arch_vcpu_info,
        "struct arch_vcpu_info",
        ALL,
        fields!(arch_vcpu_info; cr2, pad)
    ));
    t.strukt(s!(
        vcpu_info,
        "struct vcpu_info",
        ALL,
        fields!(vcpu_info;
        evtchn_upcall_pending, evtchn_upcall_mask, evtchn_pending_sel, arch, time; pad _pad0)
    ));
    t.strukt(s!(
        arch_shared_info,
        "struct arch_shared_info",
        ALL,
        fields!(arch_shared_info;
        max_pfn, pfn_to_mfn_frame_list_list, nmi_reason, p2m_cr3, p2m_vaddr, p2m_generation)
    ));
    t.strukt(s!(
        shared_info,
        "struct shared_info",
        ALL,
        fields!(shared_info;
        vcpu_info, evtchn_pending, evtchn_mask, wc_version, wc_sec, wc_nsec, wc_sec_hi, arch)
    ));

    let console = offset_of!(start_info, console);
    t.strukt(
        s!(
            start_info_console,
            &member_type("struct start_info", "console"),
            ALL,
            vec![
                FieldSpec::member("domU", 0, start_info_console::domU),
                FieldSpec::member("dom0", 0, start_info_console::dom0),
            ]
        )
        .union(),
    );
    t.strukt(s!(
        start_info_console_domU,
        &member_type("struct start_info", "console.domU"),
        ALL,
        fields!(start_info_console_domU; mfn, evtchn; pad _pad0)
    ));
    t.strukt(s!(
        start_info_console_dom0,
        &member_type("struct start_info", "console.dom0"),
        ALL,
        fields!(start_info_console_dom0; info_off, info_size)
    ));
    let mut start_info_fields = fields!(start_info; magic, nr_pages, shared_info, flags,
        store_mfn, store_evtchn, console, pt_base, nr_pt_frames, mfn_list, mod_start, mod_len,
        cmd_line, first_p2m_pfn, nr_p2m_frames; pad _pad0, _pad1);
    start_info_fields.extend([
        f!(start_info, console, start_info_console_domU, mfn => "console.domU.mfn"),
        f!(start_info, console, start_info_console_domU, evtchn => "console.domU.evtchn"),
        f!(start_info, console, start_info_console_dom0, info_off => "console.dom0.info_off"),
        f!(start_info, console, start_info_console_dom0, info_size => "console.dom0.info_size"),
    ]);
    t.strukt(s!(start_info, "struct start_info", ALL, start_info_fields));

    // sched.h
    t.strukt(s!(
        sched_shutdown,
        "struct sched_shutdown",
        ALL,
        fields!(sched_shutdown; reason)
    ));
    t.strukt(s!(
        sched_poll,
        "struct sched_poll",
        ALL,
        vec![
            f!(sched_poll, ports),
            f!(sched_poll, nr_ports),
            f!(sched_poll, timeout),
            f!(sched_poll, _pad0).pad(),
        ]
    ));
    t.strukt(s!(
        sched_remote_shutdown,
        "struct sched_remote_shutdown",
        ALL,
        fields!(sched_remote_shutdown; domain_id, reason; pad _pad0)
    ));
    t.strukt(s!(
        sched_watchdog,
        "struct sched_watchdog",
        ALL,
        fields!(sched_watchdog; id, timeout)
    ));
    t.strukt(s!(
        sched_pin_override,
        "struct sched_pin_override",
        ALL,
        fields!(sched_pin_override; pcpu)
    ));

    // --- memory.h ----------------------------------------------------------
    t.strukt(s!(
        xen_memory_reservation,
        "struct xen_memory_reservation",
        since(0x0003_0209),
        fields!(xen_memory_reservation; extent_start, nr_extents, extent_order, mem_flags,
            domid; pad _pad0)
    ));
    consts!(t, ALL; XENMEM_increase_reservation, XENMEM_decrease_reservation,
        XENMEM_maximum_ram_page, XENMEM_current_reservation, XENMEM_maximum_reservation,
        XENMEM_populate_physmap);

    // --- grant_table.h ---------------------------------------------------
    t.strukt(s!(
        grant_entry_v1,
        "struct grant_entry_v1",
        ALL,
        fields!(grant_entry_v1; flags, domid, frame)
    ));
    consts!(t, ALL; GNTTAB_NR_RESERVED_ENTRIES, GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE,
        GTF_invalid, GTF_permit_access, GTF_accept_transfer, GTF_transitive, GTF_type_mask,
        _GTF_readonly, GTF_readonly, _GTF_reading, GTF_reading, _GTF_writing, GTF_writing,
        _GTF_PWT, GTF_PWT, _GTF_PCD, GTF_PCD, _GTF_PAT, GTF_PAT, _GTF_sub_page, GTF_sub_page,
        _GTF_transfer_committed, GTF_transfer_committed, _GTF_transfer_completed,
        GTF_transfer_completed,
        GNTTABOP_map_grant_ref, GNTTABOP_unmap_grant_ref, GNTTABOP_setup_table,
        GNTTABOP_dump_table, GNTTABOP_transfer, GNTTABOP_copy, GNTTABOP_query_size,
        GNTTABOP_unmap_and_replace,
        _GNTCOPY_source_gref, GNTCOPY_source_gref, _GNTCOPY_dest_gref, GNTCOPY_dest_gref,
        _GNTMAP_device_map, GNTMAP_device_map, _GNTMAP_host_map, GNTMAP_host_map,
        _GNTMAP_readonly, GNTMAP_readonly, _GNTMAP_application_map, GNTMAP_application_map,
        _GNTMAP_contains_pte, GNTMAP_contains_pte, _GNTMAP_guest_avail0,
        GNTMAP_guest_avail_mask,
        GNTST_okay, GNTST_general_error, GNTST_bad_domain, GNTST_bad_gntref, GNTST_bad_handle,
        GNTST_bad_virt_addr, GNTST_bad_dev_addr, GNTST_no_device_space,
        GNTST_permission_denied, GNTST_bad_page, GNTST_bad_copy_arg, GNTST_address_too_big,
        GNTST_eagain, GNTST_no_space);
    consts!(t, since(GRANT_V2); GNTTABOP_set_version, GNTTABOP_get_status_frames,
        GNTTABOP_get_version, GNTTABOP_swap_grant_ref, GNTTABOP_cache_flush,
        GNTTAB_CACHE_CLEAN, GNTTAB_CACHE_INVAL, GNTTAB_CACHE_SOURCE_GREF);
    t.int(
        "GNTTABOP_error_msgs: count",
        GNTTABOP_error_msgs.len() as i128,
        "sizeof(gnttabop_error_msgs) / sizeof(gnttabop_error_msgs[0])",
        ALL,
    );
    for (i, msg) in GNTTABOP_error_msgs.iter().enumerate() {
        t.string(
            format!("GNTTABOP_error_msgs[{i}]"),
            msg,
            format!("gnttabop_error_msgs[{i}]"),
            ALL,
        );
    }

    let v2 = since(GRANT_V2);
    t.strukt(s!(
        grant_entry_header,
        "struct grant_entry_header",
        v2,
        fields!(grant_entry_header; flags, domid)
    ));
    t.strukt(s!(grant_entry_v2, "union grant_entry_v2", v2, vec![
        FieldSpec::member("hdr", 0, grant_entry_v2::hdr),
        FieldSpec::member("full_page", 0, grant_entry_v2::full_page),
        FieldSpec::member("sub_page", 0, grant_entry_v2::sub_page),
        FieldSpec::member("transitive", 0, grant_entry_v2::transitive),
        FieldSpec::member("__spacer", 0, grant_entry_v2::__spacer),
        f!(grant_entry_v2, 0, grant_entry_header, flags => "hdr.flags"),
        f!(grant_entry_v2, 0, grant_entry_header, domid => "hdr.domid"),
        f!(grant_entry_v2, 0, grant_entry_v2_full_page, frame => "full_page.frame"),
        f!(grant_entry_v2, 0, grant_entry_v2_sub_page, page_off => "sub_page.page_off"),
        f!(grant_entry_v2, 0, grant_entry_v2_sub_page, length => "sub_page.length"),
        f!(grant_entry_v2, 0, grant_entry_v2_sub_page, frame => "sub_page.frame"),
        f!(grant_entry_v2, 0, grant_entry_v2_transitive, trans_domid => "transitive.trans_domid"),
        f!(grant_entry_v2, 0, grant_entry_v2_transitive, gref => "transitive.gref"),
    ]).union());
    t.strukt(s!(
        grant_entry_v2_full_page,
        &member_type("union grant_entry_v2", "full_page"),
        v2,
        fields!(grant_entry_v2_full_page; hdr, pad0, frame)
    ));
    t.strukt(s!(
        grant_entry_v2_sub_page,
        &member_type("union grant_entry_v2", "sub_page"),
        v2,
        fields!(grant_entry_v2_sub_page; hdr, page_off, length, frame)
    ));
    t.strukt(s!(
        grant_entry_v2_transitive,
        &member_type("union grant_entry_v2", "transitive"),
        v2,
        fields!(grant_entry_v2_transitive; hdr, trans_domid, pad0, gref)
    ));

    t.strukt(s!(
        gnttab_map_grant_ref,
        "struct gnttab_map_grant_ref",
        ALL,
        fields!(gnttab_map_grant_ref;
        host_addr, flags, r#ref, dom, status, handle, dev_bus_addr)
    ));
    t.strukt(s!(
        gnttab_unmap_grant_ref,
        "struct gnttab_unmap_grant_ref",
        ALL,
        fields!(gnttab_unmap_grant_ref; host_addr, dev_bus_addr, handle, status; pad _pad0)
    ));
    t.strukt(s!(
        gnttab_setup_table,
        "struct gnttab_setup_table",
        ALL,
        vec![
            f!(gnttab_setup_table, dom),
            f!(gnttab_setup_table, nr_frames),
            f!(gnttab_setup_table, status),
            f!(gnttab_setup_table, frame_list),
            f!(gnttab_setup_table, _pad0).pad(),
            f!(gnttab_setup_table, _pad1).pad(),
        ]
    ));
    t.strukt(s!(
        gnttab_dump_table,
        "struct gnttab_dump_table",
        ALL,
        fields!(gnttab_dump_table; dom, status)
    ));
    t.strukt(s!(
        gnttab_transfer,
        "struct gnttab_transfer",
        ALL,
        fields!(gnttab_transfer; mfn, domid, r#ref, status; pad _pad0, _pad1)
    ));
    t.strukt(
        s!(
            gnttab_copy_ptr_u,
            &member_type("struct gnttab_copy_ptr", "u"),
            ALL,
            vec![
                FieldSpec::member("ref", 0, gnttab_copy_ptr_u::r#ref),
                FieldSpec::member("gmfn", 0, gnttab_copy_ptr_u::gmfn),
            ]
        )
        .union(),
    );
    t.strukt(s!(
        gnttab_copy_ptr,
        "struct gnttab_copy_ptr",
        ALL,
        vec![
            f!(gnttab_copy_ptr, u),
            FieldSpec::member("u.ref", 0, gnttab_copy_ptr_u::r#ref),
            FieldSpec::member("u.gmfn", 0, gnttab_copy_ptr_u::gmfn),
            f!(gnttab_copy_ptr, domid),
            f!(gnttab_copy_ptr, offset),
            f!(gnttab_copy_ptr, _pad0).pad(),
        ]
    ));
    let source = offset_of!(gnttab_copy, source);
    let dest = offset_of!(gnttab_copy, dest);
    t.strukt(s!(
        gnttab_copy,
        "struct gnttab_copy",
        ALL,
        vec![
            f!(gnttab_copy, source),
            f!(gnttab_copy, dest),
            f!(gnttab_copy, len),
            f!(gnttab_copy, flags),
            f!(gnttab_copy, status),
            f!(gnttab_copy, dest, gnttab_copy_ptr, domid => "dest.domid"),
            f!(gnttab_copy, dest, gnttab_copy_ptr, offset => "dest.offset"),
            f!(gnttab_copy, source, gnttab_copy_ptr, offset => "source.offset"),
            FieldSpec::member("source.u.ref", source, gnttab_copy_ptr_u::r#ref),
            FieldSpec::member("dest.u.gmfn", dest, gnttab_copy_ptr_u::gmfn),
            f!(gnttab_copy, _pad0).pad(),
        ]
    ));
    t.strukt(s!(
        gnttab_query_size,
        "struct gnttab_query_size",
        ALL,
        fields!(gnttab_query_size; dom, nr_frames, max_nr_frames, status; pad _pad0, _pad1)
    ));
    t.strukt(s!(
        gnttab_unmap_and_replace,
        "struct gnttab_unmap_and_replace",
        ALL,
        fields!(gnttab_unmap_and_replace; host_addr, new_addr, handle, status; pad _pad0)
    ));
    t.strukt(s!(
        gnttab_set_version,
        "struct gnttab_set_version",
        v2,
        fields!(gnttab_set_version; version)
    ));
    t.strukt(s!(
        gnttab_get_status_frames,
        "struct gnttab_get_status_frames",
        v2,
        vec![
            f!(gnttab_get_status_frames, nr_frames),
            f!(gnttab_get_status_frames, dom),
            f!(gnttab_get_status_frames, status),
            f!(gnttab_get_status_frames, frame_list),
        ]
    ));
    t.strukt(s!(
        gnttab_get_version,
        "struct gnttab_get_version",
        v2,
        fields!(gnttab_get_version; dom, pad, version)
    ));
    t.strukt(s!(
        gnttab_swap_grant_ref,
        "struct gnttab_swap_grant_ref",
        v2,
        fields!(gnttab_swap_grant_ref; ref_a, ref_b, status; pad _pad0)
    ));
    t.strukt(
        s!(
            gnttab_cache_flush_a,
            &member_type("struct gnttab_cache_flush", "a"),
            v2,
            vec![
                FieldSpec::member("dev_bus_addr", 0, gnttab_cache_flush_a::dev_bus_addr),
                FieldSpec::member("ref", 0, gnttab_cache_flush_a::r#ref),
            ]
        )
        .union(),
    );
    t.strukt(s!(
        gnttab_cache_flush,
        "struct gnttab_cache_flush",
        v2,
        vec![
            f!(gnttab_cache_flush, a),
            f!(gnttab_cache_flush, offset),
            f!(gnttab_cache_flush, length),
            f!(gnttab_cache_flush, op),
            FieldSpec::member(
                "a.dev_bus_addr",
                offset_of!(gnttab_cache_flush, a),
                gnttab_cache_flush_a::dev_bus_addr
            ),
            FieldSpec::member(
                "a.ref",
                offset_of!(gnttab_cache_flush, a),
                gnttab_cache_flush_a::r#ref
            ),
        ]
    ));

    // --- event_channel.h -------------------------------------------------
    consts!(t, ALL; EVTCHNOP_bind_interdomain, EVTCHNOP_bind_virq, EVTCHNOP_bind_pirq,
        EVTCHNOP_close, EVTCHNOP_send, EVTCHNOP_status, EVTCHNOP_alloc_unbound,
        EVTCHNOP_bind_ipi, EVTCHNOP_bind_vcpu, EVTCHNOP_unmask, EVTCHNOP_reset,
        EVTCHNOP_init_control, EVTCHNOP_expand_array, EVTCHNOP_set_priority,
        BIND_PIRQ__WILL_SHARE,
        EVTCHNSTAT_closed, EVTCHNSTAT_unbound, EVTCHNSTAT_interdomain, EVTCHNSTAT_pirq,
        EVTCHNSTAT_virq, EVTCHNSTAT_ipi, EVTCHN_2L_NR_CHANNELS,
        EVTCHN_FIFO_PRIORITY_MAX, EVTCHN_FIFO_PRIORITY_DEFAULT, EVTCHN_FIFO_PRIORITY_MIN,
        EVTCHN_FIFO_MAX_QUEUES, EVTCHN_FIFO_PENDING, EVTCHN_FIFO_MASKED, EVTCHN_FIFO_LINKED,
        EVTCHN_FIFO_BUSY, EVTCHN_FIFO_LINK_BITS, EVTCHN_FIFO_LINK_MASK,
        EVTCHN_FIFO_NR_CHANNELS);
    t.strukt(s!(
        evtchn_alloc_unbound,
        "struct evtchn_alloc_unbound",
        ALL,
        fields!(evtchn_alloc_unbound; dom, remote_dom, port)
    ));
    t.strukt(s!(
        evtchn_bind_interdomain,
        "struct evtchn_bind_interdomain",
        ALL,
        fields!(evtchn_bind_interdomain; remote_dom, remote_port, local_port; pad _pad0)
    ));
    t.strukt(s!(
        evtchn_bind_virq,
        "struct evtchn_bind_virq",
        ALL,
        fields!(evtchn_bind_virq; virq, vcpu, port)
    ));
    t.strukt(s!(
        evtchn_bind_pirq,
        "struct evtchn_bind_pirq",
        ALL,
        fields!(evtchn_bind_pirq; pirq, flags, port)
    ));
    t.strukt(s!(
        evtchn_bind_ipi,
        "struct evtchn_bind_ipi",
        ALL,
        fields!(evtchn_bind_ipi; vcpu, port)
    ));
    t.strukt(s!(
        evtchn_close,
        "struct evtchn_close",
        ALL,
        fields!(evtchn_close; port)
    ));
    t.strukt(s!(
        evtchn_send,
        "struct evtchn_send",
        ALL,
        fields!(evtchn_send; port)
    ));
    t.strukt(
        s!(
            evtchn_status_u,
            &member_type("struct evtchn_status", "u"),
            ALL,
            vec![
                FieldSpec::member("unbound", 0, evtchn_status_u::unbound),
                FieldSpec::member("interdomain", 0, evtchn_status_u::interdomain),
                FieldSpec::member("pirq", 0, evtchn_status_u::pirq),
                FieldSpec::member("virq", 0, evtchn_status_u::virq),
            ]
        )
        .union(),
    );
    t.strukt(s!(
        evtchn_status_unbound,
        &member_type("struct evtchn_status", "u.unbound"),
        ALL,
        fields!(evtchn_status_unbound; dom)
    ));
    t.strukt(s!(
        evtchn_status_interdomain,
        &member_type("struct evtchn_status", "u.interdomain"),
        ALL,
        fields!(evtchn_status_interdomain; dom, port; pad _pad0)
    ));
    let u = offset_of!(evtchn_status, u);
    t.strukt(s!(
        evtchn_status,
        "struct evtchn_status",
        ALL,
        vec![
            f!(evtchn_status, dom),
            f!(evtchn_status, port),
            f!(evtchn_status, status),
            f!(evtchn_status, vcpu),
            f!(evtchn_status, u),
            f!(evtchn_status, u, evtchn_status_unbound, dom => "u.unbound.dom"),
            f!(evtchn_status, u, evtchn_status_interdomain, dom => "u.interdomain.dom"),
            f!(evtchn_status, u, evtchn_status_interdomain, port => "u.interdomain.port"),
            FieldSpec::member("u.pirq", u, evtchn_status_u::pirq),
            FieldSpec::member("u.virq", u, evtchn_status_u::virq),
            f!(evtchn_status, _pad0).pad(),
        ]
    ));
    t.strukt(s!(
        evtchn_bind_vcpu,
        "struct evtchn_bind_vcpu",
        ALL,
        fields!(evtchn_bind_vcpu; port, vcpu)
    ));
    t.strukt(s!(
        evtchn_unmask,
        "struct evtchn_unmask",
        ALL,
        fields!(evtchn_unmask; port)
    ));
    t.strukt(s!(
        evtchn_reset,
        "struct evtchn_reset",
        ALL,
        fields!(evtchn_reset; dom)
    ));
    t.strukt(s!(
        evtchn_init_control,
        "struct evtchn_init_control",
        ALL,
        fields!(evtchn_init_control; control_gfn, offset, vcpu, link_bits, _pad)
    ));
    t.strukt(s!(
        evtchn_expand_array,
        "struct evtchn_expand_array",
        ALL,
        fields!(evtchn_expand_array; array_gfn)
    ));
    t.strukt(s!(
        evtchn_set_priority,
        "struct evtchn_set_priority",
        ALL,
        fields!(evtchn_set_priority; port, priority)
    ));
    t.strukt(s!(
        evtchn_fifo_control_block,
        "struct evtchn_fifo_control_block",
        ALL,
        fields!(evtchn_fifo_control_block; ready, _rsvd, head)
    ));

    // --- io/ring.h ---------------------------------------------------------
    for sring in [
        "struct blkif_sring",
        "struct netif_tx_sring",
        "struct netif_rx_sring",
        "struct xen_netif_ctrl_sring",
    ] {
        t.strukt(
            s!(
                sring_header,
                sring,
                ALL,
                fields!(sring_header; req_prod, req_event, rsp_prod, rsp_event, pvt, __pad)
            )
            .size_expr(&format!("offsetof({sring}, ring)"))
            .no_align(),
        );
    }
    t.int(
        "SRING_REQ_PROD_OFFSET",
        SRING_REQ_PROD_OFFSET as i128,
        "offsetof(struct blkif_sring, req_prod)",
        ALL,
    );
    t.int(
        "SRING_REQ_EVENT_OFFSET",
        SRING_REQ_EVENT_OFFSET as i128,
        "offsetof(struct blkif_sring, req_event)",
        ALL,
    );
    t.int(
        "SRING_RSP_PROD_OFFSET",
        SRING_RSP_PROD_OFFSET as i128,
        "offsetof(struct blkif_sring, rsp_prod)",
        ALL,
    );
    t.int(
        "SRING_RSP_EVENT_OFFSET",
        SRING_RSP_EVENT_OFFSET as i128,
        "offsetof(struct blkif_sring, rsp_event)",
        ALL,
    );
    t.int(
        "SRING_PVT_OFFSET",
        SRING_PVT_OFFSET as i128,
        "offsetof(struct blkif_sring, pvt)",
        ALL,
    );
    t.int(
        "SRING_PVT_SIZE",
        SRING_PVT_SIZE as i128,
        "sizeof(((struct blkif_sring *)0)->pvt)",
        ALL,
    );
    t.int(
        "SRING_PAD_OFFSET",
        SRING_PAD_OFFSET as i128,
        "offsetof(struct blkif_sring, __pad)",
        ALL,
    );
    t.int(
        "SRING_PAD_SIZE",
        SRING_PAD_SIZE as i128,
        "sizeof(((struct blkif_sring *)0)->__pad)",
        ALL,
    );
    t.int(
        "SRING_RING_OFFSET",
        SRING_RING_OFFSET as i128,
        "offsetof(struct blkif_sring, ring)",
        ALL,
    );
    for (name, rust, c) in [
        (
            "BLKIF_RING_SIZE",
            BLKIF_RING_SIZE,
            "__CONST_RING_SIZE(blkif, 4096)",
        ),
        (
            "NETIF_TX_RING_SIZE",
            NETIF_TX_RING_SIZE,
            "__CONST_RING_SIZE(netif_tx, 4096)",
        ),
        (
            "NETIF_RX_RING_SIZE",
            NETIF_RX_RING_SIZE,
            "__CONST_RING_SIZE(netif_rx, 4096)",
        ),
        (
            "XEN_NETIF_CTRL_RING_SIZE",
            XEN_NETIF_CTRL_RING_SIZE,
            "__CONST_RING_SIZE(xen_netif_ctrl, 4096)",
        ),
        (
            "const_ring_size(4096, 112)",
            const_ring_size(4096, 112),
            "__CONST_RING_SIZE(blkif, 4096)",
        ),
        (
            "const_ring_size(4096, 12)",
            const_ring_size(4096, 12),
            "__CONST_RING_SIZE(netif_tx, 4096)",
        ),
        (
            "const_ring_size(4096, 8)",
            const_ring_size(4096, 8),
            "__CONST_RING_SIZE(netif_rx, 4096)",
        ),
        (
            "blkif_ring_size(4)",
            blkif_ring_size(4),
            "__CONST_RING_SIZE(blkif, 4 * 4096)",
        ),
        (
            "BLKIF_SRING_ENTRY_SIZE",
            BLKIF_SRING_ENTRY_SIZE,
            "sizeof(union blkif_sring_entry)",
        ),
        (
            "NETIF_TX_SRING_ENTRY_SIZE",
            NETIF_TX_SRING_ENTRY_SIZE,
            "sizeof(union netif_tx_sring_entry)",
        ),
        (
            "NETIF_RX_SRING_ENTRY_SIZE",
            NETIF_RX_SRING_ENTRY_SIZE,
            "sizeof(union netif_rx_sring_entry)",
        ),
        (
            "XEN_NETIF_CTRL_SRING_ENTRY_SIZE",
            XEN_NETIF_CTRL_SRING_ENTRY_SIZE,
            "sizeof(union xen_netif_ctrl_sring_entry)",
        ),
        (
            "BLKIF_SEGS_PER_INDIRECT_FRAME",
            BLKIF_SEGS_PER_INDIRECT_FRAME,
            "4096 / sizeof(struct blkif_request_segment)",
        ),
    ] {
        t.int(name, rust as i128, c, ALL);
    }

    // --- io/blkif.h --------------------------------------------------------
    consts!(t, ALL; BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
        BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_RESERVED_1, BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT,
        BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
        BLKIF_DISCARD_SECURE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
        VDISK_CDROM, VDISK_REMOVABLE, VDISK_READONLY);
    t.strukt(s!(
        blkif_request_segment,
        "struct blkif_request_segment",
        ALL,
        fields!(blkif_request_segment; gref, first_sect, last_sect; pad _pad0)
    ));
    t.strukt(s!(
        blkif_request,
        "struct blkif_request",
        ALL,
        fields!(blkif_request;
        operation, nr_segments, handle, id, sector_number, seg; pad _pad0)
    ));
    t.strukt(s!(
        blkif_request_discard,
        "struct blkif_request_discard",
        ALL,
        fields!(blkif_request_discard;
        operation, flag, handle, id, sector_number, nr_sectors; pad _pad0)
    ));
    t.strukt(s!(
        blkif_request_indirect,
        "struct blkif_request_indirect",
        ALL,
        fields!(blkif_request_indirect;
        operation, indirect_op, nr_segments, id, sector_number, handle, indirect_grefs;
        pad _pad0, _pad1, _pad2)
    ));
    t.strukt(s!(
        blkif_response,
        "struct blkif_response",
        ALL,
        fields!(blkif_response; id, operation, status; pad _pad0, _pad1)
    ));
    // Not in Xen's blkif.h (Linux's struct): its fields overlay blkif_request.
    t.strukt(
        s!(
            blkif_request_other,
            "struct blkif_request",
            ALL,
            vec![
                f!(blkif_request_other, operation),
                f!(blkif_request_other, _pad1 => "nr_segments"),
                f!(blkif_request_other, _pad2 => "handle"),
                f!(blkif_request_other, id),
                f!(blkif_request_other, _pad3).pad(),
            ]
        )
        .fields_only(),
    );

    // --- io/netif.h --------------------------------------------------------
    consts!(t, ALL; XEN_NETIF_NR_SLOTS_MIN, XEN_NETIF_MAX_TX_SIZE,
        _NETTXF_csum_blank, NETTXF_csum_blank, _NETTXF_data_validated, NETTXF_data_validated,
        _NETTXF_more_data, NETTXF_more_data, _NETTXF_extra_info, NETTXF_extra_info,
        XEN_NETIF_EXTRA_TYPE_NONE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
        XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_EXTRA_TYPE_HASH, XEN_NETIF_EXTRA_TYPE_MAX,
        _XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_FLAG_MORE,
        XEN_NETIF_GSO_TYPE_NONE, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6,
        _NETRXF_data_validated, NETRXF_data_validated, _NETRXF_csum_blank, NETRXF_csum_blank,
        _NETRXF_more_data, NETRXF_more_data, _NETRXF_extra_info, NETRXF_extra_info,
        _NETRXF_gso_prefix, NETRXF_gso_prefix,
        NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETIF_RSP_NULL,
        _XEN_NETIF_CTRL_HASH_TYPE_IPV4, XEN_NETIF_CTRL_HASH_TYPE_IPV4,
        _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
        _XEN_NETIF_CTRL_HASH_TYPE_IPV6, XEN_NETIF_CTRL_HASH_TYPE_IPV6,
        _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP, XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
        XEN_NETIF_CTRL_HASH_ALGORITHM_NONE, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ,
        XEN_NETIF_CTRL_TYPE_INVALID, XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS,
        XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
        XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
        XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
        XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE, XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING,
        XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING,
        XEN_NETIF_CTRL_STATUS_SUCCESS, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED,
        XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER, XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW,
        _XEN_NETIF_CTRLF_GREF_readonly, XEN_NETIF_CTRLF_GREF_readonly);
    t.strukt(s!(
        netif_tx_request,
        "struct netif_tx_request",
        ALL,
        fields!(netif_tx_request; gref, offset, flags, id, size)
    ));
    t.strukt(s!(
        netif_tx_response,
        "struct netif_tx_response",
        ALL,
        fields!(netif_tx_response; id, status)
    ));
    t.strukt(s!(
        netif_rx_request,
        "struct netif_rx_request",
        ALL,
        fields!(netif_rx_request; id, pad, gref)
    ));
    t.strukt(s!(
        netif_rx_response,
        "struct netif_rx_response",
        ALL,
        fields!(netif_rx_response; id, offset, flags, status)
    ));
    t.strukt(
        s!(
            netif_extra_info_u,
            &member_type("struct netif_extra_info", "u"),
            ALL,
            vec![
                FieldSpec::member("gso", 0, netif_extra_info_u::gso),
                FieldSpec::member("mcast", 0, netif_extra_info_u::mcast),
                FieldSpec::member("hash", 0, netif_extra_info_u::hash),
                FieldSpec::member("pad", 0, netif_extra_info_u::pad),
            ]
        )
        .union(),
    );
    t.strukt(s!(
        netif_extra_info_gso,
        &member_type("struct netif_extra_info", "u.gso"),
        ALL,
        fields!(netif_extra_info_gso; size, r#type, pad, features)
    ));
    t.strukt(s!(
        netif_extra_info_mcast,
        &member_type("struct netif_extra_info", "u.mcast"),
        ALL,
        fields!(netif_extra_info_mcast; addr)
    ));
    t.strukt(s!(
        netif_extra_info_hash,
        &member_type("struct netif_extra_info", "u.hash"),
        ALL,
        fields!(netif_extra_info_hash; r#type, algorithm, value)
    ));
    let u = offset_of!(netif_extra_info, u);
    t.strukt(s!(
        netif_extra_info,
        "struct netif_extra_info",
        ALL,
        vec![
            f!(netif_extra_info, r#type),
            f!(netif_extra_info, flags),
            f!(netif_extra_info, u),
            f!(netif_extra_info, u, netif_extra_info_gso, size => "u.gso.size"),
            f!(netif_extra_info, u, netif_extra_info_gso, r#type => "u.gso.type"),
            f!(netif_extra_info, u, netif_extra_info_gso, pad => "u.gso.pad"),
            f!(netif_extra_info, u, netif_extra_info_gso, features => "u.gso.features"),
            f!(netif_extra_info, u, netif_extra_info_mcast, addr => "u.mcast.addr"),
            f!(netif_extra_info, u, netif_extra_info_hash, r#type => "u.hash.type"),
            f!(netif_extra_info, u, netif_extra_info_hash, algorithm => "u.hash.algorithm"),
            f!(netif_extra_info, u, netif_extra_info_hash, value => "u.hash.value"),
            FieldSpec::member("u.pad", u, netif_extra_info_u::pad),
        ]
    ));
    t.strukt(s!(
        xen_netif_ctrl_request,
        "struct xen_netif_ctrl_request",
        ALL,
        fields!(xen_netif_ctrl_request; id, r#type, data)
    ));
    t.strukt(s!(
        xen_netif_ctrl_response,
        "struct xen_netif_ctrl_response",
        ALL,
        fields!(xen_netif_ctrl_response; id, r#type, status, data)
    ));
    t.strukt(s!(
        xen_netif_gref,
        "struct xen_netif_gref",
        ALL,
        fields!(xen_netif_gref; r#ref, flags, status)
    ));

    // --- io/console.h ------------------------------------------------------
    t.strukt(s!(
        xencons_interface,
        "struct xencons_interface",
        ALL,
        fields!(xencons_interface;
        r#in, out, in_cons, in_prod, out_cons, out_prod)
    ));
    t.int(
        "XENCONS_IN_SIZE",
        XENCONS_IN_SIZE as i128,
        "sizeof(((struct xencons_interface *)0)->in)",
        ALL,
    );
    t.int(
        "XENCONS_OUT_SIZE",
        XENCONS_OUT_SIZE as i128,
        "sizeof(((struct xencons_interface *)0)->out)",
        ALL,
    );
    t.int(
        "MASK_XENCONS_IDX(1027, in)",
        MASK_XENCONS_IDX(1027, XENCONS_IN_SIZE) as i128,
        "MASK_XENCONS_IDX(1027, ((struct xencons_interface *)0)->in)",
        ALL,
    );

    // --- io/xs_wire.h ------------------------------------------------------
    consts!(t, ALL; XS_CONTROL, XS_DEBUG, XS_DIRECTORY, XS_READ, XS_GET_PERMS, XS_WATCH,
        XS_UNWATCH, XS_TRANSACTION_START, XS_TRANSACTION_END, XS_INTRODUCE, XS_RELEASE,
        XS_GET_DOMAIN_PATH, XS_WRITE, XS_MKDIR, XS_RM, XS_SET_PERMS, XS_WATCH_EVENT, XS_ERROR,
        XS_IS_DOMAIN_INTRODUCED, XS_RESUME, XS_SET_TARGET, XS_RESET_WATCHES, XS_DIRECTORY_PART,
        XS_INVALID, XS_WATCH_PATH, XS_WATCH_TOKEN,
        XENSTORE_RING_SIZE, XENSTORE_PAYLOAD_MAX, XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX,
        XENSTORE_SERVER_FEATURE_RECONNECTION, XENSTORE_SERVER_FEATURE_ERROR,
        XENSTORE_CONNECTED, XENSTORE_RECONNECT, XENSTORE_ERROR_NONE, XENSTORE_ERROR_COMM,
        XENSTORE_ERROR_RINGIDX, XENSTORE_ERROR_PROTO);
    // The enum must agree with the constants (and so with the header) up to 22.
    for ty in xsd_sockmsg_type::ALL
        .iter()
        .filter(|t| t.as_u32() <= XS_DIRECTORY_PART)
    {
        t.int(
            format!("xsd_sockmsg_type::{ty:?}"),
            ty.as_u32().into(),
            format!("{ty:?}"),
            ALL,
        );
    }
    t.int(
        "MASK_XENSTORE_IDX(1030)",
        MASK_XENSTORE_IDX(1030) as i128,
        "MASK_XENSTORE_IDX(1030)",
        ALL,
    );
    for (name, rust, c) in [
        ("XS_WRITE_NONE", XS_WRITE_NONE, "XS_WRITE_NONE"),
        ("XS_WRITE_CREATE", XS_WRITE_CREATE, "XS_WRITE_CREATE"),
        (
            "XS_WRITE_CREATE_EXCL",
            XS_WRITE_CREATE_EXCL,
            "XS_WRITE_CREATE_EXCL",
        ),
        (
            "XEN_IO_PROTO_ABI_X86_32",
            XEN_IO_PROTO_ABI_X86_32,
            "XEN_IO_PROTO_ABI_X86_32",
        ),
        (
            "XEN_IO_PROTO_ABI_X86_64",
            XEN_IO_PROTO_ABI_X86_64,
            "XEN_IO_PROTO_ABI_X86_64",
        ),
        (
            "XEN_IO_PROTO_ABI_ARM",
            XEN_IO_PROTO_ABI_ARM,
            "XEN_IO_PROTO_ABI_ARM",
        ),
        (
            "XEN_IO_PROTO_ABI_NATIVE",
            XEN_IO_PROTO_ABI_NATIVE,
            "XEN_IO_PROTO_ABI_NATIVE",
        ),
    ] {
        t.string(name, rust, c, ALL);
    }
    t.int(
        "XSD_ERRORS: count",
        XSD_ERRORS.len() as i128,
        "sizeof(xsd_errors) / sizeof(xsd_errors[0])",
        ALL,
    );
    for (i, (errnum, name)) in XSD_ERRORS.iter().enumerate() {
        t.int(
            format!("XSD_ERRORS[{i}].errnum ({name})"),
            (*errnum).into(),
            format!("xsd_errors[{i}].errnum"),
            ALL,
        );
        t.string(
            format!("XSD_ERRORS[{i}].errstring"),
            name,
            format!("xsd_errors[{i}].errstring"),
            ALL,
        );
    }
    t.strukt(s!(
        xsd_sockmsg,
        "struct xsd_sockmsg",
        ALL,
        fields!(xsd_sockmsg; r#type, req_id, tx_id, len)
    ));
    t.strukt(s!(
        xenstore_domain_interface,
        "struct xenstore_domain_interface",
        ALL,
        fields!(xenstore_domain_interface; req, rsp, req_cons, req_prod, rsp_cons, rsp_prod,
            server_features, connection, error)
    ));

    // --- io/xenbus.h -------------------------------------------------------
    for state in XenbusState::ALL {
        t.int(
            format!("XenbusState::{state:?}"),
            state.as_u32().into(),
            format!("XenbusState{state:?}"),
            ALL,
        );
    }
    t.int(
        "size of XenbusState",
        size_of::<XenbusState>() as i128,
        "sizeof(XenbusState)",
        ALL,
    );

    t
}

// ---------------------------------------------------------------------------
// The C side.

/// The C program: includes the headers and prints `k<index>\t<value>` for
/// every check that exists at the compiled interface version.
fn c_program(table: &Table) -> String {
    let mut c = String::from(
        r#"/* Generated by xen-abi tests/layout.rs; do not edit. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <errno.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>
#include <xen/sched.h>
#include <xen/memory.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
#include <xen/io/console.h>
#include <xen/io/xs_wire.h>
#include <xen/io/xenbus.h>
#include <xen/io/protocols.h>

/* 1: signed integer, 0: unsigned integer, 2: anything else. Arrays decay
 * to pointers in _Generic, so they report 2 like structs and unions. */
#define SIGNOF(x) _Generic((x), \
    signed char: 1, short: 1, int: 1, long: 1, long long: 1, \
    unsigned char: 0, unsigned short: 0, unsigned int: 0, \
    unsigned long: 0, unsigned long long: 0, _Bool: 0, \
    char: ((char)-1 < 0), default: 2)

static const char *const gnttabop_error_msgs[] = GNTTABOP_error_msgs;

int main(void)
{
    printf("version\t%lld\n", (long long)(__XEN_INTERFACE_VERSION__));
"#,
    );
    for (i, check) in table.checks.iter().enumerate() {
        let guard = check.ver.c_guard();
        if let Some(g) = &guard {
            let _ = writeln!(c, "{g}");
        }
        let _ = writeln!(c, "    /* {} */", check.what.replace("*/", "* /"));
        match &check.c {
            CValue::Int(e) => {
                let _ = writeln!(c, "    printf(\"k{i}\\t%lld\\n\", (long long)({e}));");
            }
            CValue::Str(e) => {
                let _ = writeln!(c, "    printf(\"k{i}\\t%s\\n\", {e});");
            }
        }
        if guard.is_some() {
            let _ = writeln!(c, "#endif");
        }
    }
    c.push_str("    return 0;\n}\n");
    c
}

/// Panics, with what to install, unless `cc` and the Xen headers exist.
fn require_cc_and_headers() -> String {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    assert!(
        Path::new(XEN_HEADER).exists(),
        "{XEN_HEADER} is missing: the xen-abi layout test needs the Xen public headers; \
         install them with `apt-get install libxen-dev` (this test never skips)"
    );
    let probe = Command::new(&cc).arg("--version").output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "no working C compiler `{cc}` ({probe:?}): the xen-abi layout test compiles a C \
         program against /usr/include/xen; install one with `apt-get install gcc` \
         (and the headers with `apt-get install libxen-dev`); this test never skips"
    );
    cc
}

/// Compiles and runs the program with `defines`; returns the interface
/// version it was built at and its `key -> value` output.
fn run_c(
    cc: &str,
    dir: &Path,
    name: &str,
    source: &str,
    defines: &[&str],
) -> (u32, HashMap<String, String>) {
    let src = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&src, source).expect("write the generated C program");
    let out = Command::new(cc)
        .args(["-std=gnu11", "-O0", "-Wall", "-Wno-unused-function", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(defines)
        .output()
        .expect("spawn the C compiler");
    assert!(
        out.status.success(),
        "compiling {} with {defines:?} failed (the headers may not define what the table \
         expects):\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe)
        .output()
        .expect("run the compiled C program");
    assert!(run.status.success(), "{} failed: {:?}", exe.display(), run);
    let stdout = String::from_utf8(run.stdout).expect("C output is UTF-8");
    let mut values = HashMap::new();
    for line in stdout.lines() {
        let (key, value) = line
            .split_once('\t')
            .expect("C output lines are key\\tvalue");
        values.insert(key.to_owned(), value.to_owned());
    }
    let version = values
        .get("version")
        .and_then(|v| v.parse::<u32>().ok())
        .expect("C program prints its interface version first");
    (version, values)
}

/// Compares every check that exists at `version` with the C output.
fn compare(
    table: &Table,
    version: u32,
    c: &HashMap<String, String>,
    mismatches: &mut Vec<String>,
) -> usize {
    let mut compared = 0;
    for (i, check) in table.checks.iter().enumerate() {
        if !check.ver.contains(version) {
            continue;
        }
        compared += 1;
        match c.get(&format!("k{i}")) {
            None => mismatches.push(format!(
                "[__XEN_INTERFACE_VERSION__={version:#010x}] {}: not printed by the C program",
                check.what
            )),
            Some(value) if *value != check.rust => mismatches.push(format!(
                "[__XEN_INTERFACE_VERSION__={version:#010x}] {}: Rust {} != C {value}",
                check.what, check.rust
            )),
            Some(_) => {}
        }
    }
    compared
}

#[test]
fn test_layout_matches_xen_headers() {
    // Arrange
    let cc = require_cc_and_headers();
    let table = rust_table();
    let source = c_program(&table);
    let dir: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("xen-abi-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the test's temporary directory");

    // Act: once at the default (legacy) interface version, once at the
    // latest one, which exposes the grant table v2 definitions.
    let legacy = run_c(&cc, &dir, "layout_legacy", &source, &[]);
    let latest = run_c(
        &cc,
        &dir,
        "layout_latest",
        &source,
        &["-D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__"],
    );

    // Assert
    assert!(
        table.incomplete.is_empty(),
        "the layout table misses fields: {:?}",
        table.incomplete
    );
    assert_eq!(legacy.0, 0, "default interface version");
    assert_eq!(
        latest.0, __XEN_LATEST_INTERFACE_VERSION__,
        "latest interface version"
    );
    let mut mismatches = Vec::new();
    let n_legacy = compare(&table, legacy.0, &legacy.1, &mut mismatches);
    let n_latest = compare(&table, latest.0, &latest.1, &mut mismatches);
    assert!(
        mismatches.is_empty(),
        "xen-abi does not match the Xen headers in /usr/include/xen ({} mismatches; C program \
         in {}):\n  {}",
        mismatches.len(),
        dir.display(),
        mismatches.join("\n  ")
    );
    println!(
        "compared {n_legacy} values at the legacy interface and {n_latest} at {:#010x}",
        latest.0
    );
    assert_eq!(
        n_latest,
        table.checks.len(),
        "every check runs at the latest interface version"
    );
    assert!(
        n_legacy > 1000,
        "the legacy run compared only {n_legacy} values"
    );
    std::fs::remove_dir_all(&dir).expect("remove the test's temporary directory");
}

/// Every byte of every mirrored struct belongs to a field the table lists
/// (or to an explicit padding field), so no field escapes the C comparison.
#[test]
fn test_table_lists_every_field() {
    let table = rust_table();
    assert!(
        table.incomplete.is_empty(),
        "the layout table misses fields:\n  {}",
        table.incomplete.join("\n  ")
    );
}

#[test]
fn test_gntst_names_match_constant_names() {
    for (value, name) in [
        (GNTST_okay, "GNTST_okay"),
        (GNTST_general_error, "GNTST_general_error"),
        (GNTST_bad_domain, "GNTST_bad_domain"),
        (GNTST_bad_gntref, "GNTST_bad_gntref"),
        (GNTST_bad_handle, "GNTST_bad_handle"),
        (GNTST_bad_virt_addr, "GNTST_bad_virt_addr"),
        (GNTST_bad_dev_addr, "GNTST_bad_dev_addr"),
        (GNTST_no_device_space, "GNTST_no_device_space"),
        (GNTST_permission_denied, "GNTST_permission_denied"),
        (GNTST_bad_page, "GNTST_bad_page"),
        (GNTST_bad_copy_arg, "GNTST_bad_copy_arg"),
        (GNTST_address_too_big, "GNTST_address_too_big"),
        (GNTST_eagain, "GNTST_eagain"),
        (GNTST_no_space, "GNTST_no_space"),
    ] {
        assert_eq!(gntst_name(value), name);
    }
}

/// The numbers of `/work/shared/xen-abi-layout.txt` and the task's examples,
/// checked without a C compiler.
#[test]
fn test_documented_examples_hold() {
    assert_eq!(size_of::<blkif_request>(), 112);
    assert_eq!(offset_of!(blkif_request, seg), 24);
    assert_eq!(size_of::<blkif_response>(), 16);
    assert_eq!(size_of::<netif_tx_request>(), 12);
    assert_eq!(size_of::<netif_rx_response>(), 8);
    assert_eq!(size_of::<xenstore_domain_interface>(), 2076);
    assert_eq!(offset_of!(xenstore_domain_interface, req_cons), 2048);
    assert_eq!(size_of::<xencons_interface>(), 3088);
    assert_eq!(size_of::<shared_info>(), 3136);
    assert_eq!(offset_of!(shared_info, evtchn_pending), 2048);
    assert_eq!(offset_of!(shared_info, evtchn_mask), 2560);
    assert_eq!(size_of::<vcpu_info>(), 64);
    assert_eq!(
        const_ring_size(XEN_PAGE_SIZE, size_of::<blkif_request>()),
        32
    );
    assert_eq!(
        const_ring_size(XEN_PAGE_SIZE, size_of::<netif_tx_request>()),
        256
    );
    assert_eq!(
        const_ring_size(XEN_PAGE_SIZE, size_of::<netif_rx_response>()),
        256
    );
    assert_eq!(size_of::<grant_entry_v1>(), 8);
    assert_eq!(size_of::<grant_entry_v2>(), 16);
    assert_eq!(size_of::<xsd_sockmsg>(), 16);
    assert_eq!(size_of::<netif_extra_info>(), 8);
    assert_eq!(EVTCHN_2L_NR_CHANNELS, 4096);
}
