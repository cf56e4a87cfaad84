//! Disk specifications (`xl-disk-configuration(5)`, libxlu's
//! `libxlu_disk_l.l`) and virtual-device numbers (`xen-vbd-interface(7)`,
//! libxl's `libxl__device_disk_dev_number`).
//!
//! ```text
//! [<key>=<value>|<flag>,]*, [<target>, [<format>, [<vdev>, [<access>]]]],
//!   [<key>=<value>|<flag>,]* [target=<target>]
//! ```
//!
//! `target=` eats the rest of the specification, commas included.

use std::fmt;

/// Errors of a disk specification (the caller adds file and line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskSpecError {
    /// `format` is not one libxl knows.
    #[error("unknown disk format \"{0}\"")]
    UnknownFormat(String),
    /// `access` is not `r`, `ro`, `w` or `rw`.
    #[error("unknown disk access \"{0}\"")]
    UnknownAccess(String),
    /// `devtype` is not `disk` or `cdrom`.
    #[error("unknown disk devtype \"{0}\"")]
    UnknownDevtype(String),
    /// `backendtype` is not `phy`, `tap`, `qdisk` or `standalone`.
    #[error("unknown disk backendtype \"{0}\"")]
    UnknownBackendtype(String),
    /// `specification` is not `xen` or `virtio`.
    #[error("unknown disk specification \"{0}\"")]
    UnknownSpecification(String),
    /// `key=` with a key libxlu does not know.
    #[error("unknown disk parameter \"{0}\"")]
    UnknownParameter(String),
    /// A `prefix:` of the deprecated syntax that is not known.
    #[error("unknown deprecated disk prefix \"{0}\"")]
    UnknownPrefix(String),
    /// A parameter given twice with different values.
    #[error("disk parameter {0} respecified")]
    Respecified(&'static str),
    /// More than four positional parameters.
    #[error("too many positional disk parameters at \"{0}\"")]
    TooManyPositional(String),
    /// Something that is neither a parameter, a flag nor a positional one.
    #[error("bad disk syntax at \"{0}\"")]
    BadSyntax(String),
    /// No `vdev`.
    #[error("disk specification has no vdev")]
    MissingVdev,
    /// The vdev is not a name or number of `xen-vbd-interface(7)`.
    #[error("invalid virtual disk identifier \"{0}\"")]
    BadVdev(String),
    /// A disk (not a cdrom) without a target.
    #[error("disk specification has no target")]
    MissingTarget,
    /// Longer than [`MAX_DISK_SPEC`].
    #[error("disk specification longer than {MAX_DISK_SPEC} bytes")]
    TooLong,
}

/// Longest disk specification accepted, in bytes.
pub const MAX_DISK_SPEC: usize = 4096;

/// Image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// `raw`.
    Raw,
    /// `qcow`.
    Qcow,
    /// `qcow2`.
    Qcow2,
    /// `vhd`.
    Vhd,
    /// `qed`.
    Qed,
    /// `empty` (an empty cdrom drive).
    Empty,
}

impl DiskFormat {
    /// Parses a format name (`""` is `raw`, as in libxlu).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "raw" => Self::Raw,
            "qcow" => Self::Qcow,
            "qcow2" => Self::Qcow2,
            "vhd" => Self::Vhd,
            "qed" => Self::Qed,
            "empty" => Self::Empty,
            _ => return None,
        })
    }

    /// The name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow => "qcow",
            Self::Qcow2 => "qcow2",
            Self::Vhd => "vhd",
            Self::Qed => "qed",
            Self::Empty => "empty",
        }
    }
}

/// Read-only or read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `r`/`ro`: xenstore `mode = "r"`.
    ReadOnly,
    /// `w`/`rw`: xenstore `mode = "w"`.
    ReadWrite,
}

impl Access {
    /// The backend's `mode` node value.
    #[must_use]
    pub fn mode(self) -> &'static str {
        match self {
            Self::ReadOnly => "r",
            Self::ReadWrite => "w",
        }
    }
}

/// The device as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevType {
    /// A disk.
    Disk,
    /// A cdrom.
    Cdrom,
}

impl DevType {
    /// The frontend's `device-type` node value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disk => "disk",
            Self::Cdrom => "cdrom",
        }
    }
}

/// `backendtype=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendType {
    /// `phy`.
    Phy,
    /// `tap`.
    Tap,
    /// `qdisk`.
    Qdisk,
    /// `standalone`.
    Standalone,
}

/// `specification=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Specification {
    /// `xen` (the default).
    Xen,
    /// `virtio`.
    Virtio,
}

/// A parsed disk specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image or device (`None` for an empty cdrom).
    pub target: Option<String>,
    /// Image format (default raw).
    pub format: DiskFormat,
    /// The virtual device as written (`xvda`).
    pub vdev: String,
    /// Its xenstore number (51712 for `xvda`).
    pub devid: u32,
    /// Access (default rw, ro for a cdrom).
    pub access: Access,
    /// Disk or cdrom.
    pub devtype: DevType,
    /// `backend=` domain name.
    pub backend: Option<String>,
    /// `backendtype=`.
    pub backendtype: Option<BackendType>,
    /// `script=` (or a deprecated `nbd:`-style prefix).
    pub script: Option<String>,
    /// `specification=`.
    pub specification: Specification,
    /// `direct-io-safe`.
    pub direct_io_safe: bool,
    /// `discard` / `no-discard` (default: discard).
    pub discard: Option<bool>,
    /// `trusted` / `untrusted` (default: trusted).
    pub trusted: Option<bool>,
}

impl fmt::Display for DiskSpec {
    /// The canonical keyed form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "format={}, vdev={}, access={}, devtype={}",
            self.format.as_str(),
            self.vdev,
            match self.access {
                Access::ReadOnly => "ro",
                Access::ReadWrite => "rw",
            },
            self.devtype.as_str()
        )?;
        if let Some(t) = &self.target {
            write!(f, ", target={t}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Partial {
    target: Option<String>,
    format: Option<DiskFormat>,
    vdev: Option<String>,
    access: Option<Access>,
    cdrom: Option<bool>,
    backend: Option<String>,
    backendtype: Option<BackendType>,
    script: Option<String>,
    specification: Option<Specification>,
    direct_io_safe: bool,
    discard: Option<bool>,
    trusted: Option<bool>,
    had_depr_prefix: bool,
    access_set: bool,
}

/// Sets a string once (libxlu's `savestring`: overwriting an empty value is
/// allowed).
fn save(slot: &mut Option<String>, v: &str, what: &'static str) -> Result<(), DiskSpecError> {
    match slot {
        Some(old) if !old.is_empty() => Err(DiskSpecError::Respecified(what)),
        _ => {
            *slot = Some(v.to_owned());
            Ok(())
        }
    }
}

/// Sets an enum once (libxlu's `DSET`: the same value again is fine).
fn set_once<T: PartialEq>(
    slot: &mut Option<T>,
    v: T,
    what: &'static str,
) -> Result<(), DiskSpecError> {
    match slot {
        Some(old) if *old != v => Err(DiskSpecError::Respecified(what)),
        _ => {
            *slot = Some(v);
            Ok(())
        }
    }
}

/// `None` for an empty value: the default applies (rw, ro for a cdrom).
fn parse_access(s: &str) -> Result<Option<Access>, DiskSpecError> {
    match s {
        "" => Ok(None),
        "r" | "ro" => Ok(Some(Access::ReadOnly)),
        "w" | "rw" => Ok(Some(Access::ReadWrite)),
        _ => Err(DiskSpecError::UnknownAccess(s.to_owned())),
    }
}

fn is_param_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

impl Partial {
    fn format(&mut self, s: &str) -> Result<(), DiskSpecError> {
        let f = DiskFormat::parse(s).ok_or_else(|| DiskSpecError::UnknownFormat(s.to_owned()))?;
        set_once(&mut self.format, f, "format")
    }

    /// `<vdev>:<devtype>` (deprecated): true if `s` had the colon.
    fn vdev_and_devtype(&mut self, s: &str) -> Result<bool, DiskSpecError> {
        let Some((vdev, ty)) = s.rsplit_once(':') else {
            return Ok(false);
        };
        save(&mut self.vdev, vdev, "vdev")?;
        self.cdrom = Some(match ty {
            "cdrom" => true,
            "disk" => false,
            _ => return Err(DiskSpecError::UnknownDevtype(ty.to_owned())),
        });
        Ok(true)
    }

    fn keyed(&mut self, key: &str, v: &str) -> Result<(), DiskSpecError> {
        match key {
            "format" => self.format(v),
            "vdev" => save(&mut self.vdev, v, "vdev"),
            "access" => match parse_access(v)? {
                Some(a) => set_once(&mut self.access, a, "access"),
                None => Ok(()),
            },
            "devtype" => match v {
                "cdrom" => {
                    self.cdrom = Some(true);
                    Ok(())
                }
                "disk" => {
                    self.cdrom = Some(false);
                    Ok(())
                }
                _ => Err(DiskSpecError::UnknownDevtype(v.to_owned())),
            },
            "backend" => save(&mut self.backend, v, "backend"),
            "backendtype" => {
                let t = match v {
                    "phy" => BackendType::Phy,
                    "tap" => BackendType::Tap,
                    "qdisk" => BackendType::Qdisk,
                    "standalone" => BackendType::Standalone,
                    _ => return Err(DiskSpecError::UnknownBackendtype(v.to_owned())),
                };
                set_once(&mut self.backendtype, t, "backendtype")
            }
            "specification" => {
                let s = match v {
                    "xen" => Specification::Xen,
                    "virtio" => Specification::Virtio,
                    _ => return Err(DiskSpecError::UnknownSpecification(v.to_owned())),
                };
                set_once(&mut self.specification, s, "specification")
            }
            "script" => save(&mut self.script, v, "script"),
            _ => Err(DiskSpecError::UnknownParameter(format!("{key}={v}"))),
        }
    }

    fn flag(&mut self, tok: &str) -> bool {
        match tok {
            "cdrom" => self.cdrom = Some(true),
            "direct-io-safe" => self.direct_io_safe = true,
            "discard" => self.discard = Some(true),
            "no-discard" => self.discard = Some(false),
            "trusted" => self.trusted = Some(true),
            "untrusted" => self.trusted = Some(false),
            _ => return false,
        }
        true
    }

    /// Strips deprecated `prefix:`es from the start of `tok`; returns the
    /// rest.
    fn prefixes<'t>(&mut self, mut tok: &'t str) -> Result<&'t str, DiskSpecError> {
        // Each pass removes at least one byte, so this ends.
        loop {
            let Some(colon) = tok.find(':') else {
                return Ok(tok);
            };
            let (word, rest) = (&tok[..colon], &tok[colon + 1..]);
            let word_ok = word.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
                && word
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            if !word_ok {
                return Ok(tok);
            }
            match word {
                "raw" | "qcow" | "qcow2" | "vhd" => {
                    self.had_depr_prefix = true;
                    self.format(word)?;
                }
                "iscsi" | "nbd" | "enbd" | "drbd" => {
                    self.had_depr_prefix = true;
                    save(&mut self.script, &format!("block-{word}"), "script")?;
                }
                "tapdisk" | "tap" | "tap2" | "aio" | "ioemu" | "file" | "phy" => {
                    self.had_depr_prefix = true;
                }
                _ => {
                    // libxlu's rule: an unknown word is a prefix only when
                    // followed by a non-alphanumeric or by nothing (so
                    // `hdc:cdrom` is a vdev with a devtype).
                    let next_alnum = rest
                        .bytes()
                        .next()
                        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
                    if next_alnum {
                        return Ok(tok);
                    }
                    return Err(DiskSpecError::UnknownPrefix(format!("{word}:")));
                }
            }
            tok = rest;
        }
    }

    fn positional(&mut self, tok: &str) -> Result<(), DiskSpecError> {
        if self.target.is_none() {
            self.target = Some(tok.to_owned());
        } else if !self.had_depr_prefix && self.format.is_none() {
            if self.target.as_deref() == Some("") && self.vdev_and_devtype(tok)? {
                self.format = Some(DiskFormat::Empty);
            } else {
                self.format(tok)?;
            }
        } else if self.vdev.is_none() {
            if !self.vdev_and_devtype(tok)? {
                self.vdev = Some(tok.to_owned());
            }
        } else if !self.access_set {
            self.access_set = true;
            if let Some(a) = parse_access(tok)? {
                set_once(&mut self.access, a, "access")?;
            }
        } else {
            return Err(DiskSpecError::TooManyPositional(tok.to_owned()));
        }
        Ok(())
    }
}

impl DiskSpec {
    /// Parses one `DISKSPEC`.
    ///
    /// # Errors
    /// A [`DiskSpecError`] for the first problem.
    pub fn parse(spec: &str) -> Result<Self, DiskSpecError> {
        if spec.len() > MAX_DISK_SPEC {
            return Err(DiskSpecError::TooLong);
        }
        let mut p = Partial::default();
        let mut rest = spec;
        // Each pass consumes at least one byte or ends.
        loop {
            rest = rest.trim_start_matches([' ', '\t', '\n']);
            if rest.is_empty() {
                break;
            }
            if let Some(t) = rest.strip_prefix("target=") {
                let t = t.strip_suffix(',').unwrap_or(t);
                save(&mut p.target, t, "target")?;
                break;
            }
            let (tok, next) = match rest.find(',') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, ""),
            };
            rest = next;
            if let Some((key, value)) = tok.split_once('=') {
                if !is_param_name(key) {
                    return Err(DiskSpecError::BadSyntax(tok.to_owned()));
                }
                p.keyed(key, value)?;
                continue;
            }
            if p.flag(tok) {
                continue;
            }
            let tok = p.prefixes(tok)?;
            p.positional(tok)?;
        }
        let vdev = p
            .vdev
            .filter(|v| !v.is_empty())
            .ok_or(DiskSpecError::MissingVdev)?;
        let devid = vdev_to_devid(&vdev).ok_or_else(|| DiskSpecError::BadVdev(vdev.clone()))?;
        let devtype = if p.cdrom == Some(true) {
            DevType::Cdrom
        } else {
            DevType::Disk
        };
        let target = p.target.filter(|t| !t.is_empty());
        let format = p.format.unwrap_or(DiskFormat::Raw);
        if target.is_none() && devtype == DevType::Disk {
            return Err(DiskSpecError::MissingTarget);
        }
        let access = p.access.unwrap_or(match devtype {
            DevType::Cdrom => Access::ReadOnly,
            DevType::Disk => Access::ReadWrite,
        });
        Ok(Self {
            target,
            format,
            vdev,
            devid,
            access,
            devtype,
            backend: p.backend.filter(|b| !b.is_empty()),
            backendtype: p.backendtype,
            script: p.script.filter(|s| !s.is_empty()),
            specification: p.specification.unwrap_or(Specification::Xen),
            direct_io_safe: p.direct_io_safe,
            discard: p.discard,
            trusted: p.trusted,
        })
    }
}

/// Letters `a..z` in bijective base 26 (`a`=0, `z`=25, `aa`=26) followed
/// by an optional decimal partition: `(disk, partition)` for `prefix`
/// names (libxl's `device_virtdisk_matches`).
fn virtdisk(name: &str, prefix: &str, max_disk: u32, max_part: u32) -> Option<(u32, u32)> {
    let rest = name.strip_prefix(prefix)?;
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    if letters == 0 {
        return None;
    }
    let mut disk: u32 = 0;
    for b in rest[..letters].bytes() {
        disk = disk.checked_mul(26)?.checked_add(u32::from(b - b'a') + 1)?;
        if disk > max_disk.checked_add(1)? {
            return None;
        }
    }
    let disk = disk - 1;
    let digits = &rest[letters..];
    let part = if digits.is_empty() {
        0
    } else {
        let leading_zero = digits.len() > 1 && digits.starts_with('0');
        if !digits.bytes().all(|b| b.is_ascii_digit()) || leading_zero {
            return None;
        }
        digits.parse::<u32>().ok()?
    };
    (disk <= max_disk && part <= max_part).then_some((disk, part))
}

fn xvd_number(disk: u32, part: u32) -> u32 {
    if disk <= 15 && part <= 15 {
        (202 << 8) | (disk << 4) | part
    } else {
        (1 << 28) | (disk << 8) | part
    }
}

/// The xenstore device number of a virtual device name, as libxl computes
/// it: `xvda` = 51712, `xvdb1` = 51729, `xvdq` = 268439552, `d536p37`,
/// `sdb3`, `hdc2`, or a plain number (decimal, `0x` hex or `0` octal).
/// `None` if the name is not valid.
#[must_use]
pub fn vdev_to_devid(vdev: &str) -> Option<u32> {
    const MAX_XVD_DISK: u32 = (1 << 20) - 1;
    if let Some(rest) = vdev.strip_prefix('d') {
        let (disk, part) = match rest.split_once('p') {
            Some((d, p)) => (d, p),
            None => (rest, "0"),
        };
        let num = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        if let (Some(d), Some(p)) = (num(disk), num(part)) {
            return (d <= MAX_XVD_DISK && p <= 255).then(|| xvd_number(d, p));
        }
        return None;
    }
    if let Some((d, p)) = virtdisk(vdev, "xvd", MAX_XVD_DISK, 255) {
        return Some(xvd_number(d, p));
    }
    if vdev.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        let n = crate::config::parse_number(vdev)?;
        return u32::try_from(n).ok().filter(|&n| n <= i32::MAX as u32);
    }
    if let Some((d, p)) = virtdisk(vdev, "hd", 3, 63) {
        let major = if d < 2 { 3 } else { 22 };
        return Some((major << 8) | ((d & 1) << 6) | p);
    }
    if let Some((d, p)) = virtdisk(vdev, "sd", 15, 15) {
        return Some((8 << 8) | (d << 4) | p);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> DiskSpec {
        DiskSpec::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn test_vdev_to_devid_xen_documented_values() {
        assert_eq!(vdev_to_devid("xvda"), Some(51712));
        assert_eq!(vdev_to_devid("xvdb"), Some(51728));
        assert_eq!(vdev_to_devid("xvdb2"), Some(51730));
        assert_eq!(vdev_to_devid("d1p2"), Some(51730));
        assert_eq!(vdev_to_devid("d0"), Some(51712));
        assert_eq!(vdev_to_devid("d0p0"), Some(51712));
        assert_eq!(vdev_to_devid("xvdp"), Some((202 << 8) | (15 << 4)));
        assert_eq!(vdev_to_devid("xvdq"), Some((1 << 28) | (16 << 8)));
        assert_eq!(vdev_to_devid("xvdtq37"), Some((1 << 28) | (536 << 8) | 37));
        assert_eq!(vdev_to_devid("d536p37"), Some((1 << 28) | (536 << 8) | 37));
        assert_eq!(vdev_to_devid("xvdaa"), Some((1 << 28) | (26 << 8)));
        assert_eq!(vdev_to_devid("sdb3"), Some((8 << 8) | (1 << 4) | 3));
        assert_eq!(vdev_to_devid("hda"), Some(3 << 8));
        assert_eq!(vdev_to_devid("hdb1"), Some((3 << 8) | (1 << 6) | 1));
        assert_eq!(vdev_to_devid("hdc2"), Some((22 << 8) | 2));
        assert_eq!(vdev_to_devid("hdd"), Some((22 << 8) | (1 << 6)));
        assert_eq!(vdev_to_devid("51712"), Some(51712));
        assert_eq!(vdev_to_devid("0xca00"), Some(51712));
    }

    #[test]
    fn test_vdev_to_devid_invalid_names_rejected() {
        for v in [
            "",
            "xvd",
            "xvdA",
            "xvda01",
            "xvda256",
            "hde",
            "hda64",
            "sdq",
            "sda16",
            "vda",
            "d",
            "dp1",
            "d1p",
            "d1p256",
            "d1048576",
            "xvda-1",
            "4294967296",
            "0x",
            "2147483648",
        ] {
            assert_eq!(vdev_to_devid(v), None, "{v:?}");
        }
        // Overflowing letter runs are refused without arithmetic overflow.
        assert_eq!(vdev_to_devid(&format!("xvd{}", "z".repeat(40))), None);
    }

    #[test]
    fn test_disk_spec_keyed_form_parses() {
        let d = parse("format=raw, vdev=xvda, access=rw, target=/srv/disk.img");
        assert_eq!(d.target.as_deref(), Some("/srv/disk.img"));
        assert_eq!(d.format, DiskFormat::Raw);
        assert_eq!(d.vdev, "xvda");
        assert_eq!(d.devid, 51712);
        assert_eq!(d.access, Access::ReadWrite);
        assert_eq!(d.devtype, DevType::Disk);
    }

    #[test]
    fn test_disk_spec_positional_forms_equivalent() {
        let a = parse("/dev/vg/guest-volume,,hda");
        let b = parse("/dev/vg/guest-volume,raw,hda,rw");
        let c = parse("format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume");
        let d = parse("raw:/dev/vg/guest-volume,hda,w");
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(c, d);
    }

    #[test]
    fn test_disk_spec_cdrom_forms_equivalent() {
        let forms = [
            "/root/image.iso,,hdc,cdrom",
            "/root/image.iso,,hdc,,cdrom",
            "/root/image.iso,raw,hdc,devtype=cdrom",
            "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
            "raw:/root/image.iso,hdc:cdrom,ro",
        ];
        let first = parse(forms[0]);
        assert_eq!(first.devtype, DevType::Cdrom);
        assert_eq!(first.access, Access::ReadOnly);
        for f in &forms[1..] {
            assert_eq!(parse(f), first, "{f}");
        }
    }

    #[test]
    fn test_disk_spec_empty_cdrom_parses() {
        let d = parse(",hdc:cdrom,r");
        assert_eq!(d.target, None);
        assert_eq!(d.format, DiskFormat::Empty);
        assert_eq!(d.devtype, DevType::Cdrom);
    }

    #[test]
    fn test_disk_spec_target_eats_commas() {
        let d = parse("vdev=xvdb, target=/srv/a,b.img");
        assert_eq!(d.target.as_deref(), Some("/srv/a,b.img"));
    }

    #[test]
    fn test_disk_spec_flags_and_options_parse() {
        let d = parse(
            "/a,qcow2,xvdc,ro,backend=dom0, backendtype=qdisk, script=block-x, \
             specification=xen, direct-io-safe, no-discard, untrusted",
        );
        assert_eq!(d.format, DiskFormat::Qcow2);
        assert_eq!(d.access, Access::ReadOnly);
        assert_eq!(d.backend.as_deref(), Some("dom0"));
        assert_eq!(d.backendtype, Some(BackendType::Qdisk));
        assert_eq!(d.script.as_deref(), Some("block-x"));
        assert!(d.direct_io_safe);
        assert_eq!(d.discard, Some(false));
        assert_eq!(d.trusted, Some(false));
        let d = parse("/a,,xvdc,discard,trusted,specification=virtio");
        assert_eq!((d.discard, d.trusted), (Some(true), Some(true)));
        assert_eq!(d.specification, Specification::Virtio);
    }

    #[test]
    fn test_disk_spec_deprecated_prefixes_stripped() {
        let d = parse("tap:aio:/srv/x.img,xvda,w");
        assert_eq!(d.target.as_deref(), Some("/srv/x.img"));
        assert_eq!(d.vdev, "xvda");
        let d = parse("nbd:/srv/x,xvda,w");
        assert_eq!(d.script.as_deref(), Some("block-nbd"));
        let d = parse("qcow2:/srv/x.q,xvda,r");
        assert_eq!(d.format, DiskFormat::Qcow2);
        assert_eq!(d.access, Access::ReadOnly);
    }

    #[test]
    fn test_disk_spec_every_format_parses() {
        for f in ["raw", "qcow", "qcow2", "vhd", "qed"] {
            assert_eq!(parse(&format!("/a,{f},xvda")).format.as_str(), f);
        }
    }

    #[test]
    fn test_disk_spec_errors() {
        let cases: &[(&str, DiskSpecError)] = &[
            (
                "format=raw2, vdev=xvda, target=/a",
                DiskSpecError::UnknownFormat("raw2".into()),
            ),
            ("/a,raw2,xvda", DiskSpecError::UnknownFormat("raw2".into())),
            ("/a,,xvda,rx", DiskSpecError::UnknownAccess("rx".into())),
            (
                "vdev=xvda, access=x, target=/a",
                DiskSpecError::UnknownAccess("x".into()),
            ),
            (
                "/a,,xvda,devtype=floppy",
                DiskSpecError::UnknownDevtype("floppy".into()),
            ),
            (
                "/a,,xvda:floppy",
                DiskSpecError::UnknownDevtype("floppy".into()),
            ),
            (
                "/a,,xvda,backendtype=lvm",
                DiskSpecError::UnknownBackendtype("lvm".into()),
            ),
            (
                "/a,,xvda,specification=scsi",
                DiskSpecError::UnknownSpecification("scsi".into()),
            ),
            (
                "/a,,xvda,colour=blue",
                DiskSpecError::UnknownParameter("colour=blue".into()),
            ),
            ("foo:/a,xvda", DiskSpecError::UnknownPrefix("foo:".into())),
            (
                "vdev=xvda, vdev=xvdb, target=/a",
                DiskSpecError::Respecified("vdev"),
            ),
            (
                "format=raw, format=qcow2, vdev=xvda, target=/a",
                DiskSpecError::Respecified("format"),
            ),
            (
                "/a,,xvda,rw,extra",
                DiskSpecError::TooManyPositional("extra".into()),
            ),
            ("/a,,xvda,A=b", DiskSpecError::BadSyntax("A=b".into())),
            ("/a,raw", DiskSpecError::MissingVdev),
            ("/a,raw,", DiskSpecError::MissingVdev),
            ("/a,raw,vda", DiskSpecError::BadVdev("vda".into())),
            (",,xvda", DiskSpecError::MissingTarget),
            ("vdev=xvda", DiskSpecError::MissingTarget),
            ("/a,,xvda,target=/b", DiskSpecError::Respecified("target")),
        ];
        for (spec, want) in cases {
            assert_eq!(DiskSpec::parse(spec).as_ref(), Err(want), "{spec}");
        }
        assert_eq!(
            DiskSpec::parse(&"x".repeat(MAX_DISK_SPEC + 1)),
            Err(DiskSpecError::TooLong)
        );
    }

    #[test]
    fn test_disk_spec_display_roundtrips() {
        let d = parse("/srv/a.img,qcow2,xvdb,ro");
        assert_eq!(parse(&d.to_string()), d);
    }
}
