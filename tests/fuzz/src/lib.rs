//! The fuzz targets of the stack as plain functions of one byte slice.
//!
//! `tests/fuzz/fuzz/fuzz_targets/NAME.rs` (cargo-fuzz's own workspace)
//! hands libFuzzer's input to [`run`]`(NAME, data)` (`cargo fuzz run
//! --sanitizer none NAME` on stable Rust); `tests/replay.rs` calls the same
//! function on every file of `tests/fuzz/corpus/NAME/` in the normal
//! `cargo test`. A target returns
//! normally on any input; a panic is a bug (a crash for libFuzzer, a
//! failed test for the replay). Each target checks what must hold after
//! the input, not only that nothing panicked.
//!
//! | target | what it drives |
//! |---|---|
//! | `xs_wire` | the xenstore packet decoder and the request/reply parsers, fed in chunks; what parses re-encodes equal |
//! | `xs_request` | xenstored's request handling on five connections (Dom0, read-only, three guests, two of them over real ring pages with hostile indices); the tree's invariants hold at the end |
//! | `ring` | `io/ring.h` front and back rings over one shared page, with the peer's indices overwritten at random; neither side ever holds more than a ring of work |
//! | `blkif` | blkback's request parser on ring slots, with indirect pages and a grant table (v1 or v2) of hostile entries behind them, mapped through the mapper's checks |
//! | `netif` | netback's tx packet parser on ring slots, each fragment's grant checked against a hostile table |
//! | `console` | the backend end of a console ring (`xencons_interface`) under hostile indices, as backendd's console thread reads and writes it |
//! | `xl_cfg` | the `xl.cfg` parser and the disk/vif specification parsers; errors name a line of the file |

mod blkif;
mod console;
mod grants;
mod netif;
mod page;
mod ring;
mod xl_cfg;
mod xs;

/// The targets' names, as in `tests/fuzz/fuzz/Cargo.toml` and `corpus/`.
pub const TARGETS: &[&str] = &[
    "xs_wire",
    "xs_request",
    "ring",
    "blkif",
    "netif",
    "console",
    "xl_cfg",
];

/// Runs target `name` on `data`; `false` if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "xs_wire" => xs::wire(data),
        "xs_request" => xs::request(data),
        "ring" => ring::run(data),
        "blkif" => blkif::run(data),
        "netif" => netif::run(data),
        "console" => console::run(data),
        "xl_cfg" => xl_cfg::run(data),
        _ => return false,
    }
    true
}

/// Reads fuzz input front to back; past the end every read is zero.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// Exactly `N` bytes, zero-padded at the end of the input.
    pub(crate) fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }
}
