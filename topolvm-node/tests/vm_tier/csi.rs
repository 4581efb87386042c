//! The CSI node service with real device-mapper, mkfs, mount and resize. Each test makes
//! a volume group with a thick class `thick` and a thin class `thin` (the default), a real lvmd
//! with real activation, and the CSI node service from the library on a temporary socket with a
//! temporary kubelet dir. The test follows lvmd's Watch stream into the service's latest report
//! (the capacity module's job in the binary) and makes volumes through lvmd as the
//! LogicalVolume reconciler would; every CSI call goes through `topolvm_e2e::csi`, kubelet's
//! side. Judges: /proc/self/mountinfo, blkid, statvfs, the kernel's EROFS, lvmd's GetLVList.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Code;
use topolvm_e2e::csi::{InlineVolume, Kubelet, PersistentVolume, Pod};
use topolvm_e2e::lvm::{Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup};
use topolvm_e2e::mounts::Unmounter;
use topolvm_e2e::process::workspace_binary;
use topolvm_node::csi::{CsiOptions, serve};
use topolvm_node::lvmd_client::{LvmdConnection, report_channel};
use topolvm_proto::lvmd as pb;

use topolvm_e2e::lvm::vm_disks;

const MIB: u64 = 1 << 20;

/// A volume group with classes `thin` (default, pool 512 MiB, ratio 4) and `thick`, lvmd, and
/// the CSI node service on a temp socket. Fields drop in order: mounts first, the VG last.
struct Bed {
    _unmounter: Unmounter,
    kubelet: Kubelet,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
    follower: tokio::task::JoinHandle<()>,
    report: topolvm_node::lvmd_client::LatestReport,
    socket: PathBuf,
    kubelet_dir: PathBuf,
    lv: pb::lv_service_client::LvServiceClient<tonic::transport::Channel>,
    lvmd: Lvmd,
    vg: VolumeGroup,
    _env: LvmEnv,
    dir: tempfile::TempDir,
}

impl Bed {
    async fn new() -> Self {
        let env = LvmEnv::real_activation();
        let disks = vm_disks().into_iter().take(2).map(Disk::existing).collect();
        let vg = VolumeGroup::create(&env, disks);
        env.lvm(&[
            "lvcreate",
            "-q",
            "-T",
            "-L",
            "512m",
            &format!("{}/pool", vg.name()),
        ]);
        let classes = format!(
            "- {{name: thin, volume-group: {vg}, default: true, type: thin, \
             thin-pool: {{name: pool, overprovision-ratio: 4.0}}}}\n\
             - {{name: thick, volume-group: {vg}, spare-gb: 0}}",
            vg = vg.name()
        );
        let lvmd = Lvmd::start(
            &env,
            LvmdOptions::new(workspace_binary("lvmd", "lvmd"), classes),
        );
        let lv = lvmd
            .client(pb::lv_service_client::LvServiceClient::new)
            .await;

        let dir = tempfile::Builder::new()
            .prefix("topolvm-csi-")
            .tempdir()
            .expect("tempdir");
        let kubelet_dir = dir.path().join("kubelet");
        std::fs::create_dir(&kubelet_dir).expect("kubelet dir");
        let socket = dir.path().join("csi.sock");

        // The capacity module's job in the binary: follow Watch into the latest report.
        let (sender, report) = report_channel();
        let mut vgc = lvmd
            .client(pb::vg_service_client::VgServiceClient::new)
            .await;
        let mut watch = vgc.watch(pb::Empty {}).await.expect("watch").into_inner();
        let follower = tokio::spawn(async move {
            while let Ok(Some(message)) = watch.message().await {
                sender.send_replace(Some(Arc::new(message)));
            }
        });
        let mut waiting = report.clone();
        tokio::time::timeout(Duration::from_secs(30), waiting.wait_for(Option::is_some))
            .await
            .expect("lvmd's first Watch report in time")
            .expect("report channel");

        let (stop, server, kubelet) =
            start_node(&socket, &kubelet_dir, lvmd.socket_path(), &report).await;
        Self {
            _unmounter: Unmounter(dir.path().to_owned()),
            kubelet,
            stop,
            server: Some(server),
            follower,
            report,
            socket,
            kubelet_dir,
            lv,
            lvmd,
            vg,
            _env: env,
            dir,
        }
    }

    /// Restarts the CSI node service (a node restart as kubelet sees it) and reconnects.
    async fn restart_node(&mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
        let (stop, server, kubelet) = start_node(
            &self.socket,
            &self.kubelet_dir,
            self.lvmd.socket_path(),
            &self.report,
        )
        .await;
        self.stop = stop;
        self.server = Some(server);
        self.kubelet = kubelet;
    }

    /// Makes an LV as the reconciler would (CreateLV named by the volume ID).
    async fn create(&mut self, name: &str, class: &str, size: u64) -> pb::LogicalVolume {
        self.lv
            .create_lv(pb::CreateLvRequest {
                name: name.into(),
                device_class: class.into(),
                size_bytes: size as i64,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("CreateLV {name}: {e}"))
            .into_inner()
            .volume
            .expect("volume")
    }

    async fn resize(&mut self, name: &str, class: &str, size: u64) {
        self.lv
            .resize_lv(pb::ResizeLvRequest {
                name: name.into(),
                device_class: class.into(),
                size_bytes: size as i64,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("ResizeLV {name}: {e}"));
    }

    async fn snapshot(&mut self, name: &str, class: &str, source: &str, size: u64) {
        self.lv
            .create_lv_snapshot(pb::CreateLvSnapshotRequest {
                name: name.into(),
                device_class: class.into(),
                source_volume: source.into(),
                access_type: "rw".into(),
                size_bytes: size as i64,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("CreateLVSnapshot {name}: {e}"));
    }

    async fn lvs(&self, class: &str) -> Vec<pb::LogicalVolume> {
        self.lvmd
            .client(pb::vg_service_client::VgServiceClient::new)
            .await
            .get_lv_list(pb::GetLvListRequest {
                device_class: class.into(),
            })
            .await
            .expect("GetLVList")
            .into_inner()
            .volumes
    }

    fn device(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/dev/{}/{name}", self.vg.name()))
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.stop.cancel();
        self.follower.abort();
    }
}

/// Starts the CSI node service from the library on `socket` and connects kubelet to it.
async fn start_node(
    socket: &Path,
    kubelet_dir: &Path,
    lvmd_socket: &Path,
    report: &topolvm_node::lvmd_client::LatestReport,
) -> (CancellationToken, tokio::task::JoinHandle<()>, Kubelet) {
    let stop = CancellationToken::new();
    let options = CsiOptions {
        socket: socket.to_owned(),
        kubelet_dir: kubelet_dir.to_owned(),
        node_name: "vm-node".into(),
    };
    let lvmd = LvmdConnection::socket(lvmd_socket);
    let report = report.clone();
    let token = stop.clone();
    let server = tokio::spawn(async move {
        serve(
            options,
            lvmd,
            report,
            Arc::new(|| true),
            prometheus::Registry::new(),
            token,
        )
        .await
        .expect("CSI server");
    });
    for _ in 0..400 {
        if socket.exists()
            && let Ok(kubelet) = Kubelet::connect(socket, kubelet_dir).await
        {
            return (stop, server, kubelet);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the CSI socket did not come up");
}

/// The mounts at `path` in this process's mount table.
fn mounts_at(path: &Path) -> usize {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    topolvm_node::csi::mount::mount_table()
        .expect("mountinfo")
        .iter()
        .filter(|m| m.mount_point == canonical)
        .count()
}

fn blkid(device: &Path) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(device)
        .output()
        .expect("blkid");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a DOS (MBR) partition table with one Linux partition from sector 2048, 16 MiB long,
/// as fdisk would: the entry at byte 446 and the 0x55AA signature at byte 510.
fn write_dos_partition_table(device: &Path) {
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[1..4].copy_from_slice(&[0x20, 0x21, 0x00]);
    entry[4] = 0x83;
    entry[5..8].copy_from_slice(&[0x41, 0x10, 0x02]);
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&32768u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let mut f = OpenOptions::new()
        .write(true)
        .open(device)
        .expect("open device");
    f.write_all(&mbr).expect("write MBR");
    f.sync_all().expect("fsync");
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn write_file(path: &Path, content: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
    f.write_all(content).expect("write");
    f.sync_all().expect("fsync");
}

/// Publishes a filesystem of each type, keeps data across unpublish and publish, answers a
/// second publish without a second mount, reports usage and health, and NOT_FOUND for a path
/// that does not hold the volume.
#[tokio::test]
async fn filesystems_publish_keep_data_and_republish_is_a_no_op() {
    let mut bed = Bed::new().await;
    assert_eq!(bed.kubelet.probe().await.expect("Probe"), Some(true));
    let pod = Pod::new("app");
    for (fs, class, size) in [
        ("ext4", "thick", 64 * MIB),
        ("xfs", "thin", 320 * MIB),
        ("btrfs", "thick", 256 * MIB),
    ] {
        let id = format!("vol-{fs}");
        bed.create(&id, class, size).await;
        let pv = PersistentVolume::filesystem(&format!("pv-{fs}"), &id, fs);
        let target = bed.kubelet.publish(&pv, &pod).await.expect("publish");
        assert_eq!(mounts_at(&target), 1, "{fs}: one mount");
        let entry = topolvm_node::csi::mount::mounts_at(&target.canonicalize().expect("canon"))
            .expect("mountinfo")
            .pop()
            .expect("mounted");
        assert_eq!(entry.fs_type, fs);
        let mode = std::fs::metadata(&target)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o7777,
            0o2777,
            "{fs}: TopoLVM's mode on a fresh mount"
        );
        write_file(&target.join("data"), fs.as_bytes());

        bed.kubelet
            .publish(&pv, &pod)
            .await
            .expect("second publish");
        assert_eq!(
            mounts_at(&target),
            1,
            "{fs}: a second publish mounts nothing"
        );

        let stats = bed.kubelet.stats(&id, &target).await.expect("stats");
        let bytes = stats.usage.iter().find(|u| u.unit == 1).expect("bytes");
        let st = nix::sys::statvfs::statvfs(&target).expect("statvfs");
        assert_eq!(bytes.total as u64, st.blocks() * st.fragment_size(), "{fs}");
        assert!(bytes.used > 0 && bytes.available > 0 && bytes.total <= size as i64);
        if fs != "btrfs" {
            // btrfs has no fixed inode count (statvfs reports 0 files).
            let inodes = stats.usage.iter().find(|u| u.unit == 2).expect("inodes");
            assert_eq!(inodes.total as u64, st.files());
        }
        let condition = stats.volume_condition.expect("condition");
        assert!(!condition.abnormal, "{fs}: {}", condition.message);

        let elsewhere = bed.kubelet_dir.join("not-the-volume");
        std::fs::create_dir_all(&elsewhere).expect("dir");
        assert_eq!(
            code(bed.kubelet.stats(&id, &elsewhere).await),
            Code::NotFound,
            "{fs}"
        );

        bed.kubelet
            .unpublish(&id, &target)
            .await
            .expect("unpublish");
        assert!(!target.exists(), "{fs}: target removed");
        assert_eq!(mounts_at(&target), 0);
        bed.kubelet
            .unpublish(&id, &target)
            .await
            .expect("unpublish again");

        let target = bed.kubelet.publish(&pv, &pod).await.expect("publish again");
        assert_eq!(
            std::fs::read(target.join("data")).expect("data"),
            fs.as_bytes(),
            "{fs}: data survived unpublish and publish"
        );
        bed.kubelet
            .unpublish(&id, &target)
            .await
            .expect("unpublish");
    }
}

/// A block volume is the LV's device node at the target file; a second publish stacks nothing
/// (TopoLVM issue #1225); stats report its size and health; data survives a re-publish.
#[tokio::test]
async fn block_publish_is_idempotent_and_reports_its_size() {
    let mut bed = Bed::new().await;
    let pod = Pod::new("db");
    let lv = bed.create("vol-block", "thick", 64 * MIB).await;
    let pv = PersistentVolume::block("pv-block", "vol-block");
    let target = bed.kubelet.publish(&pv, &pod).await.expect("publish");
    let meta = std::fs::metadata(&target).expect("stat");
    assert!(meta.file_type().is_block_device());
    assert_eq!(
        (
            nix::sys::stat::major(meta.rdev()) as u32,
            nix::sys::stat::minor(meta.rdev()) as u32
        ),
        (lv.dev_major, lv.dev_minor)
    );
    let mut f = OpenOptions::new().write(true).open(&target).expect("open");
    f.write_all(&[0x5a; 4096]).expect("write");
    f.sync_all().expect("fsync");
    drop(f);

    bed.kubelet
        .publish(&pv, &pod)
        .await
        .expect("second publish");
    assert_eq!(mounts_at(&target), 1, "no stacked bind mount");

    let stats = bed
        .kubelet
        .stats("vol-block", &target)
        .await
        .expect("stats");
    assert_eq!(stats.usage.len(), 1);
    assert_eq!(stats.usage[0].total as u64, 64 * MIB);
    assert!(!stats.volume_condition.expect("condition").abnormal);
    let other = bed.kubelet_dir.join("plugins/other-file");
    std::fs::create_dir_all(other.parent().expect("parent")).expect("dir");
    std::fs::write(&other, b"").expect("file");
    assert_eq!(
        code(bed.kubelet.stats("vol-block", &other).await),
        Code::NotFound
    );

    bed.kubelet
        .unpublish("vol-block", &target)
        .await
        .expect("unpublish");
    assert!(!target.exists());
    assert_eq!(mounts_at(&target), 0);

    let target = bed.kubelet.publish(&pv, &pod).await.expect("publish again");
    let mut buf = [0u8; 4096];
    std::fs::File::open(&target)
        .expect("open")
        .read_exact(&mut buf)
        .expect("read");
    assert!(buf.iter().all(|b| *b == 0x5a), "data survived");
    bed.kubelet
        .unpublish("vol-block", &target)
        .await
        .expect("unpublish");
}

/// After lvmd's ResizeLV, NodeExpandVolume grows each mounted filesystem online and reports
/// the new size; a block volume just reports its size.
#[tokio::test]
async fn filesystems_grow_online_after_resize() {
    let mut bed = Bed::new().await;
    let pod = Pod::new("grow");
    for (fs, class, size, grown) in [
        ("ext4", "thick", 64 * MIB, 128 * MIB),
        ("xfs", "thin", 320 * MIB, 400 * MIB),
        ("btrfs", "thick", 256 * MIB, 320 * MIB),
    ] {
        let id = format!("grow-{fs}");
        bed.create(&id, class, size).await;
        let pv = PersistentVolume::filesystem(&format!("pv-grow-{fs}"), &id, fs);
        let target = bed.kubelet.publish(&pv, &pod).await.expect("publish");
        write_file(&target.join("kept"), b"kept");
        let before = nix::sys::statvfs::statvfs(&target).expect("statvfs");
        let before = before.blocks() * before.fragment_size();
        bed.resize(&id, class, grown).await;
        let capacity = bed
            .kubelet
            .expand(&pv, &target, grown as i64)
            .await
            .expect("expand");
        assert_eq!(capacity as u64, grown, "{fs}");
        let after = nix::sys::statvfs::statvfs(&target).expect("statvfs");
        let after = after.blocks() * after.fragment_size();
        assert!(
            after >= before + (grown - size) * 3 / 4,
            "{fs}: grew from {before} to {after}"
        );
        assert_eq!(std::fs::read(target.join("kept")).expect("kept"), b"kept");
        assert_eq!(mounts_at(&target), 1);
        bed.kubelet
            .unpublish(&id, &target)
            .await
            .expect("unpublish");
    }
    bed.create("grow-block", "thick", 64 * MIB).await;
    let pv = PersistentVolume::block("pv-grow-block", "grow-block");
    let target = bed.kubelet.publish(&pv, &pod).await.expect("publish");
    bed.resize("grow-block", "thick", 96 * MIB).await;
    let capacity = bed
        .kubelet
        .expand(&pv, &target, (96 * MIB) as i64)
        .await
        .expect("expand");
    assert_eq!(capacity as u64, 96 * MIB);
    let stats = bed
        .kubelet
        .stats("grow-block", &target)
        .await
        .expect("stats");
    assert_eq!(stats.usage[0].total as u64, 96 * MIB);
    bed.kubelet
        .unpublish("grow-block", &target)
        .await
        .expect("unpublish");
}

/// A thin snapshot of an xfs volume (same UUID: needs `nouuid`) and a thick snapshot of an ext4
/// volume mount next to their published origins and hold the origin's data.
#[tokio::test]
async fn snapshots_mount_next_to_their_origin() {
    let mut bed = Bed::new().await;
    let pod = Pod::new("snap");
    for (fs, class, size) in [("xfs", "thin", 320 * MIB), ("ext4", "thick", 64 * MIB)] {
        let origin = format!("origin-{fs}");
        bed.create(&origin, class, size).await;
        let pv = PersistentVolume::filesystem(&format!("pv-origin-{fs}"), &origin, fs);
        let target = bed
            .kubelet
            .publish(&pv, &pod)
            .await
            .expect("publish origin");
        write_file(&target.join("before-snapshot"), b"origin data");
        // What is in the page cache only would be missing from the snapshot.
        Command::new("sync").status().expect("sync");
        let snap = format!("snap-{fs}");
        bed.snapshot(&snap, class, &origin, size).await;
        let snap_pv = PersistentVolume::filesystem(&format!("pv-snap-{fs}"), &snap, fs);
        let snap_target = bed
            .kubelet
            .publish(&snap_pv, &pod)
            .await
            .expect("publish snapshot");
        assert_eq!(mounts_at(&target), 1);
        assert_eq!(mounts_at(&snap_target), 1);
        assert_eq!(
            std::fs::read(snap_target.join("before-snapshot")).expect("snapshot data"),
            b"origin data",
            "{fs}"
        );
        write_file(&snap_target.join("only-in-snapshot"), b"x");
        assert!(!target.join("only-in-snapshot").exists());
        bed.kubelet
            .unpublish(&snap, &snap_target)
            .await
            .expect("unpublish snap");
        bed.kubelet
            .unpublish(&origin, &target)
            .await
            .expect("unpublish origin");
    }
}

/// A read-only publish mounts read-only (writes fail with EROFS), never formats a blank device,
/// and conflicts with a read-write publish at the same target.
#[tokio::test]
async fn read_only_publish_refuses_writes() {
    let mut bed = Bed::new().await;
    let pod = Pod::new("ro");
    bed.create("vol-ro", "thick", 64 * MIB).await;
    let mut pv = PersistentVolume::filesystem("pv-ro", "vol-ro", "ext4");
    pv.read_only = true;
    assert_eq!(
        code(bed.kubelet.publish(&pv, &pod).await),
        Code::FailedPrecondition
    );
    assert!(
        !blkid(&bed.device("vol-ro")).contains("TYPE="),
        "nothing formatted"
    );

    pv.read_only = false;
    let target = bed.kubelet.publish(&pv, &pod).await.expect("publish rw");
    write_file(&target.join("file"), b"written rw");
    bed.kubelet
        .unpublish("vol-ro", &target)
        .await
        .expect("unpublish");

    pv.read_only = true;
    let target = bed.kubelet.publish(&pv, &pod).await.expect("publish ro");
    assert_eq!(
        std::fs::read(target.join("file")).expect("read"),
        b"written rw"
    );
    let err = std::fs::File::create(target.join("new")).expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::EROFS as i32));
    pv.read_only = false;
    assert_eq!(
        code(bed.kubelet.publish(&pv, &pod).await),
        Code::AlreadyExists
    );
    assert_eq!(mounts_at(&target), 1);
    bed.kubelet
        .unpublish("vol-ro", &target)
        .await
        .expect("unpublish");
}

/// A stray DOS partition-table signature on a blank device is wiped before mkfs; a device
/// holding another filesystem is refused and its data left intact.
#[tokio::test]
async fn stray_signatures_are_wiped_but_filesystems_never() {
    let mut bed = Bed::new().await;
    let pod = Pod::new("wipe");

    bed.create("vol-stray", "thick", 64 * MIB).await;
    let stray = bed.device("vol-stray");
    write_dos_partition_table(&stray);
    assert!(blkid(&stray).contains("PTTYPE=dos"), "{}", blkid(&stray));
    let pv = PersistentVolume::filesystem("pv-stray", "vol-stray", "ext4");
    let target = bed.kubelet.publish(&pv, &pod).await.expect("publish");
    let probed = blkid(&stray);
    assert!(probed.contains("TYPE=ext4"), "{probed}");
    assert!(
        !probed.contains("PTTYPE"),
        "the partition table was wiped: {probed}"
    );
    bed.kubelet
        .unpublish("vol-stray", &target)
        .await
        .expect("unpublish");

    bed.create("vol-xfs", "thick", 320 * MIB).await;
    let xfs = bed.device("vol-xfs");
    assert!(
        Command::new("mkfs.xfs")
            .arg("-q")
            .arg(&xfs)
            .status()
            .expect("mkfs")
            .success()
    );
    let by_hand = bed.dir.path().join("by-hand");
    std::fs::create_dir(&by_hand).expect("dir");
    assert!(
        Command::new("mount")
            .arg(&xfs)
            .arg(&by_hand)
            .status()
            .expect("mount")
            .success()
    );
    write_file(&by_hand.join("precious"), b"precious");
    assert!(
        Command::new("umount")
            .arg(&by_hand)
            .status()
            .expect("umount")
            .success()
    );

    let wrong = PersistentVolume::filesystem("pv-xfs-as-ext4", "vol-xfs", "ext4");
    let answer = bed.kubelet.publish(&wrong, &pod).await;
    assert_eq!(code(answer), Code::FailedPrecondition);
    assert!(blkid(&xfs).contains("TYPE=xfs"), "still xfs");
    assert!(
        Command::new("mount")
            .arg(&xfs)
            .arg(&by_hand)
            .status()
            .expect("mount")
            .success()
    );
    assert_eq!(
        std::fs::read(by_hand.join("precious")).expect("data"),
        b"precious"
    );
    assert!(
        Command::new("umount")
            .arg(&by_hand)
            .status()
            .expect("umount")
            .success()
    );
}

/// An inline ephemeral volume: made by the publish (size and class from its attributes, the
/// pod's ephemeral tag), used, published again after a node restart, removed by the unpublish.
#[tokio::test]
async fn inline_ephemeral_volume_is_made_used_and_removed() {
    let mut bed = Bed::new().await;
    let pod = Pod::new("scratch-user");
    let volume = InlineVolume {
        name: "scratch".into(),
        fs_type: None,
        read_only: false,
        volume_attributes: BTreeMap::from([
            ("size".to_owned(), "96Mi".to_owned()),
            ("topolvm.io/device-class".to_owned(), "thick".to_owned()),
        ]),
    };
    let (id, target) = bed
        .kubelet
        .publish_inline(&volume, &pod)
        .await
        .expect("publish");
    let made = bed
        .lvs("thick")
        .await
        .into_iter()
        .find(|v| v.name == id)
        .expect("the LV was made");
    assert_eq!(made.size_bytes as u64, 96 * MIB);
    assert!(
        made.tags
            .contains(&format!("topolvm.io/ephemeral-pod={}", pod.uid)),
        "{:?}",
        made.tags
    );
    write_file(&target.join("tmp"), b"scratch");

    // The node restarts; kubelet publishes again.
    bed.restart_node().await;
    bed.kubelet
        .publish_inline(&volume, &pod)
        .await
        .expect("publish after restart");
    assert_eq!(mounts_at(&target), 1);
    assert_eq!(std::fs::read(target.join("tmp")).expect("data"), b"scratch");
    assert_eq!(
        bed.lvs("thick")
            .await
            .iter()
            .filter(|v| v.name == id)
            .count(),
        1
    );

    bed.kubelet
        .unpublish(&id, &target)
        .await
        .expect("unpublish");
    assert!(!target.exists());
    assert!(
        bed.lvs("thick").await.iter().all(|v| v.name != id),
        "the LV is gone"
    );
    bed.kubelet
        .unpublish(&id, &target)
        .await
        .expect("unpublish again");

    // More than the class holds: lvmd's RESOURCE_EXHAUSTED reaches kubelet as it is, and the
    // target is left as kubelet made it (no mount).
    let big = InlineVolume {
        name: "too-big".into(),
        fs_type: None,
        read_only: false,
        volume_attributes: BTreeMap::from([
            ("size".to_owned(), "64Gi".to_owned()),
            ("topolvm.io/device-class".to_owned(), "thick".to_owned()),
        ]),
    };
    let refused = bed.kubelet.publish_inline(&big, &pod).await;
    assert_eq!(code(refused), Code::ResourceExhausted);
    let big_id = topolvm_e2e::csi::inline_volume_id(&pod.uid, "too-big");
    assert!(bed.lvs("thick").await.iter().all(|v| v.name != big_id));

    // A volume ID of kubelet's inline form that names a persistent volume is never removed.
    let fake = topolvm_e2e::csi::inline_volume_id("someone", "else");
    bed.create(&fake, "thick", 16 * MIB).await;
    let pv = PersistentVolume::filesystem("pv-fake", &fake, "ext4");
    let target = bed.kubelet.publish(&pv, &pod).await.expect("publish");
    bed.kubelet
        .unpublish(&fake, &target)
        .await
        .expect("unpublish");
    assert!(
        bed.lvs("thick").await.iter().any(|v| v.name == fake),
        "kept"
    );
}
