//! `xl_cfg`: the `xl.cfg` parser (`xen_xl::config`) on arbitrary text, and
//! the disk and vif specification parsers on each line. An error names a
//! line of the file; a parsed disk spec prints back to an equal spec.

use xen_xl::config::{parse_settings, XlConfig};
use xen_xl::disk::{vdev_to_devid, DiskSpec};
use xen_xl::vif::VifSpec;

pub(crate) fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = parse_settings("fuzz.cfg", &text);
    if let Err(e) = XlConfig::parse("fuzz.cfg", &text) {
        if let Some(line) = e.line() {
            let lines = text.split('\n').count().max(1);
            assert!(
                (1..=lines).contains(&line),
                "error names line {line} of {lines}: {e}"
            );
        }
    }
    for l in text.lines().take(64) {
        if let Ok(d) = DiskSpec::parse(l) {
            let printed = d.to_string();
            match DiskSpec::parse(&printed) {
                Ok(again) => assert_eq!(again, d, "disk spec {l:?} printed as {printed:?}"),
                Err(e) => panic!("disk spec {l:?} printed as {printed:?} does not parse: {e}"),
            }
        }
        let _ = VifSpec::parse(l);
        let _ = vdev_to_devid(l);
    }
}
