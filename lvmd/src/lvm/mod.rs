//! The LVM command layer: runs `lvm` and decodes its JSON reports.
//!
//! Nothing above this module builds an `lvm` argument list or looks at `lvm`'s output. Commands
//! run without a shell, with `LC_ALL=C` so messages can be matched, under a configurable prefix
//! (for `nsenter` into the host when lvmd runs in a container). A command whose caller stops
//! waiting is interrupted: SIGTERM first, which LVM handles without leaving half-written
//! metadata, then SIGKILL after a grace period.

pub mod args;
pub mod metadata;
pub mod report;
pub mod validate;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tracing::{debug, warn};

/// How long an interrupted `lvm` gets to exit after SIGTERM before it is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

/// Why an `lvm` command did not give a usable result.
#[derive(Debug, Error)]
pub enum LvmError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("lvm {subcommand} failed (exit code {}): {}", exit_code.map_or("none".to_owned(), |c| c.to_string()), stderr.trim())]
    Failed {
        subcommand: String,
        exit_code: Option<i32>,
        stderr: String,
    },
    #[error("lvm {subcommand} did not finish within {timeout:?} and was interrupted")]
    TimedOut {
        subcommand: String,
        timeout: Duration,
    },
    #[error("reading the output of lvm {subcommand}: {source}")]
    Io {
        subcommand: String,
        source: std::io::Error,
    },
    #[error("lvm {subcommand} printed something that is not UTF-8")]
    NotUtf8 { subcommand: String },
    #[error("cannot decode the lvm report: {0}")]
    Report(#[from] report::ReportError),
}

impl LvmError {
    fn stderr(&self) -> &str {
        match self {
            Self::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }

    /// LVM said there is not enough space for the request.
    pub fn is_insufficient_space(&self) -> bool {
        let e = self.stderr();
        e.contains("insufficient free space") || e.contains("Insufficient free space")
    }

    /// LVM said the volume already exists.
    pub fn is_already_exists(&self) -> bool {
        self.stderr().contains("already exists")
    }

    /// LVM did not find the volume or volume group.
    pub fn is_not_found(&self) -> bool {
        let e = self.stderr();
        e.contains("Failed to find logical volume") || e.contains("not found")
    }
}

/// Runs one `lvm` subcommand; `args[0]` is the subcommand. Returns its standard output.
///
/// The trait exists so the logic above it can be unit-tested with a scripted fake; production
/// code uses [`CommandRunner`].
pub trait LvmRunner: Send + Sync + std::fmt::Debug + 'static {
    fn run(&self, args: Vec<String>) -> BoxFuture<'_, Result<String, LvmError>>;
}

/// Called once per `lvm` invocation, for metrics.
pub trait CommandObserver: Send + Sync + std::fmt::Debug + 'static {
    fn observe(&self, subcommand: &str, outcome: &'static str, elapsed: Duration);
}

/// Runs `lvm` as a child process.
#[derive(Debug, Clone)]
pub struct CommandRunner {
    prefix: Arc<[String]>,
    timeout: Duration,
    observer: Option<Arc<dyn CommandObserver>>,
}

impl CommandRunner {
    /// `prefix` is the argv that runs `lvm` (for example `["/sbin/lvm"]`); it must not be empty.
    pub fn new(prefix: Vec<String>, timeout: Duration) -> Self {
        Self {
            prefix: prefix.into(),
            timeout,
            observer: None,
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn CommandObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    async fn run_inner(&self, args: Vec<String>) -> Result<String, LvmError> {
        let subcommand = args.first().cloned().unwrap_or_default();
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.spawn_and_wait(&subcommand, &args))
            .await
            .unwrap_or_else(|_| {
                Err(LvmError::TimedOut {
                    subcommand: subcommand.clone(),
                    timeout: self.timeout,
                })
            });
        let outcome = match &result {
            Ok(_) => "ok",
            Err(LvmError::Failed { .. }) => "failed",
            Err(LvmError::TimedOut { .. }) => "timeout",
            Err(_) => "error",
        };
        let elapsed = started.elapsed();
        if let Some(observer) = &self.observer {
            observer.observe(&subcommand, outcome, elapsed);
        }
        debug!(%subcommand, ?args, outcome, elapsed_ms = elapsed.as_millis() as u64, "lvm");
        result
    }

    async fn spawn_and_wait(&self, subcommand: &str, args: &[String]) -> Result<String, LvmError> {
        let (program, prefix_args) = self.prefix.split_first().ok_or_else(|| LvmError::Spawn {
            program: String::new(),
            source: std::io::Error::other("empty lvm command prefix"),
        })?;
        let mut child = Command::new(program)
            .args(prefix_args)
            .args(args)
            .env("LC_ALL", "C")
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LvmError::Spawn {
                program: program.clone(),
                source,
            })?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let mut guard = InterruptOnDrop(Some(child));
        let io_error = |source| LvmError::Io {
            subcommand: subcommand.to_owned(),
            source,
        };

        let read_out = async {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                s.read_to_end(&mut buf).await?;
            }
            Ok::<_, std::io::Error>(buf)
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(s) = stderr.as_mut() {
                s.read_to_end(&mut buf).await?;
            }
            Ok::<_, std::io::Error>(buf)
        };
        let wait = guard.wait();
        let (out, err, status) = tokio::join!(read_out, read_err, wait);
        guard.finished();
        let (out, err, status) = (
            out.map_err(io_error)?,
            err.map_err(io_error)?,
            status.map_err(io_error)?,
        );

        let stderr = String::from_utf8_lossy(&err).into_owned();
        if !status.success() {
            return Err(LvmError::Failed {
                subcommand: subcommand.to_owned(),
                exit_code: status.code(),
                stderr,
            });
        }
        String::from_utf8(out).map_err(|_| LvmError::NotUtf8 {
            subcommand: subcommand.to_owned(),
        })
    }
}

impl LvmRunner for CommandRunner {
    fn run(&self, args: Vec<String>) -> BoxFuture<'_, Result<String, LvmError>> {
        Box::pin(self.run_inner(args))
    }
}

/// Owns a running `lvm`; if dropped before the child exited (the caller was cancelled or timed
/// out), interrupts it in the background so it never outlives its purpose.
struct InterruptOnDrop(Option<Child>);

impl InterruptOnDrop {
    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self.0.as_mut() {
            Some(child) => child.wait().await,
            None => Err(std::io::Error::other("child already reaped")),
        }
    }

    fn finished(&mut self) {
        self.0 = None;
    }
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
            warn!(pid, "interrupting an lvm command whose caller went away");
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        // Reap it, escalating to SIGKILL if it ignores SIGTERM.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if tokio::time::timeout(INTERRUPT_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            });
        } else {
            let _ = child.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(prefix: &[&str], timeout: Duration) -> CommandRunner {
        CommandRunner::new(prefix.iter().map(|s| s.to_string()).collect(), timeout)
    }

    #[tokio::test]
    async fn passes_arguments_without_a_shell_and_sets_c_locale() {
        // `sh -c 'script' sh ARGS...` stands in for lvm: the arguments arrive as $@.
        let r = runner(
            &[
                "sh",
                "-c",
                "printf '%s|' \"$@\"; printf 'LC_ALL=%s' \"$LC_ALL\"",
                "sh",
            ],
            Duration::from_secs(10),
        );
        let out = r
            .run(vec!["lvs".into(), "$(reboot)".into(), "a b;c".into()])
            .await
            .expect("runs");
        assert_eq!(out, "lvs|$(reboot)|a b;c|LC_ALL=C");
    }

    #[tokio::test]
    async fn failure_carries_exit_code_and_stderr() {
        let r = runner(
            &[
                "sh",
                "-c",
                "echo '  Volume group \"vg\" has insufficient free space (1 extents): 2 required.' >&2; exit 5",
                "sh",
            ],
            Duration::from_secs(10),
        );
        let err = r.run(vec!["lvcreate".into()]).await.expect_err("fails");
        match &err {
            LvmError::Failed {
                subcommand,
                exit_code,
                stderr,
            } => {
                assert_eq!(subcommand, "lvcreate");
                assert_eq!(*exit_code, Some(5));
                assert!(stderr.contains("insufficient free space"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.is_insufficient_space());
        assert!(!err.is_not_found());
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let r = runner(&["/nonexistent/lvm"], Duration::from_secs(10));
        let err = r.run(vec!["vgs".into()]).await.expect_err("fails");
        assert!(matches!(err, LvmError::Spawn { .. }), "{err:?}");
    }

    fn failed(stderr: &str) -> LvmError {
        LvmError::Failed {
            subcommand: "x".into(),
            exit_code: Some(5),
            stderr: stderr.into(),
        }
    }

    /// Error messages captured from real lvm2 (host metadata mode and inside the VM).
    #[test]
    fn captured_errors_are_classified() {
        for nospace in [
            include_str!("../../tests/fixtures/lvcreate-nospace.stderr"),
            include_str!("../../tests/fixtures/vm-lvcreate-nospace.stderr"),
        ] {
            let e = failed(nospace);
            assert!(
                e.is_insufficient_space() && !e.is_already_exists(),
                "{nospace}"
            );
        }
        for exists in [
            include_str!("../../tests/fixtures/lvcreate-exists.stderr"),
            include_str!("../../tests/fixtures/vm-lvcreate-exists.stderr"),
        ] {
            let e = failed(exists);
            assert!(
                e.is_already_exists() && !e.is_insufficient_space(),
                "{exists}"
            );
        }
        for missing in [
            include_str!("../../tests/fixtures/lvremove-missing.stderr"),
            include_str!("../../tests/fixtures/vm-lvremove-missing.stderr"),
            include_str!("../../tests/fixtures/vgs-missing.stderr"),
        ] {
            assert!(failed(missing).is_not_found(), "{missing}");
        }
        assert_eq!(
            include_str!("../../tests/fixtures/lvcreate-nospace.exit").trim(),
            "5"
        );
    }

    /// Reads a pid file written by the child, then checks whether that process is still alive.
    fn alive(pid_file: &std::path::Path) -> bool {
        let pid: i32 = std::fs::read_to_string(pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        kill(Pid::from_raw(pid), None).is_ok()
    }

    #[tokio::test]
    async fn timeout_interrupts_the_child() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let r = runner(&["sh", "-c", &script, "sh"], Duration::from_millis(300));
        let err = r.run(vec!["lvcreate".into()]).await.expect_err("times out");
        assert!(matches!(err, LvmError::TimedOut { .. }), "{err:?}");
        for _ in 0..50 {
            if !alive(&pid_file) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the timed-out child is still running");
    }

    #[tokio::test]
    async fn cancelled_caller_interrupts_the_child() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let r = runner(&["sh", "-c", &script, "sh"], Duration::from_secs(60));
        let call = r.run(vec!["lvs".into()]);
        // Let the child start, then drop the call as a cancelled RPC would.
        let cancelled = tokio::time::timeout(Duration::from_millis(300), call).await;
        assert!(cancelled.is_err());
        for _ in 0..50 {
            if pid_file.exists() && !alive(&pid_file) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the cancelled child is still running");
    }
}
