//! The OpenAPI 3.1 document of the whole API, generated from the wire types
//! of this crate: what `GET /v1/openapi.json` answers and what
//! `docs/openapi.json` holds (a test fails when that file is stale; see
//! [`document`]).
//!
//! The functions below only carry the `#[utoipa::path]` of each endpoint;
//! the handlers live in `keyholderd`. What every endpoint shares (the
//! version header, the client certificate, the 400/403 answers) is added
//! once by `Shared`. Nothing here holds or describes a key beyond its
//! shape: the hand-over's keys are "32 bytes, standard base64".
#![allow(dead_code)]

use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{HeaderBuilder, RefOr, Required};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::{
    API_VERSION, API_VERSION_HEADER, ApiError, AuditEntry, AuditLog, CertificateExpiry,
    ClusterNode, ClusterSeal, ClusterStatus, Health, KeyringRequest, PeerKeyring,
    PeerKeyringRequest, PrepareRequest, RelayedShares, RelayedWithdrawal, ReloadResponse,
    RetirePlan, RetireRequest, RollbackPlan, RollbackRequest, RotationState, RotationStatus,
    ShareEnvelope, ShareOutcome, Status, ThrottleRequest, UnsealProgress, UnsealRequest,
    UnsealResponse, UsageLevel, VersionEncryptions, VersionState, VersionStatus,
};

/// The OpenAPI document as pretty JSON with a final newline, byte for byte
/// what `docs/openapi.json` must hold.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document always serialises");
    text.push('\n');
    text
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keyholder",
        description = "The API of keyholderd, spoken by the keyholder CLI and the database's hook. \
            Every request is HTTPS with a client certificate; the certificate's principal and its \
            roles (keyholder, operator, database, node) decide what it may do. docs/protocol.md is the \
            prose of this document.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        health, status, unseal, reset_unseal, seal, keyring, keyring_reporting, audit, openapi_json,
        rotation, prepare, share, verify, activate, switch, pause, resume, throttle, retire,
        rollback, reload, cluster_shares, cluster_withdrawal, cluster_keyring, cluster_seal,
    ),
    components(schemas(
        ApiError, Health, Status, CertificateExpiry, ClusterStatus, ClusterNode, VersionStatus, VersionState, UnsealProgress, UnsealRequest,
        UnsealResponse, ShareOutcome, AuditLog, AuditEntry, RotationStatus, RotationState,
        PrepareRequest, ShareEnvelope, ThrottleRequest, RetireRequest, RetirePlan,
        RollbackRequest, RollbackPlan, HookHandover, HandoverKey, ReloadResponse, KeyringRequest,
        VersionEncryptions, UsageLevel, RelayedShares, RelayedWithdrawal, PeerKeyringRequest, PeerKeyring, ClusterSeal,
    )),
    modifiers(&Shared),
    tags(
        (name = "seal", description = "Health, status, unsealing and sealing."),
        (name = "keyring", description = "The keys handed to the database."),
        (name = "audit", description = "The hash-chained audit log."),
        (name = "rotation", description = "Replacing a key version without downtime."),
        (name = "admin", description = "Running the daemon: the config reload."),
        (name = "cluster", description = "Between the nodes of a cluster: relayed shares and withdrawals, the keyring for a sealed node, the cluster seal. Node principals of the cluster only."),
    ),
)]
struct ApiDoc;

/// `crypto_core::HookHandover`'s shape (crypto-core does not depend on
/// utoipa): the keyring a database principal receives.
#[derive(ToSchema)]
struct HookHandover {
    /// The keyring's name.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")]
    keyring: String,
    /// The version new records are written with.
    #[schema(minimum = 1, maximum = 2147483648.0)]
    write_version: u32,
    /// The live keys, in numeric order.
    keys: Vec<HandoverKey>,
}

/// One key of the hand-over.
#[derive(ToSchema)]
struct HandoverKey {
    /// Its version.
    #[schema(minimum = 1, maximum = 2147483648.0)]
    version: u32,
    /// The key: 32 bytes, standard base64.
    #[schema(pattern = "^[A-Za-z0-9+/]{43}=$")]
    key: String,
}

/// `GET /v1/rotation/share?version=N`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct ShareQuery {
    /// The version whose share the caller fetches.
    #[param(minimum = 1, maximum = 2147483648.0)]
    version: u32,
}

/// `GET /v1/audit?since=SEQ&limit=N`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Answer the entries after this seq (default 0: from the first).
    #[param(minimum = 0)]
    since: Option<i64>,
    /// At most this many entries (default and maximum 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// What every endpoint shares, added to each operation of the document.
struct Shared;

/// The name of the client-certificate security scheme.
const MTLS: &str = "client_certificate";

impl Modify for Shared {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            MTLS,
            SecurityScheme::MutualTls {
                description: Some(
                    "A client certificate issued by the daemon's client CA; its CN (or DNS SAN, \
                     `listen.identity_field`) names the principal."
                        .to_owned(),
                ),
                deprecated: None,
                extensions: None,
            },
        );
        openapi.security = Some(vec![SecurityRequirement::new::<_, _, &str>(MTLS, [])]);

        let version = ParameterBuilder::new()
            .name(API_VERSION_HEADER)
            .parameter_in(ParameterIn::Header)
            .required(Required::True)
            .description(Some(format!(
                "The caller's API version (this build speaks {API_VERSION}); a missing or \
                 incompatible one is refused with 400 `incompatible_api_version`."
            )))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^1\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})$")),
            ))
            .example(Some(serde_json::Value::from(API_VERSION)))
            .build();
        let version_header = HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .description(Some("The daemon's API version."))
            .build();

        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .parameters
                    .get_or_insert_with(Vec::new)
                    .insert(0, RefOr::T(version.clone()));
                let responses = &mut operation.responses.responses;
                responses.entry("400".to_owned()).or_insert_with(|| {
                    error(
                        "`incompatible_api_version`: the version header is missing or \
                         incompatible; `bad_request`: the request is not one this endpoint takes",
                    )
                });
                responses.entry("403".to_owned()).or_insert_with(|| {
                    error("`forbidden`: the certificate maps to no principal, or it lacks the role")
                });
                responses.entry("429".to_owned()).or_insert_with(|| {
                    error(
                        "`too_many_connections`: the caller's principal holds as many open \
                         connections as `listen.max_connections_per_principal` allows; this one \
                         is closed after the answer",
                    )
                });
                for response in responses.values_mut() {
                    if let RefOr::T(response) = response {
                        response.headers.insert(
                            API_VERSION_HEADER.to_owned(),
                            RefOr::T(version_header.clone()),
                        );
                    }
                }
            }
        }
    }
}

fn error(description: &str) -> RefOr<Response> {
    RefOr::T(
        utoipa::openapi::ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ApiError")))
                    .build(),
            )
            .build(),
    )
}

/// Any principal: is the daemon up, is it sealed.
#[utoipa::path(get, path = "/v1/health", tag = "seal",
    responses((status = 200, description = "The daemon answers.", body = Health)))]
fn health() {}

/// Any principal: the status document (`keyholder status`).
#[utoipa::path(get, path = "/v1/status", tag = "seal",
    responses(
        (status = 200, description = "Versions, unseal progress, the rotation.", body = Status),
        (status = 503, description = "`not_initialized`: `keyholderd init` has not run.", body = ApiError),
    ))]
fn status() {}

/// Keyholders: submit share lines of any versions (`keyholder unseal`).
///
/// Each line gets an outcome; a refused line changes nothing. Failed
/// submissions spend the caller's budget (5, one back every 10 s).
#[utoipa::path(post, path = "/v1/unseal", tag = "seal",
    request_body = UnsealRequest,
    responses(
        (status = 200, description = "One outcome per line, the progress, the loaded versions.", body = UnsealResponse),
        (status = 408, description = "`request_timeout`: the body did not arrive within 10 s.", body = ApiError),
        (status = 413, description = "`body_too_large` (over 16 KiB) or `too_many_shares` (over 16 lines); nothing was processed.", body = ApiError),
        (status = 422, description = "`verification_failed`: rebuilt keys failed KCV, canary or sample test-decrypts; nothing was loaded.", body = ApiError),
        (status = 429, description = "`rate_limited`: the caller's failed submissions used up its budget; `Retry-After` says when to try again. `too_many_connections`: the caller's principal holds as many open connections as `listen.max_connections_per_principal` allows.", body = ApiError),
        (status = 503, description = "`not_initialized`.", body = ApiError),
    ))]
fn unseal() {}

/// Keyholders withdraw the shares they submitted; operators clear everyone's.
#[utoipa::path(delete, path = "/v1/unseal", tag = "seal",
    responses(
        (status = 200, description = "The progress left.", body = UnsealResponse),
        (status = 503, description = "`not_initialized`.", body = ApiError),
    ))]
fn reset_unseal() {}

/// Operators: drop every key the daemon holds (`keyholder seal`).
#[utoipa::path(post, path = "/v1/seal", tag = "seal",
    responses(
        (status = 200, description = "The status document, sealed.", body = Status),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 413, description = "`body_too_large`: over 1 KiB.", body = ApiError),
    ))]
fn seal() {}

/// Database principals: the live keys and the write version (`keyholder hook`).
///
/// The fetch is the consumer's acknowledgement of the keyring it received.
#[utoipa::path(get, path = "/v1/keyring", tag = "keyring",
    responses(
        (status = 200, description = "The hand-over.", body = HookHandover),
        (status = 503, description = "`sealed`: the daemon holds no key yet, or a cluster node does not hold every version of the stored rotation's keyring yet (another node serves it); `store_unavailable`: the fetch cannot be recorded in the state store now (`Retry-After`), so no key is handed over.", body = ApiError),
    ))]
fn keyring() {}

/// Database principals: the keyring, as `GET` answers it, with the calling
/// process's encryption counts (API 1.3; `keyholder hook` with
/// `KEYHOLDER_USAGE`, the client library, the demo application).
///
/// The daemon keeps the largest count seen per principal, process and
/// version and adds only the increase to the version's total, so a repeated
/// or late report never counts twice. A version past the warning limit
/// (2^31) or at the limit (2^32) is shown in the status and the metrics and
/// audited once; the keyring is served all the same.
#[utoipa::path(post, path = "/v1/keyring", tag = "keyring",
    request_body = KeyringRequest,
    responses(
        (status = 200, description = "The hand-over.", body = HookHandover),
        (status = 408, description = "`request_timeout`: the body did not arrive within 10 s.", body = ApiError),
        (status = 413, description = "`body_too_large`: over 4 KiB.", body = ApiError),
        (status = 503, description = "`sealed`: the daemon holds no key yet, or a cluster node does not hold every version of the stored rotation's keyring yet (another node serves it); `store_unavailable`: the state store cannot be reached now (`Retry-After`); nothing was recorded.", body = ApiError),
    ))]
fn keyring_reporting() {}

/// Operators: one page of the audit log (`keyholder audit`).
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "The entries after `since`, at most `limit`.", body = AuditLog)))]
fn audit() {}

/// Operators: re-read the config file and every file it names, validate all
/// of it as start-up does and put it in force without sealing (`keyholder
/// admin reload`; SIGHUP does the same).
///
/// New connections get the new server certificate, client CA, CRL and
/// principals; an open connection is checked again at its next request (a
/// certificate now refused, or mapping to another principal or none, gets
/// 403 `forbidden` and the connection is closed). A change that needs a
/// restart (keyring, state store, listen address, keyholders, targets, ...)
/// is refused by name and nothing changes. Audited either way.
#[utoipa::path(post, path = "/v1/admin/reload", tag = "admin",
    responses(
        (status = 200, description = "The config in force and what changed.", body = ReloadResponse),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 413, description = "`body_too_large`: over 1 KiB.", body = ApiError),
        (status = 422, description = "`reload_refused`: the new config is wrong or changes what needs a restart; the message says what. Nothing changed.", body = ApiError),
    ))]
fn reload() {}

/// Nodes of the cluster: share lines a keyholder submitted to the calling
/// node, which admitted them there. Admitted here as that keyholder's
/// (counted once per keyholder), audited `unseal_share_relayed`, never
/// relayed again. Any other caller is refused (403) and audited.
#[utoipa::path(post, path = "/v1/cluster/shares", tag = "cluster",
    request_body = RelayedShares,
    responses(
        (status = 200, description = "The outcome of each line here, as for `POST /v1/unseal`.", body = UnsealResponse),
        (status = 404, description = "`not_found`: this daemon is not a node of a cluster.", body = ApiError),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 409, description = "`sealed_since`: the calling node admitted them at an older cluster seal generation than this node knows; the seal dropped them (audited `unseal_relay_refused`).", body = ApiError),
        (status = 413, description = "`body_too_large`: over 16 KiB; `too_many_shares`: over 16 lines.", body = ApiError),
        (status = 422, description = "`verification_failed`: the rebuilt keys failed their proof; nothing was loaded.", body = ApiError),
    ))]
fn cluster_shares() {}

/// Nodes of the cluster: `DELETE /v1/unseal` by this principal on the
/// calling node. Dropped here as that principal's own `DELETE` drops it (a
/// keyholder's shares, whichever node relayed them; an operator's: all
/// progress), audited with `relayed_by`, never relayed again. Any other
/// caller is refused (403) and audited.
#[utoipa::path(post, path = "/v1/cluster/withdrawal", tag = "cluster",
    request_body = RelayedWithdrawal,
    responses(
        (status = 200, description = "The progress left here.", body = UnsealResponse),
        (status = 404, description = "`not_found`: this daemon is not a node of a cluster.", body = ApiError),
        (status = 413, description = "`body_too_large`: over 1 KiB.", body = ApiError),
    ))]
fn cluster_withdrawal() {}

/// Nodes of the cluster: every key this node holds, for a sealed node, as
/// the hand-over JSON age-encrypted to the requester's ephemeral
/// recipient. Audited `keyring_sent_to_node`; a caller that is not another
/// node of this cluster (a database, a node the cluster does not list) is
/// refused (403 with the reason) and audited `keyring_refused_to_node`.
#[utoipa::path(post, path = "/v1/cluster/keyring", tag = "cluster",
    request_body = PeerKeyringRequest,
    responses(
        (status = 200, description = "The keys, encrypted to the recipient.", body = PeerKeyring),
        (status = 404, description = "`not_found`: this daemon is not a node of a cluster.", body = ApiError),
        (status = 413, description = "`body_too_large`: over 1 KiB.", body = ApiError),
        (status = 503, description = "`sealed`: this node holds no key (or held keys of a generation the cluster sealed, and dropped them).", body = ApiError),
    ))]
fn cluster_keyring() {}

/// Nodes of the cluster: the calling node sealed the cluster at this
/// generation; this node drops its keys unless they belong to a newer one.
#[utoipa::path(post, path = "/v1/cluster/seal", tag = "cluster",
    request_body = ClusterSeal,
    responses(
        (status = 200, description = "This node's health after the seal.", body = Health),
        (status = 404, description = "`not_found`: this daemon is not a node of a cluster.", body = ApiError),
        (status = 413, description = "`body_too_large`: over 1 KiB.", body = ApiError),
    ))]
fn cluster_seal() {}

/// Any principal: this document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "seal",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", content_type = "application/json", body = Object)))]
fn openapi_json() {}

/// Any principal: where the rotation is (`keyholder rotate status`).
#[utoipa::path(get, path = "/v1/rotation", tag = "rotation",
    responses((status = 200, description = "The rotation.", body = RotationStatus)))]
fn rotation() {}

/// Operators: make and split a new version (`keyholder rotate prepare`).
#[utoipa::path(post, path = "/v1/rotation/prepare", tag = "rotation",
    request_body = PrepareRequest,
    responses(
        (status = 200, description = "The rotation, prepared.", body = RotationStatus),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 409, description = "`wrong_state`, `refused` or `keyring_plan`: the message says what to do first.", body = ApiError),
        (status = 413, description = "`body_too_large`: over 1 KiB.", body = ApiError),
        (status = 503, description = "`sealed` or `not_initialized`.", body = ApiError),
    ))]
fn prepare() {}

/// Keyholders: the caller's own share of a new version, age-encrypted to it.
#[utoipa::path(get, path = "/v1/rotation/share", tag = "rotation",
    params(ShareQuery),
    responses(
        (status = 200, description = "The caller's share, age-armored.", body = ShareEnvelope),
        (status = 409, description = "`wrong_state` or `refused` (no share for the caller, a retired version).", body = ApiError),
    ))]
fn share() {}

/// Keyholders: prove a new version's share by submitting it decrypted.
#[utoipa::path(post, path = "/v1/rotation/verify", tag = "rotation",
    request_body = UnsealRequest,
    responses(
        (status = 200, description = "One outcome per line.", body = UnsealResponse),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 409, description = "`wrong_state` or `refused`.", body = ApiError),
        (status = 413, description = "`body_too_large` or `too_many_shares`; nothing was processed.", body = ApiError),
        (status = 422, description = "`verification_failed`.", body = ApiError),
        (status = 429, description = "`rate_limited`; `Retry-After` says when to try again. `too_many_connections`: the caller's principal holds as many open connections as `listen.max_connections_per_principal` allows.", body = ApiError),
        (status = 503, description = "`sealed` or `not_initialized`.", body = ApiError),
    ))]
fn verify() {}

/// Operators: put the verified version in the keyring, read only (dual read).
#[utoipa::path(post, path = "/v1/rotation/activate", tag = "rotation",
    responses(
        (status = 200, description = "The rotation, dual read.", body = RotationStatus),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 409, description = "`wrong_state`, `refused` or `keyring_plan`.", body = ApiError),
        (status = 413, description = "`body_too_large`.", body = ApiError),
        (status = 422, description = "`verification_failed`.", body = ApiError),
        (status = 503, description = "`sealed` or `not_initialized`.", body = ApiError),
    ))]
fn activate() {}

/// Operators: consumers write the new version; the worker starts moving records.
#[utoipa::path(post, path = "/v1/rotation/switch", tag = "rotation",
    responses(
        (status = 200, description = "The rotation, dual write.", body = RotationStatus),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 409, description = "`wrong_state` (consumers still to acknowledge) or `refused`.", body = ApiError),
        (status = 413, description = "`body_too_large`.", body = ApiError),
        (status = 503, description = "`sealed` or `not_initialized`.", body = ApiError),
    ))]
fn switch() {}

/// Operators: stop the re-encryption worker where it is.
#[utoipa::path(post, path = "/v1/rotation/pause", tag = "rotation",
    responses(
        (status = 200, description = "The rotation, paused.", body = RotationStatus),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 409, description = "`wrong_state`.", body = ApiError),
        (status = 413, description = "`body_too_large`.", body = ApiError),
    ))]
fn pause() {}

/// Operators: let the re-encryption worker go on.
#[utoipa::path(post, path = "/v1/rotation/resume", tag = "rotation",
    responses(
        (status = 200, description = "The rotation, running.", body = RotationStatus),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 409, description = "`wrong_state`.", body = ApiError),
        (status = 413, description = "`body_too_large`.", body = ApiError),
    ))]
fn resume() {}

/// Operators: the worker's rate and batch size; fields left out stay.
#[utoipa::path(post, path = "/v1/rotation/throttle", tag = "rotation",
    request_body = ThrottleRequest,
    responses(
        (status = 200, description = "The rotation with the throttle in force.", body = RotationStatus),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 409, description = "`wrong_state` or `refused`.", body = ApiError),
        (status = 413, description = "`body_too_large`.", body = ApiError),
    ))]
fn throttle() {}

/// Operators: retire the old version; two distinct operators execute it.
#[utoipa::path(post, path = "/v1/rotation/retire", tag = "rotation",
    request_body = RetireRequest,
    responses(
        (status = 200, description = "The plan, an approval, or the result.", body = RetirePlan),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 409, description = "`wrong_state`, `refused` or `records_remain`.", body = ApiError),
        (status = 413, description = "`body_too_large`.", body = ApiError),
        (status = 503, description = "`sealed` or `not_initialized`.", body = ApiError),
    ))]
fn retire() {}

/// Operators: move records back to the old version; two distinct operators execute it.
#[utoipa::path(post, path = "/v1/rotation/rollback", tag = "rotation",
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "The plan, an approval, or the start.", body = RollbackPlan),
        (status = 408, description = "`request_timeout`.", body = ApiError),
        (status = 409, description = "`wrong_state` or `refused`.", body = ApiError),
        (status = 413, description = "`body_too_large`.", body = ApiError),
        (status = 503, description = "`sealed` or `not_initialized`.", body = ApiError),
    ))]
fn rollback() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is this document; regenerate it with
    /// `KEYHOLDER_WRITE_OPENAPI=1 cargo nextest run --workspace -E 'test(openapi_document)'`.
    #[test]
    fn the_committed_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let generated = document();
        if std::env::var_os("KEYHOLDER_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: regenerate it with \
             `KEYHOLDER_WRITE_OPENAPI=1 cargo nextest run --workspace -E 'test(openapi_document)'`"
        );
    }

    /// The document describes exactly the paths the daemon routes and the
    /// client calls (`crate::paths`), no more and no fewer.
    #[test]
    fn the_document_has_every_path_of_the_paths_module() {
        use crate::paths::*;
        let mut defined = vec![
            HEALTH,
            STATUS,
            UNSEAL,
            SEAL,
            KEYRING,
            AUDIT,
            OPENAPI,
            ROTATION,
            ROTATION_PREPARE,
            ROTATION_SHARE,
            ROTATION_VERIFY,
            ROTATION_ACTIVATE,
            ROTATION_SWITCH,
            ROTATION_PAUSE,
            ROTATION_RESUME,
            ROTATION_THROTTLE,
            ROTATION_RETIRE,
            ROTATION_ROLLBACK,
            ADMIN_RELOAD,
            CLUSTER_SHARES,
            CLUSTER_WITHDRAWAL,
            CLUSTER_KEYRING,
            CLUSTER_SEAL,
        ];
        defined.sort_unstable();
        let doc = ApiDoc::openapi();
        let documented: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        assert_eq!(documented, defined);
    }

    #[test]
    fn every_operation_takes_the_version_header_and_names_its_errors() {
        let doc = ApiDoc::openapi();
        assert_eq!(doc.paths.paths.len(), 23);
        for (path, item) in &doc.paths.paths {
            for op in [&item.get, &item.post, &item.delete].into_iter().flatten() {
                let params = op.parameters.as_deref().unwrap_or_default();
                let RefOr::T(first) = &params[0] else {
                    panic!("{path}: the version header is a reference");
                };
                assert_eq!(first.name, API_VERSION_HEADER, "{path}");
                for code in ["200", "400", "403", "429"] {
                    assert!(op.responses.responses.contains_key(code), "{path} {code}");
                }
            }
        }
    }
}
