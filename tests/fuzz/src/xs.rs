//! The xenstore targets: the wire codec and xenstored's request path.

use xenstore_wire::{Decoder, Reply, Request};
use xenstored::harness::{Harness, RingWord, CONNS};

use crate::Input;

/// `xs_wire`: the first byte chooses the chunk size; the rest is fed to a
/// decoder in chunks, every packet parsed as a request and as a reply. A
/// request that parses re-encodes to bytes that parse to an equal request.
pub(crate) fn wire(data: &[u8]) {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut dec = Decoder::new();
    for c in rest.chunks(chunk) {
        dec.push(c);
        loop {
            match dec.next_packet() {
                Ok(Some((h, p))) => {
                    if let Ok(r) = Request::parse(&h, p) {
                        let mut out = Vec::new();
                        if r.encode(h.req_id, h.tx_id, &mut out).is_ok() {
                            let mut d2 = Decoder::new();
                            d2.push(&out);
                            match d2.next_packet() {
                                Ok(Some((h2, p2))) => {
                                    assert_eq!(Request::parse(&h2, p2).as_ref(), Ok(&r));
                                }
                                other => panic!("re-encoded request does not decode: {other:?}"),
                            }
                        }
                    }
                    let _ = Reply::parse(&h, p);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// `xs_request`: records of `[op][len][bytes]` on a fresh [`Harness`]. The
/// op's low bits pick one of its connections; with bit 7 set the record
/// pokes a word of that connection's ring page (bits 3..6 pick the word,
/// the bytes give the value), else its bytes are sent on the connection.
/// The store's invariants must hold at the end.
pub(crate) fn request(data: &[u8]) {
    let mut h = Harness::new();
    let mut input = Input::new(data);
    while !input.is_empty() {
        let op = input.u8();
        let conn = usize::from(op & 7) % CONNS;
        if op & 0x80 != 0 {
            let word = RingWord::from_byte((op >> 3) & 0xf);
            let value = input.u32();
            h.poke_ring(conn, word, value);
        } else {
            let len = usize::from(input.u8());
            let bytes = input.bytes(len);
            let _ = h.feed_conn(conn, bytes);
        }
    }
    if let Err(e) = h.check() {
        panic!("tree invariant broken: {e}");
    }
}
