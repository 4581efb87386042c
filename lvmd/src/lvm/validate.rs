//! Checks for every value that ends up as an `lvm` argument.
//!
//! lvmd never uses a shell, but a name that starts with `-` would still be read by `lvm` as an
//! option, and a name LVM itself rejects would only fail after a fork. Checking here turns both
//! into a clear `INVALID_ARGUMENT` before anything runs.

use thiserror::Error;

/// A value that may not be passed to `lvm`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InvalidName {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error("{what} {value:?} contains {ch:?}; allowed are {allowed}")]
    BadCharacter {
        what: &'static str,
        value: String,
        ch: char,
        allowed: &'static str,
    },
    #[error("{what} {value:?} must not start with '-'")]
    LeadingHyphen { what: &'static str, value: String },
    #[error("{what} {value:?} is reserved by LVM ({reason})")]
    Reserved {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

const NAME_CHARS: &str = "a-z A-Z 0-9 + _ . -";
const TAG_CHARS: &str = "a-z A-Z 0-9 _ + . - / = ! : & #";

/// LVM limits a name to 127 characters (NAME_LEN 128 including the terminator).
const MAX_NAME_LEN: usize = 127;
/// LVM limits a tag to 1024 characters.
const MAX_TAG_LEN: usize = 1024;

/// Substrings LVM reserves for the hidden sub-volumes of pools, mirrors, RAID and caches.
const RESERVED_LV_SUBSTRINGS: &[&str] = &[
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_iorig", "_imeta", "_mimage", "_mlog",
    "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
];

fn check_name_common(what: &'static str, value: &str) -> Result<(), InvalidName> {
    if value.is_empty() {
        return Err(InvalidName::Empty { what });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(InvalidName::TooLong {
            what,
            value: value.to_owned(),
            max: MAX_NAME_LEN,
        });
    }
    if let Some(ch) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-')))
    {
        return Err(InvalidName::BadCharacter {
            what,
            value: value.to_owned(),
            ch,
            allowed: NAME_CHARS,
        });
    }
    if value.starts_with('-') {
        return Err(InvalidName::LeadingHyphen {
            what,
            value: value.to_owned(),
        });
    }
    if value == "." || value == ".." {
        return Err(InvalidName::Reserved {
            what,
            value: value.to_owned(),
            reason: "\".\" and \"..\" are not names",
        });
    }
    Ok(())
}

/// Checks a volume group name.
pub fn volume_group_name(value: &str) -> Result<(), InvalidName> {
    const WHAT: &str = "volume group name";
    check_name_common(WHAT, value)?;
    if value == "snapshot" || value == "pvmove" {
        return Err(InvalidName::Reserved {
            what: WHAT,
            value: value.to_owned(),
            reason: "LVM uses it internally",
        });
    }
    Ok(())
}

/// Checks a logical volume name (also used for thin pool names).
pub fn logical_volume_name(value: &str) -> Result<(), InvalidName> {
    logical_volume_name_as("logical volume name", value)
}

/// Like [`logical_volume_name`], naming the value as `what` in the error.
pub fn logical_volume_name_as(what: &'static str, value: &str) -> Result<(), InvalidName> {
    check_name_common(what, value)?;
    if value.starts_with("snapshot") || value.starts_with("pvmove") {
        return Err(InvalidName::Reserved {
            what,
            value: value.to_owned(),
            reason: "names starting with \"snapshot\" or \"pvmove\" are LVM's",
        });
    }
    if RESERVED_LV_SUBSTRINGS.iter().any(|s| value.contains(s)) {
        return Err(InvalidName::Reserved {
            what,
            value: value.to_owned(),
            reason: "it contains a suffix LVM uses for hidden sub-volumes",
        });
    }
    Ok(())
}

/// Checks an LVM tag.
pub fn tag(value: &str) -> Result<(), InvalidName> {
    const WHAT: &str = "tag";
    if value.is_empty() {
        return Err(InvalidName::Empty { what: WHAT });
    }
    if value.len() > MAX_TAG_LEN {
        return Err(InvalidName::TooLong {
            what: WHAT,
            value: value.to_owned(),
            max: MAX_TAG_LEN,
        });
    }
    if let Some(ch) = value.chars().find(|c| {
        !(c.is_ascii_alphanumeric()
            || matches!(c, '_' | '+' | '.' | '-' | '/' | '=' | '!' | ':' | '&' | '#'))
    }) {
        return Err(InvalidName::BadCharacter {
            what: WHAT,
            value: value.to_owned(),
            ch,
            allowed: TAG_CHARS,
        });
    }
    if value.starts_with('-') {
        return Err(InvalidName::LeadingHyphen {
            what: WHAT,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Checks an `lvcreate` stripe size such as `64k` or `1m` (a number with an optional unit).
pub fn stripe_size(value: &str) -> Result<(), InvalidName> {
    const WHAT: &str = "stripe-size";
    let digits = value.trim_end_matches(|c: char| "bBsSkKmMgGtTpPeE".contains(c));
    let unit_len = value.len() - digits.len();
    if value.is_empty()
        || digits.is_empty()
        || unit_len > 1
        || !digits.chars().all(|c| c.is_ascii_digit())
    {
        return Err(InvalidName::BadCharacter {
            what: WHAT,
            value: value.to_owned(),
            ch: value
                .chars()
                .find(|c| !c.is_ascii_alphanumeric())
                .unwrap_or(' '),
            allowed: "digits followed by at most one unit letter (b s k m g t p e)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_topolvm_uses() {
        for ok in [
            "a",
            "pvc-0e0a1b2c-3d4e-5f60-7182-93a4b5c6d7e8",
            "0f2e8bd8-0b1a-4c64-a1b1-0f6ddd2f31e4",
            "my_vg.1+x",
        ] {
            assert_eq!(logical_volume_name(ok), Ok(()), "{ok}");
            assert_eq!(volume_group_name(ok), Ok(()), "{ok}");
        }
    }

    type Expectation = fn(&InvalidName) -> bool;

    #[test]
    fn rejects_names_lvm_would_misread_or_refuse() {
        let cases: &[(&str, Expectation)] = &[
            ("", |e| matches!(e, InvalidName::Empty { .. })),
            ("-n", |e| matches!(e, InvalidName::LeadingHyphen { .. })),
            ("--select", |e| {
                matches!(e, InvalidName::LeadingHyphen { .. })
            }),
            ("a b", |e| {
                matches!(e, InvalidName::BadCharacter { ch: ' ', .. })
            }),
            ("a/b", |e| {
                matches!(e, InvalidName::BadCharacter { ch: '/', .. })
            }),
            ("x;rm", |e| {
                matches!(e, InvalidName::BadCharacter { ch: ';', .. })
            }),
            ("é", |e| matches!(e, InvalidName::BadCharacter { .. })),
            (".", |e| matches!(e, InvalidName::Reserved { .. })),
            ("..", |e| matches!(e, InvalidName::Reserved { .. })),
            ("snapshot1", |e| matches!(e, InvalidName::Reserved { .. })),
            ("pvmove0", |e| matches!(e, InvalidName::Reserved { .. })),
            ("pool_tdata", |e| matches!(e, InvalidName::Reserved { .. })),
            ("x_rimage_1", |e| matches!(e, InvalidName::Reserved { .. })),
        ];
        for (name, want) in cases {
            let err = logical_volume_name(name).expect_err(name);
            assert!(want(&err), "{name}: {err:?}");
        }
        let long = "a".repeat(128);
        assert!(matches!(
            logical_volume_name(&long),
            Err(InvalidName::TooLong { max: 127, .. })
        ));
        assert_eq!(logical_volume_name(&"a".repeat(127)), Ok(()));
    }

    #[test]
    fn volume_group_reserved_names() {
        assert!(volume_group_name("snapshot").is_err());
        assert!(volume_group_name("pvmove").is_err());
        // Only the exact words are reserved for volume groups.
        assert_eq!(volume_group_name("snapshots"), Ok(()));
    }

    #[test]
    fn tags() {
        assert_eq!(tag("topolvm.io/volume=pvc-1"), Ok(()));
        assert_eq!(tag("a:b&c#d!e+f_g"), Ok(()));
        assert!(matches!(tag(""), Err(InvalidName::Empty { .. })));
        assert!(matches!(tag("-x"), Err(InvalidName::LeadingHyphen { .. })));
        assert!(matches!(tag("a b"), Err(InvalidName::BadCharacter { .. })));
        assert!(matches!(
            tag("a,b"),
            Err(InvalidName::BadCharacter { ch: ',', .. })
        ));
        assert!(matches!(
            tag(&"t".repeat(1025)),
            Err(InvalidName::TooLong { .. })
        ));
    }

    #[test]
    fn stripe_sizes() {
        for ok in ["64", "64k", "64K", "1m", "4096b", "8s"] {
            assert_eq!(stripe_size(ok), Ok(()), "{ok}");
        }
        for bad in ["", "k", "64kb", "-1", "6 4", "1.5m", "64x"] {
            assert!(stripe_size(bad).is_err(), "{bad}");
        }
    }
}
