//! The pod webhook's request path: `decode_review` on the body of `POST /pod/mutate`, then
//! `admit` on the pod it carries, with a lookup that finds a TopoLVM StorageClass for every
//! name starting with `topolvm` and a pending 1Gi claim for every claim name. No body makes
//! either panic; a version other than the two the webhook serves is refused; a patch it
//! answers with applies to the pod it was made from and sets capacity annotations in bytes.
#![no_main]

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use topolvm_controller::webhook::{Answer, Lookup, admit, decode_review};
use topolvm_core::names::capacity_annotation_device_class;

struct Stub;

impl Lookup for Stub {
    async fn claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, kube::Error> {
        if name.is_empty() {
            return Ok(None);
        }
        let claim = json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"storageClassName": name, "resources": {"requests": {"storage": "1Gi"}}},
        });
        Ok(Some(serde_json::from_value(claim).expect("a claim")))
    }

    async fn storage_class(&self, name: &str) -> Result<Option<StorageClass>, kube::Error> {
        let (provisioner, device_class) = match name.strip_prefix("topolvm") {
            Some(class) => ("topolvm.io", class.trim_start_matches('-')),
            None if name.is_empty() => return Ok(None),
            None => ("ebs.csi.aws.com", ""),
        };
        let class = json!({
            "metadata": {"name": name},
            "provisioner": provisioner,
            "parameters": {"topolvm.io/device-class": device_class},
        });
        Ok(Some(serde_json::from_value(class).expect("a StorageClass")))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(review) = decode_review(data) else {
        return;
    };
    assert!(review.api_version.starts_with("admission.k8s.io/v1"));
    let answer = futures::executor::block_on(admit(&review.object, &review.namespace, &Stub));
    match answer {
        Answer::Allowed => {}
        Answer::Refused { code, .. } => assert!(matches!(code, 400 | 403 | 500), "code {code}"),
        Answer::Mutated(patch) => {
            let mut pod = review.object.clone();
            json_patch::patch(&mut pod, &patch).expect("the patch applies to its pod");
            let annotations = pod["metadata"]["annotations"]
                .as_object()
                .expect("a mutated pod has annotations");
            // Annotations the patch changed are ours, in bytes.
            for (key, value) in annotations {
                if review.object["metadata"]["annotations"][key] != *value {
                    assert!(
                        capacity_annotation_device_class(key).is_some(),
                        "{key} changed"
                    );
                    let value = value.as_str().expect("a string value");
                    assert!(value.parse::<u64>().is_ok(), "{key}: {value:?}");
                }
            }
        }
    }
});
