//! Signals for real: this test binary runs itself as a child that installs the handlers and then
//! hangs in its shutdown, and the test sends it SIGTERM and SIGINT.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use topolvm_runtime::shutdown::{FORCED_EXIT_STATUS, cancel_on_signals};

/// Set in the child's environment.
const CHILD_ENV: &str = "TOPOLVM_RUNTIME_SIGNAL_CHILD";

/// Not a test by itself: `second_signal_exits_at_once` runs it in a child process.
#[test]
#[ignore = "run by second_signal_exits_at_once in a child process"]
fn child_with_a_shutdown_that_hangs() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let shutdown = cancel_on_signals().expect("handlers");
        println!("CHILD ready");
        shutdown.cancelled().await;
        println!("CHILD shutting down");
        std::future::pending::<()>().await;
    });
}

/// Kills the child if the test fails half-way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_line(lines: &mut Lines<BufReader<ChildStdout>>, want: &str) {
    for line in lines.by_ref() {
        if line.expect("child output").starts_with(want) {
            return;
        }
    }
    panic!("the child ended without printing {want:?}");
}

fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    kill(pid, signal).expect("kill");
}

fn run(first: Signal, second: Signal) {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_with_a_shutdown_that_hangs",
            "--include-ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the child");
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    wait_for_line(&mut lines, "CHILD ready");

    signal(&child.0, first);
    wait_for_line(&mut lines, "CHILD shutting down");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.0.try_wait().expect("wait").is_none(),
        "the first signal only starts the shutdown"
    );

    signal(&child.0, second);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the second signal must end the process"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(FORCED_EXIT_STATUS), "{status}");
}

#[test]
fn second_signal_exits_at_once() {
    run(Signal::SIGTERM, Signal::SIGTERM);
}

#[test]
fn interrupt_then_terminate() {
    run(Signal::SIGINT, Signal::SIGTERM);
}
