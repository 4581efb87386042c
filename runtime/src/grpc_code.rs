//! The name of a gRPC status code as gRPC-Go prints it (`codes.Code.String()`, grpc-go
//! `codes/code_string.go`): the `code` label value of every RPC counter of ours, so one
//! `code!="OK"` selects the failures of lvmd, both CSI servers and the Go sidecars alike.
//! tonic's `Debug` spells two of them otherwise (`Ok`, `Cancelled`).

use tonic::Code;

/// gRPC-Go's name of `code`.
pub fn label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// grpc-go `codes/code_string.go`, in code order 0 to 16.
    #[test]
    fn codes_are_named_as_grpc_go_names_them() {
        let go = [
            "OK",
            "Canceled",
            "Unknown",
            "InvalidArgument",
            "DeadlineExceeded",
            "NotFound",
            "AlreadyExists",
            "PermissionDenied",
            "ResourceExhausted",
            "FailedPrecondition",
            "Aborted",
            "OutOfRange",
            "Unimplemented",
            "Internal",
            "Unavailable",
            "DataLoss",
            "Unauthenticated",
        ];
        for (number, name) in go.iter().enumerate() {
            let code = Code::from_i32(i32::try_from(number).expect("small"));
            assert_eq!(label(code), *name, "code {number}");
        }
    }
}
