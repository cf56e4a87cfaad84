//! Completing the requests of a [`BlkFront`]: responses taken off the rings
//! once and checked (id, operation), each request finished (data copied out
//! of a read, pages back to their pool or buffer), and the wait for more
//! (adaptive ring polling, then the event channels).

use alloc::vec::Vec;
use core::time::Duration;

use xen_abi::io::blkif::{BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_OKAY};
use xen_front_platform::{Platform, PAGE_SIZE};

use super::{plat, BlkFront, BlkStatus, Completion, FrontState, RequestKind, RequestTag};
use crate::error::{BlkfrontError, FailReason};
use crate::features::FlushOp;
use crate::request::{decode_response, response_op_matches, RspSlot};

impl BlkStatus {
    pub(super) fn from_wire(status: i16) -> BlkStatus {
        match status {
            BLKIF_RSP_OKAY => BlkStatus::Okay,
            BLKIF_RSP_EOPNOTSUPP => BlkStatus::NotSupported,
            _ => BlkStatus::Error,
        }
    }
}

impl<'p, P: Platform + ?Sized> BlkFront<'p, P> {
    /// Takes the responses on every ring (validated: an overflowing
    /// producer index or an unknown id fails the device), issues waiting
    /// requests into the freed slots, and returns the finished requests.
    ///
    /// On [`BlkfrontError::Failed`] the requests that were outstanding are
    /// completed with [`BlkStatus::Error`]: collect them with
    /// [`BlkFront::take_completions`].
    pub fn poll_completions(&mut self) -> Result<Vec<Completion>, BlkfrontError> {
        if let Some(f) = &self.failure {
            return Err(BlkfrontError::Failed(f.clone()));
        }
        for q in 0..self.queues.len() {
            let _ = self.p.evtchn_clear(self.queues[q].port);
        }
        if self.state == FrontState::Connected {
            self.process_responses()?;
            self.kick()?;
        }
        Ok(self.take_completions())
    }

    /// The finished requests collected so far.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        self.completions.drain(..).collect()
    }

    pub(super) fn process_responses(&mut self) -> Result<(), BlkfrontError> {
        for q in 0..self.queues.len() {
            // Each response answers a published request, so at most a ring's
            // worth arrive per pass; the bound only guards the loop.
            let budget = self.queues[q].ring.size() as usize + 1;
            for _ in 0..budget {
                let rsp = match self.queues[q].ring.take_response() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => return Err(self.fail(FailReason::RingCorrupt(e))),
                };
                self.complete_one(q, &rsp)?;
            }
        }
        Ok(())
    }

    pub(super) fn complete_one(&mut self, q: usize, slot: &RspSlot) -> Result<(), BlkfrontError> {
        let rsp = decode_response(slot);
        let id = rsp.id;
        let Some(s) = self.ids.get(id).filter(|s| s.queue == Some(q)) else {
            return Err(self.fail(FailReason::UnknownResponseId { id }));
        };
        if !response_op_matches(s.sent_op, s.inner_op, rsp.operation) {
            return Err(self.fail(FailReason::WrongResponseOp {
                id,
                op: rsp.operation,
            }));
        }
        let status = BlkStatus::from_wire(rsp.status);
        if status == BlkStatus::NotSupported && s.kind == RequestKind::Flush {
            // As Linux: stop offering flushes the backend refuses.
            if let Some(d) = self.disk.as_mut() {
                d.flush = FlushOp::None;
            }
        }
        self.finish(id, status)
    }

    /// Ends request `id` with `status`: pages back to the pool (revoking
    /// non-persistent grants), data copied out of a successful read.
    pub(super) fn finish(&mut self, id: u64, status: BlkStatus) -> Result<(), BlkfrontError> {
        let Ok(s) = self.ids.remove(id) else {
            return Ok(());
        };
        let mut kept = false;
        let mut data = Vec::new();
        if let Some(b) = s.buffer {
            // A registered buffer: the data stays in its pages.
            let mut pages = Vec::with_capacity(s.data.len());
            for dp in s.data {
                match self.revoke_unless_persistent(dp) {
                    Some(dp) => pages.push(dp),
                    None => kept = true,
                }
            }
            match self.buffers.get_mut(b as usize).and_then(Option::as_mut) {
                // A page deferred above leaves the buffer short: it is
                // unusable (`buffer_*` refuse it) and only worth freeing.
                Some(buf) => {
                    buf.pages = pages;
                    buf.busy = false;
                }
                None => {
                    for dp in pages {
                        self.drop_page(dp);
                    }
                }
            }
        } else {
            if s.kind == RequestKind::Read && status == BlkStatus::Okay {
                data = self.spare_bufs.pop().unwrap_or_default();
                // Every byte is overwritten below: a reused buffer of the
                // right size is not zeroed again (resize only fills what it
                // adds).
                data.truncate(s.len as usize);
                data.resize(s.len as usize, 0);
            }
            for (i, dp) in s.data.into_iter().enumerate() {
                let start = i.saturating_mul(PAGE_SIZE);
                let end = start.saturating_add(PAGE_SIZE).min(data.len());
                if let Some(chunk) = data.get_mut(start..end) {
                    let _ = dp.page.read(0, chunk);
                }
                kept |= !self.recycle(dp, false);
            }
        }
        for dp in s.indirect {
            kept |= !self.recycle(dp, true);
        }
        self.push_completion(s.tag, s.kind, status, data);
        if kept {
            return Err(self.fail(FailReason::BackendKeptGrant));
        }
        Ok(())
    }

    /// Queues the completion of request `tag` for
    /// [`BlkFront::take_completions`] and counts it.
    pub(super) fn push_completion(
        &mut self,
        tag: u64,
        kind: RequestKind,
        status: BlkStatus,
        data: Vec<u8>,
    ) {
        self.completions.push_back(Completion {
            tag: RequestTag(tag),
            kind,
            status,
            data,
        });
        self.stats.completed = self.stats.completed.saturating_add(1);
    }

    /// Sleeps until a queue's event channel fires or `timeout` passes
    /// (`None`: forever). Returns at once with `true` when completions are
    /// ready or responses wait on a ring (after the final check that arms
    /// `rsp_event`), `false` on timeout.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, BlkfrontError> {
        if let Some(f) = &self.failure {
            return Err(BlkfrontError::Failed(f.clone()));
        }
        if !self.completions.is_empty() {
            return Ok(true);
        }
        let window = Duration::from_nanos(self.poll.budget_ns());
        let budget = timeout.map_or(window, |t| t.min(window));
        match self.poll_rings(budget) {
            Ok(true) => {
                self.poll.hit();
                return Ok(true);
            }
            // Only a poll of the whole window says polling does not pay.
            Ok(false) if !budget.is_zero() && budget == window => self.poll.miss(),
            Ok(false) => {}
            Err(e) => return Err(self.fail(FailReason::RingCorrupt(e))),
        }
        for q in 0..self.queues.len() {
            match self.queues[q].ring.final_check_for_responses() {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => return Err(self.fail(FailReason::RingCorrupt(e))),
            }
        }
        let ports = self.ports();
        if ports.is_empty() {
            return Ok(false);
        }
        let slept = self.p.monotonic_ns();
        let fired = self.p.evtchn_poll(&ports, timeout).map_err(plat)?;
        if fired {
            self.poll.woke(self.p.monotonic_ns().saturating_sub(slept));
        }
        Ok(fired)
    }
}

impl<P: Platform + ?Sized> BlkFront<'_, P> {
    /// Busy-polls the rings' `rsp_prod` (validated, not armed) for up to
    /// `budget`; `true` as soon as a response is there.
    fn poll_rings(&self, budget: Duration) -> Result<bool, xen_ring::RingError> {
        if budget.is_zero() || self.queues.is_empty() {
            return Ok(false);
        }
        let limit = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
        // A round takes well over 4 ns (an atomic load per ring and a
        // spin-loop hint), so this bound ends the loop even on a platform
        // whose clock does not move.
        let max_rounds = (limit / 4).max(64);
        let start = self.p.monotonic_ns();
        let mut round: u64 = 0;
        loop {
            for q in &self.queues {
                if q.ring.has_unconsumed_responses()? > 0 {
                    return Ok(true);
                }
            }
            round += 1;
            if round >= max_rounds
                || (round % 64 == 0 && self.p.monotonic_ns().saturating_sub(start) >= limit)
            {
                return Ok(false);
            }
            core::hint::spin_loop();
        }
    }
}
