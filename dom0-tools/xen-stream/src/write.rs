//! The save file writer: headers first, pages in batches as the caller reads them,
//! the domain's state last (Xen's order: static data, memory, end-of-checkpoint
//! records).

use std::io::{self, Write};

use zerocopy::IntoBytes;

use crate::abi::{
    libxc_rec, libxl_rec, DHDR_TYPE_X86_HVM, IHDR_IDENT, IHDR_MARKER, IHDR_VERSION, LIBXL_IDENT,
    LIBXL_VERSION, MAX_BATCH_PAGES, PAGE_DATA_PFN_MASK, PAGE_SHIFT, PAGE_SIZE, XL_BYTEORDER,
    XL_MAGIC, XL_MANDATORY_FLAG_JSON, XL_MANDATORY_FLAG_STREAMV2,
};
use crate::{DomainState, XlHeader};

/// Writes one save file to `W`.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    out: W,
    bytes: u64,
    pages: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Write the xl header (with `header`'s config), the libxl header, LIBXC_CONTEXT,
    /// libxc's image and domain headers (HVM, Xen `xen_version`), the CPUID/MSR
    /// policies when given and STATIC_DATA_END.
    pub fn begin(
        out: W,
        header: &XlHeader,
        xen_version: (u32, u32),
        cpuid_policy: &[u8],
        msr_policy: &[u8],
    ) -> io::Result<Self> {
        let mut w = Self {
            out,
            bytes: 0,
            pages: 0,
        };
        let config_len = u32::try_from(header.config.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "config over 4 GiB"))?;
        let mut mandatory = XL_MANDATORY_FLAG_STREAMV2;
        if header.json {
            mandatory |= XL_MANDATORY_FLAG_JSON;
        }
        w.put(XL_MAGIC)?;
        for v in [XL_BYTEORDER, mandatory, 0, config_len + 4] {
            w.put(&v.to_le_bytes())?;
        }
        w.put(&config_len.to_le_bytes())?;
        w.put(&header.config)?;
        // libxl header (network order), then LIBXC_CONTEXT.
        w.put(&LIBXL_IDENT.to_be_bytes())?;
        w.put(&LIBXL_VERSION.to_be_bytes())?;
        w.put(&0u32.to_be_bytes())?;
        w.record(libxl_rec::LIBXC_CONTEXT, &[])?;
        // libxc image header (network order) and domain header.
        w.put(&IHDR_MARKER.to_be_bytes())?;
        w.put(&IHDR_IDENT.to_be_bytes())?;
        w.put(&IHDR_VERSION.to_be_bytes())?;
        w.put(&[0u8; 8])?; // options (little-endian), res1, res2
        w.put(&DHDR_TYPE_X86_HVM.to_le_bytes())?;
        w.put(&PAGE_SHIFT.to_le_bytes())?;
        w.put(&0u16.to_le_bytes())?;
        w.put(&xen_version.0.to_le_bytes())?;
        w.put(&xen_version.1.to_le_bytes())?;
        if !cpuid_policy.is_empty() {
            w.record(libxc_rec::X86_CPUID_POLICY, cpuid_policy)?;
        }
        if !msr_policy.is_empty() {
            w.record(libxc_rec::X86_MSR_POLICY, msr_policy)?;
        }
        w.record(libxc_rec::STATIC_DATA_END, &[])?;
        Ok(w)
    }

    /// Write normal pages: `data` holds one page per pfn, in order. Split into
    /// PAGE_DATA records of at most [`MAX_BATCH_PAGES`].
    pub fn write_pages(&mut self, pfns: &[u64], data: &[u8]) -> io::Result<()> {
        if data.len() != pfns.len() * PAGE_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "one page of data per pfn",
            ));
        }
        if pfns.iter().any(|p| p & !PAGE_DATA_PFN_MASK != 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pfn beyond 52 bits",
            ));
        }
        for (pfns, data) in pfns
            .chunks(MAX_BATCH_PAGES)
            .zip(data.chunks(MAX_BATCH_PAGES * PAGE_SIZE))
        {
            let count = u32::try_from(pfns.len()).expect("a batch is at most 1024 pages");
            let length = 8 + pfns.len() * 8 + data.len();
            self.put(&libxc_rec::PAGE_DATA.to_le_bytes())?;
            self.put(
                &u32::try_from(length)
                    .expect("a batch is ~4 MiB")
                    .to_le_bytes(),
            )?;
            self.put(&count.to_le_bytes())?;
            self.put(&0u32.to_le_bytes())?;
            self.put(pfns.as_bytes())?;
            self.put(data)?;
            self.pages += pfns.len() as u64;
        }
        Ok(())
    }

    /// Write X86_TSC_INFO, HVM_CONTEXT, HVM_PARAMS, libxc's END and libxl's END;
    /// flush and hand the output back.
    pub fn finish(mut self, state: &DomainState) -> io::Result<W> {
        self.record(libxc_rec::X86_TSC_INFO, state.tsc.as_bytes())?;
        self.record(libxc_rec::HVM_CONTEXT, &state.hvm.encode())?;
        let mut params = Vec::with_capacity(8 + state.params.len() * 16);
        let count = u32::try_from(state.params.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many HVM params"))?;
        params.extend_from_slice(&count.to_le_bytes());
        params.extend_from_slice(&0u32.to_le_bytes());
        for (i, v) in &state.params {
            params.extend_from_slice(&i.to_le_bytes());
            params.extend_from_slice(&v.to_le_bytes());
        }
        self.record(libxc_rec::HVM_PARAMS, &params)?;
        self.record(libxc_rec::END, &[])?;
        self.record(libxl_rec::END, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Flushes the output (a live migration's round boundary: the receiver
    /// gets the round while the next one is read).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Pages written so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.bytes += b.len() as u64;
        Ok(())
    }

    /// A record: type, length, body, zero padding to 8 bytes (the same framing in
    /// libxl's and libxc's streams).
    fn record(&mut self, rtype: u32, body: &[u8]) -> io::Result<()> {
        let length = u32::try_from(body.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record over 4 GiB"))?;
        self.put(&rtype.to_le_bytes())?;
        self.put(&length.to_le_bytes())?;
        self.put(body)?;
        let pad = (8 - body.len() % 8) % 8;
        self.put(&[0u8; 8][..pad])
    }
}
