//! The xenstore wire protocol of `xen/io/xs_wire.h`, pure and `no_std` (with
//! `alloc`): shared by `xenstored`, the Dom0 client library and the
//! frontends' xenbus client.
//!
//! - [`Header`] is the 16-byte `xsd_sockmsg` (type, request id, transaction
//!   id, payload length); [`MsgType`] names the 26 valid message types.
//! - [`Decoder`] takes bytes in chunks (from a socket or a ring) and yields
//!   complete packets, or [`DecodeError::Oversized`] for a payload above
//!   [`XENSTORE_PAYLOAD_MAX`] (the peer is then dropped, as Xen does).
//! - [`Request::parse`] turns a packet into a typed request borrowing the
//!   payload; [`Request::encode`] is its inverse (for clients).
//! - [`PacketWriter`] builds a reply or event in place in an output buffer;
//!   [`Reply`] parses one on the client side.
//! - [`path`] validates node names; [`Perm`] and [`PermList`] are the
//!   `n`/`r`/`w`/`b` + domid permission strings; [`XsError`] the sixteen
//!   error names.
//!
//! ```
//! use xenstore_wire::{Decoder, Header, MsgType, Request};
//!
//! let mut wire = Vec::new();
//! Request::Write { path: "/a/b", value: b"hi" }.encode(7, 0, &mut wire).unwrap();
//! let mut dec = Decoder::new();
//! dec.push(&wire);
//! let (hdr, payload) = dec.next_packet().unwrap().unwrap();
//! assert_eq!(hdr.msg_type(), Some(MsgType::Write));
//! assert_eq!(hdr.req_id, 7);
//! let req = Request::parse(&hdr, payload).unwrap();
//! assert_eq!(req, Request::Write { path: "/a/b", value: b"hi" });
//! ```
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod error;
mod msg;
mod packet;
pub mod path;
mod perms;
mod reply;
mod request;

pub use error::XsError;
pub use msg::{Header, HeaderError, MsgType};
pub use packet::{DecodeError, Decoder, PacketWriter, WriterError};
pub use perms::{Perm, PermList, PermsError, PERM_BOTH, PERM_NONE, PERM_READ, PERM_WRITE};
pub use reply::{Reply, ReplyError};
pub use request::{strings, Request, RequestError};

pub use xen_abi::io::xs_wire::{
    XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX, XENSTORE_RING_SIZE,
};

/// The domain id type of xenstore (`domid_t`, 16 bits).
pub type DomId = u16;

/// `DOMID_SELF`: in `XS_IS_DOMAIN_INTRODUCED` and friends, "the caller".
pub const DOMID_SELF: DomId = xen_abi::xen::DOMID_SELF;

/// `server_features` bit: the `XS_WATCH` depth argument is supported
/// (newer Xen; not in the 4.17 header).
pub const XENSTORE_SERVER_FEATURE_WATCHDEPTH: u32 = 4;

/// The reply payload of every successful request that returns no data.
pub const OK: &[u8] = b"OK\0";
