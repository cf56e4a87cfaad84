//! The emulated PIO disk (`xen_abi::pvhvm::fvdisk`): the full-virtualization
//! reference. Every 4 bytes of every sector cross the guest/VMM boundary
//! as one trapped port access, as with IDE PIO under QEMU.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use xen_abi::pvhvm::fvdisk::*;

use crate::VmmError;

const SECTOR: usize = 512;

/// The device state.
#[derive(Debug)]
pub struct FvDisk {
    file: File,
    sectors: u64,
    sector: u64,
    buf: [u8; SECTOR],
    pos: usize,
    status: u32,
}

impl FvDisk {
    /// Opens `path` read-write as the disk.
    pub fn open(path: &Path) -> Result<Self, VmmError> {
        let io = |source| VmmError::Io {
            what: format!("open the emulated disk {}", path.display()),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Ok(Self {
            file,
            sectors: len / SECTOR as u64,
            sector: 0,
            buf: [0; SECTOR],
            pos: 0,
            status: STATUS_OK,
        })
    }

    /// An `out` of `len` bytes of `val` at `off` from the base port.
    pub fn out(&mut self, off: u16, val: u32, len: usize) {
        match off {
            SECTOR_LO => self.sector = (self.sector & !0xffff_ffff) | u64::from(val),
            SECTOR_HI => self.sector = (self.sector & 0xffff_ffff) | (u64::from(val) << 32),
            COMMAND => self.command(val as u8),
            DATA if len == 4 && self.pos + 4 <= SECTOR => {
                self.buf[self.pos..self.pos + 4].copy_from_slice(&val.to_le_bytes());
                self.pos += 4;
            }
            _ => {}
        }
    }

    /// An `in` of `len` bytes at `off` from the base port.
    pub fn inp(&mut self, off: u16, len: usize) -> u32 {
        match off {
            STATUS => self.status,
            SIZE_LO => self.sectors as u32,
            SIZE_HI => (self.sectors >> 32) as u32,
            DATA if len == 4 && self.pos + 4 <= SECTOR => {
                let b = &self.buf[self.pos..self.pos + 4];
                self.pos += 4;
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
            _ => u32::MAX,
        }
    }

    fn command(&mut self, cmd: u8) {
        let off = self.sector.checked_mul(SECTOR as u64);
        let in_range = self.sector < self.sectors;
        self.status = match (cmd, off) {
            (CMD_READ, Some(o)) if in_range => {
                self.pos = 0;
                match self.file.read_exact_at(&mut self.buf, o) {
                    Ok(()) => STATUS_OK,
                    Err(_) => STATUS_ERROR,
                }
            }
            (CMD_WRITE, Some(o)) if in_range && self.pos == SECTOR => {
                self.pos = 0;
                match self.file.write_all_at(&self.buf, o) {
                    Ok(()) => STATUS_OK,
                    Err(_) => STATUS_ERROR,
                }
            }
            (CMD_FLUSH, _) => match self.file.sync_data() {
                Ok(()) => STATUS_OK,
                Err(_) => STATUS_ERROR,
            },
            _ => {
                self.pos = 0;
                STATUS_ERROR
            }
        };
        // A write command starts a fresh data window for the next sector.
        if cmd == CMD_READ {
            self.pos = 0;
        }
    }
}
