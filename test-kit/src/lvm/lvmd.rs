//! [`Lvmd`]: the real `lvmd` binary on its own config, socket and metrics port, with gRPC
//! channels over the Unix socket and process control (SIGKILL of lvmd alone or, as a container
//! runtime does, together with the `lvm` it runs; SIGTERM; restart).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;
use tonic::transport::Channel;

use super::env::LvmEnv;
use crate::metrics::{counter_by_label, http_get, sum_counter};
use crate::process::{process_group_alive, wait_process_group_gone};

/// How long [`Lvmd::start`] waits for the socket to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

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

    /// The workspace's `lvmd` (next to the test executable, see
    /// [`workspace_binary`](crate::process::workspace_binary)) with one thick default class
    /// `class` on `vg` and no spare space: what the tests of the other binaries run beside them.
    pub fn workspace_thick(class: &str, vg: &str) -> Self {
        Self::new(
            crate::process::workspace_binary("lvmd", "lvmd"),
            thick_default_class(class, vg),
        )
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

    /// A gRPC channel over the Unix socket, with the authority `localhost` as gRPC-Go's
    /// clients send. The test's own connector, not topolvm-runtime's: runtime's tests use this
    /// crate, and lvmd's tests should not reach lvmd through product code.
    pub async fn channel(&self) -> Channel {
        let socket = self.socket_path.clone();
        tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.socket_path.display()))
    }

    /// A gRPC client of one of lvmd's services over [`Lvmd::channel`], e.g.
    /// `lvmd.client(LvServiceClient::new)` (the generated clients live in topolvm-proto, which
    /// this crate does not depend on).
    pub async fn client<C>(&self, new: impl FnOnce(Channel) -> C) -> C {
        new(self.channel().await)
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
