//! See tests/nostd.rs.
