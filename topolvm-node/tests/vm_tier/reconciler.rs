//! The reconciler's snapshots and clones with real device-mapper (thin pool, thin and thick
//! snapshots), which the host cannot run. The test bed's control plane (etcd, kube-apiserver
//! 1.20) runs in the VM too (about a minute to start under emulation).
//!
//! LogicalVolumes made from `spec.source` as TopoLVM's controller makes them (snapshot `ro`,
//! clone `rw`, from a thin and from a thick volume) get LVs whose origin, as `lvs` reports it,
//! is the source's LV; a snapshot smaller than its source is refused with status code 3
//! (INVALID_ARGUMENT) instead of leaving the controller waiting; deleting everything removes
//! every LV.

use std::time::{Duration, Instant};

use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use topolvm_core::crd::{LogicalVolume, LogicalVolumeStatus};
use topolvm_e2e::lvm::{LvmEnv, VolumeGroup};

use super::NodeStack;

const NODE: &str = "vm-node";
const WAIT: Duration = Duration::from_secs(120);

async fn create(api: &Api<LogicalVolume>, name: &str, spec: serde_json::Value) {
    let mut spec = spec;
    spec["name"] = json!(name);
    spec["nodeName"] = json!(NODE);
    let lv: LogicalVolume = serde_json::from_value(json!({
        "apiVersion": "topolvm.io/v1",
        "kind": "LogicalVolume",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a LogicalVolume");
    api.create(&PostParams::default(), &lv)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
}

/// Waits until `name` has a status with a volume or a failure code.
async fn settled(api: &Api<LogicalVolume>, name: &str) -> (LogicalVolume, LogicalVolumeStatus) {
    let deadline = Instant::now() + WAIT;
    loop {
        let lv = api.get(name).await.expect("get");
        if let Some(status) = lv.status.clone()
            && (!status.volume_id.is_empty() || status.code != 0)
        {
            return (lv, status);
        }
        assert!(Instant::now() < deadline, "{name} did not settle");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `lvs -o lv_name,origin,lv_size` of the volume group: (name, origin, size).
fn lvs(env: &LvmEnv, vg: &VolumeGroup) -> Vec<(String, String, u64)> {
    env.lvs(vg.name(), "lv_name,origin,lv_size")
        .into_iter()
        .map(|r| {
            (
                r.get("lv_name").to_owned(),
                r.get("origin").to_owned(),
                r.get_u64("lv_size"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_clones_of_thin_and_thick_volumes() {
    let stack = NodeStack::start(NODE).await;
    let (env, vg) = (&stack.env, &stack.vg);
    let api: Api<LogicalVolume> = Api::all(stack.cluster.client());

    create(
        &api,
        "thin-src",
        json!({"size": "64Mi", "deviceClass": "thin"}),
    )
    .await;
    create(
        &api,
        "thick-src",
        json!({"size": "32Mi", "deviceClass": "thick"}),
    )
    .await;
    let (thin_src, status) = settled(&api, "thin-src").await;
    assert_eq!(status.code, 0, "{status:?}");
    let (thick_src, status) = settled(&api, "thick-src").await;
    assert_eq!(status.code, 0, "{status:?}");
    let thin_uid = thin_src.uid().expect("uid");
    let thick_uid = thick_src.uid().expect("uid");

    let made = [
        ("thin-snap", "thin-src", "thin", "ro", "64Mi", &thin_uid),
        ("thin-clone", "thin-src", "thin", "rw", "128Mi", &thin_uid),
        ("thick-snap", "thick-src", "thick", "ro", "32Mi", &thick_uid),
    ];
    for (name, source, class, access, size, _) in made {
        create(
            &api,
            name,
            json!({"size": size, "deviceClass": class, "source": source, "accessType": access}),
        )
        .await;
    }
    create(
        &api,
        "small-snap",
        json!({"size": "32Mi", "deviceClass": "thin", "source": "thin-src", "accessType": "ro"}),
    )
    .await;

    let volumes = lvs(env, vg);
    for (name, _, _, _, size, origin) in made {
        let (lv, status) = settled(&api, name).await;
        assert_eq!(status.code, 0, "{name}: {status:?}");
        let uid = lv.uid().expect("uid");
        assert_eq!(status.volume_id, uid, "{name}");
        assert_eq!(
            status.current_size.as_ref().map(|q| q.0.as_str()),
            Some(size),
            "{name}"
        );
        let volumes = if volumes.iter().any(|v| v.0 == uid) {
            volumes.clone()
        } else {
            lvs(env, vg)
        };
        let row = volumes
            .iter()
            .find(|v| v.0 == uid)
            .unwrap_or_else(|| panic!("{name}: no LV {uid} in {volumes:?}"));
        assert_eq!(
            &row.1, origin,
            "{name}: lvs reports the source's LV as origin"
        );
    }
    let (_, small) = settled(&api, "small-snap").await;
    assert_eq!(small.code, 3, "{small:?}");
    assert!(small.message.contains("smaller"), "{small:?}");

    for name in ["thin-snap", "thin-clone", "thick-snap", "small-snap"] {
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    let deadline = Instant::now() + WAIT;
    while lvs(env, vg).len() > 3 {
        assert!(
            Instant::now() < deadline,
            "snapshots not removed: {:?}",
            lvs(env, vg)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in ["thin-src", "thick-src"] {
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    loop {
        let left = api.list(&ListParams::default()).await.expect("list").items;
        let names: Vec<String> = lvs(env, vg).into_iter().map(|v| v.0).collect();
        if left.is_empty() && names == ["pool"] {
            break;
        }
        assert!(Instant::now() < deadline, "left: {left:?} {names:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
