// Generated code comes from the .proto files beside this crate; protoc ships inside the
// protoc-bin-vendored crate so a fresh machine needs no system package to build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts run single-threaded, so setting the variable is race-free.
    unsafe_env_set("PROTOC", protoc.as_os_str());
    tonic_prost_build::configure().compile_protos(&["lvmd.proto"], &["."])?;
    println!("cargo:rerun-if-changed=lvmd.proto");
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_env_set(key: &str, value: &std::ffi::OsStr) {
    // std::env::set_var is unsafe in edition 2024; a build script has no other threads.
    unsafe { std::env::set_var(key, value) }
}
