//! Kubernetes delegated authentication and authorization for an HTTP endpoint, as
//! controller-runtime's secure metrics server does it (TopoLVM's `--secure-metrics-server`):
//! the caller's bearer token is checked with a `TokenReview`, and the user it names must be
//! allowed the request's verb on its non-resource path (`get /metrics`) by a
//! `SubjectAccessReview`. No token or a rejected one → 401; not allowed → 403; the API server
//! unreachable → 500.
//!
//! Answers are kept for [`DECISION_TTL`] per token, verb and path, so a scraper polling every
//! few seconds costs the API server two requests a minute, not two per scrape.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use tracing::{debug, warn};

/// How long an answer of the API server is reused.
pub const DECISION_TTL: Duration = Duration::from_secs(30);

/// Entries kept at most; the cache is emptied when it is full (a burst of distinct tokens).
const MAX_ENTRIES: usize = 1024;

/// What the API server said about one token, verb and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// The token is valid but its user may not do this.
    Forbidden,
    /// No token, or the API server does not accept it.
    Unauthenticated,
}

/// Decisions by (keyed hash of the token, verb, path), with when they were made.
type Decisions = HashMap<(u64, String, String), (Instant, Decision)>;

/// The checker, shared by every request of an endpoint.
pub struct DelegatedAuth {
    client: kube::Client,
    hasher: RandomState,
    cache: Mutex<Decisions>,
}

impl std::fmt::Debug for DelegatedAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelegatedAuth")
            .field("cached", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl DelegatedAuth {
    pub fn new(client: kube::Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            hasher: RandomState::new(),
            cache: Mutex::default(),
        })
    }

    /// Whether `token` may `verb` the non-resource `path`.
    pub async fn check(
        &self,
        token: Option<&str>,
        verb: &str,
        path: &str,
    ) -> Result<Decision, kube::Error> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(Decision::Unauthenticated);
        };
        // The token itself is never kept, only a keyed hash of it.
        let key = (
            self.hasher.hash_one(token),
            verb.to_owned(),
            path.to_owned(),
        );
        if let Some((at, decision)) = self.lock().get(&key)
            && at.elapsed() < DECISION_TTL
        {
            return Ok(*decision);
        }
        let decision = self.ask(token, verb, path).await?;
        let mut cache = self.lock();
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), decision));
        Ok(decision)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Decisions> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn ask(&self, token: &str, verb: &str, path: &str) -> Result<Decision, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => {
                debug!(error = ?status.error, "token not accepted");
                return Ok(Decision::Unauthenticated);
            }
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_owned()),
                    verb: Some(verb.to_owned()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        debug!(user = ?user.username, verb, path, allowed, "access reviewed");
        Ok(if allowed {
            Decision::Allowed
        } else {
            Decision::Forbidden
        })
    }
}

/// A binary's `/metrics` endpoint: plain HTTP from `registry`, or, with `secure` (TopoLVM's
/// `--secure-metrics-server`), HTTPS with a self-signed certificate for `names` and every request
/// checked by the API server through `client`. Returns the TLS acceptor to serve with and the
/// router.
pub fn metrics_endpoint(
    registry: prometheus::Registry,
    secure: bool,
    client: &kube::Client,
    names: &[String],
) -> Result<(Option<tokio_rustls::TlsAcceptor>, Router), crate::tls::TlsError> {
    let routes = crate::endpoints::metrics_routes(registry);
    if !secure {
        return Ok((None, routes));
    }
    let acceptor = crate::tls::self_signed_acceptor(names)?;
    let auth = DelegatedAuth::new(client.clone());
    Ok((Some(acceptor), protect(routes, auth)))
}

/// `router` with every request checked by `auth` first.
pub fn protect(router: Router, auth: Arc<DelegatedAuth>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(auth, require_access))
}

async fn require_access(
    State(auth): State<Arc<DelegatedAuth>>,
    request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_owned);
    // Kubernetes' verbs for non-resource URLs are the lower-cased HTTP methods.
    let verb = request.method().as_str().to_ascii_lowercase();
    let path = request.uri().path().to_owned();
    match auth.check(token.as_deref(), &verb, &path).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Unauthenticated) => {
            (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response()
        }
        Ok(Decision::Forbidden) => (StatusCode::FORBIDDEN, "Forbidden\n").into_response(),
        Err(e) => {
            warn!(error = %e, %path, "cannot review the caller's access");
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n").into_response()
        }
    }
}
