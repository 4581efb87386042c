//! `lvmd.yaml`: the keys TopoLVM's lvmd reads, plus a few of our own.
//!
//! Every key is checked when the file is loaded. An unknown key or a bad value is an error that
//! names the key and, inside `device-classes`, the class it belongs to, so a typo never turns into
//! a silently ignored setting.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use topolvm_core::capacity::{DEFAULT_SPARE_GB, spare_gb_to_bytes};
use topolvm_core::config::{deserialize_at, parse_duration, parse_yaml, read_file};
use topolvm_core::names;

pub use topolvm_core::config::ConfigError;

use crate::lvm::validate;
use crate::pool::{Pool, ThinPool};

/// Thin pools whose data usage is above this percentage get no new thin volumes by default.
pub const DEFAULT_DATA_PERCENT_THRESHOLD: f64 = 95.0;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub socket_name: PathBuf,
    /// The argv that runs `lvm`; the subcommand and its arguments are appended to it.
    pub lvm_command_prefix: Vec<String>,
    pub device_classes: Vec<DeviceClass>,
    pub lvcreate_option_classes: Vec<LvcreateOptionClass>,
    /// Where `/metrics` is served; `None` turns the endpoint off.
    pub metrics_listen: Option<SocketAddr>,
    /// How often the volume groups' on-disk metadata headers are checked for outside changes.
    pub change_poll_interval: Duration,
    /// How often lvmd re-reads LVM state even when no change was seen: the backstop for devices
    /// it cannot read, volume groups that appear later, and thin pools' data usage.
    pub full_refresh_interval: Duration,
    /// How long one `lvm` command may run before it is interrupted.
    pub lvm_command_timeout: Duration,
}

/// A device class: where volumes of one kind are cut from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceClass {
    pub name: String,
    pub volume_group: String,
    pub default: bool,
    pub stripe: Option<u32>,
    pub stripe_size: Option<String>,
    pub lvcreate_options: Vec<String>,
    /// What the class's volumes are cut from, with its spare (thick) or thin pool settings.
    pub pool: Pool,
}

/// A named set of `lvcreate` options a StorageClass may select.
#[derive(Debug, Clone, PartialEq)]
pub struct LvcreateOptionClass {
    pub name: String,
    pub options: Vec<String>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_file(path)?)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            deserialize_at(parse_yaml("lvmd.yaml", text)?, "lvmd.yaml", "lvmd.yaml")?;
        raw.validate()
    }

    /// The device class a request names; the default class when `name` is empty.
    pub fn device_class(&self, name: &str) -> Option<&DeviceClass> {
        if name.is_empty() {
            self.device_classes.iter().find(|dc| dc.default)
        } else {
            self.device_classes.iter().find(|dc| dc.name == name)
        }
    }

    pub fn default_device_class(&self) -> &DeviceClass {
        // validate() guarantees exactly one default class.
        self.device_classes
            .iter()
            .find(|dc| dc.default)
            .unwrap_or(&self.device_classes[0])
    }

    pub fn lvcreate_option_class(&self, name: &str) -> Option<&LvcreateOptionClass> {
        self.lvcreate_option_classes
            .iter()
            .find(|oc| oc.name == name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    socket_name: Option<PathBuf>,
    #[serde(default)]
    lvm_command_prefix: Option<Vec<String>>,
    #[serde(default)]
    device_classes: Vec<serde_yaml::Value>,
    #[serde(default)]
    lvcreate_option_classes: Vec<serde_yaml::Value>,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    change_poll_interval: Option<String>,
    #[serde(default)]
    full_refresh_interval: Option<String>,
    #[serde(default)]
    lvm_command_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDeviceClass {
    #[serde(default)]
    name: String,
    #[serde(default)]
    volume_group: String,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    spare_gb: Option<u64>,
    #[serde(default)]
    stripe: Option<u32>,
    #[serde(default)]
    stripe_size: Option<String>,
    #[serde(default)]
    lvcreate_options: Option<Vec<String>>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    thin_pool: Option<RawThinPool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawThinPool {
    #[serde(default)]
    name: String,
    #[serde(default)]
    overprovision_ratio: Option<f64>,
    #[serde(default)]
    data_percent_threshold: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawOptionClass {
    #[serde(default)]
    name: String,
    #[serde(default)]
    options: Vec<String>,
}

/// The location of the `index`th device class in messages: its index, and its name once known.
fn class_location(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) if !name.is_empty() => {
            format!("device-classes[{index}] (device class {name:?})")
        }
        _ => format!("device-classes[{index}]"),
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let socket_name = self
            .socket_name
            .unwrap_or_else(|| PathBuf::from(names::DEFAULT_LVMD_SOCKET));
        if socket_name.as_os_str().is_empty() || !socket_name.is_absolute() {
            return Err(ConfigError::invalid(
                "socket-name",
                format!("must be an absolute path, got {socket_name:?}"),
            ));
        }

        let lvm_command_prefix = self
            .lvm_command_prefix
            .unwrap_or_else(|| vec!["/sbin/lvm".to_owned()]);
        if lvm_command_prefix.is_empty() {
            return Err(ConfigError::invalid(
                "lvm-command-prefix",
                "must name at least the lvm program",
            ));
        }
        if let Some(i) = lvm_command_prefix
            .iter()
            .position(|a| a.is_empty() || a.contains('\0'))
        {
            return Err(ConfigError::invalid(
                format!("lvm-command-prefix[{i}]"),
                "must be a non-empty string without NUL bytes",
            ));
        }

        let lvcreate_option_classes = self
            .lvcreate_option_classes
            .into_iter()
            .enumerate()
            .map(|(i, value)| validate_option_class(i, value))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = HashSet::new();
        for (i, oc) in lvcreate_option_classes.iter().enumerate() {
            if !seen.insert(oc.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("lvcreate-option-classes[{i}].name"),
                    format!("{:?} is defined more than once", oc.name),
                ));
            }
        }

        if self.device_classes.is_empty() {
            return Err(ConfigError::invalid(
                "device-classes",
                "at least one device class is required",
            ));
        }
        let device_classes = self
            .device_classes
            .into_iter()
            .enumerate()
            .map(|(i, value)| validate_device_class(i, value))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = HashSet::new();
        for (i, dc) in device_classes.iter().enumerate() {
            if !seen.insert(dc.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{}: name", class_location(i, Some(&dc.name))),
                    "is defined more than once",
                ));
            }
        }
        let defaults: Vec<&str> = device_classes
            .iter()
            .filter(|dc| dc.default)
            .map(|dc| dc.name.as_str())
            .collect();
        if defaults.len() != 1 {
            return Err(ConfigError::invalid(
                "device-classes",
                format!(
                    "exactly one device class must have default: true, found {}{}",
                    defaults.len(),
                    if defaults.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", defaults.join(", "))
                    }
                ),
            ));
        }

        let metrics_listen = match self.metrics_listen.as_deref() {
            None | Some("") => None,
            Some(addr) => Some(addr.parse().map_err(|_| {
                ConfigError::invalid(
                    "metrics-listen",
                    format!("{addr:?} is not an address like 127.0.0.1:9870 or [::1]:9870"),
                )
            })?),
        };
        let change_poll_interval = duration_key(
            "change-poll-interval",
            self.change_poll_interval.as_deref(),
            Duration::from_secs(1),
            Duration::from_millis(100),
        )?;
        let full_refresh_interval = duration_key(
            "full-refresh-interval",
            self.full_refresh_interval.as_deref(),
            Duration::from_secs(60),
            Duration::from_secs(1),
        )?;
        let lvm_command_timeout = duration_key(
            "lvm-command-timeout",
            self.lvm_command_timeout.as_deref(),
            Duration::from_secs(300),
            Duration::from_secs(1),
        )?;

        Ok(Config {
            socket_name,
            lvm_command_prefix,
            device_classes,
            lvcreate_option_classes,
            metrics_listen,
            change_poll_interval,
            full_refresh_interval,
            lvm_command_timeout,
        })
    }
}

fn validate_device_class(
    index: usize,
    value: serde_yaml::Value,
) -> Result<DeviceClass, ConfigError> {
    let name_hint = value
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let at = class_location(index, name_hint.as_deref());
    let raw: RawDeviceClass = deserialize_at(value, &at, &at)?;
    let key = |k: &str| format!("{at}: {k}");

    if raw.name.is_empty() {
        return Err(ConfigError::invalid(key("name"), "must not be empty"));
    }
    if !names::is_valid_device_class_name(&raw.name) {
        return Err(ConfigError::invalid(
            key("name"),
            "must be at most 63 characters of a-z A-Z 0-9 - _ ., starting and ending with a letter or digit (it becomes part of an annotation key)",
        ));
    }
    validate::volume_group_name(&raw.volume_group)
        .map_err(|e| ConfigError::invalid(key("volume-group"), e.to_string()))?;
    if let Some(size) = &raw.stripe_size {
        validate::stripe_size(size)
            .map_err(|e| ConfigError::invalid(key("stripe-size"), e.to_string()))?;
    }
    let lvcreate_options = raw.lvcreate_options.unwrap_or_default();
    check_options(&lvcreate_options, &key("lvcreate-options"))?;

    let spare_gb = raw.spare_gb.unwrap_or(DEFAULT_SPARE_GB);
    let spare_bytes = spare_gb_to_bytes(spare_gb).ok_or_else(|| {
        ConfigError::invalid(key("spare-gb"), format!("{spare_gb} GiB is too large"))
    })?;

    let pool = match raw.kind.as_deref() {
        None | Some("") | Some("thick") => {
            if raw.thin_pool.is_some() {
                return Err(ConfigError::invalid(
                    key("thin-pool"),
                    "is only allowed with type: thin",
                ));
            }
            Pool::Thick { spare_bytes }
        }
        Some("thin") => {
            let pool = raw.thin_pool.ok_or_else(|| {
                ConfigError::invalid(key("thin-pool"), "is required with type: thin")
            })?;
            validate::logical_volume_name_as("thin pool name", &pool.name)
                .map_err(|e| ConfigError::invalid(key("thin-pool.name"), e.to_string()))?;
            let ratio = pool.overprovision_ratio.unwrap_or(1.0);
            if !ratio.is_finite() || ratio < 1.0 {
                return Err(ConfigError::invalid(
                    key("thin-pool.overprovision-ratio"),
                    format!("must be a number of at least 1.0, got {ratio}"),
                ));
            }
            let threshold = pool
                .data_percent_threshold
                .unwrap_or(DEFAULT_DATA_PERCENT_THRESHOLD);
            if !(threshold > 0.0 && threshold <= 100.0) {
                return Err(ConfigError::invalid(
                    key("thin-pool.data-percent-threshold"),
                    format!("must be above 0 and at most 100, got {threshold}"),
                ));
            }
            Pool::Thin(ThinPool {
                name: pool.name,
                overprovision_ratio: ratio,
                data_percent_threshold: threshold,
            })
        }
        Some(other) => {
            return Err(ConfigError::invalid(
                key("type"),
                format!("must be \"thick\" or \"thin\", got {other:?}"),
            ));
        }
    };

    Ok(DeviceClass {
        name: raw.name,
        volume_group: raw.volume_group,
        default: raw.default,
        stripe: raw.stripe.filter(|s| *s > 0),
        stripe_size: raw.stripe_size,
        lvcreate_options,
        pool,
    })
}

fn validate_option_class(
    index: usize,
    value: serde_yaml::Value,
) -> Result<LvcreateOptionClass, ConfigError> {
    let name_hint = value
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let at = match &name_hint {
        Some(n) if !n.is_empty() => format!("lvcreate-option-classes[{index}] ({n:?})"),
        _ => format!("lvcreate-option-classes[{index}]"),
    };
    let raw: RawOptionClass = deserialize_at(value, &at, &at)?;
    if raw.name.is_empty() {
        return Err(ConfigError::invalid(
            format!("{at}: name"),
            "must not be empty",
        ));
    }
    if raw.options.is_empty() {
        return Err(ConfigError::invalid(
            format!("{at}: options"),
            "must list at least one option",
        ));
    }
    check_options(&raw.options, &format!("{at}: options"))?;
    Ok(LvcreateOptionClass {
        name: raw.name,
        options: raw.options,
    })
}

/// Options are passed to `lvcreate` as separate arguments, never through a shell; still, an empty
/// or NUL-containing one can only be a mistake.
fn check_options(options: &[String], at: &str) -> Result<(), ConfigError> {
    if let Some(i) = options
        .iter()
        .position(|o| o.is_empty() || o.contains('\0'))
    {
        return Err(ConfigError::invalid(
            format!("{at}[{i}]"),
            "must be a non-empty string without NUL bytes",
        ));
    }
    Ok(())
}

fn duration_key(
    key: &str,
    value: Option<&str>,
    default: Duration,
    minimum: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let parsed = parse_duration(text).ok_or_else(|| {
        ConfigError::invalid(
            key,
            format!("{text:?} is not a duration like 500ms, 2s or 5m"),
        )
    })?;
    if parsed < minimum {
        return Err(ConfigError::invalid(
            key,
            format!("must be at least {minimum:?}, got {text:?}"),
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use topolvm_core::size::GIB;

    fn err(text: &str) -> String {
        Config::parse(text)
            .expect_err("config should be refused")
            .to_string()
    }

    const FULL: &str = r#"
socket-name: /run/topolvm/lvmd.sock
lvm-command-prefix: [/usr/bin/nsenter, -m, -u, -i, -n, -p, -t, "1", /sbin/lvm]
metrics-listen: 127.0.0.1:9870
change-poll-interval: 500ms
full-refresh-interval: 2m
device-classes:
  - name: ssd
    volume-group: myvg1
    default: true
    spare-gb: 10
  - name: hdd
    volume-group: myvg2
    spare-gb: 0
    stripe: 2
    stripe-size: 64k
    lvcreate-options: ["--type=raid1"]
  - name: thin
    volume-group: myvg1
    type: thin
    thin-pool:
      name: pool0
      overprovision-ratio: 5.0
      data-percent-threshold: 80
lvcreate-option-classes:
  - name: raid1
    options: ["--type=raid1"]
"#;

    #[test]
    fn full_topolvm_style_config_loads() {
        let c = Config::parse(FULL).expect("valid");
        assert_eq!(c.socket_name, PathBuf::from("/run/topolvm/lvmd.sock"));
        assert_eq!(c.lvm_command_prefix.len(), 9);
        assert_eq!(c.device_classes.len(), 3);
        assert_eq!(c.device_class("").map(|d| d.name.as_str()), Some("ssd"));
        assert_eq!(c.device_class("hdd").map(|d| d.stripe), Some(Some(2)));
        assert_eq!(
            c.device_classes[0].pool,
            Pool::Thick {
                spare_bytes: 10 * GIB
            }
        );
        assert_eq!(c.device_classes[1].pool, Pool::Thick { spare_bytes: 0 });
        assert_eq!(
            c.device_classes[2].pool,
            Pool::Thin(ThinPool {
                name: "pool0".into(),
                overprovision_ratio: 5.0,
                data_percent_threshold: 80.0
            })
        );
        assert_eq!(
            c.metrics_listen,
            Some("127.0.0.1:9870".parse().expect("addr"))
        );
        assert_eq!(c.change_poll_interval, Duration::from_millis(500));
        assert_eq!(c.full_refresh_interval, Duration::from_secs(120));
        assert!(c.lvcreate_option_class("raid1").is_some());
    }

    #[test]
    fn defaults_follow_topolvm() {
        let c = Config::parse("device-classes: [{name: a, volume-group: vg, default: true}]")
            .expect("valid");
        assert_eq!(c.socket_name, PathBuf::from("/run/topolvm/lvmd.sock"));
        assert_eq!(c.lvm_command_prefix, vec!["/sbin/lvm".to_owned()]);
        assert_eq!(
            c.device_classes[0].pool,
            Pool::Thick {
                spare_bytes: 10 * GIB
            }
        );
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.change_poll_interval, Duration::from_secs(1));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("device-classes: [{name: a, volume-group: vg, default: true}]\nsocket: /x");
        assert!(e.contains("unknown field `socket`"), "{e}");

        let e = err("device-classes: [{name: ssd, volume-group: vg, default: true, spare-db: 1}]");
        assert!(
            e.contains("device-classes[0] (device class \"ssd\")"),
            "{e}"
        );
        assert!(e.contains("spare-db"), "{e}");

        let e = err(
            "device-classes: [{name: t, volume-group: vg, default: true, type: thin, thin-pool: {name: p, ratio: 2}}]",
        );
        assert!(e.contains("device class \"t\""), "{e}");
        assert!(e.contains("thin-pool"), "{e}");
        assert!(e.contains("unknown field `ratio`"), "{e}");
    }

    #[test]
    fn bad_values_are_named_with_their_class() {
        let cases = [
            ("device-classes: []", "at least one device class"),
            (
                "device-classes: [{name: a, volume-group: vg}]",
                "exactly one device class must have default: true, found 0",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true}, {name: b, volume-group: vg, default: true}]",
                "found 2 (a, b)",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true}, {name: a, volume-group: vg2}]",
                "device-classes[1] (device class \"a\"): name: is defined more than once",
            ),
            (
                "device-classes: [{name: a, volume-group: '-vg', default: true}]",
                "device class \"a\"): volume-group: volume group name \"-vg\" must not start with '-'",
            ),
            (
                "device-classes: [{name: a, volume-group: '', default: true}]",
                "volume-group: volume group name must not be empty",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true, type: thin}]",
                "device class \"a\"): thin-pool: is required with type: thin",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true, type: thin, thin-pool: {name: p, overprovision-ratio: 0.5}}]",
                "thin-pool.overprovision-ratio: must be a number of at least 1.0, got 0.5",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true, type: thin, thin-pool: {name: p, data-percent-threshold: 0}}]",
                "thin-pool.data-percent-threshold",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true, type: thin, thin-pool: {name: 'p p'}}]",
                "thin-pool.name: thin pool name \"p p\" contains ' '",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true, type: thick, thin-pool: {name: p}}]",
                "thin-pool: is only allowed with type: thin",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true, type: fat}]",
                "type: must be \"thick\" or \"thin\", got \"fat\"",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true, stripe-size: 'x'}]",
                "stripe-size",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true, spare-gb: -1}]",
                "device class \"a\"): spare-gb",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true, spare-gb: 18446744073709551615}]",
                "is too large",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true, lvcreate-options: ['']}]",
                "lvcreate-options[0]",
            ),
            (
                "device-classes: [{name: 'a b', volume-group: vg, default: true}]",
                "name: must be at most 63 characters",
            ),
            (
                "device-classes: [{name: '-a', volume-group: vg, default: true}]",
                "name: must be at most 63 characters",
            ),
            (
                "device-classes: [{volume-group: vg, default: true}]",
                "device-classes[0]: name: must not be empty",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true}]\nlvm-command-prefix: []",
                "lvm-command-prefix: must name at least the lvm program",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true}]\nsocket-name: relative.sock",
                "socket-name: must be an absolute path",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true}]\nmetrics-listen: nowhere",
                "metrics-listen",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true}]\nchange-poll-interval: 10ms",
                "change-poll-interval: must be at least",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true}]\nfull-refresh-interval: soon",
                "full-refresh-interval",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true}]\nlvcreate-option-classes: [{name: r, options: []}]",
                "lvcreate-option-classes[0] (\"r\"): options: must list at least one option",
            ),
            (
                "device-classes: [{name: a, volume-group: vg, default: true}]\nlvcreate-option-classes: [{name: r, options: [x]}, {name: r, options: [y]}]",
                "lvcreate-option-classes[1].name",
            ),
            ("device-classes: {", "not valid YAML"),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(
                e.contains(want),
                "config {text:?}\n  error {e:?}\n  wanted {want:?}"
            );
        }
    }

    #[test]
    fn example_config_in_deploy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lvmd-config/lvmd.yaml");
        Config::load(&path).expect("deploy/lvmd-config/lvmd.yaml must be valid");
    }
}
