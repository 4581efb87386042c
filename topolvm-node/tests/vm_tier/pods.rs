//! Pods that really run: the whole local stack in the VM (`topolvm_e2e::stack` with
//! `StackOptions::kubelet`) with a real kubelet 1.20 and containerd, topolvm-node registered with
//! kubelet by its built-in registrar, and pods of the test bed's busybox image that mount, write
//! and read their claims. Nothing here plays kubelet: every NodePublish, NodeUnpublish,
//! NodeExpandVolume and NodeGetVolumeStats comes from kubelet itself, and every check of the
//! data runs inside a container (`ctr tasks exec`: kubelet 1.20 refuses `--node-ip=127.0.0.1`,
//! so the Node has no address and the API server cannot reach it for `kubectl exec`).
//!
//! One stack (65-105 s to start under the VM's emulation) runs the scenarios; pods start in
//! waves, side by side, because each takes kubelet 15-80 s here and each deletion 20-100 s:
//!
//! 1. data written by a pod to ext4, xfs and btrfs claims and to a raw block claim is there
//!    for a second pod after the first was deleted (same node), on the claim's filesystem;
//! 2. claims grown while their pods run: kubelet's NodeExpandVolume, then `df` and `blockdev`
//!    inside the containers, and kubelet's `kubelet_volume_stats_*` metrics;
//! 3. `fsGroup` and `readOnly: true` as kubelet applies them;
//! 4. a CSI inline ephemeral volume and a generic ephemeral volume, made with their pod and
//!    removed with it;
//! 5. topolvm-node killed with SIGKILL while a pod uses its volume: the pod's I/O goes on; the
//!    restarted agent registers with kubelet again, and the next publish and unpublish are its;
//! 6. a VolumeSnapshot and a claim restored from it, both used by running pods.
//!
//! At the end the pods still to prove something are deleted (the ephemeral volumes go with
//! theirs; the restored claim is unpublished by the restarted agent, then deleted with its PV and
//! LV); the stack's teardown takes the rest, as after a failure.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use topolvm_core::names;
use topolvm_e2e::cluster::eventually_gone;
use topolvm_e2e::kubelet::{IDLE, app_pod, exec};
use topolvm_e2e::process::eventually;
use topolvm_e2e::sidecar_loop::snapshot_resource;
use topolvm_e2e::stack::{NodeRuntime, Stack, StackOptions, storage_class};

const MIB: u64 = 1 << 20;
/// Pods and claims under the VM's emulation: a pod Ready in about 6 s once its claim is Bound, a
/// claim Bound in a few seconds; generous for a loaded machine.
const WAIT: Duration = Duration::from_secs(240);
/// What the pods write: 4 MiB of lines naming the volume, so the expected hash is known here.
const DATA_BYTES: usize = 4 << 20;

/// The data a pod writes for `label`: `yes "topolvm-rs <label>" | head -c DATA_BYTES`.
fn data_for(label: &str) -> Vec<u8> {
    let line = format!("topolvm-rs {label}\n");
    line.bytes().cycle().take(DATA_BYTES).collect()
}

/// The `sha256sum` of [`data_for`], as the container's busybox prints it.
fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Bed {
    stack: Stack,
    client: Client,
}

impl Bed {
    fn runtime(&self) -> &NodeRuntime {
        self.stack.nodes[0]
            .runtime
            .as_ref()
            .expect("the stack runs a real kubelet")
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn claim(&self, name: &str, class: &str, bytes: u64, block: bool) {
        let mut claim = topolvm_e2e::stack::claim(name, class, bytes);
        if block {
            claim.spec.as_mut().expect("spec").volume_mode = Some("Block".into());
        }
        self.claims()
            .create(&PostParams::default(), &claim)
            .await
            .unwrap_or_else(|e| panic!("creating claim {name}: {e}"));
    }

    /// Creates pod `name` with `volumes` and the container's `mounts` (an object holding
    /// `volumeMounts` and/or `volumeDevices`), plus `spec` merged into its spec.
    async fn start_pod(
        &self,
        name: &str,
        volumes: serde_json::Value,
        mounts: serde_json::Value,
        spec: serde_json::Value,
    ) {
        let mut pod = app_pod(name, IDLE, volumes, mounts);
        if let Some(extra) = spec.as_object() {
            let mut value = serde_json::to_value(&pod).expect("pod JSON");
            for (key, v) in extra {
                value["spec"][key] = v.clone();
            }
            pod = serde_json::from_value(value).expect("a pod");
        }
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
    }

    /// [`Bed::start_pod`], then waits until its container runs.
    async fn run_pod(
        &self,
        name: &str,
        volumes: serde_json::Value,
        mounts: serde_json::Value,
        spec: serde_json::Value,
    ) {
        self.start_pod(name, volumes, mounts, spec).await;
        self.wait_running(name).await;
    }

    async fn wait_running(&self, name: &str) {
        let since = std::time::Instant::now();
        let pods = self.pods();
        let waited = tokio::time::timeout(
            WAIT,
            eventually(&format!("pod {name} running"), WAIT, || {
                let pods = pods.clone();
                async move {
                    let pod = pods.get(name).await.ok()?;
                    let running =
                        pod.status?.container_statuses?.iter().all(|c| {
                            c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some())
                        });
                    running.then_some(())
                }
            }),
        )
        .await;
        if waited.is_err() {
            let pod = self.pods().get(name).await.ok();
            panic!(
                "pod {name} did not run within {WAIT:?}: {:?}\nkubelet:\n{}",
                pod.and_then(|p| p.status),
                self.runtime().kubelet.log_tail(40)
            );
        }
        eprintln!("pods: {name} running after {:.0?}", since.elapsed());
    }

    /// Deletes the pods `names` and waits until kubelet removed them, which it does only after
    /// it tore their volumes down (NodeUnpublishVolume).
    async fn delete_pods(&self, names: &[String]) {
        for name in names {
            self.pods()
                .delete(name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("deleting pod {name}: {e}"));
        }
        let pods = self.pods();
        futures::future::join_all(
            names
                .iter()
                .map(|name| eventually_gone(&pods, name, "pod", WAIT)),
        )
        .await;
    }

    async fn exec(&self, pod: &str, script: &str) -> String {
        exec(&self.client, &self.runtime().containerd, pod, "app", script).await
    }

    /// The tags of each LV in the node's volume group.
    fn lv_tags(&self) -> Vec<String> {
        let node = &self.stack.nodes[0];
        self.stack
            .env
            .lvs(node.vg.name(), "lv_tags")
            .into_iter()
            .map(|row| row.get("lv_tags").to_owned())
            .collect()
    }
}

/// A pod volume named `data` of claim `claim`.
fn claim_volume(claim: &str, read_only: bool) -> serde_json::Value {
    json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}])
}

fn mount_at_data() -> serde_json::Value {
    json!({"volumeMounts": [{"name": "data", "mountPath": "/data"}]})
}

fn device_at_data() -> serde_json::Value {
    json!({"volumeDevices": [{"name": "data", "devicePath": "/dev/data"}]})
}

/// The first number of `df -k -P <path>`'s second line: the filesystem's size in KiB.
fn df_kib(output: &str) -> u64 {
    output
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in df output {output:?}"))
}

/// The value of kubelet's sample `metric` for claim `claim` in `default`, if present.
fn claim_metric(metrics: &str, metric: &str, claim: &str) -> Option<f64> {
    let label = format!("persistentvolumeclaim=\"{claim}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .find(|l| l.contains(&label) && l.contains("namespace=\"default\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_with_a_real_kubelet() {
    let started = std::time::Instant::now();
    let step = |name: &str| eprintln!("pods: {name} ({:.0?} in)", started.elapsed());
    let mut options = StackOptions::nodes(1, 0);
    options.real_activation = true;
    options.kubelet = true;
    let stack = Stack::start(options).await;
    let client = stack.cluster.client();
    let mut bed = Bed { stack, client };
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(bed.client.clone());
    for fs in ["ext4", "xfs", "btrfs"] {
        classes
            .create(
                &PostParams::default(),
                &storage_class(&format!("topolvm-{fs}"), fs),
            )
            .await
            .expect("a StorageClass");
    }
    step("the stack is up");

    // Pods start in waves, side by side (each pod takes kubelet 15-80 s here, a deletion 20-100 s):
    // the writers; then every pod the later scenarios look into.
    write_then_delete_the_writers(&bed).await;
    step("writers wrote and went");
    let mut second: Vec<(
        String,
        serde_json::Value,
        serde_json::Value,
        serde_json::Value,
    )> = KINDS
        .iter()
        .map(|&(kind, _, _, block)| {
            let mounts = if block {
                device_at_data()
            } else {
                mount_at_data()
            };
            (
                format!("reader-{kind}"),
                claim_volume(&format!("data-{kind}"), false),
                mounts,
                json!({}),
            )
        })
        .collect();
    second.push((
        "grouped".into(),
        claim_volume("data-xfs", false),
        mount_at_data(),
        json!({"securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}}),
    ));
    second.push((
        "read-only".into(),
        claim_volume("data-btrfs", true),
        mount_at_data(),
        json!({}),
    ));
    second.push((
        "scratch".into(),
        ephemeral_volumes(),
        ephemeral_mounts(),
        json!({}),
    ));
    for (name, volumes, mounts, spec) in &second {
        bed.start_pod(name, volumes.clone(), mounts.clone(), spec.clone())
            .await;
    }
    futures::future::join_all(second.iter().map(|(name, ..)| bed.wait_running(name))).await;
    step("the second wave runs");

    readers_find_the_data(&bed).await;
    claims_grow_while_their_pods_run(&bed).await;
    step("claims grew while their pods ran");
    fs_group_and_read_only(&bed).await;
    let scratch_uid = ephemeral_volumes_exist(&bed).await;
    the_node_agent_crashes_under_a_running_pod(&mut bed).await;
    step("topolvm-node crashed under a running pod");
    a_snapshot_restored_into_a_running_pod(&bed).await;
    step("a snapshot restored into a running pod");

    // The pods that are still to prove something go at once: `scratch`, whose ephemeral volumes
    // go with it, and `restored`, unpublished by the restarted topolvm-node; then the restored
    // claim, whose LV and PV go (DeleteVolume after kubelet's unpublish). The rest is left to the
    // stack's teardown, as after a failure (kubelet stopped, its mounts and containers gone).
    bed.delete_pods(&["scratch".to_owned(), "restored".to_owned()])
        .await;
    step("scratch and restored deleted");
    let tag = names::lv_tag_ephemeral_pod(&scratch_uid);
    eventually(
        "the inline ephemeral LV removed with its pod",
        WAIT,
        || async { (!bed.lv_tags().iter().any(|tags| tags.contains(&tag))).then_some(()) },
    )
    .await;
    eventually_gone(&bed.claims(), "scratch-generic", "claim", WAIT).await;
    let restored_pv = bed
        .claims()
        .get("restored")
        .await
        .expect("the restored claim")
        .spec
        .and_then(|s| s.volume_name)
        .expect("bound");
    bed.claims()
        .delete("restored", &DeleteParams::default())
        .await
        .expect("deleting the restored claim");
    let pvs = Api::<PersistentVolume>::all(bed.client.clone());
    eventually_gone(&pvs, &restored_pv, "PV", WAIT).await;
    // Left: the four data claims' LVs; the restored, inline and generic ones are gone.
    eventually("the restored LV removed", WAIT, || async {
        (bed.lv_tags().len() == KINDS.len()).then_some(())
    })
    .await;
    step("the restored claim removed");
}

/// The four kinds of claim, as (label, class, size, block).
const KINDS: [(&str, &str, u64, bool); 4] = [
    ("ext4", "topolvm-ext4", 64 * MIB, false),
    ("xfs", "topolvm-xfs", 320 * MIB, false),
    ("btrfs", "topolvm-btrfs", 256 * MIB, false),
    ("block", "topolvm-ext4", 64 * MIB, true),
];

/// Scenario 1, first half: a claim of each kind, written by pod `writer-<kind>`, which is then
/// deleted (kubelet unpublishes it); the LVs stay.
async fn write_then_delete_the_writers(bed: &Bed) {
    for (kind, class, size, block) in KINDS {
        bed.claim(&format!("data-{kind}"), class, size, block).await;
    }
    for (kind, _, _, block) in KINDS {
        let mounts = if block {
            device_at_data()
        } else {
            mount_at_data()
        };
        bed.start_pod(
            &format!("writer-{kind}"),
            claim_volume(&format!("data-{kind}"), false),
            mounts,
            json!({}),
        )
        .await;
    }
    let writers: Vec<String> = KINDS
        .iter()
        .map(|(kind, ..)| format!("writer-{kind}"))
        .collect();
    futures::future::join_all(writers.iter().map(|name| bed.wait_running(name))).await;
    for (kind, _, _, block) in KINDS {
        let script = if block {
            format!(
                "yes 'topolvm-rs {kind}' | head -c {DATA_BYTES} | dd of=/dev/data bs=1M conv=fsync 2>/dev/null && \
                 head -c {DATA_BYTES} /dev/data | sha256sum"
            )
        } else {
            format!(
                "yes 'topolvm-rs {kind}' | head -c {DATA_BYTES} > /data/blob && sync && sha256sum /data/blob"
            )
        };
        let out = bed.exec(&format!("writer-{kind}"), &script).await;
        assert!(
            out.starts_with(&sha256_hex(&data_for(kind))),
            "{kind}: the writer's hash {out:?}"
        );
    }
    bed.delete_pods(&writers).await;
    assert_eq!(
        bed.lv_tags().len(),
        KINDS.len(),
        "the claims' LVs outlive their pods"
    );
}

/// Scenario 1, second half: `reader-<kind>` finds what the writer wrote, on the claim's
/// filesystem.
async fn readers_find_the_data(bed: &Bed) {
    for (kind, _, _, block) in KINDS {
        let script = if block {
            format!("head -c {DATA_BYTES} /dev/data | sha256sum")
        } else {
            "sha256sum /data/blob".to_owned()
        };
        let out = bed.exec(&format!("reader-{kind}"), &script).await;
        assert!(
            out.starts_with(&sha256_hex(&data_for(kind))),
            "{kind}: what the second pod reads {out:?}"
        );
    }
    // The mounted filesystem is the claim's type: its magic number in statfs(2) (busybox's
    // `stat -f` prints it in hex; it has no name for btrfs).
    for (kind, magic) in [("ext4", "ef53"), ("xfs", "58465342"), ("btrfs", "9123683e")] {
        let out = bed
            .exec(&format!("reader-{kind}"), "stat -f -c %t /data")
            .await;
        assert_eq!(out.trim(), magic, "{kind}: the filesystem in the container");
    }
}

/// Scenario 2: the ext4 and the block claim are grown to 128 MiB while `reader-*` use them.
async fn claims_grow_while_their_pods_run(bed: &Bed) {
    let before = df_kib(&bed.exec("reader-ext4", "df -k -P /data").await);
    for kind in ["ext4", "block"] {
        bed.claims()
            .patch(
                &format!("data-{kind}"),
                &PatchParams::default(),
                &Patch::Merge(
                    &json!({"spec": {"resources": {"requests": {"storage": (128 * MIB).to_string()}}}}),
                ),
            )
            .await
            .expect("growing a claim");
    }
    // kubelet writes the claim's new capacity once its NodeExpandVolume succeeded.
    for kind in ["ext4", "block"] {
        let claims = bed.claims();
        let name = format!("data-{kind}");
        eventually(&format!("{name} expanded by kubelet"), WAIT, || {
            let (claims, name) = (claims.clone(), name.clone());
            async move {
                let c = claims.get(&name).await.ok()?;
                let status = c.status?;
                let capacity = status.capacity?.get("storage")?.0.clone();
                let pending = status.conditions.unwrap_or_default().iter().any(|c| {
                    c.type_ == names::FILESYSTEM_RESIZE_PENDING_CONDITION && c.status == "True"
                });
                (capacity == "128Mi" && !pending).then_some(())
            }
        })
        .await;
    }
    let after = df_kib(&bed.exec("reader-ext4", "df -k -P /data").await);
    assert!(
        after > before + 48 * 1024,
        "df in the container sees the grown filesystem: {before} -> {after} KiB"
    );
    let block = bed
        .exec("reader-block", "blockdev --getsize64 /dev/data")
        .await;
    assert_eq!(
        block.trim(),
        (128 * MIB).to_string(),
        "the block device's new size"
    );

    // kubelet's own view (it calls NodeGetVolumeStats every volumeStatsAggPeriod).
    let kubelet = &bed.runtime().kubelet;
    eventually(
        "kubelet_volume_stats_* of data-ext4 at its new size",
        WAIT,
        || async {
            let metrics = kubelet.metrics().await.ok()?;
            let capacity =
                claim_metric(&metrics, "kubelet_volume_stats_capacity_bytes", "data-ext4")?;
            let used = claim_metric(&metrics, "kubelet_volume_stats_used_bytes", "data-ext4")?;
            let inodes = claim_metric(&metrics, "kubelet_volume_stats_inodes", "data-ext4")?;
            (capacity >= (after * 1024) as f64 * 0.9
                && capacity <= (128 * MIB) as f64
                && used >= DATA_BYTES as f64
                && inodes > 0.0)
                .then_some(())
        },
    )
    .await;
}

/// Scenario 3: `fsGroup` (pod `grouped` on `data-xfs`) makes the volume the group's and the pod's
/// process a member of it; `readOnly: true` (pod `read-only` on `data-btrfs`) mounts it read-only
/// in the container.
async fn fs_group_and_read_only(bed: &Bed) {
    let out = bed
        .exec(
            "grouped",
            "id -G; stat -c %g /data; touch /data/by-1000 && stat -c '%u %g' /data/by-1000",
        )
        .await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].split(' ').any(|g| g == "2000"),
        "the fsGroup among the groups: {out:?}"
    );
    assert_eq!(lines[1], "2000", "the volume's group: {out:?}");
    assert_eq!(lines[2], "1000 2000", "a file made by the pod: {out:?}");

    let out = bed
        .exec(
            "read-only",
            "sha256sum /data/blob; if touch /data/nope 2>/dev/null; then echo writable; else echo refused; fi",
        )
        .await;
    assert!(out.starts_with(&sha256_hex(&data_for("btrfs"))), "{out:?}");
    assert_eq!(
        out.lines().last(),
        Some("refused"),
        "a read-only volume took a write: {out:?}"
    );
}

/// Pod `scratch`'s volumes: a CSI inline ephemeral volume of our driver and a generic ephemeral
/// volume of class `topolvm-ext4`.
fn ephemeral_volumes() -> serde_json::Value {
    json!([
        {"name": "inline", "csi": {"driver": names::PLUGIN_NAME, "volumeAttributes": {
            names::INLINE_VOLUME_SIZE_ATTRIBUTE: "64Mi",
            names::DEVICE_CLASS_PARAMETER: topolvm_e2e::stack::DEVICE_CLASS}}},
        {"name": "generic", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "topolvm-ext4",
            "resources": {"requests": {"storage": (64 * MIB).to_string()}}}}}},
    ])
}

fn ephemeral_mounts() -> serde_json::Value {
    json!({"volumeMounts": [{"name": "inline", "mountPath": "/inline"},
                            {"name": "generic", "mountPath": "/generic"}]})
}

/// Scenario 4, while `scratch` runs: both ephemeral volumes are mounted and written, the inline
/// one is an LV tagged with the pod's UID, the generic one's claim belongs to the pod (made by
/// kube-controller-manager's ephemeral volume controller). Returns the pod's UID; the teardown
/// checks that both go with the pod.
async fn ephemeral_volumes_exist(bed: &Bed) -> String {
    let out = bed
        .exec(
            "scratch",
            "echo inline > /inline/f && echo generic > /generic/f && cat /inline/f /generic/f && df -k -P /inline",
        )
        .await;
    assert!(out.starts_with("inline\ngeneric\n"), "{out:?}");
    let df = out.lines().skip(2).collect::<Vec<_>>().join("\n");
    assert!(df_kib(&df) > 32 * 1024, "the inline volume's size: {df:?}");
    let uid = bed
        .pods()
        .get("scratch")
        .await
        .expect("pod scratch")
        .uid()
        .expect("a UID");
    let tag = names::lv_tag_ephemeral_pod(&uid);
    assert_eq!(
        bed.lv_tags()
            .iter()
            .filter(|tags| tags.contains(&tag))
            .count(),
        1,
        "one inline ephemeral LV for the pod"
    );
    let generic = bed
        .claims()
        .get("scratch-generic")
        .await
        .expect("the generic claim");
    assert_eq!(
        generic.owner_references().first().map(|o| o.name.as_str()),
        Some("scratch")
    );
    uid
}

/// Scenario 5: SIGKILL of topolvm-node under `reader-ext4`; its I/O goes on (the mount is the
/// kernel's); the restarted agent offers kubelet a new registration socket, which kubelet takes
/// (its log says so a second time). The next publish and unpublish (the restored claim's, in
/// scenario 6 and the teardown) are the restarted agent's.
async fn the_node_agent_crashes_under_a_running_pod(bed: &mut Bed) {
    bed.stack.kill_agent(0);
    let out = bed
        .exec(
            "reader-ext4",
            "echo 'written while topolvm-node was down' > /data/crash && sync && cat /data/crash",
        )
        .await;
    assert_eq!(out.trim(), "written while topolvm-node was down");
    bed.stack.restart_agent(0);
    let registered = format!("Register new plugin with name: {}", names::PLUGIN_NAME);
    let kubelet = &bed.runtime().kubelet;
    eventually(
        "kubelet registered the restarted topolvm-node",
        WAIT,
        || async { (kubelet.log().matches(&registered).count() >= 2).then_some(()) },
    )
    .await;
}

/// Scenario 6: a VolumeSnapshot of `data-ext4` (used by `reader-ext4`), the data changed, and a
/// claim restored from the snapshot in a second running pod holds the snapshot's data.
async fn a_snapshot_restored_into_a_running_pod(bed: &Bed) {
    let snapshot_classes: Api<DynamicObject> = Api::all_with(
        bed.client.clone(),
        &snapshot_resource("VolumeSnapshotClass", "volumesnapshotclasses"),
    );
    let class: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": "topolvm"}, "driver": names::PLUGIN_NAME, "deletionPolicy": "Delete"}))
    .expect("a VolumeSnapshotClass");
    snapshot_classes
        .create(&PostParams::default(), &class)
        .await
        .expect("creating the VolumeSnapshotClass");
    let snapshots: Api<DynamicObject> = Api::namespaced_with(
        bed.client.clone(),
        "default",
        &snapshot_resource("VolumeSnapshot", "volumesnapshots"),
    );
    let snapshot: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "snap", "namespace": "default"},
        "spec": {"volumeSnapshotClassName": "topolvm",
                 "source": {"persistentVolumeClaimName": "data-ext4"}}}))
    .expect("a VolumeSnapshot");
    snapshots
        .create(&PostParams::default(), &snapshot)
        .await
        .expect("creating the VolumeSnapshot");
    eventually("the snapshot ready", WAIT, || {
        let snapshots = snapshots.clone();
        async move {
            let s = snapshots.get("snap").await.ok()?;
            (s.data["status"]["readyToUse"] == json!(true)).then_some(())
        }
    })
    .await;
    bed.exec(
        "reader-ext4",
        "echo 'after the snapshot' > /data/crash && sync",
    )
    .await;

    let mut restored = topolvm_e2e::stack::claim("restored", "topolvm-ext4", 128 * MIB);
    restored.spec.as_mut().expect("spec").data_source = Some(
        serde_json::from_value(json!({
        "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}))
        .expect("a data source"),
    );
    bed.claims()
        .create(&PostParams::default(), &restored)
        .await
        .expect("creating the restored claim");
    bed.run_pod(
        "restored",
        claim_volume("restored", false),
        mount_at_data(),
        json!({}),
    )
    .await;
    let out = bed
        .exec("restored", "sha256sum /data/blob; cat /data/crash")
        .await;
    assert!(out.starts_with(&sha256_hex(&data_for("ext4"))), "{out:?}");
    assert_eq!(
        out.lines().last(),
        Some("written while topolvm-node was down"),
        "the restored claim holds the snapshot's data"
    );
    assert_eq!(
        bed.exec("reader-ext4", "cat /data/crash").await.trim(),
        "after the snapshot"
    );
    // A thick origin cannot go while it has snapshots: the snapshot goes before the claims.
    snapshots
        .delete("snap", &DeleteParams::default())
        .await
        .expect("deleting the snapshot");
    eventually_gone(&snapshots, "snap", "snapshot", WAIT).await;
}
