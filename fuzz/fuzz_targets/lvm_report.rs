//! lvmd's decoder of `lvm fullreport` JSON (`lvmd::lvm::report::parse_fullreport`): any text
//! gives volume groups or a `ReportError`, never a panic, and what it gives holds together.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lvmd::lvm::report::parse_fullreport;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(vgs) = parse_fullreport(text) else {
        return;
    };
    for (name, vg) in &vgs {
        assert_eq!(name, &vg.name);
        for tag in &vg.tags {
            assert!(!tag.is_empty() && !tag.contains(','), "vg tag {tag:?}");
        }
        for (lv_name, lv) in &vg.lvs {
            assert_eq!(lv_name, &lv.name);
            assert_eq!(lv.vg_name, vg.name);
            assert!(!lv.name.starts_with('['), "hidden LV {:?} kept", lv.name);
            assert!(lv.stripes >= 1);
            for tag in &lv.tags {
                assert!(!tag.is_empty() && !tag.contains(','), "lv tag {tag:?}");
            }
            // A snapshot whose origin is listed is shown at the origin's size.
            if lv.is_thick_snapshot()
                && let Some(origin) = lv.origin.as_ref().and_then(|o| vg.lvs.get(o))
            {
                assert!(lv.cow_size.is_some());
                if !origin.is_thick_snapshot() {
                    assert_eq!(lv.size, origin.size);
                }
            }
            let _ = lv.allocated_bytes();
            let _ = lv.zeroing_attr();
        }
    }
});
