//! Mirrors the split-driver protocol headers of `xen/io/`.

pub mod blkif;
pub mod console;
pub mod netif;
pub mod protocols;
pub mod ring;
pub mod xenbus;
pub mod xs_wire;
