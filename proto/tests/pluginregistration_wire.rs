//! Wire-level checks of the generated kubelet plugin registration code: the bytes kubelet's
//! Go code would send and expect, from the field numbers and names of kubernetes/kubernetes
//! staging/src/k8s.io/kubelet/pkg/apis/pluginregistration/v1/api.proto, written out by hand.

use prost::Message;
use tonic::server::NamedService;
use topolvm_proto::pluginregistration::{
    PluginInfo, RegistrationStatus, registration_server::RegistrationServer,
};

/// A length-delimited field: key (field number << 3 | 2), length, bytes.
fn len_field(number: u8, payload: &str) -> Vec<u8> {
    let mut out = vec![
        (number << 3) | 2,
        u8::try_from(payload.len()).expect("short"),
    ];
    out.extend_from_slice(payload.as_bytes());
    out
}

#[test]
fn plugin_info_is_type_1_name_2_endpoint_3_versions_4() {
    let info = PluginInfo {
        r#type: "CSIPlugin".into(),
        name: "topolvm.io".into(),
        endpoint: "/csi.sock".into(),
        supported_versions: vec!["1.0.0".into(), "1.1.0".into()],
    };
    let expected = [
        len_field(1, "CSIPlugin"),
        len_field(2, "topolvm.io"),
        len_field(3, "/csi.sock"),
        len_field(4, "1.0.0"),
        len_field(4, "1.1.0"),
    ]
    .concat();
    assert_eq!(info.encode_to_vec(), expected);
}

#[test]
fn registration_status_is_plugin_registered_1_error_2() {
    // What kubelet sends when its handler refuses the plugin: false (omitted) and the text.
    let refused = [len_field(2, "refused")].concat();
    let status = RegistrationStatus::decode(refused.as_slice()).expect("decodes");
    assert!(!status.plugin_registered);
    assert_eq!(status.error, "refused");
    // Accepted: field 1, varint 1.
    let accepted = RegistrationStatus::decode(&[0x08, 0x01][..]).expect("decodes");
    assert!(accepted.plugin_registered);
    assert!(accepted.error.is_empty());
}

#[test]
fn the_service_is_kubelets_package_and_name() {
    // kubelet calls /pluginregistration.Registration/GetInfo and .../NotifyRegistrationStatus.
    assert_eq!(
        <RegistrationServer<()> as NamedService>::NAME,
        "pluginregistration.Registration"
    );
}
