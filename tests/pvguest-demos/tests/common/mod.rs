//! Shared pieces of the demos' tests: starting the demo binary on the
//! private shim of `xen_testhost::shim`, and the Dom0 halves of the grant
//! and ring demos ([`dom0peer`]).
#![allow(dead_code)]

pub mod dom0peer;

use std::path::Path;

use xen_testhost::shim::{GuestProcess, ShimDom0};

/// Starts `pvguest-demo args...` as a new domain of `d`.
pub fn demo(d: &ShimDom0, args: &[&str]) -> GuestProcess {
    d.guest(Path::new(env!("CARGO_BIN_EXE_pvguest-demo")), args)
        .expect("the demo process starts")
}
