//! The packet decoder and parsers on arbitrary bytes, fed in chunks whose
//! size the first byte chooses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenstore_wire::{Decoder, Reply, Request};

fuzz_target!(|data: &[u8]| {
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
                        // What parses must encode back to an equal request.
                        let mut out = Vec::new();
                        if r.encode(h.req_id, h.tx_id, &mut out).is_ok() {
                            let mut d2 = Decoder::new();
                            d2.push(&out);
                            let (h2, p2) = d2.next_packet().unwrap().unwrap();
                            assert_eq!(Request::parse(&h2, p2).unwrap(), r);
                        }
                    }
                    let _ = Reply::parse(&h, p);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
