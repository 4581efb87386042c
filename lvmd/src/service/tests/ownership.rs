//! Which volumes lvmd may change, and the adoption of TopoLVM's untagged volumes.

use super::*;

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
