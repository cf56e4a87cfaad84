//! An error's source chain on one line.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, `e: cause: cause`
/// (the sources' own messages do not repeat them, STYLE.md "Errors").
///
/// ```
/// # use xen_diag::ErrorChain;
/// let e = std::io::Error::other("disk gone");
/// assert_eq!(ErrorChain(&e).to_string(), "disk gone");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<dyn Error + 'static>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref()
        }
    }

    #[test]
    fn test_error_chain_three_layers_prints_each_once_in_order() {
        let io = std::io::Error::other("connection refused");
        let e = Layer(
            "cannot connect the device",
            Some(Box::new(Layer(
                "cannot map ring grant 8",
                Some(Box::new(io)),
            ))),
        );

        let s = ErrorChain(&e).to_string();

        assert_eq!(
            s,
            "cannot connect the device: cannot map ring grant 8: connection refused"
        );
    }

    #[test]
    fn test_error_chain_without_source_is_the_message() {
        let e = Layer("alone", None);
        assert_eq!(format!("{}", ErrorChain(&e)), "alone");
        assert_eq!(format!("{:?}", ErrorChain(&e)), "alone");
    }
}
