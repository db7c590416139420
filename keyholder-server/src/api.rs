//! The HTTP API: routes, the API version exchange, roles and error bodies.
//!
//! Owns mapping requests to [`Daemon`] calls and results to HTTP. Handlers
//! (in `api/`) are thin: they check the caller's role, parse the body
//! strictly and call the daemon. Every response carries the API version
//! header; every request must carry a compatible one. Error bodies are
//! [`ApiError`]s that never echo a request value.

mod admin;
mod audit;
mod keyring;
pub mod limits;
mod seal;

use keyholder_api::paths;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use keyholder_api::{API_VERSION, API_VERSION_HEADER, ApiError};

use crate::daemon::{Daemon, DaemonError};
use crate::principal::{Principal, Role};
use crate::rotation::RotationHandle;
use crate::transport::Caller;

/// The shared state of every handler.
pub type AppState = Arc<Daemon>;

/// An error answer: a status and an [`ApiError`] body.
#[derive(Debug)]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: ApiError,
    /// Seconds for a `Retry-After` header (429 answers).
    pub retry_after: Option<u64>,
}

impl ApiFailure {
    /// A failure with `status`, a stable `code` and a lowercase message.
    pub fn new(status: StatusCode, code: &str, error: impl Into<String>) -> Self {
        Self {
            status,
            body: ApiError {
                error: error.into(),
                code: code.to_owned(),
                leader: None,
            },
            retry_after: None,
        }
    }

    /// A request body that does not parse (the message names the field, never a value).
    pub fn bad_body(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `Retry-After` of a 503 `store_unavailable`.
const STORE_RETRY_AFTER_SECS: u64 = 1;

impl From<DaemonError> for ApiFailure {
    fn from(e: DaemonError) -> Self {
        let (status, code) = match &e {
            DaemonError::Sealed
            | DaemonError::SealedMeanwhile
            | DaemonError::VersionsNotHeld { .. } => (StatusCode::SERVICE_UNAVAILABLE, "sealed"),
            DaemonError::NotInitialized | DaemonError::InitializedAfterStart { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "not_initialized")
            }
            DaemonError::Verification { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "verification_failed")
            }
            DaemonError::Plan(_) | DaemonError::Vault(_) => (StatusCode::CONFLICT, "keyring_plan"),
            // A step that lost the lease while it ran: nothing of it was
            // stored; the new leader takes the request.
            DaemonError::Store(
                crate::store::StoreError::Fenced { .. } | crate::store::StoreError::NotLeader,
            ) => (StatusCode::MISDIRECTED_REQUEST, "not_leader"),
            // The state store (PostgreSQL) is down or restarting: nothing
            // was done, and the same request may succeed in a moment. A
            // keyring is never handed over unaudited, so a database's hook
            // waits this out (`keyholder hook --wait`).
            DaemonError::Store(store) if store.is_transient() => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            DaemonError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            DaemonError::Usage(_) => (StatusCode::BAD_REQUEST, "bad_usage_report"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
        }
        let mut failure = Self::new(status, code, e.to_string());
        if code == "store_unavailable" {
            tracing::warn!(error = %e, "request refused: the state store is unavailable");
            failure.retry_after = Some(STORE_RETRY_AFTER_SECS);
        }
        failure
    }
}

/// The caller's principal, resolved by the transport for this connection.
pub struct Authenticated(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let caller = parts.extensions.get::<Caller>().ok_or_else(|| {
            ApiFailure::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this connection carries no verified client certificate",
            )
        })?;
        match caller.0.as_ref() {
            Ok(principal) => Ok(Self(principal.clone())),
            Err(e @ crate::transport::identity::IdentityError::OverLimit { .. }) => {
                let mut failure = ApiFailure::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_connections",
                    e.to_string(),
                );
                failure.retry_after = Some(1);
                Err(failure)
            }
            Err(e) => Err(ApiFailure::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                e.to_string(),
            )),
        }
    }
}

/// Refuses a caller without one of `roles`, naming the roles needed and the
/// caller's own.
pub fn require(principal: &Principal, roles: &[Role]) -> Result<(), ApiFailure> {
    if roles.iter().any(|r| principal.has(*r)) {
        return Ok(());
    }
    let needed = roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" or ");
    Err(ApiFailure::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "this needs the {needed} role; {} has {}",
            principal.name,
            principal.roles_text()
        ),
    ))
}

/// Checks the caller's API version and stamps ours on every response.
async fn api_version(request: Request, next: Next) -> Response {
    let peer = request
        .headers()
        .get(API_VERSION_HEADER)
        .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
    let mut response = match keyholder_api::check_compatible(peer.as_deref()) {
        Ok(()) => next.run(request).await,
        Err(e) => ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "incompatible_api_version",
            e.to_string(),
        )
        .into_response(),
    };
    response
        .headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
    response
}

async fn not_found() -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/protocol.md",
    )
}

/// The daemon's API routes (without state), for merging more routes in.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(paths::HEALTH, get(seal::health))
        .route(paths::STATUS, get(seal::status))
        .route(
            paths::UNSEAL,
            axum::routing::post(seal::unseal).delete(seal::reset),
        )
        .route(paths::SEAL, axum::routing::post(seal::seal))
        .route(
            paths::KEYRING,
            get(keyring::keyring).post(keyring::keyring_reporting),
        )
        .route(paths::AUDIT, get(audit::audit))
        .route(paths::OPENAPI, get(openapi))
        .route(paths::ADMIN_RELOAD, axum::routing::post(admin::reload))
}

/// `GET /v1/openapi.json`: any principal. The document is built once, on
/// the first request.
async fn openapi(Authenticated(_): Authenticated) -> impl IntoResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT
            .get_or_init(keyholder_api::openapi::document)
            .as_str(),
    )
}

/// The complete API: our routes plus the rotation's, the version exchange on
/// all of them, the role and size limits of bodies, JSON for every error
/// (404s, 405s and 413s too).
pub fn app(
    daemon: AppState,
    rotation: RotationHandle,
    reloader: Arc<crate::reload::Reloader>,
    cluster: crate::cluster::peer_api::ClusterState,
) -> Router {
    routes()
        .merge(crate::rotation::api::routes())
        .merge(crate::cluster::peer_api::routes())
        .fallback(not_found)
        .layer(Extension(rotation))
        .layer(Extension(cluster))
        .layer(Extension(reloader))
        .layer(axum::middleware::from_fn(limits::limit_body))
        .layer(axum::middleware::from_fn(limits::json_errors))
        .layer(axum::middleware::from_fn(api_version))
        .with_state(daemon)
}

/// `/metrics` for the loopback plain port.
pub fn metrics_app(daemon: AppState, rotation: RotationHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .layer(Extension(rotation))
        .with_state(daemon)
}

async fn metrics(
    State(daemon): State<AppState>,
    Extension(rotation): Extension<RotationHandle>,
) -> impl IntoResponse {
    daemon.metrics().set_rotation(&rotation.status());
    daemon.metrics().set_usage(&daemon.status().versions);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        daemon.metrics().render(),
    )
}
