//! CreateLV, GetLVList, ResizeLV and RemoveLV: idempotence, the commands run, the recorded
//! changes and their confirmation.

use super::*;

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

/// A volume created without a device node waits for the report (which has its numbers) only
/// where activation is on: in the report lvm printed inside the VM (every volume active), not in
/// the host's metadata-only one (none active), nor when the prediction found its node.
#[test]
fn a_new_volume_without_its_device_node_waits_for_the_report_where_activation_is_on() {
    use crate::lvm::report::parse_fullreport;
    use crate::state::{Change, Snapshot};

    let snapshot = |fixture: &str| Snapshot {
        vgs: parse_fullreport(fixture).expect("a captured report"),
    };
    let vm = snapshot(include_str!(
        "../../../tests/fixtures/fullreport-vm-thin.json"
    ));
    let host = snapshot(include_str!(
        "../../../tests/fixtures/fullreport-host-thick.json"
    ));
    let created = |snap: &Snapshot, major: Option<u32>| {
        let vg = snap.vgs.values().next().expect("one volume group");
        let mut lv = vg.lvs.values().next().expect("a volume").clone();
        lv.name = "new".to_owned();
        lv.kernel_major = major;
        lv.kernel_minor = major;
        Change::Created {
            lv: Box::new(lv),
            allocated: 0,
        }
    };
    assert!(super::super::awaits_device_node(&created(&vm, None), &vm));
    assert!(!super::super::awaits_device_node(
        &created(&vm, Some(253)),
        &vm
    ));
    assert!(!super::super::awaits_device_node(
        &created(&host, None),
        &host
    ));
}
