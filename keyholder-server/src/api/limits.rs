//! What a request may weigh before a handler sees it: who may send a body
//! to which endpoint, how big it may be and how long it may take to arrive;
//! and the checks around every share submission (the line limit and the
//! failed-submission budget).
//!
//! The role of an endpoint that takes a body is checked here, before the
//! body is parsed, so a caller without the role gets 403 whatever it sends
//! (a body within the endpoint's limit is read and dropped first, so the
//! 403 arrives instead of a reset connection). Every refusal is an [`ApiError`](keyholder_api::ApiError) body;
//! so are axum's own plain-text rejections (405, 413), rewritten on the way
//! out.

use keyholder_api::paths;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keyholder_api::{MAX_SHARE_LINES, UnsealRequest, UnsealResponse};

use super::{ApiFailure, require};
use crate::daemon::Daemon;
use crate::principal::{Principal, Role};
use crate::transport::Caller;

/// A share submission: a few share lines in JSON.
const SHARES_BODY_MAX: usize = 16 * 1024;
/// A usage report: a process id and at most 32 version counts.
const USAGE_BODY_MAX: usize = 4 * 1024;
/// Every other body (a version number, a flag, a throttle).
const SMALL_BODY_MAX: usize = 1024;
/// Time for a whole request body to arrive once its headers are in.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Every role: for the node-only endpoints, whose handlers check the caller.
const EVERY_ROLE: &[Role] = &[Role::Keyholder, Role::Operator, Role::Database, Role::Node];

/// Who may send a body to an endpoint, and how large.
struct BodyRule {
    roles: &'static [Role],
    max: usize,
}

/// The rule of `POST path`; `None` for everything else, which takes at most
/// a small body and leaves the role to the handler (it has no body to read).
fn body_rule(method: &Method, path: &str) -> Option<BodyRule> {
    if method != Method::POST {
        return None;
    }
    let operator = |max| BodyRule {
        roles: &[Role::Operator],
        max,
    };
    Some(match path {
        paths::UNSEAL | paths::ROTATION_VERIFY => BodyRule {
            roles: &[Role::Keyholder],
            max: SHARES_BODY_MAX,
        },
        paths::KEYRING => BodyRule {
            roles: &[Role::Database],
            max: USAGE_BODY_MAX,
        },
        paths::SEAL
        | paths::ROTATION_PREPARE
        | paths::ROTATION_ACTIVATE
        | paths::ROTATION_SWITCH
        | paths::ROTATION_PAUSE
        | paths::ROTATION_RESUME
        | paths::ROTATION_THROTTLE
        | paths::ROTATION_RETIRE
        | paths::ROTATION_ROLLBACK
        | paths::ADMIN_RELOAD => operator(SMALL_BODY_MAX),
        // Any principal's body is read: the handler refuses every caller
        // but another node of the cluster and audits the refusal (a refused
        // key transfer is in the audit log).
        paths::CLUSTER_SHARES => BodyRule {
            roles: EVERY_ROLE,
            max: SHARES_BODY_MAX,
        },
        paths::CLUSTER_WITHDRAWAL | paths::CLUSTER_KEYRING | paths::CLUSTER_SEAL => BodyRule {
            roles: EVERY_ROLE,
            max: SMALL_BODY_MAX,
        },
        _ => return None,
    })
}

fn too_large(max: usize) -> ApiFailure {
    ApiFailure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than this endpoint takes ({max} bytes at most)"),
    )
}

/// Checks the caller's role (for endpoints that take a body), then reads the
/// body within its size and time limits, so handlers get it whole.
pub async fn limit_body(request: Request, next: Next) -> Response {
    let rule = body_rule(request.method(), request.uri().path());
    if let Some(rule) = &rule {
        let allowed = match request.extensions().get::<Caller>().map(|c| c.0.as_ref()) {
            Some(Ok(principal)) => require(principal, rule.roles),
            Some(Err(e)) => Err(ApiFailure::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                e.to_string(),
            )),
            None => Err(ApiFailure::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this connection carries no verified client certificate",
            )),
        };
        if let Err(refused) = allowed {
            // A body the endpoint could take is read and dropped unparsed
            // before the 403: closing a TLS connection with unread bytes
            // resets it, and the client would see a broken connection
            // instead of the refusal (schemathesis found it).
            if declared_length(&request).is_none_or(|n| n <= rule.max as u64) {
                let body = request.into_body();
                let _ =
                    tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, rule.max))
                        .await;
            }
            return refused.into_response();
        }
    }
    let max = rule.map_or(SMALL_BODY_MAX, |r| r.max);
    let declared = declared_length(&request);
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(max).into_response();
    }
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, max)).await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return too_large(max).into_response(),
        Err(_) => {
            return ApiFailure::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {}s; send it whole",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Rewrites an error answer that is not JSON (axum's own 405, 413, 415 and
/// the like) into an `ApiError`, keeping its status and headers.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!("this endpoint does not take {method}; see docs/protocol.md"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "body_too_large",
            "the request body is larger than this endpoint takes".to_owned(),
        ),
        s if s.is_server_error() => ("internal", "the daemon failed to answer".to_owned()),
        _ => (
            "bad_request",
            "the request is not one this endpoint takes; see docs/protocol.md".to_owned(),
        ),
    };
    let (mut parts, _) = response.into_parts();
    let mut rewritten = ApiFailure::new(status, code, message).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = parts.headers.remove(&name) {
            rewritten.headers_mut().insert(name, value);
        }
    }
    rewritten
}

/// Admits a share submission of `caller` (429 while its failed-submission
/// budget is empty) and parses its body strictly, with at most
/// [`MAX_SHARE_LINES`] lines. A body that is refused counts as a failed
/// submission.
pub fn share_submission(
    daemon: &Daemon,
    caller: &Principal,
    body: &Bytes,
) -> Result<UnsealRequest, ApiFailure> {
    daemon.admit_submission(caller).map_err(|refused| {
        let mut failure = ApiFailure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many failed share submissions from {}; nothing was processed, try again in {}s with the right share file",
                caller.name, refused.retry_after_secs
            ),
        );
        failure.retry_after = Some(refused.retry_after_secs);
        failure
    })?;
    let parsed = keyholder_api::from_json::<UnsealRequest>(body)
        .map_err(ApiFailure::bad_body)
        .and_then(|request| {
            if request.shares.is_empty() {
                return Err(ApiFailure::bad_body(
                    "the request carries no share line; nothing was processed".to_owned(),
                ));
            }
            if request.shares.len() > MAX_SHARE_LINES {
                return Err(ApiFailure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_shares",
                    format!(
                        "the request carries {} share lines, at most {MAX_SHARE_LINES} are taken; nothing was processed",
                        request.shares.len()
                    ),
                ));
            }
            Ok(request)
        });
    if parsed.is_err() {
        daemon.settle_submission(caller, true);
    }
    parsed
}

/// Records how a processed share submission ended: failed when the request
/// was refused or any line was, and when it changed nothing (every line
/// `already_counted`, or the daemon `already_unsealed`): repeating a share
/// is never needed, and each repeat is an audit entry (in a cluster also a
/// relay to every node), so a loop of them spends the budget too.
pub fn settle<E>(daemon: &Daemon, caller: &Principal, result: &Result<UnsealResponse, E>) {
    let failed = match result {
        Ok(response) => {
            response.outcomes.iter().any(|o| !o.accepted)
                || (!response.outcomes.is_empty()
                    && response.outcomes.iter().all(|o| o.refusal.is_some()))
        }
        Err(_) => true,
    };
    daemon.settle_submission(caller, failed);
}
