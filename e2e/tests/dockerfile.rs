//! The image definition `Dockerfile` against the workspace and the chart, without Docker (there
//! is none on the test machines): what it copies from the build context exists, the binaries it
//! builds are binary targets of the workspace's packages, and every program a container of the
//! plain manifests (rendered from the chart) runs is in the image at that path.
//!
//! ```text
//! cargo test -p topolvm-e2e --test dockerfile
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("the Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// (package, binary targets) of the workspace and the packages' directories, from
/// `cargo metadata`.
fn workspace() -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<PathBuf>) {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    assert!(output.status.success(), "cargo metadata");
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let root = root().canonicalize().expect("the workspace");
    let dirs = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            Path::new(p["manifest_path"].as_str().expect("a manifest path"))
                .parent()
                .expect("a directory")
                .strip_prefix(&root)
                .expect("inside the workspace")
                .to_owned()
        })
        .collect();
    let binaries = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let bins = p["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .filter(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "bin"))
                })
                .map(|t| t["name"].as_str().expect("a name").to_owned())
                .collect();
            (p["name"].as_str().expect("a name").to_owned(), bins)
        })
        .collect();
    (binaries, dirs)
}

/// The programs (command[0]) of every container in the plain manifests.
fn programs_the_manifests_run() -> BTreeSet<String> {
    fn walk(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                if let Some(containers) = map.get("containers").and_then(Value::as_array) {
                    for c in containers {
                        if let Some(program) = c["command"][0].as_str() {
                            out.insert(program.to_owned());
                        }
                    }
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("deploy/manifests")).expect("deploy/manifests") {
        let text = std::fs::read_to_string(entry.expect("an entry").path()).expect("a manifest");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            walk(&Value::deserialize(doc).expect("YAML"), &mut out);
        }
    }
    out
}

#[test]
fn the_dockerfile_copies_what_exists_and_holds_every_binary_the_chart_runs() {
    let instructions = instructions();
    let (binaries, package_dirs) = workspace();
    let mut context_sources = BTreeSet::new();

    // COPY from the build context: every source exists.
    let mut copied_into_image = BTreeSet::new();
    let mut stage = 0;
    for instruction in &instructions {
        let words: Vec<&str> = instruction.split_whitespace().collect();
        match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
            Some("FROM") => stage += 1,
            Some("COPY") => {
                let from_builder = words.iter().any(|w| w.starts_with("--from="));
                let paths: Vec<&str> = words[1..]
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (destination, sources) = paths.split_last().expect("COPY src... dest");
                if from_builder {
                    copied_into_image.insert((*destination).to_owned());
                } else {
                    for source in sources {
                        context_sources.insert(PathBuf::from(source));
                        assert!(
                            root().join(source).exists(),
                            "COPY {source}: not in the workspace"
                        );
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(stage, 2, "a builder stage and a runtime stage");
    // Every package of the workspace is in the build context (Cargo.toml lists them all).
    for dir in &package_dirs {
        assert!(
            context_sources.contains(dir),
            "the workspace member {} is not copied",
            dir.display()
        );
    }

    // `cargo build -p P --bin B ...`: each B is a binary of the P before it.
    let build = instructions
        .iter()
        .find(|i| i.contains("cargo build"))
        .expect("a cargo build");
    let words: Vec<&str> = build.split_whitespace().collect();
    let mut package = None;
    let mut built = BTreeSet::new();
    for pair in words.windows(2) {
        match pair[0] {
            "-p" => package = Some(pair[1]),
            "--bin" => {
                let p = package.expect("--bin after -p");
                assert!(
                    binaries.get(p).is_some_and(|b| b.contains(pair[1])),
                    "{p} has no binary {}: {binaries:?}",
                    pair[1]
                );
                built.insert(pair[1].to_owned());
            }
            _ => {}
        }
    }
    for (package, bins) in [
        ("lvmd", "lvmd"),
        ("topolvm-node", "topolvm-node"),
        ("topolvm-controller", "topolvm-controller"),
        ("topolvm-scheduler", "topolvm-scheduler"),
    ] {
        assert!(built.contains(bins), "{package}'s {bins} is built");
    }
    for path in &copied_into_image {
        let name = path.trim_start_matches('/');
        assert!(built.contains(name), "{path} is copied but not built");
    }

    // Every program the chart's containers run is in the image at that path.
    let programs = programs_the_manifests_run();
    assert!(programs.len() >= 4, "{programs:?}");
    for program in programs {
        assert!(
            copied_into_image.contains(&program),
            "the manifests run {program}, the image has {copied_into_image:?}"
        );
    }

    // The runtime stage installs the tools topolvm-node and lvmd call.
    let runtime = instructions
        .iter()
        .rev()
        .find(|i| i.contains("apt-get install"))
        .expect("the runtime packages");
    for package in [
        "e2fsprogs",
        "xfsprogs",
        "btrfs-progs",
        "util-linux",
        "mount",
        "lvm2",
    ] {
        assert!(
            runtime.split_whitespace().any(|w| w == package),
            "{package} in the runtime image"
        );
    }
}
