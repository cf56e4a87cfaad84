//! Drives the engine without sockets: the fuzz targets
//! (`xenstore/fuzz`) and the stable property tests share this code.

use xenstore_wire::{DecodeError, Decoder};

use crate::core::{ConnKind, Core};
use crate::ops::Caller;
use crate::watch::ConnId;

/// An engine with a Dom0 socket connection and a guest ring connection of
/// domain 1 (whose home exists and is its own).
#[derive(Debug)]
pub struct Harness {
    /// The engine.
    pub core: Core,
    /// The Dom0 connection.
    pub dom0: ConnId,
    /// The guest connection.
    pub guest: ConnId,
    decoders: [Decoder; 2],
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A fresh store and the two connections.
    #[must_use]
    pub fn new() -> Harness {
        let mut core = Core::new(crate::store::Tree::new(), true);
        let dom0 = core.new_conn(Caller::dom0(), ConnKind::Socket { read_only: false });
        let guest = core.new_conn(Caller::guest(1), ConnKind::Domain);
        let _ = core.introduce(1, 0, 0);
        core.tree.upsert(
            "/local/domain/1",
            Vec::new(),
            xenstore_wire::PermList::owner(1, xenstore_wire::PERM_NONE),
        );
        core.actions.clear();
        Harness {
            core,
            dom0,
            guest,
            decoders: [Decoder::new(), Decoder::new()],
        }
    }

    /// Feeds bytes as sent by Dom0 (`guest` false) or the guest, handling
    /// every complete packet and discarding the output; an oversized
    /// packet is the error that drops a connection.
    pub fn feed(&mut self, guest: bool, data: &[u8]) -> Result<(), DecodeError> {
        let (id, dec) = if guest {
            (self.guest, &mut self.decoders[1])
        } else {
            (self.dom0, &mut self.decoders[0])
        };
        dec.push(data);
        let mut n = 0usize;
        while let Some((hdr, payload)) = dec.next_packet()? {
            self.core.handle(id, &hdr, payload);
            n += 1;
            if n > 10_000 {
                break;
            }
        }
        for c in [self.dom0, self.guest] {
            if let Some(conn) = self.core.conn_mut(c) {
                let len = conn.out.pending().len();
                conn.out.consume(len);
            }
        }
        self.core.journal.buf.clear();
        self.core.actions.clear();
        Ok(())
    }

    /// The tree's invariants hold.
    pub fn check(&self) -> Result<(), String> {
        self.core.tree.verify()
    }
}
