//! containerd for one test bed: Debian's containerd 1.6 and runc from the cache that
//! `e2e/scripts/build-node-runtime.sh` fills, started with a private root, state directory and
//! socket, with the test bed's pause and app images imported into the `k8s.io` namespace (the
//! one the CRI plugin, and so kubelet, uses).
//!
//! Dropping the [`Containerd`] kills every shim it started and their containers (shims are
//! re-parented away from containerd, so they are found by the socket they name), stops
//! containerd, unmounts whatever is left under its directory (container root filesystems,
//! sandbox shm), removes the cgroups of the killed containers, and removes the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::mounts::{mount_table, unmount_all_under};
use crate::process::{ManagedProcess, claim_dir, sweep_stale_dirs};

/// Where `e2e/scripts/build-node-runtime.sh` caches containerd, its shim, ctr and runc.
pub const DEFAULT_RUNTIME_BIN: &str = "/var/cache/topolvm-rs/runtime/bin";
/// The sandbox image the script builds (PID 1 waits, exits on SIGTERM/SIGINT).
pub const PAUSE_IMAGE: &str = "localhost/topolvm-e2e/pause:1";
/// The image pods run: busybox with sh, dd, sha256sum, stat, df, blockdev and friends.
pub const APP_IMAGE: &str = "localhost/topolvm-e2e/app:1";
/// The containerd namespace of the CRI plugin.
pub const NAMESPACE: &str = "k8s.io";
/// The prefix of the directories [`Containerd::start_temp`] makes under the temp dir.
pub const TEMP_PREFIX: &str = "topolvm-containerd-";
/// containerd's socket in its directory.
const SOCKET: &str = "containerd.sock";
/// How long containerd may take to answer: 0.06 s on the host, about 5 s in the qemu VM.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long killed shims and containers get to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory holding containerd, containerd-shim-runc-v2, ctr and runc: `TOPOLVM_RUNTIME_BIN`
/// or the script's cache. Panics naming the script when a binary is missing.
pub fn runtime_bin_dir() -> PathBuf {
    let dir = std::env::var_os("TOPOLVM_RUNTIME_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_BIN));
    for binary in ["containerd", "containerd-shim-runc-v2", "ctr", "runc"] {
        assert!(
            dir.join(binary).is_file(),
            "{binary} is not in {dir:?}: run e2e/scripts/build-node-runtime.sh (or set \
             TOPOLVM_RUNTIME_BIN)"
        );
    }
    dir
}

/// The OCI archive of an image: `$var` or `images/<file>` next to the runtime's `bin/`.
fn image_archive(var: &str, file: &str, bin: &Path) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        bin.parent()
            .unwrap_or(Path::new("/"))
            .join("images")
            .join(file)
    });
    assert!(
        path.is_file(),
        "the image archive {path:?} is missing: run e2e/scripts/build-node-runtime.sh (or set {var})"
    );
    path
}

/// The snapshotter containerd unpacks images with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshotter {
    /// overlay mounts: cheap, but the upper directory cannot be on an overlay itself.
    Overlayfs,
    /// full copies, works on any filesystem.
    Native,
}

impl Snapshotter {
    /// overlayfs unless `dir` is on an overlay (the VM's root), where the kernel refuses it.
    pub fn for_dir(dir: &Path) -> Self {
        match nix::sys::statfs::statfs(dir) {
            Ok(fs) if fs.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC => {
                Self::Native
            }
            _ => Self::Overlayfs,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Overlayfs => "overlayfs",
            Self::Native => "native",
        }
    }
}

/// A running containerd with the test bed's images imported.
#[derive(Debug)]
pub struct Containerd {
    process: Option<ManagedProcess>,
    dir: PathBuf,
    socket: PathBuf,
    bin: PathBuf,
    snapshotter: Snapshotter,
}

/// Plugins the test bed never uses, left out so start-up is quick and the log quiet.
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
];

/// containerd's configuration (version 2, the format of 1.6): everything it writes under
/// `dir`, the CRI plugin with our pause image and runc through the v2 shim with cgroupfs (the
/// test beds run no systemd), and CNI pointed at an empty directory (pods use hostNetwork).
fn config(dir: &Path, socket: &Path, runc: &Path, snapshotter: Snapshotter) -> String {
    let disabled = DISABLED_PLUGINS
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let path = |p: &Path| format!("{:?}", p.display().to_string());
    format!(
        r#"version = 2
root = {root}
state = {state}
disabled_plugins = [{disabled}]

[grpc]
  address = {socket}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = {runc}
        Root = {runc_root}
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
"#,
        root = path(&dir.join("root")),
        state = path(&dir.join("state")),
        socket = path(socket),
        snapshotter = snapshotter.name(),
        runc = path(runc),
        runc_root = path(&dir.join("runc")),
        cni_bin = path(&dir.join("cni/bin")),
        cni_conf = path(&dir.join("cni/net.d")),
    )
}

impl Containerd {
    /// Starts containerd in `dir` (created if missing, removed on drop), waits until it answers
    /// and imports the pause and app images. Panics, with containerd's log, if any step fails.
    pub fn start(dir: &Path) -> Self {
        let started = Instant::now();
        let bin = runtime_bin_dir();
        let pause = image_archive("TOPOLVM_PAUSE_IMAGE_TAR", "pause.oci.tar", &bin);
        let app = image_archive("TOPOLVM_APP_IMAGE_TAR", "app.oci.tar", &bin);
        std::fs::create_dir_all(dir.join("cni/net.d"))
            .unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
        std::fs::create_dir_all(dir.join("cni/bin")).expect("cni/bin");
        // The shims' command lines and the mount table name the real path.
        let dir = &dir.canonicalize().expect("canonical path of the directory");
        claim_dir(dir);
        if std::env::var_os("TOPOLVM_IN_VM").is_some() {
            enable_root_cgroup_controllers();
        }
        let socket = dir.join(SOCKET);
        // sun_path holds 108 bytes, and containerd also listens on `<socket>.ttrpc`.
        assert!(
            socket.as_os_str().len() + ".ttrpc".len() < 108,
            "{socket:?} is too long for a unix socket: start containerd in a shorter directory"
        );
        let snapshotter = Snapshotter::for_dir(dir);
        let config_path = dir.join("config.toml");
        std::fs::write(
            &config_path,
            config(dir, &socket, &bin.join("runc"), snapshotter),
        )
        .expect("writing containerd's config");
        let mut command = Command::new(bin.join("containerd"));
        command
            .arg("--config")
            .arg(&config_path)
            .env("PATH", path_with(&bin));
        let process = ManagedProcess::spawn("containerd", command, &dir.join("containerd.log"));
        let mut containerd = Self {
            process: Some(process),
            dir: dir.to_owned(),
            socket,
            bin,
            snapshotter,
        };
        containerd.wait_ready();
        let ready = started.elapsed();
        for archive in [&pause, &app] {
            containerd.ctr_ok([
                OsStr::new("images"),
                OsStr::new("import"),
                archive.as_os_str(),
            ]);
        }
        tracing::info!(
            dir = %dir.display(),
            snapshotter = snapshotter.name(),
            ready_ms = ready.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "containerd ready with the test bed's images"
        );
        containerd
    }

    /// Like [`Containerd::start`] in a fresh `topolvm-containerd-*` directory under the temp dir,
    /// after cleaning up what killed runs left in such directories.
    pub fn start_temp() -> Self {
        sweep_stale();
        let dir = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir()
            .expect("creating a temp dir")
            .keep();
        Self::start(&dir)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(p) = self.process.as_mut() {
                p.assert_running();
            }
            if self.socket.exists() && self.ctr(["version"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The socket as a CRI endpoint (kubelet's `--container-runtime-endpoint`).
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn pause_image(&self) -> &'static str {
        PAUSE_IMAGE
    }

    pub fn app_image(&self) -> &'static str {
        APP_IMAGE
    }

    pub fn snapshotter(&self) -> Snapshotter {
        self.snapshotter
    }

    /// The directory holding the runtime's binaries.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A `ctr` command against this containerd, in the `k8s.io` namespace and with its
    /// snapshotter unless its arguments say otherwise, with the runtime's binaries first on PATH.
    pub fn ctr_command(&self) -> Command {
        let mut command = Command::new(self.bin.join("ctr"));
        command
            .env("CONTAINERD_ADDRESS", &self.socket)
            .env("CONTAINERD_NAMESPACE", NAMESPACE)
            .env("CONTAINERD_SNAPSHOTTER", self.snapshotter.name())
            .env("PATH", path_with(&self.bin));
        command
    }

    /// Runs `ctr args` (see [`Containerd::ctr_command`]) and returns its output, whatever the
    /// exit status.
    pub fn ctr<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ctr_command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running ctr: {e}"))
    }

    /// Runs `ctr args` and returns its stdout; panics with both outputs if it fails.
    pub fn ctr_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.ctr(&args);
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        assert!(
            out.status.success(),
            "ctr {} failed ({}):\nstdout: {}\nstderr: {}",
            shown.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // containerd first: killing a shim under a live containerd makes it start the shim
        // binary again to clean up (`-address <socket> ... delete`), a process that could
        // outlive the sweep.
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
        remove_cgroups(&kill_shims(&self.socket, &self.bin.join("runc")));
        unmount_all_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PATH with `bin` first: containerd finds `containerd-shim-runc-v2` there, the shim `runc`.
fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut path = bin.as_os_str().to_owned();
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }
    path
}

/// Turns on, in the root cgroup (v2), every controller it offers: a fresh cgroup2 mount (the
/// VM's) enables none, and runc then cannot set limits in a container's cgroup.
fn enable_root_cgroup_controllers() {
    let root = Path::new("/sys/fs/cgroup");
    let Ok(offered) = std::fs::read_to_string(root.join("cgroup.controllers")) else {
        return;
    };
    for controller in offered.split_whitespace() {
        // One at a time: a controller the kernel refuses must not keep the others off.
        let _ = std::fs::write(
            root.join("cgroup.subtree_control"),
            format!("+{controller}"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Clean-up

/// Whether `pid`'s command line passes `-address <socket>` (how containerd starts each shim).
fn addresses_socket(pid: i32, socket: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let socket = socket.as_os_str().as_encoded_bytes();
    args.windows(2)
        .any(|w| w[0] == b"-address" && w[1] == socket)
}

/// `pid -> (parent, state)` of every process.
fn process_table() -> BTreeMap<i32, (i32, char)> {
    let mut table = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return table;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        table.insert(pid, (ppid, state));
    }
    table
}

/// The live (not zombie) shims serving `socket`.
pub fn shims_of(socket: &Path) -> Vec<i32> {
    process_table()
        .into_iter()
        .filter(|(pid, (_, state))| *state != 'Z' && addresses_socket(*pid, socket))
        .map(|(pid, _)| pid)
        .collect()
}

/// The value after `flag` in `pid`'s command line.
fn arg_after(pid: i32, flag: &str) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .find(|w| w[0] == flag.as_bytes())
        .map(|w| String::from_utf8_lossy(w[1]).into_owned())
}

/// The runc state of a container killed behind containerd's back stays in runc's root, and a
/// later container with the same id fails with "container with given ID already exists".
/// `ctr run` uses the shim's default root; the CRI plugin's is under our directory (removed).
const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";

/// SIGKILLs the shims serving `socket` and every process below them (the containers), waits
/// until they are gone, deletes their runc state with `runc` and returns the cgroups the
/// containers were in.
fn kill_shims(socket: &Path, runc: &Path) -> BTreeSet<String> {
    let table = process_table();
    let shims: Vec<i32> = table
        .keys()
        .copied()
        .filter(|pid| addresses_socket(*pid, socket))
        .collect();
    let containers: Vec<(String, String)> = shims
        .iter()
        .filter_map(|pid| Some((arg_after(*pid, "-namespace")?, arg_after(*pid, "-id")?)))
        .collect();
    let mut doomed: Vec<i32> = shims.clone();
    let mut i = 0;
    while i < doomed.len() {
        let parent = doomed[i];
        doomed.extend(
            table
                .iter()
                .filter(|(_, (ppid, _))| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    let mut cgroups = BTreeSet::new();
    for pid in doomed.iter().filter(|pid| !shims.contains(pid)) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        cgroups.extend(text.lines().map(str::to_owned));
    }
    // Containers first, so no shim is left to restart or report them.
    for pid in doomed.iter().rev() {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    while Instant::now() < deadline {
        let table = process_table();
        let alive = doomed
            .iter()
            .any(|pid| table.get(pid).is_some_and(|(_, state)| *state != 'Z'));
        if !alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (namespace, id) in containers {
        let root = Path::new(DEFAULT_RUNC_ROOT).join(&namespace);
        if root.join(&id).exists() {
            let _ = Command::new(runc)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .output();
            let _ = std::fs::remove_dir_all(root.join(&id));
        }
    }
    cgroups
}

/// Removes the cgroups named by `/proc/<pid>/cgroup` lines (`id:controllers:path`) of killed
/// containers: a v2 line maps to the cgroup2 mount, a v1 line to the mount of its controllers.
/// A cgroup still in use stays (rmdir fails).
fn remove_cgroups(lines: &BTreeSet<String>) {
    let mounts = mount_table();
    for line in lines {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if path == "/" {
            continue;
        }
        let mount = mounts.iter().find(|m| {
            if controllers.is_empty() {
                m.fs_type == "cgroup2"
            } else {
                m.fs_type == "cgroup"
                    && controllers
                        .split(',')
                        .all(|c| m.super_options.split(',').any(|o| o == c))
            }
        });
        if let Some(mount) = mount {
            let _ = std::fs::remove_dir(mount.point.join(path.trim_start_matches('/')));
        }
    }
}

/// Cleans up `topolvm-containerd-*` directories whose owner died without dropping its
/// [`Containerd`]: kills their shims and containers and unmounts what is left, lets
/// [`sweep_stale_dirs`] stop containerd (it is in the directory's `pids` file) and remove the
/// directories, then kills the clean-up shims containerd may have started meanwhile.
pub fn sweep_stale() {
    let entries = std::fs::read_dir(std::env::temp_dir());
    let stale: Vec<PathBuf> = entries
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|path| {
            let ours = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(TEMP_PREFIX));
            let owner = std::fs::read_to_string(path.join("owner.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            ours && owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    let runc = std::env::var_os("TOPOLVM_RUNTIME_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_BIN))
        .join("runc");
    for dir in &stale {
        remove_cgroups(&kill_shims(&dir.join(SOCKET), &runc));
        unmount_all_under(dir);
    }
    sweep_stale_dirs(TEMP_PREFIX);
    for dir in &stale {
        kill_shims(&dir.join(SOCKET), &runc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keeps_everything_under_the_directory() {
        let dir = Path::new("/tmp/topolvm-containerd-x");
        let text = config(
            dir,
            &dir.join("containerd.sock"),
            Path::new("/cache/bin/runc"),
            Snapshotter::Native,
        );
        assert!(text.contains(r#"root = "/tmp/topolvm-containerd-x/root""#));
        assert!(text.contains(r#"state = "/tmp/topolvm-containerd-x/state""#));
        assert!(text.contains(r#"address = "/tmp/topolvm-containerd-x/containerd.sock""#));
        assert!(text.contains(r#"snapshotter = "native""#));
        assert!(text.contains(r#"BinaryName = "/cache/bin/runc""#));
        assert!(text.contains("SystemdCgroup = false"));
        assert!(text.contains(&format!(r#"sandbox_image = "{PAUSE_IMAGE}""#)));
    }
}
