//! The capacity annotation parsers of `topolvm_core`: the key (`capacity.topolvm.io/<class>`)
//! and Go's `strconv.ParseUint` / `ParseInt` that the readers apply to the value.
//!
//! The input is split at its first newline: the key before it, the value after. The value
//! parsers must agree with Rust's `u64` / `i64` `FromStr` on every string without a leading
//! `+` for `ParseUint` (Rust accepts one, Go does not), and return Go's fallbacks on failure.
#![no_main]

use libfuzzer_sys::fuzz_target;
use topolvm_core::capacity_annotation::{
    GoParseError, go_int_or_fallback, go_uint_or_fallback, parse_go_int, parse_go_uint,
};
use topolvm_core::names::{
    CAPACITY_ANNOTATION_PREFIX, capacity_annotation_device_class, capacity_annotation_key,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (key, value) = text.split_once('\n').unwrap_or((text, text));

    match capacity_annotation_device_class(key) {
        Some(class) => {
            assert!(!class.is_empty());
            assert_eq!(format!("{CAPACITY_ANNOTATION_PREFIX}{class}"), key);
            // Writing the key back: only the default class is spelled differently.
            let written = capacity_annotation_key(class);
            assert_eq!(capacity_annotation_device_class(&written), Some(class));
        }
        None => assert!(key.strip_prefix(CAPACITY_ANNOTATION_PREFIX).is_none_or(str::is_empty)),
    }

    let unsigned = parse_go_uint(value);
    if !value.starts_with('+') {
        assert_eq!(unsigned.ok(), value.parse::<u64>().ok(), "ParseUint {value:?}");
    } else {
        assert!(unsigned.is_err());
    }
    match unsigned {
        Ok(n) => assert_eq!(go_uint_or_fallback(value), n),
        Err(GoParseError::Syntax) => assert_eq!(go_uint_or_fallback(value), 0),
        Err(GoParseError::Range) => assert_eq!(go_uint_or_fallback(value), u64::MAX),
    }

    let signed = parse_go_int(value);
    assert_eq!(signed.ok(), value.parse::<i64>().ok(), "ParseInt {value:?}");
    match signed {
        Ok(n) => assert_eq!(go_int_or_fallback(value), n),
        Err(GoParseError::Syntax) => assert_eq!(go_int_or_fallback(value), 0),
        Err(GoParseError::Range) => {
            let fallback = go_int_or_fallback(value);
            assert!(fallback == i64::MAX || fallback == i64::MIN);
        }
    }
});
