//! The Unix-socket gRPC server and client for real: a socket in a temporary directory, the
//! standard health service behind it, tonic's client and a frame-by-frame client that sends the
//! `:authority` other gRPC implementations send.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use topolvm_runtime::unix;
use topolvm_test_kit::raw_grpc::{self, Outcome};

/// The health service, answering each call only after `delay`: a request still in flight when
/// shutdown starts.
#[derive(Clone)]
struct Slow<S> {
    inner: S,
    delay: Duration,
}

impl<S: NamedService> NamedService for Slow<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Slow<S>
where
    S: tower::Service<http::Request<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<S::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut inner = self.inner.clone();
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.call(request).await
        })
    }
}

struct Server {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), unix::Error>>,
    /// The uid the server saw in the last request's peer credentials.
    peer_uid: Arc<AtomicU32>,
}

async fn start(delay: Duration) -> Server {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("run/test.sock");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let peer_uid = Arc::new(AtomicU32::new(u32::MAX));
    let seen = peer_uid.clone();
    let recorded = InterceptedService::new(health, move |request: tonic::Request<()>| {
        if let Some(uid) = unix::peer_uid(&request) {
            seen.store(uid, Ordering::SeqCst);
        }
        Ok(request)
    });
    let routes = Routes::new(Slow {
        inner: recorded,
        delay,
    });
    let listener = unix::bind(&socket).await.expect("bind");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (socket, shutdown) = (socket.clone(), shutdown.clone());
        async move { unix::serve(listener, &socket, routes, shutdown).await }
    });
    Server {
        _dir: dir,
        socket,
        shutdown,
        task,
        peer_uid,
    }
}

async fn check(socket: &Path) -> Result<ServingStatus, tonic::Code> {
    let channel = unix::connect(socket).await.expect("connect");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|s| s.code())?
        .into_inner()
        .status;
    Ok(ServingStatus::try_from(status).expect("a known status"))
}

#[tokio::test]
async fn serves_with_peer_credentials_and_drains_on_shutdown() {
    let server = start(Duration::from_millis(300)).await;
    let mode = std::fs::metadata(&server.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("socket");
    assert_eq!(mode, 0o600);

    assert_eq!(check(&server.socket).await, Ok(ServingStatus::Serving));
    assert_eq!(
        server.peer_uid.load(Ordering::SeqCst),
        nix::unistd::getuid().as_raw(),
        "the kernel's peer credentials reach the interceptor"
    );

    // A call in flight when shutdown starts is still answered; then the server stops and
    // removes its socket.
    let in_flight = tokio::spawn({
        let socket = server.socket.clone();
        async move { check(&socket).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown.cancel();
    assert_eq!(
        in_flight.await.expect("task"),
        Ok(ServingStatus::Serving),
        "the call in flight finishes"
    );
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("stops promptly")
        .expect("task")
        .expect("served");
    assert!(!server.socket.exists(), "the socket file is removed");
}

/// Every `:authority` a Unix-socket client sends reaches the service: gRPC-Go dialing `unix:`
/// (TopoLVM, kubelet since 1.26) sends `localhost`; kubelet before 1.26 and grpc-java send the
/// socket path, gRPC C-core since 1.57 its percent-encoding. The HTTP/2 layer (h2) alone resets
/// the last two with PROTOCOL_ERROR; [`topolvm_runtime::authority`] repairs them first.
#[tokio::test]
async fn every_authority_of_unix_socket_clients_is_served() {
    let server = start(Duration::ZERO).await;
    for authority in [
        "localhost",
        "/var/lib/kubelet/plugins_registry/topolvm.io-reg.sock",
        "/run/topolvm/lvmd.sock",
        "%2Frun%2Ftopolvm%2Flvmd.sock",
    ] {
        let outcome = raw_grpc::unary_call(
            &server.socket,
            authority,
            "/grpc.health.v1.Health/Check",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("calling with authority {authority:?}: {e}"));
        let Outcome::Answered { messages } = outcome else {
            panic!("authority {authority:?} was not served: {outcome:?}");
        };
        let answer: HealthCheckResponse =
            prost::Message::decode(messages.first().expect("an answer").as_slice())
                .expect("decode");
        assert_eq!(
            answer.status,
            ServingStatus::Serving as i32,
            "{authority:?}"
        );
    }
    server.shutdown.cancel();
}
