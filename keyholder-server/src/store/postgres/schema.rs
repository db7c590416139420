//! The PostgreSQL state store's schema and its migrations.
//!
//! `store_meta` holds the number of migrations applied and the store format;
//! it is made before the first migration. Migrating runs in one transaction
//! under an advisory lock, so two daemons starting on an empty database
//! neither race nor leave half a schema.

use tokio_postgres::Client;

use super::pg;
use crate::store::{STORE_FORMAT, StoreError, corrupt, format_compatible};

/// Schema migrations, in order; `store_meta.schema_version` counts those
/// applied. Run with `search_path` set to the store's schema.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE principals (
    name TEXT PRIMARY KEY,
    roles TEXT NOT NULL,
    cert_identity TEXT NOT NULL,
    age_recipient TEXT
);
CREATE TABLE key_versions (
    version BIGINT PRIMARY KEY CHECK (version BETWEEN 1 AND 4294967295),
    kcv TEXT NOT NULL,
    set_id TEXT NOT NULL,
    threshold SMALLINT NOT NULL,
    count SMALLINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('prepared', 'shares_verified', 'active', 'retired')),
    encryptions BIGINT NOT NULL DEFAULT 0 CHECK (encryptions >= 0)
);
CREATE TABLE share_fingerprints (
    version BIGINT NOT NULL REFERENCES key_versions (version),
    idx SMALLINT NOT NULL CHECK (idx BETWEEN 1 AND 255),
    fingerprint TEXT NOT NULL,
    principal TEXT NOT NULL,
    PRIMARY KEY (version, idx)
);
CREATE TABLE share_envelopes (
    version BIGINT NOT NULL REFERENCES key_versions (version),
    principal TEXT NOT NULL,
    idx SMALLINT NOT NULL CHECK (idx BETWEEN 1 AND 255),
    age_armored TEXT NOT NULL,
    PRIMARY KEY (version, principal)
);
CREATE TABLE canaries (
    version BIGINT PRIMARY KEY REFERENCES key_versions (version),
    record TEXT NOT NULL,
    aad TEXT NOT NULL
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY CHECK (seq > 0),
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TABLE rotation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL
);
CREATE TABLE checkpoints (
    target TEXT NOT NULL,
    direction TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (target, direction)
);
CREATE TABLE consumer_fetches (
    principal TEXT NOT NULL,
    version BIGINT NOT NULL,
    first_fetch TEXT NOT NULL,
    last_fetch TEXT NOT NULL,
    PRIMARY KEY (principal, version)
);
"#,
    r#"
CREATE TABLE runtime_settings (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    settings TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE consumer_usage (
    consumer TEXT NOT NULL,
    process TEXT NOT NULL,
    version BIGINT NOT NULL REFERENCES key_versions (version),
    encryptions BIGINT NOT NULL CHECK (encryptions >= 0),
    PRIMARY KEY (consumer, process, version)
);
"#,
    r#"
CREATE TABLE cluster_seal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL CHECK (generation >= 0)
);
INSERT INTO cluster_seal (id, generation) VALUES (1, 0);
"#,
    // The cluster's leader lease (#15): one row, times by the database's
    // clock only; and each node's last heartbeat.
    r#"
CREATE TABLE lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT,
    epoch BIGINT NOT NULL CHECK (epoch >= 0),
    acquired_at TIMESTAMPTZ NOT NULL,
    renewed_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO lease (id, holder, epoch, acquired_at, renewed_at, expires_at)
    VALUES (1, NULL, 0, '-infinity', '-infinity', '-infinity');
CREATE TABLE node_heartbeats (
    node TEXT PRIMARY KEY,
    addr TEXT NOT NULL,
    sealed BOOLEAN NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL
);
"#,
];

/// `name` as a quoted identifier. Schema names are checked against
/// [`crate::config::sql_ident_rule`] when parsed; quoting still keeps a
/// keyword such as `user` usable.
pub(super) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates `schema` when missing, refuses a store of another major format
/// or a newer schema, and applies the missing migrations.
pub(super) async fn migrate(client: &mut Client, schema: &str) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg("begin migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("keyholder state store {schema}")],
    )
    .await
    .map_err(pg("lock the schema for migration"))?;
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .map_err(pg("look up the schema"))?
        .get(0);
    // Checked first so a schema made in advance by a DBA needs no CREATE
    // privilege on the database.
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {}", quoted(schema)))
            .await
            .map_err(pg("create the schema"))?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS store_meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            schema_version INTEGER NOT NULL,
            format TEXT NOT NULL
        )",
    )
    .await
    .map_err(pg("create store_meta"))?;
    let row = tx
        .query_opt(
            "SELECT schema_version, format FROM store_meta WHERE id = 1",
            &[],
        )
        .await
        .map_err(pg("read store format"))?;
    let applied = match row {
        None => {
            tx.execute(
                "INSERT INTO store_meta (id, schema_version, format) VALUES (1, 0, $1)",
                &[&STORE_FORMAT],
            )
            .await
            .map_err(pg("record store format"))?;
            0
        }
        Some(row) => {
            let found: String = row.get(1);
            if !format_compatible(&found) {
                return Err(StoreError::Format { found });
            }
            let applied: i32 = row.get(0);
            usize::try_from(applied).map_err(|_| corrupt("schema version"))?
        }
    };
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Format {
            found: format!("schema {applied}"),
        });
    }
    for migration in &MIGRATIONS[applied..] {
        tx.batch_execute(migration)
            .await
            .map_err(pg("migrate schema"))?;
    }
    if applied < MIGRATIONS.len() {
        let now = i32::try_from(MIGRATIONS.len()).expect("few migrations");
        tx.execute(
            "UPDATE store_meta SET schema_version = $1 WHERE id = 1",
            &[&now],
        )
        .await
        .map_err(pg("record schema version"))?;
    }
    tx.commit().await.map_err(pg("commit migration"))
}
