//! The `xenstore-rs` crate (GPL-3.0, a dev-dependency only) as a client of
//! OUR xenstored: read, write, directory, rm (blocking `XsUnix`) and watch
//! (its tokio `XsTokio`). It finds the socket through `XENSTORED_PATH`, set
//! here before any thread starts; this file therefore holds a single test.

mod common;

use std::time::Duration;

use common::Daemon;
use futures::StreamExt;
use xenstore_rs::tokio::XsTokio;
use xenstore_rs::unix::XsUnix;
use xenstore_rs::{AsyncWatch, AsyncXs, Xs};

#[test]
fn test_xenstore_rs_client_read_write_ls_rm_watch() {
    let d = Daemon::start();
    std::env::set_var("XENSTORED_PATH", &d.socket);

    let xs = XsUnix::new().expect("xenstore-rs connects");
    xs.write("/rs/a", "hello").expect("write");
    xs.write("/rs/b/c", "deep").expect("write");
    assert_eq!(&*xs.read("/rs/a").expect("read"), "hello");
    let mut l: Vec<String> = xs
        .directory("/rs")
        .expect("directory")
        .iter()
        .map(|s| s.to_string())
        .collect();
    l.sort();
    assert_eq!(l, ["a", "b"]);
    let e = xs.read("/rs/none").expect_err("missing node");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e:?}");
    xs.rm("/rs/b").expect("rm");
    assert_eq!(xs.directory("/rs").expect("directory").len(), 1);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let axs = XsTokio::new().await.expect("async connect");
        let mut events = axs.watch("/rs/w").await.expect("watch");
        let first = tokio_timeout(events.next()).await;
        assert_eq!(first.as_deref(), Some("/rs/w"), "initial event");
        axs.write("/rs/w/k", "v").await.expect("async write");
        let second = tokio_timeout(events.next()).await;
        assert_eq!(second.as_deref(), Some("/rs/w/k"), "event for the write");
        assert_eq!(&*axs.read("/rs/w/k").await.expect("async read"), "v");
        axs.rm("/rs").await.expect("async rm");
    });
    assert!(xs.read("/rs/a").is_err());
}

/// Waits at most 10 s for `f`, polling it on the current-thread runtime.
async fn tokio_timeout<F: std::future::Future<Output = Option<Box<str>>>>(
    f: F,
) -> Option<Box<str>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
            return std::task::Poll::Ready(v);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no watch event within 10 s"
        );
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}
