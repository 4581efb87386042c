//! The LVM environment of a test: the tools it needs (root, `lvm`, loop devices), and
//! [`LvmEnv`], a private `LVM_SYSTEM_DIR` that sees only the harness's devices, with the `lvm`
//! reports read through it.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Prerequisites

/// Finds `program` on `PATH` or in the sbin directories (root's tools live there and a test
/// runner's `PATH` may lack them).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The absolute path of the `lvm` binary; panics if there is none.
pub fn lvm_binary() -> PathBuf {
    require_lvm();
    find_program("lvm").expect("checked by require_lvm")
}

fn require(
    check: &'static OnceLock<Result<(), String>>,
    probe: impl FnOnce() -> Result<(), String>,
) {
    if let Err(why) = check.get_or_init(probe) {
        panic!(
            "the lvmd integration tests cannot run here: {why}\n\
             (they need root, lvm2 and loop devices; without the feature that enables them, \
             `cargo test` skips them)"
        );
    }
}

/// Panics with a clear message unless we are root and `lvm` runs.
pub fn require_lvm() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    require(&CHECK, || {
        if !nix::unistd::geteuid().is_root() {
            return Err(format!(
                "they must run as root (euid is {})",
                nix::unistd::geteuid()
            ));
        }
        let lvm = find_program("lvm").ok_or("no `lvm` binary on PATH or in /sbin, /usr/sbin")?;
        let out = Command::new(&lvm)
            .arg("version")
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", lvm.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`{} version` failed: {}",
                lvm.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    });
}

/// Panics with a clear message unless loop devices can be attached.
pub fn require_loop_devices() {
    require_lvm();
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    require(&CHECK, || {
        find_program("losetup").ok_or("no `losetup` binary")?;
        if !Path::new("/dev/loop-control").exists() {
            return Err(
                "/dev/loop-control is missing: this kernel has no loop device support".into(),
            );
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// LvmEnv

/// Whether LVM may activate volumes (talk to device-mapper).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `global { activation = 0 }`: metadata only, for kernels without device-mapper (the host).
    MetadataOnly,
    /// Real activation without udev (inside the test VM): `/dev/VG/LV` exists, thin pools and
    /// snapshots work.
    Real,
}

/// A private `LVM_SYSTEM_DIR`. Cheap to clone; the directory lives until the last clone drops.
///
/// Its `lvm.conf` accepts only the devices passed to [`LvmEnv::allow_device`] (which
/// [`VolumeGroup`] does for its disks), so two environments never see each other's volume
/// groups, and it locks in its own directory, so they never wait for each other.
#[derive(Clone)]
pub struct LvmEnv {
    inner: Arc<EnvInner>,
}

struct EnvInner {
    dir: TempDir,
    activation: Activation,
    lvm: PathBuf,
    devices: Mutex<Vec<PathBuf>>,
}

impl fmt::Debug for LvmEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LvmEnv")
            .field("system_dir", &self.system_dir())
            .field("activation", &self.inner.activation)
            .finish()
    }
}

impl LvmEnv {
    /// Metadata-only LVM, as on the host (no device-mapper).
    pub fn metadata_only() -> Self {
        Self::new(Activation::MetadataOnly)
    }

    /// LVM with real activation and no udev, as inside the VM.
    pub fn real_activation() -> Self {
        Self::new(Activation::Real)
    }

    pub fn new(activation: Activation) -> Self {
        let lvm = lvm_binary();
        let dir = tempfile::Builder::new()
            .prefix("topolvm-lvm-")
            .tempdir()
            .expect("creating the LVM_SYSTEM_DIR");
        std::fs::create_dir(dir.path().join("lock")).expect("creating the LVM locking dir");
        let env = Self {
            inner: Arc::new(EnvInner {
                dir,
                activation,
                lvm,
                devices: Mutex::new(Vec::new()),
            }),
        };
        env.write_conf(&[]);
        env
    }

    /// The directory to put in `LVM_SYSTEM_DIR`.
    pub fn system_dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// The absolute path of `lvm`.
    pub fn lvm_path(&self) -> &Path {
        &self.inner.lvm
    }

    pub fn activation(&self) -> Activation {
        self.inner.activation
    }

    /// Lets LVM in this environment see `device` (rewrites `lvm.conf`; every `lvm` run reads it).
    pub fn allow_device(&self, device: &Path) {
        let mut devices = self.inner.devices.lock().expect("device list lock");
        if !devices.iter().any(|d| d == device) {
            devices.push(device.to_owned());
        }
        self.write_conf(&devices);
    }

    fn write_conf(&self, devices: &[PathBuf]) {
        let dir = self.system_dir();
        let mut filter: Vec<String> = devices
            .iter()
            .map(|d| format!("\"a|^{}$|\"", regex_escape(&d.to_string_lossy())))
            .collect();
        filter.push("\"r|.*|\"".to_owned());
        let filter = filter.join(", ");
        let activation = match self.inner.activation {
            Activation::MetadataOnly => "0",
            Activation::Real => "1",
        };
        let activation_section = match self.inner.activation {
            Activation::MetadataOnly => "",
            Activation::Real => {
                "activation {\n\tudev_sync = 0\n\tudev_rules = 0\n\tmonitoring = 0\n}\n"
            }
        };
        let conf = format!(
            "# written by lvmd/tests/common\n\
             global {{\n\
             \tactivation = {activation}\n\
             \tlocking_dir = \"{lock}\"\n\
             \tuse_lvmpolld = 0\n\
             \tnotify_dbus = 0\n\
             }}\n\
             devices {{\n\
             \tglobal_filter = [ {filter} ]\n\
             \tobtain_device_list_from_udev = 0\n\
             \texternal_device_info_source = \"none\"\n\
             \tuse_devicesfile = 0\n\
             \thints = \"none\"\n\
             }}\n\
             {activation_section}\
             backup {{\n\
             \tbackup = 0\n\
             \tarchive = 0\n\
             }}\n",
            lock = dir.join("lock").display(),
        );
        // lvmd may be reading it right now: replace it in one step.
        let tmp = dir.join("lvm.conf.tmp");
        std::fs::write(&tmp, conf).expect("writing lvm.conf");
        std::fs::rename(&tmp, dir.join("lvm.conf")).expect("installing lvm.conf");
    }

    /// A `lvm` command in this environment (`LVM_SYSTEM_DIR`, `LC_ALL=C`, no fd warnings).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.inner.lvm);
        self.apply(&mut cmd);
        cmd
    }

    /// Sets this environment's variables on `cmd` (for lvmd or a wrapper script).
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("LVM_SYSTEM_DIR", self.system_dir())
            .env("LC_ALL", "C")
            .env("LVM_SUPPRESS_FD_WARNINGS", "1");
    }

    /// Runs `lvm <args>`; its stdout, or its exit status and stderr as the error.
    pub fn try_lvm(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run lvm: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Runs `lvm <args>` and returns its stdout; panics with its stderr if it fails.
    pub fn lvm(&self, args: &[&str]) -> String {
        self.try_lvm(args)
            .unwrap_or_else(|e| panic!("lvm {} failed: {e}", args.join(" ")))
    }

    /// Runs an `lvs`/`vgs`/`pvs`-style report with `--reportformat json --units b --nosuffix`
    /// and returns its rows (one per LV, VG, PV or segment, depending on the fields).
    pub fn report(&self, command: &str, fields: &str, target: &[&str]) -> Vec<ReportRow> {
        let mut args = vec![
            command,
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            fields,
        ];
        args.extend_from_slice(target);
        let out = self.lvm(&args);
        let json: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("lvm {} printed no JSON ({e}):\n{out}", args.join(" ")));
        let key = match command {
            "vgs" => "vg",
            "pvs" => "pv",
            _ => "lv",
        };
        json["report"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r[key].as_array().cloned().unwrap_or_default())
            .map(|row| {
                let fields = row
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                ReportRow { fields }
            })
            .collect()
    }

    /// The logical volumes of `vg` with the given `lvs` fields.
    pub fn lvs(&self, vg: &str, fields: &str) -> Vec<ReportRow> {
        self.report("lvs", fields, &[vg])
    }

    /// Names of the logical volumes in `vg`, sorted.
    pub fn lv_names(&self, vg: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .lvs(vg, "lv_name")
            .iter()
            .map(|r| r.get("lv_name").to_owned())
            .collect();
        names.sort();
        names
    }
}

/// One row of an LVM JSON report; every value is a string, as LVM prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub fields: BTreeMap<String, String>,
}

impl ReportRow {
    /// The value of `field`; panics if the report has no such field.
    pub fn get(&self, field: &str) -> &str {
        self.fields
            .get(field)
            .unwrap_or_else(|| panic!("report row has no field {field}: {self:?}"))
    }

    /// The value of `field` as a number.
    pub fn get_u64(&self, field: &str) -> u64 {
        let v = self.get(field);
        v.parse()
            .unwrap_or_else(|_| panic!("{field} is {v:?}, not a number"))
    }

    /// The comma-separated tags in `field`.
    pub fn tags(&self, field: &str) -> Vec<String> {
        self.get(field)
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
