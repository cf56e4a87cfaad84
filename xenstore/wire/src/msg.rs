//! Message types and the `xsd_sockmsg` header.

use xen_abi::io::xs_wire::xsd_sockmsg_type;

/// A valid xenstore message type (`enum xsd_sockmsg_type`, 0 to 26 without
/// the removed 20).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum MsgType {
    /// `XS_CONTROL` (alias `XS_DEBUG`).
    Control = 0,
    /// `XS_DIRECTORY`.
    Directory = 1,
    /// `XS_READ`.
    Read = 2,
    /// `XS_GET_PERMS`.
    GetPerms = 3,
    /// `XS_WATCH`.
    Watch = 4,
    /// `XS_UNWATCH`.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`.
    Introduce = 8,
    /// `XS_RELEASE`.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT` (server to client only).
    WatchEvent = 15,
    /// `XS_ERROR` (server to client only).
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESET_WATCHES`.
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`.
    DirectoryPart = 22,
    /// `XS_GET_FEATURE`.
    GetFeature = 23,
    /// `XS_SET_FEATURE`.
    SetFeature = 24,
    /// `XS_GET_QUOTA`.
    GetQuota = 25,
    /// `XS_SET_QUOTA`.
    SetQuota = 26,
}

impl MsgType {
    /// All 26 valid types, in numeric order.
    pub const ALL: [MsgType; 26] = [
        MsgType::Control,
        MsgType::Directory,
        MsgType::Read,
        MsgType::GetPerms,
        MsgType::Watch,
        MsgType::Unwatch,
        MsgType::TransactionStart,
        MsgType::TransactionEnd,
        MsgType::Introduce,
        MsgType::Release,
        MsgType::GetDomainPath,
        MsgType::Write,
        MsgType::Mkdir,
        MsgType::Rm,
        MsgType::SetPerms,
        MsgType::WatchEvent,
        MsgType::Error,
        MsgType::IsDomainIntroduced,
        MsgType::Resume,
        MsgType::SetTarget,
        MsgType::ResetWatches,
        MsgType::DirectoryPart,
        MsgType::GetFeature,
        MsgType::SetFeature,
        MsgType::GetQuota,
        MsgType::SetQuota,
    ];

    /// The type with numeric value `v`, if valid.
    #[must_use]
    pub fn from_u32(v: u32) -> Option<MsgType> {
        match v {
            0..=19 => Some(Self::ALL[v as usize]),
            21..=26 => Some(Self::ALL[v as usize - 1]),
            _ => None,
        }
    }

    /// The numeric value.
    #[must_use]
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The name without `XS_` (`"TRANSACTION_START"`), as Xen logs it.
    #[must_use]
    pub fn name(self) -> &'static str {
        self.to_abi().name()
    }

    /// The `xen-abi` mirror of this type.
    #[must_use]
    pub fn to_abi(self) -> xsd_sockmsg_type {
        xsd_sockmsg_type::ALL[Self::ALL
            .iter()
            .position(|t| *t == self)
            .expect("MsgType::ALL and xsd_sockmsg_type::ALL list the same 26 types")]
    }
}

impl From<MsgType> for u32 {
    fn from(t: MsgType) -> u32 {
        t.as_u32()
    }
}

impl From<xsd_sockmsg_type> for MsgType {
    fn from(t: xsd_sockmsg_type) -> MsgType {
        Self::from_u32(t.as_u32()).expect("every xsd_sockmsg_type is a MsgType")
    }
}

/// Errors of the header codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than 16 bytes were given.
    #[error("a xenstore header needs 16 bytes, got {0}")]
    Short(usize),
}

/// The 16-byte `xsd_sockmsg` header, in host (little-endian) byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Header {
    /// The raw `type` (possibly not a valid [`MsgType`]).
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0 outside transactions).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Size of the header on the wire.
    pub const SIZE: usize = 16;

    /// A header of type `ty`.
    #[must_use]
    pub fn new(ty: MsgType, req_id: u32, tx_id: u32, len: u32) -> Header {
        Header {
            ty: ty.as_u32(),
            req_id,
            tx_id,
            len,
        }
    }

    /// The message type, if valid.
    #[must_use]
    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.ty)
    }

    /// Decodes the first 16 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<Header, HeaderError> {
        let Some(b) = b.get(..Self::SIZE) else {
            return Err(HeaderError::Short(b.len()));
        };
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(Header {
            ty: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        })
    }

    /// The 16 wire bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&self.ty.to_le_bytes());
        out[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_msg_type_from_u32_all_valid_roundtrip() {
        for t in MsgType::ALL {
            assert_eq!(MsgType::from_u32(t.as_u32()), Some(t));
            assert_eq!(t.to_abi().as_u32(), t.as_u32());
            assert_eq!(MsgType::from(t.to_abi()), t);
        }
        assert_eq!(MsgType::Read.name(), "READ");
    }

    #[test]
    fn test_msg_type_from_u32_invalid_is_none() {
        for v in [20, 27, 0xffff, u32::MAX] {
            assert_eq!(MsgType::from_u32(v), None);
        }
    }

    #[test]
    fn test_header_encode_decode_roundtrip() {
        let h = Header::new(MsgType::Write, 1, 2, 3);
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        assert_eq!(h.encode()[0], 11);
    }

    #[test]
    fn test_header_decode_short_fails() {
        assert_eq!(Header::decode(&[0; 15]), Err(HeaderError::Short(15)));
    }
}
