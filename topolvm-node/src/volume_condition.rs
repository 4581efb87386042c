//! The CSI `VolumeCondition` of a volume, read from its LVM `lv_attr` (the ten attribute
//! characters of lvs(8)) by the rules TopoLVM's node applies (`VerifyHealth` in
//! `internal/lvmd/command/lvm_lv_attr.go` @ 1857b4774ca5, used by `getVolumeCondition` in
//! `internal/driver/node.go` @ 110864718b8f): the health character (9th) for every volume and by
//! volume type (1st) for thin pools, thin volumes and RAID, then the state (5th) and the open flag
//! (6th). NodeGetVolumeStats reports it.

use thiserror::Error;

/// What NodeGetVolumeStats reports about a volume's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeCondition {
    pub abnormal: bool,
    pub message: String,
}

/// The attribute string is not what LVM prints.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("lv_attr {0:?} is not 10 ASCII characters")]
pub struct BadAttr(pub String);

/// TopoLVM's message for a healthy volume.
const HEALTHY: &str = "volume is healthy and operating normally";

/// The condition of a volume whose `lv_attr` is `attr`.
pub fn volume_condition(attr: &str) -> Result<VolumeCondition, BadAttr> {
    let chars: Vec<char> = attr.chars().collect();
    if chars.len() != 10 || !attr.is_ascii() {
        return Err(BadAttr(attr.to_owned()));
    }
    let (kind, state, open, health) = (chars[0], chars[4], chars[5], chars[8]);
    Ok(match problem(kind, state, open, health) {
        Some(message) => VolumeCondition {
            abnormal: true,
            message: message.to_owned(),
        },
        None => VolumeCondition {
            abnormal: false,
            message: HEALTHY.to_owned(),
        },
    })
}

fn problem(kind: char, state: char, open: char, health: char) -> Option<&'static str> {
    let by_health = match (kind, health) {
        (_, 'p') => Some("some physical volumes of the volume are missing (partial activation)"),
        (_, 'X') => Some("LVM cannot tell the volume's health; check it on the host"),
        (_, 'E') => Some("dm-writecache reports an error"),
        ('t', 'F') => Some("the thin pool has failed; no I/O is possible"),
        ('t', 'D') => Some("the thin pool is out of data space"),
        ('t', 'M') => Some("the thin pool's metadata is read-only after a failure"),
        ('V', 'F') => Some("the volume's thin pool has failed; no I/O is possible"),
        ('r' | 'R', 'r') => {
            Some("a RAID image had a write error and needs a refresh or replacement")
        }
        ('r' | 'R', 'm') => Some("the RAID images hold data that does not match"),
        ('r' | 'R', 's') => Some("the RAID volume is being reshaped"),
        ('r' | 'R', 'R') => Some("the RAID volume has images freed by a reshape"),
        ('r' | 'R', 'w') => Some("a RAID image is write-mostly"),
        _ => None,
    };
    by_health
        .or(match state {
            's' | 'S' => Some("the volume is suspended; no I/O is possible"),
            'I' => Some("the volume is an invalid snapshot"),
            'm' | 'M' => Some("merging the snapshot failed"),
            'i' => Some("the device is mapped with inactive tables"),
            'd' => Some("the device is mapped without tables"),
            'c' | 'C' => Some("the thin pool needs a check"),
            'X' => Some("LVM cannot tell the volume's state; check it on the host"),
            'h' => Some("the volume no longer exists (historical)"),
            _ => None,
        })
        .or((open == 'X').then_some("LVM cannot tell the state of the volume's device"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `lv_attr` of an `lvm fullreport` JSON captured from real lvm2.
    fn fixture_attrs(json: &str) -> Vec<String> {
        let report: serde_json::Value = serde_json::from_str(json).expect("fixture");
        report["report"]
            .as_array()
            .expect("sections")
            .iter()
            .flat_map(|section| section["lv"].as_array().into_iter().flatten())
            .filter_map(|lv| lv["lv_attr"].as_str().map(str::to_owned))
            .collect()
    }

    fn abnormal(attr: &str) -> bool {
        volume_condition(attr).expect("valid attr").abnormal
    }

    /// Every volume real lvm2 reported in the VM tier (thin pool, thin volumes, a thin snapshot,
    /// a thick origin and its snapshot, all active and well) is healthy.
    #[test]
    fn volumes_real_lvm_reported_healthy_are_healthy() {
        let attrs = fixture_attrs(include_str!(
            "../../lvmd/tests/fixtures/fullreport-vm-thin.json"
        ));
        assert!(attrs.len() >= 6, "{attrs:?}");
        for attr in &attrs {
            let condition = volume_condition(attr).expect("valid");
            assert!(!condition.abnormal, "{attr}");
            assert_eq!(
                condition.message,
                "volume is healthy and operating normally"
            );
        }
    }

    /// With activation off (the host tier), LVM reports state and open as unknown (`X`), which
    /// TopoLVM counts as abnormal.
    #[test]
    fn unknown_state_from_real_metadata_only_lvm_is_abnormal() {
        let attrs = fixture_attrs(include_str!(
            "../../lvmd/tests/fixtures/fullreport-host-thick.json"
        ));
        assert!(!attrs.is_empty());
        for attr in &attrs {
            assert_eq!(&attr[4..6], "XX", "{attr}");
            assert!(abnormal(attr), "{attr}");
        }
    }

    /// The characters TopoLVM's `VerifyHealth` (`internal/lvmd/command/lvm_lv_attr.go` @
    /// 1857b4774ca5) treats as abnormal, each in an otherwise healthy attribute string, and the
    /// ones it accepts.
    #[test]
    fn topolvm_health_rules() {
        let with = |kind: char, state: char, open: char, health: char| {
            format!("{kind}wi-{state}{open}--{health}-")
        };
        for health in ['p', 'X', 'E'] {
            for kind in ['-', 'V', 't', 'r', 's'] {
                assert!(abnormal(&with(kind, 'a', 'o', health)), "{kind} {health}");
            }
        }
        for health in ['F', 'D', 'M'] {
            assert!(abnormal(&with('t', 'a', 'o', health)), "pool {health}");
        }
        assert!(abnormal(&with('V', 'a', 'o', 'F')));
        for health in ['D', 'M'] {
            assert!(
                !abnormal(&with('V', 'a', 'o', health)),
                "thin volume {health}"
            );
        }
        for kind in ['r', 'R'] {
            for health in ['r', 'm', 's', 'R', 'w'] {
                assert!(abnormal(&with(kind, 'a', 'o', health)), "{kind} {health}");
            }
        }
        assert!(
            !abnormal(&with('-', 'a', 'o', 'r')),
            "RAID health only counts for RAID"
        );
        for state in ['s', 'S', 'I', 'm', 'M', 'd', 'i', 'c', 'C', 'X', 'h'] {
            assert!(abnormal(&with('-', state, 'o', '-')), "state {state}");
        }
        for state in ['a', '-'] {
            assert!(!abnormal(&with('-', state, '-', '-')), "state {state}");
        }
        assert!(abnormal(&with('-', 'a', 'X', '-')));
        assert!(!abnormal(&with('-', 'a', 'o', '-')));
    }

    #[test]
    fn malformed_attributes_are_errors() {
        for attr in ["", "-wi-a----", "-wi-a------", "-wi-a-----é"] {
            assert_eq!(volume_condition(attr), Err(BadAttr(attr.to_owned())));
        }
    }
}
