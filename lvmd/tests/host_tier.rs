//! The host tier: a real lvmd process, its real Unix socket, a real tonic client, and real lvm2 in
//! metadata-only mode (`activation = 0`) on loop devices.
//!
//! Runs only with the `host-tier` feature, as root:
//!
//! ```text
//! cargo test -p lvmd --features host-tier --test host_tier
//! ```
//!
//! Every test has its own `LVM_SYSTEM_DIR` (which sees only that test's loop devices and locks
//! in its own directory), its own volume groups, lvmd process, socket and metrics port, so the
//! tests run in parallel. Thin pools and snapshots need device-mapper and belong to the VM tier.
#![cfg(feature = "host-tier")]

use topolvm_core::names::LV_TAG_MANAGED;
use topolvm_test_kit::lvm as common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::{DEFAULT_LOOP_SIZE, Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup};
use tonic::Code;
use tonic::transport::Channel;
use topolvm_proto::lvmd as pb;
use topolvm_proto::lvmd::lv_service_client::LvServiceClient;
use topolvm_proto::lvmd::vg_service_client::VgServiceClient;

const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;
/// Where the uid-65534 helper finds the socket.
const SOCKET_ENV: &str = "TOPOLVM_HOST_TIER_SOCKET";

/// Options for one thick class; the periodic refresh is pushed out of the way so `lvm` command
/// counts only move because of what the test does.
fn one_thick_class(vg: &VolumeGroup) -> LvmdOptions {
    LvmdOptions::new(
        env!("CARGO_BIN_EXE_lvmd"),
        common::thick_default_class("ssd", vg.name()),
    )
    .extra("full-refresh-interval: 10m")
}

fn create_req(name: &str, size_bytes: i64) -> pb::CreateLvRequest {
    pb::CreateLvRequest {
        name: name.to_owned(),
        device_class: "ssd".to_owned(),
        size_bytes,
        ..Default::default()
    }
}

async fn create(lv: &mut LvServiceClient<Channel>, req: pb::CreateLvRequest) -> pb::LogicalVolume {
    let name = req.name.clone();
    lv.create_lv(req)
        .await
        .unwrap_or_else(|s| panic!("CreateLV {name}: {s:?}"))
        .into_inner()
        .volume
        .expect("CreateLV returns the volume")
}

async fn free_bytes(vg: &mut VgServiceClient<Channel>, class: &str) -> u64 {
    vg.get_free_bytes(pb::GetFreeBytesRequest {
        device_class: class.to_owned(),
    })
    .await
    .unwrap_or_else(|s| panic!("GetFreeBytes {class}: {s:?}"))
    .into_inner()
    .free_bytes
}

async fn lv_list(vg: &mut VgServiceClient<Channel>, class: &str) -> Vec<pb::LogicalVolume> {
    let mut lvs = vg
        .get_lv_list(pb::GetLvListRequest {
            device_class: class.to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("GetLVList {class}: {s:?}"))
        .into_inner()
        .volumes;
    lvs.sort_by(|a, b| a.name.cmp(&b.name));
    lvs
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// `(name, size)` of every LV in `vg` as `lvs` reports it, sorted by name.
fn lvs_sizes(env: &LvmEnv, vg: &str) -> Vec<(String, u64)> {
    let mut rows: Vec<(String, u64)> = env
        .lvs(vg, "lv_name,lv_size")
        .iter()
        .map(|r| (r.get("lv_name").to_owned(), r.get_u64("lv_size")))
        .collect();
    rows.sort();
    rows
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The full life cycle against real LVM: CreateLV makes an LV carrying lvmd's ownership tags
/// (as `lvs` itself shows), GetLVList sizes equal `lvs` sizes, GetFreeBytes falls and rises by
/// exactly the LV's size, ResizeLV grows it, RemoveLV removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_resize_remove_round_trip() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let lvmd = Lvmd::start(&env, one_thick_class(&vg));
    let mut lv = lvmd.client(LvServiceClient::new).await;
    let mut vgc = lvmd.client(VgServiceClient::new).await;

    let free0 = free_bytes(&mut vgc, "ssd").await;
    assert_eq!(free0, vg.sizes().get_u64("vg_free"), "spare-gb is 0");
    assert!(lv_list(&mut vgc, "ssd").await.is_empty());

    let mut req = create_req("roundtrip", 20 * MIB);
    req.tags = vec!["team=storage".to_owned()];
    let created = create(&mut lv, req).await;
    assert_eq!(created.name, "roundtrip");
    assert_eq!(created.size_bytes, 20 * MIB);

    let rows = env.lvs(vg.name(), "lv_name,lv_size,lv_tags");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let tags = rows[0].tags("lv_tags");
    for want in [
        LV_TAG_MANAGED,
        "topolvm.io/volume=roundtrip",
        "team=storage",
    ] {
        assert!(
            tags.iter().any(|t| t == want),
            "lvs tags {tags:?} lack {want}"
        );
    }
    assert_eq!(free_bytes(&mut vgc, "ssd").await, free0 - (20 << 20));

    let listed = lv_list(&mut vgc, "ssd").await;
    let listed: Vec<(String, u64)> = listed
        .iter()
        .map(|v| (v.name.clone(), v.size_bytes as u64))
        .collect();
    assert_eq!(listed, lvs_sizes(&env, vg.name()));

    let resized = lv
        .resize_lv(pb::ResizeLvRequest {
            name: "roundtrip".into(),
            device_class: "ssd".into(),
            size_bytes: 40 * MIB,
            ..Default::default()
        })
        .await
        .expect("ResizeLV")
        .into_inner();
    assert_eq!(resized.size_bytes, 40 * MIB);
    assert_eq!(
        lvs_sizes(&env, vg.name()),
        vec![("roundtrip".to_owned(), 40 << 20)]
    );
    assert_eq!(free_bytes(&mut vgc, "ssd").await, free0 - (40 << 20));
    assert_eq!(lv_list(&mut vgc, "ssd").await[0].size_bytes, 40 * MIB);

    lv.remove_lv(pb::RemoveLvRequest {
        name: "roundtrip".into(),
        device_class: "ssd".into(),
    })
    .await
    .expect("RemoveLV");
    assert!(env.lv_names(vg.name()).is_empty());
    assert!(lv_list(&mut vgc, "ssd").await.is_empty());
    assert_eq!(free_bytes(&mut vgc, "ssd").await, free0);

    // Each answer came before its confirming report; every report agreed with what lvmd recorded.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = lvmd.log();
    assert!(!log.contains("disagrees"), "{log}");
}

/// Each mutation costs exactly one `lvm` fork for the change on the request path plus one state
/// refresh (`fullreport`) that confirms it in the background, and reads (GetLVList,
/// GetFreeBytes) and an idempotent repeat of CreateLV cost none: lvmd answers them from its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mutation_forks_lvm_at_most_twice_and_reads_never() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let lvmd = Lvmd::start(&env, one_thick_class(&vg));
    let mut lv = lvmd.client(LvServiceClient::new).await;
    let mut vgc = lvmd.client(VgServiceClient::new).await;

    let before = lvmd.lvm_command_counts().await;
    assert!(
        before.get("fullreport").is_some_and(|n| *n >= 1),
        "the start-up refresh is counted: {before:?}"
    );
    create(&mut lv, create_req("forks", 8 * MIB)).await;
    let after_create = settled_counts(&lvmd, &before).await;
    assert_one_change_and_one_refresh("CreateLV", "lvcreate", &before, &after_create);

    lv_list(&mut vgc, "ssd").await;
    free_bytes(&mut vgc, "ssd").await;
    create(&mut lv, create_req("forks", 8 * MIB)).await;
    assert_eq!(
        lvmd.lvm_command_counts().await,
        after_create,
        "reads and an idempotent CreateLV must not run lvm"
    );

    lv.resize_lv(pb::ResizeLvRequest {
        name: "forks".into(),
        device_class: "ssd".into(),
        size_bytes: 16 * MIB,
        ..Default::default()
    })
    .await
    .expect("ResizeLV");
    let after_resize = settled_counts(&lvmd, &after_create).await;
    assert_one_change_and_one_refresh("ResizeLV", "lvextend", &after_create, &after_resize);

    lv.remove_lv(pb::RemoveLvRequest {
        name: "forks".into(),
        device_class: "ssd".into(),
    })
    .await
    .expect("RemoveLV");
    let after_remove = settled_counts(&lvmd, &after_resize).await;
    assert_one_change_and_one_refresh("RemoveLV", "lvremove", &after_resize, &after_remove);
}

/// The `lvm` command counts once the background refresh after a mutation has run: waits (up to
/// 5 s) for one more `fullreport` than in `before`, then 300 ms more for anything that follows.
async fn settled_counts(lvmd: &Lvmd, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let reports_before = before.get("fullreport").copied().unwrap_or(0);
    eventually(
        Duration::from_secs(5),
        "the confirming fullreport",
        || async {
            let counts = lvmd.lvm_command_counts().await;
            (counts.get("fullreport").copied().unwrap_or(0) > reports_before).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    lvmd.lvm_command_counts().await
}

/// Asserts that between two `lvm_command_counts` exactly one `subcommand` and at most one
/// `fullreport` ran, and nothing else (so at most two forks).
fn assert_one_change_and_one_refresh(
    rpc: &str,
    subcommand: &str,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) {
    let delta: BTreeMap<&str, u64> = after
        .iter()
        .map(|(k, v)| (k.as_str(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    let total: u64 = delta.values().sum();
    assert!(
        delta.get(subcommand) == Some(&1)
            && delta.get("fullreport").copied().unwrap_or(0) <= 1
            && delta.len() <= 2
            && total <= 2,
        "{rpc} should run one {subcommand} and at most one fullreport; ran {delta:?}"
    );
}

/// Retries are safe: the same CreateLV returns the same LV, a conflicting size is
/// ALREADY_EXISTS, removing a missing LV is OK, resizing to the current size is OK, and
/// shrinking is OUT_OF_RANGE; `lvs` shows one LV of the first size throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_are_idempotent() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let lvmd = Lvmd::start(&env, one_thick_class(&vg));
    let mut lv = lvmd.client(LvServiceClient::new).await;

    // 10 MiB rounds up to 12 MiB (4 MiB extents); a retry asks for 10 MiB again.
    let first = create(&mut lv, create_req("idem", 10 * MIB)).await;
    assert_eq!(first.size_bytes, 12 * MIB);
    let again = create(&mut lv, create_req("idem", 10 * MIB)).await;
    assert_eq!(again, first);

    let conflict = lv.create_lv(create_req("idem", 40 * MIB)).await;
    assert_eq!(code(conflict), Code::AlreadyExists);

    let removed = lv
        .remove_lv(pb::RemoveLvRequest {
            name: "never-made".into(),
            device_class: "ssd".into(),
        })
        .await;
    assert_eq!(code(removed), Code::Ok);

    let resize = |size_bytes| pb::ResizeLvRequest {
        name: "idem".into(),
        device_class: "ssd".into(),
        size_bytes,
        ..Default::default()
    };
    let same = lv.resize_lv(resize(12 * MIB)).await.expect("same size");
    assert_eq!(same.into_inner().size_bytes, 12 * MIB);
    assert_eq!(code(lv.resize_lv(resize(4 * MIB)).await), Code::OutOfRange);

    assert_eq!(
        lvs_sizes(&env, vg.name()),
        vec![("idem".to_owned(), 12 << 20)]
    );
}

/// A CreateLV (or ResizeLV) larger than the volume group is refused with RESOURCE_EXHAUSTED from
/// the cached free space, without forking `lvm`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_space_is_refused_without_forking_lvm() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let lvmd = Lvmd::start(&env, one_thick_class(&vg));
    let mut lv = lvmd.client(LvServiceClient::new).await;
    create(&mut lv, create_req("small", 8 * MIB)).await;

    let before = lvmd.lvm_command_count().await;
    let status = lv
        .create_lv(create_req("huge", GIB))
        .await
        .expect_err("1 GiB does not fit into 124 MiB");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let status = lv
        .resize_lv(pb::ResizeLvRequest {
            name: "small".into(),
            device_class: "ssd".into(),
            size_bytes: GIB,
            ..Default::default()
        })
        .await
        .expect_err("growing to 1 GiB does not fit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(lvmd.lvm_command_count().await, before, "no lvm fork");
    assert_eq!(env.lv_names(vg.name()), vec!["small".to_owned()]);
}

/// Hostile or malformed input never reaches `lvm`: bad names, sizes and tags and an unknown
/// lvcreate option class are INVALID_ARGUMENT, an unknown device class is NOT_FOUND, no `lvm`
/// command runs and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_before_lvm_runs() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let lvmd = Lvmd::start(&env, one_thick_class(&vg));
    let mut lv = lvmd.client(LvServiceClient::new).await;
    let mut vgc = lvmd.client(VgServiceClient::new).await;
    let before = lvmd.lvm_command_count().await;

    let long = "a".repeat(128);
    for name in ["-rf", "a b", "$(x)", "", long.as_str()] {
        let status = lv.create_lv(create_req(name, 8 * MIB)).await;
        assert_eq!(
            code(status),
            Code::InvalidArgument,
            "CreateLV name {name:?}"
        );
        let status = lv
            .remove_lv(pb::RemoveLvRequest {
                name: name.into(),
                device_class: "ssd".into(),
            })
            .await;
        assert_eq!(
            code(status),
            Code::InvalidArgument,
            "RemoveLV name {name:?}"
        );
        let status = lv
            .resize_lv(pb::ResizeLvRequest {
                name: name.into(),
                device_class: "ssd".into(),
                size_bytes: 8 * MIB,
                ..Default::default()
            })
            .await;
        assert_eq!(
            code(status),
            Code::InvalidArgument,
            "ResizeLV name {name:?}"
        );
    }
    for size in [0, -1, -8 * MIB] {
        let status = lv.create_lv(create_req("sized", size)).await;
        assert_eq!(code(status), Code::InvalidArgument, "size {size}");
    }
    for tag in ["a b", "-x", "$(reboot)", LV_TAG_MANAGED] {
        let mut req = create_req("tagged", 8 * MIB);
        req.tags = vec![tag.to_owned()];
        let status = lv.create_lv(req).await;
        assert_eq!(code(status), Code::InvalidArgument, "tag {tag:?}");
    }
    let mut req = create_req("optioned", 8 * MIB);
    req.lvcreate_option_class = "no-such-options".into();
    assert_eq!(code(lv.create_lv(req).await), Code::InvalidArgument);

    let mut req = create_req("classless", 8 * MIB);
    req.device_class = "no-such-class".into();
    assert_eq!(code(lv.create_lv(req).await), Code::NotFound);
    let status = vgc
        .get_free_bytes(pb::GetFreeBytesRequest {
            device_class: "no-such-class".into(),
        })
        .await;
    assert_eq!(code(status), Code::NotFound);

    assert_eq!(lvmd.lvm_command_count().await, before, "no lvm fork");
    assert!(env.lv_names(vg.name()).is_empty());
}

/// A class with `stripe: 2` and `stripe-size: 64k` creates an LV striped over both physical
/// volumes, as `lvs -o stripes,stripe_size` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn striped_class_creates_striped_lv() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(
        &env,
        vec![
            Disk::loop_device(DEFAULT_LOOP_SIZE),
            Disk::loop_device(DEFAULT_LOOP_SIZE),
        ],
    );
    let class = format!(
        "- {{name: ssd, volume-group: {}, default: true, spare-gb: 0, stripe: 2, stripe-size: 64k}}",
        vg.name()
    );
    let lvmd = Lvmd::start(&env, LvmdOptions::new(env!("CARGO_BIN_EXE_lvmd"), class));
    let mut lv = lvmd.client(LvServiceClient::new).await;

    let created = create(&mut lv, create_req("striped", 16 * MIB)).await;
    assert_eq!(created.size_bytes, 16 * MIB);
    let rows = env.lvs(vg.name(), "lv_name,stripes,stripe_size");
    assert_eq!(rows.len(), 1, "one segment: {rows:?}");
    assert_eq!(rows[0].get_u64("stripes"), 2);
    assert_eq!(rows[0].get_u64("stripe_size"), 64 << 10);
}

/// A device class whose volume group is missing does not stop lvmd: the other class serves,
/// the missing one is UNAVAILABLE and shows 0 in Watch, and once the volume group is created
/// outside lvmd the periodic refresh makes the class usable within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_volume_group_is_unavailable_until_it_appears() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let later_name = VolumeGroup::unique_name();
    let classes = format!(
        "{}\n- {{name: later, volume-group: {later_name}, spare-gb: 0}}",
        common::thick_default_class("ssd", vg.name())
    );
    let lvmd = Lvmd::start(
        &env,
        LvmdOptions::new(env!("CARGO_BIN_EXE_lvmd"), classes).extra("full-refresh-interval: 2s"),
    );
    let mut lv = lvmd.client(LvServiceClient::new).await;
    let mut vgc = lvmd.client(VgServiceClient::new).await;

    assert!(free_bytes(&mut vgc, "ssd").await > 0);
    create(&mut lv, create_req("served", 8 * MIB)).await;
    let mut req = create_req("waiting", 8 * MIB);
    req.device_class = "later".into();
    assert_eq!(code(lv.create_lv(req.clone()).await), Code::Unavailable);
    let status = vgc
        .get_free_bytes(pb::GetFreeBytesRequest {
            device_class: "later".into(),
        })
        .await;
    assert_eq!(code(status), Code::Unavailable);

    let mut watch = vgc.watch(pb::Empty {}).await.expect("Watch").into_inner();
    let first = watch
        .message()
        .await
        .expect("Watch message")
        .expect("Watch stream open");
    let later = first
        .items
        .iter()
        .find(|i| i.device_class == "later")
        .expect("Watch lists the missing class");
    assert_eq!((later.free_bytes, later.size_bytes), (0, 0));
    assert!(
        first
            .items
            .iter()
            .any(|i| i.device_class == "ssd" && i.free_bytes > 0)
    );

    let _later_vg = VolumeGroup::create_named(
        &env,
        &later_name,
        vec![Disk::loop_device(DEFAULT_LOOP_SIZE)],
    );
    let free = eventually(
        Duration::from_secs(10),
        "the new volume group becomes usable",
        || {
            let mut vgc = vgc.clone();
            async move {
                vgc.get_free_bytes(pb::GetFreeBytesRequest {
                    device_class: "later".into(),
                })
                .await
                .ok()
                .map(|r| r.into_inner().free_bytes)
            }
        },
    )
    .await;
    assert!(free > 0);
    let created = create(&mut lv, req).await;
    assert_eq!(created.size_bytes, 8 * MIB);
    assert_eq!(env.lv_names(&later_name), vec!["waiting".to_owned()]);
}

/// The socket is 0600, and even when a mistake makes it reachable by others, a non-root peer
/// (uid 65534, checked by peer credentials) gets PERMISSION_DENIED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_root_peer_is_denied() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let lvmd = Lvmd::start(&env, one_thick_class(&vg));
    let socket = lvmd.socket_path().to_owned();

    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // Open the way to the socket for everyone, so only lvmd's own check stands.
    let chmod = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()))
    };
    chmod(&socket, 0o666);
    let mut dir = socket.parent().expect("socket dir").to_owned();
    while dir != lvmd.dir().parent().expect("tmp") {
        chmod(&dir, 0o755);
        dir = dir.parent().expect("parent").to_owned();
    }

    // The test binary may sit under a directory uid 65534 cannot enter: run a copy.
    let exe_dir = tempfile::Builder::new()
        .prefix("topolvm-host-tier-exe-")
        .tempdir()
        .expect("tmp");
    chmod(exe_dir.path(), 0o755);
    let exe = exe_dir.path().join("host_tier");
    std::fs::copy(std::env::current_exe().expect("current exe"), &exe).expect("copy test exe");
    chmod(&exe, 0o755);

    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&exe)
            .args([
                "--exact",
                "non_root_client_helper",
                "--ignored",
                "--nocapture",
            ])
            .env(SOCKET_ENV, &socket)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("running the helper as uid 65534")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("GRPC_CODE=PermissionDenied"),
        "helper status {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // Root still gets through.
    let mut vgc = lvmd.client(VgServiceClient::new).await;
    assert!(free_bytes(&mut vgc, "ssd").await > 0);
}

/// Not a test by itself: `non_root_peer_is_denied` runs it as uid 65534. Calls GetFreeBytes on
/// the socket named by `TOPOLVM_HOST_TIER_SOCKET` and prints the gRPC code.
#[tokio::test]
#[ignore = "run by non_root_peer_is_denied as uid 65534"]
async fn non_root_client_helper() {
    let socket = std::env::var_os(SOCKET_ENV).expect("TOPOLVM_HOST_TIER_SOCKET is set");
    let channel = topolvm_runtime::unix::connect(std::path::Path::new(&socket))
        .await
        .expect("connecting to lvmd");
    let result = VgServiceClient::new(channel)
        .get_free_bytes(pb::GetFreeBytesRequest {
            device_class: "ssd".into(),
        })
        .await;
    println!("uid={} GRPC_CODE={:?}", nix::unistd::getuid(), code(result));
}

/// Waits up to `within` for a Watch message that satisfies `wanted`.
async fn next_watch_message(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    within: Duration,
    what: &str,
    wanted: impl Fn(&pb::WatchResponse) -> bool,
) -> pb::WatchResponse {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("no Watch message with {what} within {within:?}"),
            Ok(Err(status)) => panic!("Watch failed: {status:?}"),
            Ok(Ok(None)) => panic!("Watch stream ended"),
            Ok(Ok(Some(m))) if wanted(&m) => return m,
            Ok(Ok(Some(_))) => {}
        }
    }
}

/// Changes made with `lvm` behind lvmd's back reach Watch within 2 s through the metadata
/// header monitor alone (the periodic refresh is 10 minutes away): an `lvcreate` lowers the
/// free bytes, a `vgextend` raises the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_changes_reach_watch_within_two_seconds() {
    let env = LvmEnv::metadata_only();
    let mut vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let lvmd = Lvmd::start(&env, one_thick_class(&vg));
    let mut vgc = lvmd.client(VgServiceClient::new).await;
    let mut watch = vgc.watch(pb::Empty {}).await.expect("Watch").into_inner();
    let first = watch
        .message()
        .await
        .expect("Watch message")
        .expect("Watch stream open");
    let item = |m: &pb::WatchResponse| {
        m.items
            .iter()
            .find(|i| i.device_class == "ssd")
            .cloned()
            .expect("ssd in Watch")
    };
    let start = item(&first);

    vg.create_lv_by_hand("outside", "8m");
    let changed = next_watch_message(
        &mut watch,
        Duration::from_secs(2),
        "lower free bytes",
        |m| item(m).free_bytes < start.free_bytes,
    )
    .await;
    assert_eq!(item(&changed).free_bytes, start.free_bytes - (8 << 20));

    vg.extend(Disk::loop_device(DEFAULT_LOOP_SIZE));
    let grown = next_watch_message(&mut watch, Duration::from_secs(2), "a larger size", |m| {
        item(m).size_bytes > start.size_bytes
    })
    .await;
    assert_eq!(item(&grown).size_bytes, vg.sizes().get_u64("vg_size"));
}

/// lvmd defect 2: a change made behind lvmd's back right after one of its own mutations (whose
/// refresh reads the metadata headers too) reaches Watch within 2 s, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_change_right_after_a_mutation_reaches_watch() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(4 * DEFAULT_LOOP_SIZE)]);
    let lvmd = Lvmd::start(&env, one_thick_class(&vg));
    let mut lv = lvmd.client(LvServiceClient::new).await;
    let mut vgc = lvmd.client(VgServiceClient::new).await;
    let mut watch = vgc.watch(pb::Empty {}).await.expect("Watch").into_inner();
    let ssd_free = |m: &pb::WatchResponse| {
        m.items
            .iter()
            .find(|i| i.device_class == "ssd")
            .map(|i| i.free_bytes)
            .expect("ssd in Watch")
    };
    let start = ssd_free(&watch.message().await.expect("Watch").expect("open"));
    for round in 0..20u64 {
        create(&mut lv, create_req(&format!("mine-{round}"), 4 * MIB)).await;
        let outside = format!("outside-{round}");
        vg.create_lv_by_hand(&outside, "4m");
        let want = start - (round + 1) * (8 << 20);
        next_watch_message(
            &mut watch,
            Duration::from_secs(2),
            &format!("round {round}: free bytes {want} (both volumes)"),
            |m| ssd_free(m) == want,
        )
        .await;
        assert_eq!(want, vg.sizes().get_u64("vg_free"), "what LVM itself says");
    }
}

/// lvmd defect 1: RemoveLV and ResizeLV act only on lvmd's own volumes of the named class. A
/// volume made by hand is FAILED_PRECONDITION, one of another class on the same volume group is
/// NOT_FOUND, and `lvs` shows both untouched; a hand-made volume named by a Kubernetes UID (as
/// TopoLVM names its volumes) is adopted by a CreateLV of its name and size, after which lvmd
/// removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_lvmd_volumes_of_the_named_class_are_changed() {
    const UID: &str = "9d0c3f0e-5a7b-4c2d-9e1f-3a4b5c6d7e8f";
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let classes = format!(
        "{}\n- {{name: other, volume-group: {}, spare-gb: 0}}",
        common::thick_default_class("ssd", vg.name()),
        vg.name()
    );
    let lvmd = Lvmd::start(
        &env,
        LvmdOptions::new(env!("CARGO_BIN_EXE_lvmd"), classes).extra("full-refresh-interval: 10m"),
    );
    let mut lv = lvmd.client(LvServiceClient::new).await;
    let mut other = create_req("theirs", 8 * MIB);
    other.device_class = "other".into();
    create(&mut lv, other).await;
    for name in ["handmade", UID] {
        vg.create_lv_by_hand(name, "8m");
    }
    // Wait until lvmd has seen the hand-made volumes.
    let vgc = lvmd.client(VgServiceClient::new).await;
    eventually(
        Duration::from_secs(3),
        "the hand-made volumes in GetLVList",
        || {
            let mut vgc = vgc.clone();
            async move { (lv_list(&mut vgc, "ssd").await.len() == 2).then_some(()) }
        },
    )
    .await;
    let before = lvs_sizes(&env, vg.name());

    let remove = |name: &str| pb::RemoveLvRequest {
        name: name.into(),
        device_class: "ssd".into(),
    };
    let resize = |name: &str| pb::ResizeLvRequest {
        name: name.into(),
        device_class: "ssd".into(),
        size_bytes: 16 * MIB,
        ..Default::default()
    };
    for (name, want) in [
        ("handmade", Code::FailedPrecondition),
        (UID, Code::FailedPrecondition),
        ("theirs", Code::NotFound),
    ] {
        assert_eq!(
            code(lv.remove_lv(remove(name)).await),
            want,
            "RemoveLV {name}"
        );
        assert_eq!(
            code(lv.resize_lv(resize(name)).await),
            want,
            "ResizeLV {name}"
        );
    }
    assert_eq!(
        code(lv.create_lv(create_req("handmade", 8 * MIB)).await),
        Code::AlreadyExists,
        "an untagged volume not named by a UID is never adopted"
    );
    assert_eq!(lvs_sizes(&env, vg.name()), before, "nothing was touched");

    let adopted = create(&mut lv, create_req(UID, 8 * MIB)).await;
    assert_eq!(adopted.size_bytes, 8 * MIB);
    let row = env
        .lvs(vg.name(), "lv_name,lv_tags")
        .into_iter()
        .find(|r| r.get("lv_name") == UID)
        .expect("adopted volume");
    let volume_tag = format!("topolvm.io/volume={UID}");
    for want in [
        LV_TAG_MANAGED,
        volume_tag.as_str(),
        "topolvm.io/device-class=ssd",
    ] {
        assert!(
            row.tags("lv_tags").iter().any(|t| t == want),
            "{row:?} lacks {want}"
        );
    }
    lv.remove_lv(remove(UID))
        .await
        .expect("adopted volumes are lvmd's");
    let mut theirs = remove("theirs");
    theirs.device_class = "other".into();
    lv.remove_lv(theirs).await.expect("through its own class");
    assert_eq!(env.lv_names(vg.name()), ["handmade"]);
}

/// A crash (SIGKILL) loses nothing and invents nothing: after a restart on the same config,
/// GetLVList shows exactly the three LVs made before, a repeated CreateLV is idempotent, and
/// `lvs` has no duplicates or extras.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_keeps_exactly_the_created_volumes() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let mut lvmd = Lvmd::start(&env, one_thick_class(&vg));
    let names = ["crash-a", "crash-b", "crash-c"];
    {
        let mut lv = lvmd.client(LvServiceClient::new).await;
        for name in names {
            create(&mut lv, create_req(name, 8 * MIB)).await;
        }
    }
    lvmd.kill9();
    lvmd.restart();

    let mut lv = lvmd.client(LvServiceClient::new).await;
    let mut vgc = lvmd.client(VgServiceClient::new).await;
    let listed: Vec<String> = lv_list(&mut vgc, "ssd")
        .await
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(listed, names);
    let before = lvmd.lvm_command_count().await;
    let again = create(&mut lv, create_req("crash-b", 8 * MIB)).await;
    assert_eq!(again.size_bytes, 8 * MIB);
    assert_eq!(
        lvmd.lvm_command_count().await,
        before,
        "answered from the cache"
    );
    assert_eq!(env.lv_names(vg.name()), names);
}

/// A wrapper `lvm` whose `lvcreate` takes a second longer, so a CreateLV is reliably in flight.
fn slow_lvcreate_prefix(env: &LvmEnv, dir: &std::path::Path) -> Vec<String> {
    let script = dir.join("slow-lvm");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = lvcreate ]; then sleep 1; fi\nexec {} \"$@\"\n",
            env.lvm_path().display()
        ),
    )
    .expect("writing the wrapper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    vec![script.to_string_lossy().into_owned()]
}

/// SIGTERM during a CreateLV lets it finish: the caller gets the LV, `lvs` shows it whole,
/// lvmd exits 0 and removes its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_create_finish() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let scripts = tempfile::tempdir().expect("tmp");
    let options =
        one_thick_class(&vg).lvm_command_prefix(slow_lvcreate_prefix(&env, scripts.path()));
    let mut lvmd = Lvmd::start(&env, options);
    let mut lv = lvmd.client(LvServiceClient::new).await;

    let call = tokio::spawn(async move { lv.create_lv(create_req("inflight", 8 * MIB)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    lvmd.sigterm();
    let created = call
        .await
        .expect("join")
        .expect("CreateLV survives SIGTERM")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(created.size_bytes, 8 * MIB);

    let status = lvmd.wait_for_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "lvmd exited with {status}");
    assert!(!lvmd.socket_path().exists(), "socket removed on exit");
    let rows = env.lvs(vg.name(), "lv_name,lv_size,lv_tags");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].get_u64("lv_size"), 8 << 20);
    assert!(rows[0].tags("lv_tags").iter().any(|t| t == LV_TAG_MANAGED));
}

/// A caller that gives up on a CreateLV does not leave half a volume: the operation completes
/// in lvmd, `lvs` shows the whole LV, and the retried CreateLV returns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_create_completes_and_retry_is_idempotent() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let scripts = tempfile::tempdir().expect("tmp");
    let options =
        one_thick_class(&vg).lvm_command_prefix(slow_lvcreate_prefix(&env, scripts.path()));
    let lvmd = Lvmd::start(&env, options);
    let mut lv = lvmd.client(LvServiceClient::new).await;

    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        lv.create_lv(create_req("abandoned", 8 * MIB)),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the call was still running after 200 ms"
    );

    let vg_name = vg.name().to_owned();
    let env2 = env.clone();
    let rows = eventually(Duration::from_secs(10), "the LV appears in lvs", || {
        let (env, vg_name) = (env2.clone(), vg_name.clone());
        async move {
            let rows = env.lvs(&vg_name, "lv_name,lv_size,lv_tags");
            (!rows.is_empty()).then_some(rows)
        }
    })
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].get("lv_name"), "abandoned");
    assert_eq!(rows[0].get_u64("lv_size"), 8 << 20);
    assert!(rows[0].tags("lv_tags").iter().any(|t| t == LV_TAG_MANAGED));

    let retried = create(&mut lv, create_req("abandoned", 8 * MIB)).await;
    assert_eq!(retried.size_bytes, 8 * MIB);
    assert_eq!(env.lv_names(vg.name()), vec!["abandoned".to_owned()]);
}

/// The health service reports SERVING, and `/metrics` carries TopoLVM's capacity gauge and
/// lvmd's request counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_and_metrics_are_exported() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let lvmd = Lvmd::start(&env, one_thick_class(&vg));
    let mut health = lvmd.health_client().await;
    for service in ["", "proto.LVService", "proto.VGService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check {service:?}: {s:?}"))
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }

    let mut vgc = lvmd.client(VgServiceClient::new).await;
    let free = free_bytes(&mut vgc, "ssd").await;
    let text = lvmd.metrics_text().await;
    let gauge = format!(
        "lvmd_volumegroup_available_bytes{{device_class=\"ssd\",node=\"test-node\"}} {free}"
    );
    assert!(text.contains(&gauge), "missing {gauge}\n{text}");
    assert!(
        text.contains("lvmd_grpc_requests_total{code=\"OK\",method=\"GetFreeBytes\"} 1"),
        "{text}"
    );
}

/// A socket file left behind by a crashed lvmd does not stop a new one from starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_does_not_block_start() {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let mut lvmd = Lvmd::configure(&env, one_thick_class(&vg));
    drop(
        std::os::unix::net::UnixListener::bind(lvmd.socket_path()).expect("binding a stale socket"),
    );
    assert!(lvmd.socket_path().exists(), "the stale socket file stays");
    lvmd.spawn();
    let mut vgc = lvmd.client(VgServiceClient::new).await;
    assert!(free_bytes(&mut vgc, "ssd").await > 0);
    assert!(
        lvmd.log().contains("removing stale socket"),
        "lvmd replaced the stale socket"
    );
}

/// Every gRPC client can call lvmd, whatever `:authority` it sends over the socket: gRPC-Go
/// dialing `unix:` (TopoLVM's topolvm-node) and tonic send `localhost`; gRPC C-core (Python, C++,
/// Ruby) and grpc-java send the socket path (C-core 1.57 and later its percent-encoding), which
/// the HTTP/2 layer under tonic alone would refuse with PROTOCOL_ERROR (lvmd/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sending_localhost_or_the_socket_path_are_served() {
    use prost::Message;
    use topolvm_test_kit::raw_grpc::{self, Outcome};

    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let lvmd = Lvmd::start(&env, one_thick_class(&vg));
    let mut vgc = lvmd.client(VgServiceClient::new).await;
    let free = free_bytes(&mut vgc, "ssd").await;

    let request = pb::GetFreeBytesRequest {
        device_class: "ssd".into(),
    }
    .encode_to_vec();
    let socket = lvmd.socket_path().to_owned();
    let call = |authority: String| {
        let (socket, request) = (socket.clone(), request.clone());
        async move {
            raw_grpc::unary_call(
                &socket,
                &authority,
                "/proto.VGService/GetFreeBytes",
                &request,
            )
            .await
            .unwrap_or_else(|e| panic!("calling with authority {authority:?}: {e}"))
        }
    };

    let path = socket.display().to_string();
    let percent_encoded = path.replace('/', "%2F");
    for authority in ["localhost".to_owned(), path, percent_encoded] {
        let outcome = call(authority.clone()).await;
        let Outcome::Answered { messages } = outcome else {
            panic!("a client sending {authority:?} must be served: {outcome:?}");
        };
        let answer =
            pb::GetFreeBytesResponse::decode(messages.first().expect("an answer").as_slice())
                .expect("decoding the answer");
        assert_eq!(answer.free_bytes, free, "{authority:?}");
    }
}

/// How long a crash test waits for a wrapper run, a command or a volume.
const CRASH_WAIT: Duration = Duration::from_secs(30);

/// Asserts what `lvs` itself shows: `vg` holds exactly one LV called `name`, whole (`size`
/// bytes) and carrying lvmd's ownership tags; and `vgck` finds the volume group consistent.
fn assert_one_whole_volume(env: &LvmEnv, vg: &str, name: &str, size: u64) {
    let rows: Vec<common::ReportRow> = env
        .lvs(vg, "lv_name,lv_size,lv_tags")
        .into_iter()
        .filter(|r| r.get("lv_name") == name)
        .collect();
    assert_eq!(rows.len(), 1, "one LV {name} in lvs: {rows:?}");
    assert_whole(&rows[0], name, size);
    assert_vgck(env, vg);
}

/// A whole volume made by lvmd: its full size and both ownership tags.
fn assert_whole(row: &common::ReportRow, name: &str, size: u64) {
    assert_eq!(row.get_u64("lv_size"), size, "size of {name}: {row:?}");
    let tags = row.tags("lv_tags");
    for want in [
        LV_TAG_MANAGED.to_owned(),
        format!("topolvm.io/volume={name}"),
    ] {
        assert!(tags.contains(&want), "{name} lacks tag {want}: {row:?}");
    }
}

fn assert_vgck(env: &LvmEnv, vg: &str) {
    if let Err(e) = env.try_lvm(&["vgck", vg]) {
        panic!("vgck {vg} finds the volume group damaged: {e}");
    }
}

/// A new volume group with one thick class `ssd`, and an lvmd in its own process group whose
/// `lvcreate` runs through an [`common::LvmWrapper`] made by `wrapper`. Bind all four: dropped in
/// reverse order, lvmd and what it left running go before the volume group.
fn crash_bed(
    wrapper: fn(&LvmEnv, &str) -> common::LvmWrapper,
) -> (LvmEnv, VolumeGroup, common::LvmWrapper, Lvmd) {
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let wrapper = wrapper(&env, "lvcreate");
    let options = one_thick_class(&vg)
        .lvm_command_prefix(wrapper.prefix())
        .own_process_group();
    let lvmd = Lvmd::start(&env, options);
    (env, vg, wrapper, lvmd)
}

type CreateCall =
    tokio::task::JoinHandle<Result<tonic::Response<pb::CreateLvResponse>, tonic::Status>>;

/// Starts a CreateLV that goes on while the test steers `lvm` or kills lvmd.
async fn spawn_create(lvmd: &Lvmd, request: pb::CreateLvRequest) -> CreateCall {
    let mut lv = lvmd.client(LvServiceClient::new).await;
    tokio::spawn(async move { lv.create_lv(request).await })
}

/// The volume a spawned CreateLV returned; panics naming `what` if it failed.
async fn created(call: CreateCall, what: &str) -> pb::LogicalVolume {
    call.await
        .expect("join")
        .unwrap_or_else(|s| panic!("{what}: {s:?}"))
        .into_inner()
        .volume
        .expect("CreateLV returns the volume")
}

/// What a released `lvcreate` run did.
#[derive(Debug, PartialEq)]
enum Made {
    Volume,
    /// It found the name taken ("already exists").
    NameTaken,
}

/// Releases the held `lvcreate` run of `who` and asserts, once its `lvm` ended, what it did.
async fn release_lvcreate(wrapper: &common::LvmWrapper, run: u32, want: Made, who: &str) {
    wrapper.release(run);
    let code = wrapper.wait_exit_code(run, CRASH_WAIT).await;
    let stderr = wrapper.stderr(run);
    let made = match code {
        0 => Made::Volume,
        _ if stderr.contains("already exists") => Made::NameTaken,
        _ => panic!("lvcreate of {who} failed (exit {code}): {stderr}"),
    };
    assert_eq!(made, want, "lvcreate of {who}: {stderr}");
}

/// Where the `lvcreate` that a crashed lvmd left running ends, relative to the retry.
#[derive(Debug, Clone, Copy)]
enum OrphanEnds {
    /// Before lvmd restarts: the new lvmd finds the volume in its first report.
    BeforeRestart,
    /// While the retry's own `lvcreate` waits to start: that one fails with "already exists".
    WhileRetryWaits,
    /// After the retry's `lvcreate` made the volume: the orphan's fails and changes nothing.
    AfterRetry,
}

/// SIGKILL of lvmd alone while its `lvcreate` wrapper has not started `lvm` yet. The wrapper is
/// orphaned, goes on and creates the volume behind the restarted lvmd's back, in each `order`
/// against the retried CreateLV. The retry returns the volume, and `lvs` shows exactly one whole
/// LV with lvmd's tags; nothing of the old lvmd's process group is left.
async fn orphaned_lvcreate_and_retried_create_lv(order: OrphanEnds) {
    let (env, vg, wrapper, mut lvmd) = crash_bed(common::LvmWrapper::holding);
    let name = "orphaned";
    let request = create_req(name, 8 * MIB);

    let call = spawn_create(&lvmd, request.clone()).await;
    let orphan = wrapper.next_held(CRASH_WAIT).await;
    let old_group = i32::try_from(lvmd.pid().expect("running")).expect("pid");
    lvmd.kill9();
    assert!(
        call.await.expect("join").is_err(),
        "the CreateLV in flight dies with lvmd"
    );

    let retried = match order {
        OrphanEnds::BeforeRestart => {
            release_lvcreate(&wrapper, orphan, Made::Volume, "the orphan").await;
            lvmd.spawn();
            let retried = create(&mut lvmd.client(LvServiceClient::new).await, request).await;
            let counts = lvmd.lvm_command_counts().await;
            assert!(
                !counts.contains_key("lvcreate"),
                "the retry is answered from the first report: {counts:?}"
            );
            retried
        }
        OrphanEnds::WhileRetryWaits => {
            lvmd.spawn();
            let call = spawn_create(&lvmd, request).await;
            let own = wrapper.next_held(CRASH_WAIT).await;
            release_lvcreate(&wrapper, orphan, Made::Volume, "the orphan").await;
            release_lvcreate(&wrapper, own, Made::NameTaken, "the retry").await;
            created(call, "retried CreateLV after lvcreate's \"already exists\"").await
        }
        OrphanEnds::AfterRetry => {
            lvmd.spawn();
            let call = spawn_create(&lvmd, request).await;
            let own = wrapper.next_held(CRASH_WAIT).await;
            release_lvcreate(&wrapper, own, Made::Volume, "the retry").await;
            let retried = created(call, "retried CreateLV").await;
            release_lvcreate(&wrapper, orphan, Made::NameTaken, "the orphan").await;
            retried
        }
    };
    assert_eq!(
        (retried.name.as_str(), retried.size_bytes),
        (name, 8 * MIB),
        "{order:?}"
    );
    assert!(
        common::wait_process_group_gone(old_group, CRASH_WAIT),
        "the orphaned wrapper ended"
    );
    assert_one_whole_volume(&env, vg.name(), name, 8 << 20);
    assert_eq!(env.lv_names(vg.name()), [name]);
    let mut vgc = lvmd.client(VgServiceClient::new).await;
    let listed: Vec<String> = lv_list(&mut vgc, "ssd")
        .await
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(listed, [name], "GetLVList after {order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_lvcreate_ending_before_restart_is_found_by_the_retry() {
    orphaned_lvcreate_and_retried_create_lv(OrphanEnds::BeforeRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_lvcreate_ending_under_the_retry_is_returned_by_it() {
    orphaned_lvcreate_and_retried_create_lv(OrphanEnds::WhileRetryWaits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_lvcreate_ending_after_the_retry_changes_nothing() {
    orphaned_lvcreate_and_retried_create_lv(OrphanEnds::AfterRetry).await;
}

/// SIGKILL of lvmd together with its `lvm` (its whole process group, as a container runtime
/// kills a container) at 0, 5, 10, ... ms after the `lvcreate` starts, each time on a new
/// volume, until a kill comes after `lvcreate` committed. After each kill `lvs` shows either no
/// LV of that name or one whole LV with lvmd's tags, and `vgck` passes; after the restart the
/// retried CreateLV returns the volume and `lvs` shows exactly one whole LV. Both outcomes must
/// occur, so the kills spanned the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_lvm_during_lvcreate_leaves_no_half_made_volume() {
    let (env, vg, wrapper, mut lvmd) = crash_bed(common::LvmWrapper::marking);
    // (delay after lvcreate started, whether the LV existed after the kill, lvm's exit code)
    let mut outcomes: Vec<(Duration, bool, Option<i32>)> = Vec::new();
    let mut delay = Duration::ZERO;
    loop {
        let name = format!("killed-{}ms", delay.as_millis());
        wrapper.pass_over_runs_so_far();
        let call = spawn_create(&lvmd, create_req(&name, 8 * MIB)).await;
        let run = wrapper.next_started(CRASH_WAIT).await;
        tokio::time::sleep(delay).await;
        lvmd.kill9_with_children();
        let _ = call.await.expect("join");
        let lvm_exit = wrapper.exit_code(run);

        let rows: Vec<common::ReportRow> = env
            .lvs(vg.name(), "lv_name,lv_size,lv_tags")
            .into_iter()
            .filter(|r| r.get("lv_name") == name)
            .collect();
        assert!(rows.len() <= 1, "{name}: {rows:?}");
        if let Some(row) = rows.first() {
            assert_whole(row, &name, 8 << 20);
        }
        assert_vgck(&env, vg.name());
        outcomes.push((delay, !rows.is_empty(), lvm_exit));

        lvmd.spawn();
        let retried = create(
            &mut lvmd.client(LvServiceClient::new).await,
            create_req(&name, 8 * MIB),
        )
        .await;
        assert_eq!(
            (retried.name.as_str(), retried.size_bytes),
            (name.as_str(), 8 * MIB)
        );
        assert_one_whole_volume(&env, vg.name(), &name, 8 << 20);
        let mut lv = lvmd.client(LvServiceClient::new).await;
        lv.remove_lv(pb::RemoveLvRequest {
            name: name.clone(),
            device_class: "ssd".into(),
        })
        .await
        .unwrap_or_else(|s| panic!("RemoveLV {name}: {s:?}"));
        assert!(env.lv_names(vg.name()).is_empty());

        if !rows.is_empty() {
            break;
        }
        assert!(
            delay < Duration::from_secs(10),
            "no kill came after lvcreate committed: {outcomes:?}"
        );
        delay = if delay < Duration::from_millis(100) {
            delay + Duration::from_millis(5)
        } else {
            delay * 3 / 2
        };
    }
    eprintln!("kills after lvcreate started (delay, LV existed, lvm exit code): {outcomes:?}");
    assert!(
        outcomes.iter().any(|(_, existed, _)| !existed),
        "no kill came before lvcreate committed: {outcomes:?}"
    );
}
