//! The keyring hand-over to database principals, with their usage reports.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keyholder_api::KeyringRequest;

use super::{ApiFailure, AppState, Authenticated, require};
use crate::principal::{Principal, Role};

/// `GET /v1/keyring`: database principals; 503 `sealed` while sealed.
pub async fn keyring(
    State(daemon): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<impl IntoResponse, ApiFailure> {
    require(&caller, &[Role::Database])?;
    hand_over(&daemon, &caller, None).await
}

/// `POST /v1/keyring`: the same, with the calling process's encryption
/// counts (API 1.3); a report that does not parse or names a version the
/// daemon does not know is refused with 400 and nothing is recorded.
pub async fn keyring_reporting(
    State(daemon): State<AppState>,
    Authenticated(caller): Authenticated,
    body: Bytes,
) -> Result<impl IntoResponse, ApiFailure> {
    require(&caller, &[Role::Database])?;
    let report = keyholder_api::from_json::<KeyringRequest>(&body).map_err(ApiFailure::bad_body)?;
    hand_over(&daemon, &caller, Some(report)).await
}

async fn hand_over(
    daemon: &AppState,
    caller: &Principal,
    report: Option<KeyringRequest>,
) -> Result<Response, ApiFailure> {
    let handover = daemon.keyring_for(caller, report).await?;
    // The hand-over is the one body that carries keys; it is built in a
    // zeroizing buffer, the copy hyper sends is freed with the response.
    let json = handover.to_json();
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response())
}
