//! Network interface specifications (`xl-network-configuration(5)`):
//! `'mac=00:16:3e:00:00:01, bridge=xenbr0, ip=10.0.0.2'`.

use std::net::IpAddr;

/// Errors of a vif specification (the caller adds file and line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VifSpecError {
    /// A parameter without `=`.
    #[error("vif parameter \"{0}\" is not key=value")]
    NotKeyValue(String),
    /// A key this toolstack does not know.
    #[error("unknown vif parameter \"{0}\"")]
    UnknownParameter(String),
    /// A key given twice.
    #[error("vif parameter {0} respecified")]
    Respecified(String),
    /// Not six colon-separated hex octets.
    #[error("invalid MAC address \"{0}\"")]
    BadMac(String),
    /// Not an IPv4/IPv6 address (optionally with a prefix length).
    #[error("invalid IP address \"{0}\"")]
    BadIp(String),
    /// `mtu` is not a number in 68..=65535.
    #[error("invalid mtu \"{0}\"")]
    BadMtu(String),
    /// `type` is not `vif` or `ioemu`.
    #[error("unknown vif type \"{0}\"")]
    UnknownType(String),
    /// Longer than [`MAX_VIF_SPEC`].
    #[error("vif specification longer than {MAX_VIF_SPEC} bytes")]
    TooLong,
}

/// Longest vif specification accepted, in bytes.
pub const MAX_VIF_SPEC: usize = 4096;

/// A parsed vif specification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VifSpec {
    /// `mac` (random `00:16:3e:xx:xx:xx` when absent, chosen at create).
    pub mac: Option<[u8; 6]>,
    /// `bridge`.
    pub bridge: Option<String>,
    /// `ip`: addresses (with an optional `/prefix`), as written.
    pub ip: Vec<String>,
    /// `type` (`vif` or `ioemu`).
    pub vif_type: Option<String>,
    /// `vifname`.
    pub vifname: Option<String>,
    /// `script`.
    pub script: Option<String>,
    /// `backend` domain.
    pub backend: Option<String>,
    /// `model` (emulated NIC model, HVM only).
    pub model: Option<String>,
    /// `rate`, as written (`10Mb/s`...).
    pub rate: Option<String>,
    /// `mtu`.
    pub mtu: Option<u32>,
    /// `gatewaydev`.
    pub gatewaydev: Option<String>,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn check_ip(s: &str) -> bool {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= max)
    })
}

impl VifSpec {
    /// Parses one vif specification.
    ///
    /// # Errors
    /// A [`VifSpecError`] for the first problem.
    pub fn parse(spec: &str) -> Result<Self, VifSpecError> {
        if spec.len() > MAX_VIF_SPEC {
            return Err(VifSpecError::TooLong);
        }
        let mut v = VifSpec::default();
        let mut seen: Vec<String> = Vec::new();
        for tok in spec.split(',') {
            let tok = tok.trim();
            if tok.is_empty() {
                continue;
            }
            let (key, value) = tok
                .split_once('=')
                .ok_or_else(|| VifSpecError::NotKeyValue(tok.to_owned()))?;
            let (key, value) = (key.trim(), value.trim());
            if seen.iter().any(|s| s == key) {
                return Err(VifSpecError::Respecified(key.to_owned()));
            }
            seen.push(key.to_owned());
            let s = || Some(value.to_owned());
            match key {
                "mac" => {
                    v.mac = Some(
                        parse_mac(value).ok_or_else(|| VifSpecError::BadMac(value.to_owned()))?,
                    )
                }
                "bridge" => v.bridge = s(),
                "ip" => {
                    for a in value.split_whitespace() {
                        if !check_ip(a) {
                            return Err(VifSpecError::BadIp(a.to_owned()));
                        }
                        v.ip.push(a.to_owned());
                    }
                    if v.ip.is_empty() {
                        return Err(VifSpecError::BadIp(value.to_owned()));
                    }
                }
                "type" => match value {
                    "vif" | "ioemu" => v.vif_type = s(),
                    _ => return Err(VifSpecError::UnknownType(value.to_owned())),
                },
                "vifname" => v.vifname = s(),
                "script" => v.script = s(),
                "backend" => v.backend = s(),
                "model" => v.model = s(),
                "rate" => v.rate = s(),
                "gatewaydev" => v.gatewaydev = s(),
                "mtu" => {
                    v.mtu = Some(
                        crate::config::parse_number(value)
                            .filter(|m| (68..=65535).contains(m))
                            .and_then(|m| u32::try_from(m).ok())
                            .ok_or_else(|| VifSpecError::BadMtu(value.to_owned()))?,
                    )
                }
                _ => return Err(VifSpecError::UnknownParameter(key.to_owned())),
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vif_spec_full_parses() {
        let v = VifSpec::parse(
            "mac=00:16:3e:01:02:0A, bridge=xenbr0, ip=10.0.0.2 fd00::2/64, type=vif, \
             vifname=v1, script=vif-bridge, backend=0, model=e1000, rate=10Mb/s, mtu=1500, \
             gatewaydev=eth0",
        )
        .expect("valid");
        assert_eq!(v.mac, Some([0, 0x16, 0x3e, 1, 2, 0x0a]));
        assert_eq!(v.bridge.as_deref(), Some("xenbr0"));
        assert_eq!(v.ip, vec!["10.0.0.2", "fd00::2/64"]);
        assert_eq!(v.mtu, Some(1500));
        assert_eq!(v.vifname.as_deref(), Some("v1"));
        assert_eq!(v.gatewaydev.as_deref(), Some("eth0"));
    }

    #[test]
    fn test_vif_spec_empty_is_default() {
        assert_eq!(VifSpec::parse("").expect("valid"), VifSpec::default());
        assert_eq!(VifSpec::parse(" , ").expect("valid"), VifSpec::default());
    }

    #[test]
    fn test_vif_spec_errors() {
        let cases: &[(&str, VifSpecError)] = &[
            ("bridge", VifSpecError::NotKeyValue("bridge".into())),
            (
                "colour=red",
                VifSpecError::UnknownParameter("colour".into()),
            ),
            (
                "bridge=a,bridge=b",
                VifSpecError::Respecified("bridge".into()),
            ),
            (
                "mac=00:16:3e:01:02",
                VifSpecError::BadMac("00:16:3e:01:02".into()),
            ),
            (
                "mac=00:16:3e:01:02:03:04",
                VifSpecError::BadMac("00:16:3e:01:02:03:04".into()),
            ),
            (
                "mac=0:16:3e:01:02:03",
                VifSpecError::BadMac("0:16:3e:01:02:03".into()),
            ),
            (
                "mac=zz:16:3e:01:02:03",
                VifSpecError::BadMac("zz:16:3e:01:02:03".into()),
            ),
            ("ip=10.0.0.300", VifSpecError::BadIp("10.0.0.300".into())),
            ("ip=10.0.0.1/33", VifSpecError::BadIp("10.0.0.1/33".into())),
            ("ip=10.0.0.1/", VifSpecError::BadIp("10.0.0.1/".into())),
            ("ip=", VifSpecError::BadIp("".into())),
            ("mtu=67", VifSpecError::BadMtu("67".into())),
            ("mtu=big", VifSpecError::BadMtu("big".into())),
            ("type=tap", VifSpecError::UnknownType("tap".into())),
        ];
        for (spec, want) in cases {
            assert_eq!(VifSpec::parse(spec).as_ref(), Err(want), "{spec}");
        }
        assert_eq!(
            VifSpec::parse(&"a".repeat(MAX_VIF_SPEC + 1)),
            Err(VifSpecError::TooLong)
        );
    }
}
