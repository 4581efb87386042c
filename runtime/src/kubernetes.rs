//! The Kubernetes side shared by the binaries: building the client, and the one error type of
//! Kubernetes-side work (reconcilers, watches, webhooks) with a bounded metric label.

use std::path::{Path, PathBuf};

use kube::config::{InClusterError, KubeConfigOptions, KubeconfigError};
use kube::runtime::finalizer;
use thiserror::Error as ThisError;

/// Why no client could be built.
#[derive(Debug, ThisError)]
pub enum ClientError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: KubeconfigError,
    },
    #[error(
        "no in-cluster configuration ({in_cluster}) and no usable ~/.kube/config ({kubeconfig})"
    )]
    NoConfig {
        in_cluster: InClusterError,
        kubeconfig: KubeconfigError,
    },
    #[error("building the Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// A client configured as controller-runtime's binaries (TopoLVM's) find their configuration:
/// the `kubeconfig` file when given (`--kubeconfig`), else the files in `$KUBECONFIG`, else the
/// in-cluster service account, else `~/.kube/config`; the file's current context.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let options = KubeConfigOptions::default();
    let config = match (kubeconfig, std::env::var_os("KUBECONFIG")) {
        (Some(path), _) => {
            let err = |source| ClientError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(err)?
        }
        (None, Some(paths)) if !paths.is_empty() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|source| ClientError::Kubeconfig {
            path: PathBuf::from(paths),
            source,
        })?,
        (None, _) => match kube::Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => {
                kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(|kubeconfig| ClientError::NoConfig {
                        in_cluster,
                        kubeconfig,
                    })?
            }
        },
    };
    Ok(kube::Client::try_from(config)?)
}

/// Everything Kubernetes-side work can fail with, and the one vocabulary of metric labels for
/// it. The controller's reconcilers return it; the node's LogicalVolume reconciler wraps it in
/// its own error (which adds lvmd's failures, unknown here). Their error policies count
/// failures by [`Error::metric_label`] and requeue.
#[derive(Debug, ThisError)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("serializing {what}: {source}")]
    Serialization {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{kind} {name}: {reason}")]
    InvalidObject {
        kind: &'static str,
        name: String,
        reason: String,
    },
}

impl From<finalizer::Error<Error>> for Error {
    fn from(e: finalizer::Error<Error>) -> Self {
        Self::Finalizer(Box::new(e))
    }
}

impl Error {
    /// A short, fixed label for metrics: one of a handful of values, never a message, so the
    /// number of time series stays bounded. A failure inside a finalizer's apply or cleanup
    /// step is labelled by its own cause.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(status)) => match status.code {
                404 => "not_found",
                409 if status.is_already_exists() => "already_exists",
                409 => "conflict",
                403 => "forbidden",
                410 => "gone",
                422 => "invalid",
                429 => "throttled",
                500..=599 => "api_server_error",
                _ => "api_error",
            },
            Self::Kube(_) => "kube_client",
            Self::Finalizer(e) => finalizer_metric_label(e, Self::metric_label),
            Self::Serialization { .. } => "serialization",
            Self::InvalidObject { .. } => INVALID_OBJECT,
        }
    }
}

/// The label of an object the API server would never send (no name, no uid).
const INVALID_OBJECT: &str = "invalid_object";

/// The label of a failure inside kube-runtime's `finalizer()`, for any reconciler's error `E`:
/// a failed apply or cleanup step is labelled by its own cause (`inner`), a failed finalizer
/// patch `finalizer`, an object without a name `invalid_object`.
pub fn finalizer_metric_label<E>(
    error: &finalizer::Error<E>,
    inner: impl Fn(&E) -> &'static str,
) -> &'static str
where
    E: std::error::Error + 'static,
{
    match error {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => inner(e),
        finalizer::Error::AddFinalizer(_) | finalizer::Error::RemoveFinalizer(_) => "finalizer",
        _ => INVALID_OBJECT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error as the API server sends it (a `metav1.Status` body).
    fn api_error(body: &str) -> Error {
        let status: kube::core::Status = serde_json::from_str(body).expect("a Status document");
        Error::Kube(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn api_server_failures_get_their_labels() {
        // Bodies in the form kube-apiserver answers them (apimachinery's StatusError).
        let conflict = api_error(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Operation cannot be fulfilled on logicalvolumes.topolvm.io \"pvc-1\": the object has been modified; please apply your changes to the latest version and try again","reason":"Conflict","details":{"name":"pvc-1","group":"topolvm.io","kind":"logicalvolumes"},"code":409}"#,
        );
        let exists = api_error(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"logicalvolumes.topolvm.io \"pvc-1\" already exists","reason":"AlreadyExists","details":{"name":"pvc-1","group":"topolvm.io","kind":"logicalvolumes"},"code":409}"#,
        );
        let missing = api_error(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"logicalvolumes.topolvm.io \"pvc-1\" not found","reason":"NotFound","details":{"name":"pvc-1","group":"topolvm.io","kind":"logicalvolumes"},"code":404}"#,
        );
        let forbidden = api_error(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"nodes \"n1\" is forbidden: User \"system:serviceaccount:topolvm-system:topolvm-node\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope","reason":"Forbidden","details":{"name":"n1","kind":"nodes"},"code":403}"#,
        );
        let labels: Vec<&str> = [&conflict, &exists, &missing, &forbidden]
            .iter()
            .map(|e| e.metric_label())
            .collect();
        assert_eq!(
            labels,
            ["conflict", "already_exists", "not_found", "forbidden"]
        );
        assert!(
            conflict
                .to_string()
                .contains("the object has been modified")
        );
    }

    #[test]
    fn finalizer_steps_are_labelled_by_their_cause() {
        let inner = Error::Serialization {
            what: "a patch",
            source: serde_json::from_str::<u8>("x").expect_err("not a number"),
        };
        let wrapped = Error::from(finalizer::Error::ApplyFailed(inner));
        assert_eq!(wrapped.metric_label(), "serialization");
        let unnamed = Error::from(finalizer::Error::<Error>::UnnamedObject);
        assert_eq!(unnamed.metric_label(), "invalid_object");
    }
}
