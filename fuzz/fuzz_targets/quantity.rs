//! The Kubernetes quantity parser (`topolvm_core::quantity::parse_quantity_bytes`): no panic on
//! any string; a size it accepts is within `MAX_QUANTITY_BYTES`, reads the same with the
//! suffix spelled as an exponent or a binary multiple, and survives a round trip through
//! `format_bytes_quantity`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use topolvm_core::quantity::{MAX_QUANTITY_BYTES, format_bytes_quantity, parse_quantity_bytes};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(bytes) = parse_quantity_bytes(input) else {
        return;
    };
    assert!(bytes <= MAX_QUANTITY_BYTES, "{input:?} gave {bytes}");
    let formatted = format_bytes_quantity(bytes);
    assert_eq!(
        parse_quantity_bytes(&formatted.0),
        Ok(bytes),
        "{input:?} -> {bytes} -> {formatted:?}"
    );
    // The same number with other suffixes: plain digits, `k` against `e3`, `Ki` against 1024.
    let plain = bytes.to_string();
    assert_eq!(parse_quantity_bytes(&plain), Ok(bytes));
    if let Some(thousands) = plain.strip_suffix("000")
        && !thousands.is_empty()
    {
        assert_eq!(parse_quantity_bytes(&format!("{thousands}k")), Ok(bytes));
        assert_eq!(parse_quantity_bytes(&format!("{thousands}e3")), Ok(bytes));
    }
    if bytes % 1024 == 0 && bytes > 0 {
        assert_eq!(
            parse_quantity_bytes(&format!("{}Ki", bytes / 1024)),
            Ok(bytes)
        );
    }
});
