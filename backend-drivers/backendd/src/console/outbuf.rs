//! The bytes waiting for the pty: a bounded buffer that keeps the newest
//! output and drops the oldest once it holds more than its limit, as
//! xenconsoled's `buffer-limit` does (the log file gets every byte anyway;
//! only a pty nobody reads loses output).

use std::collections::VecDeque;

/// A bounded byte queue; see the [module docs](self).
#[derive(Debug)]
pub struct OutBuf {
    data: VecDeque<u8>,
    limit: usize,
    dropped: u64,
}

impl OutBuf {
    /// An empty buffer holding at most `limit` bytes (at least 1).
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self {
            data: VecDeque::new(),
            limit: limit.max(1),
            dropped: 0,
        }
    }

    /// Appends `bytes`, dropping the oldest bytes beyond the limit.
    pub fn push(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(self.limit);
        let skipped = bytes.len() - keep;
        self.dropped = self.dropped.saturating_add(skipped as u64);
        let overflow = (self.data.len() + keep).saturating_sub(self.limit);
        if overflow > 0 {
            self.data.drain(..overflow);
            self.dropped = self.dropped.saturating_add(overflow as u64);
        }
        self.data.extend(&bytes[skipped..]);
    }

    /// The oldest contiguous run of waiting bytes.
    #[must_use]
    pub fn front(&self) -> &[u8] {
        self.data.as_slices().0
    }

    /// Removes `n` bytes from the front (after they were written).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.data.len());
        self.data.drain(..n);
    }

    /// Bytes waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether nothing waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes dropped so far.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(b: &OutBuf) -> Vec<u8> {
        b.data.iter().copied().collect()
    }

    #[test]
    fn test_outbuf_under_limit_keeps_everything_in_order() {
        let mut b = OutBuf::new(8);
        b.push(b"abc");
        b.push(b"de");
        assert_eq!(contents(&b), b"abcde");
        assert_eq!(b.dropped(), 0);
        b.consume(2);
        assert_eq!(b.front(), b"cde");
    }

    #[test]
    fn test_outbuf_over_limit_drops_oldest_and_counts() {
        let mut b = OutBuf::new(4);
        b.push(b"abc");
        b.push(b"def");
        assert_eq!(contents(&b), b"cdef");
        assert_eq!(b.dropped(), 2);
    }

    #[test]
    fn test_outbuf_push_larger_than_limit_keeps_its_tail() {
        let mut b = OutBuf::new(3);
        b.push(b"xy");
        b.push(b"0123456");
        assert_eq!(contents(&b), b"456");
        assert_eq!(b.dropped(), 6);
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn test_outbuf_consume_more_than_held_empties() {
        let mut b = OutBuf::new(3);
        b.push(b"ab");
        b.consume(10);
        assert!(b.is_empty());
        assert_eq!(b.front(), b"");
    }
}
