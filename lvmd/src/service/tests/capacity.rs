//! Free figures and space checks: refusals before any `lvm` call, LVM's own no-space answer, the
//! thin pool's usage threshold, and a class whose volume group is missing.

use super::*;

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
