//! The SQLite state store: one file in the state directory.
//!
//! The schema is versioned by `PRAGMA user_version` and migrated forward at
//! open; the store format (semver, [`STORE_FORMAT`]) is recorded in the file
//! and a file of another major format is refused. Every call runs on the
//! runtime's blocking pool, never on an async worker thread: a call waiting
//! on the file's lock (another process holding it, a slow disk, `VACUUM
//! INTO`) must not stall the requests that do not need the store. Errors
//! name the file and the operation.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crypto_core::KeyVersion;
use keyholder_api::{AuditEntry, GENESIS_HASH};
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

use super::{
    AuditDraft, DealtShare, STORE_FORMAT, StateStore, StoreError, StoreFuture, StoredEnvelope,
    Transition, UsageChange, VersionRecord, canary_of, chained_time, corrupt, format_compatible,
    parse_state, state_name, version_of,
};
use crate::principal::Principal;

/// Schema migrations; `user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE store_format (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format TEXT NOT NULL
);
CREATE TABLE principals (
    name TEXT PRIMARY KEY,
    roles TEXT NOT NULL,
    cert_identity TEXT NOT NULL,
    age_recipient TEXT
);
CREATE TABLE key_versions (
    version INTEGER PRIMARY KEY CHECK (version > 0),
    kcv TEXT NOT NULL,
    set_id TEXT NOT NULL,
    threshold INTEGER NOT NULL,
    count INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('prepared', 'shares_verified', 'active', 'retired')),
    encryptions INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE share_fingerprints (
    version INTEGER NOT NULL REFERENCES key_versions (version),
    idx INTEGER NOT NULL CHECK (idx BETWEEN 1 AND 255),
    fingerprint TEXT NOT NULL,
    principal TEXT NOT NULL,
    PRIMARY KEY (version, idx)
);
CREATE TABLE share_envelopes (
    version INTEGER NOT NULL REFERENCES key_versions (version),
    principal TEXT NOT NULL,
    idx INTEGER NOT NULL,
    age_armored TEXT NOT NULL,
    PRIMARY KEY (version, principal)
);
CREATE TABLE canaries (
    version INTEGER PRIMARY KEY REFERENCES key_versions (version),
    record TEXT NOT NULL,
    aad TEXT NOT NULL
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
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
    version INTEGER NOT NULL,
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
    version INTEGER NOT NULL REFERENCES key_versions (version),
    encryptions INTEGER NOT NULL CHECK (encryptions >= 0),
    PRIMARY KEY (consumer, process, version)
);
"#,
];

/// The state store in one SQLite file.
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    path: PathBuf,
}

fn sql(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite {
        path: PathBuf::new(),
        operation,
        source,
    }
}

fn io(path: &Path, operation: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        path,
        operation,
        source,
    }
}

impl SqliteStore {
    /// Opens (creating with mode 0600 when missing) and migrates the store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            // Created here first so the file is never readable by others,
            // whatever the umask.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io(path, "create the file"))?;
        }
        let at = |e: StoreError| e.at(path);
        let mut conn = Connection::open(path).map_err(sql("open")).map_err(at)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("set journal mode"))
            .map_err(at)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(sql("enable foreign keys"))
            .map_err(at)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("set busy timeout"))
            .map_err(at)?;
        migrate(&mut conn).map_err(at)?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path: path.to_owned(),
            }),
        })
    }

    /// Runs `f` on the connection on the blocking pool; its error names the
    /// file.
    fn with<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let path = inner.path.clone();
            tokio::task::spawn_blocking(move || {
                // A panic mid-call rolled its transaction back as it
                // unwound: the connection is sound, so a poisoned lock is
                // taken over (the one policy for poisoned locks).
                let mut conn = inner
                    .conn
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                f(&mut conn)
            })
            .await
            .map_err(|e| StoreError::Task {
                reason: e.to_string(),
            })?
            .map_err(|e| e.at(&path))
        })
    }

    fn load_versions(conn: &Connection) -> Result<Vec<VersionRecord>, StoreError> {
        let mut dealt: BTreeMap<i64, BTreeMap<u8, DealtShare>> = BTreeMap::new();
        let mut stmt = conn
            .prepare("SELECT version, idx, fingerprint, principal FROM share_fingerprints")
            .map_err(sql("read fingerprints"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, u8>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(sql("read fingerprints"))?;
        for row in rows {
            let (version, index, fingerprint, principal) = row.map_err(sql("read fingerprints"))?;
            let fingerprint = fingerprint
                .parse()
                .map_err(|_| corrupt(format!("fingerprint of v{version} index {index}")))?;
            dealt.entry(version).or_default().insert(
                index,
                DealtShare {
                    fingerprint,
                    principal,
                },
            );
        }
        let mut stmt = conn
            .prepare(
                "SELECT k.version, k.kcv, k.set_id, k.threshold, k.count, k.state, k.encryptions, c.record, c.aad
                 FROM key_versions k LEFT JOIN canaries c ON c.version = k.version ORDER BY k.version",
            )
            .map_err(sql("read versions"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u8>(3)?,
                    r.get::<_, u8>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })
            .map_err(sql("read versions"))?;
        let mut out = Vec::new();
        for row in rows {
            let (n, kcv, set, threshold, count, state, encryptions, record, aad) =
                row.map_err(sql("read versions"))?;
            let version = version_of(n)?;
            let canary = canary_of(version, record, aad)?;
            out.push(VersionRecord {
                version,
                kcv: kcv
                    .parse()
                    .map_err(|_| corrupt(format!("kcv of {version}")))?,
                set: set
                    .parse()
                    .map_err(|_| corrupt(format!("set of {version}")))?,
                threshold,
                count,
                state: parse_state(&state)?,
                encryptions: u64::try_from(encryptions)
                    .map_err(|_| corrupt(format!("encryption count of {version}")))?,
                dealt: dealt.remove(&n).unwrap_or_default(),
                canary,
            });
        }
        out.sort_by_key(|v| v.version);
        Ok(out)
    }

    fn apply_now(conn: &mut Connection, t: Transition) -> Result<AuditEntry, StoreError> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin transition"))?;
        if let Some(new) = &t.new_version {
            let v = &new.record;
            let n = i64::from(v.version.number());
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM key_versions WHERE version = ?1)",
                    [n],
                    |r| r.get(0),
                )
                .map_err(sql("check version"))?;
            if exists {
                return Err(StoreError::VersionExists { version: v.version });
            }
            tx.execute(
                "INSERT INTO key_versions (version, kcv, set_id, threshold, count, state, encryptions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    n,
                    v.kcv.to_hex(),
                    v.set.to_hex(),
                    v.threshold,
                    v.count,
                    state_name(v.state),
                    i64::try_from(v.encryptions).unwrap_or(i64::MAX)
                ],
            )
            .map_err(sql("insert version"))?;
            for (index, dealt) in &v.dealt {
                tx.execute(
                    "INSERT INTO share_fingerprints (version, idx, fingerprint, principal) VALUES (?1, ?2, ?3, ?4)",
                    params![n, index, dealt.fingerprint.to_hex(), dealt.principal],
                )
                .map_err(sql("insert fingerprint"))?;
            }
            for envelope in &new.envelopes {
                tx.execute(
                    "INSERT INTO share_envelopes (version, principal, idx, age_armored) VALUES (?1, ?2, ?3, ?4)",
                    params![n, envelope.principal, envelope.index, envelope.age_armored],
                )
                .map_err(sql("insert share envelope"))?;
            }
            tx.execute(
                "INSERT INTO canaries (version, record, aad) VALUES (?1, ?2, ?3)",
                params![n, v.canary.record, v.canary.aad],
            )
            .map_err(sql("insert canary"))?;
        }
        for (version, state) in &t.version_states {
            let changed = tx
                .execute(
                    "UPDATE key_versions SET state = ?2 WHERE version = ?1",
                    params![i64::from(version.number()), state_name(*state)],
                )
                .map_err(sql("update version state"))?;
            if changed == 0 {
                return Err(StoreError::UnknownVersion { version: *version });
            }
        }
        if let Some(settings) = &t.settings {
            tx.execute(
                "INSERT INTO runtime_settings (id, settings) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET settings = excluded.settings",
                [settings],
            )
            .map_err(sql("save runtime settings"))?;
        }
        if let Some(rotation) = &t.rotation {
            tx.execute(
                "INSERT INTO rotation (id, state) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET state = excluded.state",
                [rotation],
            )
            .map_err(sql("save rotation"))?;
        }
        if let Some(fetch) = &t.fetch {
            for version in &fetch.versions {
                tx.execute(
                    "INSERT INTO consumer_fetches (principal, version, first_fetch, last_fetch) VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT (principal, version) DO UPDATE SET last_fetch = excluded.last_fetch",
                    params![fetch.principal, i64::from(version.number()), fetch.time],
                )
                .map_err(sql("record fetch"))?;
            }
        }
        let entry = append_audit(&tx, &t.audit)?;
        tx.commit().map_err(sql("commit transition"))?;
        Ok(entry)
    }
}

fn append_audit(
    tx: &rusqlite::Transaction<'_>,
    draft: &AuditDraft,
) -> Result<AuditEntry, StoreError> {
    let last: Option<(i64, String, String)> = tx
        .query_row(
            "SELECT seq, hash, time FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sql("read audit tail"))?;
    let time = chained_time(&draft.time, last.as_ref().map(|(_, _, t)| t.as_str()));
    let (seq, prev_hash) = match last {
        Some((seq, hash, _)) => (
            u64::try_from(seq).map_err(|_| corrupt("audit sequence"))? + 1,
            hash,
        ),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let hash = AuditEntry::compute_hash(
        seq,
        &time,
        &draft.actor,
        &draft.action,
        &draft.detail,
        &prev_hash,
    );
    tx.execute(
        "INSERT INTO audit (seq, time, actor, action, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![seq as i64, time, draft.actor, draft.action, draft.detail, prev_hash, hash],
    )
    .map_err(sql("append audit entry"))?;
    Ok(AuditEntry {
        seq,
        time,
        actor: draft.actor.clone(),
        action: draft.action.clone(),
        detail: draft.detail.clone(),
        prev_hash,
        hash,
    })
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(sql("read schema version"))?
        .try_into()
        .map_err(|_| corrupt("schema version"))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Format {
            found: format!("schema {applied}"),
        });
    }
    for (number, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().map_err(sql("begin migration"))?;
        tx.execute_batch(migration).map_err(sql("migrate schema"))?;
        tx.pragma_update(None, "user_version", (number + 1) as i64)
            .map_err(sql("record schema version"))?;
        tx.commit().map_err(sql("commit migration"))?;
    }
    let found: Option<String> = conn
        .query_row("SELECT format FROM store_format WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql("read store format"))?;
    match found {
        None => {
            conn.execute(
                "INSERT INTO store_format (id, format) VALUES (1, ?1)",
                [STORE_FORMAT],
            )
            .map_err(sql("record store format"))?;
        }
        Some(found) => {
            if !format_compatible(&found) {
                return Err(StoreError::Format { found });
            }
        }
    }
    Ok(())
}

impl StateStore for SqliteStore {
    fn sync_principals(&self, principals: &[Principal]) -> StoreFuture<'_, ()> {
        let principals = principals.to_vec();
        self.with(move |conn| {
            let tx = conn.transaction().map_err(sql("begin principal sync"))?;
            tx.execute("DELETE FROM principals", []).map_err(sql("clear principals"))?;
            for p in &principals {
                tx.execute(
                    "INSERT INTO principals (name, roles, cert_identity, age_recipient) VALUES (?1, ?2, ?3, ?4)",
                    params![p.name, p.roles_text(), p.cert_identity, p.age_recipient],
                )
                .map_err(sql("insert principal"))?;
            }
            tx.commit().map_err(sql("commit principal sync"))
        })
    }

    fn versions(&self) -> StoreFuture<'_, Vec<VersionRecord>> {
        self.with(|conn| Self::load_versions(conn))
    }

    fn apply(&self, transition: Transition) -> StoreFuture<'_, AuditEntry> {
        self.with(move |conn| Self::apply_now(conn, transition))
    }

    fn audit_page(&self, since: u64, limit: u32) -> StoreFuture<'_, Vec<AuditEntry>> {
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare("SELECT seq, time, actor, action, detail, prev_hash, hash FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .map_err(sql("read audit log"))?;
            let rows = stmt
                .query_map(params![since, i64::from(limit)], |r| {
                    Ok(AuditEntry {
                        seq: r.get::<_, i64>(0)? as u64,
                        time: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        detail: r.get(4)?,
                        prev_hash: r.get(5)?,
                        hash: r.get(6)?,
                    })
                })
                .map_err(sql("read audit log"))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql("read audit log"))
        })
    }

    fn add_encryptions(&self, version: KeyVersion, n: u64) -> StoreFuture<'_, UsageChange> {
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("begin counting encryptions"))?;
            let change = add_to_total(&tx, version, n)?;
            tx.commit().map_err(sql("commit counted encryptions"))?;
            Ok(change)
        })
    }

    fn record_usage(
        &self,
        consumer: &str,
        process: &str,
        counts: &[(KeyVersion, u64)],
    ) -> StoreFuture<'_, Vec<UsageChange>> {
        let (consumer, process, counts) =
            (consumer.to_owned(), process.to_owned(), counts.to_vec());
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("begin usage report"))?;
            let mut changes = Vec::new();
            for (version, count) in counts {
                let number = i64::from(version.number());
                tx.query_row(
                    "SELECT 1 FROM key_versions WHERE version = ?1",
                    [number],
                    |_| Ok(()),
                )
                .optional()
                .map_err(sql("read encryptions"))?
                .ok_or(StoreError::UnknownVersion { version })?;
                let seen: Option<i64> = tx
                    .query_row(
                        "SELECT encryptions FROM consumer_usage WHERE consumer = ?1 AND process = ?2 AND version = ?3",
                        params![consumer, process, number],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sql("read reported usage"))?;
                let seen = seen.map_or(Ok(0), |n| {
                    u64::try_from(n).map_err(|_| corrupt(format!("reported usage of {version}")))
                })?;
                // Only a higher cumulative count says something new.
                let Some(increase) = count.checked_sub(seen).filter(|n| *n > 0) else {
                    continue;
                };
                tx.execute(
                    "INSERT INTO consumer_usage (consumer, process, version, encryptions) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (consumer, process, version) DO UPDATE SET encryptions = excluded.encryptions",
                    params![consumer, process, number, i64::try_from(count).unwrap_or(i64::MAX)],
                )
                .map_err(sql("record reported usage"))?;
                changes.push(add_to_total(&tx, version, increase)?);
            }
            tx.commit().map_err(sql("commit usage report"))?;
            Ok(changes)
        })
    }

    fn share_envelope(
        &self,
        version: KeyVersion,
        principal: &str,
    ) -> StoreFuture<'_, Option<StoredEnvelope>> {
        let principal = principal.to_owned();
        self.with(move |conn| {
            conn.query_row(
                "SELECT principal, idx, age_armored FROM share_envelopes WHERE version = ?1 AND principal = ?2",
                params![i64::from(version.number()), principal],
                |r| {
                    Ok(StoredEnvelope {
                        principal: r.get(0)?,
                        index: r.get(1)?,
                        age_armored: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(sql("read share envelope"))
        })
    }

    fn load_rotation(&self) -> StoreFuture<'_, Option<String>> {
        self.with(move |conn| {
            conn.query_row("SELECT state FROM rotation WHERE id = 1", [], |r| r.get(0))
                .optional()
                .map_err(sql("load rotation"))
        })
    }

    fn runtime_settings(&self) -> StoreFuture<'_, Option<String>> {
        self.with(|conn| {
            conn.query_row(
                "SELECT settings FROM runtime_settings WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("load runtime settings"))
        })
    }

    fn checkpoint(&self, target: &str, direction: &str) -> StoreFuture<'_, Option<String>> {
        let (target, direction) = (target.to_owned(), direction.to_owned());
        self.with(move |conn| {
            conn.query_row(
                "SELECT state FROM checkpoints WHERE target = ?1 AND direction = ?2",
                params![target, direction],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read checkpoint"))
        })
    }

    fn checkpoint_targets(&self, direction: &str) -> StoreFuture<'_, Vec<String>> {
        let direction = direction.to_owned();
        self.with(move |conn| {
            let mut statement = conn
                .prepare("SELECT target FROM checkpoints WHERE direction = ?1 ORDER BY target")
                .map_err(sql("read checkpoints"))?;
            statement
                .query_map(params![direction], |r| r.get(0))
                .map_err(sql("read checkpoints"))?
                .collect::<Result<Vec<String>, _>>()
                .map_err(sql("read checkpoints"))
        })
    }

    fn put_checkpoint(&self, target: &str, direction: &str, json: String) -> StoreFuture<'_, ()> {
        let (target, direction) = (target.to_owned(), direction.to_owned());
        self.with(move |conn| {
            // A checkpoint lost in a power cut is harmless (the pass resumes
            // from an earlier one and the compare-and-swap skips what moved),
            // so it does not wait for the disk; every other write of the
            // store does, and syncs the checkpoints before it with it.
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(sql("write checkpoint"))?;
            let written = conn
                .execute(
                    "INSERT INTO checkpoints (target, direction, state) VALUES (?1, ?2, ?3)
                     ON CONFLICT (target, direction) DO UPDATE SET state = excluded.state",
                    params![target, direction, json],
                )
                .map(drop)
                .map_err(sql("write checkpoint"));
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(sql("write checkpoint"))?;
            written
        })
    }

    fn record_fetch(
        &self,
        principal: &str,
        versions: &[KeyVersion],
        time: &str,
    ) -> StoreFuture<'_, ()> {
        let (principal, versions, time) =
            (principal.to_owned(), versions.to_vec(), time.to_owned());
        self.with(move |conn| {
            let tx = conn.transaction().map_err(sql("begin fetch record"))?;
            for version in &versions {
                tx.execute(
                    "INSERT INTO consumer_fetches (principal, version, first_fetch, last_fetch) VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT (principal, version) DO UPDATE SET last_fetch = excluded.last_fetch",
                    params![principal, i64::from(version.number()), time],
                )
                .map_err(sql("record fetch"))?;
            }
            tx.commit().map_err(sql("commit fetch record"))
        })
    }

    fn snapshot(&self, label: &str, keep: u32) -> StoreFuture<'_, Option<String>> {
        let dir = self
            .inner
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join("snapshots");
        let stamp = crate::audit::now_rfc3339().replace(':', "");
        let file = dir.join(format!("state-{stamp}-before-{label}.db"));
        self.with(move |conn| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io(&dir, "create the snapshot directory"))?;
            // VACUUM INTO writes a consistent copy of the whole store in one
            // statement; it holds what the store holds, never a plaintext key.
            conn.execute("VACUUM INTO ?1", [file.display().to_string()])
                .map_err(sql("snapshot the state store"))?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(io(&file, "restrict the snapshot to its owner"))?;
            prune_snapshots(&dir, keep)?;
            Ok(Some(file.display().to_string()))
        })
    }
}

/// Adds `n` to the total of `version` inside `tx`.
fn add_to_total(
    tx: &rusqlite::Transaction<'_>,
    version: KeyVersion,
    n: u64,
) -> Result<UsageChange, StoreError> {
    let number = i64::from(version.number());
    let before: Option<i64> = tx
        .query_row(
            "SELECT encryptions FROM key_versions WHERE version = ?1",
            [number],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("read encryptions"))?;
    let before = before.ok_or(StoreError::UnknownVersion { version })?;
    let before =
        u64::try_from(before).map_err(|_| corrupt(format!("encryption count of {version}")))?;
    let after = before.saturating_add(n).min(i64::MAX as u64);
    tx.execute(
        "UPDATE key_versions SET encryptions = ?2 WHERE version = ?1",
        params![number, after as i64],
    )
    .map_err(sql("count encryptions"))?;
    Ok(UsageChange {
        version,
        before,
        after,
    })
}

/// Removes all but the newest `keep` snapshots in `dir` (each is a whole copy
/// of the store): the names start with their UTC time, so the name order is
/// the age order. Other files in the directory are left alone.
fn prune_snapshots(dir: &Path, keep: u32) -> Result<(), StoreError> {
    let listing = || io(dir, "list the snapshots");
    let mut snapshots = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(listing())? {
        let name = entry.map_err(listing())?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("state-") && name.contains("-before-") && name.ends_with(".db") {
            snapshots.push(name.to_owned());
        }
    }
    snapshots.sort();
    let excess = snapshots.len().saturating_sub(keep as usize);
    for name in &snapshots[..excess] {
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(io(&path, "remove an old snapshot"))?;
        tracing::info!(snapshot = %path.display(), keep, "old state store snapshot removed");
    }
    Ok(())
}
