//! Xen 4.17's `xl save` file format, for PVHVM guests.
//!
//! A save file is the xl header (magic, flags, the domain's config as optional data),
//! then libxl's migration stream v2 (`LIBXC_CONTEXT`, `END`) wrapping libxc's stream
//! v3 for an HVM guest: `IMAGE_HEADER`, `DOMAIN_HEADER`, `STATIC_DATA_END`,
//! `PAGE_DATA` records (pfns with types, then the pages), `X86_TSC_INFO`,
//! `HVM_CONTEXT` (Xen's HVM save records: header, CPU, LAPIC, LAPIC_REGS, ...),
//! `HVM_PARAMS`, `END`. The specifications are Xen's
//! `docs/specs/libxl-migration-stream.pandoc` and `libxc-migration-stream.pandoc`;
//! Xen's `verify-stream-v2 -f xl` accepts what [`StreamWriter`] writes.
//!
//! The crate does no I/O beyond `Read`/`Write`. [`StreamWriter`] writes pages as they
//! come, so a saver never holds guest memory; [`read_save_file`] validates
//! everything with bounded allocation (a record's length is never trusted beyond
//! what the input actually holds and a per-type limit) and hands pages to a sink.

pub mod abi;
pub mod hvm;
mod read;
mod write;

pub use hvm::{HvmContext, HvmContextError, HvmRawEntry, HvmVcpu};
pub use read::{
    read_migration_stream, read_save_file, read_xl_header, read_xl_stream, PageSink, PageSinkError,
    StreamError,
};
pub use write::StreamWriter;

/// The first line our savers put before the config text in the xl header: the
/// config file's path (its relative paths resolve against its directory on
/// restore). An xl.cfg comment, so any xl reads the text unchanged.
pub const CONFIG_ORIGIN_MARK: &str = "# xl save: config file ";

/// The config file named by a [`CONFIG_ORIGIN_MARK`] line at the start of `config`.
pub fn config_origin(config: &[u8]) -> Option<std::path::PathBuf> {
    let text = std::str::from_utf8(config).ok()?;
    let line = text.lines().next()?;
    line.strip_prefix(CONFIG_ORIGIN_MARK)
        .map(std::path::PathBuf::from)
}

/// `config` with a [`CONFIG_ORIGIN_MARK`] line naming `path` (unless it has one).
pub fn with_config_origin(config: &[u8], path: &std::path::Path) -> Vec<u8> {
    if config_origin(config).is_some() {
        return config.to_vec();
    }
    let mut out = format!("{CONFIG_ORIGIN_MARK}{}\n", path.display()).into_bytes();
    out.extend_from_slice(config);
    out
}

/// The xl header's payload: the domain's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XlHeader {
    /// The config bytes (xl.cfg text, or libxl JSON when [`XlHeader::json`]).
    pub config: Vec<u8>,
    /// `XL_MANDATORY_FLAG_JSON`: the config is libxl's JSON.
    pub json: bool,
}

/// Everything of a saved domain except its pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainState {
    /// Xen version (major, minor) in the domain header.
    pub xen_version: (u32, u32),
    /// X86_TSC_INFO.
    pub tsc: abi::x86_tsc_info,
    /// HVM_CONTEXT.
    pub hvm: HvmContext,
    /// HVM_PARAMS: (index, value) pairs.
    pub params: Vec<(u64, u64)>,
    /// X86_CPUID_POLICY body (`xen_cpuid_leaf_t[]`), empty when absent.
    pub cpuid_policy: Vec<u8>,
    /// X86_MSR_POLICY body (`xen_msr_entry_t[]`), empty when absent.
    pub msr_policy: Vec<u8>,
}

impl DomainState {
    /// The value of HVM parameter `index`, if saved.
    pub fn param(&self, index: u64) -> Option<u64> {
        self.params
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, v)| *v)
    }
}
