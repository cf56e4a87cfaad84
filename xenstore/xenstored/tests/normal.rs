//! Each message type over a real socket to an in-process daemon.

mod common;

use std::time::Duration;

use common::Daemon;
use xenstore_wire::{PermList, Request, XsError};

const SHORT: Duration = Duration::from_millis(200);

#[test]
fn test_write_read_roundtrip_ok() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write("/a/b", "hello").unwrap();
    assert_eq!(c.read("/a/b").unwrap(), b"hello");
    assert_eq!(c.read("/a").unwrap(), b"");
}

#[test]
fn test_write_binary_value_preserved() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(
        &Request::Write {
            path: "/bin",
            value: b"\0\x01\xff",
        },
        0,
    )
    .unwrap();
    assert_eq!(c.read("/bin").unwrap(), b"\0\x01\xff");
}

#[test]
fn test_read_missing_is_enoent() {
    let d = Daemon::start();
    let mut c = d.client();
    assert_eq!(c.read("/nope"), Err(XsError::Enoent));
}

#[test]
fn test_directory_lists_children_in_creation_order() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write("/d/z", "").unwrap();
    c.write("/d/a", "").unwrap();
    c.mkdir("/d/m").unwrap();
    assert_eq!(c.dir("/d").unwrap(), vec!["z", "a", "m"]);
    assert_eq!(c.dir("/d/z").unwrap(), Vec::<String>::new());
    assert_eq!(c.dir("/").unwrap(), vec!["tool", "d"]);
}

#[test]
fn test_mkdir_existing_keeps_value() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write("/m", "v").unwrap();
    c.mkdir("/m").unwrap();
    assert_eq!(c.read("/m").unwrap(), b"v");
}

#[test]
fn test_rm_subtree_and_missing_child_ok_missing_parent_enoent() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write("/r/a/b", "1").unwrap();
    c.rm("/r/a").unwrap();
    assert_eq!(c.read("/r/a/b"), Err(XsError::Enoent));
    assert_eq!(c.dir("/r").unwrap(), Vec::<String>::new());
    c.rm("/r/never").unwrap();
    assert_eq!(c.rm("/r/never/child"), Err(XsError::Enoent));
    assert_eq!(c.rm("/"), Err(XsError::Einval));
}

#[test]
fn test_get_set_perms_roundtrip() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write("/p", "").unwrap();
    assert_eq!(c.get_perms("/p").unwrap(), "n0");
    c.set_perms("/p", "b5 r7").unwrap();
    assert_eq!(c.get_perms("/p").unwrap(), "b5 r7");
    // Children inherit.
    c.write("/p/child", "").unwrap();
    assert_eq!(c.get_perms("/p/child").unwrap(), "b5 r7");
    assert_eq!(c.get_perms("@introduceDomain").unwrap(), "n0");
}

#[test]
fn test_watch_unwatch_ok() {
    let d = Daemon::start();
    let mut c = d.client();
    c.watch("/w", "tok").unwrap();
    assert_eq!(c.event(SHORT), Some(("/w".into(), "tok".into())));
    c.write("/w/x", "1").unwrap();
    assert_eq!(c.event(SHORT), Some(("/w/x".into(), "tok".into())));
    c.unwatch("/w", "tok").unwrap();
    c.write("/w/y", "1").unwrap();
    assert!(c.pending_events().is_empty());
    assert_eq!(c.unwatch("/w", "tok"), Err(XsError::Enoent));
}

#[test]
fn test_transaction_start_end_ok() {
    let d = Daemon::start();
    let mut c = d.client();
    let t = c.start();
    assert_ne!(t, 0);
    c.write_tx(t, "/t", "1").unwrap();
    c.end(t, true).unwrap();
    assert_eq!(c.read("/t").unwrap(), b"1");
    assert_eq!(c.end(t, true), Err(XsError::Enoent));
    assert_eq!(c.end(0, true), Err(XsError::Enoent));
}

#[test]
fn test_transaction_start_inside_transaction_is_ebusy() {
    let d = Daemon::start();
    let mut c = d.client();
    let t = c.start();
    assert_eq!(c.call(&Request::TransactionStart, t), Err(XsError::Ebusy));
}

#[test]
fn test_unknown_transaction_id_is_enoent() {
    let d = Daemon::start();
    let mut c = d.client();
    assert_eq!(c.read_tx(77, "/x"), Err(XsError::Enoent));
}

#[test]
fn test_introduce_release_is_introduced_and_special_watches() {
    let d = Daemon::start();
    let mut c = d.client();
    c.watch("@introduceDomain", "i").unwrap();
    c.watch("@releaseDomain", "r").unwrap();
    assert_eq!(c.events_within(SHORT).len(), 2);
    let intro = |c: &mut common::Client<common::Sock>, d| {
        c.call(&Request::IsDomainIntroduced { domid: d }, 0)
            .unwrap()
    };
    assert_eq!(intro(&mut c, 9), b"F\0");
    c.ok(
        &Request::Introduce {
            domid: 9,
            mfn: 1,
            port: 2,
        },
        0,
    )
    .unwrap();
    assert_eq!(
        c.event(SHORT),
        Some(("@introduceDomain".into(), "i".into()))
    );
    assert_eq!(intro(&mut c, 9), b"T\0");
    assert_eq!(intro(&mut c, 0), b"T\0");
    c.ok(&Request::Resume { domid: 9 }, 0).unwrap();
    c.ok(&Request::Release { domid: 9 }, 0).unwrap();
    assert_eq!(c.event(SHORT), Some(("@releaseDomain".into(), "r".into())));
    assert_eq!(intro(&mut c, 9), b"F\0");
    assert_eq!(
        c.ok(&Request::Release { domid: 9 }, 0),
        Err(XsError::Enoent)
    );
    assert_eq!(c.ok(&Request::Resume { domid: 9 }, 0), Err(XsError::Enoent));
}

#[test]
fn test_get_domain_path_any_domid() {
    let d = Daemon::start();
    let mut c = d.client();
    assert_eq!(
        c.call(&Request::GetDomainPath { domid: 12 }, 0).unwrap(),
        b"/local/domain/12\0"
    );
}

#[test]
fn test_set_target_needs_introduced_domains() {
    let d = Daemon::start();
    let mut c = d.client();
    assert_eq!(
        c.ok(
            &Request::SetTarget {
                domid: 4,
                target: 5
            },
            0
        ),
        Err(XsError::Enoent)
    );
    c.ok(
        &Request::Introduce {
            domid: 4,
            mfn: 1,
            port: 1,
        },
        0,
    )
    .unwrap();
    c.ok(
        &Request::Introduce {
            domid: 5,
            mfn: 1,
            port: 1,
        },
        0,
    )
    .unwrap();
    c.ok(
        &Request::SetTarget {
            domid: 4,
            target: 5,
        },
        0,
    )
    .unwrap();
}

#[test]
fn test_reset_watches_removes_watches_and_transactions() {
    let d = Daemon::start();
    let mut c = d.client();
    c.watch("/rw", "t").unwrap();
    let t = c.start();
    c.ok(&Request::ResetWatches, 0).unwrap();
    let _ = c.events_within(SHORT);
    c.write("/rw", "x").unwrap();
    assert!(c.pending_events().is_empty());
    assert_eq!(c.end(t, true), Err(XsError::Enoent));
}

#[test]
fn test_directory_part_pages_large_directory() {
    let d = Daemon::start();
    let mut c = d.client();
    let mut want = Vec::new();
    for i in 0..600 {
        let name = format!("child-with-a-long-name-{i:04}");
        c.mkdir(&format!("/big/{name}")).unwrap();
        want.push(name);
    }
    assert_eq!(
        c.call(&Request::Directory { path: "/big" }, 0),
        Err(XsError::E2big)
    );
    let mut got: Vec<String> = Vec::new();
    let mut offset = 0u32;
    let mut gen = None;
    for _ in 0..100 {
        let p = c
            .call(
                &Request::DirectoryPart {
                    path: "/big",
                    offset,
                },
                0,
            )
            .unwrap();
        let mut parts = xenstore_wire::strings(&p);
        let g = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
        assert!(
            gen.is_none() || gen.as_ref() == Some(&g),
            "generation stable"
        );
        gen = Some(g);
        let mut done = false;
        for s in parts {
            if s.is_empty() {
                done = true;
                break;
            }
            offset += s.len() as u32 + 1;
            got.push(String::from_utf8(s.to_vec()).unwrap());
        }
        if done {
            break;
        }
    }
    assert_eq!(got, want);
}

#[test]
fn test_get_set_feature_and_quota() {
    let d = Daemon::start();
    let mut c = d.client();
    let f = c.call(&Request::GetFeature { domid: None }, 0).unwrap();
    assert_eq!(f, b"7\0");
    c.ok(
        &Request::Introduce {
            domid: 3,
            mfn: 1,
            port: 1,
        },
        0,
    )
    .unwrap();
    c.ok(
        &Request::SetFeature {
            domid: 3,
            features: 1,
        },
        0,
    )
    .unwrap();
    assert_eq!(
        c.call(&Request::GetFeature { domid: Some(3) }, 0).unwrap(),
        b"1\0"
    );
    assert_eq!(
        c.ok(
            &Request::SetFeature {
                domid: 3,
                features: 64
            },
            0
        ),
        Err(XsError::Einval)
    );
    let names = c
        .call(
            &Request::GetQuota {
                domid: None,
                quota: None,
            },
            0,
        )
        .unwrap();
    assert!(xenstore_wire::strings(&names).any(|n| n == b"nodes"));
    assert_eq!(
        c.call(
            &Request::GetQuota {
                domid: None,
                quota: Some("nodes")
            },
            0
        )
        .unwrap(),
        b"1000\0"
    );
    c.ok(
        &Request::SetQuota {
            domid: Some(3),
            quota: "nodes",
            value: 42,
        },
        0,
    )
    .unwrap();
    assert_eq!(
        c.call(
            &Request::GetQuota {
                domid: Some(3),
                quota: Some("nodes")
            },
            0
        )
        .unwrap(),
        b"42\0"
    );
    assert_eq!(
        c.call(
            &Request::GetQuota {
                domid: None,
                quota: Some("bogus")
            },
            0
        ),
        Err(XsError::Einval)
    );
}

#[test]
fn test_control_print_log_quota_help() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(
        &Request::Control {
            args: b"print\0hello from test\0",
        },
        0,
    )
    .unwrap();
    c.ok(&Request::Control { args: b"log\0on\0" }, 0).unwrap();
    c.ok(
        &Request::Control {
            args: b"log\0off\0",
        },
        0,
    )
    .unwrap();
    let q = c.call(&Request::Control { args: b"quota\0" }, 0).unwrap();
    assert!(String::from_utf8_lossy(&q).contains("nodes"));
    c.ok(
        &Request::Control {
            args: b"quota\0set\0watches\x00200\0",
        },
        0,
    )
    .unwrap();
    let h = c.call(&Request::Control { args: b"help\0" }, 0).unwrap();
    assert!(String::from_utf8_lossy(&h).contains("print"));
    c.ok(&Request::Control { args: b"check\0" }, 0).unwrap();
    assert_eq!(
        c.ok(&Request::Control { args: b"bogus\0" }, 0),
        Err(XsError::Einval)
    );
}

#[test]
fn test_relative_paths_resolve_under_local_domain_0() {
    let d = Daemon::start();
    let mut c = d.client();
    c.write("rel/x", "1").unwrap();
    assert_eq!(c.read("/local/domain/0/rel/x").unwrap(), b"1");
    c.watch("rel", "t").unwrap();
    assert_eq!(c.event(SHORT), Some(("rel".into(), "t".into())));
    c.write("/local/domain/0/rel/y", "2").unwrap();
    assert_eq!(c.event(SHORT), Some(("rel/y".into(), "t".into())));
}

#[test]
fn test_read_only_socket_rejects_changes_with_erofs() {
    let d = Daemon::start();
    let mut rw = d.client();
    rw.write("/ro", "1").unwrap();
    let mut ro = common::Client::socket(&xenstored::server::read_only_path(&d.socket));
    assert_eq!(ro.read("/ro").unwrap(), b"1");
    assert_eq!(ro.write("/ro", "2"), Err(XsError::Erofs));
}

#[test]
fn test_read_only_socket_erofs_for_each_changing_type_before_tx_rules() {
    let d = Daemon::start();
    let mut ro = common::Client::socket(&xenstored::server::read_only_path(&d.socket));
    let changing = [
        Request::Write {
            path: "/x",
            value: b"1",
        },
        Request::Mkdir { path: "/x" },
        Request::Rm { path: "/x" },
        Request::SetPerms {
            path: "/x",
            perms: PermList::owner(0, 0),
        },
        // Outside a transaction: EROFS comes before the tx rule's ENOENT.
        Request::TransactionEnd { commit: true },
        Request::Introduce {
            domid: 9,
            mfn: 1,
            port: 1,
        },
        Request::Release { domid: 9 },
        Request::Resume { domid: 9 },
        Request::SetTarget {
            domid: 9,
            target: 8,
        },
        Request::SetFeature {
            domid: 9,
            features: 1,
        },
        Request::SetQuota {
            domid: None,
            quota: "nodes",
            value: 5,
        },
        Request::Control { args: b"log\0on\0" },
    ];
    for r in &changing {
        assert_eq!(ro.call(r, 0), Err(XsError::Erofs), "{r:?}");
    }
    assert_eq!(
        ro.call(&Request::GetDomainPath { domid: 3 }, 0).unwrap(),
        b"/local/domain/3\0"
    );
    // WATCH ignores the transaction id, even an unknown one.
    let watch = Request::Watch {
        path: "/x",
        token: b"t",
        depth: None,
    };
    assert_eq!(ro.call(&watch, 99).unwrap(), b"OK\0");
    assert_eq!(ro.read_tx(99, "/x"), Err(XsError::Enoent));
}

#[test]
fn test_pipelined_requests_answered_in_order() {
    let d = Daemon::start();
    let mut c = d.client();
    let mut out = Vec::new();
    for i in 0..200u32 {
        let p = format!("/pipe/{i}");
        Request::Write {
            path: &p,
            value: b"v",
        }
        .encode(i + 1, 0, &mut out)
        .unwrap();
    }
    c.send_raw(&out);
    for i in 0..200u32 {
        let (h, p) = c.recv_reply();
        assert_eq!(h.req_id, i + 1);
        assert_eq!(p, b"OK\0");
    }
    assert_eq!(c.dir("/pipe").unwrap().len(), 200);
}
