//! The dependency graph has one block frontend and one network frontend:
//! the PV process guest (`xen-pvguest`) and the PVHVM kernel
//! (`pvhvm-kernel`, its own workspace) both depend on the very same
//! `xen-blkfront` and `xen-netfront` packages (same source directory, same
//! version), with no `[patch]` or copy in between.

use std::path::Path;
use std::process::Command;

fn cargo_tree(args: &[&str]) -> String {
    cargo_tree_of("xen-blkfront", args)
}

fn cargo_tree_of(krate: &str, args: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(cargo)
        .arg("tree")
        .args(args)
        .args(["-i", krate, "-e", "normal", "--prefix", "none"])
        .current_dir(&root)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `CRATE vX (path)` line and the direct dependents of it.
fn blkfront_and_users(tree: &str) -> (String, Vec<String>) {
    let mut lines = tree.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines
        .next()
        .expect("cargo tree printed the crate")
        .to_owned();
    let users = lines
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    (first, users)
}

#[test]
fn test_pv_runtime_and_pvhvm_kernel_share_one_blkfront_crate() {
    let (pv, pv_users) = blkfront_and_users(&cargo_tree(&["-p", "xen-pvguest"]));
    let (k, k_users) = blkfront_and_users(&cargo_tree(&[
        "--manifest-path",
        "frontend-drivers/pvhvm-kernel/Cargo.toml",
        "--target",
        "x86_64-unknown-linux-gnu",
    ]));
    assert!(pv.starts_with("xen-blkfront v"), "{pv}");
    assert!(pv.ends_with("frontend-drivers/blkfront)"), "{pv}");
    assert_eq!(
        pv, k,
        "the PV runtime and the PVHVM kernel use different blkfronts"
    );
    assert!(pv_users.iter().any(|u| u == "xen-pvguest"), "{pv_users:?}");
    assert!(k_users.iter().any(|u| u == "pvhvm-kernel"), "{k_users:?}");
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../frontend-drivers/pvhvm-kernel/Cargo.toml"),
    )
    .expect("read the kernel's manifest");
    assert!(
        !manifest.contains("[patch"),
        "the kernel patches a dependency"
    );
}

#[test]
fn test_pv_runtime_and_pvhvm_kernel_share_one_netfront_crate() {
    let (pv, pv_users) = blkfront_and_users(&cargo_tree_of("xen-netfront", &["-p", "xen-pvguest"]));
    let (k, k_users) = blkfront_and_users(&cargo_tree_of(
        "xen-netfront",
        &[
            "--manifest-path",
            "frontend-drivers/pvhvm-kernel/Cargo.toml",
            "--target",
            "x86_64-unknown-linux-gnu",
        ],
    ));
    assert!(pv.starts_with("xen-netfront v"), "{pv}");
    assert!(pv.ends_with("frontend-drivers/netfront)"), "{pv}");
    assert_eq!(
        pv, k,
        "the PV runtime and the PVHVM kernel use different netfronts"
    );
    assert!(pv_users.iter().any(|u| u == "xen-pvguest"), "{pv_users:?}");
    assert!(k_users.iter().any(|u| u == "pvhvm-kernel"), "{k_users:?}");
}
