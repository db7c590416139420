//! The node-only endpoints: `POST /v1/cluster/shares`,
//! `/v1/cluster/withdrawal`, `/v1/cluster/keyring` and `/v1/cluster/seal`. Thin: check that the caller is another node of
//! this cluster (refusals are 403 with the reason, and audited), parse the
//! body strictly, make one call on [`PeerSync`] or the daemon.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use keyholder_api::{
    ClusterSeal, Health, MAX_SHARE_LINES, PeerKeyring, PeerKeyringRequest, RelayedShares,
    RelayedWithdrawal, UnsealResponse, paths,
};
use serde_json::json;

use super::sync::{PeerSync, RelayRefused};
use crate::api::{ApiFailure, AppState, Authenticated};
use crate::principal::{Principal, Role};

/// The cluster's part of the app: `None` for a daemon without `[cluster]`.
pub type ClusterState = Option<Arc<PeerSync>>;

/// The node-only routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(paths::CLUSTER_SHARES, post(shares))
        .route(paths::CLUSTER_WITHDRAWAL, post(withdrawal))
        .route(paths::CLUSTER_KEYRING, post(keyring))
        .route(paths::CLUSTER_SEAL, post(seal))
}

/// The cluster of this daemon, or 404 for a daemon without one.
fn cluster(state: &ClusterState) -> Result<&Arc<PeerSync>, ApiFailure> {
    state.as_ref().ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this keyholderd is not a node of a cluster (no [cluster] in its config)",
        )
    })
}

/// This daemon's cluster, for a caller that is another node of it; any
/// other caller is refused and the refusal audited as `action`.
async fn admit<'a>(
    daemon: &AppState,
    state: &'a ClusterState,
    caller: &Principal,
    action: &str,
    path: &str,
) -> Result<&'a Arc<PeerSync>, ApiFailure> {
    let sync = cluster(state)?;
    let Err(refusal) = sync.check_node(caller) else {
        return Ok(sync);
    };
    // Each refusal is audited, within a budget: one caller in a loop
    // must not fill the audit log.
    daemon.admit_node_call(caller).map_err(|refused| {
        let mut failure = ApiFailure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many refused node calls from {}; {} is not a node of this cluster; try again in {}s",
                caller.name, caller.name, refused.retry_after_secs
            ),
        );
        failure.retry_after = Some(refused.retry_after_secs);
        failure
    })?;
    let reason = refusal.to_string();
    tracing::warn!(caller = %caller.name, path, %reason, "cluster: a node call was refused");
    daemon.node_call_refused(caller);
    daemon
        .audit(
            &caller.name,
            action,
            json!({"node": sync.name(), "path": path, "reason": reason}),
        )
        .await?;
    Err(ApiFailure::new(StatusCode::FORBIDDEN, "forbidden", reason))
}

/// `POST /v1/cluster/shares`: shares a keyholder submitted to the calling
/// node, admitted here as that keyholder's; never relayed again.
async fn shares(
    State(daemon): State<AppState>,
    Extension(state): Extension<ClusterState>,
    Authenticated(caller): Authenticated,
    body: Bytes,
) -> Result<Json<UnsealResponse>, ApiFailure> {
    let sync = admit(
        &daemon,
        &state,
        &caller,
        "cluster_call_refused",
        paths::CLUSTER_SHARES,
    )
    .await?;
    let relayed: RelayedShares = keyholder_api::from_json(&body).map_err(ApiFailure::bad_body)?;
    drop(body);
    if relayed.shares.is_empty() {
        return Err(ApiFailure::bad_body(
            "the relay carries no share line; nothing was processed".to_owned(),
        ));
    }
    if relayed.shares.len() > MAX_SHARE_LINES {
        return Err(ApiFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_shares",
            format!(
                "the relay carries {} share lines, at most {MAX_SHARE_LINES} are taken; nothing was processed",
                relayed.shares.len()
            ),
        ));
    }
    let config = daemon.config();
    let keyholder = config
        .principals
        .iter()
        .find(|p| p.name == relayed.keyholder && p.has(Role::Keyholder))
        .ok_or_else(|| {
            ApiFailure::bad_body(format!(
                "keyholder: \"{}\" is not a keyholder in this node's config; every node must list the same [[principals]]",
                relayed.keyholder
            ))
        })?;
    match sync
        .admit_relayed(keyholder, &relayed.shares, &caller.name, relayed.generation)
        .await
    {
        Ok(response) => Ok(Json(response)),
        Err(RelayRefused::Daemon(e)) => Err(e.into()),
        Err(refused @ RelayRefused::SealedSince { ours, theirs, .. }) => {
            let reason = refused.to_string();
            tracing::warn!(
                keyholder = %keyholder.name,
                relayed_by = %caller.name,
                admitted_at = theirs,
                generation = ours,
                "cluster: relayed shares refused: the cluster was sealed after they were admitted"
            );
            daemon
                .audit(
                    &keyholder.name,
                    "unseal_relay_refused",
                    json!({
                        "relayed_by": caller.name,
                        "node": sync.name(),
                        "admitted_at": theirs,
                        "generation": ours,
                    }),
                )
                .await?;
            Err(ApiFailure::new(
                StatusCode::CONFLICT,
                "sealed_since",
                reason,
            ))
        }
    }
}

/// `POST /v1/cluster/withdrawal`: `DELETE /v1/unseal` by a principal on the
/// calling node, done here by the same rule (that principal's roles in this
/// node's config); never relayed again.
async fn withdrawal(
    State(daemon): State<AppState>,
    Extension(state): Extension<ClusterState>,
    Authenticated(caller): Authenticated,
    body: Bytes,
) -> Result<Json<UnsealResponse>, ApiFailure> {
    let sync = admit(
        &daemon,
        &state,
        &caller,
        "cluster_call_refused",
        paths::CLUSTER_WITHDRAWAL,
    )
    .await?;
    let relayed: RelayedWithdrawal =
        keyholder_api::from_json(&body).map_err(ApiFailure::bad_body)?;
    let config = daemon.config();
    let principal = config
        .principals
        .iter()
        .find(|p| {
            p.name == relayed.principal && (p.has(Role::Keyholder) || p.has(Role::Operator))
        })
        .ok_or_else(|| {
            ApiFailure::bad_body(format!(
                "principal: \"{}\" is not a keyholder or an operator in this node's config; every node must list the same [[principals]]",
                relayed.principal
            ))
        })?;
    let result = daemon.reset_unseal_relayed(principal, &caller.name).await;
    sync.withdrawn_elsewhere(principal);
    Ok(Json(result?))
}

/// `POST /v1/cluster/keyring`: the keys for a sealed node of this cluster,
/// age-encrypted to the recipient it sent.
async fn keyring(
    State(daemon): State<AppState>,
    Extension(state): Extension<ClusterState>,
    Authenticated(caller): Authenticated,
    body: Bytes,
) -> Result<Json<PeerKeyring>, ApiFailure> {
    let sync = admit(
        &daemon,
        &state,
        &caller,
        "keyring_refused_to_node",
        paths::CLUSTER_KEYRING,
    )
    .await?;
    let request: PeerKeyringRequest =
        keyholder_api::from_json(&body).map_err(ApiFailure::bad_body)?;
    match sync.keyring_for(&caller.name, &request.recipient).await? {
        Ok(answer) => Ok(Json(answer)),
        Err(reason) => Err(ApiFailure::bad_body(reason)),
    }
}

/// `POST /v1/cluster/seal`: the calling node sealed the cluster.
async fn seal(
    State(daemon): State<AppState>,
    Extension(state): Extension<ClusterState>,
    Authenticated(caller): Authenticated,
    body: Bytes,
) -> Result<Json<Health>, ApiFailure> {
    let sync = admit(
        &daemon,
        &state,
        &caller,
        "cluster_call_refused",
        paths::CLUSTER_SEAL,
    )
    .await?;
    let notice: ClusterSeal = keyholder_api::from_json(&body).map_err(ApiFailure::bad_body)?;
    sync.notice_seal(&caller.name, notice.generation).await;
    Ok(Json(Health {
        status: "ok".to_owned(),
        sealed: daemon.vault().is_sealed(),
    }))
}
