//! [`LvmWrapper`]: an `lvm-command-prefix` that shows a test when an `lvm` subcommand starts and
//! ends and can hold it back, to crash lvmd at a chosen point of a command.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::env::LvmEnv;

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
