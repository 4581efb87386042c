//! The endpoints every binary serves: `/metrics` from its own Prometheus registry, and
//! `/healthz` and `/readyz` answered as controller-runtime answers them (200 `ok`; 500 with one
//! `[-]<check> failed: reason withheld` line per failing check).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};

/// The Prometheus text exposition format's content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The registry's metrics in Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// `GET /metrics` serving `registry`. Merge it into a binary's router of any state.
pub fn metrics_routes<S>(registry: Registry) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { metrics_response(&registry) }
        }),
    )
}

fn metrics_response(registry: &Registry) -> Response {
    match render(registry) {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(METRICS_CONTENT_TYPE),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot render metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

/// Named readiness checks behind `/readyz`; `/healthz` is a ping that answers while the process
/// serves at all. Clones share the checks.
#[derive(Debug, Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<BTreeMap<String, Readiness>>>,
}

/// One readiness check, not ready until [`Readiness::set_ready`]. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or returns the existing) readiness check `name`; `/readyz` answers 200 only when
    /// every check is ready.
    pub fn readiness(&self, name: &str) -> Readiness {
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// `(name, ready)` of every check, sorted by name.
    fn statuses(&self) -> Vec<(String, bool)> {
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, check)| (name.clone(), check.is_ready()))
            .collect()
    }

    /// `GET /healthz` and `GET /readyz`. Merge it into a binary's router of any state.
    pub fn routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let ready = self.clone();
        Router::new()
            .route(
                "/healthz",
                get(|query: Query<BTreeMap<String, String>>| async move {
                    health_response(&[("ping".to_owned(), true)], &query)
                }),
            )
            .route(
                "/readyz",
                get(move |query: Query<BTreeMap<String, String>>| {
                    let ready = ready.clone();
                    async move {
                        let mut statuses = ready.statuses();
                        if statuses.is_empty() {
                            statuses.push(("ping".to_owned(), true));
                        }
                        health_response(&statuses, &query)
                    }
                }),
            )
    }
}

/// controller-runtime's text: `ok` on success (the list with `?verbose`), the list and
/// `healthz check failed` on failure.
fn health_response(statuses: &[(String, bool)], query: &BTreeMap<String, String>) -> Response {
    let failed = statuses.iter().any(|(_, ready)| !ready);
    let status = if failed {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let body = if !failed && !query.contains_key("verbose") {
        "ok".to_owned()
    } else {
        let mut body = String::new();
        for (name, ready) in statuses {
            if *ready {
                body.push_str(&format!("[+]{name} ok\n"));
            } else {
                body.push_str(&format!("[-]{name} failed: reason withheld\n"));
            }
        }
        body.push_str(if failed {
            "healthz check failed\n"
        } else {
            "healthz check passed\n"
        });
        body
    };
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_text(app: &Router, uri: &str) -> (StatusCode, String) {
        let response = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
    }

    #[tokio::test]
    async fn health_answers_as_controller_runtime() {
        let health = Health::new();
        let app: Router = health.routes();
        assert_eq!(
            get_text(&app, "/healthz").await,
            (StatusCode::OK, "ok".to_owned())
        );
        // No checks registered: ready, as controller-runtime's default ping.
        assert_eq!(
            get_text(&app, "/readyz").await,
            (StatusCode::OK, "ok".to_owned())
        );

        let cache = health.readiness("cache-sync");
        let webhook = health.readiness("webhook");
        webhook.set_ready(true);
        assert_eq!(
            get_text(&app, "/readyz").await,
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "[-]cache-sync failed: reason withheld\n[+]webhook ok\nhealthz check failed\n"
                    .to_owned()
            )
        );
        assert_eq!(get_text(&app, "/healthz").await.0, StatusCode::OK);

        cache.set_ready(true);
        assert_eq!(
            get_text(&app, "/readyz").await,
            (StatusCode::OK, "ok".to_owned())
        );
        assert_eq!(
            get_text(&app, "/readyz?verbose").await,
            (
                StatusCode::OK,
                "[+]cache-sync ok\n[+]webhook ok\nhealthz check passed\n".to_owned()
            )
        );
    }

    #[tokio::test]
    async fn metrics_are_rendered_from_the_registry() {
        let registry = Registry::new();
        let counter =
            prometheus::IntCounter::new("example_total", "An example counter.").expect("counter");
        registry
            .register(Box::new(counter.clone()))
            .expect("register");
        counter.inc_by(3);
        let app: Router = metrics_routes(registry);
        let response = app
            .oneshot(
                Request::get("/metrics")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            METRICS_CONTENT_TYPE
        );
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        assert!(
            text.contains("# TYPE example_total counter\nexample_total 3\n"),
            "{text}"
        );
    }
}
