//! Prints the LogicalVolume CustomResourceDefinition generated from the Rust type.
//! `deploy/crd/logicalvolumes.topolvm.io.yaml` is its output; a test keeps the two equal.

fn main() -> Result<(), topolvm_core::crd::CrdError> {
    print!("{}", topolvm_core::crd::crd_yaml()?);
    Ok(())
}
