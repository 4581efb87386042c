//! CreateLVSnapshot: thin and thick snapshots, their refusals, and the block copies that restore or
//! clone a thick snapshot.

use super::*;

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
