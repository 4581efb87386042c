//! topolvm-controller's snapshots, restores and clones through topolvm-node with real
//! device-mapper (thin and thick classes), which the host cannot run: the requests are the
//! sidecars' (`topolvm_e2e::csi::Sidecars`), the judges `lvs` (each LV's origin or copy
//! source), the data on the devices and the API server. Needs `target/debug/topolvm-controller` (scripts/test-vm-tier.sh builds it).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::Api;
use topolvm_core::crd::LogicalVolume;
use topolvm_e2e::csi::Sidecars;
use topolvm_e2e::lvm::{LvmEnv, VolumeGroup};
use topolvm_e2e::process::{ManagedProcess, free_port, workspace_binary};
use topolvm_proto::csi;
use topolvm_proto::csi::volume_capability::{AccessMode, AccessType, BlockVolume, access_mode};

use super::NodeStack;

const NODE: &str = "vm-node";
const MIB: i64 = 1 << 20;

/// The first `len` bytes of the LV `name`'s device.
fn first_bytes(vg: &VolumeGroup, name: &str, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    let path = format!("/dev/{}/{name}", vg.name());
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"));
    buf
}

/// Writes `len` bytes of `byte` at the start of the LV `name`'s device, synced.
fn fill(vg: &VolumeGroup, name: &str, byte: u8, len: usize) {
    let path = format!("/dev/{}/{name}", vg.name());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(&vec![byte; len])?;
            f.sync_all()
        })
        .unwrap_or_else(|e| panic!("writing {path}: {e}"));
}

/// The tags of the LV `name`.
fn lv_tags(env: &LvmEnv, vg: &VolumeGroup, name: &str) -> Vec<String> {
    env.lvs(vg.name(), "lv_name,lv_tags")
        .iter()
        .find(|r| r.get("lv_name") == name)
        .map(|r| r.tags("lv_tags"))
        .unwrap_or_else(|| panic!("{name} is not in lvs"))
}

/// `lvs -o lv_name,origin`: LV name → origin.
fn origins(env: &LvmEnv, vg: &VolumeGroup) -> BTreeMap<String, String> {
    env.lvs(vg.name(), "lv_name,origin")
        .iter()
        .map(|r| (r.get("lv_name").to_owned(), r.get("origin").to_owned()))
        .collect()
}

fn request(
    name: &str,
    class: &str,
    size: i64,
    source: Option<csi::volume_content_source::Type>,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.to_owned(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![csi::VolumeCapability {
            access_mode: Some(AccessMode {
                mode: access_mode::Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Block(BlockVolume {})),
        }],
        parameters: HashMap::from([(
            topolvm_core::names::DEVICE_CLASS_PARAMETER.to_owned(),
            class.to_owned(),
        )]),
        volume_content_source: source.map(|t| csi::VolumeContentSource { r#type: Some(t) }),
        accessibility_requirements: Some(csi::TopologyRequirement {
            requisite: vec![csi::Topology {
                segments: HashMap::from([(
                    topolvm_core::names::TOPOLOGY_NODE_KEY.to_owned(),
                    NODE.to_owned(),
                )]),
            }],
            preferred: vec![],
        }),
        ..Default::default()
    }
}

/// Grows the source `source_id` of `snapshot` (of VolumeSnapshot uid `uid`) to 40 MiB, then
/// sends its CreateSnapshot again: it must answer the same snapshot and make no second LV.
async fn grow_then_repeat(
    sidecars: &mut Sidecars,
    (env, vg): (&LvmEnv, &VolumeGroup),
    uid: &str,
    source_id: &str,
    snapshot: &csi::Snapshot,
) {
    let grown = sidecars
        .expand(csi::ControllerExpandVolumeRequest {
            volume_id: source_id.to_owned(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 40 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("growing the source: {e}"));
    assert_eq!(grown.capacity_bytes, 40 * MIB);
    let lvs_before = origins(env, vg).len();
    let again = sidecars
        .create_snapshot(Sidecars::create_snapshot_request(
            uid,
            source_id,
            &BTreeMap::new(),
        ))
        .await
        .unwrap_or_else(|e| panic!("the snapshot repeated after its source grew: {e}"));
    assert_eq!(again.snapshot_id, snapshot.snapshot_id);
    assert_eq!(origins(env, vg).len(), lvs_before, "no second LV");
}

#[tokio::test]
async fn controller_snapshots_restores_and_clones_on_thin_and_thick_classes() {
    let stack = NodeStack::start(NODE).await;
    let (cluster, env, vg, dir) = (&stack.cluster, &stack.env, &stack.vg, stack.dir.path());
    let api: Api<LogicalVolume> = Api::all(cluster.client());
    let socket = dir.join("controller.sock");
    let mut controller = Command::new(workspace_binary("topolvm-controller", "topolvm-controller"));
    controller
        .arg("--csi-socket")
        .arg(&socket)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig("topolvm-controller"))
        .arg("--leader-election=false")
        .arg("--enable-webhooks=false")
        .arg("--metrics-bind-address")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--health-probe-bind-address")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--webhook-addr")
        .arg(format!("127.0.0.1:{}", free_port()));
    let _controller = ManagedProcess::spawn(
        "topolvm-controller",
        controller,
        &dir.join("controller.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no controller socket");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sidecars = Sidecars::connect(&socket).await.expect("connect");
    // Emulated VMs are slow: give every call the time a slow cluster would need.
    sidecars.timeout = Duration::from_secs(120);

    for class in ["thin", "thick"] {
        let source = sidecars
            .create_volume(request(&format!("pvc-{class}-src"), class, 32 * MIB, None))
            .await
            .unwrap_or_else(|e| panic!("{class} source: {e}"));
        fill(vg, &source.volume_id, b'A', 4096);
        let snapshot = sidecars
            .create_snapshot(Sidecars::create_snapshot_request(
                &format!("{class}-0001"),
                &source.volume_id,
                &BTreeMap::new(),
            ))
            .await
            .unwrap_or_else(|e| panic!("{class} snapshot: {e}"));
        assert!(snapshot.ready_to_use);
        assert_eq!(snapshot.size_bytes, 32 * MIB);
        assert_eq!(snapshot.source_volume_id, source.volume_id);
        fill(vg, &source.volume_id, b'B', 4096);
        let restore = sidecars
            .create_volume(request(
                &format!("pvc-{class}-restored"),
                class,
                32 * MIB,
                Some(csi::volume_content_source::Type::Snapshot(
                    csi::volume_content_source::SnapshotSource {
                        snapshot_id: snapshot.snapshot_id.clone(),
                    },
                )),
            ))
            .await;
        let restored = restore.unwrap_or_else(|e| panic!("{class} restore: {e}"));
        assert_eq!(
            first_bytes(vg, &restored.volume_id, 4096),
            vec![b'A'; 4096],
            "{class}: the restore holds the data of the snapshot's time"
        );
        let clone = sidecars
            .create_volume(request(
                &format!("pvc-{class}-clone"),
                class,
                32 * MIB,
                Some(csi::volume_content_source::Type::Volume(
                    csi::volume_content_source::VolumeSource {
                        volume_id: source.volume_id.clone(),
                    },
                )),
            ))
            .await
            .unwrap_or_else(|e| panic!("{class} clone: {e}"));
        let lvs = origins(env, vg);
        assert_eq!(
            lvs.get(&snapshot.snapshot_id),
            Some(&source.volume_id),
            "{lvs:?}"
        );
        assert_eq!(
            lvs.get(&clone.volume_id),
            Some(&source.volume_id),
            "{lvs:?}"
        );
        assert_eq!(
            first_bytes(vg, &clone.volume_id, 4096),
            vec![b'B'; 4096],
            "{class}: the clone holds the source's current data"
        );
        // A thin restore is a thin snapshot of the snapshot; LVM cannot snapshot a thick
        // snapshot, so a thick restore is a plain volume lvmd filled with the snapshot's blocks.
        let tags = lv_tags(env, vg, &restored.volume_id);
        match class {
            "thin" => assert_eq!(
                lvs.get(&restored.volume_id),
                Some(&snapshot.snapshot_id),
                "{lvs:?}"
            ),
            _ => {
                assert_eq!(lvs.get(&restored.volume_id).map(String::as_str), Some(""));
                assert!(
                    tags.contains(&format!("topolvm.io/copy-source={}", snapshot.snapshot_id)),
                    "{tags:?}"
                );
            }
        }
        assert!(
            !tags.contains(&"topolvm.io/copy-pending".to_owned()),
            "{tags:?}"
        );
        // A restore smaller than its snapshot: OUT_OF_RANGE, before any object is made.
        let small = sidecars
            .create_volume(request(
                &format!("pvc-{class}-small"),
                class,
                16 * MIB,
                Some(csi::volume_content_source::Type::Snapshot(
                    csi::volume_content_source::SnapshotSource {
                        snapshot_id: snapshot.snapshot_id.clone(),
                    },
                )),
            ))
            .await;
        assert_eq!(
            small.map(|_| ()).map_err(|e| e.code()),
            Err(tonic::Code::OutOfRange)
        );

        // The source grows, then external-snapshotter repeats a CreateSnapshot whose answer it
        // lost: the same snapshot, not ALREADY_EXISTS for a size that changed since its cut. (LVM
        // grows the origin of a thick snapshot only while it is inactive: thin only.)
        if class == "thin" {
            let uid = format!("{class}-0001");
            grow_then_repeat(&mut sidecars, (env, vg), &uid, &source.volume_id, &snapshot).await;
        }

        for id in [&restored.volume_id, &clone.volume_id] {
            sidecars.delete_volume(id).await.expect("DeleteVolume");
        }
        sidecars
            .delete_snapshot(&snapshot.snapshot_id)
            .await
            .expect("DeleteSnapshot");
        sidecars
            .delete_volume(&source.volume_id)
            .await
            .expect("DeleteVolume");
    }
    let left = api.list(&Default::default()).await.expect("list").items;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        origins(env, vg).into_keys().collect::<Vec<_>>(),
        ["pool"],
        "every LV but the pool removed"
    );
}
