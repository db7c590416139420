//! The `/v1/rotation/*` handlers: role check, strict body, one driver call.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use crypto_core::KeyVersion;
use keyholder_api::paths;
use keyholder_api::{
    PrepareRequest, RetirePlan, RetireRequest, RollbackPlan, RollbackRequest, RotationStatus,
    ShareEnvelope, ThrottleRequest, UnsealResponse,
};
use serde::Deserialize;

use super::driver::{RotationError, RotationHandle};
use crate::api::{ApiFailure, AppState, Authenticated, require};
use crate::principal::Role;

type Rot = Extension<RotationHandle>;

impl From<RotationError> for ApiFailure {
    fn from(e: RotationError) -> Self {
        match e {
            RotationError::Daemon(e) => e.into(),
            RotationError::Store(e) => crate::daemon::DaemonError::Store(e).into(),
            RotationError::Transition(e) => {
                ApiFailure::new(StatusCode::CONFLICT, "wrong_state", e.to_string())
            }
            e @ (RotationError::VersionReused { .. }
            | RotationError::KeyNotHeld { .. }
            | RotationError::ShareRetired { .. }
            | RotationError::NoShareDealt { .. }
            | RotationError::Rebuild { .. }
            | RotationError::Throttle(_)
            | RotationError::Init(_)) => {
                ApiFailure::new(StatusCode::CONFLICT, "refused", e.to_string())
            }
            e @ (RotationError::RecordsRemain { .. } | RotationError::TargetsGone { .. }) => {
                ApiFailure::new(StatusCode::CONFLICT, "records_remain", e.to_string())
            }
            RotationError::NotLeader { leader } => {
                let e = RotationError::NotLeader {
                    leader: leader.clone(),
                };
                let mut failure =
                    ApiFailure::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", e.to_string());
                failure.body.leader = leader.map(|(_, addr)| addr);
                failure
            }
            e @ RotationError::Stopped => {
                ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", e.to_string())
            }
            RotationError::Worker(message) => {
                tracing::error!(error = %message, "rotation step failed");
                ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, "worker", message)
            }
        }
    }
}

fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiFailure> {
    keyholder_api::from_json(bytes).map_err(ApiFailure::bad_body)
}

async fn prepare(
    Extension(rot): Rot,
    Authenticated(caller): Authenticated,
    bytes: Bytes,
) -> Result<Json<RotationStatus>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    let request: PrepareRequest = body(&bytes)?;
    Ok(Json(rot.prepare(&caller, request.version).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareQuery {
    version: String,
}

async fn share(
    Extension(rot): Rot,
    Authenticated(caller): Authenticated,
    query: Result<Query<ShareQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ShareEnvelope>, ApiFailure> {
    require(&caller, &[Role::Keyholder])?;
    let Query(query) = query
        .map_err(|_| ApiFailure::bad_body("the query must be exactly `?version=N`".to_owned()))?;
    let version: KeyVersion = query
        .version
        .parse()
        .map_err(|e: crypto_core::Error| ApiFailure::bad_body(e.to_string()))?;
    Ok(Json(rot.share_for(&caller, version).await?))
}

async fn verify(
    Extension(rot): Rot,
    State(daemon): State<AppState>,
    Authenticated(caller): Authenticated,
    bytes: Bytes,
) -> Result<Json<UnsealResponse>, ApiFailure> {
    require(&caller, &[Role::Keyholder])?;
    let request = crate::api::limits::share_submission(&daemon, &caller, &bytes)?;
    drop(bytes);
    let result = rot.verify_share(&caller, request.shares).await;
    crate::api::limits::settle(&daemon, &caller, &result);
    Ok(Json(result?))
}

async fn activate(
    Extension(rot): Rot,
    Authenticated(caller): Authenticated,
) -> Result<Json<RotationStatus>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    Ok(Json(rot.activate(&caller).await?))
}

async fn switch(
    Extension(rot): Rot,
    Authenticated(caller): Authenticated,
) -> Result<Json<RotationStatus>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    Ok(Json(rot.switch(&caller).await?))
}

async fn pause(
    Extension(rot): Rot,
    Authenticated(caller): Authenticated,
) -> Result<Json<RotationStatus>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    Ok(Json(rot.set_paused(&caller, true).await?))
}

async fn resume(
    Extension(rot): Rot,
    Authenticated(caller): Authenticated,
) -> Result<Json<RotationStatus>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    Ok(Json(rot.set_paused(&caller, false).await?))
}

async fn throttle(
    Extension(rot): Rot,
    Authenticated(caller): Authenticated,
    bytes: Bytes,
) -> Result<Json<RotationStatus>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    let request: ThrottleRequest = body(&bytes)?;
    Ok(Json(rot.throttle(&caller, request).await?))
}

async fn retire(
    Extension(rot): Rot,
    Authenticated(caller): Authenticated,
    bytes: Bytes,
) -> Result<Json<RetirePlan>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    let request: RetireRequest = body(&bytes)?;
    Ok(Json(
        rot.retire(&caller, request.version, request.execute)
            .await?,
    ))
}

async fn rollback(
    Extension(rot): Rot,
    Authenticated(caller): Authenticated,
    bytes: Bytes,
) -> Result<Json<RollbackPlan>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    let request: RollbackRequest = body(&bytes)?;
    Ok(Json(rot.rollback(&caller, request.execute).await?))
}

async fn status(
    Extension(rot): Rot,
    State(_): State<AppState>,
    Authenticated(_): Authenticated,
) -> Json<RotationStatus> {
    Json(rot.status())
}

/// The rotation routes; the [`RotationHandle`] comes as a request
/// extension (`crate::api::app` adds it).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(paths::ROTATION, get(status))
        .route(paths::ROTATION_PREPARE, post(prepare))
        .route(paths::ROTATION_SHARE, get(share))
        .route(paths::ROTATION_VERIFY, post(verify))
        .route(paths::ROTATION_ACTIVATE, post(activate))
        .route(paths::ROTATION_SWITCH, post(switch))
        .route(paths::ROTATION_PAUSE, post(pause))
        .route(paths::ROTATION_RESUME, post(resume))
        .route(paths::ROTATION_THROTTLE, post(throttle))
        .route(paths::ROTATION_RETIRE, post(retire))
        .route(paths::ROTATION_ROLLBACK, post(rollback))
}
