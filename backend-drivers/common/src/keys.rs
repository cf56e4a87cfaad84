//! Reading a frontend's xenstore directory: numbers, flags and the
//! multi-queue layout.
//!
//! Both backends read `multi-queue-num-queues` (absent: one queue) and,
//! above one queue, each queue's rings under `queue-N/` (Linux's
//! `xenbus` backends, `blkif.h` and `netif.h` "Multi-queue"); one queue's
//! keys are at the top of the directory.

use std::str::FromStr;

use xen_abi::io::blkif::keys::{MULTI_QUEUE_NUM_QUEUES, QUEUE_PREFIX};

/// A frontend key missing or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A frontend key is missing.
    #[error("frontend key {0} is missing")]
    Missing(String),
    /// A frontend key has a value the backend refuses.
    #[error("frontend key {key} has an invalid value {value:?}")]
    Bad {
        /// Key.
        key: String,
        /// Value read.
        value: String,
    },
}

impl KeyError {
    /// [`KeyError::Bad`] of `key` with `value`.
    pub fn bad(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self::Bad {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// Parses `v`, the value of `key`, as a number (surrounding blanks allowed).
///
/// # Errors
/// [`KeyError::Bad`] naming the key and the value.
pub fn parse_num<T: FromStr>(key: &str, v: &str) -> Result<T, KeyError> {
    v.trim().parse().map_err(|_| KeyError::bad(key, v))
}

/// Checks that `n` queues (of parameters read before, perhaps by another
/// caller) are 1 to `max_queues`.
///
/// # Errors
/// [`KeyError::Bad`] of `multi-queue-num-queues` with `n`.
pub fn check_queue_count(n: usize, max_queues: u32) -> Result<(), KeyError> {
    if n == 0 || n > max_queues as usize {
        return Err(KeyError::bad(MULTI_QUEUE_NUM_QUEUES, n.to_string()));
    }
    Ok(())
}

/// A frontend's directory read through `read` (a key relative to the
/// directory, e.g. `"ring-ref"` or `"queue-1/event-channel"`, to its value).
#[derive(Debug, Clone, Copy)]
pub struct FrontendKeys<R> {
    read: R,
}

impl<R: Fn(&str) -> Option<String>> FrontendKeys<R> {
    /// The directory read through `read`.
    pub fn new(read: R) -> Self {
        Self { read }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<String> {
        (self.read)(key)
    }

    /// The number at `key`.
    ///
    /// # Errors
    /// [`KeyError::Missing`] or [`KeyError::Bad`].
    pub fn num<T: FromStr>(&self, key: &str) -> Result<T, KeyError> {
        let v = self
            .get(key)
            .ok_or_else(|| KeyError::Missing(key.to_owned()))?;
        parse_num(key, &v)
    }

    /// The flag at `key` (a number, non-zero: set), `default` if absent.
    ///
    /// # Errors
    /// [`KeyError::Bad`]: not a number.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, KeyError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => Ok(parse_num::<u32>(key, &v)? != 0),
        }
    }

    /// The directory prefix of each queue's keys: `[""]` for one queue
    /// (no `multi-queue-num-queues`, or 1), else `queue-0/`, `queue-1/`...
    ///
    /// # Errors
    /// [`KeyError::Bad`]: `multi-queue-num-queues` is not a number from 1
    /// to `max_queues`.
    pub fn queue_dirs(&self, max_queues: u32) -> Result<Vec<String>, KeyError> {
        let nq = match self.get(MULTI_QUEUE_NUM_QUEUES) {
            None => 1,
            Some(v) => {
                let n: u32 = parse_num(MULTI_QUEUE_NUM_QUEUES, &v)?;
                if n == 0 || n > max_queues {
                    return Err(KeyError::bad(MULTI_QUEUE_NUM_QUEUES, v));
                }
                n
            }
        };
        Ok(if nq == 1 {
            vec![String::new()]
        } else {
            (0..nq).map(|q| format!("{QUEUE_PREFIX}{q}/")).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn keys(kv: &[(&str, &str)]) -> FrontendKeys<impl Fn(&str) -> Option<String>> {
        let m: HashMap<String, String> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        FrontendKeys::new(move |k: &str| m.get(k).cloned())
    }

    #[test]
    fn test_queue_dirs_absent_is_one_queue_at_the_top() {
        assert_eq!(keys(&[]).queue_dirs(4), Ok(vec![String::new()]));
        assert_eq!(
            keys(&[("multi-queue-num-queues", "1")]).queue_dirs(4),
            Ok(vec![String::new()])
        );
    }

    #[test]
    fn test_queue_dirs_several_queues_are_under_queue_n() {
        assert_eq!(
            keys(&[("multi-queue-num-queues", " 2 ")]).queue_dirs(4),
            Ok(vec!["queue-0/".to_owned(), "queue-1/".to_owned()])
        );
    }

    #[test]
    fn test_queue_dirs_zero_or_too_many_or_junk_is_refused() {
        for v in ["0", "5", "x"] {
            assert_eq!(
                keys(&[("multi-queue-num-queues", v)]).queue_dirs(4),
                Err(KeyError::bad("multi-queue-num-queues", v))
            );
        }
    }

    #[test]
    fn test_check_queue_count_none_or_too_many_is_refused() {
        assert_eq!(check_queue_count(1, 1), Ok(()));
        assert_eq!(check_queue_count(4, 4), Ok(()));
        assert_eq!(
            check_queue_count(0, 4),
            Err(KeyError::bad("multi-queue-num-queues", "0"))
        );
        assert_eq!(
            check_queue_count(5, 4),
            Err(KeyError::bad("multi-queue-num-queues", "5"))
        );
    }

    #[test]
    fn test_num_and_flag_missing_bad_and_default() {
        let k = keys(&[("a", "7"), ("b", "x"), ("f", "0")]);
        assert_eq!(k.num::<u32>("a"), Ok(7));
        assert_eq!(k.num::<u32>("b"), Err(KeyError::bad("b", "x")));
        assert_eq!(k.num::<u32>("c"), Err(KeyError::Missing("c".into())));
        assert_eq!(k.flag("a", false), Ok(true));
        assert_eq!(k.flag("f", true), Ok(false));
        assert_eq!(k.flag("c", true), Ok(true));
        assert!(k.flag("b", false).is_err());
    }
}
