//! A small saved domain for the stream tests: 2 vCPUs, pages at scattered pfns.
#![allow(dead_code)]

use std::collections::BTreeMap;

use xen_stream::abi::{hvm_hw_cpu, hvm_hw_lapic, hvm_hw_lapic_regs, x86_tsc_info, PAGE_SIZE};
use xen_stream::{
    read_save_file, DomainState, HvmContext, HvmVcpu, PageSinkError, StreamError, StreamWriter,
    XlHeader,
};

/// Pages of the sample domain's memory.
pub const MAX_PFNS: u64 = 4096;

pub fn state() -> DomainState {
    let vcpus = (0..2u64)
        .map(|i| {
            let mut cpu = hvm_hw_cpu {
                rip: 0x10_0000 + i,
                rsp: 0x8000 - i * 16,
                cr0: 0x8000_0011,
                cr3: 0x1000,
                msr_efer: 0x500,
                ..Default::default()
            };
            cpu.fpu_regs[24] = 0x80; // MXCSR
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
    DomainState {
        xen_version: (4, 17),
        tsc: x86_tsc_info {
            mode: 0,
            khz: 2_000_000,
            nsec: 123_456_789,
            incarnation: 0,
            _res1: 0,
        },
        hvm: HvmContext::new(vcpus, 0x000806f8, 2_000_000),
        params: vec![(1, 0xfeffc), (2, 3), (17, 0xfeffd), (18, 4)],
        cpuid_policy: Vec::new(),
        msr_policy: Vec::new(),
    }
}

/// Pages: a pattern at 0..1500 (more than one batch) and a few high pfns.
pub fn pages() -> BTreeMap<u64, Vec<u8>> {
    let mut m = BTreeMap::new();
    for pfn in (0..1500u64).chain([2047, 4000, MAX_PFNS - 1]) {
        let page: Vec<u8> = (0..PAGE_SIZE)
            .map(|i| (pfn as usize * 7 + i) as u8)
            .collect();
        m.insert(pfn, page);
    }
    m
}

pub fn header() -> XlHeader {
    XlHeader {
        config: b"name = \"g1\"\nmemory = 16\ntype = \"pvh\"\n".to_vec(),
        json: false,
    }
}

/// The sample save file.
pub fn file() -> Vec<u8> {
    let mut w = StreamWriter::begin(Vec::new(), &header(), (4, 17), &[], &[]).expect("begin");
    let pages = pages();
    let pfns: Vec<u64> = pages.keys().copied().collect();
    let data: Vec<u8> = pages.values().flatten().copied().collect();
    w.write_pages(&pfns, &data).expect("pages");
    w.finish(&state()).expect("finish")
}

/// A file read back: its header, pages and state.
pub type Read = (XlHeader, BTreeMap<u64, Vec<u8>>, DomainState);

/// Read a file back into its header, pages and state.
pub fn read(bytes: &[u8]) -> Result<Read, StreamError> {
    let mut pages = BTreeMap::new();
    let mut sink = |pfn: u64, page: &[u8]| -> Result<(), PageSinkError> {
        pages.insert(pfn, page.to_vec());
        Ok(())
    };
    let (h, s) = read_save_file(&mut &bytes[..], |_| Ok(MAX_PFNS), &mut sink)?;
    Ok((h, pages, s))
}
