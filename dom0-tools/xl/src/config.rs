//! The `xl.cfg` parser: Xen's configuration syntax (libxlu's `libxlu_cfg_l.l`
//! / `libxlu_cfg_y.y`) and the keys this toolstack understands.
//!
//! ```text
//! # a comment
//! name   = "guest"          # strings in "double" or 'single' quotes
//! memory = 256              # numbers (decimal or 0x hex)
//! disk   = [ 'format=raw, vdev=xvda, access=rw, target=disk.img',
//!            '/srv/b.img,raw,xvdb,ro', ]   # lists may span lines
//! extra += " quiet"         # += appends to a string or a list
//! ```
//!
//! Statements end at a newline or `;`. Parsing is pure: [`parse_settings`]
//! turns text into [`Setting`]s (with line numbers), [`XlConfig::parse`]
//! checks and types them. Every error names the file and line:
//! `xl.cfg:7: unknown disk format "raw2"`.
//!
//! Disk specifications follow `xl-disk-configuration(5)` (module
//! [`crate::disk`]), network ones `xl-network-configuration(5)`
//! (module [`crate::vif`]).

use std::fmt;

use crate::disk::{DiskSpec, DiskSpecError};
use crate::vif::{VifSpec, VifSpecError};

/// Deepest list nesting accepted (libxlu accepts nested lists; nothing
/// here uses more than one level).
pub const MAX_LIST_DEPTH: usize = 8;
/// Largest configuration file accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Default memory of a domain, MiB (libxl's default for PV guests).
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// What went wrong, without the location ([`ConfigError`] adds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// A character that starts no token.
    UnexpectedChar(char),
    /// A quoted string without its closing quote on the same line.
    UnterminatedString,
    /// A backslash escape that libxlu does not know, or a bad `\x`/octal.
    BadEscape(String),
    /// The grammar did not allow this token here.
    Syntax {
        /// What the parser wanted.
        expected: &'static str,
        /// What it found.
        found: String,
    },
    /// Lists nested deeper than [`MAX_LIST_DEPTH`].
    TooDeep,
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    TooLarge,
    /// `+=` on values of different kinds.
    AppendMismatch(String),
    /// A key needs a string or number, got a list (or the reverse).
    WrongType {
        /// The key.
        key: String,
        /// What it needs.
        expected: &'static str,
    },
    /// A numeric key's value is not a number in range.
    BadNumber {
        /// The key.
        key: String,
        /// The value given.
        value: String,
    },
    /// `name` is missing.
    MissingName,
    /// `name` is unusable (empty, too long, `/` or control characters).
    BadName(String),
    /// `type` is not `pv`, `pvh` or `hvm`.
    UnknownType(String),
    /// An `on_*` action is unknown.
    UnknownAction {
        /// The key.
        key: String,
        /// The value given.
        value: String,
    },
    /// `maxmem` is below `memory`.
    MaxmemBelowMemory {
        /// `memory`.
        memory: u64,
        /// `maxmem`.
        maxmem: u64,
    },
    /// A disk specification is invalid.
    Disk(DiskSpecError),
    /// A vif specification is invalid.
    Vif(VifSpecError),
    /// Two disks have the same virtual device.
    DuplicateVdev(String),
    /// `cpus=` is invalid (Xen's CPU list syntax).
    BadCpus {
        /// The value given.
        value: String,
        /// What is wrong.
        why: String,
    },
}

impl fmt::Display for ConfigErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnexpectedChar(c) => write!(f, "unexpected character {c:?}"),
            Self::UnterminatedString => f.write_str("unterminated string"),
            Self::BadEscape(e) => write!(f, "invalid escape \"{e}\" in string"),
            Self::Syntax { expected, found } => write!(f, "expected {expected}, found {found}"),
            Self::TooDeep => write!(f, "lists nested deeper than {MAX_LIST_DEPTH}"),
            Self::TooLarge => write!(f, "file larger than {MAX_CONFIG_BYTES} bytes"),
            Self::AppendMismatch(k) => {
                write!(
                    f,
                    "\"{k} +=\" appends a value of another kind (string vs list)"
                )
            }
            Self::WrongType { key, expected } => write!(f, "{key} must be {expected}"),
            Self::BadNumber { key, value } => {
                write!(f, "invalid numeric value \"{value}\" for {key}")
            }
            Self::MissingName => f.write_str("domain name (name=) is missing"),
            Self::BadName(n) => write!(f, "invalid domain name \"{n}\""),
            Self::UnknownType(t) => {
                write!(f, "unknown guest type \"{t}\" (expected pv, pvh or hvm)")
            }
            Self::UnknownAction { key, value } => write!(f, "unknown action \"{value}\" for {key}"),
            Self::MaxmemBelowMemory { memory, maxmem } => {
                write!(f, "maxmem ({maxmem}) is less than memory ({memory})")
            }
            Self::Disk(e) => e.fmt(f),
            Self::Vif(e) => e.fmt(f),
            Self::DuplicateVdev(v) => write!(f, "virtual device {v} is used by two disks"),
            Self::BadCpus { value, why } => write!(f, "invalid cpus=\"{value}\": {why}"),
        }
    }
}

/// Errors of this module: every one names the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the configuration")]
    Read {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is invalid at `line` (1-based; the last line for a
    /// missing key).
    #[error("{file}:{line}: {kind}")]
    Invalid {
        /// The file name as given.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        kind: ConfigErrorKind,
    },
}

impl ConfigError {
    /// The error kind, if the text was invalid.
    #[must_use]
    pub fn kind(&self) -> Option<&ConfigErrorKind> {
        match self {
            Self::Invalid { kind, .. } => Some(kind),
            Self::Read { .. } => None,
        }
    }

    /// The 1-based line, if the text was invalid.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Invalid { line, .. } => Some(*line),
            Self::Read { .. } => None,
        }
    }
}

/// A parsed value, with the line where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string or a number, as its text (libxlu keeps both as atoms).
    Atom {
        /// The text (quotes removed, escapes resolved).
        text: String,
        /// Whether it was quoted.
        quoted: bool,
        /// 1-based line.
        line: usize,
    },
    /// `[ ... ]`.
    List {
        /// The elements.
        items: Vec<Value>,
        /// 1-based line of `[`.
        line: usize,
    },
}

impl Value {
    /// The line where the value starts.
    #[must_use]
    pub fn line(&self) -> usize {
        match self {
            Self::Atom { line, .. } | Self::List { line, .. } => *line,
        }
    }
}

/// `=` or `+=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `key = value`.
    Assign,
    /// `key += value`.
    Append,
}

/// One `key = value` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key.
    pub name: String,
    /// `=` or `+=`.
    pub op: Op,
    /// The value.
    pub value: Value,
    /// 1-based line of the key.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Atom(String, bool),
    Assign,
    Append,
    LBracket,
    RBracket,
    Comma,
    Semi,
    Newline,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Self::Ident(s) => format!("\"{s}\""),
            Self::Atom(s, true) => format!("string \"{s}\""),
            Self::Atom(s, false) => format!("\"{s}\""),
            Self::Assign => "\"=\"".into(),
            Self::Append => "\"+=\"".into(),
            Self::LBracket => "\"[\"".into(),
            Self::RBracket => "\"]\"".into(),
            Self::Comma => "\",\"".into(),
            Self::Semi => "\";\"".into(),
            Self::Newline => "end of line".into(),
            Self::Eof => "end of file".into(),
        }
    }
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            chars: text.chars().peekable(),
            line: 1,
        }
    }

    /// The next token and the line it starts on.
    fn next(&mut self) -> Result<(Tok, usize), (usize, ConfigErrorKind)> {
        loop {
            let line = self.line;
            let Some(c) = self.chars.next() else {
                return Ok((Tok::Eof, line));
            };
            let tok = match c {
                ' ' | '\t' | '\r' => continue,
                '#' => {
                    while self.chars.peek().is_some_and(|&c| c != '\n') {
                        self.chars.next();
                    }
                    continue;
                }
                '\n' => {
                    self.line += 1;
                    Tok::Newline
                }
                '=' => Tok::Assign,
                '+' if self.chars.peek() == Some(&'=') => {
                    self.chars.next();
                    Tok::Append
                }
                '[' => Tok::LBracket,
                ']' => Tok::RBracket,
                ',' => Tok::Comma,
                ';' => Tok::Semi,
                '"' | '\'' => Tok::Atom(self.string(c).map_err(|k| (line, k))?, true),
                c if c.is_ascii_alphabetic() || c == '_' => {
                    let mut s = String::from(c);
                    while let Some(&n) = self.chars.peek() {
                        if !(n.is_ascii_alphanumeric() || n == '_') {
                            break;
                        }
                        s.push(n);
                        self.chars.next();
                    }
                    Tok::Ident(s)
                }
                c if c.is_ascii_digit() => {
                    // libxlu's NUMBER: [0-9][-+0-9a-zA-Z_.]*, kept as text.
                    let mut s = String::from(c);
                    while let Some(&n) = self.chars.peek() {
                        if !(n.is_ascii_alphanumeric() || matches!(n, '-' | '+' | '_' | '.')) {
                            break;
                        }
                        s.push(n);
                        self.chars.next();
                    }
                    Tok::Atom(s, false)
                }
                other => return Err((line, ConfigErrorKind::UnexpectedChar(other))),
            };
            return Ok((tok, line));
        }
    }

    /// A quoted string after its opening `quote`, with libxlu's escapes.
    fn string(&mut self, quote: char) -> Result<String, ConfigErrorKind> {
        let mut out = String::new();
        loop {
            match self.chars.next() {
                None | Some('\n') => return Err(ConfigErrorKind::UnterminatedString),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => {
                    let Some(e) = self.chars.next() else {
                        return Err(ConfigErrorKind::UnterminatedString);
                    };
                    let ch = match e {
                        '"' | '\'' | '\\' => e,
                        'a' => '\u{7}',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'v' => '\u{b}',
                        'x' => self.numeric_escape(16, 2, "x")?,
                        '0'..='7' => {
                            let mut digits = String::from(e);
                            for _ in 0..2 {
                                match self.chars.peek() {
                                    Some(&d @ '0'..='7') => {
                                        digits.push(d);
                                        self.chars.next();
                                    }
                                    _ => break,
                                }
                            }
                            let v = u32::from_str_radix(&digits, 8)
                                .map_err(|_| ConfigErrorKind::BadEscape(format!("\\{digits}")))?;
                            char::from_u32(v)
                                .filter(|_| v <= 0xff)
                                .ok_or_else(|| ConfigErrorKind::BadEscape(format!("\\{digits}")))?
                        }
                        '\n' => return Err(ConfigErrorKind::UnterminatedString),
                        other => return Err(ConfigErrorKind::BadEscape(format!("\\{other}"))),
                    };
                    out.push(ch);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn numeric_escape(
        &mut self,
        radix: u32,
        max: usize,
        prefix: &str,
    ) -> Result<char, ConfigErrorKind> {
        let mut digits = String::new();
        for _ in 0..max {
            match self.chars.peek() {
                Some(&d) if d.is_digit(radix) => {
                    digits.push(d);
                    self.chars.next();
                }
                _ => break,
            }
        }
        let bad = || ConfigErrorKind::BadEscape(format!("\\{prefix}{digits}"));
        if digits.is_empty() {
            return Err(bad());
        }
        let v = u32::from_str_radix(&digits, radix).map_err(|_| bad())?;
        char::from_u32(v).ok_or_else(bad)
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<(Tok, usize)>,
}

type PResult<T> = Result<T, (usize, ConfigErrorKind)>;

impl Parser<'_> {
    fn peek(&mut self) -> PResult<&(Tok, usize)> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex.next()?);
        }
        Ok(self.peeked.as_ref().expect("just filled"))
    }

    fn bump(&mut self) -> PResult<(Tok, usize)> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex.next(),
        }
    }

    fn skip_newlines(&mut self) -> PResult<()> {
        while self.peek()?.0 == Tok::Newline {
            self.bump()?;
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> PResult<Value> {
        let (tok, line) = self.bump()?;
        match tok {
            Tok::Atom(text, quoted) => Ok(Value::Atom { text, quoted, line }),
            Tok::LBracket => {
                if depth >= MAX_LIST_DEPTH {
                    return Err((line, ConfigErrorKind::TooDeep));
                }
                let mut items = Vec::new();
                loop {
                    self.skip_newlines()?;
                    if self.peek()?.0 == Tok::RBracket {
                        self.bump()?;
                        return Ok(Value::List { items, line });
                    }
                    items.push(self.value(depth + 1)?);
                    self.skip_newlines()?;
                    let (t, l) = self.bump()?;
                    match t {
                        Tok::Comma => {}
                        Tok::RBracket => return Ok(Value::List { items, line }),
                        other => {
                            return Err((
                                l,
                                ConfigErrorKind::Syntax {
                                    expected: "\",\" or \"]\"",
                                    found: other.describe(),
                                },
                            ))
                        }
                    }
                }
            }
            other => Err((
                line,
                ConfigErrorKind::Syntax {
                    expected: "a value (string, number or list)",
                    found: other.describe(),
                },
            )),
        }
    }

    fn settings(&mut self) -> PResult<Vec<Setting>> {
        let mut out = Vec::new();
        loop {
            let (tok, line) = self.bump()?;
            let name = match tok {
                Tok::Eof => return Ok(out),
                Tok::Newline | Tok::Semi => continue,
                Tok::Ident(n) => n,
                other => {
                    return Err((
                        line,
                        ConfigErrorKind::Syntax {
                            expected: "a setting name",
                            found: other.describe(),
                        },
                    ))
                }
            };
            let (op_tok, op_line) = self.bump()?;
            let op = match op_tok {
                Tok::Assign => Op::Assign,
                Tok::Append => Op::Append,
                other => {
                    return Err((
                        op_line,
                        ConfigErrorKind::Syntax {
                            expected: "\"=\" or \"+=\"",
                            found: other.describe(),
                        },
                    ))
                }
            };
            let value = self.value(0)?;
            let (end, end_line) = self.bump()?;
            match end {
                Tok::Newline | Tok::Semi | Tok::Eof => {}
                other => {
                    return Err((
                        end_line,
                        ConfigErrorKind::Syntax {
                            expected: "end of line or \";\"",
                            found: other.describe(),
                        },
                    ))
                }
            }
            out.push(Setting {
                name,
                op,
                value,
                line,
            });
            if end == Tok::Eof {
                return Ok(out);
            }
        }
    }
}

/// Parses `text` (named `file` in errors) into its settings, in order.
///
/// # Errors
/// [`ConfigError::Invalid`] with the line of the first lexical or syntax
/// error.
pub fn parse_settings(file: &str, text: &str) -> Result<Vec<Setting>, ConfigError> {
    let at = |line: usize, kind| ConfigError::Invalid {
        file: file.to_owned(),
        line,
        kind,
    };
    if text.len() > MAX_CONFIG_BYTES {
        return Err(at(1, ConfigErrorKind::TooLarge));
    }
    let mut p = Parser {
        lex: Lexer::new(text),
        peeked: None,
    };
    p.settings().map_err(|(line, kind)| at(line, kind))
}

/// The settings with `+=` applied and later assignments winning, as
/// libxlu resolves them: one value per key, in first-seen order.
fn resolve(file: &str, settings: Vec<Setting>) -> Result<Vec<Setting>, ConfigError> {
    let mut out: Vec<Setting> = Vec::new();
    for s in settings {
        let existing = out.iter_mut().find(|o| o.name == s.name);
        match (existing, s.op) {
            (Some(prev), Op::Append) => {
                let merged = match (&mut prev.value, s.value) {
                    (Value::Atom { text, .. }, Value::Atom { text: more, .. }) => {
                        text.push_str(&more);
                        None
                    }
                    (Value::List { items, .. }, Value::List { items: more, .. }) => {
                        items.extend(more);
                        None
                    }
                    _ => Some(()),
                };
                if merged.is_some() {
                    return Err(ConfigError::Invalid {
                        file: file.to_owned(),
                        line: s.line,
                        kind: ConfigErrorKind::AppendMismatch(s.name),
                    });
                }
                prev.line = s.line;
            }
            (Some(prev), Op::Assign) => *prev = s,
            (None, _) => out.push(s),
        }
    }
    Ok(out)
}

/// Guest type (`type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestType {
    /// A PV guest: the PV guest runtime, a process.
    Pv,
    /// PVH (accepted; this stack runs it as PVHVM under KVM).
    Pvh,
    /// HVM (PVHVM under KVM).
    Hvm,
}

impl GuestType {
    /// The `type=` value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pv => "pv",
            Self::Pvh => "pvh",
            Self::Hvm => "hvm",
        }
    }
}

/// What to do when the guest powers off, reboots or crashes (`on_*=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `destroy`.
    Destroy,
    /// `restart`.
    Restart,
    /// `rename-restart`.
    RenameRestart,
    /// `preserve`.
    Preserve,
    /// `coredump-destroy`.
    CoredumpDestroy,
    /// `coredump-restart`.
    CoredumpRestart,
    /// `soft-reset`.
    SoftReset,
}

impl Action {
    /// Parses an action name as `xl.cfg(5)` spells it.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "destroy" => Self::Destroy,
            "restart" => Self::Restart,
            "rename-restart" => Self::RenameRestart,
            "preserve" => Self::Preserve,
            "coredump-destroy" => Self::CoredumpDestroy,
            "coredump-restart" => Self::CoredumpRestart,
            "soft-reset" => Self::SoftReset,
            _ => return None,
        })
    }

    /// The name as written in `xl.cfg` and in xenstore.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Destroy => "destroy",
            Self::Restart => "restart",
            Self::RenameRestart => "rename-restart",
            Self::Preserve => "preserve",
            Self::CoredumpDestroy => "coredump-destroy",
            Self::CoredumpRestart => "coredump-restart",
            Self::SoftReset => "soft-reset",
        }
    }
}

/// A checked domain configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XlConfig {
    /// `name`.
    pub name: String,
    /// `memory`, MiB.
    pub memory_mib: u64,
    /// `maxmem`, MiB (defaults to `memory`).
    pub maxmem_mib: u64,
    /// `vcpus`.
    pub vcpus: u32,
    /// `cpus` (the CPUs the domain may run on; `None`: any).
    pub cpus: Option<crate::resources::CpusSpec>,
    /// `type`.
    pub guest_type: GuestType,
    /// `kernel`.
    pub kernel: Option<String>,
    /// The kernel command line: `cmdline`, else `root=<root> <extra>`.
    pub cmdline: Option<String>,
    /// `ramdisk`: the guest's initramfs (a newc cpio archive).
    pub ramdisk: Option<String>,
    /// `on_poweroff` (default destroy).
    pub on_poweroff: Action,
    /// `on_reboot` (default restart).
    pub on_reboot: Action,
    /// `on_crash` (default destroy).
    pub on_crash: Action,
    /// `on_watchdog` (default destroy).
    pub on_watchdog: Action,
    /// `disk`.
    pub disks: Vec<DiskSpec>,
    /// `vif`.
    pub vifs: Vec<VifSpec>,
    /// Keys this toolstack does not know (xl ignores them too), with lines.
    pub ignored: Vec<(String, usize)>,
    /// Warnings (`cmdline=` overriding `extra=`...).
    pub warnings: Vec<String>,
}

/// Keys understood by [`XlConfig::parse`].
pub const KNOWN_KEYS: &[&str] = &[
    "name",
    "memory",
    "maxmem",
    "vcpus",
    "cpus",
    "type",
    "kernel",
    "extra",
    "root",
    "cmdline",
    "ramdisk",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "on_watchdog",
    "disk",
    "vif",
];

struct Keys<'a> {
    file: &'a str,
    settings: &'a [Setting],
    last_line: usize,
}

impl Keys<'_> {
    fn err(&self, line: usize, kind: ConfigErrorKind) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            kind,
        }
    }

    fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.name == key)
    }

    /// A string (or number) key: its text and line.
    fn string(&self, key: &str) -> Result<Option<(String, usize)>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Setting {
                value: Value::Atom { text, line, .. },
                ..
            }) => Ok(Some((text.clone(), *line))),
            Some(s) => Err(self.err(
                s.line,
                ConfigErrorKind::WrongType {
                    key: key.to_owned(),
                    expected: "a string or a number",
                },
            )),
        }
    }

    fn number(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        let Some((text, line)) = self.string(key)? else {
            return Ok(None);
        };
        parse_number(&text)
            .filter(|v| (min..=max).contains(v))
            .map(Some)
            .ok_or_else(|| {
                self.err(
                    line,
                    ConfigErrorKind::BadNumber {
                        key: key.to_owned(),
                        value: text,
                    },
                )
            })
    }

    /// A list-of-strings key: each string with its line. A single string
    /// is accepted as a one-element list.
    fn strings(&self, key: &str) -> Result<Vec<(String, usize)>, ConfigError> {
        let wrong = |line| {
            self.err(
                line,
                ConfigErrorKind::WrongType {
                    key: key.to_owned(),
                    expected: "a list of strings",
                },
            )
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Setting {
                value: Value::Atom { text, line, .. },
                ..
            }) => Ok(vec![(text.clone(), *line)]),
            Some(Setting {
                value: Value::List { items, .. },
                ..
            }) => items
                .iter()
                .map(|v| match v {
                    Value::Atom { text, line, .. } => Ok((text.clone(), *line)),
                    Value::List { line, .. } => Err(wrong(*line)),
                })
                .collect(),
        }
    }

    fn action(&self, key: &str, default: Action) -> Result<Action, ConfigError> {
        match self.string(key)? {
            None => Ok(default),
            Some((v, line)) => Action::parse(&v).ok_or_else(|| {
                self.err(
                    line,
                    ConfigErrorKind::UnknownAction {
                        key: key.to_owned(),
                        value: v,
                    },
                )
            }),
        }
    }
}

/// Parses a libxlu number: decimal, `0x` hex or `0` octal, as `strtoul`
/// with base 0 does, with nothing after it.
#[must_use]
pub fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(h, 16).ok();
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) || s.is_empty() {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return u64::from_str_radix(&s[1..], 8).ok();
    }
    s.parse().ok()
}

fn check_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.contains('/')
        && !name.chars().any(char::is_control)
        && name.parse::<u32>().is_err()
}

impl XlConfig {
    /// Parses and checks a whole `xl.cfg` text; `file` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the line of the first problem.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let settings = resolve(file, parse_settings(file, text)?)?;
        let last_line = text.lines().count().max(1);
        let k = Keys {
            file,
            settings: &settings,
            last_line,
        };
        let (name, name_line) = k
            .string("name")?
            .ok_or_else(|| k.err(k.last_line, ConfigErrorKind::MissingName))?;
        if !check_name(&name) {
            return Err(k.err(name_line, ConfigErrorKind::BadName(name)));
        }
        let memory_mib = k
            .number("memory", 1, u64::from(u32::MAX))?
            .unwrap_or(DEFAULT_MEMORY_MIB);
        let maxmem_mib = k
            .number("maxmem", 1, u64::from(u32::MAX))?
            .unwrap_or(memory_mib);
        if maxmem_mib < memory_mib {
            let line = k.get("maxmem").map_or(k.last_line, |s| s.line);
            return Err(k.err(
                line,
                ConfigErrorKind::MaxmemBelowMemory {
                    memory: memory_mib,
                    maxmem: maxmem_mib,
                },
            ));
        }
        let vcpus = k.number("vcpus", 1, 4096)?.unwrap_or(1);
        let vcpus = u32::try_from(vcpus).expect("bounded to 4096 above");
        let cpus_items = k.strings("cpus")?;
        let cpus = match cpus_items.first() {
            None => None,
            Some((_, line)) => {
                let texts: Vec<String> = cpus_items.iter().map(|(t, _)| t.clone()).collect();
                let value = texts.join(", ");
                Some(
                    crate::resources::CpusSpec::parse(texts)
                        .map_err(|why| k.err(*line, ConfigErrorKind::BadCpus { value, why }))?,
                )
            }
        };
        let guest_type = match k.string("type")? {
            None => GuestType::Pv,
            Some((t, line)) => match t.as_str() {
                "pv" => GuestType::Pv,
                "pvh" => GuestType::Pvh,
                "hvm" => GuestType::Hvm,
                _ => return Err(k.err(line, ConfigErrorKind::UnknownType(t))),
            },
        };
        let kernel = k.string("kernel")?.map(|(s, _)| s);
        let mut warnings = Vec::new();
        let root = k.string("root")?.map(|(s, _)| s);
        let extra = k.string("extra")?.map(|(s, _)| s);
        let cmdline = match k.string("cmdline")?.map(|(s, _)| s) {
            Some(c) => {
                if root.is_some() || extra.is_some() {
                    warnings.push("ignoring root= and extra= in favour of cmdline=".to_owned());
                }
                Some(c)
            }
            None => match (root, extra) {
                (None, None) => None,
                (Some(r), None) => Some(format!("root={r}")),
                (None, Some(e)) => Some(e),
                (Some(r), Some(e)) => Some(format!("root={r} {e}")),
            },
        };
        let ramdisk = k.string("ramdisk")?.map(|(s, _)| s);
        let on_poweroff = k.action("on_poweroff", Action::Destroy)?;
        let on_reboot = k.action("on_reboot", Action::Restart)?;
        let on_crash = k.action("on_crash", Action::Destroy)?;
        let on_watchdog = k.action("on_watchdog", Action::Destroy)?;
        let mut disks: Vec<DiskSpec> = Vec::new();
        for (spec, line) in k.strings("disk")? {
            let d = DiskSpec::parse(&spec).map_err(|e| k.err(line, ConfigErrorKind::Disk(e)))?;
            if disks.iter().any(|o| o.devid == d.devid) {
                return Err(k.err(line, ConfigErrorKind::DuplicateVdev(d.vdev)));
            }
            disks.push(d);
        }
        let mut vifs = Vec::new();
        for (spec, line) in k.strings("vif")? {
            vifs.push(VifSpec::parse(&spec).map_err(|e| k.err(line, ConfigErrorKind::Vif(e)))?);
        }
        let ignored = settings
            .iter()
            .filter(|s| !KNOWN_KEYS.contains(&s.name.as_str()))
            .map(|s| (s.name.clone(), s.line))
            .collect();
        Ok(Self {
            name,
            memory_mib,
            maxmem_mib,
            vcpus,
            cpus,
            guest_type,
            kernel,
            cmdline,
            ramdisk,
            on_poweroff,
            on_reboot,
            on_crash,
            on_watchdog,
            disks,
            vifs,
            ignored,
            warnings,
        })
    }

    /// Reads and parses the file at `path`; errors name it as given.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Invalid`].
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &text)
    }

    /// [`XlConfig::load`] with `KEY=VALUE` settings after the file's (xl
    /// create's overrides: each is one more line at the end, so it wins
    /// over the file's and `+=` appends to it). Errors in them are named
    /// as lines of `<file> + command line`.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn load_with(path: &std::path::Path, overrides: &[String]) -> Result<Self, ConfigError> {
        if overrides.is_empty() {
            return Self::load(path);
        }
        let file = format!("{} + command line", path.display());
        let mut text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        text.push('\n');
        for o in overrides {
            text.push_str(o);
            text.push('\n');
        }
        Self::parse(&file, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{Access, DiskFormat};

    fn kind_of(text: &str) -> (usize, ConfigErrorKind) {
        let e = XlConfig::parse("xl.cfg", text).expect_err("must fail");
        (
            e.line().expect("has a line"),
            e.kind().expect("invalid").clone(),
        )
    }

    #[test]
    fn test_parse_settings_strings_numbers_lists_parse() {
        let s = parse_settings("f", "a = 'x'\nb = \"y\" ; c = 0x10\nd = [ '1',\n  '2', ]\n")
            .expect("valid");
        assert_eq!(s.len(), 4);
        assert_eq!(s[2].line, 2);
        assert_eq!(
            s[3].value,
            Value::List {
                items: vec![
                    Value::Atom {
                        text: "1".into(),
                        quoted: true,
                        line: 3
                    },
                    Value::Atom {
                        text: "2".into(),
                        quoted: true,
                        line: 4
                    }
                ],
                line: 3
            }
        );
    }

    #[test]
    fn test_parse_settings_comments_and_blank_lines_ignored() {
        let s = parse_settings("f", "# hi\n\n  name = 'a' # trailing\n#end").expect("valid");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].line, 3);
    }

    #[test]
    fn test_parse_settings_escapes_resolved() {
        let s = parse_settings("f", r#"a = "q\"\\\t\x41\101\n'""#).expect("valid");
        let Value::Atom { text, .. } = &s[0].value else {
            panic!("atom")
        };
        assert_eq!(text, "q\"\\\tAA\n'");
    }

    #[test]
    fn test_parse_settings_bad_escape_fails() {
        let e = parse_settings("f", "a = \"\\q\"").expect_err("bad escape");
        assert_eq!(e.to_string(), "f:1: invalid escape \"\\q\" in string");
        assert!(parse_settings("f", "a = \"\\x\"").is_err());
    }

    #[test]
    fn test_parse_settings_unterminated_string_names_line() {
        let e = parse_settings("xl.cfg", "name='a'\nkernel = \"abc\n").expect_err("fails");
        assert_eq!(e.to_string(), "xl.cfg:2: unterminated string");
    }

    #[test]
    fn test_parse_settings_unexpected_char_fails() {
        let e = parse_settings("xl.cfg", "a = 1\nb = @\n").expect_err("fails");
        assert_eq!(e.line(), Some(2));
        assert_eq!(e.kind(), Some(&ConfigErrorKind::UnexpectedChar('@')));
    }

    #[test]
    fn test_parse_settings_missing_equals_fails() {
        let e = parse_settings("xl.cfg", "name 'a'\n").expect_err("fails");
        assert_eq!(
            e.to_string(),
            "xl.cfg:1: expected \"=\" or \"+=\", found string \"a\""
        );
    }

    #[test]
    fn test_parse_settings_missing_value_fails() {
        let e = parse_settings("xl.cfg", "\n\nname =\n").expect_err("fails");
        assert_eq!(
            e.to_string(),
            "xl.cfg:3: expected a value (string, number or list), found end of line"
        );
    }

    #[test]
    fn test_parse_settings_two_values_on_a_line_fail() {
        let e = parse_settings("xl.cfg", "name = 'a' 'b'\n").expect_err("fails");
        assert_eq!(e.line(), Some(1));
        assert!(matches!(e.kind(), Some(ConfigErrorKind::Syntax { .. })));
    }

    #[test]
    fn test_parse_settings_list_missing_comma_fails() {
        let e = parse_settings("xl.cfg", "disk = [ 'a'\n 'b' ]\n").expect_err("fails");
        assert_eq!(e.line(), Some(2));
    }

    #[test]
    fn test_parse_settings_unclosed_list_fails_at_eof() {
        let e = parse_settings("xl.cfg", "disk = [ 'a',\n").expect_err("fails");
        assert_eq!(
            e.kind(),
            Some(&ConfigErrorKind::Syntax {
                expected: "a value (string, number or list)",
                found: "end of file".into()
            })
        );
    }

    #[test]
    fn test_parse_settings_setting_must_start_with_name() {
        let e = parse_settings("xl.cfg", "= 3\n").expect_err("fails");
        assert!(e.to_string().contains("expected a setting name"));
    }

    #[test]
    fn test_parse_settings_deep_nesting_fails() {
        let text = format!("a = {}{}", "[".repeat(20), "]".repeat(20));
        let e = parse_settings("xl.cfg", &text).expect_err("fails");
        assert_eq!(e.kind(), Some(&ConfigErrorKind::TooDeep));
    }

    #[test]
    fn test_parse_settings_too_large_fails() {
        let text = "#".repeat(MAX_CONFIG_BYTES + 1);
        let e = parse_settings("xl.cfg", &text).expect_err("fails");
        assert_eq!(e.kind(), Some(&ConfigErrorKind::TooLarge));
    }

    #[test]
    fn test_xl_config_full_pv_config_parses() {
        let text = "\
# A PV guest
name = \"guest1\"
type = 'pv'
memory = 256
maxmem = 512
vcpus = 2
kernel = \"/boot/vmlinuz\"
extra = \"console=hvc0\"
root = '/dev/xvda1'
ramdisk = \"/boot/initrd.cpio\"
on_crash = 'preserve'
on_poweroff = \"destroy\"
on_reboot = 'restart'
disk = [ 'format=raw, vdev=xvda, access=rw, target=/srv/disk.img',
         '/srv/b.img,raw,xvdb,ro',
]
vif = [ 'mac=00:16:3e:01:02:03, bridge=xenbr0, ip=10.0.0.2' ]
builder = 'generic'
";
        let c = XlConfig::parse("xl.cfg", text).expect("valid");
        assert_eq!(c.name, "guest1");
        assert_eq!(c.guest_type, GuestType::Pv);
        assert_eq!((c.memory_mib, c.maxmem_mib, c.vcpus), (256, 512, 2));
        assert_eq!(c.kernel.as_deref(), Some("/boot/vmlinuz"));
        assert_eq!(c.cmdline.as_deref(), Some("root=/dev/xvda1 console=hvc0"));
        assert_eq!(c.ramdisk.as_deref(), Some("/boot/initrd.cpio"));
        assert_eq!(c.on_crash, Action::Preserve);
        assert_eq!(c.on_reboot, Action::Restart);
        assert_eq!(c.disks.len(), 2);
        assert_eq!(c.disks[0].devid, 51712);
        assert_eq!(c.disks[0].target.as_deref(), Some("/srv/disk.img"));
        assert_eq!(c.disks[1].access, Access::ReadOnly);
        assert_eq!(c.disks[1].format, DiskFormat::Raw);
        assert_eq!(c.vifs[0].bridge.as_deref(), Some("xenbr0"));
        assert_eq!(c.ignored, vec![("builder".to_owned(), 18)]);
    }

    #[test]
    fn test_xl_config_defaults_apply() {
        let c = XlConfig::parse("xl.cfg", "name='a'").expect("valid");
        assert_eq!(c.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(c.maxmem_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.guest_type, GuestType::Pv);
        assert_eq!(c.on_poweroff, Action::Destroy);
        assert_eq!(c.on_reboot, Action::Restart);
        assert_eq!(c.on_crash, Action::Destroy);
        assert!(c.disks.is_empty() && c.vifs.is_empty() && c.cmdline.is_none());
    }

    #[test]
    fn test_xl_config_later_assignment_wins_and_append_concatenates() {
        let c = XlConfig::parse(
            "xl.cfg",
            "name='a'\nmemory=64\nmemory=96\nextra='x'\nextra+=' y'\ndisk=['/a,,xvda']\ndisk+=['/b,,xvdb']",
        )
        .expect("valid");
        assert_eq!(c.memory_mib, 96);
        assert_eq!(c.cmdline.as_deref(), Some("x y"));
        assert_eq!(c.disks.len(), 2);
    }

    #[test]
    fn test_xl_config_append_mismatch_fails() {
        assert_eq!(
            kind_of("name='a'\nextra='x'\nextra+=['y']"),
            (3, ConfigErrorKind::AppendMismatch("extra".into()))
        );
    }

    #[test]
    fn test_xl_config_cmdline_overrides_extra_with_warning() {
        let c = XlConfig::parse("xl.cfg", "name='a'\nextra='e'\ncmdline='c'").expect("valid");
        assert_eq!(c.cmdline.as_deref(), Some("c"));
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn test_xl_config_memory_as_string_accepted() {
        let c = XlConfig::parse("xl.cfg", "name='a'\nmemory='0x40'").expect("valid");
        assert_eq!(c.memory_mib, 64);
    }

    #[test]
    fn test_xl_config_missing_name_fails() {
        assert_eq!(kind_of("memory=1\n\n").1, ConfigErrorKind::MissingName);
    }

    #[test]
    fn test_xl_config_bad_names_fail() {
        for n in ["", "a/b", "123", &"x".repeat(65), "a\u{1}b"] {
            let text = format!("name = \"{n}\"");
            let (line, k) = kind_of(&text);
            assert_eq!(line, 1);
            assert!(matches!(k, ConfigErrorKind::BadName(_)), "{n:?}: {k:?}");
        }
    }

    #[test]
    fn test_xl_config_name_list_is_wrong_type() {
        assert_eq!(
            kind_of("name = ['a']").1,
            ConfigErrorKind::WrongType {
                key: "name".into(),
                expected: "a string or a number"
            }
        );
    }

    #[test]
    fn test_xl_config_bad_numbers_fail() {
        assert_eq!(
            kind_of("name='a'\nmemory = 512M\n"),
            (
                2,
                ConfigErrorKind::BadNumber {
                    key: "memory".into(),
                    value: "512M".into()
                }
            )
        );
        assert!(matches!(
            kind_of("name='a'\nvcpus = 0").1,
            ConfigErrorKind::BadNumber { .. }
        ));
        assert!(matches!(
            kind_of("name='a'\nmemory = 0").1,
            ConfigErrorKind::BadNumber { .. }
        ));
        assert!(matches!(
            kind_of("name='a'\nmaxmem = 'lots'").1,
            ConfigErrorKind::BadNumber { .. }
        ));
    }

    #[test]
    fn test_xl_config_maxmem_below_memory_fails() {
        assert_eq!(
            kind_of("name='a'\nmemory=256\nmaxmem=128").1,
            ConfigErrorKind::MaxmemBelowMemory {
                memory: 256,
                maxmem: 128
            }
        );
    }

    #[test]
    fn test_xl_config_types_parse_and_unknown_fails() {
        for (t, g) in [
            ("pv", GuestType::Pv),
            ("pvh", GuestType::Pvh),
            ("hvm", GuestType::Hvm),
        ] {
            let c = XlConfig::parse("xl.cfg", &format!("name='a'\ntype='{t}'")).expect("ok");
            assert_eq!(c.guest_type, g);
            assert_eq!(g.as_str(), t);
        }
        assert_eq!(
            kind_of("name='a'\ntype='kvm'"),
            (2, ConfigErrorKind::UnknownType("kvm".into()))
        );
    }

    #[test]
    fn test_xl_config_actions_parse_and_unknown_fails() {
        for a in [
            "destroy",
            "restart",
            "rename-restart",
            "preserve",
            "coredump-destroy",
            "coredump-restart",
            "soft-reset",
        ] {
            assert_eq!(Action::parse(a).map(Action::as_str), Some(a));
        }
        assert_eq!(
            kind_of("name='a'\non_crash='explode'"),
            (
                2,
                ConfigErrorKind::UnknownAction {
                    key: "on_crash".into(),
                    value: "explode".into()
                }
            )
        );
    }

    #[test]
    fn test_xl_config_bad_disk_names_file_and_line() {
        let text =
            "name='a'\n\n\n\n\ndisk = [ '/a,,xvda',\n 'format=raw2, vdev=xvdb, target=/x' ]\n";
        let e = XlConfig::parse("xl.cfg", text).expect_err("bad format");
        assert_eq!(e.to_string(), "xl.cfg:7: unknown disk format \"raw2\"");
    }

    #[test]
    fn test_xl_config_duplicate_vdev_fails() {
        assert_eq!(
            kind_of("name='a'\ndisk=['/a,,xvda','/b,,d0p0']"),
            (2, ConfigErrorKind::DuplicateVdev("d0p0".into()))
        );
    }

    #[test]
    fn test_xl_config_nested_disk_list_fails() {
        assert!(matches!(
            kind_of("name='a'\ndisk=[['/a,,xvda']]").1,
            ConfigErrorKind::WrongType { .. }
        ));
    }

    #[test]
    fn test_xl_config_bad_vif_names_line() {
        let (line, k) = kind_of("name='a'\nvif=['mac=zz']");
        assert_eq!(line, 2);
        assert!(matches!(k, ConfigErrorKind::Vif(_)));
    }

    #[test]
    fn test_parse_number_forms() {
        assert_eq!(parse_number("10"), Some(10));
        assert_eq!(parse_number("0x1f"), Some(31));
        assert_eq!(parse_number("010"), Some(8));
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(parse_number("08"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }

    #[test]
    fn test_config_load_missing_file_fails() {
        let e = XlConfig::load(std::path::Path::new("/nonexistent/xl.cfg")).expect_err("no file");
        assert!(matches!(e, ConfigError::Read { .. }));
        assert_eq!(e.line(), None);
    }
}
