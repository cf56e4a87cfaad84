//! Writes the seed corpora of the fuzz targets to `tests/fuzz/corpus/NAME/`
//! (`cargo run -p xen-fuzz-targets --example seeds`): well-formed xenstore
//! packets and request sessions, blkif and netif requests as the frontends
//! send them with valid grants behind them, ring and console sessions, and
//! the repository's and Xen's `xl.cfg` files. Seeds are small (under a few
//! KB each) and every one is run by the replay test.

use std::path::{Path, PathBuf};

use xen_abi::io::blkif::*;
use xen_abi::io::netif::*;
use xenstore_wire::{PermList, Request};
use zerocopy::IntoBytes;

fn requests() -> Vec<Vec<u8>> {
    let perms = PermList::parse(b"b1\0r0\0").expect("valid perms");
    let reqs = vec![
        Request::Write {
            path: "/a/b",
            value: b"v",
        },
        Request::Read { path: "/a/b" },
        Request::Mkdir { path: "rel/dir" },
        Request::Directory { path: "/a" },
        Request::DirectoryPart {
            path: "/a",
            offset: 0,
        },
        Request::GetPerms { path: "/a" },
        Request::SetPerms { path: "/a", perms },
        Request::Watch {
            path: "/a",
            token: b"t",
            depth: None,
        },
        Request::Unwatch {
            path: "/a",
            token: b"t",
        },
        Request::TransactionStart,
        Request::TransactionEnd { commit: true },
        Request::Rm { path: "/a" },
        Request::Introduce {
            domid: 2,
            mfn: 1,
            port: 1,
        },
        Request::Release { domid: 2 },
        Request::GetDomainPath { domid: 1 },
        Request::IsDomainIntroduced { domid: 1 },
        Request::ResetWatches,
        Request::Control {
            args: b"print\0x\0",
        },
        Request::GetQuota {
            domid: None,
            quota: None,
        },
        Request::SetQuota {
            domid: Some(1),
            quota: "nodes",
            value: 3,
        },
    ];
    reqs.iter()
        .map(|r| {
            let mut v = Vec::new();
            r.encode(1, 0, &mut v).expect("small request");
            v
        })
        .collect()
}

fn enc(r: &Request<'_>, tx: u32) -> Vec<u8> {
    let mut v = Vec::new();
    r.encode(7, tx, &mut v).expect("small request");
    v
}

/// An `xs_request` record sending `bytes` on connection `conn`.
fn rec(out: &mut Vec<u8>, conn: u8, bytes: &[u8]) {
    for chunk in bytes.chunks(255) {
        out.push(conn);
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

/// An `xs_request` record poking ring word `word` of connection `conn`.
fn poke(out: &mut Vec<u8>, conn: u8, word: u8, value: u32) {
    out.push(0x80 | (word << 3) | conn);
    out.extend_from_slice(&value.to_le_bytes());
}

fn xs_sessions() -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    // Dom0 builds a tree, guests over rings read, write and watch it.
    let mut s = Vec::new();
    rec(
        &mut s,
        0,
        &enc(
            &Request::Write {
                path: "/local/domain/2/device/vbd/51712/state",
                value: b"1",
            },
            0,
        ),
    );
    rec(&mut s, 0, &enc(&Request::Mkdir { path: "/shared" }, 0));
    rec(
        &mut s,
        0,
        &enc(
            &Request::SetPerms {
                path: "/shared",
                perms: PermList::parse(b"n0\0r2\0").expect("perms"),
            },
            0,
        ),
    );
    rec(
        &mut s,
        3,
        &enc(
            &Request::Watch {
                path: "device",
                token: b"tok",
                depth: None,
            },
            0,
        ),
    );
    rec(
        &mut s,
        3,
        &enc(
            &Request::Read {
                path: "device/vbd/51712/state",
            },
            0,
        ),
    );
    rec(
        &mut s,
        3,
        &enc(
            &Request::Write {
                path: "device/vbd/51712/state",
                value: b"4",
            },
            0,
        ),
    );
    rec(
        &mut s,
        4,
        &enc(
            &Request::Write {
                path: "/shared/new",
                value: b"x",
            },
            0,
        ),
    );
    rec(
        &mut s,
        4,
        &enc(
            &Request::Directory {
                path: "/local/domain",
            },
            0,
        ),
    );
    rec(&mut s, 2, &enc(&Request::Read { path: "/shared" }, 0));
    rec(
        &mut s,
        1,
        &enc(
            &Request::Write {
                path: "data/a",
                value: b"1",
            },
            0,
        ),
    );
    all.push(s);
    // A transaction on a ring, a conflicting write, the commit.
    let mut s = Vec::new();
    rec(&mut s, 3, &enc(&Request::TransactionStart, 0));
    rec(
        &mut s,
        3,
        &enc(
            &Request::Write {
                path: "t/x",
                value: b"1",
            },
            1,
        ),
    );
    rec(
        &mut s,
        0,
        &enc(
            &Request::Write {
                path: "/local/domain/2/t/x",
                value: b"2",
            },
            0,
        ),
    );
    rec(
        &mut s,
        3,
        &enc(&Request::TransactionEnd { commit: true }, 1),
    );
    rec(&mut s, 3, &enc(&Request::Read { path: "t/x" }, 0));
    all.push(s);
    // A guest asks to reconnect; another writes hostile indices.
    let mut s = Vec::new();
    rec(
        &mut s,
        4,
        &enc(
            &Request::Watch {
                path: "@releaseDomain",
                token: b"r",
                depth: None,
            },
            0,
        ),
    );
    poke(&mut s, 4, 4, 1);
    rec(&mut s, 4, &enc(&Request::Read { path: "x" }, 0));
    poke(&mut s, 3, 1, 5000);
    rec(&mut s, 3, &enc(&Request::Read { path: "x" }, 0));
    rec(&mut s, 0, &enc(&Request::Release { domid: 3 }, 0));
    rec(&mut s, 4, &enc(&Request::Read { path: "x" }, 0));
    all.push(s);
    // Every request type from Dom0 and from a ring guest.
    let mut s = Vec::new();
    for r in requests() {
        rec(&mut s, 0, &r);
        rec(&mut s, 3, &r);
    }
    all.push(s);
    all
}

fn blk_slot(req: &(impl IntoBytes + zerocopy::Immutable)) -> [u8; BLKIF_SRING_ENTRY_SIZE] {
    let mut s = [0u8; BLKIF_SRING_ENTRY_SIZE];
    let b = req.as_bytes();
    s[..b.len()].copy_from_slice(b);
    s
}

/// `blkif` input: limits, a table of `n` valid grants, guest pages, slots.
fn blkif_seed(flags: u8, slots: &[[u8; BLKIF_SRING_ENTRY_SIZE]], seg_page: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&8192u32.to_le_bytes());
    if flags & 8 != 0 {
        v.extend_from_slice(&1024u16.to_le_bytes());
    }
    // v1 table of 8 entries: grants 0..6 writable, 7 read-only.
    v.push(7 << 1);
    for g in 0..8u16 {
        v.push(u8::from(g == 7));
        v.extend_from_slice(&g.to_le_bytes());
    }
    v.push((seg_page.len() / 8) as u8);
    v.extend_from_slice(seg_page);
    for s in slots {
        v.extend_from_slice(s);
    }
    v
}

fn seg(gref: u32, first: u8, last: u8) -> blkif_request_segment {
    blkif_request_segment {
        gref,
        first_sect: first,
        last_sect: last,
        ..Default::default()
    }
}

fn blkif_seeds() -> Vec<Vec<u8>> {
    let mut read = blkif_request {
        operation: BLKIF_OP_READ,
        nr_segments: 2,
        id: 1,
        sector_number: 16,
        ..Default::default()
    };
    read.seg[0] = seg(1, 0, 7);
    read.seg[1] = seg(2, 2, 5);
    let mut write = blkif_request {
        operation: BLKIF_OP_WRITE,
        nr_segments: 11,
        id: 2,
        sector_number: 0,
        ..Default::default()
    };
    for i in 0..11 {
        write.seg[i] = seg((i % 8) as u32, 0, 7);
    }
    let mut indirect = blkif_request_indirect {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: BLKIF_OP_WRITE,
        nr_segments: 16,
        id: 3,
        sector_number: 64,
        ..Default::default()
    };
    indirect.indirect_grefs[0] = 5;
    let flush = blkif_request {
        operation: BLKIF_OP_FLUSH_DISKCACHE,
        id: 4,
        ..Default::default()
    };
    let discard = blkif_request_discard {
        operation: BLKIF_OP_DISCARD,
        id: 5,
        sector_number: 100,
        nr_sectors: 50,
        ..Default::default()
    };
    // An indirect page's segments (repeated through the page by the target).
    let mut segs = Vec::new();
    for g in 0..4u32 {
        segs.extend_from_slice(seg(g, 0, 7).as_bytes());
    }
    vec![
        blkif_seed(0, &[blk_slot(&read)], &[]),
        blkif_seed(
            2 | 4,
            &[blk_slot(&write), blk_slot(&flush), blk_slot(&discard)],
            &[],
        ),
        blkif_seed(8, &[blk_slot(&indirect), blk_slot(&read)], &segs),
        blkif_seed(
            1 | 8,
            &[blk_slot(&indirect), blk_slot(&write), blk_slot(&read)],
            &segs,
        ),
    ]
}

fn tx(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> [u8; NETIF_TX_SRING_ENTRY_SIZE] {
    let mut s = [0u8; NETIF_TX_SRING_ENTRY_SIZE];
    s.copy_from_slice(
        netif_tx_request {
            gref,
            offset,
            flags,
            id,
            size,
        }
        .as_bytes(),
    );
    s
}

fn netif_seed(slots: &[[u8; NETIF_TX_SRING_ENTRY_SIZE]]) -> Vec<u8> {
    // v2 table of 8 entries, all valid read-only grants to Dom0.
    let mut v = vec![(7 << 1) | 1];
    for g in 0..8u16 {
        v.push(1);
        v.extend_from_slice(&g.to_le_bytes());
    }
    for s in slots {
        v.extend_from_slice(s);
    }
    v
}

fn netif_seeds() -> Vec<Vec<u8>> {
    let gso = {
        let e = netif_extra_info {
            r#type: XEN_NETIF_EXTRA_TYPE_GSO,
            flags: 0,
            u: netif_extra_info_u::from_gso(netif_extra_info_gso {
                size: 1448,
                r#type: XEN_NETIF_GSO_TYPE_TCPV4,
                pad: 0,
                features: 0,
            }),
        };
        let mut s = [0u8; NETIF_TX_SRING_ENTRY_SIZE];
        s[..8].copy_from_slice(e.as_bytes());
        s
    };
    let chain18: Vec<_> = (0..18u16)
        .map(|i| {
            let more = if i < 17 { NETTXF_more_data } else { 0 };
            let size = if i == 0 { 1800 } else { 100 };
            tx(u32::from(i % 8), 0, more, i, size)
        })
        .collect();
    vec![
        netif_seed(&[tx(1, 100, NETTXF_csum_blank, 0, 60), tx(2, 0, 0, 1, 1514)]),
        netif_seed(&[
            tx(
                1,
                0,
                NETTXF_more_data | NETTXF_extra_info | NETTXF_csum_blank,
                0,
                9000,
            ),
            gso,
            tx(2, 0, NETTXF_more_data, 1, 4096),
            tx(3, 0, 0, 2, 904),
        ]),
        netif_seed(&chain18),
    ]
}

fn ring_seeds() -> Vec<Vec<u8>> {
    // push, publish, take, respond, publish, take response; both shapes.
    let mut a = vec![0u8];
    for _ in 0..3 {
        a.push(0);
        a.extend_from_slice(&[0x11; 16]);
    }
    a.extend_from_slice(&[1, 2, 2, 2, 3]);
    a.extend_from_slice(&[0x22; 16]);
    a.extend_from_slice(&[4, 5, 6, 7]);
    let mut b = vec![3u8];
    for _ in 0..40 {
        b.push(0);
        b.extend_from_slice(&[7; 8]);
    }
    b.extend_from_slice(&[1, 10, 10, 8, 0]);
    b.extend_from_slice(&100u32.to_le_bytes());
    b.extend_from_slice(&[2, 6, 5, 7]);
    vec![a, b]
}

fn console_seeds() -> Vec<Vec<u8>> {
    let mut a = vec![0u8, 2];
    a.extend_from_slice(b"Linux version 6.1 (PV console)\r\n");
    a.push(1);
    a.extend_from_slice(&[2, 1]);
    a.extend_from_slice(b"ls\r\n");
    a.extend_from_slice(&[3, 5]);
    let mut b = vec![0u8, 255];
    b.extend(std::iter::repeat_n(b'x', 2040));
    b.extend_from_slice(&[1, 0, 16]);
    b.extend(std::iter::repeat_n(b'y', 128));
    b.extend_from_slice(&[1, 4, 3]);
    b.extend_from_slice(&9999u32.to_le_bytes());
    b.push(1);
    vec![a, b]
}

fn xl_cfg_seeds(repo: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo.join("examples"))
        .expect("examples/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cfg"))
        .collect();
    for x in ["hvm", "pvlinux", "pvhlinux"] {
        files.push(PathBuf::from(format!("/etc/xen/xlexample.{x}")));
    }
    files.sort();
    for f in files {
        match std::fs::read(&f) {
            Ok(b) => {
                let name = f
                    .file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned();
                out.push((name, b));
            }
            Err(e) => eprintln!("skipping {}: {e}", f.display()),
        }
    }
    out
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    std::fs::write(dir.join(name), data).expect("seed written");
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus = repo.join("tests/fuzz/corpus");
    for (i, r) in requests().iter().enumerate() {
        let mut seed = vec![7u8];
        seed.extend_from_slice(r);
        write(&corpus.join("xs_wire"), &format!("seed-{i:02}"), &seed);
    }
    for (i, s) in xs_sessions().iter().enumerate() {
        write(&corpus.join("xs_request"), &format!("seed-{i:02}"), s);
    }
    for (i, s) in blkif_seeds().iter().enumerate() {
        write(&corpus.join("blkif"), &format!("seed-{i:02}"), s);
    }
    for (i, s) in netif_seeds().iter().enumerate() {
        write(&corpus.join("netif"), &format!("seed-{i:02}"), s);
    }
    for (i, s) in ring_seeds().iter().enumerate() {
        write(&corpus.join("ring"), &format!("seed-{i:02}"), s);
    }
    for (i, s) in console_seeds().iter().enumerate() {
        write(&corpus.join("console"), &format!("seed-{i:02}"), s);
    }
    for (name, b) in xl_cfg_seeds(&repo) {
        write(&corpus.join("xl_cfg"), &format!("seed-{name}"), &b);
    }
}
