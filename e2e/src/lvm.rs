//! Real LVM and a real lvmd for tests: the harness of lvmd's host tier, VM tier and benchmark,
//! and of the end-to-end tests that need a node's storage.
//!
//! - [`LvmEnv`]: a private `LVM_SYSTEM_DIR` whose `lvm.conf` lets LVM see only the devices this
//!   harness was given, with its own locking directory, so tests never touch the machine's LVM,
//!   never see each other's volume groups and never wait on each other's locks.
//! - [`Disk`], [`LoopDevice`]: the block devices a volume group is made of: a loop device over a
//!   sparse file, or an existing device (a VM's `/dev/vdb`).
//! - [`VolumeGroup`]: a uniquely named volume group that removes itself, its physical volumes and
//!   then its disks when dropped, also when the test panics.
//! - [`Lvmd`]: the real `lvmd` binary on its own config, socket and metrics port, with gRPC
//!   clients over the Unix socket and process control (SIGKILL of lvmd alone or, as a container
//!   runtime does, together with the `lvm` it runs; SIGTERM; restart).
//! - [`LvmWrapper`]: an `lvm-command-prefix` that shows a test when an `lvm` subcommand starts and
//!   ends and can hold it back, to crash lvmd at a chosen point of a command.
//!
//! Failures panic with a message that says what was being done; these are test helpers.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use topolvm_proto::lvmd::lv_service_client::LvServiceClient;
use topolvm_proto::lvmd::vg_service_client::VgServiceClient;

/// Size of the sparse file behind a [`LoopDevice::new`] when a test does not care.
pub const DEFAULT_LOOP_SIZE: u64 = 128 << 20;

/// How long [`Lvmd::start`] waits for the socket to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

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

// ---------------------------------------------------------------------------------------------
// Disks

/// A loop device over a sparse file. Drop detaches it and deletes the file.
pub struct LoopDevice {
    device: PathBuf,
    // Deleted (with the file in it) after the device is detached.
    dir: TempDir,
}

impl fmt::Debug for LoopDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopDevice")
            .field("device", &self.device)
            .field("file", &self.dir.path().join("disk.img"))
            .finish()
    }
}

impl LoopDevice {
    /// Attaches a new sparse file of `size` bytes.
    pub fn new(size: u64) -> Self {
        require_loop_devices();
        // `losetup -f` picks a free device and then claims it; two at once can pick the same one.
        static ATTACH: Mutex<()> = Mutex::new(());
        let dir = tempfile::Builder::new()
            .prefix("topolvm-loop-")
            .tempdir()
            .expect("creating a dir for the loop device's file");
        let file = dir.path().join("disk.img");
        File::create(&file)
            .and_then(|f| f.set_len(size))
            .expect("creating the sparse file");
        let _serial = ATTACH.lock().unwrap_or_else(|e| e.into_inner());
        let mut last_error = String::new();
        for _ in 0..5 {
            let out = Command::new("losetup")
                .args(["-f", "--show"])
                .arg(&file)
                .output()
                .expect("running losetup");
            if out.status.success() {
                let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                return Self { device, dir };
            }
            // Raced with someone outside this process; try another free device.
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("losetup -f --show {} failed: {last_error}", file.display());
    }

    pub fn path(&self) -> &Path {
        &self.device
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        for attempt in 0..20 {
            let out = Command::new("losetup").arg("-d").arg(&self.device).output();
            match out {
                Ok(out) if out.status.success() => return,
                Ok(out) if attempt == 19 => eprintln!(
                    "warning: losetup -d {} failed: {}",
                    self.device.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => {
                    eprintln!("warning: cannot run losetup -d: {e}");
                    return;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// A block device for a volume group: one the harness attached, or one that already exists.
#[derive(Debug)]
pub enum Disk {
    Loop(LoopDevice),
    /// A device the caller owns (e.g. a VM's `/dev/vdb`); only its LVM label is removed.
    Existing(PathBuf),
}

impl Disk {
    /// A new loop device of `size` bytes.
    pub fn loop_device(size: u64) -> Self {
        Self::Loop(LoopDevice::new(size))
    }

    /// An existing block device.
    pub fn existing(path: impl Into<PathBuf>) -> Self {
        Self::Existing(path.into())
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Loop(l) => l.path(),
            Self::Existing(p) => p,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VolumeGroup

/// The scratch disks of the test VM (`TOPOLVM_VM_DISKS`, set by `scripts/vm/run.sh`), at least
/// two; panics outside the VM, naming the script that runs the VM tier.
pub fn vm_disks() -> Vec<PathBuf> {
    assert_eq!(
        std::env::var("TOPOLVM_IN_VM").as_deref(),
        Ok("1"),
        "the VM tier runs only inside the test VM: use scripts/test-vm-tier.sh"
    );
    let disks: Vec<PathBuf> = std::env::var("TOPOLVM_VM_DISKS")
        .expect("TOPOLVM_VM_DISKS")
        .split_whitespace()
        .map(PathBuf::from)
        .collect();
    assert!(
        disks.len() >= 2,
        "the VM tier needs two scratch disks, got {disks:?}"
    );
    disks
}

/// A volume group made from [`Disk`]s. Drop removes the volume group, wipes the physical volume
/// labels and then releases the disks (detaching loop devices).
#[derive(Debug)]
pub struct VolumeGroup {
    env: LvmEnv,
    name: String,
    disks: Vec<Disk>,
}

impl VolumeGroup {
    /// A name no other volume group of this or a parallel test process has: `tlvm<pid>x<n>`.
    pub fn unique_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        format!(
            "tlvm{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Creates a uniquely named volume group on `disks`.
    pub fn create(env: &LvmEnv, disks: Vec<Disk>) -> Self {
        Self::create_named(env, &Self::unique_name(), disks)
    }

    /// Creates the volume group `name` on `disks` (`pvcreate` + `vgcreate`).
    pub fn create_named(env: &LvmEnv, name: &str, disks: Vec<Disk>) -> Self {
        assert!(!disks.is_empty(), "a volume group needs at least one disk");
        // Own everything first so a failure below still cleans up.
        let vg = Self {
            env: env.clone(),
            name: name.to_owned(),
            disks,
        };
        let paths: Vec<String> = vg
            .disks
            .iter()
            .map(|d| d.path().to_string_lossy().into_owned())
            .collect();
        for disk in &vg.disks {
            env.allow_device(disk.path());
        }
        let mut args = vec!["pvcreate", "-q", "-y", "-ff"];
        args.extend(paths.iter().map(String::as_str));
        env.lvm(&args);
        let mut args = vec!["vgcreate", "-q", name];
        args.extend(paths.iter().map(String::as_str));
        env.lvm(&args);
        vg
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }

    /// Adds `disk` to the volume group (`vgextend`, which also labels it).
    pub fn extend(&mut self, disk: Disk) {
        let path = disk.path().to_string_lossy().into_owned();
        self.env.allow_device(disk.path());
        self.disks.push(disk);
        self.env.lvm(&["vgextend", "-q", "-y", &self.name, &path]);
    }

    /// Creates a linear volume with `lvm` itself, behind lvmd's back, as an admin would;
    /// `size` in `lvcreate -L` form (`8m`).
    pub fn create_lv_by_hand(&self, name: &str, size: &str) {
        self.env
            .lvm(&["lvcreate", "-q", "-y", "-n", name, "-L", size, &self.name]);
    }

    /// `vgs` figures of this volume group: `vg_size`, `vg_free`, `vg_extent_size`.
    pub fn sizes(&self) -> ReportRow {
        let rows = self
            .env
            .report("vgs", "vg_size,vg_free,vg_extent_size", &[&self.name]);
        rows.into_iter()
            .next()
            .unwrap_or_else(|| panic!("vgs shows no {}", self.name))
    }
}

impl Drop for VolumeGroup {
    fn drop(&mut self) {
        if let Err(e) = self.env.try_lvm(&["vgremove", "-ff", "-y", &self.name]) {
            // Expected when creation itself failed.
            eprintln!("note: vgremove {}: {e}", self.name);
        }
        for disk in &self.disks {
            let path = disk.path().to_string_lossy().into_owned();
            if let Err(e) = self.env.try_lvm(&["pvremove", "-ff", "-y", &path]) {
                eprintln!("note: pvremove {path}: {e}");
            }
        }
        // The disks drop after this body: loop devices are detached last.
    }
}

// ---------------------------------------------------------------------------------------------
// Lvmd

/// How to configure an [`Lvmd`].
#[derive(Debug, Clone)]
pub struct LvmdOptions {
    binary: PathBuf,
    device_classes: String,
    extra: String,
    lvm_command_prefix: Option<Vec<String>>,
    own_process_group: bool,
}

impl LvmdOptions {
    /// `binary` is the lvmd executable (lvmd's own tests pass `env!("CARGO_BIN_EXE_lvmd")`);
    /// `device_classes` is the YAML sequence under `device-classes:`, e.g.
    /// `"- {name: ssd, volume-group: vg1, default: true, spare-gb: 0}"`.
    pub fn new(binary: impl Into<PathBuf>, device_classes: impl Into<String>) -> Self {
        Self {
            binary: binary.into(),
            device_classes: device_classes.into(),
            extra: String::new(),
            lvm_command_prefix: None,
            own_process_group: false,
        }
    }

    /// Appends top-level YAML (e.g. `"full-refresh-interval: 2s"`); one key per call or several
    /// lines at once.
    pub fn extra(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        self.extra.push('\n');
        self
    }

    /// Replaces the default `lvm-command-prefix` (the absolute path of `lvm`).
    pub fn lvm_command_prefix(mut self, argv: Vec<String>) -> Self {
        self.lvm_command_prefix = Some(argv);
        self
    }

    /// Starts each lvmd run as the leader of its own process group, which the `lvm` commands it
    /// runs inherit, so that [`Lvmd::kill9_with_children`] can kill them all at once as a
    /// container runtime does. Drop kills what is left in every such group. Off by default: in
    /// the test binary's group, lvmd also gets a terminal's Ctrl-C.
    pub fn own_process_group(mut self) -> Self {
        self.own_process_group = true;
        self
    }
}

/// The `device-classes` entry of one thick default class on `vg` with no spare space, the class
/// most tests need.
pub fn thick_default_class(name: &str, vg: &str) -> String {
    format!("- {{name: {name}, volume-group: {vg}, default: true, spare-gb: 0}}")
}

/// A running `lvmd` process with its own config, socket, metrics port and log.
///
/// Drop kills it (SIGKILL) and, if the test is failing, prints its log.
pub struct Lvmd {
    env: LvmEnv,
    dir: TempDir,
    config_path: PathBuf,
    socket_path: PathBuf,
    log_path: PathBuf,
    metrics_addr: SocketAddr,
    binary: PathBuf,
    own_process_group: bool,
    /// The process group of every run, with [`LvmdOptions::own_process_group`].
    process_groups: Vec<i32>,
    child: Option<Child>,
}

impl fmt::Debug for Lvmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lvmd")
            .field("config", &self.config_path)
            .field("socket", &self.socket_path)
            .field("metrics", &self.metrics_addr)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

fn yaml_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

impl Lvmd {
    /// Writes the config and starts lvmd; returns once its socket accepts connections.
    pub fn start(env: &LvmEnv, options: LvmdOptions) -> Self {
        let mut lvmd = Self::configure(env, options);
        lvmd.spawn();
        lvmd
    }

    /// Writes the config but does not start lvmd yet (see [`Lvmd::spawn`]); lets a test prepare
    /// the socket path first.
    pub fn configure(env: &LvmEnv, options: LvmdOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("topolvm-lvmd-")
            .tempdir()
            .expect("creating lvmd's dir");
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).expect("creating the socket dir");
        let socket_path = run_dir.join("lvmd.sock");
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], crate::process::free_port()));
        let prefix = options
            .lvm_command_prefix
            .unwrap_or_else(|| vec![env.lvm_path().to_string_lossy().into_owned()]);
        let prefix = prefix
            .iter()
            .map(|a| yaml_string(a))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "socket-name: {socket}\n\
             lvm-command-prefix: [{prefix}]\n\
             metrics-listen: \"{metrics_addr}\"\n\
             {extra}\
             device-classes:\n{classes}\n",
            socket = yaml_string(&socket_path.to_string_lossy()),
            extra = options.extra,
            classes = indent(&options.device_classes, "  "),
        );
        let config_path = dir.path().join("lvmd.yaml");
        std::fs::write(&config_path, config).expect("writing lvmd.yaml");
        let log_path = dir.path().join("lvmd.log");
        Self {
            env: env.clone(),
            dir,
            config_path,
            socket_path,
            log_path,
            metrics_addr,
            binary: options.binary,
            own_process_group: options.own_process_group,
            process_groups: Vec::new(),
            child: None,
        }
    }

    /// Starts the process (again) and waits until its socket accepts connections.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "lvmd is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening lvmd's log");
        let mut header = log.try_clone().expect("log fd");
        let _ = writeln!(header, "=== starting lvmd ===");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--node-name")
            .arg("test-node")
            .env(
                "RUST_LOG",
                "debug,h2=info,hyper=info,hyper_util=info,tower=info",
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.env.apply(&mut cmd);
        if self.own_process_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        let child = cmd.spawn().expect("starting lvmd");
        if self.own_process_group {
            self.process_groups
                .push(i32::try_from(child.id()).expect("pid fits i32"));
        }
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if StdUnixStream::connect(&self.socket_path).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("lvmd exited during start-up with {status}\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "lvmd's socket {} did not accept connections within {START_TIMEOUT:?}\n{}",
                    self.socket_path.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// lvmd's own directory (config, log, `run/` with the socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything lvmd has logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A gRPC channel over the Unix socket.
    pub async fn channel(&self) -> Channel {
        topolvm_runtime::unix::connect(&self.socket_path)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.socket_path.display()))
    }

    pub async fn lv_client(&self) -> LvServiceClient<Channel> {
        LvServiceClient::new(self.channel().await)
    }

    pub async fn vg_client(&self) -> VgServiceClient<Channel> {
        VgServiceClient::new(self.channel().await)
    }

    pub async fn health_client(&self) -> tonic_health::pb::health_client::HealthClient<Channel> {
        tonic_health::pb::health_client::HealthClient::new(self.channel().await)
    }

    /// The text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match http_get(self.metrics_addr, "/metrics").await {
                Ok(body) => return body,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "GET http://{}/metrics: {e}\n{}",
                        self.metrics_addr,
                        self.log()
                    )
                }
                // The endpoint starts alongside the socket; give it a moment.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// How many `lvm` commands this lvmd process has run (`lvmd_lvm_commands_total`, all labels).
    pub async fn lvm_command_count(&self) -> u64 {
        sum_counter(&self.metrics_text().await, "lvmd_lvm_commands_total")
    }

    /// `lvm` commands run so far by subcommand (`lvcreate`, `fullreport`, ...), all outcomes.
    pub async fn lvm_command_counts(&self) -> BTreeMap<String, u64> {
        counter_by_label(
            &self.metrics_text().await,
            "lvmd_lvm_commands_total",
            "subcommand",
        )
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        let pid = self.pid().expect("lvmd is not running");
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("sending SIGTERM to lvmd");
    }

    /// Waits up to `timeout` for the process to exit; panics if it does not.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_reap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!("lvmd did not exit within {timeout:?}\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits (blocking) up to `timeout` for a graceful exit.
    pub fn sigterm_and_wait(&mut self, timeout: Duration) -> ExitStatus {
        self.sigterm();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_reap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "lvmd did not exit within {timeout:?} of SIGTERM\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_reap(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("lvmd is not running");
        let status = child.try_wait().expect("waiting for lvmd")?;
        self.child = None;
        Some(status)
    }

    /// SIGKILL of lvmd alone, as a crash would; waits until it is gone. A command it was running
    /// goes on without it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL of lvmd's whole process group, lvmd and every `lvm` it runs at once, as a
    /// container runtime kills a container; waits until none of them is left. Needs
    /// [`LvmdOptions::own_process_group`].
    pub fn kill9_with_children(&mut self) {
        assert!(
            self.own_process_group,
            "kill9_with_children needs LvmdOptions::own_process_group"
        );
        let mut child = self.child.take().expect("lvmd is not running");
        let pgid = i32::try_from(child.id()).expect("pid fits i32");
        // lvmd is not reaped yet, so the group cannot be anyone else's.
        killpg(Pid::from_raw(pgid), Signal::SIGKILL).expect("killing lvmd's process group");
        let _ = child.wait();
        assert!(
            wait_process_group_gone(pgid, Duration::from_secs(10)),
            "processes of lvmd's group {pgid} outlived SIGKILL"
        );
    }

    /// Starts lvmd again on the same config, socket and port (killing it first if it runs).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Lvmd {
    fn drop(&mut self) {
        self.kill9();
        // Commands that outlived an lvmd killed alone. A group is killed only while a process is
        // still in it, and the kernel does not hand out a group id that is in use.
        for &pgid in &self.process_groups {
            if process_group_alive(pgid) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                if !wait_process_group_gone(pgid, Duration::from_secs(10)) {
                    eprintln!("warning: processes of lvmd's old group {pgid} survive SIGKILL");
                }
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "----- lvmd log ({}) -----\n{}----- end of lvmd log -----",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A minimal HTTP/1.0 GET; the body, or an error for a failed connection or a non-200 answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("no complete answer within 10s"))??;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    if !head.lines().next().is_some_and(|l| l.contains(" 200 ")) {
        return Err(std::io::Error::other(format!("HTTP error: {head}")));
    }
    Ok(body.to_owned())
}

/// The sum of every sample of counter `name` in Prometheus text.
pub fn sum_counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(_, v)| {
            v.parse::<f64>()
                .unwrap_or_else(|_| panic!("bad sample value {v:?} of {name}")) as u64
        })
        .sum()
}

/// Samples of counter `name` in Prometheus text, summed per value of `label`.
pub fn counter_by_label(metrics: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    let key = format!("{label}=\"");
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(label_value) = labels
            .split_once(&key)
            .and_then(|(_, v)| v.split_once('"'))
            .map(|(v, _)| v.to_owned())
        else {
            continue;
        };
        let value = value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample value {value:?} of {name}"));
        *sums.entry(label_value).or_insert(0) += value as u64;
    }
    sums
}

// ---------------------------------------------------------------------------------------------
// Process groups

/// Whether a live process is in process group `pgid`. Zombies do not count: they are dead and
/// only wait for a parent (or init) to reap them.
pub fn process_group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(pgid) && state != Some("Z")
    })
}

/// Waits up to `timeout` until no live process is left in group `pgid`; whether none is.
pub fn wait_process_group_gone(pgid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_group_alive(pgid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

// ---------------------------------------------------------------------------------------------
// LvmWrapper

/// How long a held run of an [`LvmWrapper`] waits for its release before it gives up (exit 111),
/// so a test that dies while holding one leaves nothing waiting forever.
const HOLD_LIMIT_SECONDS: u32 = 120;

/// An `lvm-command-prefix` that lets a test watch and steer one `lvm` subcommand, e.g. to crash
/// lvmd at a chosen point of an `lvcreate`. Every other subcommand `exec`s `lvm` directly.
///
/// Each invocation of the subcommand is a *run*, named by the wrapper's pid. A run
/// - if the wrapper is [holding](LvmWrapper::holding), first waits until the test
///   [releases](LvmWrapper::release) it (a stand-in for an `lvm` that is slow to start);
/// - starts `lvm` in the background and marks itself started the moment `lvm` exists;
/// - records `lvm`'s exit code when it ends, then passes on its output and exit code.
///
/// `lvm`'s output goes to files and is passed on only after it exits. A caller that died (lvmd
/// killed alone) has closed its end of the pipe, and `lvm` writing a message there would die of
/// SIGPIPE; with activation off it warns before it commits and would never make the volume.
/// Kept apart, an orphaned `lvm` runs to its end, as one that prints nothing before its commit
/// does (in a container, `nsenter ... lvm` with real activation).
pub struct LvmWrapper {
    dir: TempDir,
    script: PathBuf,
    /// Runs the `next_*` methods have returned, per marker kind.
    returned: Mutex<BTreeMap<&'static str, std::collections::BTreeSet<u32>>>,
}

impl fmt::Debug for LvmWrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LvmWrapper")
            .field("script", &self.script)
            .finish()
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl LvmWrapper {
    /// Marks when each run of `subcommand` starts `lvm` and when `lvm` ends.
    pub fn marking(env: &LvmEnv, subcommand: &str) -> Self {
        Self::new(env, subcommand, false)
    }

    /// Like [`LvmWrapper::marking`], but each run first waits for [`LvmWrapper::release`].
    pub fn holding(env: &LvmEnv, subcommand: &str) -> Self {
        Self::new(env, subcommand, true)
    }

    fn new(env: &LvmEnv, subcommand: &str, hold: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("topolvm-lvm-wrapper-")
            .tempdir()
            .expect("creating the wrapper's dir");
        for sub in ["held", "release", "started", "exited", "output"] {
            std::fs::create_dir(dir.path().join(sub)).expect("creating a marker dir");
        }
        let hold_step = if hold {
            format!(
                "mark held ''\n\
                 n=0\n\
                 while [ ! -e \"$dir/release/$run\" ]; do\n\
                 \tn=$((n + 1)); [ \"$n\" -le {limit} ] || exit 111\n\
                 \tsleep 0.01\n\
                 done\n",
                limit = HOLD_LIMIT_SECONDS * 100
            )
        } else {
            String::new()
        };
        let script_text = format!(
            "#!/bin/sh\n\
             # lvm wrapper written by topolvm_e2e::lvm::LvmWrapper\n\
             lvm={lvm}\n\
             dir={dir}\n\
             [ \"$1\" = {subcommand} ] || exec \"$lvm\" \"$@\"\n\
             run=$$\n\
             mark() {{ echo \"$2\" > \"$dir/$1/.$run\" && mv \"$dir/$1/.$run\" \"$dir/$1/$run\"; }}\n\
             {hold_step}\
             \"$lvm\" \"$@\" > \"$dir/output/$run.out\" 2> \"$dir/output/$run.err\" &\n\
             child=$!\n\
             mark started \"$child\"\n\
             trap 'kill -TERM \"$child\" 2>/dev/null' TERM\n\
             wait \"$child\"; rc=$?\n\
             while kill -0 \"$child\" 2>/dev/null; do wait \"$child\"; rc=$?; done\n\
             mark exited \"$rc\"\n\
             cat \"$dir/output/$run.out\"\n\
             cat \"$dir/output/$run.err\" >&2\n\
             exit \"$rc\"\n",
            lvm = shell_quote(&env.lvm_path().to_string_lossy()),
            dir = shell_quote(&dir.path().to_string_lossy()),
            subcommand = shell_quote(subcommand),
        );
        let script = dir.path().join("lvm");
        std::fs::write(&script, script_text).expect("writing the wrapper");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the wrapper");
        Self {
            dir,
            script,
            returned: Mutex::new(BTreeMap::new()),
        }
    }

    /// The `lvm-command-prefix` that runs `lvm` through this wrapper.
    pub fn prefix(&self) -> Vec<String> {
        vec![self.script.to_string_lossy().into_owned()]
    }

    /// Runs with a `kind` marker (`held`, `started`, `exited`) and the marker's content.
    fn markers(&self, kind: &str) -> Vec<(u32, String, std::time::SystemTime)> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join(kind)) else {
            return Vec::new();
        };
        let mut found: Vec<_> = entries
            .flatten()
            .filter_map(|e| {
                let run = e.file_name().to_str()?.parse::<u32>().ok()?;
                let content = std::fs::read_to_string(e.path()).ok()?;
                let written = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((run, content.trim().to_owned(), written))
            })
            .collect();
        found.sort_by_key(|(_, _, written)| *written);
        found
    }

    /// Waits for the earliest run with a `kind` marker that no `next_*` call returned yet.
    async fn next(&self, kind: &'static str, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut returned = self.returned.lock().expect("wrapper lock");
                let seen = returned.entry(kind).or_default();
                if let Some((run, _, _)) = self
                    .markers(kind)
                    .into_iter()
                    .find(|(run, _, _)| !seen.contains(run))
                {
                    seen.insert(run);
                    return run;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new {kind} run of the lvm wrapper within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits for a new run that is held (see [`LvmWrapper::holding`]); its name.
    pub async fn next_held(&self, timeout: Duration) -> u32 {
        self.next("held", timeout).await
    }

    /// Waits for a new run that has started `lvm`; its name. Polls every 2 ms.
    pub async fn next_started(&self, timeout: Duration) -> u32 {
        self.next("started", timeout).await
    }

    /// Counts every run so far as returned, so the `next_*` calls wait for later ones.
    pub fn pass_over_runs_so_far(&self) {
        let mut returned = self.returned.lock().expect("wrapper lock");
        for kind in ["held", "started"] {
            let runs = self.markers(kind).into_iter().map(|(run, _, _)| run);
            returned.entry(kind).or_default().extend(runs);
        }
    }

    /// Lets a held run start `lvm`.
    pub fn release(&self, run: u32) {
        std::fs::write(self.dir.path().join("release").join(run.to_string()), "")
            .expect("releasing a held run");
    }

    /// The exit code of the `lvm` of `run`, once it has ended; `None` if it has not (yet).
    pub fn exit_code(&self, run: u32) -> Option<i32> {
        self.markers("exited")
            .into_iter()
            .find(|(r, _, _)| *r == run)
            .map(|(_, code, _)| {
                code.parse()
                    .unwrap_or_else(|_| panic!("run {run} exited with {code:?}"))
            })
    }

    /// Waits up to `timeout` for the `lvm` of `run` to end; its exit code.
    pub async fn wait_exit_code(&self, run: u32, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_code(run) {
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "the lvm of run {run} did not end within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the `lvm` of `run` wrote to its standard error, once it has ended.
    pub fn stderr(&self, run: u32) -> String {
        std::fs::read_to_string(self.dir.path().join("output").join(format!("{run}.err")))
            .unwrap_or_default()
    }
}
