//! The committed CRD manifest is exactly what the Rust type generates.

#[test]
fn committed_crd_matches_the_rust_type() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/crd/logicalvolumes.topolvm.io.yaml"
    );
    let committed = std::fs::read_to_string(path).expect("read the committed CRD");
    let generated = topolvm_core::crd::crd_yaml().expect("generate the CRD");
    assert!(
        committed == generated,
        "deploy/crd/logicalvolumes.topolvm.io.yaml is stale; regenerate it with\n  \
         cargo run -q -p topolvm-core --bin crdgen > deploy/crd/logicalvolumes.topolvm.io.yaml"
    );
}
