//! Message shapes: the request/response entry types the benchmark moves.
//!
//! Every request carries a sequence number (so the consumer can check order and the
//! optimiser cannot drop the copy) and a stop flag (the producer marks its last
//! message so the consumer knows when a time-bounded run ends).

/// One fixed-size message that can travel through every ring under test.
pub trait Payload: Copy + Send + 'static {
    /// Size in bytes (what the report calls `msg_bytes` for requests).
    const BYTES: usize;
    /// A message carrying `id` and the stop flag.
    fn with_id(id: u64, stop: bool) -> Self;
    /// The sequence number, possibly truncated to what fits in the message.
    fn id(&self) -> u64;
    /// Whether the producer marked this as its last message.
    fn is_stop(&self) -> bool;
    /// Whether this message carries sequence number `id` (after truncation).
    fn carries(&self, id: u64) -> bool {
        self.id() == Self::with_id(id, false).id()
    }
}

macro_rules! byte_payload {
    ($n:literal) => {
        impl Payload for [u8; $n] {
            const BYTES: usize = $n;
            #[inline(always)]
            fn with_id(id: u64, stop: bool) -> Self {
                let mut m = [0u8; $n];
                m[..8].copy_from_slice(&id.to_le_bytes());
                m[8] = u8::from(stop);
                m
            }
            #[inline(always)]
            fn id(&self) -> u64 {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self[..8]);
                u64::from_le_bytes(b)
            }
            #[inline(always)]
            fn is_stop(&self) -> bool {
                self[8] != 0
            }
        }
    };
}

byte_payload!(112);
byte_payload!(16);
byte_payload!(12);

/// The 4-byte netif tx response: 31 bits of sequence number and the stop flag on top.
impl Payload for [u8; 4] {
    const BYTES: usize = 4;
    #[inline(always)]
    fn with_id(id: u64, stop: bool) -> Self {
        // Truncation is the point: only the low 31 bits fit.
        let low = (id & 0x7fff_ffff) as u32;
        (low | (u32::from(stop) << 31)).to_le_bytes()
    }
    #[inline(always)]
    fn id(&self) -> u64 {
        u64::from(u32::from_le_bytes(*self) & 0x7fff_ffff)
    }
    #[inline(always)]
    fn is_stop(&self) -> bool {
        u32::from_le_bytes(*self) >> 31 != 0
    }
}

/// A request/response pair as one protocol uses it.
pub trait Shape: Send + Sync + 'static {
    /// The request (frontend to backend).
    type Req: Payload + xen_ring::RingEntry;
    /// The response (backend to frontend).
    type Rsp: Payload + xen_ring::RingEntry;
    /// The request size the report shows as `msg_bytes`.
    const MSG_BYTES: usize = <Self::Req as Payload>::BYTES;

    /// The response the backend sends for `req`.
    #[inline(always)]
    fn answer(req: &Self::Req) -> Self::Rsp {
        <Self::Rsp as Payload>::with_id(req.id(), req.is_stop())
    }
}

/// blkif-sized: 112-byte `blkif_request`, 16-byte `blkif_response`.
#[derive(Debug, Clone, Copy)]
pub struct Blk;
impl Shape for Blk {
    type Req = [u8; 112];
    type Rsp = [u8; 16];
}

/// netif-tx-sized: 12-byte `netif_tx_request`, 4-byte `netif_tx_response` (padded
/// header fields left out; what matters is the slot size).
#[derive(Debug, Clone, Copy)]
pub struct NetTx;
impl Shape for NetTx {
    type Req = [u8; 12];
    type Rsp = [u8; 4];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_payload_roundtrip_keeps_id_and_stop() {
        let m = <[u8; 112]>::with_id(0x0102_0304_0506_0708, true);
        assert_eq!(m.id(), 0x0102_0304_0506_0708);
        assert!(m.is_stop());
        let r = Blk::answer(&m);
        assert!(r.carries(0x0102_0304_0506_0708));
        assert!(r.is_stop());
    }

    #[test]
    fn test_small_response_truncates_id_but_matches() {
        let req = <[u8; 12]>::with_id(0x1_8000_0005, false);
        let rsp = NetTx::answer(&req);
        assert!(!rsp.is_stop());
        assert!(rsp.carries(0x1_8000_0005));
        assert!(!rsp.carries(6));
    }
}
