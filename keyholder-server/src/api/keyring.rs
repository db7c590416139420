//! The keyring hand-over to database principals.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::{ApiFailure, AppState, Authenticated, require};
use crate::principal::Role;

/// `GET /v1/keyring`: database principals; 503 `sealed` while sealed.
pub async fn keyring(
    State(daemon): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<impl IntoResponse, ApiFailure> {
    require(&caller, &[Role::Database])?;
    let handover = daemon.keyring_for(&caller).await?;
    // The hand-over is the one body that carries keys; it is built in a
    // zeroizing buffer, the copy hyper sends is freed with the response.
    let json = handover.to_json();
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    ))
}
