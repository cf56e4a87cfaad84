//! `netif`: netback's tx parser (`xen_netback::request::parse_tx`) on the
//! pending slots of a tx ring, as the device loop feeds it (at most
//! `MAX_SLOTS + MAX_EXTRAS` pending), each packet's fragments checked
//! against a hostile grant table (netback copies them out: read-only).
//! What a parsed packet may touch is checked: the slot bound, fragments
//! inside their page adding up to the packet's size.

use xen_abi::io::netif::NETIF_TX_SRING_ENTRY_SIZE;
use xen_netback::request::{parse_tx, SlotKind, TxParse, TxSlot, MAX_EXTRAS, MAX_SLOTS};

use crate::grants;
use crate::Input;

/// Most slots per input.
const MAX_INPUT_SLOTS: usize = 128;

pub(crate) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let table = grants::table(&mut input);
    let mut slots: Vec<TxSlot> = Vec::new();
    for _ in 0..MAX_INPUT_SLOTS {
        if input.is_empty() {
            break;
        }
        slots.push(input.array::<NETIF_TX_SRING_ENTRY_SIZE>());
    }
    // The device's loop: take slots into `pending` up to the bound, parse
    // the head, drop what a packet used.
    let mut pending: Vec<TxSlot> = Vec::new();
    let mut next = 0;
    loop {
        while pending.len() < MAX_SLOTS + MAX_EXTRAS && next < slots.len() {
            pending.push(slots[next]);
            next += 1;
        }
        match parse_tx(&pending) {
            TxParse::Incomplete => {
                assert!(
                    pending.len() < MAX_SLOTS + MAX_EXTRAS,
                    "a full pending window is never incomplete"
                );
                return;
            }
            TxParse::Fatal(_) => return,
            TxParse::Packet(Err((_, kinds))) => {
                assert!(!kinds.is_empty() && kinds.len() <= pending.len());
                pending.drain(..kinds.len());
            }
            TxParse::Packet(Ok(p)) => {
                assert!(p.slots.len() <= pending.len());
                let data_slots = p
                    .slots
                    .iter()
                    .filter(|k| matches!(k, SlotKind::Data(_)))
                    .count();
                assert!(data_slots <= MAX_SLOTS, "{data_slots} data slots accepted");
                assert_eq!(data_slots, p.frags.len());
                let mut total = 0u32;
                for &(gref, off, len) in &p.frags {
                    assert!(
                        u32::from(off) + u32::from(len) <= 4096,
                        "fragment leaves its page"
                    );
                    total += u32::from(len);
                    if len > 0 {
                        let _ = grants::map_unmap(&table, gref, true);
                    }
                }
                assert_eq!(total, u32::from(p.size), "fragments do not add up");
                pending.drain(..p.slots.len());
            }
        }
    }
}
