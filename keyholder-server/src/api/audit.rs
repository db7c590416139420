//! The audit log, a page at a time.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use keyholder_api::{AUDIT_PAGE_MAX, AuditLog};
use serde::Deserialize;

use super::{ApiFailure, AppState, Authenticated, require};
use crate::principal::Role;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(default)]
    since: u64,
    limit: Option<u32>,
}

/// `GET /v1/audit?since=SEQ&limit=N`: operators. The entries after `since`
/// (default 0: from the start), at most `limit` (default and maximum
/// [`AUDIT_PAGE_MAX`]).
pub async fn audit(
    State(daemon): State<AppState>,
    Authenticated(caller): Authenticated,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<AuditLog>, ApiFailure> {
    require(&caller, &[Role::Operator])?;
    let Query(query) = query.map_err(|_| {
        ApiFailure::bad_body(
            "the query takes `since` (an entry's seq, 0 or more) and `limit` (1 to 1000), both integers"
                .to_owned(),
        )
    })?;
    // A seq is stored as a signed 64-bit integer.
    if i64::try_from(query.since).is_err() {
        return Err(ApiFailure::bad_body(format!(
            "since must be 0 to {} (an entry's seq)",
            i64::MAX
        )));
    }
    let limit = query.limit.unwrap_or(AUDIT_PAGE_MAX);
    if !(1..=AUDIT_PAGE_MAX).contains(&limit) {
        return Err(ApiFailure::bad_body(format!(
            "limit must be 1 to {AUDIT_PAGE_MAX} entries, got {limit}"
        )));
    }
    Ok(Json(daemon.audit_page(query.since, limit).await?))
}
