//! The ELF64 kernel loader: parse (pure), then copy the `PT_LOAD` segments
//! to their physical addresses (`p_paddr`) in guest RAM.
//!
//! Xen's ELF notes (`XEN_ELFNOTE_PHYS32_ENTRY`...) are not needed: the VMM
//! enters the kernel at `e_entry` in 64-bit mode (see `xen_abi::pvhvm`).

/// One loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address.
    pub paddr: u64,
    /// Offset of its bytes in the file.
    pub offset: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zero).
    pub memsz: u64,
}

/// A parsed kernel image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// Entry point (physical = virtual: the kernel is identity-mapped).
    pub entry: u64,
    /// Its `PT_LOAD` segments.
    pub segments: Vec<Segment>,
}

/// Why an image is not a loadable kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    /// Not a little-endian ELF64 x86-64 executable.
    #[error("not an ELF64 x86-64 executable")]
    NotElf64,
    /// A header or segment lies outside the file or overflows.
    #[error("truncated or inconsistent ELF headers")]
    Truncated,
    /// No `PT_LOAD` segment.
    #[error("no loadable segment")]
    NoSegments,
    /// A segment lies outside `[low, high)` of guest RAM.
    #[error("segment at {paddr:#x} (+{memsz:#x}) is outside guest RAM {low:#x}..{high:#x}")]
    OutOfRam {
        /// Load address.
        paddr: u64,
        /// Size.
        memsz: u64,
        /// Lowest allowed address.
        low: u64,
        /// End of RAM.
        high: u64,
    },
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    b.get(off..off + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(ElfError::Truncated)
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(ElfError::Truncated)
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(ElfError::Truncated)
}

const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;

/// Parses `image`, checking every segment against guest RAM `[low, high)`.
pub fn parse(image: &[u8], low: u64, high: u64) -> Result<Kernel, ElfError> {
    if image.get(0..4) != Some(b"\x7fELF".as_slice())
        || image.get(4) != Some(&2)
        || image.get(5) != Some(&1)
        || u16_at(image, 16)? != ET_EXEC
        || u16_at(image, 18)? != EM_X86_64
    {
        return Err(ElfError::NotElf64);
    }
    let entry = u64_at(image, 24)?;
    let phoff = usize::try_from(u64_at(image, 32)?).map_err(|_| ElfError::Truncated)?;
    let phentsize = usize::from(u16_at(image, 54)?);
    let phnum = usize::from(u16_at(image, 56)?);
    if phentsize < 56 {
        return Err(ElfError::Truncated);
    }
    let mut segments = Vec::new();
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(ElfError::Truncated)?)
            .ok_or(ElfError::Truncated)?;
        if u32_at(image, ph)? != PT_LOAD {
            continue;
        }
        let s = Segment {
            offset: u64_at(image, ph + 8)?,
            paddr: u64_at(image, ph + 24)?,
            filesz: u64_at(image, ph + 32)?,
            memsz: u64_at(image, ph + 40)?,
        };
        let file_end = s.offset.checked_add(s.filesz).ok_or(ElfError::Truncated)?;
        if file_end > image.len() as u64 || s.filesz > s.memsz {
            return Err(ElfError::Truncated);
        }
        let end = s.paddr.checked_add(s.memsz);
        if s.paddr < low || end.is_none_or(|e| e > high) {
            return Err(ElfError::OutOfRam {
                paddr: s.paddr,
                memsz: s.memsz,
                low,
                high,
            });
        }
        segments.push(s);
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    Ok(Kernel { entry, segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(paddr: u64, filesz: u64, memsz: u64) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&0x100u64.to_le_bytes());
        b[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
        b[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        b
    }

    #[test]
    fn test_parse_valid_image_yields_entry_and_segment() {
        let k = parse(&image(0x10_0000, 0x100, 0x2000), 0x1_0000, 1 << 26).expect("valid");
        assert_eq!(k.entry, 0x10_0000);
        assert_eq!(k.segments.len(), 1);
        assert_eq!(k.segments[0].memsz, 0x2000);
    }

    #[test]
    fn test_parse_segment_outside_ram_is_refused() {
        let e = parse(&image(0x1000, 0x100, 0x100), 0x1_0000, 1 << 26).expect_err("low");
        assert!(matches!(e, ElfError::OutOfRam { .. }));
        let e = parse(&image(u64::MAX - 10, 0x100, 0x100), 0x1_0000, 1 << 26).expect_err("wrap");
        assert!(matches!(e, ElfError::OutOfRam { .. }));
    }

    #[test]
    fn test_parse_truncated_or_foreign_image_is_refused() {
        assert_eq!(parse(b"MZ", 0, 1 << 20), Err(ElfError::NotElf64));
        let e = parse(&image(0x10_0000, 0x1000, 0x1000), 0x1_0000, 1 << 26).expect_err("size");
        assert_eq!(e, ElfError::Truncated);
    }
}
