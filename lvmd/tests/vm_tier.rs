//! VM tier: lvmd with real device-mapper.
//!
//! These tests need what this machine's kernel lacks: activation, thin pools, snapshots and the
//! block devices behind them. `scripts/test-vm-tier.sh` builds this binary and runs it once inside
//! a qemu VM (`scripts/vm/run.sh`) with scratch disks in `TOPOLVM_VM_DISKS`; run anywhere else it
//! fails. They run one at a time (`--test-threads=1`), each making its volume group on the
//! scratch disks and removing it again.
#![cfg(feature = "vm-tier")]

use topolvm_test_kit::lvm as common;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup, vm_disks};
use tonic::Code;
use topolvm_proto::lvmd as pb;

const MIB: u64 = 1 << 20;

/// A volume group on the first `n` scratch disks with real activation.
fn real_vg(n: usize) -> (LvmEnv, VolumeGroup) {
    let env = LvmEnv::real_activation();
    let disks = vm_disks().into_iter().take(n).map(Disk::existing).collect();
    let vg = VolumeGroup::create(&env, disks);
    (env, vg)
}

/// A default thin class `thin` (pool `pool`, ratio 2.0) and a thick class `thick` on `vg`.
fn thin_class(vg: &str, threshold: u32, thick_spare_gb: u64) -> String {
    format!(
        "- {{name: thin, volume-group: {vg}, default: true, type: thin, \
         thin-pool: {{name: pool, overprovision-ratio: 2.0, data-percent-threshold: {threshold}}}}}\n\
         - {{name: thick, volume-group: {vg}, spare-gb: {thick_spare_gb}}}"
    )
}

fn create_req(name: &str, class: &str, size: u64) -> pb::CreateLvRequest {
    pb::CreateLvRequest {
        name: name.into(),
        device_class: class.into(),
        size_bytes: size as i64,
        ..Default::default()
    }
}

fn snapshot_req(
    name: &str,
    class: &str,
    source: &str,
    access: &str,
    size: u64,
) -> pb::CreateLvSnapshotRequest {
    pb::CreateLvSnapshotRequest {
        name: name.into(),
        device_class: class.into(),
        source_volume: source.into(),
        access_type: access.into(),
        size_bytes: size as i64,
        ..Default::default()
    }
}

fn device(vg: &str, lv: &str) -> PathBuf {
    PathBuf::from(format!("/dev/{vg}/{lv}"))
}

/// Writes `len` bytes of `byte` at the start of `dev` and flushes them to the device.
fn fill(dev: &Path, byte: u8, len: usize) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {dev:?}: {e}"));
    let chunk = vec![byte; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    f.sync_all().expect("fsync");
}

fn first_bytes(dev: &Path, len: usize) -> Vec<u8> {
    let mut f = OpenOptions::new()
        .read(true)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {dev:?}: {e}"));
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).expect("read");
    buf
}

/// The device numbers of a block device node.
fn dev_numbers(dev: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(dev).unwrap_or_else(|e| panic!("stat {dev:?}: {e}"));
    assert!(
        meta.file_type().is_block_device(),
        "{dev:?} is not a block device"
    );
    let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
    (
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    )
}

/// Thin volumes are real block devices whose numbers lvmd reports; Watch carries the pool's real
/// data usage; once that usage passes the configured threshold new thin volumes are refused.
/// `lvmd_volumegroup_available_bytes` is, as TopoLVM's `topolvm_volumegroup_available_bytes`, the
/// volume group's free bytes as `vgs` reports them for the thin class, and those less spare-gb
/// for the thick class.
#[tokio::test]
async fn thin_volumes_are_real_devices_and_the_usage_threshold_holds() {
    let (env, vg) = real_vg(2);
    env.lvm(&[
        "lvcreate",
        "-q",
        "-T",
        "-L",
        "256m",
        &format!("{}/pool", vg.name()),
    ]);
    let lvmd = Lvmd::start(
        &env,
        LvmdOptions::new(env!("CARGO_BIN_EXE_lvmd"), thin_class(vg.name(), 40, 1))
            .extra("full-refresh-interval: 1s"),
    );
    let mut lv = lvmd
        .client(pb::lv_service_client::LvServiceClient::new)
        .await;

    let created = lv
        .create_lv(create_req("t1", "thin", 200 * MIB))
        .await
        .expect("thin volume")
        .into_inner();
    let vol = created.volume.expect("volume");
    let dev = device(vg.name(), "t1");
    assert_eq!(
        (vol.dev_major, vol.dev_minor),
        dev_numbers(&dev),
        "lvmd reports the real device numbers"
    );
    assert_eq!(vol.size_bytes as u64, 200 * MIB);
    assert!(vol.tags.contains(&"topolvm.io/managed".to_owned()));

    // 120 MiB of a 256 MiB pool: about 47 %, above the 40 % threshold.
    fill(&dev, 0xa5, (120 * MIB) as usize);
    let mut vgc = lvmd
        .client(pb::vg_service_client::VgServiceClient::new)
        .await;
    let mut watch = vgc.watch(pb::Empty {}).await.expect("watch").into_inner();
    let deadline = Instant::now() + Duration::from_secs(30);
    let usage = loop {
        let msg = tokio::time::timeout_at(deadline.into(), watch.message())
            .await
            .expect("Watch reported the pool's usage in time")
            .expect("stream")
            .expect("message");
        let item = msg
            .items
            .iter()
            .find(|i| i.device_class == "thin")
            .expect("thin item");
        let pool = item.thin_pool.expect("thin pool figures");
        assert_eq!(pool.size_bytes, 256 * MIB);
        assert_eq!(pool.overprovision_bytes, 512 * MIB - 200 * MIB);
        if pool.data_percent > 40.0 {
            break pool.data_percent;
        }
    };
    assert!(usage < 60.0, "usage {usage}");

    let vg_free = vg.sizes().get_u64("vg_free");
    let available = common::counter_by_label(
        &lvmd.metrics_text().await,
        "lvmd_volumegroup_available_bytes",
        "device_class",
    );
    assert_eq!(
        available.get("thin"),
        Some(&vg_free),
        "thin class: the VG's raw free bytes, as vgs reports them"
    );
    assert!(vg_free > 1 << 30, "two 1 GiB disks less a 256 MiB pool");
    assert_eq!(
        available.get("thick"),
        Some(&(vg_free - (1 << 30))),
        "thick class: the VG's free bytes less spare-gb 1"
    );

    let err = lv
        .create_lv(create_req("t2", "thin", 8 * MIB))
        .await
        .expect_err("pool too full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("full"), "{}", err.message());
    let metrics = lvmd.metrics_text().await;
    assert!(metrics.contains("lvmd_thinpool_data_percent"), "{metrics}");

    lv.remove_lv(pb::RemoveLvRequest {
        name: "t1".into(),
        device_class: "thin".into(),
    })
    .await
    .expect("remove");
    assert!(!dev.exists(), "the device node is gone after RemoveLV");
}

/// Thin snapshots hold the origin's data as it was; a read-only one refuses writes; a writable one
/// takes them without touching the origin; a snapshot asked to be larger than its origin is grown.
#[tokio::test]
async fn thin_snapshots_keep_their_data() {
    let (env, vg) = real_vg(1);
    env.lvm(&[
        "lvcreate",
        "-q",
        "-T",
        "-L",
        "256m",
        &format!("{}/pool", vg.name()),
    ]);
    let lvmd = Lvmd::start(
        &env,
        LvmdOptions::new(env!("CARGO_BIN_EXE_lvmd"), thin_class(vg.name(), 95, 0)),
    );
    let mut lv = lvmd
        .client(pb::lv_service_client::LvServiceClient::new)
        .await;
    lv.create_lv(create_req("origin", "thin", 32 * MIB))
        .await
        .expect("origin");
    let origin = device(vg.name(), "origin");
    fill(&origin, b'A', 4096);

    let ro = lv
        .create_lv_snapshot(snapshot_req("snap-ro", "thin", "origin", "ro", 0))
        .await
        .expect("ro snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert_eq!(ro.size_bytes as u64, 32 * MIB);
    assert_eq!(
        ro.attr.chars().nth(1),
        Some('r'),
        "read-only permission: {}",
        ro.attr
    );
    let rw = lv
        .create_lv_snapshot(snapshot_req("snap-rw", "thin", "origin", "rw", 48 * MIB))
        .await
        .expect("rw snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert_eq!(
        rw.size_bytes as u64,
        48 * MIB,
        "grown to the requested size"
    );

    fill(&origin, b'B', 4096);
    let snap_ro = device(vg.name(), "snap-ro");
    let snap_rw = device(vg.name(), "snap-rw");
    assert_eq!(
        first_bytes(&snap_ro, 4096),
        vec![b'A'; 4096],
        "the snapshot keeps the old data"
    );
    // Linux lets a read-only device be opened for writing; the write itself fails.
    let write_ro = OpenOptions::new()
        .write(true)
        .open(&snap_ro)
        .and_then(|mut f| {
            f.write_all(&[b'X'; 4096])?;
            f.sync_all()
        });
    assert!(write_ro.is_err(), "a read-only snapshot refuses writes");
    let perms = env.lvs(vg.name(), "lv_name,lv_permissions");
    let ro_row = perms
        .iter()
        .find(|r| r.get("lv_name") == "snap-ro")
        .expect("in lvs");
    assert_eq!(ro_row.get("lv_permissions"), "read-only");
    fill(&snap_rw, b'C', 4096);
    assert_eq!(
        first_bytes(&origin, 4096),
        vec![b'B'; 4096],
        "writing the snapshot leaves the origin alone"
    );

    // A repeated request is answered with the existing snapshot.
    let again = lv
        .create_lv_snapshot(snapshot_req("snap-ro", "thin", "origin", "ro", 0))
        .await
        .expect("idempotent")
        .into_inner();
    assert_eq!(again.snapshot.expect("snapshot").name, "snap-ro");
    assert_reports_agreed(&lvmd).await;
}

/// Thick copy-on-write snapshots (which TopoLVM lacks): sized by the request, reading as big as
/// their origin, holding the origin's old data, and protecting the origin from removal.
#[tokio::test]
async fn thick_snapshots_keep_their_data() {
    let (env, vg) = real_vg(2);
    let lvmd = Lvmd::start(
        &env,
        LvmdOptions::new(
            env!("CARGO_BIN_EXE_lvmd"),
            common::thick_default_class("thick", vg.name()),
        ),
    );
    let mut lv = lvmd
        .client(pb::lv_service_client::LvServiceClient::new)
        .await;
    lv.create_lv(create_req("data", "thick", 64 * MIB))
        .await
        .expect("origin");
    let origin = device(vg.name(), "data");
    fill(&origin, b'A', 4096);

    let snap = lv
        .create_lv_snapshot(snapshot_req("data-snap", "thick", "data", "ro", 16 * MIB))
        .await
        .expect("thick snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert_eq!(
        snap.size_bytes as u64,
        64 * MIB,
        "a snapshot reads as big as its origin"
    );
    let rows = env.lvs(vg.name(), "lv_name,lv_size,origin");
    let row = rows
        .iter()
        .find(|r| r.get("lv_name") == "data-snap")
        .expect("snapshot in lvs");
    assert_eq!(
        row.get_u64("lv_size"),
        16 * MIB,
        "the copy-on-write area has the requested size"
    );
    assert_eq!(row.get("origin"), "data");

    fill(&origin, b'B', 4096);
    assert_eq!(
        first_bytes(&device(vg.name(), "data-snap"), 4096),
        vec![b'A'; 4096]
    );

    let err = lv
        .remove_lv(pb::RemoveLvRequest {
            name: "data".into(),
            device_class: "thick".into(),
        })
        .await
        .expect_err("origin with snapshots");
    assert_eq!(err.code(), Code::FailedPrecondition);
    lv.remove_lv(pb::RemoveLvRequest {
        name: "data-snap".into(),
        device_class: "thick".into(),
    })
    .await
    .expect("remove snapshot");
    lv.remove_lv(pb::RemoveLvRequest {
        name: "data".into(),
        device_class: "thick".into(),
    })
    .await
    .expect("remove origin");
    assert!(env.lv_names(vg.name()).is_empty());
    assert_reports_agreed(&lvmd).await;
}

/// LVM cannot snapshot a thick snapshot, so a restore (or clone) from one is a plain volume
/// holding a copy of the snapshot's blocks: the origin's old data, not its current data, whole
/// (not only the first blocks), and outliving the snapshot and the origin. A copy found
/// unfinished, as an lvmd killed halfway leaves it, is redone before the volume is handed out.
#[tokio::test]
async fn thick_snapshots_are_restored_by_copying_their_blocks() {
    let (env, vg) = real_vg(2);
    let lvmd = Lvmd::start(
        &env,
        LvmdOptions::new(
            env!("CARGO_BIN_EXE_lvmd"),
            common::thick_default_class("thick", vg.name()),
        ),
    );
    let mut lv = lvmd
        .client(pb::lv_service_client::LvServiceClient::new)
        .await;
    lv.create_lv(create_req("data", "thick", 64 * MIB))
        .await
        .expect("origin");
    let origin = device(vg.name(), "data");
    fill(&origin, b'A', 64 * MIB as usize);
    lv.create_lv_snapshot(snapshot_req("data-snap", "thick", "data", "ro", 16 * MIB))
        .await
        .expect("thick snapshot");
    fill(&origin, b'B', 4096);

    let restored = lv
        .create_lv_snapshot(snapshot_req(
            "restored",
            "thick",
            "data-snap",
            "rw",
            96 * MIB,
        ))
        .await
        .expect("restore from a thick snapshot")
        .into_inner()
        .snapshot
        .expect("volume");
    assert_eq!(restored.size_bytes as u64, 96 * MIB);
    let rows = env.lvs(vg.name(), "lv_name,lv_size,origin,lv_tags,lv_attr");
    let row = rows
        .iter()
        .find(|r| r.get("lv_name") == "restored")
        .expect("restored in lvs");
    assert_eq!(row.get("origin"), "", "a plain volume, not a snapshot");
    assert!(
        row.get("lv_attr").starts_with("-wi-a"),
        "{}",
        row.get("lv_attr")
    );
    let tags = row.tags("lv_tags");
    assert!(
        tags.contains(&"topolvm.io/copy-source=data-snap".to_owned()),
        "{tags:?}"
    );
    assert!(
        !tags.contains(&"topolvm.io/copy-pending".to_owned()),
        "{tags:?}"
    );
    let copy = device(vg.name(), "restored");
    assert!(
        first_bytes(&copy, 64 * MIB as usize) == vec![b'A'; 64 * MIB as usize],
        "the restored volume holds the snapshot's data over its whole size"
    );
    // A repeat is answered with the same volume, not copied over again.
    fill(&copy, b'C', 4096);
    lv.create_lv_snapshot(snapshot_req(
        "restored",
        "thick",
        "data-snap",
        "rw",
        96 * MIB,
    ))
    .await
    .expect("repeat");
    assert_eq!(first_bytes(&copy, 4096), vec![b'C'; 4096]);
    assert_eq!(
        first_bytes(&device(vg.name(), "data-snap"), 4096),
        vec![b'A'; 4096],
        "writing the copy leaves the snapshot alone"
    );
    for name in ["data-snap", "data"] {
        lv.remove_lv(pb::RemoveLvRequest {
            name: name.into(),
            device_class: "thick".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("remove {name}: {e}"));
    }
    assert_eq!(
        first_bytes(&copy, 4096),
        vec![b'C'; 4096],
        "the copy outlives its source"
    );

    // An unfinished copy: the volume made and marked, its blocks garbage.
    lv.create_lv(create_req("data2", "thick", 32 * MIB))
        .await
        .expect("origin 2");
    fill(&device(vg.name(), "data2"), b'D', 32 * MIB as usize);
    lv.create_lv_snapshot(snapshot_req("data2-snap", "thick", "data2", "ro", 8 * MIB))
        .await
        .expect("snapshot 2");
    env.lvm(&[
        "lvcreate",
        "-n",
        "half",
        "-L",
        "32m",
        "-y",
        "--addtag",
        "topolvm.io/managed",
        "--addtag",
        "topolvm.io/volume=half",
        "--addtag",
        "topolvm.io/device-class=thick",
        "--addtag",
        "topolvm.io/copy-source=data2-snap",
        "--addtag",
        "topolvm.io/copy-pending",
        vg.name(),
    ]);
    let half = device(vg.name(), "half");
    fill(&half, b'Z', 32 * MIB as usize);
    lv.create_lv_snapshot(snapshot_req("half", "thick", "data2-snap", "rw", 32 * MIB))
        .await
        .expect("the unfinished copy is finished");
    assert!(first_bytes(&half, 32 * MIB as usize) == vec![b'D'; 32 * MIB as usize]);
    let rows = env.lvs(vg.name(), "lv_name,lv_tags");
    let row = rows
        .iter()
        .find(|r| r.get("lv_name") == "half")
        .expect("half in lvs");
    assert!(
        !row.tags("lv_tags")
            .contains(&"topolvm.io/copy-pending".to_owned())
    );

    for name in ["restored", "half", "data2-snap", "data2"] {
        lv.remove_lv(pb::RemoveLvRequest {
            name: name.into(),
            device_class: "thick".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("remove {name}: {e}"));
    }
    assert!(env.lv_names(vg.name()).is_empty());
}

/// Every answer came before its confirming report, and every report agreed with the change lvmd
/// recorded (real activation: device numbers, thin and snapshot sizes, copy-on-write areas).
async fn assert_reports_agreed(lvmd: &Lvmd) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = lvmd.log();
    assert!(!log.contains("disagrees"), "{log}");
}

/// A filesystem on a volume lvmd made, grown online after ResizeLV: what topolvm-node will do.
#[tokio::test]
async fn filesystem_grows_online_after_resize() {
    let (env, vg) = real_vg(1);
    let lvmd = Lvmd::start(
        &env,
        LvmdOptions::new(
            env!("CARGO_BIN_EXE_lvmd"),
            common::thick_default_class("ssd", vg.name()),
        ),
    );
    let mut lv = lvmd
        .client(pb::lv_service_client::LvServiceClient::new)
        .await;
    lv.create_lv(create_req("fs", "", 64 * MIB))
        .await
        .expect("create");
    let dev = device(vg.name(), "fs");
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .expect(program);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dev_s = dev.to_string_lossy().into_owned();
    run("mkfs.ext4", &["-q", &dev_s]);
    let mnt = tempfile::tempdir().expect("mount point");
    let mnt_s = mnt.path().to_string_lossy().into_owned();
    run("mount", &[&dev_s, &mnt_s]);
    let _unmount = Unmount(mnt_s.clone());
    std::fs::write(mnt.path().join("hello"), "world").expect("write a file");
    let before = nix::sys::statvfs::statvfs(mnt.path()).expect("statvfs");

    let size = lv
        .resize_lv(pb::ResizeLvRequest {
            name: "fs".into(),
            size_bytes: (128 * MIB) as i64,
            ..Default::default()
        })
        .await
        .expect("resize")
        .into_inner()
        .size_bytes;
    assert_eq!(size as u64, 128 * MIB);
    run("resize2fs", &[&dev_s]);
    let after = nix::sys::statvfs::statvfs(mnt.path()).expect("statvfs");
    assert!(
        after.blocks() * after.fragment_size()
            > before.blocks() * before.fragment_size() + 48 * MIB,
        "the filesystem grew"
    );
    assert_eq!(
        std::fs::read_to_string(mnt.path().join("hello")).expect("read"),
        "world"
    );
}

/// Unmounts on drop so a failing test leaves no mount behind.
struct Unmount(String);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
