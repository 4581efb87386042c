//! What every topolvm-rs binary runs on, in one place, so lvmd, topolvm-scheduler, topolvm-node
//! and topolvm-controller start, serve and stop the same way:
//!
//! - [`shutdown`]: SIGTERM/SIGINT cancel a token; a second signal exits at once;
//! - [`unix`]: gRPC on a Unix socket (stale-socket removal, mode 0600, peer credentials,
//!   graceful shutdown) and the client connector; [`authority`]: clients that send the socket's
//!   path as the HTTP/2 `:authority` (kubelet before 1.26) served as if they sent `localhost`;
//! - [`in_process`]: gRPC between two parts of one process (the embedded lvmd);
//! - [`http`]: an HTTP or HTTPS server for metrics, health and webhooks, with Go-style listen
//!   addresses and graceful shutdown; [`tls`]: certificates re-read when their files change;
//! - [`endpoints`]: `/metrics` from a Prometheus registry, `/healthz` and `/readyz`;
//! - [`delegated_auth`]: TokenReview + SubjectAccessReview in front of an endpoint (secure metrics);
//! - [`grpc_code`]: gRPC-Go's names of the status codes, the `code` label of RPC counters;
//! - [`existence`]: readiness that follows whether one named object exists (a watch);
//! - [`kubernetes`]: building the client, and the one error type of Kubernetes-side work;
//! - [`leader`]: leader election on a Lease, with client-go's rules;
//! - [`keyed_lock`]: locks by name (a volume ID, a request name), gone with their last holder;
//! - [`logging`]: the tracing subscriber (text or JSON lines).
//!
//! Each module has its own error type.
#![forbid(unsafe_code)]

pub mod authority;
pub mod delegated_auth;
pub mod endpoints;
pub mod existence;
pub mod grpc_code;
pub mod http;
pub mod in_process;
pub mod keyed_lock;
pub mod kubernetes;
pub mod leader;
pub mod logging;
pub mod shutdown;
pub mod tls;
pub mod unix;
