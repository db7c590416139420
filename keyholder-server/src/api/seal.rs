//! Health, status, unseal and seal handlers.

use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use keyholder_api::{Health, Status, UnsealResponse};

use super::{ApiFailure, AppState, Authenticated, limits, require};
use crate::cluster::peer_api::ClusterState;
use crate::principal::Role;
use crate::rotation::RotationHandle;

/// `GET /v1/health`: any principal.
pub async fn health(
    State(daemon): State<AppState>,
    Authenticated(_): Authenticated,
) -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        sealed: daemon.vault().is_sealed(),
    })
}

/// `GET /v1/status`: any principal. Served from memory, never waiting on
/// the state store.
pub async fn status(
    State(daemon): State<AppState>,
    Extension(rotation): Extension<RotationHandle>,
    Authenticated(_): Authenticated,
) -> Json<Status> {
    let mut status = daemon.status();
    status.rotation = Some(rotation.status());
    Json(status)
}

/// `POST /v1/unseal`: keyholders, within their failed-submission budget.
/// In a cluster, the lines admitted here are relayed to every peer.
pub async fn unseal(
    State(daemon): State<AppState>,
    Extension(cluster): Extension<ClusterState>,
    Authenticated(caller): Authenticated,
    body: Bytes,
) -> Result<Json<UnsealResponse>, ApiFailure> {
    require(&caller, &[Role::Keyholder])?;
    let request = limits::share_submission(&daemon, &caller, &body)?;
    drop(body);
    // Before the shares are in: a withdrawal from now on keeps them here.
    let ticket = match &cluster {
        Some(cluster) => Some(cluster.ticket(&caller.name).await),
        None => None,
    };
    let result = daemon.unseal(&caller, &request.shares).await;
    limits::settle(&daemon, &caller, &result);
    let response = result?;
    if let (Some(cluster), Some(ticket)) = (&cluster, ticket) {
        let admitted = request
            .shares
            .into_iter()
            .zip(&response.outcomes)
            .filter(|(_, outcome)| outcome.accepted)
            .map(|(line, _)| line)
            .collect();
        cluster.relay(ticket, caller.name.clone(), admitted);
    }
    Ok(Json(response))
}

/// `DELETE /v1/unseal`: a keyholder withdraws its own shares, an operator
/// clears everyone's. In a cluster, every peer is told before the answer
/// (the shares were relayed to them).
pub async fn reset(
    State(daemon): State<AppState>,
    Extension(cluster): Extension<ClusterState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<UnsealResponse>, ApiFailure> {
    require(&caller, &[Role::Keyholder, Role::Operator])?;
    // The shares are dropped here even when the audit entry cannot be
    // written; the peers are told either way.
    let result = daemon.reset_unseal(&caller).await;
    if let Some(cluster) = &cluster {
        cluster.relay_withdrawal(&caller).await;
    }
    Ok(Json(result?))
}

/// `POST /v1/seal`: operators. In a cluster, it seals every node: a new
/// cluster seal generation, told to the peers at once.
pub async fn seal(
    State(daemon): State<AppState>,
    Extension(rotation): Extension<RotationHandle>,
    Extension(cluster): Extension<ClusterState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Status>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    // The keys are dropped even when the audit entry cannot be written (the
    // answer's `unaudited` then says why); the peers are told either way.
    let mut status = match &cluster {
        Some(cluster) => cluster.seal_cluster(&caller.name).await,
        None => daemon.seal(&caller.name).await,
    };
    status.rotation = Some(rotation.status());
    Ok(Json(status))
}
