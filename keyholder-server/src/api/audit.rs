//! The audit log.

use axum::Json;
use axum::extract::State;
use keyholder_api::AuditLog;

use super::{ApiFailure, AppState, Authenticated, require};
use crate::principal::Role;

/// `GET /v1/audit`: operators.
pub async fn audit(
    State(daemon): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<AuditLog>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    Ok(Json(daemon.audit_log().await?))
}
