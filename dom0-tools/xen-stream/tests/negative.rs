//! Hostile and broken save files: each is refused with the error that names its
//! fault, and no page outside the domain reaches the sink.

mod common;

use proptest::prelude::*;
use xen_stream::abi::{hvm_hw_cpu, libxc_rec, libxl_rec, PAGE_SIZE};
use xen_stream::{StreamError, StreamWriter};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Offset of the libxl header in the sample file.
fn libxl_at(b: &[u8]) -> usize {
    48 + u32_at(b, 44) as usize
}

/// Offset of the first libxc record (after the image and domain headers).
fn libxc_records_at(b: &[u8]) -> usize {
    libxl_at(b) + 16 + 8 + 24 + 16
}

fn record(rtype: u32, body: &[u8]) -> Vec<u8> {
    let mut r = rtype.to_le_bytes().to_vec();
    r.extend_from_slice(&(body.len() as u32).to_le_bytes());
    r.extend_from_slice(body);
    r.resize(r.len() + (8 - body.len() % 8) % 8, 0);
    r
}

fn page_data(pfns: &[u64]) -> Vec<u8> {
    let mut b = (pfns.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(&[0; 4]);
    for p in pfns {
        b.extend_from_slice(&p.to_le_bytes());
    }
    for p in pfns {
        if p >> 60 == 0 {
            b.extend_from_slice(&[0xab; PAGE_SIZE]);
        }
    }
    b
}

/// The sample file's TSC_INFO, HVM_CONTEXT and HVM_PARAMS records, as bytes.
fn tail_records() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let s = common::state();
    let tsc = record(
        libxc_rec::X86_TSC_INFO,
        zerocopy::IntoBytes::as_bytes(&s.tsc),
    );
    let hvm = record(libxc_rec::HVM_CONTEXT, &s.hvm.encode());
    let mut p = (s.params.len() as u32).to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4]);
    for (i, v) in &s.params {
        p.extend_from_slice(&i.to_le_bytes());
        p.extend_from_slice(&v.to_le_bytes());
    }
    (tsc, hvm, record(libxc_rec::HVM_PARAMS, &p))
}

/// A file: the sample's headers, then `libxc` records verbatim, then libxc's and
/// libxl's END.
fn build(libxc: &[Vec<u8>]) -> Vec<u8> {
    let sample = common::file();
    let mut b = sample[..libxc_records_at(&sample)].to_vec();
    for r in libxc {
        b.extend_from_slice(r);
    }
    b.extend(record(libxc_rec::END, &[]));
    b.extend(record(libxl_rec::END, &[]));
    b
}

fn good_records() -> Vec<Vec<u8>> {
    let (tsc, hvm, params) = tail_records();
    vec![
        record(libxc_rec::STATIC_DATA_END, &[]),
        record(libxc_rec::PAGE_DATA, &page_data(&[0, 1])),
        tsc,
        hvm,
        params,
    ]
}

#[test]
fn test_builder_good_records_accepted() {
    // The negative cases below differ from this one in one place only.
    common::read(&build(&good_records())).expect("the hand-built file is valid");
}

#[test]
fn test_truncated_file_refused() {
    let b = common::file();
    let cuts = (0..400)
        .chain((400..b.len()).step_by(409_601))
        .chain((b.len() - 300..b.len()).step_by(7));
    for cut in cuts {
        match common::read(&b[..cut]) {
            Err(StreamError::Truncated(_)) => {}
            other => panic!("cut at {cut} of {}: {other:?}", b.len()),
        }
    }
}

#[test]
fn test_bad_xl_magic_refused() {
    let mut b = common::file();
    b[0] = b'x';
    assert!(matches!(common::read(&b), Err(StreamError::BadXlMagic)));
}

#[test]
fn test_legacy_stream_refused() {
    let mut b = common::file();
    b[36..40].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(common::read(&b), Err(StreamError::LegacyStream)));
}

#[test]
fn test_other_libxl_version_refused() {
    let mut b = common::file();
    let at = libxl_at(&b) + 8;
    b[at..at + 4].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(
        common::read(&b),
        Err(StreamError::LibxlVersion(3))
    ));
}

#[test]
fn test_other_libxc_version_refused() {
    let mut b = common::file();
    let at = libxl_at(&b) + 24 + 12;
    b[at..at + 4].copy_from_slice(&4u32.to_be_bytes());
    assert!(matches!(
        common::read(&b),
        Err(StreamError::ImageVersion(4))
    ));
}

#[test]
fn test_pv_domain_refused() {
    let mut b = common::file();
    let at = libxl_at(&b) + 48;
    b[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
    let e = common::read(&b).unwrap_err();
    assert!(e.to_string().contains("x86 PV"), "{e}");
}

#[test]
fn test_page_data_before_static_data_end_refused() {
    let mut r = good_records();
    r.swap(0, 1);
    assert!(matches!(
        common::read(&build(&r)),
        Err(StreamError::OutOfOrder {
            rec: "PAGE_DATA",
            ..
        })
    ));
}

#[test]
fn test_page_data_after_hvm_context_refused() {
    let mut r = good_records();
    r.push(record(libxc_rec::PAGE_DATA, &page_data(&[5])));
    assert!(matches!(
        common::read(&build(&r)),
        Err(StreamError::OutOfOrder { .. })
    ));
}

#[test]
fn test_duplicate_records_refused() {
    for i in [0, 2, 3, 4] {
        let mut r = good_records();
        r.insert(i, r[i].clone());
        match common::read(&build(&r)) {
            Err(StreamError::Duplicate(_)) => {}
            other => panic!("duplicate of record {i}: {other:?}"),
        }
    }
}

#[test]
fn test_duplicate_end_refused() {
    let mut b = common::file();
    b.extend(record(libxl_rec::END, &[]));
    assert!(matches!(common::read(&b), Err(StreamError::TrailingData)));
}

#[test]
fn test_missing_records_refused() {
    for (i, name) in [
        (0, "STATIC_DATA_END"),
        (2, "X86_TSC_INFO"),
        (3, "HVM_CONTEXT"),
        (4, "HVM_PARAMS"),
    ] {
        let mut r = good_records();
        r.remove(i);
        let e = common::read(&build(&r)).unwrap_err();
        assert!(e.to_string().contains(name), "without {name}: {e}");
    }
}

#[test]
fn test_pv_record_in_hvm_stream_refused() {
    let mut r = good_records();
    r.insert(1, record(libxc_rec::SHARED_INFO, &[0; PAGE_SIZE]));
    assert!(matches!(
        common::read(&build(&r)),
        Err(StreamError::NotHvm("SHARED_INFO"))
    ));
}

#[test]
fn test_page_beyond_memory_refused_before_any_write() {
    let mut r = good_records();
    r[1] = record(libxc_rec::PAGE_DATA, &page_data(&[3, common::MAX_PFNS]));
    let b = build(&r);
    let mut seen = Vec::new();
    let mut sink = |pfn: u64, _: &[u8]| -> Result<(), xen_stream::PageSinkError> {
        seen.push(pfn);
        Ok(())
    };
    let e =
        xen_stream::read_save_file(&mut &b[..], |_| Ok(common::MAX_PFNS), &mut sink).unwrap_err();
    assert!(
        matches!(e, StreamError::PageBeyondMemory { pfn, .. } if pfn == common::MAX_PFNS),
        "{e}"
    );
    assert!(
        seen.is_empty(),
        "pages of the hostile record reached the sink: {seen:?}"
    );
}

#[test]
fn test_huge_pfn_refused() {
    let mut r = good_records();
    r[1] = record(libxc_rec::PAGE_DATA, &page_data(&[(1 << 52) - 1]));
    assert!(matches!(
        common::read(&build(&r)),
        Err(StreamError::PageBeyondMemory { .. })
    ));
}

#[test]
fn test_page_reserved_bits_and_pv_types_refused() {
    let mut r = good_records();
    r[1] = record(libxc_rec::PAGE_DATA, &page_data(&[1 << 55]));
    assert!(matches!(
        common::read(&build(&r)),
        Err(StreamError::PageReserved { .. })
    ));
    let mut r = good_records();
    r[1] = record(libxc_rec::PAGE_DATA, &page_data(&[(1 << 60) | 5]));
    assert!(matches!(
        common::read(&build(&r)),
        Err(StreamError::PageType { ptype: 1, .. })
    ));
}

#[test]
fn test_page_count_disagreeing_with_length_refused() {
    let mut r = good_records();
    let mut body = page_data(&[0, 1]);
    body.truncate(body.len() - PAGE_SIZE); // says two pages, carries one
    r[1] = record(libxc_rec::PAGE_DATA, &body);
    assert!(matches!(
        common::read(&build(&r)),
        Err(StreamError::RecordLength { .. })
    ));
    let mut r = good_records();
    let mut body = page_data(&[0]);
    body[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    r[1] = record(libxc_rec::PAGE_DATA, &body);
    assert!(matches!(
        common::read(&build(&r)),
        Err(StreamError::RecordLength { .. })
    ));
}

#[test]
fn test_huge_record_length_refused_without_allocating() {
    // A header claiming 4 GiB of HVM context: refused on its length.
    let mut b = build(&good_records()[..2]);
    b.truncate(b.len() - 16);
    b.extend_from_slice(&libxc_rec::HVM_CONTEXT.to_le_bytes());
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        common::read(&b),
        Err(StreamError::RecordLength {
            rec: "HVM_CONTEXT",
            ..
        })
    ));
    // A length within the limit in a file that ends: truncation, having read only
    // what the file holds.
    let mut b = build(&good_records()[..2]);
    b.truncate(b.len() - 16);
    b.extend_from_slice(&libxc_rec::HVM_CONTEXT.to_le_bytes());
    b.extend_from_slice(&(4u32 << 20).to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    assert!(matches!(
        common::read(&b),
        Err(StreamError::Truncated("HVM_CONTEXT"))
    ));
    // The xl header's optional data length.
    let mut b = common::file();
    b[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        common::read(&b),
        Err(StreamError::XlOptionalData(_))
    ));
}

#[test]
fn test_nonzero_padding_refused() {
    let mut r = good_records();
    let (_, _, mut params) = tail_records();
    // Make HVM_PARAMS 4 bytes shorter in its header so 4 body bytes become padding.
    let len = u32_at(&params, 4) - 4;
    params[4..8].copy_from_slice(&len.to_le_bytes());
    params.truncate(params.len() - 4);
    params.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0][..4]);
    r[4] = params;
    let e = common::read(&build(&r)).unwrap_err();
    assert!(
        matches!(
            e,
            StreamError::Padding(_) | StreamError::RecordLength { .. }
        ),
        "{e}"
    );
}

#[test]
fn test_corrupted_hvm_context_refused() {
    let mut r = good_records();
    let mut s = common::state();
    s.hvm.header.magic = 0;
    r[3] = record(libxc_rec::HVM_CONTEXT, &s.hvm.encode());
    assert!(matches!(
        common::read(&build(&r)),
        Err(StreamError::HvmContext(_))
    ));
}

#[test]
fn test_sink_error_stops_the_read() {
    let b = common::file();
    let mut sink = |pfn: u64, _: &[u8]| -> Result<(), xen_stream::PageSinkError> {
        Err(format!("no room for {pfn}").into())
    };
    let e =
        xen_stream::read_save_file(&mut &b[..], |_| Ok(common::MAX_PFNS), &mut sink).unwrap_err();
    assert!(matches!(e, StreamError::Sink { pfn: 0, .. }));
}

fn small_file() -> Vec<u8> {
    let mut w = StreamWriter::begin(Vec::new(), &common::header(), (4, 17), &[], &[]).unwrap();
    w.write_pages(&[1, 9], &[7; 2 * PAGE_SIZE]).unwrap();
    w.finish(&common::state()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Flipped bytes anywhere: an error or the same file, never a panic.
    #[test]
    fn prop_corrupted_file_never_panics(flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..6)) {
        let mut b = small_file();
        for (i, x) in flips {
            let at = i.index(b.len());
            b[at] ^= x;
        }
        let _ = common::read(&b);
    }

    /// Arbitrary bytes after a valid xl header never panic.
    #[test]
    fn prop_arbitrary_stream_never_panics(tail in prop::collection::vec(any::<u8>(), 0..4096)) {
        let b = small_file();
        let mut f = b[..libxl_at(&b)].to_vec();
        f.extend(tail);
        let _ = common::read(&f);
    }
}

#[test]
fn test_cpu_record_size_is_xens() {
    // The HVM_CONTEXT carries Xen's 1032-byte hvm_hw_cpu, not a shorter compat form.
    assert_eq!(core::mem::size_of::<hvm_hw_cpu>(), 1032);
}
