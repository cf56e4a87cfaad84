//! Seed inputs for the `packet` and `request` fuzz targets.

use xenstore_wire::{PermList, Request};

/// Well-formed requests of every type, encoded.
#[must_use]
pub fn requests() -> Vec<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn test_write_seed_corpora() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
        for (i, r) in requests().iter().enumerate() {
            let p = root.join("packet");
            std::fs::create_dir_all(&p).unwrap();
            let mut seed = vec![7u8];
            seed.extend_from_slice(r);
            std::fs::write(p.join(format!("seed-{i:02}")), seed).unwrap();
            let q = root.join("request");
            std::fs::create_dir_all(&q).unwrap();
            let mut rec = Vec::new();
            for (who, chunk) in [(0u8, r.as_slice()), (1u8, r.as_slice())] {
                for c in chunk.chunks(255) {
                    rec.push(who);
                    rec.push(c.len() as u8);
                    rec.extend_from_slice(c);
                }
            }
            std::fs::write(q.join(format!("seed-{i:02}")), rec).unwrap();
        }
    }
}
