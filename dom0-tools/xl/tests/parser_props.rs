//! Property tests of the parsers: no input makes them panic, and what they
//! print they parse back.

use proptest::prelude::*;
use xen_xl::config::{parse_settings, XlConfig};
use xen_xl::disk::{vdev_to_devid, DiskSpec};
use xen_xl::vif::VifSpec;

fn cfg_chars() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('='),
            Just('['),
            Just(']'),
            Just(','),
            Just('\''),
            Just('"'),
            Just('\\'),
            Just('#'),
            Just('\n'),
            Just(';'),
            Just('+'),
            Just(' '),
            Just('x'),
            Just('0'),
            any::<char>(),
        ],
        0..200,
    )
    .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #[test]
    fn test_config_parse_arbitrary_text_never_panics(text in cfg_chars()) {
        let _ = parse_settings("f", &text);
        let _ = XlConfig::parse("f", &text);
    }

    #[test]
    fn test_config_parse_errors_name_an_existing_line(text in cfg_chars()) {
        if let Err(e) = XlConfig::parse("f", &text) {
            let line = e.line().expect("text errors have a line");
            prop_assert!(line >= 1);
            prop_assert!(line <= text.split('\n').count().max(1));
        }
    }

    #[test]
    fn test_disk_spec_arbitrary_never_panics(s in "[a-z0-9=,:/ .-]{0,80}") {
        let _ = DiskSpec::parse(&s);
        let _ = VifSpec::parse(&s);
        let _ = vdev_to_devid(&s);
    }

    #[test]
    fn test_disk_spec_display_roundtrips(
        disk in 0u32..2000,
        part in 0u32..16,
        fmt in prop::sample::select(vec!["raw", "qcow", "qcow2", "vhd", "qed"]),
        ro in any::<bool>(),
        path in "/[a-z]{1,12}(/[a-z0-9.]{1,12}){0,3}",
    ) {
        let vdev = format!("d{disk}p{part}");
        let spec = format!("{path},{fmt},{vdev},{}", if ro { "ro" } else { "rw" });
        let d = DiskSpec::parse(&spec).expect("valid spec");
        prop_assert_eq!(DiskSpec::parse(&d.to_string()).expect("printed spec parses"), d);
    }

    #[test]
    fn test_xvd_names_match_d_syntax(disk in 0u32..20000, part in 0u32..256) {
        // The letters of disk n in bijective base 26.
        let mut n = disk + 1;
        let mut letters = Vec::new();
        while n > 0 {
            n -= 1;
            letters.push(b'a' + (n % 26) as u8);
            n /= 26;
        }
        letters.reverse();
        let name = format!(
            "xvd{}{}",
            String::from_utf8(letters).expect("ascii"),
            if part == 0 { String::new() } else { part.to_string() }
        );
        prop_assert_eq!(vdev_to_devid(&name), vdev_to_devid(&format!("d{disk}p{part}")));
    }
}
