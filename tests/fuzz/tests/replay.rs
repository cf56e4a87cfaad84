//! Replays every file of `tests/fuzz/corpus/NAME/` through fuzz target
//! `NAME` on stable Rust, without libFuzzer: the seeds, what campaigns
//! added and each crash once fixed stay checked by the normal `cargo test`.

use std::path::Path;

use xen_fuzz_targets::{run, TARGETS};

fn replay(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for f in &files {
        let data = std::fs::read(f).expect("corpus file");
        eprintln!("{name}: {}", f.display());
        assert!(run(name, &data), "no target {name}");
    }
}

#[test]
fn test_every_target_has_a_corpus_and_a_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest =
        std::fs::read_to_string(root.join("fuzz/Cargo.toml")).expect("tests/fuzz/fuzz/Cargo.toml");
    for t in TARGETS {
        assert!(root.join("corpus").join(t).is_dir(), "no corpus for {t}");
        assert!(
            root.join("fuzz/fuzz_targets")
                .join(format!("{t}.rs"))
                .is_file(),
            "no fuzz/fuzz_targets/{t}.rs"
        );
        assert!(
            manifest.contains(&format!("name = \"{t}\"")),
            "{t} not in tests/fuzz/fuzz/Cargo.toml"
        );
    }
    assert!(!run("no-such-target", b""));
}

#[test]
fn test_replay_xs_wire() {
    replay("xs_wire");
}

#[test]
fn test_replay_xs_request() {
    replay("xs_request");
}

#[test]
fn test_replay_ring() {
    replay("ring");
}

#[test]
fn test_replay_blkif() {
    replay("blkif");
}

#[test]
fn test_replay_netif() {
    replay("netif");
}

#[test]
fn test_replay_console() {
    replay("console");
}

#[test]
fn test_replay_xl_cfg() {
    replay("xl_cfg");
}
