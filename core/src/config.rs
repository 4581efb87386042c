//! Pieces every component's configuration file needs: one error type that names the offending
//! key, YAML decoding that reports where a value went wrong, and durations written Go-style.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
}

impl ConfigError {
    /// A bad value at `location` (a key path such as `device-classes[1].name`).
    pub fn invalid(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            location: location.into(),
            message: message.into(),
        }
    }
}

/// Reads a configuration file.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses YAML text; `file` names it in the error.
pub fn parse_yaml(file: &str, text: &str) -> Result<serde_yaml::Value, ConfigError> {
    serde_yaml::from_str(text)
        .map_err(|e| ConfigError::invalid(file, format!("not valid YAML: {e}")))
}

/// Deserializes `value` into `T`. A wrong key is reported by its path inside `value`, after
/// `key_prefix` when that is not empty (`"device-classes[0]: thin-pool.name"`); a value that is
/// wrong as a whole is reported as `whole`.
pub fn deserialize_at<T: DeserializeOwned>(
    value: serde_yaml::Value,
    key_prefix: &str,
    whole: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let location = match (path.as_str(), key_prefix) {
            ("." | "", _) => whole.to_owned(),
            (_, "") => path,
            (_, _) => format!("{key_prefix}: {path}"),
        };
        ConfigError::invalid(location, e.into_inner().to_string())
    })
}

/// Parses a Go-style duration: number-unit pairs with units `ms`, `s`, `m`, `h`, as in `500ms`,
/// `2s` or `1m30s`. Returns `None` for anything else.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(number * seconds_per_unit).ok()?;
    }
    Some(total)
}

/// A duration read and written as Go writes it (`15s`, `1m0s`, `1h30m0s`, `250ms`): the type
/// of a duration flag, whose default is then a constant, shown as Go's `Duration.String()`
/// shows it. Below a millisecond the fraction is written in milliseconds, which
/// [`parse_duration`] reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

/// Why a duration flag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration such as 90s, 30m or 1h30m")]
pub struct NotADuration(pub String);

impl std::str::FromStr for GoDuration {
    type Err = NotADuration;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_duration(text)
            .map(Self)
            .ok_or_else(|| NotADuration(text.to_owned()))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        if d < Duration::from_secs(1) {
            let nanos = d.subsec_nanos();
            return write!(
                f,
                "{}{}ms",
                nanos / 1_000_000,
                fraction(nanos % 1_000_000, 6)
            );
        }
        let total = d.as_secs();
        let (hours, minutes, seconds) = (total / 3600, total % 3600 / 60, total % 60);
        let seconds = format!("{seconds}{}s", fraction(d.subsec_nanos(), 9));
        match (hours, minutes) {
            (0, 0) => f.write_str(&seconds),
            (0, m) => write!(f, "{m}m{seconds}"),
            (h, m) => write!(f, "{h}h{m}m{seconds}"),
        }
    }
}

/// `.` and the digits of `part` out of `10^digits`, trailing zeros dropped; empty for 0.
fn fraction(part: u32, digits: usize) -> String {
    if part == 0 {
        return String::new();
    }
    let text = format!("{part:0digits$}");
    format!(".{}", text.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's `time.Duration.String()`: its documented example (`1h2m0.3s`, `300ms`) and the
    /// forms TopoLVM's and controller-runtime's `--help` show for their defaults.
    #[test]
    fn durations_are_written_as_go_writes_them() {
        for (d, go) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1), "1ms"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_secs(15), "15s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(600), "10m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_millis(3_720_300), "1h2m0.3s"),
        ] {
            assert_eq!(GoDuration(d).to_string(), go);
            assert_eq!(
                go.parse::<GoDuration>(),
                Ok(GoDuration(d)),
                "{go} reads back"
            );
        }
        assert_eq!(
            "1d".parse::<GoDuration>(),
            Err(NotADuration("1d".to_owned()))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        for bad in ["", "s", "1", "1d", "-1s", "1 s", "x1s", "1..5s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        name: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        inner: Inner,
    }

    #[test]
    fn errors_name_the_key_path() {
        let value = parse_yaml("f.yaml", "inner: {name: x, nmae: y}").expect("yaml");
        let e = deserialize_at::<Outer>(value.clone(), "f.yaml", "f.yaml")
            .expect_err("unknown key")
            .to_string();
        assert!(
            e.starts_with("f.yaml: inner.nmae: unknown field `nmae`"),
            "{e}"
        );
        let e = deserialize_at::<Outer>(value, "", "f.yaml")
            .expect_err("unknown key")
            .to_string();
        assert!(e.starts_with("inner.nmae: unknown field"), "{e}");
        let e = parse_yaml("f.yaml", "a: [")
            .expect_err("bad yaml")
            .to_string();
        assert!(e.starts_with("f.yaml: not valid YAML"), "{e}");
    }
}
