//! The request table, Xen's `wire_funcs[]` (`tools/xenstored/core.c`): one
//! row per `xs_wire.h` message type, at the index of its value, with the
//! name Xen logs, the handler and the flags [`Core`] checks before calling
//! it (privileged only, changes state, how the transaction id is used,
//! whether the request names a path). Adding or reviewing an operation
//! touches one row and one `do_*` function.
//!
//! [`Core::dispatch`] looks the row up by the header's type (`ENOSYS`
//! without a handler), parses the request (`EINVAL` if malformed) and
//! applies, in this order, Xen's checks: `EACCES` for [`PRIV`]
//! from an unprivileged caller, `EROFS` for [`MUTATES`] on the read-only
//! socket, the transaction rule ([`NOTID`], [`NO_TX`], [`IN_TX`], else an
//! unknown non-zero id is `ENOENT`), then canonicalizes the [`PATH`]
//! (`@` names only with [`SPECIAL`]) into `Core::canon`. A handler is only
//! ever given its own [`Request`] variant (the row is chosen by the type
//! the request was parsed as).

use xenstore_wire::{path, Header, MsgType, PacketWriter, Request, XsError, DOMID_SELF};

use super::{reply, Core, DomainAction, SERVER_FEATURES};
use crate::ops::{self, Caller};
use crate::persist::Record;
use crate::quota;
use crate::txn::Transaction;
use crate::watch::{ConnId, Watch};

/// Privileged callers only (Xen's `XS_FLAG_PRIV`): others get `EACCES`.
pub(super) const PRIV: u8 = 1 << 0;
/// Changes the store or the daemon's state: `EROFS` on the read-only
/// socket.
pub(super) const MUTATES: u8 = 1 << 1;
/// Ignores the header's transaction id (Xen's `XS_FLAG_NOTID`).
pub(super) const NOTID: u8 = 1 << 2;
/// Outside transactions only: a non-zero transaction id is `EBUSY`.
pub(super) const NO_TX: u8 = 1 << 3;
/// Inside a transaction only: a zero transaction id is `ENOENT`.
pub(super) const IN_TX: u8 = 1 << 4;
/// The request names a node path ([`Request::path`]), canonicalized
/// against the connection's home before the handler runs.
pub(super) const PATH: u8 = 1 << 5;
/// With [`PATH`]: the path may also be `@introduceDomain` or
/// `@releaseDomain`.
pub(super) const SPECIAL: u8 = 1 << 6;

/// What a handler knows about the request beyond its arguments.
pub(super) struct Ctx<'h> {
    /// The connection.
    pub id: ConnId,
    /// The request's header (its ids go into the reply).
    pub hdr: &'h Header,
    /// The transaction the request runs in (0: none), after the row's rule.
    pub tx_id: u32,
    /// Who is asking.
    pub caller: Caller,
}

/// Serves one request; `Err` becomes an `XS_ERROR` reply.
pub(super) type Handler = fn(&mut Core, &Ctx<'_>, Request<'_>) -> Result<(), XsError>;

/// One row of [`OPS`].
pub(super) struct Op {
    /// The type (the row's index is its value).
    pub ty: MsgType,
    /// `xs_wire.h`'s name without `XS_`, as Xen logs it.
    pub name: &'static str,
    /// `None` for the types only the server sends (`ENOSYS` as requests).
    pub handler: Option<Handler>,
    /// [`PRIV`], [`MUTATES`], [`NOTID`], [`NO_TX`], [`IN_TX`], [`PATH`],
    /// [`SPECIAL`].
    pub flags: u8,
}

impl Op {
    /// Whether the row has all of `flags`.
    pub const fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }

    /// The transaction the request runs in, given the header's id.
    pub fn tx_id(&self, hdr_tx: u32) -> Result<u32, XsError> {
        if self.has(NOTID) {
            Ok(0)
        } else if self.has(NO_TX) && hdr_tx != 0 {
            Err(XsError::Ebusy)
        } else if self.has(IN_TX) && hdr_tx == 0 {
            Err(XsError::Enoent)
        } else {
            Ok(hdr_tx)
        }
    }
}

const fn op(ty: MsgType, name: &'static str, handler: Handler, flags: u8) -> Option<Op> {
    Some(Op {
        ty,
        name,
        handler: Some(handler),
        flags,
    })
}

const fn reply_only(ty: MsgType, name: &'static str) -> Option<Op> {
    Some(Op {
        ty,
        name,
        handler: None,
        flags: 0,
    })
}

/// Every message type, at the index of its value; `None` where no type is
/// (20, the removed `XS_RESTRICT`).
#[rustfmt::skip]
pub(super) const OPS: [Option<Op>; 27] = {
    use MsgType as T;
    [
        op(T::Control,            "CONTROL",              do_control,              PRIV | MUTATES),
        op(T::Directory,          "DIRECTORY",            do_directory,            PATH),
        op(T::Read,               "READ",                 do_read,                 PATH),
        op(T::GetPerms,           "GET_PERMS",            do_get_perms,            PATH | SPECIAL),
        op(T::Watch,              "WATCH",                do_watch,                NOTID | PATH | SPECIAL),
        op(T::Unwatch,            "UNWATCH",              do_unwatch,              NOTID | PATH | SPECIAL),
        op(T::TransactionStart,   "TRANSACTION_START",    do_transaction_start,    NO_TX),
        op(T::TransactionEnd,     "TRANSACTION_END",      do_transaction_end,      MUTATES | IN_TX),
        op(T::Introduce,          "INTRODUCE",            do_introduce,            PRIV | MUTATES),
        op(T::Release,            "RELEASE",              do_release,              PRIV | MUTATES),
        op(T::GetDomainPath,      "GET_DOMAIN_PATH",      do_get_domain_path,      0),
        op(T::Write,              "WRITE",                do_write,                MUTATES | PATH),
        op(T::Mkdir,              "MKDIR",                do_mkdir,                MUTATES | PATH),
        op(T::Rm,                 "RM",                   do_rm,                   MUTATES | PATH),
        op(T::SetPerms,           "SET_PERMS",            do_set_perms,            MUTATES | PATH | SPECIAL),
        reply_only(T::WatchEvent, "WATCH_EVENT"),
        reply_only(T::Error,      "ERROR"),
        op(T::IsDomainIntroduced, "IS_DOMAIN_INTRODUCED", do_is_domain_introduced, PRIV),
        op(T::Resume,             "RESUME",               do_resume,               PRIV | MUTATES),
        op(T::SetTarget,          "SET_TARGET",           do_set_target,           PRIV | MUTATES),
        None,
        op(T::ResetWatches,       "RESET_WATCHES",        do_reset_watches,        0),
        op(T::DirectoryPart,      "DIRECTORY_PART",       do_directory_part,       PATH),
        op(T::GetFeature,         "GET_FEATURE",          do_get_feature,          PRIV),
        op(T::SetFeature,         "SET_FEATURE",          do_set_feature,          PRIV | MUTATES),
        op(T::GetQuota,           "GET_QUOTA",            do_get_quota,            PRIV),
        op(T::SetQuota,           "SET_QUOTA",            do_set_quota,            PRIV | MUTATES),
    ]
};

/// The row and handler serving wire type `ty`; `None` (`ENOSYS`) for
/// unknown types and those only the server sends.
#[inline]
pub(super) fn lookup(ty: u32) -> Option<(&'static Op, Handler)> {
    let op = OPS.get(usize::try_from(ty).ok()?)?.as_ref()?;
    debug_assert_eq!(op.ty.as_u32(), ty, "OPS rows sit at their type's value");
    Some((op, op.handler?))
}

/// A handler given another request than its row's (impossible: the row is
/// chosen by the parsed type) answers as for a malformed payload.
const MISROUTED: XsError = XsError::Einval;

fn do_read(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::Read { .. } = req else {
        return Err(MISROUTED);
    };
    core.node_op(cx.id, cx.tx_id, |v, caller, _q, p, out| {
        let n = ops::read(v, caller, p)?;
        reply(out, cx.hdr, MsgType::Read, &[&n.value]);
        Ok(None)
    })
}

fn do_directory(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::Directory { .. } = req else {
        return Err(MISROUTED);
    };
    let hdr = cx.hdr;
    core.node_op(cx.id, cx.tx_id, |v, caller, _q, p, out| {
        let n = ops::read(v, caller, p)?;
        let mut w = PacketWriter::begin(&mut out.buf, MsgType::Directory, hdr.req_id, hdr.tx_id);
        for ch in &n.children {
            w.push_str0(ch.as_bytes());
        }
        if w.finish().is_err() {
            PacketWriter::error(&mut out.buf, hdr.req_id, hdr.tx_id, XsError::E2big);
        }
        out.mark(false);
        Ok(None)
    })
}

fn do_directory_part(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::DirectoryPart { offset, .. } = req else {
        return Err(MISROUTED);
    };
    core.node_op(cx.id, cx.tx_id, |v, caller, _q, p, out| {
        let n = ops::read(v, caller, p)?;
        let mut buf = Vec::new();
        ops::directory_part(n, offset as usize, &mut buf);
        reply(out, cx.hdr, MsgType::DirectoryPart, &[&buf]);
        Ok(None)
    })
}

fn do_get_perms(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::GetPerms { .. } = req else {
        return Err(MISROUTED);
    };
    core.node_op(cx.id, cx.tx_id, |v, caller, _q, p, out| {
        let n = ops::read(v, caller, p)?;
        let w = n.perms.to_wire();
        reply(out, cx.hdr, MsgType::GetPerms, &[&w]);
        Ok(None)
    })
}

fn do_write(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::Write { value, .. } = req else {
        return Err(MISROUTED);
    };
    // Outside a transaction with no watch set no event can fire (events
    // fire before the next request): build none.
    let want_events = cx.tx_id != 0 || !core.watches.is_empty();
    core.node_op(cx.id, cx.tx_id, |v, caller, q, p, out| {
        if !want_events {
            ops::write(v, caller, q, p, value, None)?;
            reply(out, cx.hdr, MsgType::Write, &[xenstore_wire::OK]);
            return Ok(None);
        }
        let mut ev = Vec::with_capacity(1);
        ops::write(v, caller, q, p, value, Some(&mut ev))?;
        reply(out, cx.hdr, MsgType::Write, &[xenstore_wire::OK]);
        Ok(Some(ev))
    })
}

fn do_mkdir(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::Mkdir { .. } = req else {
        return Err(MISROUTED);
    };
    core.node_op(cx.id, cx.tx_id, |v, caller, q, p, out| {
        let mut ev = Vec::new();
        ops::mkdir(v, caller, q, p, &mut ev)?;
        reply(out, cx.hdr, MsgType::Mkdir, &[xenstore_wire::OK]);
        Ok(Some(ev))
    })
}

fn do_rm(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::Rm { .. } = req else {
        return Err(MISROUTED);
    };
    core.node_op(cx.id, cx.tx_id, |v, caller, _q, p, out| {
        let mut ev = Vec::new();
        ops::rm(v, caller, p, &mut ev)?;
        reply(out, cx.hdr, MsgType::Rm, &[xenstore_wire::OK]);
        Ok(Some(ev))
    })
}

fn do_set_perms(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::SetPerms { perms, .. } = req else {
        return Err(MISROUTED);
    };
    core.node_op(cx.id, cx.tx_id, move |v, caller, q, p, out| {
        let mut ev = Vec::new();
        ops::set_perms(v, caller, q, p, perms, &mut ev)?;
        reply(out, cx.hdr, MsgType::SetPerms, &[xenstore_wire::OK]);
        Ok(Some(ev))
    })
}

fn do_watch(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::Watch { path, token, depth } = req else {
        return Err(MISROUTED);
    };
    let id = cx.id;
    if core.watches.find(id, &core.canon, token).is_some() {
        return Err(XsError::Eexist);
    }
    let c = core.conns[id].as_ref().ok_or(XsError::Eio)?;
    if !c.caller.privileged
        && c.watches.len() >= core.quotas.get(c.caller.domid, quota::WATCHES) as usize
    {
        return Err(XsError::E2big);
    }
    let w = Watch {
        conn: id,
        path: core.canon.clone(),
        token: token.to_vec(),
        prefix_len: if path::is_relative(path) {
            c.home.len() + 1
        } else {
            0
        },
        depth,
    };
    let ev_path = w.event_path(&w.path).to_owned();
    let relative = w.prefix_len > 0;
    let watched = w.path.clone();
    core.journal_ring(id, |domid| Record::Watch {
        domid,
        watch: crate::persist::WatchState {
            path: watched,
            token: token.to_vec(),
            relative,
            depth,
        },
    });
    let wid = core.watches.add(w);
    let c = core.conns[id].as_mut().ok_or(XsError::Eio)?;
    c.watches.push(wid);
    reply(&mut c.out, cx.hdr, MsgType::Watch, &[xenstore_wire::OK]);
    // Fires once when set (an overflow ends the connection).
    if !Core::queue_event(c, &core.quotas, &ev_path, token) && !core.overflowed.contains(&id) {
        core.overflowed.push(id);
    }
    Ok(())
}

fn do_unwatch(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::Unwatch { token, .. } = req else {
        return Err(MISROUTED);
    };
    let wid = core
        .watches
        .find(cx.id, &core.canon, token)
        .ok_or(XsError::Enoent)?;
    if let Some(w) = core.watches.remove(wid) {
        core.journal_ring(cx.id, |domid| Record::Unwatch {
            domid,
            path: w.path,
            token: w.token,
        });
    }
    let c = core.conns[cx.id].as_mut().ok_or(XsError::Eio)?;
    c.watches.retain(|w| *w != wid);
    reply(&mut c.out, cx.hdr, MsgType::Unwatch, &[xenstore_wire::OK]);
    Ok(())
}

fn do_reset_watches(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::ResetWatches = req else {
        return Err(MISROUTED);
    };
    core.journal_ring(cx.id, |domid| Record::ConnReset { domid });
    let c = core.conns[cx.id].as_mut().ok_or(XsError::Eio)?;
    for w in c.watches.drain(..) {
        core.watches.remove(w);
    }
    c.txs.clear();
    reply(
        &mut c.out,
        cx.hdr,
        MsgType::ResetWatches,
        &[xenstore_wire::OK],
    );
    Ok(())
}

fn do_transaction_start(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::TransactionStart = req else {
        return Err(MISROUTED);
    };
    let max = core.quotas.get(cx.caller.domid, quota::TRANSACTIONS) as usize;
    let c = core.conns[cx.id].as_mut().ok_or(XsError::Eio)?;
    if !cx.caller.privileged && c.txs.len() >= max {
        return Err(XsError::Enospc);
    }
    let mut tid = c.next_tx;
    let mut tries = 0u32;
    while tid == 0 || c.txs.contains_key(&tid) {
        tid = tid.wrapping_add(1);
        tries += 1;
        if tries > 1_000_000 {
            return Err(XsError::Enospc);
        }
    }
    c.next_tx = tid.wrapping_add(1);
    c.txs.insert(tid, Transaction::new(tid));
    core.journal_ring(cx.id, |domid| Record::TxOpen { domid, tx_id: tid });
    let c = core.conns[cx.id].as_mut().ok_or(XsError::Eio)?;
    let s = format!("{tid}\0");
    reply(
        &mut c.out,
        cx.hdr,
        MsgType::TransactionStart,
        &[s.as_bytes()],
    );
    Ok(())
}

fn do_transaction_end(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::TransactionEnd { commit } = req else {
        return Err(MISROUTED);
    };
    let c = core.conns[cx.id].as_mut().ok_or(XsError::Eio)?;
    let tx = c.txs.remove(&cx.tx_id).ok_or(XsError::Enoent)?;
    core.journal_ring(cx.id, |domid| Record::TxClose {
        domid,
        tx_id: cx.tx_id,
    });
    if commit {
        let events = tx.commit(&mut core.tree, &mut core.journal)?;
        core.fire(events);
    }
    core.ack(cx.id, cx.hdr, MsgType::TransactionEnd)
}

fn do_get_domain_path(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::GetDomainPath { domid } = req else {
        return Err(MISROUTED);
    };
    let p = path::domain_path(domid);
    let c = core.conns[cx.id].as_mut().ok_or(XsError::Eio)?;
    reply(
        &mut c.out,
        cx.hdr,
        MsgType::GetDomainPath,
        &[p.as_bytes(), b"\0"],
    );
    Ok(())
}

fn do_is_domain_introduced(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::IsDomainIntroduced { domid } = req else {
        return Err(MISROUTED);
    };
    let yes = domid == DOMID_SELF || core.domains.is_introduced(domid);
    let c = core.conns[cx.id].as_mut().ok_or(XsError::Eio)?;
    reply(
        &mut c.out,
        cx.hdr,
        MsgType::IsDomainIntroduced,
        &[if yes { b"T\0" } else { b"F\0" }],
    );
    Ok(())
}

fn do_introduce(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::Introduce { domid, mfn, port } = req else {
        return Err(MISROUTED);
    };
    core.introduce(domid, mfn, port)?;
    core.ack(cx.id, cx.hdr, MsgType::Introduce)
}

fn do_release(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::Release { domid } = req else {
        return Err(MISROUTED);
    };
    core.release(domid)?;
    core.ack(cx.id, cx.hdr, MsgType::Release)
}

fn do_resume(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::Resume { domid } = req else {
        return Err(MISROUTED);
    };
    let d = core.domains.get_mut(domid).ok_or(XsError::Enoent)?;
    d.shutdown = false;
    core.ack(cx.id, cx.hdr, MsgType::Resume)
}

fn do_set_target(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::SetTarget { domid, target } = req else {
        return Err(MISROUTED);
    };
    if !core.domains.is_introduced(target) {
        return Err(XsError::Enoent);
    }
    let d = core.domains.get_mut(domid).ok_or(XsError::Enoent)?;
    d.target = Some(target);
    let conn = d.conn;
    let rec = d.clone();
    core.journal.domain(&rec);
    if let Some(c) = conn.and_then(|cid| core.conn_mut(cid)) {
        c.caller.target = Some(target);
    }
    core.ack(cx.id, cx.hdr, MsgType::SetTarget)
}

fn do_get_feature(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::GetFeature { domid } = req else {
        return Err(MISROUTED);
    };
    let f = match domid {
        None => SERVER_FEATURES,
        Some(d) => core.domains.get(d).ok_or(XsError::Enoent)?.features,
    };
    let s = format!("{f}\0");
    let c = core.conns[cx.id].as_mut().ok_or(XsError::Eio)?;
    reply(&mut c.out, cx.hdr, MsgType::GetFeature, &[s.as_bytes()]);
    Ok(())
}

fn do_set_feature(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::SetFeature { domid, features } = req else {
        return Err(MISROUTED);
    };
    if features & !SERVER_FEATURES != 0 {
        return Err(XsError::Einval);
    }
    let d = core.domains.get_mut(domid).ok_or(XsError::Enoent)?;
    d.features = features;
    let rec = d.clone();
    core.journal.domain(&rec);
    core.actions
        .push(DomainAction::Features { domid, features });
    core.ack(cx.id, cx.hdr, MsgType::SetFeature)
}

fn do_get_quota(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::GetQuota { domid, quota: name } = req else {
        return Err(MISROUTED);
    };
    let mut s = Vec::new();
    match name {
        None => {
            for n in quota::NAMES {
                s.extend_from_slice(n.as_bytes());
                s.push(0);
            }
        }
        Some(name) => {
            let q = quota::by_name(name).map_err(|_| XsError::Einval)?;
            let v = match domid {
                None => core.quotas.global(q),
                Some(d) => {
                    if !core.domains.is_introduced(d) {
                        return Err(XsError::Enoent);
                    }
                    core.quotas.get(d, q)
                }
            };
            s.extend_from_slice(v.to_string().as_bytes());
            s.push(0);
        }
    }
    let c = core.conns[cx.id].as_mut().ok_or(XsError::Eio)?;
    reply(&mut c.out, cx.hdr, MsgType::GetQuota, &[&s]);
    Ok(())
}

fn do_set_quota(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::SetQuota {
        domid,
        quota: name,
        value,
    } = req
    else {
        return Err(MISROUTED);
    };
    let q = quota::by_name(name).map_err(|_| XsError::Einval)?;
    match domid {
        None => core.quotas.set_global(q, value),
        Some(d) => {
            if !core.domains.is_introduced(d) {
                return Err(XsError::Enoent);
            }
            core.quotas.set_domain(d, q, Some(value))
        }
    }
    .map_err(|_| XsError::Einval)?;
    core.journal.record(&Record::Quota {
        domid,
        name: name.to_owned(),
        value: Some(value),
    });
    core.ack(cx.id, cx.hdr, MsgType::SetQuota)
}

fn do_control(core: &mut Core, cx: &Ctx<'_>, req: Request<'_>) -> Result<(), XsError> {
    let Request::Control { args } = req else {
        return Err(MISROUTED);
    };
    let r = crate::control::control(core, args)?;
    let c = core.conns[cx.id].as_mut().ok_or(XsError::Eio)?;
    match r {
        None => reply(&mut c.out, cx.hdr, MsgType::Control, &[xenstore_wire::OK]),
        Some(text) => reply(
            &mut c.out,
            cx.hdr,
            MsgType::Control,
            &[text.as_bytes(), b"\0"],
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request of type `ty`, parsed from the first of a few payloads
    /// that forms one.
    fn sample(ty: MsgType, payloads: &[Vec<u8>]) -> Option<Request<'_>> {
        let hdr = Header::new(ty, 1, 0, 0);
        payloads.iter().find_map(|p| Request::parse(&hdr, p).ok())
    }

    fn types_with(flag: u8) -> Vec<MsgType> {
        OPS.iter()
            .flatten()
            .filter(|o| o.has(flag))
            .map(|o| o.ty)
            .collect()
    }

    #[test]
    fn test_ops_every_wire_type_has_its_row_at_its_value() {
        assert_eq!(OPS.len(), MsgType::SetQuota.as_u32() as usize + 1);
        for (i, row) in OPS.iter().enumerate() {
            let ty = MsgType::from_u32(i as u32);
            assert_eq!(row.as_ref().map(|o| o.ty), ty, "row {i}");
        }
        for t in MsgType::ALL {
            let row = OPS[t.as_u32() as usize].as_ref().expect("checked above");
            assert_eq!(row.name, t.name(), "{t:?}");
        }
    }

    #[test]
    fn test_ops_only_server_sent_types_lack_a_handler() {
        for t in MsgType::ALL {
            let server_only = matches!(t, MsgType::WatchEvent | MsgType::Error);
            assert_eq!(lookup(t.as_u32()).is_none(), server_only, "{t:?}");
        }
        for ty in [20, 27, 0xffff, u32::MAX] {
            assert!(lookup(ty).is_none(), "type {ty}");
        }
    }

    #[test]
    fn test_ops_path_flag_matches_request_path() {
        let payloads: Vec<Vec<u8>> = [
            &["/a"][..],
            &["/a", "t"],
            &["/a", "0"],
            &["/a", "n0"],
            &["1"],
            &["1", "2"],
            &["1", "2", "3"],
            &["T"],
        ]
        .iter()
        .map(|args| args.iter().flat_map(|a| a.bytes().chain([0])).collect())
        .collect();
        for t in MsgType::ALL {
            let Some((row, _)) = lookup(t.as_u32()) else {
                continue;
            };
            let r = sample(t, &payloads).unwrap_or_else(|| panic!("no sample {t:?}"));
            assert_eq!(r.msg_type(), t);
            assert_eq!(row.has(PATH), r.path().is_some(), "{t:?}");
            if row.has(SPECIAL) {
                assert!(row.has(PATH), "{t:?}: SPECIAL without PATH");
            }
        }
    }

    #[test]
    fn test_ops_transaction_rules_are_exclusive() {
        for row in OPS.iter().flatten() {
            let rules = [NOTID, NO_TX, IN_TX]
                .iter()
                .filter(|&&f| row.has(f))
                .count();
            assert!(rules <= 1, "{:?}", row.ty);
        }
        assert_eq!(types_with(NOTID), [MsgType::Watch, MsgType::Unwatch]);
        assert_eq!(types_with(NO_TX), [MsgType::TransactionStart]);
        assert_eq!(types_with(IN_TX), [MsgType::TransactionEnd]);
    }

    #[test]
    fn test_ops_transaction_rule_maps_header_id() {
        let row = |t: MsgType| OPS[t.as_u32() as usize].as_ref().expect("row");
        assert_eq!(row(MsgType::Watch).tx_id(5), Ok(0));
        assert_eq!(row(MsgType::TransactionStart).tx_id(5), Err(XsError::Ebusy));
        assert_eq!(row(MsgType::TransactionStart).tx_id(0), Ok(0));
        assert_eq!(row(MsgType::TransactionEnd).tx_id(0), Err(XsError::Enoent));
        assert_eq!(row(MsgType::TransactionEnd).tx_id(5), Ok(5));
        assert_eq!(row(MsgType::Read).tx_id(5), Ok(5));
    }

    #[test]
    fn test_ops_privileged_and_mutating_sets_as_xen() {
        // Xen 4.17's XS_FLAG_PRIV rows, plus the newer feature and quota
        // operations.
        assert_eq!(
            types_with(PRIV),
            [
                MsgType::Control,
                MsgType::Introduce,
                MsgType::Release,
                MsgType::IsDomainIntroduced,
                MsgType::Resume,
                MsgType::SetTarget,
                MsgType::GetFeature,
                MsgType::SetFeature,
                MsgType::GetQuota,
                MsgType::SetQuota,
            ]
        );
        assert_eq!(
            types_with(MUTATES),
            [
                MsgType::Control,
                MsgType::TransactionEnd,
                MsgType::Introduce,
                MsgType::Release,
                MsgType::Write,
                MsgType::Mkdir,
                MsgType::Rm,
                MsgType::SetPerms,
                MsgType::Resume,
                MsgType::SetTarget,
                MsgType::SetFeature,
                MsgType::SetQuota,
            ]
        );
    }
}
