//! `POST /v1/admin/reload`: operators.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::{Extension, Json};
use keyholder_api::ReloadResponse;

use super::{ApiFailure, Authenticated, require};
use crate::principal::Role;
use crate::reload::{ReloadError, Reloader, Trigger};

/// Re-reads and applies the config; a refusal (422 `reload_refused`) says
/// what was wrong and changed nothing.
pub async fn reload(
    Extension(reloader): Extension<Arc<Reloader>>,
    Authenticated(caller): Authenticated,
) -> Result<Json<ReloadResponse>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    match reloader.reload(Trigger::Api(&caller.name)).await {
        Ok(done) => Ok(Json(ReloadResponse {
            changed: done.changed.iter().map(|f| (*f).to_owned()).collect(),
        })),
        Err(ReloadError::Daemon(e)) => Err(e.into()),
        Err(e) => Err(ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload_refused",
            e.to_string(),
        )),
    }
}
