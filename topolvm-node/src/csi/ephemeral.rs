//! CSI inline ephemeral volumes: a pod's `volumes[].csi` entry with no PersistentVolume. kubelet
//! publishes it with `csi.storage.k8s.io/ephemeral: "true"` in the volume context and a volume ID
//! it derives itself (`csi-` and the hex SHA-256 of the pod UID and the volume's name,
//! kubernetes `pkg/volume/csi/csi_mounter.go` makeVolumeHandle). The node makes the LV on
//! publish and removes it on unpublish; the LV carries the pod's ephemeral tag so that only such
//! volumes are ever removed that way.

use std::collections::HashMap;

use topolvm_core::names::{
    DEVICE_CLASS_PARAMETER, is_valid_device_class_name, lv_tag_ephemeral_pod,
    parse_lv_tag_ephemeral_pod,
};
use topolvm_core::quantity::parse_quantity_bytes;
use topolvm_core::size::{DEFAULT_VOLUME_SIZE, VOLUME_SIZE_ALIGNMENT, round_up};
use topolvm_proto::lvmd as pb;
use tracing::info;

use super::Error;
use super::locate::Located;
use crate::lvmd_client::LvmdConnection;

/// The volume-context key kubelet sets to `"true"` for inline ephemeral volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";
/// The volume-context key of the pod's UID (podInfoOnMount).
pub const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";
/// The volume attribute giving an inline volume's size (a Kubernetes quantity).
pub const SIZE_ATTRIBUTE: &str = topolvm_core::names::INLINE_VOLUME_SIZE_ATTRIBUTE;

/// What an inline ephemeral volume should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub size_bytes: u64,
    pub device_class: String,
    pub pod_uid: String,
}

/// Whether `volume_id` has the form kubelet gives inline volumes: `csi-` and 64 lower-case hex
/// digits.
pub fn is_ephemeral_volume_id(volume_id: &str) -> bool {
    volume_id.strip_prefix("csi-").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The inline volume a publish asks for, or `None` for a persistent volume.
pub fn spec(volume_id: &str, context: &HashMap<String, String>) -> Result<Option<Spec>, Error> {
    match context.get(EPHEMERAL_KEY).map(String::as_str) {
        None | Some("false") | Some("") => return Ok(None),
        Some("true") => {}
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "volume_context {EPHEMERAL_KEY} is {other:?}, not \"true\" or \"false\""
            )));
        }
    }
    if !is_ephemeral_volume_id(volume_id) {
        return Err(Error::InvalidArgument(format!(
            "inline ephemeral volume_id {volume_id:?} is not of kubelet's form csi-<64 hex digits>"
        )));
    }
    let pod_uid = context
        .get(POD_UID_KEY)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "inline ephemeral volume without {POD_UID_KEY} (the CSIDriver needs podInfoOnMount)"
            ))
        })?;
    if !topolvm_core::names::is_valid_lvm_tag(&lv_tag_ephemeral_pod(pod_uid)) {
        return Err(Error::InvalidArgument(format!(
            "{POD_UID_KEY} {pod_uid:?} cannot be an LVM tag"
        )));
    }
    let size_bytes = match context.get(SIZE_ATTRIBUTE) {
        None => DEFAULT_VOLUME_SIZE,
        Some(quantity) => parse_quantity_bytes(quantity)
            .ok()
            .filter(|b| *b > 0)
            .and_then(|b| round_up(b, VOLUME_SIZE_ALIGNMENT))
            .filter(|b| i64::try_from(*b).is_ok())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "volume attribute {SIZE_ATTRIBUTE} {quantity:?} is not a positive quantity"
                ))
            })?,
    };
    let device_class = context
        .get(DEVICE_CLASS_PARAMETER)
        .cloned()
        .unwrap_or_default();
    if !device_class.is_empty() && !is_valid_device_class_name(&device_class) {
        return Err(Error::InvalidArgument(format!(
            "volume attribute {DEVICE_CLASS_PARAMETER} {device_class:?} is not a device class name"
        )));
    }
    Ok(Some(Spec {
        size_bytes,
        device_class,
        pod_uid: pod_uid.clone(),
    }))
}

/// Whether `located` is an inline ephemeral volume (carries a pod's ephemeral tag).
pub fn is_ephemeral(located: &Located) -> bool {
    located
        .volume
        .tags
        .iter()
        .any(|t| parse_lv_tag_ephemeral_pod(t).is_some())
}

/// Makes the LV of an inline volume (idempotent: lvmd returns an existing one of that name and
/// size).
pub async fn create(lvmd: &LvmdConnection, volume_id: &str, spec: &Spec) -> Result<Located, Error> {
    info!(volume_id, size = spec.size_bytes, class = %spec.device_class, "creating an inline ephemeral volume");
    let answer = lvmd
        .lv()
        .create_lv(pb::CreateLvRequest {
            name: volume_id.to_owned(),
            tags: vec![lv_tag_ephemeral_pod(&spec.pod_uid)],
            device_class: spec.device_class.clone(),
            size_bytes: i64::try_from(spec.size_bytes).unwrap_or(i64::MAX),
            ..Default::default()
        })
        .await
        .map_err(|status| Error::Lvmd {
            operation: "CreateLV",
            code: status.code(),
            message: status.message().to_owned(),
        })?;
    let volume = answer.into_inner().volume.ok_or_else(|| Error::Lvmd {
        operation: "CreateLV",
        code: tonic::Code::Internal,
        message: "the answer holds no volume".to_owned(),
    })?;
    Ok(Located {
        device_class: spec.device_class.clone(),
        volume,
    })
}

/// Removes the LV of an inline volume.
pub async fn remove(lvmd: &LvmdConnection, located: &Located) -> Result<(), Error> {
    info!(volume_id = %located.volume.name, class = %located.device_class, "removing an inline ephemeral volume");
    lvmd.lv()
        .remove_lv(pb::RemoveLvRequest {
            name: located.volume.name.clone(),
            device_class: located.device_class.clone(),
        })
        .await
        .map_err(|status| Error::Lvmd {
            operation: "RemoveLV",
            code: status.code(),
            message: status.message().to_owned(),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// kubelet's makeVolumeHandle: "csi-" + hex(sha256(podUID + volSourceSpecName)); this is
    /// sha256("7d1e8f5c-1111-2222-3333-444455556666scratch").
    const KUBELET_ID: &str = "csi-7419c68149e62766d014dc1b8f7f720ade5fd6f05c9eafc9b4fd1a18b61c4e6a";

    #[test]
    fn kubelet_volume_ids_only() {
        assert!(is_ephemeral_volume_id(KUBELET_ID));
        assert!(!is_ephemeral_volume_id("csi-0C7FD6F8"));
        assert!(!is_ephemeral_volume_id(&KUBELET_ID.replace("csi-", "pvc-")));
        assert!(!is_ephemeral_volume_id(&format!("{KUBELET_ID}0")));
        assert!(!is_ephemeral_volume_id(
            "4e3b1c2a-0000-4000-8000-000000000001"
        ));
    }

    #[test]
    fn persistent_volumes_are_not_ephemeral() {
        assert_eq!(spec("pv-uid", &context(&[])).expect("ok"), None);
        assert_eq!(
            spec("pv-uid", &context(&[(EPHEMERAL_KEY, "false")])).expect("ok"),
            None
        );
    }

    #[test]
    fn defaults_one_gibibyte_in_the_default_class() {
        let got = spec(
            KUBELET_ID,
            &context(&[(EPHEMERAL_KEY, "true"), (POD_UID_KEY, "uid-1")]),
        )
        .expect("ok")
        .expect("ephemeral");
        assert_eq!(got.size_bytes, 1 << 30);
        assert_eq!(got.device_class, "");
        assert_eq!(got.pod_uid, "uid-1");
    }

    #[test]
    fn size_and_class_from_the_attributes() {
        let got = spec(
            KUBELET_ID,
            &context(&[
                (EPHEMERAL_KEY, "true"),
                (POD_UID_KEY, "uid-1"),
                (SIZE_ATTRIBUTE, "100Mi"),
                ("topolvm.io/device-class", "ssd"),
            ]),
        )
        .expect("ok")
        .expect("ephemeral");
        assert_eq!(got.size_bytes, 100 << 20);
        assert_eq!(got.device_class, "ssd");
    }

    #[test]
    fn bad_inline_requests_are_invalid_arguments() {
        let base = [(EPHEMERAL_KEY, "true"), (POD_UID_KEY, "uid-1")];
        let with = |extra: (&'static str, &'static str)| {
            let mut c = context(&base);
            c.insert(extra.0.to_owned(), extra.1.to_owned());
            c
        };
        for (id, ctx) in [
            ("not-kubelets", context(&base)),
            (KUBELET_ID, context(&[(EPHEMERAL_KEY, "true")])),
            (KUBELET_ID, with((SIZE_ATTRIBUTE, "0"))),
            (KUBELET_ID, with((SIZE_ATTRIBUTE, "-1Gi"))),
            (KUBELET_ID, with((SIZE_ATTRIBUTE, "lots"))),
            (KUBELET_ID, with((EPHEMERAL_KEY, "yes"))),
            (KUBELET_ID, with((POD_UID_KEY, "a b"))),
        ] {
            assert!(
                matches!(spec(id, &ctx), Err(Error::InvalidArgument(_))),
                "{id} {ctx:?} was accepted"
            );
        }
    }
}
