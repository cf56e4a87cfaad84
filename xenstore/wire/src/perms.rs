//! Node permissions: the `n`/`r`/`w`/`b` + domid strings of `XS_GET_PERMS`
//! and `XS_SET_PERMS`.
//!
//! A node's list starts with its owner, whose letter is also the access of
//! every domain not listed; the owner and privileged connections (Dom0)
//! have full access. The other entries grant their domain exactly their
//! letter.

use alloc::vec::Vec;
use core::fmt;

use crate::DomId;

/// No access (`n`).
pub const PERM_NONE: u8 = 0;
/// Read access (`r`, `XS_PERM_READ`).
pub const PERM_READ: u8 = 1;
/// Write access (`w`, `XS_PERM_WRITE`).
pub const PERM_WRITE: u8 = 2;
/// Read and write access (`b`).
pub const PERM_BOTH: u8 = PERM_READ | PERM_WRITE;

/// Why a permission string is invalid (`EINVAL` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PermsError {
    /// The list is empty.
    #[error("a permission list needs at least the owner entry")]
    Empty,
    /// The first byte is not one of `n`, `r`, `w`, `b`.
    #[error("permission letter {0:#04x} is not one of n, r, w, b")]
    BadLetter(u8),
    /// The domain id is missing, not decimal or above 65535.
    #[error("the domain id of a permission is not a number up to 65535")]
    BadDomid,
    /// The list has more entries than allowed.
    #[error("the permission list has {0} entries, more than allowed")]
    TooMany(usize),
}

/// One permission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: DomId,
    /// [`PERM_NONE`], [`PERM_READ`], [`PERM_WRITE`] or [`PERM_BOTH`].
    pub access: u8,
}

impl Perm {
    /// An entry.
    #[must_use]
    pub const fn new(domid: DomId, access: u8) -> Perm {
        Perm {
            domid,
            access: access & PERM_BOTH,
        }
    }

    /// The letter of the access (`b'n'`, `b'r'`, `b'w'`, `b'b'`).
    #[must_use]
    pub fn letter(self) -> u8 {
        match self.access & PERM_BOTH {
            PERM_READ => b'r',
            PERM_WRITE => b'w',
            PERM_BOTH => b'b',
            _ => b'n',
        }
    }

    /// Parses `"b0"`, `"r12"`...
    pub fn parse(s: &[u8]) -> Result<Perm, PermsError> {
        let (&letter, digits) = s.split_first().ok_or(PermsError::BadLetter(0))?;
        let access = match letter {
            b'n' => PERM_NONE,
            b'r' => PERM_READ,
            b'w' => PERM_WRITE,
            b'b' => PERM_BOTH,
            other => return Err(PermsError::BadLetter(other)),
        };
        if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(PermsError::BadDomid);
        }
        let mut v: u32 = 0;
        for &d in digits {
            v = v * 10 + u32::from(d - b'0');
        }
        let domid = DomId::try_from(v).map_err(|_| PermsError::BadDomid)?;
        Ok(Perm { domid, access })
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", char::from(self.letter()), self.domid)
    }
}

/// A node's permission list: owner first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PermList(pub Vec<Perm>);

impl PermList {
    /// A list with only the owner entry.
    #[must_use]
    pub fn owner(domid: DomId, others: u8) -> PermList {
        PermList(alloc::vec![Perm::new(domid, others)])
    }

    /// Parses a `XS_SET_PERMS` list: NUL-terminated entries (bytes after
    /// the last NUL are ignored, as Xen counts NULs).
    pub fn parse(strings: &[u8]) -> Result<PermList, PermsError> {
        let mut v = Vec::new();
        for s in crate::strings(strings) {
            v.push(Perm::parse(s)?);
        }
        if v.is_empty() {
            return Err(PermsError::Empty);
        }
        Ok(PermList(v))
    }

    /// The owner.
    #[must_use]
    pub fn owner_id(&self) -> DomId {
        self.0.first().map_or(0, |p| p.domid)
    }

    /// Appends the wire form (`"b0\0r1\0"`) to `out`.
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        for p in &self.0 {
            out.push(p.letter());
            push_decimal(out, u64::from(p.domid));
            out.push(0);
        }
    }

    /// The wire form (`"b0\0r1\0"`).
    #[must_use]
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_wire(&mut v);
        v
    }

    /// The access (`PERM_*`) a connection of domain `domid` (acting for
    /// `target`, if set by `XS_SET_TARGET`) has; `privileged` connections
    /// (Dom0, the tools) have everything. Mirrors Xen's `perm_for_conn`.
    #[must_use]
    pub fn access_for(&self, domid: DomId, target: Option<DomId>, privileged: bool) -> u8 {
        let Some(owner) = self.0.first() else {
            return if privileged { PERM_BOTH } else { PERM_NONE };
        };
        let is = |id: DomId| id == domid || target == Some(id);
        if privileged || is(owner.domid) {
            return PERM_BOTH;
        }
        for p in &self.0[1..] {
            if is(p.domid) {
                return p.access;
            }
        }
        owner.access
    }
}

impl fmt::Display for PermList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Appends the decimal form of `v`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_perm_parse_each_letter_ok() {
        assert_eq!(Perm::parse(b"n0"), Ok(Perm::new(0, PERM_NONE)));
        assert_eq!(Perm::parse(b"r1"), Ok(Perm::new(1, PERM_READ)));
        assert_eq!(Perm::parse(b"w22"), Ok(Perm::new(22, PERM_WRITE)));
        assert_eq!(Perm::parse(b"b65535"), Ok(Perm::new(65535, PERM_BOTH)));
    }

    #[test]
    fn test_perm_parse_bad_input_fails() {
        assert_eq!(Perm::parse(b"x1"), Err(PermsError::BadLetter(b'x')));
        assert_eq!(Perm::parse(b"r"), Err(PermsError::BadDomid));
        assert_eq!(Perm::parse(b"r1a"), Err(PermsError::BadDomid));
        assert_eq!(Perm::parse(b"r65536"), Err(PermsError::BadDomid));
        assert_eq!(Perm::parse(b""), Err(PermsError::BadLetter(0)));
    }

    #[test]
    fn test_perm_list_parse_and_wire_roundtrip() {
        let l = PermList::parse(b"b5\0r0\0n7\0").unwrap();
        assert_eq!(l.0.len(), 3);
        assert_eq!(l.owner_id(), 5);
        assert_eq!(l.to_wire(), b"b5\0r0\0n7\0");
        assert_eq!(alloc::format!("{l}"), "b5 r0 n7");
    }

    #[test]
    fn test_perm_list_parse_empty_fails() {
        assert_eq!(PermList::parse(b""), Err(PermsError::Empty));
        assert_eq!(PermList::parse(b"b0"), Err(PermsError::Empty));
    }

    #[test]
    fn test_perm_list_access_for_owner_acl_default() {
        let l = PermList::parse(b"n5\0r3\0w4\0").unwrap();
        assert_eq!(l.access_for(5, None, false), PERM_BOTH);
        assert_eq!(l.access_for(3, None, false), PERM_READ);
        assert_eq!(l.access_for(4, None, false), PERM_WRITE);
        assert_eq!(l.access_for(9, None, false), PERM_NONE);
        assert_eq!(l.access_for(9, Some(3), false), PERM_READ);
        assert_eq!(l.access_for(9, None, true), PERM_BOTH);
    }
}
