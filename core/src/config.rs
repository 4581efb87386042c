//! Pieces every component's configuration file needs: one error type that names the offending
//! key, YAML decoding that reports where a value went wrong, and durations written Go-style.

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

#[cfg(test)]
mod tests {
    use super::*;

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
