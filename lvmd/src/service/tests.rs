//! Unit tests of the service logic against a scripted fake `lvm`: what is decided from the cache
//! alone, which command is run, and how failures are classified. Real `lvm` behaviour is proven by
//! the host and VM tiers in `tests/`.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::service::ownership::{copy_pending, copy_source};
use crate::state::fake::FakeLvm;

const MIB: u64 = 1 << 20;
const EXTENT: u64 = 4 * MIB;

/// Builds fake `fullreport` JSON.
#[derive(Default)]
struct Vg {
    name: &'static str,
    size: u64,
    free: u64,
    lvs: Vec<serde_json::Value>,
    segs: Vec<serde_json::Value>,
}

impl Vg {
    fn new(name: &'static str, size: u64, free: u64) -> Self {
        Self {
            name,
            size,
            free,
            ..Default::default()
        }
    }

    /// A volume carrying lvmd's tags (as versions before the device-class tag made them).
    fn lv(self, name: &str, size: u64, attr: &str, pool: &str, origin: &str) -> Self {
        let tags = format!("topolvm.io/managed,topolvm.io/volume={name}");
        self.tagged_lv(name, size, attr, pool, origin, &tags)
    }

    fn tagged_lv(
        mut self,
        name: &str,
        size: u64,
        attr: &str,
        pool: &str,
        origin: &str,
        tags: &str,
    ) -> Self {
        let uuid = format!("uuid-{name}");
        self.lvs.push(json!({
            "lv_name": name, "lv_uuid": uuid, "lv_full_name": format!("{}/{name}", self.name),
            "lv_size": size.to_string(), "lv_attr": attr, "lv_tags": tags,
            "lv_path": format!("/dev/{}/{name}", self.name),
            "lv_kernel_major": "-1", "lv_kernel_minor": "-1", "pool_lv": pool, "origin": origin,
            "data_percent": if attr.starts_with('t') { "10.00" } else { "" }, "metadata_percent": ""
        }));
        self.segs.push(
            json!({"lv_uuid": uuid, "segtype": "linear", "stripes": "1", "stripe_size": "0"}),
        );
        self
    }

    fn thick(self, name: &str, size: u64) -> Self {
        self.lv(name, size, "-wi-a-----", "", "")
    }

    fn pool(self, name: &str, size: u64, data_percent: &str) -> Self {
        let mut vg = self.tagged_lv(name, size, "twi-aotz--", "", "", "");
        if let Some(last) = vg.lvs.last_mut() {
            last["data_percent"] = json!(data_percent);
        }
        vg
    }

    fn thin(self, name: &str, size: u64, pool: &str) -> Self {
        self.lv(name, size, "Vwi-a-tz--", pool, "")
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "vg": [{"vg_name": self.name, "vg_uuid": format!("uuid-{}", self.name),
                    "vg_size": self.size.to_string(), "vg_free": self.free.to_string(),
                    "vg_extent_size": EXTENT.to_string(), "vg_seqno": "1", "vg_tags": ""}],
            "pv": [{"pv_name": "/dev/loop9", "pv_uuid": "pv"}],
            "lv": self.lvs, "seg": self.segs
        })
    }
}

fn report(vgs: &[&Vg]) -> String {
    json!({"report": vgs.iter().map(|v| v.json()).collect::<Vec<_>>()}).to_string()
}

const CONFIG: &str = r#"
socket-name: /tmp/unused.sock
lvm-command-prefix: [lvm]
device-classes:
  - name: ssd
    volume-group: vg1
    default: true
    spare-gb: 0
  - name: striped
    volume-group: vg1
    spare-gb: 0
    stripe: 2
    stripe-size: 64k
  - name: thin
    volume-group: vg1
    type: thin
    thin-pool:
      name: pool
      overprovision-ratio: 2.0
      data-percent-threshold: 80
  - name: missing
    volume-group: novg
lvcreate-option-classes:
  - name: raid1
    options: ["--type=raid1", "-m", "1"]
"#;

async fn lvmd_with(report_json: &str) -> (Arc<FakeLvm>, Lvmd) {
    let fake = Arc::new(FakeLvm::with_report(report_json));
    let cache = Arc::new(StateCache::new(fake.clone(), Default::default()));
    cache
        .refresh(RefreshReason::Startup)
        .await
        .expect("initial report");
    let config = Arc::new(Config::parse(CONFIG).expect("config"));
    let lvmd = Lvmd::new(config, cache, fake.clone());
    (fake, lvmd)
}

fn base() -> Vg {
    Vg::new("vg1", 1024 * MIB, 512 * MIB)
        .thick("existing", 100 * MIB)
        .pool("pool", 256 * MIB, "10.00")
        .thin("thin1", 300 * MIB, "pool")
}

/// A 256 MiB thin pool with one 100 MiB thin volume, `thin1`.
fn thin_pool_with_one_volume() -> Vg {
    Vg::new("vg1", 1024 * MIB, 512 * MIB)
        .pool("pool", 256 * MIB, "10.00")
        .thin("thin1", 100 * MIB, "pool")
}

fn create(name: &str, class: &str, size: u64) -> CreateLv {
    CreateLv {
        name: name.into(),
        device_class: class.into(),
        size_bytes: size as i64,
        ..Default::default()
    }
}

/// Waits (bounded) until the fake has run `n` state reports in all.
async fn reports_run(fake: &FakeLvm, n: usize) {
    for _ in 0..200 {
        let reports = fake.calls().iter().filter(|c| c[0] == "fullreport").count();
        if reports >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the confirming report never ran: {:?}", fake.calls());
}

#[tokio::test]
async fn create_answers_after_one_lvcreate_and_confirms_in_the_background() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    let free_before = lvmd.free_bytes("ssd").expect("free");
    let after = Vg::new("vg1", 1024 * MIB, 504 * MIB)
        .thick("existing", 100 * MIB)
        .pool("pool", 256 * MIB, "10.00")
        .thin("thin1", 300 * MIB, "pool")
        .thick("v1", 8 * MIB);
    fake.set_report(&report(&[&after]));
    let calls_before = fake.calls().len();

    let lv = lvmd
        .create_lv(create("v1", "", 5 * MIB))
        .await
        .expect("created");
    assert_eq!(lv.size, 8 * MIB, "5 MiB rounded up to two 4 MiB extents");
    assert_eq!(
        lv.tags,
        [
            "topolvm.io/managed",
            "topolvm.io/volume=v1",
            "topolvm.io/device-class=ssd"
        ]
    );
    assert_eq!(
        fake.calls()[calls_before],
        [
            "lvcreate",
            "-n",
            "v1",
            "-L",
            "5242880b",
            "-W",
            "y",
            "-y",
            "--addtag",
            "topolvm.io/managed",
            "--addtag",
            "topolvm.io/volume=v1",
            "--addtag",
            "topolvm.io/device-class=ssd",
            "vg1"
        ]
    );
    // Readers see the new volume and the space it took at once, report or not.
    assert!(
        lvmd.list_lvs("ssd")
            .expect("list")
            .iter()
            .any(|l| l.name == "v1")
    );
    assert_eq!(lvmd.free_bytes("ssd").expect("free"), free_before - 8 * MIB);

    reports_run(&fake, 2).await;
    let calls = &fake.calls()[calls_before..];
    assert_eq!(calls.len(), 2, "one lvcreate and one report: {calls:?}");
    assert_eq!(lvmd.free_bytes("ssd").expect("free"), free_before - 8 * MIB);
}

/// When the report that follows a command disagrees with what lvmd recorded, the report wins.
#[tokio::test]
async fn a_report_that_disagrees_with_the_recorded_change_wins() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    // LVM says the lvcreate worked, but its report has no such volume.
    let lv = lvmd
        .create_lv(create("ghost", "ssd", 8 * MIB))
        .await
        .expect("created");
    assert_eq!(lv.name, "ghost");
    reports_run(&fake, 2).await;
    for _ in 0..200 {
        if lvmd
            .list_lvs("ssd")
            .expect("list")
            .iter()
            .all(|l| l.name != "ghost")
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the report without the volume did not replace the recorded change");
}

/// Volumes with extra lvcreate options (RAID, mirrors) take more than their size: lvmd waits for
/// the report instead of guessing.
#[tokio::test]
async fn creates_with_extra_options_wait_for_the_report() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    let raid = Vg::new("vg1", 1024 * MIB, 400 * MIB)
        .thick("existing", 100 * MIB)
        .pool("pool", 256 * MIB, "10.00")
        .thin("thin1", 300 * MIB, "pool")
        .thick("r1", 8 * MIB);
    fake.set_report(&report(&[&raid]));
    let mut req = create("r1", "ssd", 8 * MIB);
    req.lvcreate_option_class = "raid1".into();
    lvmd.create_lv(req).await.expect("created");
    // The answer came after the report: free space is LVM's figure, not a guess.
    assert_eq!(lvmd.free_bytes("ssd").expect("free"), 400 * MIB);
    let reports = fake.calls().iter().filter(|c| c[0] == "fullreport").count();
    assert_eq!(reports, 2);
}

#[tokio::test]
async fn repeated_create_of_the_same_size_is_answered_from_the_cache() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    let before = fake.calls().len();
    // "existing" is 100 MiB; 98 MiB rounds up to the same 100 MiB (25 extents).
    let lv = lvmd
        .create_lv(create("existing", "ssd", 98 * MIB))
        .await
        .expect("idempotent");
    assert_eq!(lv.size, 100 * MIB);
    assert_eq!(
        fake.calls().len(),
        before,
        "no lvm call for an idempotent create"
    );

    let err = lvmd
        .create_lv(create("existing", "ssd", 200 * MIB))
        .await
        .expect_err("other size");
    assert!(matches!(err, Error::Exists { .. }), "{err:?}");
    let err = lvmd
        .create_lv(create("existing", "thin", 100 * MIB))
        .await
        .expect_err("other class");
    assert!(matches!(err, Error::Exists { .. }), "{err:?}");
}

#[tokio::test]
async fn no_space_is_refused_before_any_lvm_call() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    let before = fake.calls().len();
    let err = lvmd
        .create_lv(create("big", "ssd", 600 * MIB))
        .await
        .expect_err("too big");
    assert!(matches!(err, Error::NoSpace { .. }), "{err:?}");
    // thin: ratio 2.0 × 256 MiB pool = 512 MiB, 300 MiB promised already.
    let err = lvmd
        .create_lv(create("big", "thin", 213 * MIB))
        .await
        .expect_err("overprovisioned");
    assert!(matches!(err, Error::NoSpace { .. }), "{err:?}");
    assert_eq!(fake.calls().len(), before);
}

#[tokio::test]
async fn lvm_reporting_no_space_maps_to_no_space() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    fake.push_result(Err((
        5,
        "  Volume group \"vg1\" has insufficient free space (1 extents): 2 required.".into(),
    )));
    let err = lvmd
        .create_lv(create("v2", "ssd", 8 * MIB))
        .await
        .expect_err("lvm said no");
    assert!(
        matches!(&err, Error::Lvm(e) if e.is_insufficient_space()),
        "{err:?}"
    );
    assert_eq!(
        crate::grpc::status_of(err).code(),
        tonic::Code::ResourceExhausted
    );
}

#[tokio::test]
async fn striped_and_option_class_layouts() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    fake.set_report(&report(&[&base().thick("s1", 8 * MIB)]));
    lvmd.create_lv(create("s1", "striped", 5 * MIB))
        .await
        .expect("striped");
    fake.set_report(&report(&[&base()
        .thick("s1", 8 * MIB)
        .thick("r1", 8 * MIB)]));
    let mut req = create("r1", "ssd", 8 * MIB);
    req.lvcreate_option_class = "raid1".into();
    lvmd.create_lv(req).await.expect("raid1");
    let m = fake.mutations();
    assert!(
        m[0].windows(4).any(|w| w == ["-i", "2", "-I", "64k"]),
        "{:?}",
        m[0]
    );
    assert!(
        m[1].windows(3).any(|w| w == ["--type=raid1", "-m", "1"]),
        "{:?}",
        m[1]
    );
    assert!(
        !m[1].contains(&"-i".to_owned()),
        "option classes replace the class layout"
    );

    let mut req = create("r2", "ssd", 8 * MIB);
    req.lvcreate_option_class = "nope".into();
    assert!(matches!(
        lvmd.create_lv(req).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn thin_create_uses_the_pool_and_respects_the_usage_threshold() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    fake.set_report(&report(&[&base().thin("t2", 8 * MIB, "pool")]));
    lvmd.create_lv(create("t2", "thin", 8 * MIB))
        .await
        .expect("thin");
    assert_eq!(fake.mutations()[0][..3], ["lvcreate", "-T", "vg1/pool"]);

    let full = Vg::new("vg1", 1024 * MIB, 512 * MIB)
        .pool("pool", 256 * MIB, "85.50")
        .thin("thin1", 8 * MIB, "pool");
    let (fake, lvmd) = lvmd_with(&report(&[&full])).await;
    let err = lvmd
        .create_lv(create("t3", "thin", 8 * MIB))
        .await
        .expect_err("pool too full");
    assert!(
        matches!(&err, Error::ThinPoolFull { percent, .. } if *percent == 85.5),
        "{err:?}"
    );
    assert!(fake.mutations().is_empty());
}

#[tokio::test]
async fn bad_input_is_invalid_argument_without_lvm_calls() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    let before = fake.calls().len();
    let mut cases = vec![
        create("-rf", "", MIB),
        create("a b", "", MIB),
        create("", "", MIB),
        create("ok", "", 0),
        create("ok", "", 0u64.wrapping_sub(1)), // -1 as i64
    ];
    let mut tagged = create("ok", "", MIB);
    tagged.tags = vec!["bad tag".into()];
    cases.push(tagged);
    let mut reserved = create("ok", "", MIB);
    reserved.tags = vec!["topolvm.io/volume=other".into()];
    cases.push(reserved);
    for req in cases {
        let err = lvmd.create_lv(req.clone()).await.expect_err("refused");
        assert!(matches!(err, Error::InvalidArgument(_)), "{req:?}: {err:?}");
    }
    assert_eq!(fake.calls().len(), before);
    assert!(matches!(
        lvmd.create_lv(create("ok", "nosuchclass", MIB)).await,
        Err(Error::UnknownDeviceClass(_))
    ));
}

#[tokio::test]
async fn deprecated_size_gb_is_honoured_when_size_bytes_is_zero() {
    let (fake, lvmd) = lvmd_with(&report(&[&Vg::new("vg1", 8 << 30, 4 << 30)])).await;
    fake.set_report(&report(&[
        &Vg::new("vg1", 8 << 30, 3 << 30).thick("g", 1 << 30)
    ]));
    let mut req = create("g", "", 0);
    req.size_gb = 1;
    lvmd.create_lv(req).await.expect("size_gb");
    assert!(fake.mutations()[0].contains(&"1073741824b".to_owned()));
}

#[tokio::test]
async fn a_missing_volume_group_makes_only_its_class_unavailable() {
    let (_fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    let err = lvmd
        .create_lv(create("x", "missing", MIB))
        .await
        .expect_err("unavailable");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(matches!(
        lvmd.free_bytes("missing"),
        Err(Error::Unavailable { .. })
    ));
    assert_eq!(lvmd.free_bytes("ssd").expect("ssd works"), 512 * MIB);
    let report = lvmd.capacity_report(&lvmd.cache().current());
    let missing = report
        .classes
        .iter()
        .find(|c| c.device_class == "missing")
        .expect("listed");
    assert!(!missing.usable);
    assert_eq!(report.default_free, 512 * MIB);
}

#[tokio::test]
async fn remove_is_idempotent_and_protects_pools_and_origins() {
    let vg = base().lv("origin", 8 * MIB, "owi-a-s---", "", "").lv(
        "snap",
        8 * MIB,
        "swi-a-s---",
        "",
        "origin",
    );
    let (fake, lvmd) = lvmd_with(&report(&[&vg])).await;
    let before = fake.calls().len();
    lvmd.remove_lv("gone", "ssd")
        .await
        .expect("missing is removed");
    assert_eq!(
        fake.calls().len(),
        before,
        "no lvm call for a missing volume"
    );

    assert!(matches!(
        lvmd.remove_lv("pool", "thin").await,
        Err(Error::NotOwned { .. })
    ));
    assert!(matches!(
        lvmd.remove_lv("origin", "ssd").await,
        Err(Error::HasThickSnapshots { .. })
    ));

    lvmd.remove_lv("existing", "ssd").await.expect("removed");
    assert_eq!(fake.mutations(), [["lvremove", "-y", "vg1/existing"]]);
}

/// A thick LV made by hand, one of another thick class sharing the volume group, a thin volume
/// of another pool, and one whose tags name another volume: RemoveLV and ResizeLV refuse them
/// all without running `lvm` (FAILED_PRECONDITION, or NOT_FOUND outside the class), and act on
/// the other class's volume through that class.
#[tokio::test]
async fn remove_and_resize_act_only_on_owned_volumes_of_the_class() {
    let vg = base()
        .tagged_lv("handmade", 8 * MIB, "-wi-a-----", "", "", "")
        .tagged_lv(
            "striped1",
            8 * MIB,
            "-wi-a-----",
            "",
            "",
            "topolvm.io/managed,topolvm.io/volume=striped1,topolvm.io/device-class=striped",
        )
        .pool("pool2", 64 * MIB, "1.00")
        .thin("otherpool", 8 * MIB, "pool2")
        .tagged_lv(
            "renamed",
            8 * MIB,
            "-wi-a-----",
            "",
            "",
            "topolvm.io/managed,topolvm.io/volume=original",
        );
    let (fake, lvmd) = lvmd_with(&report(&[&vg])).await;
    type Expectation = fn(&Error) -> bool;
    let precondition: Expectation = |e| matches!(e, Error::NotOwned { .. });
    let not_found: Expectation = |e| matches!(e, Error::NotInClass { .. });
    for (name, class, want) in [
        ("handmade", "ssd", precondition),
        ("renamed", "ssd", precondition),
        ("pool2", "thin", precondition),
        ("striped1", "ssd", not_found),
        ("otherpool", "thin", not_found),
        ("existing", "thin", not_found),
    ] {
        let err = lvmd
            .remove_lv(name, class)
            .await
            .expect_err("remove refused");
        assert!(want(&err), "RemoveLV {name} via {class}: {err:?}");
        let err = lvmd
            .resize_lv(name, class, (64 * MIB) as i64, 0)
            .await
            .expect_err("resize refused");
        assert!(want(&err), "ResizeLV {name} via {class}: {err:?}");
    }
    assert!(fake.mutations().is_empty(), "{:?}", fake.mutations());

    lvmd.remove_lv("striped1", "striped")
        .await
        .expect("through its own class");
    assert_eq!(fake.mutations(), [["lvremove", "-y", "vg1/striped1"]]);
}

/// TopoLVM's volumes carry no tags and are named by a Kubernetes UID: a CreateLV of the same
/// name and size adopts one (one `lvchange --addtag`), after which it can be removed; an
/// untagged volume with any other name, or of another size, is never adopted.
#[tokio::test]
async fn untagged_volumes_named_by_a_uid_are_adopted_by_an_exact_create() {
    const UID: &str = "4b9e6a2c-93c1-4c5e-8d4e-2f1a0b7c6d5e";
    let untagged = || {
        base()
            .tagged_lv(UID, 100 * MIB, "-wi-a-----", "", "", "")
            .tagged_lv("admin-data", 100 * MIB, "-wi-a-----", "", "", "")
    };
    let (fake, lvmd) = lvmd_with(&report(&[&untagged()])).await;
    let err = lvmd
        .create_lv(create(UID, "ssd", 200 * MIB))
        .await
        .expect_err("other size");
    assert!(matches!(err, Error::Exists { .. }), "{err:?}");
    let err = lvmd
        .create_lv(create("admin-data", "ssd", 100 * MIB))
        .await
        .expect_err("not a UID");
    assert!(matches!(err, Error::Exists { .. }), "{err:?}");
    let err = lvmd.remove_lv(UID, "ssd").await.expect_err("not yet ours");
    assert!(matches!(err, Error::NotOwned { .. }), "{err:?}");
    assert!(fake.mutations().is_empty());

    let tags = format!("topolvm.io/managed,topolvm.io/volume={UID},topolvm.io/device-class=ssd");
    fake.set_report(&report(&[&base()
        .tagged_lv(UID, 100 * MIB, "-wi-a-----", "", "", &tags)
        .tagged_lv("admin-data", 100 * MIB, "-wi-a-----", "", "", "")]));
    let adopted = lvmd
        .create_lv(create(UID, "ssd", 100 * MIB))
        .await
        .expect("adopted");
    assert!(adopted.tags.iter().any(|t| t == "topolvm.io/managed"));
    let volume_tag = format!("topolvm.io/volume={UID}");
    assert_eq!(
        fake.mutations(),
        [vec![
            "lvchange",
            "--addtag",
            "topolvm.io/managed",
            "--addtag",
            volume_tag.as_str(),
            "--addtag",
            "topolvm.io/device-class=ssd",
            &format!("vg1/{UID}"),
        ]]
    );
    lvmd.remove_lv(UID, "ssd").await.expect("ours now");
}

#[tokio::test]
async fn resize_grows_never_shrinks() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    let before = fake.calls().len();
    assert_eq!(
        lvmd.resize_lv("existing", "ssd", (100 * MIB) as i64, 0)
            .await
            .expect("same"),
        100 * MIB
    );
    assert_eq!(
        lvmd.resize_lv("existing", "ssd", (97 * MIB) as i64, 0)
            .await
            .expect("same after rounding"),
        100 * MIB
    );
    assert_eq!(fake.calls().len(), before);
    let err = lvmd
        .resize_lv("existing", "ssd", (50 * MIB) as i64, 0)
        .await
        .expect_err("shrink");
    assert!(matches!(err, Error::Shrink { .. }), "{err:?}");
    let err = lvmd
        .resize_lv("existing", "ssd", (700 * MIB) as i64, 0)
        .await
        .expect_err("too big");
    assert!(matches!(err, Error::NoSpace { .. }), "{err:?}");
    assert!(matches!(
        lvmd.resize_lv("nope", "ssd", MIB as i64, 0).await,
        Err(Error::VolumeNotFound { .. })
    ));

    fake.set_report(&report(&[
        &Vg::new("vg1", 1024 * MIB, 412 * MIB).thick("existing", 200 * MIB)
    ]));
    assert_eq!(
        lvmd.resize_lv("existing", "ssd", (200 * MIB) as i64, 0)
            .await
            .expect("grown"),
        200 * MIB
    );
    assert_eq!(
        fake.mutations(),
        [["lvextend", "-L", "209715200b", "vg1/existing"]]
    );
}

#[tokio::test]
async fn snapshots_thin_and_thick() {
    let small = thin_pool_with_one_volume;
    let (fake, lvmd) = lvmd_with(&report(&[&small()])).await;
    fake.set_report(&report(&[&small().lv(
        "ts",
        100 * MIB,
        "Vri-a-tz-k",
        "pool",
        "thin1",
    )]));
    let snap = lvmd
        .create_snapshot(CreateSnapshot {
            name: "ts".into(),
            device_class: "thin".into(),
            source_volume: "thin1".into(),
            access_type: "ro".into(),
            ..Default::default()
        })
        .await
        .expect("thin snapshot");
    assert_eq!(snap.origin.as_deref(), Some("thin1"));
    assert_eq!(
        fake.mutations()[0],
        [
            "lvcreate",
            "-s",
            "-n",
            "ts",
            "-k",
            "n",
            "-p",
            "r",
            "-y",
            "--addtag",
            "topolvm.io/managed",
            "--addtag",
            "topolvm.io/volume=ts",
            "--addtag",
            "topolvm.io/device-class=thin",
            "vg1/thin1"
        ]
    );

    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    fake.set_report(&report(&[&base().lv(
        "cow",
        100 * MIB,
        "swi-a-s---",
        "",
        "existing",
    )]));
    lvmd.create_snapshot(CreateSnapshot {
        name: "cow".into(),
        device_class: "ssd".into(),
        source_volume: "existing".into(),
        access_type: "rw".into(),
        size_bytes: (20 * MIB) as i64,
        ..Default::default()
    })
    .await
    .expect("thick snapshot");
    assert_eq!(
        fake.mutations()[0][..9],
        [
            "lvcreate",
            "-s",
            "-n",
            "cow",
            "-L",
            "20971520b",
            "-p",
            "rw",
            "-y"
        ]
    );
}

#[tokio::test]
async fn snapshot_refusals() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    let snap = |name: &str, class: &str, source: &str, access: &str, size: u64| CreateSnapshot {
        name: name.into(),
        device_class: class.into(),
        source_volume: source.into(),
        access_type: access.into(),
        size_bytes: size as i64,
        ..Default::default()
    };
    type Expectation = fn(&Error) -> bool;
    let cases: Vec<(CreateSnapshot, Expectation)> = vec![
        (snap("s", "thin", "thin1", "rx", 0), |e| {
            matches!(e, Error::InvalidArgument(_))
        }),
        (snap("s", "thin", "-x", "ro", 0), |e| {
            matches!(e, Error::InvalidArgument(_))
        }),
        (snap("s", "thin", "nope", "ro", 0), |e| {
            matches!(e, Error::VolumeNotFound { .. })
        }),
        (snap("s", "thin", "existing", "ro", 0), |e| {
            matches!(e, Error::NotInClass { .. })
        }),
        (snap("s", "ssd", "thin1", "ro", 0), |e| {
            matches!(e, Error::NotInClass { .. })
        }),
        (snap("s", "thin", "thin1", "ro", MIB), |e| {
            matches!(e, Error::SmallerThanSource(_))
        }),
        (snap("s", "ssd", "existing", "ro", 600 * MIB), |e| {
            matches!(e, Error::NoSpace { .. })
        }),
        (snap("existing", "ssd", "thin1", "ro", 0), |e| {
            matches!(e, Error::Exists { .. })
        }),
    ];
    for (req, want) in cases {
        let err = lvmd
            .create_snapshot(req.clone())
            .await
            .expect_err("refused");
        assert!(want(&err), "{req:?}: {err:?}");
    }
    assert!(fake.mutations().is_empty());
}

#[tokio::test]
async fn listing_separates_thick_and_thin_classes() {
    let (_fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    let thick: Vec<String> = lvmd
        .list_lvs("ssd")
        .expect("list")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(thick, ["existing"]);
    let thin: Vec<String> = lvmd
        .list_lvs("thin")
        .expect("list")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(thin, ["thin1"]);
    // 2.0 × 256 MiB − 300 MiB
    assert_eq!(lvmd.free_bytes("thin").expect("free"), 212 * MIB);
}

/// LVM's own message when `lvcreate` finds the name taken (captured from real lvm2).
const LVCREATE_EXISTS: &str = include_str!("../../tests/fixtures/lvcreate-exists.stderr");

/// A volume made behind lvmd's back after its cache was read (the `lvcreate` of an lvmd that was
/// killed mid-request, running on): lvmd's own `lvcreate` then fails with "already exists", and
/// lvmd answers from a fresh report as for an existing volume, of the same size or not.
#[tokio::test]
async fn create_that_lvm_finds_already_made_is_answered_as_an_existing_volume() {
    let (fake, lvmd) = lvmd_with(&report(&[&base()])).await;
    fake.set_report(&report(&[&base().thick("raced", 8 * MIB)]));
    fake.push_result(Err((5, LVCREATE_EXISTS.to_owned())));
    let lv = lvmd
        .create_lv(create("raced", "ssd", 8 * MIB))
        .await
        .expect("the volume made meanwhile is returned");
    assert_eq!((lv.name.as_str(), lv.size), ("raced", 8 * MIB));
    assert_eq!(fake.mutations().len(), 1, "{:?}", fake.mutations());

    fake.set_report(&report(&[&base()
        .thick("raced", 8 * MIB)
        .thick("other", 40 * MIB)]));
    fake.push_result(Err((5, LVCREATE_EXISTS.to_owned())));
    let err = lvmd
        .create_lv(create("other", "ssd", 8 * MIB))
        .await
        .expect_err("made meanwhile with another size");
    assert!(matches!(err, Error::Exists { .. }), "{err:?}");
    assert_eq!(fake.mutations().len(), 2, "{:?}", fake.mutations());
}

/// The same for snapshots: a snapshot of the requested source found made is returned, a volume
/// of that name that is no such snapshot is refused as existing.
#[tokio::test]
async fn snapshot_that_lvm_finds_already_made_is_answered_as_an_existing_one() {
    let small = thin_pool_with_one_volume;
    let (fake, lvmd) = lvmd_with(&report(&[&small()])).await;
    let req = |name: &str| CreateSnapshot {
        name: name.into(),
        device_class: "thin".into(),
        source_volume: "thin1".into(),
        access_type: "ro".into(),
        ..Default::default()
    };
    let raced = || small().lv("ts", 100 * MIB, "Vri-a-tz-k", "pool", "thin1");
    fake.set_report(&report(&[&raced()]));
    fake.push_result(Err((5, LVCREATE_EXISTS.to_owned())));
    let snap = lvmd.create_snapshot(req("ts")).await.expect("found made");
    assert_eq!(snap.origin.as_deref(), Some("thin1"));
    assert_eq!(fake.mutations().len(), 1, "{:?}", fake.mutations());

    fake.set_report(&report(&[&raced().thin("plain", 100 * MIB, "pool")]));
    fake.push_result(Err((5, LVCREATE_EXISTS.to_owned())));
    let err = lvmd
        .create_snapshot(req("plain"))
        .await
        .expect_err("not a snapshot of thin1");
    assert!(matches!(err, Error::Exists { .. }), "{err:?}");
    assert_eq!(fake.mutations().len(), 2, "{:?}", fake.mutations());
}

/// The copies a [`recording_copier`] was asked for: source, target, length.
type Copies = Arc<std::sync::Mutex<Vec<(String, String, u64)>>>;

/// Records every device copy, failing the first `fail` of them.
fn recording_copier(fail: usize) -> (Copies, copy::Copier) {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = calls.clone();
    let copier = copy::Copier(Arc::new(move |from: &Path, to: &Path, len: u64| {
        let mut seen = seen.lock().expect("lock");
        seen.push((from.display().to_string(), to.display().to_string(), len));
        if seen.len() <= fail {
            Err(std::io::Error::other("device went away"))
        } else {
            Ok(())
        }
    }));
    (calls, copier)
}

/// `existing` (100 MiB) with a thick snapshot `snap` of it.
fn with_thick_snapshot() -> Vg {
    base().lv("snap", 100 * MIB, "swi-a-s---", "", "existing")
}

fn copy_tags(name: &str, pending: bool) -> String {
    let mut tags = format!(
        "topolvm.io/managed,topolvm.io/volume={name},topolvm.io/device-class=ssd,\
         topolvm.io/copy-source=snap"
    );
    if pending {
        tags.push_str(",topolvm.io/copy-pending");
    }
    tags
}

fn restore_req(name: &str, access: &str, size: u64) -> CreateSnapshot {
    CreateSnapshot {
        name: name.into(),
        device_class: "ssd".into(),
        source_volume: "snap".into(),
        access_type: access.into(),
        size_bytes: size as i64,
        ..Default::default()
    }
}

/// LVM refuses a snapshot of a thick snapshot: lvmd makes a plain volume marked pending, copies
/// the snapshot's device into it, and only then drops the mark (read-only in the same command
/// when asked).
#[tokio::test]
async fn a_thick_snapshot_is_restored_by_copying_its_blocks() {
    for (access, finish) in [
        (
            "rw",
            vec!["lvchange", "--deltag", "topolvm.io/copy-pending", "vg1/r"],
        ),
        (
            "ro",
            vec![
                "lvchange",
                "-p",
                "r",
                "--deltag",
                "topolvm.io/copy-pending",
                "vg1/r",
            ],
        ),
    ] {
        let (fake, lvmd) = lvmd_with(&report(&[&with_thick_snapshot()])).await;
        let (copies, copier) = recording_copier(0);
        let lvmd = lvmd.with_copier(copier);
        let made = |pending| {
            with_thick_snapshot().tagged_lv(
                "r",
                100 * MIB,
                "-wi-a-----",
                "",
                "",
                &copy_tags("r", pending),
            )
        };
        fake.then_report(&report(&[&made(true)]));
        fake.then_report(&report(&[&made(false)]));
        let lv = lvmd
            .create_snapshot(restore_req("r", access, 0))
            .await
            .expect("restore from a thick snapshot");
        assert_eq!(lv.size, 100 * MIB);
        assert!(!copy_pending(&lv), "{:?}", lv.tags);
        assert_eq!(copy_source(&lv), Some("snap"));
        let mutations = fake.mutations();
        assert_eq!(
            mutations[0],
            [
                "lvcreate",
                "-n",
                "r",
                "-L",
                "104857600b",
                "-W",
                "y",
                "-y",
                "--addtag",
                "topolvm.io/managed",
                "--addtag",
                "topolvm.io/volume=r",
                "--addtag",
                "topolvm.io/device-class=ssd",
                "--addtag",
                "topolvm.io/copy-source=snap",
                "--addtag",
                "topolvm.io/copy-pending",
                "vg1"
            ]
        );
        assert_eq!(mutations[1], finish, "{access}");
        assert_eq!(mutations.len(), 2);
        assert_eq!(
            *copies.lock().expect("lock"),
            [(
                "/dev/vg1/snap".to_owned(),
                "/dev/vg1/r".to_owned(),
                100 * MIB
            )],
            "the snapshot's whole size, onto the new volume"
        );

        // A repeat finds the finished copy and neither runs lvm nor copies again.
        lvmd.create_snapshot(restore_req("r", access, 0))
            .await
            .expect("repeat");
        assert_eq!(fake.mutations().len(), 2);
        assert_eq!(copies.lock().expect("lock").len(), 1);
    }
}

/// A copy that failed (or an lvmd killed halfway) leaves the volume marked pending; the next
/// request copies again instead of handing out a half-copied volume, and a caller never gets it
/// before its copy is whole.
#[tokio::test]
async fn an_unfinished_copy_is_redone() {
    let pending = with_thick_snapshot().tagged_lv(
        "r",
        128 * MIB,
        "-wi-a-----",
        "",
        "",
        &copy_tags("r", true),
    );
    let (fake, lvmd) = lvmd_with(&report(&[&with_thick_snapshot()])).await;
    let (copies, copier) = recording_copier(1);
    let lvmd = lvmd.with_copier(copier);
    fake.then_report(&report(&[&pending]));
    let err = lvmd
        .create_snapshot(restore_req("r", "rw", 128 * MIB))
        .await
        .expect_err("the copy failed");
    assert!(
        matches!(&err, Error::CopyFailed { reason, .. } if reason.contains("device went away")),
        "{err:?}"
    );
    assert_eq!(
        fake.mutations().len(),
        1,
        "only the lvcreate: the mark stays"
    );

    let done = with_thick_snapshot().tagged_lv(
        "r",
        128 * MIB,
        "-wi-a-----",
        "",
        "",
        &copy_tags("r", false),
    );
    fake.then_report(&report(&[&done]));
    let lv = lvmd
        .create_snapshot(restore_req("r", "rw", 128 * MIB))
        .await
        .expect("copied on the second try");
    assert!(!copy_pending(&lv));
    let mutations = fake.mutations();
    assert_eq!(mutations.len(), 2, "{mutations:?}");
    assert_eq!(mutations[1][0], "lvchange");
    assert_eq!(copies.lock().expect("lock").len(), 2);
    assert_eq!(
        copies.lock().expect("lock")[1].2,
        100 * MIB,
        "the source's size, not the larger volume's"
    );

    // Someone else's source of the same name is not copied into the volume.
    let other = lvmd
        .create_snapshot(CreateSnapshot {
            source_volume: "existing".into(),
            ..restore_req("r", "rw", 128 * MIB)
        })
        .await
        .expect_err("another source");
    assert!(matches!(other, Error::Exists { .. }), "{other:?}");
}

#[tokio::test]
async fn copy_refusals() {
    let (fake, lvmd) = lvmd_with(&report(&[&with_thick_snapshot()])).await;
    let (copies, copier) = recording_copier(0);
    let lvmd = lvmd.with_copier(copier);
    let err = lvmd
        .create_snapshot(restore_req("r", "rw", 50 * MIB))
        .await
        .expect_err("smaller than the snapshot");
    assert!(matches!(err, Error::SmallerThanSource(_)), "{err:?}");
    let err = lvmd
        .create_snapshot(restore_req("r", "rw", 600 * MIB))
        .await
        .expect_err("no room");
    assert!(matches!(err, Error::NoSpace { .. }), "{err:?}");
    for tag in ["topolvm.io/copy-pending", "topolvm.io/copy-source=x"] {
        let err = lvmd
            .create_snapshot(CreateSnapshot {
                tags: vec![tag.into()],
                ..restore_req("r", "rw", 0)
            })
            .await
            .expect_err("a reserved tag");
        assert!(matches!(err, Error::InvalidArgument(_)), "{tag}: {err:?}");
    }
    assert!(fake.mutations().is_empty());
    assert!(copies.lock().expect("lock").is_empty());
}
