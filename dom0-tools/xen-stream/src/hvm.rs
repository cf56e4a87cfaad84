//! The HVM_CONTEXT record's body: Xen's HVM save records (`hvm_save_descriptor` +
//! entry, repeated, closed by an END descriptor), encoded from and parsed into
//! [`HvmContext`]. The parser distrusts every length: each entry must fit in the
//! record, known fixed-size types must have their C size, per-vCPU instances are
//! bounded by [`MAX_VCPUS`] and appear once.

use thiserror::Error;
use zerocopy::{FromBytes, IntoBytes};

use crate::abi::{
    hvm_code, hvm_hw_cpu, hvm_hw_lapic, hvm_hw_lapic_regs, hvm_save_descriptor, hvm_save_header,
    HVM_FILE_MAGIC, HVM_FILE_VERSION,
};

/// vCPUs an HVM context may describe (Xen's `HVM_MAX_VCPUS`).
pub const MAX_VCPUS: usize = 128;

/// Why an HVM context could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HvmContextError {
    /// The record ended inside a descriptor or an entry.
    #[error("HVM context truncated at byte {offset}: {what} needs {need} bytes, {left} left")]
    Truncated {
        /// Offset in the record.
        offset: usize,
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes left.
        left: usize,
    },
    /// The first entry is not the save header.
    #[error("HVM context does not start with an hvm_save_header (first type code {0})")]
    NoHeader(u16),
    /// The save header's magic or version is not Xen's.
    #[error("hvm_save_header has magic {magic:#x} version {version} (expected {HVM_FILE_MAGIC:#x} version {HVM_FILE_VERSION})")]
    BadHeader {
        /// Magic found.
        magic: u32,
        /// Version found.
        version: u32,
    },
    /// A known fixed-size entry has the wrong length.
    #[error(
        "HVM save entry type {typecode} instance {instance} is {length} bytes, expected {expected}"
    )]
    BadLength {
        /// Type code.
        typecode: u16,
        /// Instance.
        instance: u16,
        /// Length found.
        length: u32,
        /// Length expected.
        expected: usize,
    },
    /// An entry's type code is beyond `HVM_SAVE_CODE_MAX`, or a second header.
    #[error("HVM save entry with type code {0} is not one Xen defines here")]
    BadType(u16),
    /// A per-vCPU instance is beyond [`MAX_VCPUS`].
    #[error("HVM save entry type {typecode} names vCPU {instance}, beyond the {MAX_VCPUS} an HVM guest can have")]
    VcpuOutOfRange {
        /// Type code.
        typecode: u16,
        /// Instance.
        instance: u16,
    },
    /// The same entry appears twice.
    #[error("HVM save entry type {typecode} instance {instance} appears twice")]
    Duplicate {
        /// Type code.
        typecode: u16,
        /// Instance.
        instance: u16,
    },
    /// vCPUs are not numbered 0..n, or a per-vCPU entry names a vCPU with no CPU entry.
    #[error("HVM context describes vCPU {instance} in type {typecode} but its CPU entries are {cpus} (numbered from 0)")]
    VcpuMismatch {
        /// Type code.
        typecode: u16,
        /// Instance.
        instance: u16,
        /// CPU entries present.
        cpus: usize,
    },
    /// No CPU entry at all.
    #[error("HVM context has no CPU entry")]
    NoCpu,
    /// No END descriptor, or bytes after it.
    #[error("HVM context {0}")]
    BadEnd(&'static str),
}

/// One HVM save entry this crate does not interpret, kept as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HvmRawEntry {
    /// `HVM_SAVE_CODE`.
    pub typecode: u16,
    /// Instance.
    pub instance: u16,
    /// The entry's bytes.
    pub data: Vec<u8>,
}

/// One vCPU's saved state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HvmVcpu {
    /// Registers (`HVM_SAVE_CODE(CPU)`).
    pub cpu: hvm_hw_cpu,
    /// Local APIC MSRs (`HVM_SAVE_CODE(LAPIC)`), if saved.
    pub lapic: Option<hvm_hw_lapic>,
    /// Local APIC registers (`HVM_SAVE_CODE(LAPIC_REGS)`), if saved.
    pub lapic_regs: Option<hvm_hw_lapic_regs>,
}

/// An HVM_CONTEXT record: the save header, the vCPUs and whatever else was saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HvmContext {
    /// The save header.
    pub header: hvm_save_header,
    /// vCPUs, indexed by their instance number.
    pub vcpus: Vec<HvmVcpu>,
    /// Entries kept as bytes (MTRR, XSAVE, MSRs, platform devices...).
    pub other: Vec<HvmRawEntry>,
}

impl HvmContext {
    /// A context for `vcpus` with a header naming Xen 4.17 and `gtsc_khz`.
    pub fn new(vcpus: Vec<HvmVcpu>, cpuid: u32, gtsc_khz: u32) -> Self {
        Self {
            header: hvm_save_header {
                magic: HVM_FILE_MAGIC,
                version: HVM_FILE_VERSION,
                changeset: 0,
                cpuid,
                gtsc_khz,
            },
            vcpus,
            other: Vec::new(),
        }
    }

    /// The record body: header, CPUs, LAPICs, LAPIC registers, the raw entries, END.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        push_entry(&mut out, hvm_code::HEADER, 0, self.header.as_bytes());
        for (i, v) in self.vcpus.iter().enumerate() {
            push_entry(&mut out, hvm_code::CPU, instance(i), v.cpu.as_bytes());
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if let Some(l) = &v.lapic {
                push_entry(&mut out, hvm_code::LAPIC, instance(i), l.as_bytes());
            }
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if let Some(r) = &v.lapic_regs {
                push_entry(&mut out, hvm_code::LAPIC_REGS, instance(i), r.as_bytes());
            }
        }
        for e in &self.other {
            push_entry(&mut out, e.typecode, e.instance, &e.data);
        }
        push_entry(&mut out, hvm_code::END, 0, &[]);
        out
    }

    /// Parse and validate a record body.
    pub fn parse(body: &[u8]) -> Result<Self, HvmContextError> {
        let mut at = 0usize;
        let mut header = None;
        let mut cpus: Vec<hvm_hw_cpu> = Vec::new();
        let mut lapics: Vec<(u16, hvm_hw_lapic)> = Vec::new();
        let mut regs: Vec<(u16, hvm_hw_lapic_regs)> = Vec::new();
        let mut other: Vec<HvmRawEntry> = Vec::new();
        loop {
            let d = take(body, &mut at, 8, "a descriptor")?;
            let desc = hvm_save_descriptor::read_from_bytes(d).expect("8 bytes");
            let data = take(body, &mut at, desc.length as usize, "an entry")?;
            let (code, inst) = (desc.typecode, desc.instance);
            if header.is_none() && code != hvm_code::HEADER {
                return Err(HvmContextError::NoHeader(code));
            }
            match code {
                hvm_code::END => {
                    if desc.length != 0 || inst != 0 {
                        return Err(HvmContextError::BadEnd("END descriptor is not empty"));
                    }
                    if at != body.len() {
                        return Err(HvmContextError::BadEnd(
                            "has bytes after its END descriptor",
                        ));
                    }
                    break;
                }
                hvm_code::HEADER => {
                    if header.is_some() {
                        return Err(HvmContextError::Duplicate {
                            typecode: code,
                            instance: inst,
                        });
                    }
                    let h: hvm_save_header = fixed(code, inst, data)?;
                    if h.magic != HVM_FILE_MAGIC || h.version != HVM_FILE_VERSION {
                        return Err(HvmContextError::BadHeader {
                            magic: h.magic,
                            version: h.version,
                        });
                    }
                    header = Some(h);
                }
                hvm_code::CPU => {
                    vcpu_in_range(code, inst)?;
                    if usize::from(inst) != cpus.len() {
                        return Err(if usize::from(inst) < cpus.len() {
                            HvmContextError::Duplicate {
                                typecode: code,
                                instance: inst,
                            }
                        } else {
                            HvmContextError::VcpuMismatch {
                                typecode: code,
                                instance: inst,
                                cpus: cpus.len(),
                            }
                        });
                    }
                    cpus.push(fixed(code, inst, data)?);
                }
                hvm_code::LAPIC => {
                    vcpu_in_range(code, inst)?;
                    once(&lapics, code, inst)?;
                    lapics.push((inst, fixed(code, inst, data)?));
                }
                hvm_code::LAPIC_REGS => {
                    vcpu_in_range(code, inst)?;
                    once(&regs, code, inst)?;
                    regs.push((inst, fixed(code, inst, data)?));
                }
                c if c > hvm_code::MAX => return Err(HvmContextError::BadType(c)),
                _ => {
                    if other
                        .iter()
                        .any(|e| e.typecode == code && e.instance == inst)
                    {
                        return Err(HvmContextError::Duplicate {
                            typecode: code,
                            instance: inst,
                        });
                    }
                    other.push(HvmRawEntry {
                        typecode: code,
                        instance: inst,
                        data: data.to_vec(),
                    });
                }
            }
        }
        let header = header.ok_or(HvmContextError::NoHeader(hvm_code::END))?;
        if cpus.is_empty() {
            return Err(HvmContextError::NoCpu);
        }
        let mut vcpus: Vec<HvmVcpu> = cpus
            .into_iter()
            .map(|cpu| HvmVcpu {
                cpu,
                lapic: None,
                lapic_regs: None,
            })
            .collect();
        let n = vcpus.len();
        for (inst, l) in lapics {
            let v = vcpus
                .get_mut(usize::from(inst))
                .ok_or(HvmContextError::VcpuMismatch {
                    typecode: hvm_code::LAPIC,
                    instance: inst,
                    cpus: n,
                })?;
            v.lapic = Some(l);
        }
        for (inst, r) in regs {
            let v = vcpus
                .get_mut(usize::from(inst))
                .ok_or(HvmContextError::VcpuMismatch {
                    typecode: hvm_code::LAPIC_REGS,
                    instance: inst,
                    cpus: n,
                })?;
            v.lapic_regs = Some(r);
        }
        Ok(Self {
            header,
            vcpus,
            other,
        })
    }
}

fn instance(i: usize) -> u16 {
    u16::try_from(i).expect("an HVM context holds at most MAX_VCPUS vCPUs")
}

fn push_entry(out: &mut Vec<u8>, typecode: u16, instance: u16, data: &[u8]) {
    let length = u32::try_from(data.len()).expect("HVM save entries are small");
    out.extend_from_slice(
        hvm_save_descriptor {
            typecode,
            instance,
            length,
        }
        .as_bytes(),
    );
    out.extend_from_slice(data);
}

fn take<'a>(
    body: &'a [u8],
    at: &mut usize,
    need: usize,
    what: &'static str,
) -> Result<&'a [u8], HvmContextError> {
    let left = body.len() - *at;
    if need > left {
        return Err(HvmContextError::Truncated {
            offset: *at,
            what,
            need,
            left,
        });
    }
    let s = &body[*at..*at + need];
    *at += need;
    Ok(s)
}

fn fixed<T: FromBytes>(typecode: u16, instance: u16, data: &[u8]) -> Result<T, HvmContextError> {
    T::read_from_bytes(data).map_err(|_| HvmContextError::BadLength {
        typecode,
        instance,
        length: u32::try_from(data.len()).unwrap_or(u32::MAX),
        expected: core::mem::size_of::<T>(),
    })
}

fn vcpu_in_range(typecode: u16, instance: u16) -> Result<(), HvmContextError> {
    if usize::from(instance) >= MAX_VCPUS {
        return Err(HvmContextError::VcpuOutOfRange { typecode, instance });
    }
    Ok(())
}

fn once<T>(seen: &[(u16, T)], typecode: u16, instance: u16) -> Result<(), HvmContextError> {
    if seen.iter().any(|(i, _)| *i == instance) {
        return Err(HvmContextError::Duplicate { typecode, instance });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> HvmContext {
        let vcpus = (0..n)
            .map(|i| {
                let mut cpu = hvm_hw_cpu {
                    rip: 0x1000 + i as u64,
                    ..Default::default()
                };
                cpu.fpu_regs[3] = 7;
                HvmVcpu {
                    cpu,
                    lapic: Some(hvm_hw_lapic {
                        apic_base_msr: 0xfee0_0900,
                        ..Default::default()
                    }),
                    lapic_regs: Some(hvm_hw_lapic_regs::default()),
                }
            })
            .collect();
        let mut c = HvmContext::new(vcpus, 0x806f8, 2_000_000);
        c.other.push(HvmRawEntry {
            typecode: hvm_code::MTRR,
            instance: 0,
            data: vec![1; 240],
        });
        c
    }

    #[test]
    fn test_hvm_context_round_trip_same() {
        let c = sample(2);
        assert_eq!(HvmContext::parse(&c.encode()), Ok(c));
    }

    #[test]
    fn test_hvm_context_every_truncation_refused() {
        let body = sample(1).encode();
        for len in 0..body.len() {
            assert!(
                HvmContext::parse(&body[..len]).is_err(),
                "prefix {len} accepted"
            );
        }
    }

    #[test]
    fn test_hvm_context_duplicate_cpu_refused() {
        let mut body = Vec::new();
        let c = sample(1);
        push_entry(&mut body, hvm_code::HEADER, 0, c.header.as_bytes());
        push_entry(&mut body, hvm_code::CPU, 0, c.vcpus[0].cpu.as_bytes());
        push_entry(&mut body, hvm_code::CPU, 0, c.vcpus[0].cpu.as_bytes());
        push_entry(&mut body, hvm_code::END, 0, &[]);
        assert_eq!(
            HvmContext::parse(&body),
            Err(HvmContextError::Duplicate {
                typecode: hvm_code::CPU,
                instance: 0
            })
        );
    }

    #[test]
    fn test_hvm_context_lapic_without_cpu_refused() {
        let mut body = Vec::new();
        let c = sample(1);
        push_entry(&mut body, hvm_code::HEADER, 0, c.header.as_bytes());
        push_entry(&mut body, hvm_code::CPU, 0, c.vcpus[0].cpu.as_bytes());
        push_entry(
            &mut body,
            hvm_code::LAPIC,
            3,
            hvm_hw_lapic::default().as_bytes(),
        );
        push_entry(&mut body, hvm_code::END, 0, &[]);
        assert!(matches!(
            HvmContext::parse(&body),
            Err(HvmContextError::VcpuMismatch { .. })
        ));
    }

    #[test]
    fn test_hvm_context_huge_entry_length_refused() {
        let mut body = Vec::new();
        body.extend_from_slice(
            hvm_save_descriptor {
                typecode: 1,
                instance: 0,
                length: u32::MAX,
            }
            .as_bytes(),
        );
        assert!(matches!(
            HvmContext::parse(&body),
            Err(HvmContextError::Truncated { .. })
        ));
    }

    #[test]
    fn test_hvm_context_bad_magic_refused() {
        let mut c = sample(1);
        c.header.magic = 1;
        assert!(matches!(
            HvmContext::parse(&c.encode()),
            Err(HvmContextError::BadHeader { .. })
        ));
    }
}
