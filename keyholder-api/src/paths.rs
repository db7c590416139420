//! Every endpoint's path, defined once: the daemon routes these and the
//! client calls these, so neither can drift from the other. Query strings
//! (`?since=`, `?version=`) are added by the caller.

/// `GET`: liveness and whether the daemon is sealed.
pub const HEALTH: &str = "/v1/health";
/// `GET`: the status document.
pub const STATUS: &str = "/v1/status";
/// `POST` shares; `DELETE` withdraws (keyholder) or clears (operator).
pub const UNSEAL: &str = "/v1/unseal";
/// `POST`: drop every key.
pub const SEAL: &str = "/v1/seal";
/// `GET`: the keyring hand-over (database principals).
pub const KEYRING: &str = "/v1/keyring";
/// `GET ?since=&limit=`: a page of the audit log.
pub const AUDIT: &str = "/v1/audit";
/// `GET`: the rotation part of the status document.
pub const ROTATION: &str = "/v1/rotation";
/// `POST`: make, split and deal the new key.
pub const ROTATION_PREPARE: &str = "/v1/rotation/prepare";
/// `GET ?version=`: the caller's own new share, age-encrypted.
pub const ROTATION_SHARE: &str = "/v1/rotation/share";
/// `POST`: a keyholder proves their new share.
pub const ROTATION_VERIFY: &str = "/v1/rotation/verify";
/// `POST`: SharesVerified -> DualRead.
pub const ROTATION_ACTIVATE: &str = "/v1/rotation/activate";
/// `POST`: DualRead -> Reencrypting after sample verification.
pub const ROTATION_SWITCH: &str = "/v1/rotation/switch";
/// `POST`: pause the re-encryption.
pub const ROTATION_PAUSE: &str = "/v1/rotation/pause";
/// `POST`: resume the re-encryption (or scan again after the drain).
pub const ROTATION_RESUME: &str = "/v1/rotation/resume";
/// `POST`: change the re-encryption's pace.
pub const ROTATION_THROTTLE: &str = "/v1/rotation/throttle";
/// `POST`: plan, approve or retire the old version.
pub const ROTATION_RETIRE: &str = "/v1/rotation/retire";
/// `POST`: plan, approve or perform the rollback.
pub const ROTATION_ROLLBACK: &str = "/v1/rotation/rollback";
/// `POST`: re-read and put in force the config, without sealing (operators).
pub const ADMIN_RELOAD: &str = "/v1/admin/reload";
/// `GET`: this API's OpenAPI 3.1 document (any principal).
pub const OPENAPI: &str = "/v1/openapi.json";
/// `POST`: share lines relayed by the node they were submitted to (nodes
/// of the cluster only).
pub const CLUSTER_SHARES: &str = "/v1/cluster/shares";
/// `POST`: a keyholder withdrew its shares (or an operator cleared the
/// unseal progress) on the calling node (nodes of the cluster only).
pub const CLUSTER_WITHDRAWAL: &str = "/v1/cluster/withdrawal";
/// `POST`: the keyring for a sealed node, age-encrypted to its ephemeral
/// recipient (nodes of the cluster only).
pub const CLUSTER_KEYRING: &str = "/v1/cluster/keyring";
/// `POST`: a node sealed the cluster (nodes of the cluster only).
pub const CLUSTER_SEAL: &str = "/v1/cluster/seal";
