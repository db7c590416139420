//! Administration on the wire: the config reload.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/admin/reload`: the config was re-read, validated and put in
/// force; the daemon stayed as sealed or unsealed as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadResponse {
    /// The config fields whose values changed (`principals`,
    /// `listen.crl`, `reencrypt`, ...). The TLS files are re-read on every
    /// reload, so a certificate renewed in place takes effect with an empty
    /// list.
    pub changed: Vec<String>,
}
