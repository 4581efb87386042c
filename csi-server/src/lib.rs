//! What the CSI servers of topolvm-node (Identity and Node) and topolvm-controller (Identity
//! and Controller) share, so both answer, count and refuse alike:
//!
//! - [`identity`]: the Identity service, TopoLVM's plugin name and capabilities, a Probe that
//!   reports readiness;
//! - [`metrics`]: a call counter by method and gRPC code and a duration histogram by method,
//!   with gRPC-Go's code names as label values;
//! - [`unimplemented`]: the answer for an RPC whose capability the plugin does not announce.
//!
//! The gRPC status of each domain failure is each server's own (its error type names the
//! failures; its service module alone picks the code).
#![forbid(unsafe_code)]

pub mod identity;
pub mod metrics;

use tonic::{Response, Status};

/// The answer for `method`, whose `capability` the plugin does not announce: the CSI spec's
/// "Call not implemented" (v1.12.0, "Error Scheme": a CO must not call it, and `UNIMPLEMENTED`
/// says so if it does).
pub fn unimplemented<T>(method: &str, capability: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{method}: this plugin does not announce the {capability} capability"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unimplemented_is_the_spec_code_and_names_the_capability() {
        let status = unimplemented::<()>("NodeStageVolume", "STAGE_UNSTAGE_VOLUME")
            .expect_err("never answers");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("NodeStageVolume"));
        assert!(status.message().contains("STAGE_UNSTAGE_VOLUME"));
    }
}
