//! HTTP: the routes, the request body extractor, errors as responses, and request metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use thiserror::Error;
use topolvm_runtime::endpoints;
use tracing::{instrument, warn};

use crate::extender::Extender;
use crate::metrics::Metrics;
use crate::wire::RequestError;

/// Bodies above this size (about half a millisecond of work) are decided on the blocking pool,
/// so a multi-megabyte node list does not stall the runtime thread that also serves other
/// connections; smaller ones skip the hand-off.
const INLINE_BODY_LIMIT: usize = 1 << 20;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub extender: Arc<Extender>,
    pub metrics: Arc<Metrics>,
    pub max_request_bytes: usize,
}

/// Everything a request can fail with; each maps to one status code.
#[derive(Debug, Error)]
pub enum AppError {
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    ReadBody(String),
    #[error(transparent)]
    BadRequest(#[from] RequestError),
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{method} is not allowed here")]
    MethodNotAllowed { method: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ReadBody(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The error body: `{"message": "..."}`. kube-scheduler only looks at the status code; the
/// message is for people reading logs or curl output.
#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            warn!(error = %self, "request failed");
        }
        let message = self.to_string();
        let body =
            serde_json::to_vec(&ErrorBody { message: &message }).unwrap_or_else(|_| b"{}".to_vec());
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    }
}

/// The raw body of a verb request, read up to the configured limit. Its rejection is an
/// [`AppError`], so every failure answers in the same format.
#[derive(Debug)]
pub struct ExtenderBody(pub Bytes);

impl FromRequest<AppState> for ExtenderBody {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.max_request_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(AppError::TooLarge { limit });
        }
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(collected) => Ok(Self(collected.to_bytes())),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(AppError::TooLarge { limit })
            }
            Err(e) => Err(AppError::ReadBody(e.to_string())),
        }
    }
}

/// The extender's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/predicate", post(predicate))
        .route("/prioritize", post(prioritize))
        .route("/status", get(status))
        .merge(endpoints::metrics_routes(state.metrics.registry().clone()))
        .merge(endpoints::Health::new().routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

#[instrument(skip_all, fields(bytes = body.len()))]
async fn predicate(
    State(state): State<AppState>,
    ExtenderBody(body): ExtenderBody,
) -> Result<Response, AppError> {
    decide(state, body, |extender, body| extender.predicate(body)).await
}

#[instrument(skip_all, fields(bytes = body.len()))]
async fn prioritize(
    State(state): State<AppState>,
    ExtenderBody(body): ExtenderBody,
) -> Result<Response, AppError> {
    decide(state, body, |extender, body| extender.prioritize(body)).await
}

/// Runs a verb, on the blocking pool for large bodies.
async fn decide(
    state: AppState,
    body: Bytes,
    verb: fn(&Extender, &Bytes) -> Result<Vec<Bytes>, RequestError>,
) -> Result<Response, AppError> {
    let chunks = if body.len() <= INLINE_BODY_LIMIT {
        verb(&state.extender, &body)?
    } else {
        let extender = state.extender.clone();
        tokio::task::spawn_blocking(move || verb(&extender, &body))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))??
    };
    let length: usize = chunks.iter().map(Bytes::len).sum();
    let body = match <[Bytes; 1]>::try_from(chunks) {
        Ok([single]) => Body::from(single),
        // Echoed nodes stay in the request's buffer; the chunks are written out as they are.
        Err(chunks) => Body::from_stream(futures::stream::iter(
            chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
        )),
    };
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(length)),
        ],
        body,
    )
        .into_response())
}

async fn status() -> &'static str {
    "ok"
}

async fn not_found(req: Request<Body>) -> AppError {
    AppError::NotFound {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
}

async fn method_not_allowed(req: Request<Body>) -> AppError {
    AppError::MethodNotAllowed {
        method: req.method().to_string(),
    }
}

/// Counts and times every request by verb and outcome.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let verb = match req.uri().path() {
        "/predicate" => "predicate",
        "/prioritize" => "prioritize",
        "/status" => "status",
        "/metrics" => "metrics",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(req).await;
    let outcome = match response.status() {
        s if s.is_success() => "ok",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        _ => "error",
    };
    state
        .metrics
        .observe_request(verb, outcome, started.elapsed());
    response
}
