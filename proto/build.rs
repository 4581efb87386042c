// Generated code comes from the .proto files beside this crate; protoc ships inside the
// protoc-bin-vendored crate so a fresh machine needs no system package to build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts run single-threaded, so setting the variable is race-free.
    unsafe_env_set("PROTOC", protoc.as_os_str());
    tonic_prost_build::configure().compile_protos(&["lvmd.proto"], &["."])?;
    println!("cargo:rerun-if-changed=lvmd.proto");
    tonic_prost_build::configure().compile_protos(&["pluginregistration.proto"], &["."])?;
    println!("cargo:rerun-if-changed=pluginregistration.proto");

    // CSI v1 imports google/protobuf/{descriptor,timestamp,wrappers}.proto. The vendored
    // crate ships those well-known files; pass its include directory explicitly rather than
    // relying on protoc finding them next to its binary. prost's defaults then map the
    // well-known types onto prost-types and plain Rust: Timestamp -> prost_types::Timestamp,
    // BoolValue -> Option<bool>, Int64Value -> Option<i64>. The custom option extensions
    // (csi_secret, alpha_*) only annotate the schema and generate no code.
    let wkt = protoc_bin_vendored::include_path()?;
    let protos = [std::path::PathBuf::from("csi.proto")];
    let includes = [std::path::PathBuf::from("."), wkt];
    tonic_prost_build::configure().compile_protos(&protos, &includes)?;
    println!("cargo:rerun-if-changed=csi.proto");
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_env_set(key: &str, value: &std::ffi::OsStr) {
    // std::env::set_var is unsafe in edition 2024; a build script has no other threads.
    unsafe { std::env::set_var(key, value) }
}
