//! The extender's configuration file: TopoLVM's `scheduler-config.yaml` keys plus a few of ours.
//!
//! TopoLVM reads `listen`, `default-divisor`, `divisors` and `profiling-bind-address`; a file
//! written for it loads here unchanged. Every key is checked when the file is loaded, and an
//! unknown key or a bad value is an error that names the key, so a typo never turns into a
//! silently ignored setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use topolvm_core::config::{deserialize_at, parse_yaml, read_file};

pub use topolvm_core::config::{ConfigError, parse_duration};
use topolvm_runtime::http::split_listen;
pub use topolvm_runtime::tls::TlsFiles;

/// Where the extender listens when the file says nothing (TopoLVM's default).
pub const DEFAULT_LISTEN: &str = ":8000";
/// Divisor of device classes without their own entry in `divisors` (TopoLVM's default).
pub const DEFAULT_DIVISOR: f64 = 1.0;
/// Largest request body accepted (TopoLVM's limit).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 10 << 20;
/// How long capacity promised to a pod the extender approved is held while the pod is not yet
/// visible as placed in the cluster.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(30);

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listen address in Go's form: `host:port`, `[v6]:port`, or `:port` for every interface.
    pub listen: String,
    pub scoring: Scoring,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    pub max_request_bytes: usize,
    pub reservation_ttl: Duration,
}

/// The divisors of the capacity score.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    pub default_divisor: f64,
    /// Per device class, keyed as the class appears in capacity annotation keys (the default
    /// class as `00default`).
    pub divisors: BTreeMap<String, f64>,
}

impl Default for Scoring {
    fn default() -> Self {
        Self {
            default_divisor: DEFAULT_DIVISOR,
            divisors: BTreeMap::new(),
        }
    }
}

impl Scoring {
    /// The divisor of a device class.
    pub fn divisor(&self, device_class: &str) -> f64 {
        self.divisors
            .get(device_class)
            .copied()
            .unwrap_or(self.default_divisor)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            scoring: Scoring::default(),
            tls: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            reservation_ttl: DEFAULT_RESERVATION_TTL,
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_file(path)?)
    }

    /// Parses and validates configuration text. An empty document gives the defaults.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        const FILE: &str = "scheduler-config.yaml";
        let value = parse_yaml(FILE, text)?;
        if value.is_null() {
            return Ok(Self::default());
        }
        // Locations are bare key paths (`divisors.ssd`), like the ones validate() reports.
        let raw: RawConfig = deserialize_at(value, "", FILE)?;
        raw.validate()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    default_divisor: Option<f64>,
    #[serde(default)]
    divisors: Option<BTreeMap<String, f64>>,
    /// TopoLVM's pprof endpoint; accepted so TopoLVM files load, but there is no pprof here.
    #[serde(default)]
    profiling_bind_address: Option<String>,
    #[serde(default)]
    tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    tls_key_file: Option<PathBuf>,
    #[serde(default)]
    max_request_bytes: Option<u64>,
    #[serde(default)]
    reservation_ttl: Option<String>,
}

fn positive_divisor(location: &str, value: f64) -> Result<f64, ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            location,
            format!("must be a number greater than 0, got {value}"),
        ))
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let listen = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        split_listen(&listen).map_err(|message| ConfigError::invalid("listen", message))?;

        let default_divisor = positive_divisor(
            "default-divisor",
            self.default_divisor.unwrap_or(DEFAULT_DIVISOR),
        )?;
        let divisors = self.divisors.unwrap_or_default();
        for (class, &divisor) in &divisors {
            if class.is_empty() {
                return Err(ConfigError::invalid(
                    "divisors",
                    "device class names must not be empty (the default class is 00default)",
                ));
            }
            positive_divisor(&format!("divisors.{class}"), divisor)?;
        }

        if let Some(address) = self.profiling_bind_address.filter(|a| !a.is_empty()) {
            tracing::warn!(
                %address,
                "profiling-bind-address is a TopoLVM (Go pprof) setting and is ignored"
            );
        }

        let tls = match (self.tls_cert_file, self.tls_key_file) {
            (None, None) => None,
            (Some(cert_file), Some(key_file)) => Some(TlsFiles {
                cert_file,
                key_file,
            }),
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls-key-file",
                    "is required when tls-cert-file is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls-cert-file",
                    "is required when tls-key-file is set",
                ));
            }
        };

        let max_request_bytes = match self.max_request_bytes {
            None => DEFAULT_MAX_REQUEST_BYTES,
            Some(0) => {
                return Err(ConfigError::invalid(
                    "max-request-bytes",
                    "must be greater than 0",
                ));
            }
            Some(n) => usize::try_from(n).map_err(|_| {
                ConfigError::invalid("max-request-bytes", format!("{n} is too large"))
            })?,
        };

        let reservation_ttl = match self.reservation_ttl.as_deref() {
            None => DEFAULT_RESERVATION_TTL,
            Some(text) => match parse_duration(text) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    return Err(ConfigError::invalid(
                        "reservation-ttl",
                        format!("{text:?} is not a positive duration like 30s, 1m or 1m30s"),
                    ));
                }
            },
        };

        Ok(Config {
            listen,
            scoring: Scoring {
                default_divisor,
                divisors,
            },
            tls,
            max_request_bytes,
            reservation_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> (String, String) {
        match Config::parse(text) {
            Err(ConfigError::Invalid { location, message }) => (location, message),
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_topolvm_defaults() {
        let config = Config::parse("").expect("empty");
        assert_eq!(config, Config::default());
        assert_eq!(config.listen, ":8000");
        assert_eq!(config.scoring.default_divisor, 1.0);
        assert!(config.scoring.divisors.is_empty());
        assert_eq!(config.max_request_bytes, 10 << 20);
        assert_eq!(config.reservation_ttl, Duration::from_secs(30));
        assert!(config.tls.is_none());
    }

    #[test]
    fn topolvm_file_loads_unchanged() {
        let config = Config::parse(
            "listen: \"localhost:9251\"\ndefault-divisor: 10\ndivisors:\n  ssd: 5\n  hdd: 0.5\nprofiling-bind-address: \"\"\n",
        )
        .expect("valid");
        assert_eq!(config.listen, "localhost:9251");
        assert_eq!(config.scoring.default_divisor, 10.0);
        assert_eq!(config.scoring.divisor("ssd"), 5.0);
        assert_eq!(config.scoring.divisor("hdd"), 0.5);
        assert_eq!(config.scoring.divisor("00default"), 10.0);
    }

    #[test]
    fn our_keys() {
        let config = Config::parse(
            "tls-cert-file: /tls/tls.crt\ntls-key-file: /tls/tls.key\nmax-request-bytes: 1048576\nreservation-ttl: 1m30s\n",
        )
        .expect("valid");
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert_file: "/tls/tls.crt".into(),
                key_file: "/tls/tls.key".into()
            })
        );
        assert_eq!(config.max_request_bytes, 1 << 20);
        assert_eq!(config.reservation_ttl, Duration::from_secs(90));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("default-divisor: 0", "default-divisor", "greater than 0"),
            ("default-divisor: -1", "default-divisor", "greater than 0"),
            ("default-divisor: .nan", "default-divisor", "greater than 0"),
            ("default-divisor: abc", "default-divisor", "invalid type"),
            ("divisors:\n  ssd: 0", "divisors.ssd", "greater than 0"),
            ("divisors:\n  ssd: -2.5", "divisors.ssd", "greater than 0"),
            ("divisors:\n  ssd: fast", "divisors.ssd", "invalid type"),
            ("divisors: [1, 2]", "divisors", "invalid type"),
            ("listen: \"8000\"", "listen", "not an address"),
            ("listen: 8000", "listen", "invalid type"),
            ("listen: \"host:http\"", "listen", "port"),
            ("tls-cert-file: /a", "tls-key-file", "required"),
            ("tls-key-file: /a", "tls-cert-file", "required"),
            (
                "max-request-bytes: 0",
                "max-request-bytes",
                "greater than 0",
            ),
            (
                "reservation-ttl: 0s",
                "reservation-ttl",
                "positive duration",
            ),
            (
                "reservation-ttl: soon",
                "reservation-ttl",
                "positive duration",
            ),
        ];
        for (text, location, message) in cases {
            let (got_location, got_message) = invalid(text);
            assert_eq!(&got_location, location, "{text}");
            assert!(
                got_message.contains(message),
                "{text}: {got_message:?} lacks {message:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let (location, message) = invalid("lisen: \":8000\"");
        assert_eq!(location, "lisen");
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn not_yaml_is_refused() {
        let (location, message) = invalid("listen: [unclosed");
        assert_eq!(location, "scheduler-config.yaml");
        assert!(message.contains("not valid YAML"), "{message}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5d"), None);
    }
}
