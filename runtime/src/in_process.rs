//! gRPC between two parts of one process, over in-memory pipes: how topolvm-node talks to the
//! lvmd it embeds (`--embed-lvmd`). The client side is an ordinary tonic [`Channel`], so the
//! caller runs the same code whether lvmd is across a Unix socket or in the same process, and
//! nothing is bound on the file system.

use std::future::Future;

use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};

/// Size of each in-memory pipe's buffer, per direction.
const PIPE_BUFFER: usize = 256 * 1024;

/// A channel to `routes` served in this process, and the server future to run (it ends after
/// `shutdown`, once requests in flight have finished). The channel connects lazily, so it may
/// be handed out before the server runs; a call after the server stopped fails with
/// `Unavailable`.
pub fn channel(
    routes: Routes,
    shutdown: CancellationToken,
) -> (
    Channel,
    impl Future<Output = Result<(), tonic::transport::Error>>,
) {
    let (connections, incoming) = mpsc::unbounded_channel::<tokio::io::DuplexStream>();
    let channel = Endpoint::from_static("http://localhost").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let connections = connections.clone();
            async move {
                let (client, server) = tokio::io::duplex(PIPE_BUFFER);
                connections.send(server).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "the in-process server has stopped",
                    )
                })?;
                Ok::<_, std::io::Error>(TokioIo::new(client))
            }
        }),
    );
    let incoming = UnboundedReceiverStream::new(incoming).map(Ok::<_, std::io::Error>);
    let server = async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
            .await
    };
    (channel, server)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    #[tokio::test]
    async fn a_call_reaches_the_in_process_server_and_fails_cleanly_after_shutdown() {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("lvmd", tonic_health::ServingStatus::Serving)
            .await;
        let shutdown = CancellationToken::new();
        let (channel, server) = channel(Routes::new(health), shutdown.clone());
        let server = tokio::spawn(server);

        let mut client = HealthClient::new(channel.clone());
        let answer = client
            .check(HealthCheckRequest {
                service: "lvmd".to_owned(),
            })
            .await
            .expect("health check over the in-memory pipe")
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving);
        let unknown = client
            .check(HealthCheckRequest {
                service: "other".to_owned(),
            })
            .await
            .expect_err("an unknown service is NotFound");
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        shutdown.cancel();
        server
            .await
            .expect("server task")
            .expect("the server stops cleanly");
        let after = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "lvmd".to_owned(),
            })
            .await
            .expect_err("no server any more");
        assert_eq!(after.code(), tonic::Code::Unavailable, "{after}");
    }
}
