//! The save file reader. It trusts nothing: every header field is checked, every
//! record's length is bounded by its type before anything is allocated, and bodies
//! are read in chunks so a length beyond the end of the input fails as truncation
//! once the input runs out, never as a huge allocation. Pages go straight to the
//! caller's sink, one at a time, after their pfn is checked against the domain's
//! memory; the records that describe the domain must come once each, in Xen's order.

use std::io::{self, Read};

use thiserror::Error;
use zerocopy::FromBytes;

use crate::abi::{
    libxc_rec, libxl_rec, x86_tsc_info, DHDR_TYPE_X86_HVM, DHDR_TYPE_X86_PV, IHDR_IDENT,
    IHDR_MARKER, LIBXL_IDENT, LIBXL_VERSION, MAX_BATCH_PAGES, PAGE_DATA_PFN_MASK,
    PAGE_DATA_RESERVED_MASK, PAGE_DATA_TYPE_SHIFT, PAGE_SHIFT, PAGE_SIZE, PAGE_TYPE_BROKEN,
    PAGE_TYPE_NOTAB, PAGE_TYPE_XALLOC, PAGE_TYPE_XTAB, XL_BYTEORDER, XL_MAGIC,
    XL_MANDATORY_FLAG_JSON, XL_MANDATORY_FLAG_STREAMV2,
};
use crate::hvm::{HvmContext, HvmContextError};
use crate::{DomainState, XlHeader};

/// Largest xl optional data (the config) accepted.
pub const MAX_OPTIONAL_DATA: u32 = 1 << 20;
/// Largest HVM_CONTEXT body accepted (Xen's contexts for 128 vCPUs fit easily).
pub const MAX_HVM_CONTEXT: u32 = 4 << 20;
/// Largest CPUID/MSR policy body accepted.
pub const MAX_POLICY: u32 = 64 << 10;
/// Most HVM params accepted (`HVM_NR_PARAMS` is 39).
pub const MAX_HVM_PARAMS: u32 = 256;
/// Bytes a body is read in at a time: allocation follows what the input holds.
const CHUNK: usize = 1 << 20;

/// The error a page sink may return.
pub type PageSinkError = Box<dyn std::error::Error + Send + Sync>;

/// Where the reader puts each page with data: `(pfn, page)`.
pub type PageSink<'a> = dyn FnMut(u64, &[u8]) -> Result<(), PageSinkError> + 'a;

/// Why a save file was refused.
#[derive(Debug, Error)]
pub enum StreamError {
    /// Reading the input failed.
    #[error("cannot read the save file")]
    Io(#[source] io::Error),
    /// The input ended early.
    #[error("the save file is truncated: it ends inside {0}")]
    Truncated(&'static str),
    /// No xl magic.
    #[error("not an xl save file (no \"Xen saved domain, xl format\" magic)")]
    BadXlMagic,
    /// The xl header's byte order marker is not this host's.
    #[error("the xl header's byte-order marker is {0:#010x}: the file was saved on a host of another byte order")]
    XlByteOrder(u32),
    /// The body is the legacy (v1) stream.
    #[error("the save file is a legacy (pre-Xen 4.6) stream, not libxl's stream v2")]
    LegacyStream,
    /// Mandatory flags this reader does not know.
    #[error("the xl header has unknown mandatory flags {0:#x}")]
    XlMandatoryFlags(u32),
    /// The xl header's optional data is malformed.
    #[error("the xl header's optional data is malformed: {0}")]
    XlOptionalData(&'static str),
    /// libxl header mismatch.
    #[error("bad libxl stream header: {0}")]
    LibxlHeader(String),
    /// libxl's stream version is not 2.
    #[error("libxl stream version {0} is not the version 2 this reader understands")]
    LibxlVersion(u32),
    /// libxc image or domain header mismatch.
    #[error("bad libxc image header: {0}")]
    ImageHeader(String),
    /// libxc's stream version is not 2 or 3.
    #[error("libxc stream version {0} is not 2 or 3")]
    ImageVersion(u32),
    /// The domain is PV or unknown.
    #[error("the saved domain is {0}; only HVM (PVHVM) domains can be restored here")]
    DomainType(&'static str),
    /// A record type nobody defines.
    #[error("unknown {stream} record type {rtype:#x}")]
    UnknownRecord {
        /// "libxl" or "libxc".
        stream: &'static str,
        /// Type.
        rtype: u32,
    },
    /// A record's length is outside its type's bounds.
    #[error("{rec} record has length {length}, expected {expected}")]
    RecordLength {
        /// Record name.
        rec: &'static str,
        /// Length found.
        length: u32,
        /// What was expected.
        expected: String,
    },
    /// A record's padding is not zero.
    #[error("{0} record's padding is not zero")]
    Padding(&'static str),
    /// A record's reserved field is not zero.
    #[error("{0} record's reserved field is not zero")]
    Reserved(&'static str),
    /// A record that only PV streams carry.
    #[error("{0} record belongs to PV guests' streams, not an HVM stream")]
    NotHvm(&'static str),
    /// A record this reader refuses.
    #[error("{rec} record is not supported: {why}")]
    Unsupported {
        /// Record name.
        rec: &'static str,
        /// Why.
        why: &'static str,
    },
    /// A record that may appear once appears again.
    #[error("{0} record appears twice")]
    Duplicate(&'static str),
    /// A record in the wrong place.
    #[error("{rec} record out of order: {why}")]
    OutOfOrder {
        /// Record name.
        rec: &'static str,
        /// Why.
        why: &'static str,
    },
    /// A record Xen always writes is missing.
    #[error("the stream ends without its {0} record")]
    Missing(&'static str),
    /// A PAGE_DATA entry with reserved bits set.
    #[error("PAGE_DATA entry {entry:#x} has reserved bits set")]
    PageReserved {
        /// The raw entry.
        entry: u64,
    },
    /// A page type that an HVM stream cannot carry.
    #[error("PAGE_DATA pfn {pfn:#x} has type {ptype:#x}, not one an HVM guest's page can have")]
    PageType {
        /// Pfn.
        pfn: u64,
        /// Type nibble.
        ptype: u64,
    },
    /// A page outside the domain's memory.
    #[error("PAGE_DATA pfn {pfn:#x} lies beyond the domain's {max_pfns} pages of memory")]
    PageBeyondMemory {
        /// Pfn.
        pfn: u64,
        /// Pages the domain has.
        max_pfns: u64,
    },
    /// HVM_CONTEXT is malformed.
    #[error("HVM_CONTEXT record is malformed")]
    HvmContext(#[from] HvmContextError),
    /// The page sink refused a page.
    #[error("cannot store page {pfn:#x}")]
    Sink {
        /// Pfn.
        pfn: u64,
        /// Why.
        #[source]
        source: PageSinkError,
    },
    /// The caller refused the config in the xl header.
    #[error("the save file's config is refused")]
    Config(#[source] PageSinkError),
    /// Bytes after libxl's END.
    #[error("the save file has data after its END record")]
    TrailingData,
}

fn io_err(e: io::Error, what: &'static str) -> StreamError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        StreamError::Truncated(what)
    } else {
        StreamError::Io(e)
    }
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<(), StreamError> {
    r.read_exact(buf).map_err(|e| io_err(e, what))
}

fn u32_le<R: Read>(r: &mut R, what: &'static str) -> Result<u32, StreamError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b, what)?;
    Ok(u32::from_le_bytes(b))
}

/// Read `len` bytes, allocating no more than has actually arrived plus one chunk.
fn read_body<R: Read>(r: &mut R, len: usize, what: &'static str) -> Result<Vec<u8>, StreamError> {
    let mut out = Vec::with_capacity(len.min(CHUNK));
    while out.len() < len {
        let start = out.len();
        let n = (len - start).min(CHUNK);
        out.resize(start + n, 0);
        read_exact(r, &mut out[start..], what)?;
    }
    Ok(out)
}

fn padded(length: u32) -> usize {
    (length as usize + 7) & !7
}

/// Read and check the padding after a body of `length` bytes.
fn read_padding<R: Read>(r: &mut R, length: u32, rec: &'static str) -> Result<(), StreamError> {
    let mut pad = [0u8; 8];
    let n = padded(length) - length as usize;
    read_exact(r, &mut pad[..n], rec)?;
    if pad.iter().any(|b| *b != 0) {
        return Err(StreamError::Padding(rec));
    }
    Ok(())
}

/// Read a whole record body of at most `max` bytes, with its padding.
fn read_record<R: Read>(
    r: &mut R,
    length: u32,
    max: u32,
    rec: &'static str,
) -> Result<Vec<u8>, StreamError> {
    if length > max {
        return Err(StreamError::RecordLength {
            rec,
            length,
            expected: format!("at most {max}"),
        });
    }
    let body = read_body(r, length as usize, rec)?;
    read_padding(r, length, rec)?;
    Ok(body)
}

fn exact_len(rec: &'static str, length: u32, expected: usize) -> Result<(), StreamError> {
    if length as usize != expected {
        return Err(StreamError::RecordLength {
            rec,
            length,
            expected: expected.to_string(),
        });
    }
    Ok(())
}

/// Read the xl header and its config; leaves `r` at the libxl stream.
pub fn read_xl_header<R: Read>(r: &mut R) -> Result<XlHeader, StreamError> {
    let mut magic = [0u8; 32];
    read_exact(r, &mut magic, "the xl header")?;
    if &magic != XL_MAGIC {
        return Err(StreamError::BadXlMagic);
    }
    let byteorder = u32_le(r, "the xl header")?;
    if byteorder != XL_BYTEORDER {
        return Err(StreamError::XlByteOrder(byteorder));
    }
    let mandatory = u32_le(r, "the xl header")?;
    let _optional = u32_le(r, "the xl header")?;
    let optlen = u32_le(r, "the xl header")?;
    if mandatory & !(XL_MANDATORY_FLAG_JSON | XL_MANDATORY_FLAG_STREAMV2) != 0 {
        return Err(StreamError::XlMandatoryFlags(mandatory));
    }
    if mandatory & XL_MANDATORY_FLAG_STREAMV2 == 0 {
        return Err(StreamError::LegacyStream);
    }
    if optlen > MAX_OPTIONAL_DATA {
        return Err(StreamError::XlOptionalData("longer than 1 MiB"));
    }
    let opt = read_body(r, optlen as usize, "the xl header's optional data")?;
    let config = match opt.get(..4) {
        None if opt.is_empty() => Vec::new(),
        None => {
            return Err(StreamError::XlOptionalData(
                "shorter than its config length",
            ))
        }
        Some(l) => {
            let len = u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize;
            opt.get(4..4 + len)
                .ok_or(StreamError::XlOptionalData(
                    "config length beyond the optional data",
                ))?
                .to_vec()
        }
    };
    Ok(XlHeader {
        config,
        json: mandatory & XL_MANDATORY_FLAG_JSON != 0,
    })
}

fn libxc_name(t: u32) -> &'static str {
    match t {
        libxc_rec::END => "END",
        libxc_rec::PAGE_DATA => "PAGE_DATA",
        libxc_rec::X86_PV_INFO => "X86_PV_INFO",
        libxc_rec::X86_PV_P2M_FRAMES => "X86_PV_P2M_FRAMES",
        libxc_rec::X86_PV_VCPU_BASIC => "X86_PV_VCPU_BASIC",
        libxc_rec::X86_PV_VCPU_EXTENDED => "X86_PV_VCPU_EXTENDED",
        libxc_rec::X86_PV_VCPU_XSAVE => "X86_PV_VCPU_XSAVE",
        libxc_rec::SHARED_INFO => "SHARED_INFO",
        libxc_rec::X86_TSC_INFO => "X86_TSC_INFO",
        libxc_rec::HVM_CONTEXT => "HVM_CONTEXT",
        libxc_rec::HVM_PARAMS => "HVM_PARAMS",
        libxc_rec::TOOLSTACK => "TOOLSTACK",
        libxc_rec::X86_PV_VCPU_MSRS => "X86_PV_VCPU_MSRS",
        libxc_rec::VERIFY => "VERIFY",
        libxc_rec::CHECKPOINT => "CHECKPOINT",
        libxc_rec::CHECKPOINT_DIRTY_PFN_LIST => "CHECKPOINT_DIRTY_PFN_LIST",
        libxc_rec::STATIC_DATA_END => "STATIC_DATA_END",
        libxc_rec::X86_CPUID_POLICY => "X86_CPUID_POLICY",
        libxc_rec::X86_MSR_POLICY => "X86_MSR_POLICY",
        _ => "unknown",
    }
}

/// What the libxc reader has seen so far.
#[derive(Default)]
struct Seen {
    version: u32,
    static_end: bool,
    pages: bool,
    tsc: Option<x86_tsc_info>,
    hvm: Option<HvmContext>,
    params: Option<Vec<(u64, u64)>>,
    cpuid: Option<Vec<u8>>,
    msr: Option<Vec<u8>>,
}

fn read_image_header<R: Read>(r: &mut R) -> Result<(u32, (u32, u32)), StreamError> {
    let mut h = [0u8; 24];
    read_exact(r, &mut h, "the libxc image header")?;
    let marker = u64::from_be_bytes(h[0..8].try_into().expect("8 bytes"));
    let ident = u32::from_be_bytes(h[8..12].try_into().expect("4 bytes"));
    let version = u32::from_be_bytes(h[12..16].try_into().expect("4 bytes"));
    let options = u16::from_be_bytes(h[16..18].try_into().expect("2 bytes"));
    let res1 = u16::from_be_bytes(h[18..20].try_into().expect("2 bytes"));
    let res2 = u32::from_be_bytes(h[20..24].try_into().expect("4 bytes"));
    if marker != IHDR_MARKER {
        return Err(StreamError::ImageHeader(format!(
            "marker {marker:#x} is not all ones"
        )));
    }
    if ident != IHDR_IDENT {
        return Err(StreamError::ImageHeader(format!(
            "ident {ident:#x} is not \"XENF\""
        )));
    }
    if !(2..=3).contains(&version) {
        return Err(StreamError::ImageVersion(version));
    }
    if options != 0 {
        return Err(StreamError::ImageHeader(format!(
            "options {options:#x}: not a little-endian stream or reserved bits set"
        )));
    }
    if res1 != 0 || res2 != 0 {
        return Err(StreamError::ImageHeader(
            "reserved fields are not zero".into(),
        ));
    }
    let mut d = [0u8; 16];
    read_exact(r, &mut d, "the libxc domain header")?;
    let gtype = u32::from_le_bytes(d[0..4].try_into().expect("4 bytes"));
    let page_shift = u16::from_le_bytes(d[4..6].try_into().expect("2 bytes"));
    let dres = u16::from_le_bytes(d[6..8].try_into().expect("2 bytes"));
    let major = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
    let minor = u32::from_le_bytes(d[12..16].try_into().expect("4 bytes"));
    match gtype {
        DHDR_TYPE_X86_HVM => {}
        DHDR_TYPE_X86_PV => return Err(StreamError::DomainType("an x86 PV domain")),
        _ => return Err(StreamError::DomainType("of an unknown type")),
    }
    if page_shift != PAGE_SHIFT {
        return Err(StreamError::ImageHeader(format!(
            "page shift {page_shift}, expected 12"
        )));
    }
    if dres != 0 {
        return Err(StreamError::ImageHeader(
            "domain header reserved field is not zero".into(),
        ));
    }
    Ok((version, (major, minor)))
}

/// Read one PAGE_DATA record whose header said `length`.
fn read_page_data<R: Read>(
    r: &mut R,
    length: u32,
    max_pfns: u64,
    sink: &mut PageSink<'_>,
) -> Result<(), StreamError> {
    const REC: &str = "PAGE_DATA";
    let max = 8 + MAX_BATCH_PAGES * 8 + MAX_BATCH_PAGES * PAGE_SIZE;
    if (length as usize) < 16 || length as usize > max {
        return Err(StreamError::RecordLength {
            rec: REC,
            length,
            expected: format!("16 to {max}"),
        });
    }
    let mut hdr = [0u8; 8];
    read_exact(r, &mut hdr, REC)?;
    let count = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes")) as usize;
    if u32::from_le_bytes(hdr[4..8].try_into().expect("4 bytes")) != 0 {
        return Err(StreamError::Reserved(REC));
    }
    if count == 0 || count > MAX_BATCH_PAGES || 8 + count * 8 > length as usize {
        return Err(StreamError::RecordLength {
            rec: REC,
            length,
            expected: format!("room for {count} pfns (1 to {MAX_BATCH_PAGES})"),
        });
    }
    let raw = read_body(r, count * 8, REC)?;
    let mut pfns = Vec::with_capacity(count);
    for e in raw.chunks_exact(8) {
        let entry = u64::from_le_bytes(e.try_into().expect("8 bytes"));
        if entry & PAGE_DATA_RESERVED_MASK != 0 {
            return Err(StreamError::PageReserved { entry });
        }
        let pfn = entry & PAGE_DATA_PFN_MASK;
        let ptype = entry >> PAGE_DATA_TYPE_SHIFT;
        match ptype {
            PAGE_TYPE_NOTAB | PAGE_TYPE_BROKEN | PAGE_TYPE_XALLOC | PAGE_TYPE_XTAB => {}
            _ => return Err(StreamError::PageType { pfn, ptype }),
        }
        if pfn >= max_pfns {
            return Err(StreamError::PageBeyondMemory { pfn, max_pfns });
        }
        pfns.push((pfn, ptype == PAGE_TYPE_NOTAB));
    }
    let with_data = pfns.iter().filter(|(_, d)| *d).count();
    exact_len(REC, length, 8 + count * 8 + with_data * PAGE_SIZE)?;
    let mut page = vec![0u8; PAGE_SIZE];
    for (pfn, _) in pfns.into_iter().filter(|(_, d)| *d) {
        read_exact(r, &mut page, REC)?;
        sink(pfn, &page).map_err(|source| StreamError::Sink { pfn, source })?;
    }
    read_padding(r, length, REC)
}

fn read_libxc<R: Read>(
    r: &mut R,
    max_pfns: u64,
    sink: &mut PageSink<'_>,
) -> Result<DomainState, StreamError> {
    let (version, xen_version) = read_image_header(r)?;
    let mut s = Seen {
        version,
        ..Default::default()
    };
    loop {
        let rtype = u32_le(r, "a libxc record header")?;
        let length = u32_le(r, "a libxc record header")?;
        let rec = libxc_name(rtype);
        match rtype {
            libxc_rec::END => {
                read_record(r, length, 0, rec)?;
                break;
            }
            libxc_rec::PAGE_DATA => {
                if s.version >= 3 && !s.static_end {
                    return Err(StreamError::OutOfOrder {
                        rec,
                        why: "before STATIC_DATA_END",
                    });
                }
                if s.tsc.is_some() || s.hvm.is_some() || s.params.is_some() {
                    return Err(StreamError::OutOfOrder {
                        rec,
                        why: "after the end-of-checkpoint records (TSC_INFO, HVM_CONTEXT, HVM_PARAMS)",
                    });
                }
                s.pages = true;
                read_page_data(r, length, max_pfns, sink)?;
            }
            libxc_rec::X86_PV_INFO
            | libxc_rec::X86_PV_P2M_FRAMES
            | libxc_rec::X86_PV_VCPU_BASIC
            | libxc_rec::X86_PV_VCPU_EXTENDED
            | libxc_rec::X86_PV_VCPU_XSAVE
            | libxc_rec::X86_PV_VCPU_MSRS
            | libxc_rec::SHARED_INFO => return Err(StreamError::NotHvm(rec)),
            libxc_rec::X86_TSC_INFO => {
                exact_len(rec, length, core::mem::size_of::<x86_tsc_info>())?;
                let body = read_record(r, length, length, rec)?;
                let t = x86_tsc_info::read_from_bytes(&body).expect("length checked");
                if t._res1 != 0 {
                    return Err(StreamError::Reserved(rec));
                }
                if s.tsc.replace(t).is_some() {
                    return Err(StreamError::Duplicate(rec));
                }
            }
            libxc_rec::HVM_CONTEXT => {
                if s.hvm.is_some() {
                    return Err(StreamError::Duplicate(rec));
                }
                let body = read_record(r, length, MAX_HVM_CONTEXT, rec)?;
                s.hvm = Some(HvmContext::parse(&body)?);
            }
            libxc_rec::HVM_PARAMS => {
                if s.params.is_some() {
                    return Err(StreamError::Duplicate(rec));
                }
                let body = read_record(r, length, 8 + 16 * MAX_HVM_PARAMS, rec)?;
                if body.len() < 8 {
                    return Err(StreamError::RecordLength {
                        rec,
                        length,
                        expected: "at least 8".into(),
                    });
                }
                let count = u32::from_le_bytes(body[0..4].try_into().expect("4 bytes")) as usize;
                if body[4..8] != [0; 4] {
                    return Err(StreamError::Reserved(rec));
                }
                exact_len(rec, length, 8 + 16 * count)?;
                let params = body[8..]
                    .chunks_exact(16)
                    .map(|e| {
                        (
                            u64::from_le_bytes(e[0..8].try_into().expect("8 bytes")),
                            u64::from_le_bytes(e[8..16].try_into().expect("8 bytes")),
                        )
                    })
                    .collect();
                s.params = Some(params);
            }
            libxc_rec::VERIFY => {
                read_record(r, length, 0, rec)?;
            }
            libxc_rec::STATIC_DATA_END => {
                if s.version < 3 {
                    return Err(StreamError::OutOfOrder {
                        rec,
                        why: "in a version 2 stream",
                    });
                }
                if s.static_end {
                    return Err(StreamError::Duplicate(rec));
                }
                read_record(r, length, 0, rec)?;
                s.static_end = true;
            }
            libxc_rec::X86_CPUID_POLICY | libxc_rec::X86_MSR_POLICY => {
                if s.version < 3 {
                    return Err(StreamError::OutOfOrder {
                        rec,
                        why: "in a version 2 stream",
                    });
                }
                if s.static_end {
                    return Err(StreamError::OutOfOrder {
                        rec,
                        why: "after STATIC_DATA_END",
                    });
                }
                let (entry, slot) = if rtype == libxc_rec::X86_CPUID_POLICY {
                    (24, &mut s.cpuid)
                } else {
                    (16, &mut s.msr)
                };
                let body = read_record(r, length, MAX_POLICY, rec)?;
                if body.is_empty() || body.len() % entry != 0 {
                    return Err(StreamError::RecordLength {
                        rec,
                        length,
                        expected: format!("a multiple of {entry}"),
                    });
                }
                if slot.replace(body).is_some() {
                    return Err(StreamError::Duplicate(rec));
                }
            }
            libxc_rec::TOOLSTACK => {
                return Err(StreamError::Unsupported {
                    rec,
                    why: "deprecated since Xen 4.7",
                })
            }
            libxc_rec::CHECKPOINT | libxc_rec::CHECKPOINT_DIRTY_PFN_LIST => {
                return Err(StreamError::Unsupported {
                    rec,
                    why: "checkpointed (Remus/COLO) streams are not a save file",
                })
            }
            _ => {
                return Err(StreamError::UnknownRecord {
                    stream: "libxc",
                    rtype,
                })
            }
        }
    }
    if s.version >= 3 && !s.static_end {
        return Err(StreamError::Missing("STATIC_DATA_END"));
    }
    if !s.pages {
        return Err(StreamError::Missing("PAGE_DATA"));
    }
    Ok(DomainState {
        xen_version,
        tsc: s.tsc.ok_or(StreamError::Missing("X86_TSC_INFO"))?,
        hvm: s.hvm.ok_or(StreamError::Missing("HVM_CONTEXT"))?,
        params: s.params.ok_or(StreamError::Missing("HVM_PARAMS"))?,
        cpuid_policy: s.cpuid.unwrap_or_default(),
        msr_policy: s.msr.unwrap_or_default(),
    })
}

/// Read the libxl stream (after the xl header) to its END: the libxc stream inside
/// LIBXC_CONTEXT gives the domain's state; each page with data goes to `sink` as
/// `(pfn, page)`, `pfn < max_pfns`. Checks that nothing follows END.
pub fn read_xl_stream<R: Read>(
    r: &mut R,
    max_pfns: u64,
    sink: &mut PageSink<'_>,
) -> Result<DomainState, StreamError> {
    let state = read_migration_stream(r, max_pfns, sink)?;
    let mut extra = [0u8; 1];
    loop {
        match r.read(&mut extra) {
            Ok(0) => return Ok(state),
            Ok(_) => return Err(StreamError::TrailingData),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StreamError::Io(e)),
        }
    }
}

/// As [`read_xl_stream`], reading nothing after END: a migration stream,
/// whose connection goes on with the receiver's and the sender's messages
/// (`xl migrate`'s handshake). A live migration's PAGE_DATA records may send a
/// page several times (once per round); the last copy wins.
pub fn read_migration_stream<R: Read>(
    r: &mut R,
    max_pfns: u64,
    sink: &mut PageSink<'_>,
) -> Result<DomainState, StreamError> {
    let mut h = [0u8; 16];
    read_exact(r, &mut h, "the libxl header")?;
    let ident = u64::from_be_bytes(h[0..8].try_into().expect("8 bytes"));
    let version = u32::from_be_bytes(h[8..12].try_into().expect("4 bytes"));
    let options = u32::from_be_bytes(h[12..16].try_into().expect("4 bytes"));
    if ident != LIBXL_IDENT {
        return Err(StreamError::LibxlHeader(format!(
            "ident {ident:#x} is not \"LibxlFmt\""
        )));
    }
    if version != LIBXL_VERSION {
        return Err(StreamError::LibxlVersion(version));
    }
    if options != 0 {
        return Err(StreamError::LibxlHeader(format!(
            "options {options:#x}: big-endian, legacy-converted or reserved bits"
        )));
    }
    let mut state = None;
    loop {
        let rtype = u32_le(r, "a libxl record header")?;
        let length = u32_le(r, "a libxl record header")?;
        match rtype {
            libxl_rec::END => {
                read_record(r, length, 0, "libxl END")?;
                break;
            }
            libxl_rec::LIBXC_CONTEXT => {
                read_record(r, length, 0, "LIBXC_CONTEXT")?;
                if state.is_some() {
                    return Err(StreamError::Duplicate("LIBXC_CONTEXT"));
                }
                state = Some(read_libxc(r, max_pfns, sink)?);
            }
            libxl_rec::EMULATOR_XENSTORE_DATA | libxl_rec::EMULATOR_CONTEXT => {
                return Err(StreamError::Unsupported {
                    rec: "EMULATOR",
                    why: "the stream carries a device model's state; PVHVM domains here have no device model",
                })
            }
            libxl_rec::CHECKPOINT_END | libxl_rec::CHECKPOINT_STATE => {
                return Err(StreamError::Unsupported {
                    rec: "CHECKPOINT",
                    why: "checkpointed (Remus/COLO) streams are not a save file",
                })
            }
            _ => return Err(StreamError::UnknownRecord { stream: "libxl", rtype }),
        }
    }
    state.ok_or(StreamError::Missing("LIBXC_CONTEXT"))
}

/// Read a whole save file: the xl header, then the stream, with `max_pfns` chosen by
/// `limit` from the header's config (the domain's memory); `limit` may refuse it.
pub fn read_save_file<R: Read>(
    r: &mut R,
    limit: impl FnOnce(&XlHeader) -> Result<u64, PageSinkError>,
    sink: &mut PageSink<'_>,
) -> Result<(XlHeader, DomainState), StreamError> {
    let header = read_xl_header(r)?;
    let max_pfns = limit(&header).map_err(StreamError::Config)?;
    let state = read_xl_stream(r, max_pfns, sink)?;
    Ok((header, state))
}
