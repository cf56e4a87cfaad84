//! The runtime's report lines: what a guest program tells the toolstack or
//! a test on its standard output (the console), one line per message,
//! `<tag> key=value key=value ...` (`pvguest ready domid=..`, `pvdisk
//! connected ..`, `pvguest shutdown reason=..`). [`emit`] writes one,
//! [`Line::parse`] reads one back (the Dom0 test kit does).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

/// One report line: a tag (one or more words) and `key=value` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The words before the first `key=value`.
    pub tag: String,
    /// The fields.
    pub fields: BTreeMap<String, String>,
}

impl Line {
    /// Parses `tag words key=value ...`; `None` for an empty line.
    pub fn parse(s: &str) -> Option<Line> {
        let mut tag = String::new();
        let mut fields = BTreeMap::new();
        for word in s.split_whitespace() {
            match word.split_once('=') {
                Some((k, v)) => {
                    fields.insert(k.to_owned(), v.to_owned());
                }
                None if fields.is_empty() => {
                    if !tag.is_empty() {
                        tag.push(' ');
                    }
                    tag.push_str(word);
                }
                None => {}
            }
        }
        (!tag.is_empty() || !fields.is_empty()).then_some(Line { tag, fields })
    }

    /// A field parsed as a number.
    pub fn num<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.fields.get(key).and_then(|v| v.parse().ok())
    }

    /// A comma-separated list of numbers.
    pub fn nums<T: std::str::FromStr>(&self, key: &str) -> Option<Vec<T>> {
        self.fields
            .get(key)?
            .split(',')
            .map(|x| x.parse().ok())
            .collect()
    }
}

/// Writes one report line and flushes.
pub fn emit(out: &mut dyn Write, tag: &str, fields: &[(&str, String)]) -> std::io::Result<()> {
    let mut s = String::from(tag);
    for (k, v) in fields {
        let _ = write!(s, " {k}={v}");
    }
    s.push('\n');
    out.write_all(s.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_line_parse_splits_tag_and_fields() {
        let l = Line::parse("ring-demo offer grefs=8,9 port=3 messages=10").expect("line");
        assert_eq!(l.tag, "ring-demo offer");
        assert_eq!(l.nums::<u32>("grefs"), Some(vec![8, 9]));
        assert_eq!(l.num::<u32>("port"), Some(3));
        assert_eq!(l.num::<u32>("nope"), None);
        assert_eq!(Line::parse("   "), None);
    }

    #[test]
    fn test_emit_then_parse_roundtrips() {
        let mut buf = Vec::new();
        emit(&mut buf, "a b", &[("x", "1".into()), ("y", "2,3".into())]).expect("emit");
        let l = Line::parse(std::str::from_utf8(&buf).expect("utf8")).expect("line");
        assert_eq!(l.tag, "a b");
        assert_eq!(l.fields.get("y").map(String::as_str), Some("2,3"));
    }
}
