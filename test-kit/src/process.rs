//! Child processes of the test bed, with their output in a log file, stopped (SIGTERM, then
//! SIGKILL) when dropped, so nothing outlives a test.
//!
//! An interrupted run gets no destructors. The processes stay in the test binary's process group,
//! so Ctrl-C in a terminal reaches them too; and each is recorded in its owner directory's
//! `pids` file, so that the next run's [`sweep_stale_dirs`] stops whatever a killed run left.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A binary of this workspace in the running executable's target directory
/// (`target/<profile>/<name>`; a test binary is in `target/<profile>/deps`, a workspace binary
/// such as `topolvm-local-stack` in `target/<profile>`): how tests start another package's
/// binary, which cargo does not build for them. Panics, naming the command
/// that builds it, when it is missing.
pub fn workspace_binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().expect("the binary's directory");
    // Test binaries live in target/<profile>/deps, the workspace's binaries one level up.
    let dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target/<profile>")
    } else {
        dir
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p {package} --bin {name}`, with --release \
         for a benchmark)",
        path.display()
    );
    path
}

/// Resident and peak resident set of process `pid` in KiB (`VmRSS`, `VmHWM` of /proc), for
/// the benchmarks' memory numbers.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Polls `check` every 100 ms until it returns `Some`, and returns that; panics naming `what`
/// after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a process gets to exit after SIGTERM before its group is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running child process of the test bed.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ManagedProcess {
    /// Starts `command` with stdout and stderr appended to `log`, and records its pid in the
    /// `pids` file next to the log (see [`sweep_stale_dirs`]).
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Self {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening the log {log:?} of {name}: {e}"));
        let err = out.try_clone().expect("cloning a log file handle");
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        if let Some(dir) = log.parent() {
            let mut pids = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("pids"))
                .expect("opening the pids file");
            let _ = writeln!(pids, "{}", child.id());
        }
        Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while the process has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Panics with the log tail if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{} exited with {status}; last log lines:\n{}",
                self.name,
                self.log_tail(40)
            );
        }
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Ok(pid) = i32::try_from(child.id()) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl ManagedProcess {
    /// Gives up ownership without stopping the process (as a killed test run would).
    #[cfg(test)]
    fn forget(mut self) -> Child {
        let child = self.child.take().expect("running");
        std::mem::forget(self);
        child
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}\n-----",
                self.name,
                self.log.display(),
                self.log_tail(30)
            );
        }
        self.stop();
    }
}

/// Cleans up after test runs that were killed before they could: for each directory
/// `<tmp>/<prefix>*` whose `owner.pid` names a process that no longer exists, kills the processes
/// listed in its `pids` file (only those whose command line still mentions the directory, so a
/// reused pid is never touched) and removes the directory.
pub fn sweep_stale_dirs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix));
        if !is_ours {
            continue;
        }
        let owner = std::fs::read_to_string(path.join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if let Some(pid) = owner
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let listed = std::fs::read_to_string(path.join("pids")).unwrap_or_default();
            for pid in listed.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let mentions_dir =
                    String::from_utf8_lossy(&cmdline).contains(path.to_string_lossy().as_ref());
                if mentions_dir {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Records this process as the owner of `dir`, for [`sweep_stale_dirs`].
pub fn claim_dir(dir: &Path) {
    let _ = std::fs::write(dir.join("owner.pid"), std::process::id().to_string());
}

/// Ports handed out come from below the kernel's ephemeral range (32768 and up by default), so
/// an outgoing connection can never take one between [`free_port`] and the server's bind.
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// A TCP port on 127.0.0.1 that is free now and that no other caller in this process has been
/// given. Binding port 0 instead would race: the port is released before the server binds it,
/// and a parallel test's bind(0) or an outgoing connection may get it first.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    // Concurrent test processes start at different offsets.
    let start = std::process::id().wrapping_mul(7919) % span;
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = PORT_RANGE.start + u16::try_from((start + i) % span).unwrap_or(0);
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {PORT_RANGE:?}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let unique: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| PORT_RANGE.contains(p)));
    }

    #[test]
    fn stop_ends_the_process_and_logs_are_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo started; exec sleep 60");
        let mut p = ManagedProcess::spawn("sleeper", cmd, &dir.path().join("log"));
        let pid = p.child.as_ref().map(Child::id).expect("running");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.log_tail(1).contains("started") {
            assert!(Instant::now() < deadline, "no output");
            std::thread::sleep(Duration::from_millis(20));
        }
        p.assert_running();
        p.stop();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "stopped and reaped"
        );
        let pids = std::fs::read_to_string(dir.path().join("pids")).expect("pids file");
        assert_eq!(pids.trim(), pid.to_string());
    }

    #[test]
    fn a_killed_run_is_cleaned_up_by_the_next() {
        let stale = tempfile::Builder::new()
            .prefix("topolvm-sweep-test-")
            .tempdir()
            .expect("tmp");
        let live = tempfile::Builder::new()
            .prefix("topolvm-sweep-test-")
            .tempdir()
            .expect("tmp");
        // A process the dead run left behind: its command line names the run's directory.
        let mut leftover = Command::new("sh");
        leftover
            .arg("-c")
            .arg("while :; do sleep 0.1; done")
            .arg(stale.path().join("marker"));
        let p = ManagedProcess::spawn("leftover", leftover, &stale.path().join("log"));
        // Right after spawn the new program's command line may not be readable yet; a real
        // leftover has been running for a while.
        let pid = p.child.as_ref().map(Child::id).expect("running");
        let marker = stale.path().to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(
            &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        )
        .contains(&marker)
        {
            assert!(
                Instant::now() < deadline,
                "the leftover never showed its command line"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The owner is gone (pid 2^22 + 1 is above any pid_max: never a process), and no
        // destructor runs.
        std::fs::write(stale.path().join("owner.pid"), "4194305").expect("write");
        let mut child = p.forget();
        claim_dir(live.path());
        sweep_stale_dirs("topolvm-sweep-test-");
        assert!(!stale.path().exists());
        assert!(live.path().exists());
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("the sweep did not kill the leftover");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!status.success(), "the leftover was killed: {status}");
    }
}
