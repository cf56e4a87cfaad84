//! Typed requests: parsing a packet's payload (server side) and encoding it
//! (client side).
//!
//! Payload rules follow Xen's `xenstored` (`get_strings`, `onearg`): a
//! single-argument request must be exactly one NUL-terminated string;
//! multi-argument requests take their NUL-terminated strings in order and
//! ignore what follows; `WRITE`'s value is everything after the path's NUL
//! (binary, possibly empty).

use alloc::vec::Vec;

use crate::msg::{Header, MsgType};
use crate::packet::{PacketWriter, WriterError};
use crate::perms::{push_decimal, PermList};
use crate::{DomId, XsError};

/// Why a payload does not form a valid request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The header's type is not a valid request type (`ENOSYS` on the wire,
    /// as Xen answers unknown operations).
    #[error("message type {0} is not a request xenstored serves")]
    UnknownType(u32),
    /// The payload lacks a NUL-terminated argument, or has extra bytes
    /// where one string is expected.
    #[error("the payload of {0:?} is malformed")]
    Malformed(MsgType),
    /// A string argument is not UTF-8 (paths must be ASCII).
    #[error("an argument of {0:?} is not valid UTF-8")]
    NotUtf8(MsgType),
    /// A numeric argument is not a decimal number in range.
    #[error("a numeric argument of {0:?} is invalid")]
    BadNumber(MsgType),
    /// The permission list is invalid.
    #[error("the permission list is invalid")]
    BadPerms(#[from] crate::PermsError),
}

impl RequestError {
    /// The error to send back.
    #[must_use]
    pub fn xs_error(&self) -> XsError {
        match self {
            RequestError::UnknownType(_) => XsError::Enosys,
            _ => XsError::Einval,
        }
    }
}

/// Iterates over the NUL-terminated strings of `payload` (bytes after the
/// last NUL are not returned), without their NULs.
pub fn strings(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = payload;
    core::iter::from_fn(move || {
        let nul = rest.iter().position(|&b| b == 0)?;
        let (s, tail) = rest.split_at(nul);
        rest = &tail[1..];
        Some(s)
    })
}

/// A xenstore request, borrowing its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `XS_CONTROL`: `<command>|[<parameters>|]*`; `args` is the raw
    /// payload, see [`strings`].
    Control {
        /// The raw payload.
        args: &'a [u8],
    },
    /// `XS_DIRECTORY`: `<path>|`.
    Directory {
        /// The node.
        path: &'a str,
    },
    /// `XS_READ`: `<path>|`.
    Read {
        /// The node.
        path: &'a str,
    },
    /// `XS_GET_PERMS`: `<path>|`.
    GetPerms {
        /// The node.
        path: &'a str,
    },
    /// `XS_WATCH`: `<wpath>|<token>|[<depth>|]`.
    Watch {
        /// The watched path (may be relative or special).
        path: &'a str,
        /// The client's token.
        token: &'a [u8],
        /// The optional watch depth (`XENSTORE_SERVER_FEATURE_WATCHDEPTH`):
        /// events fire only for paths at most this many levels below
        /// `path`; `None` (absent or empty third string) is unlimited.
        depth: Option<u32>,
    },
    /// `XS_UNWATCH`: `<wpath>|<token>|`.
    Unwatch {
        /// The watched path.
        path: &'a str,
        /// The client's token.
        token: &'a [u8],
    },
    /// `XS_TRANSACTION_START`: `|` (ignored).
    TransactionStart,
    /// `XS_TRANSACTION_END`: `T|` or `F|`.
    TransactionEnd {
        /// `T`: commit; `F`: abort.
        commit: bool,
    },
    /// `XS_INTRODUCE`: `<domid>|<mfn>|<evtchn>|`.
    Introduce {
        /// The domain.
        domid: DomId,
        /// Its xenstore page frame (unused: the page is grant entry 1).
        mfn: u64,
        /// Its unbound event channel port.
        port: u32,
    },
    /// `XS_RELEASE`: `<domid>|`.
    Release {
        /// The domain.
        domid: DomId,
    },
    /// `XS_GET_DOMAIN_PATH`: `<domid>|`.
    GetDomainPath {
        /// The domain.
        domid: DomId,
    },
    /// `XS_WRITE`: `<path>|<value|>`.
    Write {
        /// The node.
        path: &'a str,
        /// The value (binary).
        value: &'a [u8],
    },
    /// `XS_MKDIR`: `<path>|`.
    Mkdir {
        /// The node.
        path: &'a str,
    },
    /// `XS_RM`: `<path>|`.
    Rm {
        /// The node.
        path: &'a str,
    },
    /// `XS_SET_PERMS`: `<path>|<perm>|+`.
    SetPerms {
        /// The node.
        path: &'a str,
        /// The new list.
        perms: PermList,
    },
    /// `XS_IS_DOMAIN_INTRODUCED`: `<domid>|`.
    IsDomainIntroduced {
        /// The domain.
        domid: DomId,
    },
    /// `XS_RESUME`: `<domid>|`.
    Resume {
        /// The domain.
        domid: DomId,
    },
    /// `XS_SET_TARGET`: `<domid>|<tdomid>|`.
    SetTarget {
        /// The domain that gets the rights.
        domid: DomId,
        /// The domain whose rights it gets.
        target: DomId,
    },
    /// `XS_RESET_WATCHES`: `|`.
    ResetWatches,
    /// `XS_DIRECTORY_PART`: `<path>|<offset>|`.
    DirectoryPart {
        /// The node.
        path: &'a str,
        /// Byte offset into the children list.
        offset: u32,
    },
    /// `XS_GET_FEATURE`: `[<domid>|]`.
    GetFeature {
        /// The domain, or `None` for the server's features.
        domid: Option<DomId>,
    },
    /// `XS_SET_FEATURE`: `<domid>|<value>|`.
    SetFeature {
        /// The domain.
        domid: DomId,
        /// The feature bitmap.
        features: u32,
    },
    /// `XS_GET_QUOTA`: `[[<domid>|]<quota>|]`; with no quota, the reply
    /// lists the quota names.
    GetQuota {
        /// The domain, or `None` for the global default.
        domid: Option<DomId>,
        /// The quota name, or `None` to list the names.
        quota: Option<&'a str>,
    },
    /// `XS_SET_QUOTA`: `[<domid>|]<quota>|<value>|`.
    SetQuota {
        /// The domain, or `None` for the global default.
        domid: Option<DomId>,
        /// The quota name.
        quota: &'a str,
        /// The new value.
        value: u32,
    },
}

fn utf8(ty: MsgType, b: &[u8]) -> Result<&str, RequestError> {
    core::str::from_utf8(b).map_err(|_| RequestError::NotUtf8(ty))
}

fn number<T: TryFrom<u64>>(ty: MsgType, b: &[u8]) -> Result<T, RequestError> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::BadNumber(ty));
    }
    let mut v: u64 = 0;
    for &d in b {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(RequestError::BadNumber(ty))?;
    }
    T::try_from(v).map_err(|_| RequestError::BadNumber(ty))
}

/// Exactly one NUL-terminated string (`onearg`).
fn one(ty: MsgType, p: &[u8]) -> Result<&[u8], RequestError> {
    match p.iter().position(|&b| b == 0) {
        Some(n) if n + 1 == p.len() => Ok(&p[..n]),
        _ => Err(RequestError::Malformed(ty)),
    }
}

/// The first `N` NUL-terminated strings (`get_strings`).
fn args<const N: usize>(ty: MsgType, p: &[u8]) -> Result<[&[u8]; N], RequestError> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut it = strings(p);
    for slot in &mut out {
        *slot = it.next().ok_or(RequestError::Malformed(ty))?;
    }
    Ok(out)
}

fn is_number(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

impl<'a> Request<'a> {
    /// Parses the request in `payload` (the `hdr.len` bytes after `hdr`).
    pub fn parse(hdr: &Header, payload: &'a [u8]) -> Result<Request<'a>, RequestError> {
        let ty = hdr.msg_type().ok_or(RequestError::UnknownType(hdr.ty))?;
        let p = payload;
        let path1 = |p: &'a [u8]| -> Result<&'a str, RequestError> { utf8(ty, one(ty, p)?) };
        let domid1 = |p: &'a [u8]| -> Result<DomId, RequestError> { number(ty, one(ty, p)?) };
        Ok(match ty {
            MsgType::Control => Request::Control { args: p },
            MsgType::Directory => Request::Directory { path: path1(p)? },
            MsgType::Read => Request::Read { path: path1(p)? },
            MsgType::GetPerms => Request::GetPerms { path: path1(p)? },
            MsgType::Mkdir => Request::Mkdir { path: path1(p)? },
            MsgType::Rm => Request::Rm { path: path1(p)? },
            MsgType::Watch | MsgType::Unwatch => {
                let [path, token] = args::<2>(ty, p)?;
                let path = utf8(ty, path)?;
                if ty == MsgType::Watch {
                    let depth = match strings(p).nth(2) {
                        None | Some(b"") => None,
                        Some(d) => Some(number(ty, d)?),
                    };
                    Request::Watch { path, token, depth }
                } else {
                    Request::Unwatch { path, token }
                }
            }
            MsgType::TransactionStart => Request::TransactionStart,
            MsgType::TransactionEnd => match one(ty, p)? {
                b"T" => Request::TransactionEnd { commit: true },
                b"F" => Request::TransactionEnd { commit: false },
                _ => return Err(RequestError::Malformed(ty)),
            },
            MsgType::Introduce => {
                let [d, m, e] = args::<3>(ty, p)?;
                Request::Introduce {
                    domid: number(ty, d)?,
                    mfn: number(ty, m)?,
                    port: number(ty, e)?,
                }
            }
            MsgType::Release => Request::Release { domid: domid1(p)? },
            MsgType::GetDomainPath => Request::GetDomainPath { domid: domid1(p)? },
            MsgType::IsDomainIntroduced => Request::IsDomainIntroduced { domid: domid1(p)? },
            MsgType::Resume => Request::Resume { domid: domid1(p)? },
            MsgType::Write => {
                let nul = p
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(RequestError::Malformed(ty))?;
                Request::Write {
                    path: utf8(ty, &p[..nul])?,
                    value: &p[nul + 1..],
                }
            }
            MsgType::SetPerms => {
                let nul = p
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(RequestError::Malformed(ty))?;
                Request::SetPerms {
                    path: utf8(ty, &p[..nul])?,
                    perms: PermList::parse(&p[nul + 1..])?,
                }
            }
            MsgType::SetTarget => {
                let [d, t] = args::<2>(ty, p)?;
                Request::SetTarget {
                    domid: number(ty, d)?,
                    target: number(ty, t)?,
                }
            }
            MsgType::ResetWatches => Request::ResetWatches,
            MsgType::DirectoryPart => {
                let [path, off] = args::<2>(ty, p)?;
                Request::DirectoryPart {
                    path: utf8(ty, path)?,
                    offset: number(ty, off)?,
                }
            }
            MsgType::GetFeature => {
                let mut it = strings(p);
                match it.next() {
                    None | Some(b"") => Request::GetFeature { domid: None },
                    Some(d) => Request::GetFeature {
                        domid: Some(number(ty, d)?),
                    },
                }
            }
            MsgType::SetFeature => {
                let [d, v] = args::<2>(ty, p)?;
                Request::SetFeature {
                    domid: number(ty, d)?,
                    features: number(ty, v)?,
                }
            }
            MsgType::GetQuota => {
                let mut it = strings(p).filter(|s| !s.is_empty());
                match (it.next(), it.next()) {
                    (None, _) => Request::GetQuota {
                        domid: None,
                        quota: None,
                    },
                    (Some(q), None) => Request::GetQuota {
                        domid: None,
                        quota: Some(utf8(ty, q)?),
                    },
                    (Some(d), Some(q)) => Request::GetQuota {
                        domid: Some(number(ty, d)?),
                        quota: Some(utf8(ty, q)?),
                    },
                }
            }
            MsgType::SetQuota => {
                let v: Vec<&[u8]> = strings(p).take(3).collect();
                match v.as_slice() {
                    [d, q, val] if is_number(d) => Request::SetQuota {
                        domid: Some(number(ty, d)?),
                        quota: utf8(ty, q)?,
                        value: number(ty, val)?,
                    },
                    [q, val, ..] => Request::SetQuota {
                        domid: None,
                        quota: utf8(ty, q)?,
                        value: number(ty, val)?,
                    },
                    _ => return Err(RequestError::Malformed(ty)),
                }
            }
            MsgType::WatchEvent | MsgType::Error => return Err(RequestError::UnknownType(hdr.ty)),
        })
    }

    /// The message type of this request.
    #[must_use]
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Control { .. } => MsgType::Control,
            Request::Directory { .. } => MsgType::Directory,
            Request::Read { .. } => MsgType::Read,
            Request::GetPerms { .. } => MsgType::GetPerms,
            Request::Watch { .. } => MsgType::Watch,
            Request::Unwatch { .. } => MsgType::Unwatch,
            Request::TransactionStart => MsgType::TransactionStart,
            Request::TransactionEnd { .. } => MsgType::TransactionEnd,
            Request::Introduce { .. } => MsgType::Introduce,
            Request::Release { .. } => MsgType::Release,
            Request::GetDomainPath { .. } => MsgType::GetDomainPath,
            Request::Write { .. } => MsgType::Write,
            Request::Mkdir { .. } => MsgType::Mkdir,
            Request::Rm { .. } => MsgType::Rm,
            Request::SetPerms { .. } => MsgType::SetPerms,
            Request::IsDomainIntroduced { .. } => MsgType::IsDomainIntroduced,
            Request::Resume { .. } => MsgType::Resume,
            Request::SetTarget { .. } => MsgType::SetTarget,
            Request::ResetWatches => MsgType::ResetWatches,
            Request::DirectoryPart { .. } => MsgType::DirectoryPart,
            Request::GetFeature { .. } => MsgType::GetFeature,
            Request::SetFeature { .. } => MsgType::SetFeature,
            Request::GetQuota { .. } => MsgType::GetQuota,
            Request::SetQuota { .. } => MsgType::SetQuota,
        }
    }

    /// The node or watch path this request names, as sent (possibly
    /// relative or special); `None` for requests without one.
    #[must_use]
    pub fn path(&self) -> Option<&'a str> {
        match self {
            Request::Directory { path }
            | Request::Read { path }
            | Request::GetPerms { path }
            | Request::Watch { path, .. }
            | Request::Unwatch { path, .. }
            | Request::Write { path, .. }
            | Request::Mkdir { path }
            | Request::Rm { path }
            | Request::SetPerms { path, .. }
            | Request::DirectoryPart { path, .. } => Some(path),
            Request::Control { .. }
            | Request::TransactionStart
            | Request::TransactionEnd { .. }
            | Request::Introduce { .. }
            | Request::Release { .. }
            | Request::GetDomainPath { .. }
            | Request::IsDomainIntroduced { .. }
            | Request::Resume { .. }
            | Request::SetTarget { .. }
            | Request::ResetWatches
            | Request::GetFeature { .. }
            | Request::SetFeature { .. }
            | Request::GetQuota { .. }
            | Request::SetQuota { .. } => None,
        }
    }

    /// Appends the whole packet (header and payload) to `out`; fails (and
    /// leaves `out` as it was) if the payload exceeds
    /// [`crate::XENSTORE_PAYLOAD_MAX`].
    pub fn encode(&self, req_id: u32, tx_id: u32, out: &mut Vec<u8>) -> Result<(), WriterError> {
        let mut w = PacketWriter::begin(out, self.msg_type(), req_id, tx_id);
        fn num(w: &mut PacketWriter<'_>, v: u64) {
            let mut tmp = Vec::with_capacity(21);
            push_decimal(&mut tmp, v);
            tmp.push(0);
            w.push(&tmp);
        }
        match self {
            Request::Control { args } => w.push(args),
            Request::Directory { path }
            | Request::Read { path }
            | Request::GetPerms { path }
            | Request::Mkdir { path }
            | Request::Rm { path } => w.push_str0(path.as_bytes()),
            Request::Watch { path, token, depth } => {
                w.push_str0(path.as_bytes());
                w.push_str0(token);
                if let Some(d) = depth {
                    num(&mut w, u64::from(*d));
                }
            }
            Request::Unwatch { path, token } => {
                w.push_str0(path.as_bytes());
                w.push_str0(token);
            }
            Request::TransactionStart | Request::ResetWatches => w.push(&[0]),
            Request::TransactionEnd { commit } => w.push(if *commit { b"T\0" } else { b"F\0" }),
            Request::Introduce { domid, mfn, port } => {
                num(&mut w, u64::from(*domid));
                num(&mut w, *mfn);
                num(&mut w, u64::from(*port));
            }
            Request::Release { domid }
            | Request::GetDomainPath { domid }
            | Request::IsDomainIntroduced { domid }
            | Request::Resume { domid } => num(&mut w, u64::from(*domid)),
            Request::Write { path, value } => {
                w.push_str0(path.as_bytes());
                w.push(value);
            }
            Request::SetPerms { path, perms } => {
                w.push_str0(path.as_bytes());
                let mut tmp = Vec::new();
                perms.write_wire(&mut tmp);
                w.push(&tmp);
            }
            Request::SetTarget { domid, target } => {
                num(&mut w, u64::from(*domid));
                num(&mut w, u64::from(*target));
            }
            Request::DirectoryPart { path, offset } => {
                w.push_str0(path.as_bytes());
                num(&mut w, u64::from(*offset));
            }
            Request::GetFeature { domid } => {
                if let Some(d) = domid {
                    num(&mut w, u64::from(*d));
                }
            }
            Request::SetFeature { domid, features } => {
                num(&mut w, u64::from(*domid));
                num(&mut w, u64::from(*features));
            }
            Request::GetQuota { domid, quota } => {
                if let Some(d) = domid {
                    num(&mut w, u64::from(*d));
                }
                if let Some(q) = quota {
                    w.push_str0(q.as_bytes());
                }
            }
            Request::SetQuota {
                domid,
                quota,
                value,
            } => {
                if let Some(d) = domid {
                    num(&mut w, u64::from(*d));
                }
                w.push_str0(quota.as_bytes());
                num(&mut w, u64::from(*value));
            }
        }
        w.finish().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decoder;
    use alloc::vec;

    fn hdr(ty: MsgType, len: usize) -> Header {
        Header::new(ty, 1, 0, len as u32)
    }

    fn roundtrip(r: &Request<'_>) {
        let mut out = Vec::new();
        r.encode(5, 9, &mut out).unwrap();
        let mut d = Decoder::new();
        d.push(&out);
        let (h, p) = d.next_packet().unwrap().unwrap();
        assert_eq!(h.req_id, 5);
        assert_eq!(h.tx_id, 9);
        assert_eq!(&Request::parse(&h, p).unwrap(), r);
    }

    #[test]
    fn test_request_every_type_encode_parse_roundtrip() {
        let all = vec![
            Request::Control {
                args: b"print\0hi\0",
            },
            Request::Directory { path: "/a" },
            Request::Read { path: "/a" },
            Request::GetPerms { path: "/a" },
            Request::Watch {
                path: "/a",
                token: b"t",
                depth: None,
            },
            Request::Watch {
                path: "/a",
                token: b"t",
                depth: Some(2),
            },
            Request::Unwatch {
                path: "a",
                token: b"t",
            },
            Request::TransactionStart,
            Request::TransactionEnd { commit: true },
            Request::TransactionEnd { commit: false },
            Request::Introduce {
                domid: 3,
                mfn: 1 << 40,
                port: 7,
            },
            Request::Release { domid: 3 },
            Request::GetDomainPath { domid: 3 },
            Request::Write {
                path: "/a",
                value: b"x\0y",
            },
            Request::Mkdir { path: "/a" },
            Request::Rm { path: "/a" },
            Request::SetPerms {
                path: "/a",
                perms: PermList::parse(b"b1\0r2\0").unwrap(),
            },
            Request::IsDomainIntroduced { domid: 3 },
            Request::Resume { domid: 3 },
            Request::SetTarget {
                domid: 3,
                target: 4,
            },
            Request::ResetWatches,
            Request::DirectoryPart {
                path: "/a",
                offset: 10,
            },
            Request::GetFeature { domid: None },
            Request::GetFeature { domid: Some(2) },
            Request::SetFeature {
                domid: 2,
                features: 1,
            },
            Request::GetQuota {
                domid: None,
                quota: None,
            },
            Request::GetQuota {
                domid: None,
                quota: Some("nodes"),
            },
            Request::GetQuota {
                domid: Some(1),
                quota: Some("nodes"),
            },
            Request::SetQuota {
                domid: None,
                quota: "nodes",
                value: 5,
            },
            Request::SetQuota {
                domid: Some(1),
                quota: "nodes",
                value: 5,
            },
        ];
        let mut seen = Vec::new();
        for r in &all {
            roundtrip(r);
            seen.push(r.msg_type());
        }
        for t in MsgType::ALL {
            if t != MsgType::WatchEvent && t != MsgType::Error {
                assert!(seen.contains(&t), "{t:?} not covered");
            }
        }
    }

    #[test]
    fn test_request_parse_read_without_nul_is_malformed() {
        let e = Request::parse(&hdr(MsgType::Read, 2), b"/a").unwrap_err();
        assert_eq!(e, RequestError::Malformed(MsgType::Read));
        assert_eq!(e.xs_error(), XsError::Einval);
    }

    #[test]
    fn test_request_parse_read_with_trailing_bytes_is_malformed() {
        assert!(Request::parse(&hdr(MsgType::Read, 4), b"/a\0x").is_err());
    }

    #[test]
    fn test_request_parse_unknown_type_is_enosys() {
        let h = Header {
            ty: 20,
            req_id: 0,
            tx_id: 0,
            len: 0,
        };
        assert_eq!(
            Request::parse(&h, b"").unwrap_err().xs_error(),
            XsError::Enosys
        );
        let h = Header::new(MsgType::WatchEvent, 0, 0, 0);
        assert_eq!(
            Request::parse(&h, b"").unwrap_err().xs_error(),
            XsError::Enosys
        );
    }

    #[test]
    fn test_request_parse_write_empty_value_ok() {
        let r = Request::parse(&hdr(MsgType::Write, 3), b"/a\0").unwrap();
        assert_eq!(
            r,
            Request::Write {
                path: "/a",
                value: b""
            }
        );
    }

    #[test]
    fn test_request_parse_transaction_end_bad_letter_fails() {
        assert!(Request::parse(&hdr(MsgType::TransactionEnd, 2), b"X\0").is_err());
    }

    #[test]
    fn test_request_parse_watch_extra_strings_ignored() {
        let r = Request::parse(&hdr(MsgType::Watch, 7), b"/a\0t\0\0x\0").unwrap();
        assert_eq!(
            r,
            Request::Watch {
                path: "/a",
                token: b"t",
                depth: None
            }
        );
    }

    #[test]
    fn test_request_parse_introduce_bad_number_fails() {
        let e = Request::parse(&hdr(MsgType::Introduce, 8), b"1\0x\0" as &[u8]);
        assert!(e.is_err());
        let e = Request::parse(&hdr(MsgType::Release, 7), b"70000\0").unwrap_err();
        assert_eq!(e, RequestError::BadNumber(MsgType::Release));
    }

    #[test]
    fn test_request_path_names_path_argument_only() {
        let r = Request::parse(&hdr(MsgType::Watch, 5), b"a/b\0t\0").unwrap();
        assert_eq!(r.path(), Some("a/b"));
        let r = Request::parse(&hdr(MsgType::Write, 5), b"/x\0/v\0").unwrap();
        assert_eq!(r.path(), Some("/x"));
        let r = Request::parse(&hdr(MsgType::DirectoryPart, 5), &[b'/', b'd', 0, b'0', 0]).unwrap();
        assert_eq!(r.path(), Some("/d"));
        assert_eq!(Request::Release { domid: 3 }.path(), None);
        assert_eq!(Request::TransactionStart.path(), None);
    }

    #[test]
    fn test_strings_skips_unterminated_tail() {
        let v: Vec<&[u8]> = strings(b"a\0\0bc\0d").collect();
        assert_eq!(v, vec![&b"a"[..], b"", b"bc"]);
    }
}
