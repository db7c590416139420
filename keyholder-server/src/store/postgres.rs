//! The PostgreSQL state store: the daemon's state in one schema of a
//! PostgreSQL database (`state_store = "postgres://..."`).
//!
//! Owns that schema (named by the URL's `schema` parameter, `keyholder` when
//! absent), its migrations (counted in `store_meta` beside the store format;
//! a store of another major format is refused) and the audit chain's order:
//! every transition locks the audit table before it reads the chain's head,
//! so two daemons sharing the store can never fork the chain. A trigger
//! refuses UPDATE, DELETE and TRUNCATE on the audit table.
//!
//! It must never hold a plaintext key or share, and never print the URL: it
//! may carry a password.

mod location;
mod schema;

use std::collections::BTreeMap;

use crypto_core::KeyVersion;
use keyholder_api::{AuditEntry, GENESIS_HASH};
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, GenericClient};

pub use location::PgLocation;

use super::{
    AuditDraft, ClusterSealAudit, DealtShare, Fence, Heartbeat, LeaseBid, LeaseRecord, StateStore,
    StoreError, StoreFuture, StoredEnvelope, Transition, UsageChange, VersionRecord, canary_of,
    chained_time, corrupt, parse_state, state_name, version_of,
};
use crate::principal::Principal;

/// The state store in one PostgreSQL schema.
pub struct PostgresStore {
    location: PgLocation,
    /// One connection: the daemon's load is a few statements per API call,
    /// and a transaction needs the connection to itself.
    client: Mutex<Client>,
    /// The lease rounds' own connection (opened at the first round): a
    /// renewal never waits behind a slow state statement.
    lease_client: Mutex<Option<Client>>,
}

fn pg(operation: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |error| StoreError::Postgres {
        operation,
        source: Box::new(keyholder_reencrypt::DatabaseError::from(&error)),
    }
}

/// How long a statement of the state store waits for a lock (the audit
/// table's, held by another daemon's transition) before it fails, transient.
const LOCK_TIMEOUT: &str = "5s";
/// The longest statement of the state store.
const STATEMENT_TIMEOUT: &str = "30s";

fn small(n: u8) -> i16 {
    i16::from(n)
}

fn unsmall(n: i16, what: impl FnOnce() -> String) -> Result<u8, StoreError> {
    u8::try_from(n).map_err(|_| corrupt(what()))
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PostgresStore {
    /// Connects to `location`, creating the schema when missing and
    /// migrating it forward.
    pub async fn connect(location: &PgLocation) -> Result<Self, StoreError> {
        let mut client = open_client(location).await?;
        schema::migrate(&mut client, location.schema()).await?;
        tracing::info!(schema = location.schema(), "postgresql state store opened");
        Ok(Self {
            location: location.clone(),
            client: Mutex::new(client),
            lease_client: Mutex::new(None),
        })
    }

    /// The connection, reopened when the server dropped it (a restart or a
    /// failover must not need a daemon restart).
    async fn client(&self) -> Result<MutexGuard<'_, Client>, StoreError> {
        let mut client = self.client.lock().await;
        if client.is_closed() {
            tracing::warn!(
                schema = self.location.schema(),
                "postgresql state store connection was closed; reconnecting"
            );
            *client = open_client(&self.location).await?;
        }
        Ok(client)
    }

    async fn load_versions(client: &Client) -> Result<Vec<VersionRecord>, StoreError> {
        let mut dealt: BTreeMap<i64, BTreeMap<u8, DealtShare>> = BTreeMap::new();
        let rows = client
            .query(
                "SELECT version, idx, fingerprint, principal FROM share_fingerprints",
                &[],
            )
            .await
            .map_err(pg("read fingerprints"))?;
        for row in rows {
            let version: i64 = row.get(0);
            let index = unsmall(row.get(1), || format!("share index of v{version}"))?;
            let fingerprint: String = row.get(2);
            let fingerprint = fingerprint
                .parse()
                .map_err(|_| corrupt(format!("fingerprint of v{version} index {index}")))?;
            dealt.entry(version).or_default().insert(
                index,
                DealtShare {
                    fingerprint,
                    principal: row.get(3),
                },
            );
        }
        let rows = client
            .query(
                "SELECT k.version, k.kcv, k.set_id, k.threshold, k.count, k.state, k.encryptions, c.record, c.aad
                 FROM key_versions k LEFT JOIN canaries c ON c.version = k.version ORDER BY k.version",
                &[],
            )
            .await
            .map_err(pg("read versions"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let n: i64 = row.get(0);
            let version = version_of(n)?;
            let kcv: String = row.get(1);
            let set: String = row.get(2);
            let state: String = row.get(5);
            let encryptions: i64 = row.get(6);
            out.push(VersionRecord {
                version,
                kcv: kcv
                    .parse()
                    .map_err(|_| corrupt(format!("kcv of {version}")))?,
                set: set
                    .parse()
                    .map_err(|_| corrupt(format!("set of {version}")))?,
                threshold: unsmall(row.get(3), || format!("threshold of {version}"))?,
                count: unsmall(row.get(4), || format!("share count of {version}"))?,
                state: parse_state(&state)?,
                encryptions: u64::try_from(encryptions)
                    .map_err(|_| corrupt(format!("encryption count of {version}")))?,
                dealt: dealt.remove(&n).unwrap_or_default(),
                canary: canary_of(version, row.get(7), row.get(8))?,
            });
        }
        Ok(out)
    }

    async fn apply_now(
        client: &mut Client,
        fence: Option<&Fence>,
        t: Transition,
    ) -> Result<AuditEntry, StoreError> {
        let tx = client.transaction().await.map_err(pg("begin transition"))?;
        // Taken first: transitions of daemons sharing this store are
        // serialized whole, in audit order. Plain reads still pass.
        tx.batch_execute("LOCK TABLE audit IN EXCLUSIVE MODE")
            .await
            .map_err(pg("lock the audit log"))?;
        if let Some(fence) = fence {
            check_fence(&tx, fence).await?;
        }
        if let Some(new) = &t.new_version {
            let v = &new.record;
            let n = i64::from(v.version.number());
            let inserted = tx
                .execute(
                    "INSERT INTO key_versions (version, kcv, set_id, threshold, count, state, encryptions)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (version) DO NOTHING",
                    &[
                        &n,
                        &v.kcv.to_hex(),
                        &v.set.to_hex(),
                        &small(v.threshold),
                        &small(v.count),
                        &state_name(v.state),
                        &count(v.encryptions),
                    ],
                )
                .await
                .map_err(pg("insert version"))?;
            if inserted == 0 {
                return Err(StoreError::VersionExists { version: v.version });
            }
            for (index, dealt) in &v.dealt {
                tx.execute(
                    "INSERT INTO share_fingerprints (version, idx, fingerprint, principal) VALUES ($1, $2, $3, $4)",
                    &[&n, &small(*index), &dealt.fingerprint.to_hex(), &dealt.principal],
                )
                .await
                .map_err(pg("insert fingerprint"))?;
            }
            for envelope in &new.envelopes {
                tx.execute(
                    "INSERT INTO share_envelopes (version, principal, idx, age_armored) VALUES ($1, $2, $3, $4)",
                    &[&n, &envelope.principal, &small(envelope.index), &envelope.age_armored],
                )
                .await
                .map_err(pg("insert share envelope"))?;
            }
            tx.execute(
                "INSERT INTO canaries (version, record, aad) VALUES ($1, $2, $3)",
                &[&n, &v.canary.record, &v.canary.aad],
            )
            .await
            .map_err(pg("insert canary"))?;
        }
        for (version, state) in &t.version_states {
            let changed = tx
                .execute(
                    "UPDATE key_versions SET state = $2 WHERE version = $1",
                    &[&i64::from(version.number()), &state_name(*state)],
                )
                .await
                .map_err(pg("update version state"))?;
            if changed == 0 {
                return Err(StoreError::UnknownVersion { version: *version });
            }
        }
        if let Some(settings) = &t.settings {
            tx.execute(
                "INSERT INTO runtime_settings (id, settings) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET settings = excluded.settings",
                &[settings],
            )
            .await
            .map_err(pg("save runtime settings"))?;
        }
        if let Some(rotation) = &t.rotation {
            tx.execute(
                "INSERT INTO rotation (id, state) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state",
                &[rotation],
            )
            .await
            .map_err(pg("save rotation"))?;
        }
        if let Some(fetch) = &t.fetch {
            let mut versions: Vec<i64> = fetch
                .versions
                .iter()
                .map(|v| i64::from(v.number()))
                .collect();
            // One row may be touched once per statement.
            versions.sort_unstable();
            versions.dedup();
            tx.execute(
                "INSERT INTO consumer_fetches (principal, version, first_fetch, last_fetch)
                 SELECT $1, v, $3, $3 FROM unnest($2::BIGINT[]) AS v
                 ON CONFLICT (principal, version) DO UPDATE SET last_fetch = excluded.last_fetch",
                &[&fetch.principal, &versions, &fetch.time],
            )
            .await
            .map_err(pg("record fetch"))?;
        }
        let entry = append_audit(&tx, &t.audit).await?;
        tx.commit().await.map_err(pg("commit transition"))?;
        Ok(entry)
    }
}

/// Refuses unless the lease row names `fence`'s node at its epoch,
/// unexpired by the database's clock. `FOR SHARE` holds the row until the
/// caller's transaction ends, so a takeover (an UPDATE of it) waits for the
/// fenced write to commit or roll back: no write of an old epoch lands
/// after a new epoch exists.
async fn check_fence(tx: &impl GenericClient, fence: &Fence) -> Result<(), StoreError> {
    let row = tx
        .query_one(
            "SELECT holder, epoch, expires_at > clock_timestamp() FROM lease WHERE id = 1 FOR SHARE",
            &[],
        )
        .await
        .map_err(pg("check the lease"))?;
    let holder: Option<String> = row.get(0);
    let current = u64::try_from(row.get::<_, i64>(1)).map_err(|_| corrupt("lease epoch"))?;
    let live: bool = row.get(2);
    if holder.as_deref() == Some(fence.node.as_str()) && current == fence.epoch && live {
        return Ok(());
    }
    Err(StoreError::Fenced {
        epoch: fence.epoch,
        current,
        expired: current == fence.epoch && !live,
    })
}

fn millis(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn lease_of(row: &tokio_postgres::Row) -> Result<LeaseRecord, StoreError> {
    Ok(LeaseRecord {
        holder: row.get(0),
        epoch: u64::try_from(row.get::<_, i64>(1)).map_err(|_| corrupt("lease epoch"))?,
        expired: row.get(2),
        held_ms: millis(row.get(3)),
        renewed_ms: millis(row.get(4)),
        ours: false,
    })
}

/// The lease's columns as [`lease_of`] reads them; ages in milliseconds by
/// the database's clock (0 before the first leader).
const LEASE_COLUMNS: &str = "holder, epoch, expires_at <= clock_timestamp(),
    CASE WHEN acquired_at = '-infinity' THEN 0 ELSE (extract(epoch FROM clock_timestamp() - acquired_at) * 1000)::BIGINT END,
    CASE WHEN renewed_at = '-infinity' THEN 0 ELSE (extract(epoch FROM clock_timestamp() - renewed_at) * 1000)::BIGINT END";

async fn open_client(location: &PgLocation) -> Result<Client, StoreError> {
    let client = location
        .connect()
        .connect("state store")
        .await
        .map_err(|source| StoreError::Postgres {
            operation: "connect",
            source: Box::new(source),
        })?;
    client
        .batch_execute(&format!(
            "SET search_path TO {}; SET lock_timeout = '{LOCK_TIMEOUT}'; SET statement_timeout = '{STATEMENT_TIMEOUT}'",
            schema::quoted(location.schema())
        ))
        .await
        .map_err(pg("select the schema"))?;
    Ok(client)
}

/// Appends `draft` after the chain's head; the caller holds the audit lock.
async fn append_audit(
    tx: &impl GenericClient,
    draft: &AuditDraft,
) -> Result<AuditEntry, StoreError> {
    let last = tx
        .query_opt(
            "SELECT seq, hash, time FROM audit ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(pg("read audit tail"))?;
    let time = chained_time(&draft.time, last.as_ref().map(|r| r.get::<_, &str>(2)));
    let (seq, prev_hash) = match last {
        Some(row) => (
            u64::try_from(row.get::<_, i64>(0)).map_err(|_| corrupt("audit sequence"))? + 1,
            row.get::<_, String>(1),
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
        "INSERT INTO audit (seq, time, actor, action, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&count(seq), &time, &draft.actor, &draft.action, &draft.detail, &prev_hash, &hash],
    )
    .await
    .map_err(pg("append audit entry"))?;
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

impl StateStore for PostgresStore {
    fn sync_principals(&self, principals: &[Principal]) -> StoreFuture<'_, ()> {
        let rows: Vec<(String, String, String, Option<String>)> = principals
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.roles_text(),
                    p.cert_identity.clone(),
                    p.age_recipient.clone(),
                )
            })
            .collect();
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(pg("begin principal sync"))?;
            tx.execute("DELETE FROM principals", &[])
                .await
                .map_err(pg("clear principals"))?;
            for (name, roles, identity, recipient) in &rows {
                tx.execute(
                    "INSERT INTO principals (name, roles, cert_identity, age_recipient) VALUES ($1, $2, $3, $4)",
                    &[name, roles, identity, recipient],
                )
                .await
                .map_err(pg("insert principal"))?;
            }
            tx.commit().await.map_err(pg("commit principal sync"))
        })
    }

    fn versions(&self) -> StoreFuture<'_, Vec<VersionRecord>> {
        Box::pin(async move {
            let client = self.client().await?;
            Self::load_versions(&client).await
        })
    }

    fn apply(&self, transition: Transition) -> StoreFuture<'_, AuditEntry> {
        Box::pin(async move {
            let mut client = self.client().await?;
            Self::apply_now(&mut client, None, transition).await
        })
    }

    fn apply_fenced(&self, fence: Fence, transition: Transition) -> StoreFuture<'_, AuditEntry> {
        Box::pin(async move {
            let mut client = self.client().await?;
            Self::apply_now(&mut client, Some(&fence), transition).await
        })
    }

    fn put_checkpoint_fenced(
        &self,
        fence: Fence,
        target: &str,
        direction: &str,
        json: String,
    ) -> StoreFuture<'_, ()> {
        let (target, direction) = (target.to_owned(), direction.to_owned());
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg("begin checkpoint"))?;
            check_fence(&tx, &fence).await?;
            tx.execute(
                "INSERT INTO checkpoints (target, direction, state) VALUES ($1, $2, $3)
                 ON CONFLICT (target, direction) DO UPDATE SET state = excluded.state",
                &[&target, &direction, &json],
            )
            .await
            .map_err(pg("write checkpoint"))?;
            tx.commit().await.map_err(pg("commit checkpoint"))
        })
    }

    fn add_encryptions_fenced(
        &self,
        fence: Fence,
        version: KeyVersion,
        n: u64,
    ) -> StoreFuture<'_, UsageChange> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(pg("begin encryption count"))?;
            check_fence(&tx, &fence).await?;
            let change = add_to_total(&tx, version, n).await?;
            tx.commit().await.map_err(pg("commit encryption count"))?;
            Ok(change)
        })
    }

    fn lease_round(&self, bid: LeaseBid) -> StoreFuture<'_, LeaseRecord> {
        Box::pin(async move {
            let mut slot = self.lease_client.lock().await;
            if slot.as_ref().is_none_or(Client::is_closed) {
                *slot = Some(open_client(&self.location).await?);
            }
            let client = slot.as_mut().expect("opened above");
            let tx = client
                .transaction()
                .await
                .map_err(pg("begin lease round"))?;
            tx.execute(
                "INSERT INTO node_heartbeats (node, addr, sealed, seen_at) VALUES ($1, $2, $3, clock_timestamp())
                 ON CONFLICT (node) DO UPDATE SET addr = excluded.addr, sealed = excluded.sealed, seen_at = excluded.seen_at",
                &[&bid.node, &bid.addr, &bid.sealed],
            )
            .await
            .map_err(pg("write heartbeat"))?;
            let mut ours = false;
            if bid.want {
                let lease_ms = i64::try_from(bid.lease.as_millis()).unwrap_or(i64::MAX);
                // No epoch is -1.
                let held = bid.held.and_then(|e| i64::try_from(e).ok()).unwrap_or(-1);
                // Renewed by the process that holds it, at its epoch, while
                // unexpired (the epoch stays: nobody took it over);
                // otherwise taken only once expired, at the next epoch.
                // Waits for a fenced write holding the row.
                ours = tx
                    .execute(
                        "UPDATE lease SET
                        epoch = CASE WHEN holder = $1 AND epoch = $3 AND expires_at > clock_timestamp() THEN epoch ELSE epoch + 1 END,
                        acquired_at = CASE WHEN holder = $1 AND epoch = $3 AND expires_at > clock_timestamp() THEN acquired_at ELSE clock_timestamp() END,
                        holder = $1,
                        renewed_at = clock_timestamp(),
                        expires_at = clock_timestamp() + $2::float8 * interval '1 millisecond'
                     WHERE id = 1 AND (expires_at <= clock_timestamp() OR (holder = $1 AND epoch = $3))",
                        &[&bid.node, &(lease_ms as f64), &held],
                    )
                    .await
                    .map_err(pg("take or renew the lease"))?
                    == 1;
            }
            let row = tx
                .query_one(
                    &format!("SELECT {LEASE_COLUMNS} FROM lease WHERE id = 1"),
                    &[],
                )
                .await
                .map_err(pg("read the lease"))?;
            let record = LeaseRecord {
                ours,
                ..lease_of(&row)?
            };
            tx.commit().await.map_err(pg("commit lease round"))?;
            Ok(record)
        })
    }

    fn cluster_state(&self) -> StoreFuture<'_, (LeaseRecord, Vec<Heartbeat>)> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_one(
                    &format!("SELECT {LEASE_COLUMNS} FROM lease WHERE id = 1"),
                    &[],
                )
                .await
                .map_err(pg("read the lease"))?;
            let lease = lease_of(&row)?;
            let rows = client
                .query(
                    "SELECT node, addr, sealed, (extract(epoch FROM clock_timestamp() - seen_at) * 1000)::BIGINT
                     FROM node_heartbeats ORDER BY node",
                    &[],
                )
                .await
                .map_err(pg("read heartbeats"))?;
            let beats = rows
                .iter()
                .map(|r| Heartbeat {
                    node: r.get(0),
                    addr: r.get(1),
                    sealed: r.get(2),
                    age_ms: millis(r.get(3)),
                })
                .collect();
            Ok((lease, beats))
        })
    }

    fn fetches_of(&self, version: KeyVersion) -> StoreFuture<'_, Vec<(String, String)>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT principal, last_fetch FROM consumer_fetches WHERE version = $1 ORDER BY principal",
                    &[&i64::from(version.number())],
                )
                .await
                .map_err(pg("read consumer fetches"))?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn last_audit_time(&self, action: &str) -> StoreFuture<'_, Option<String>> {
        let action = action.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT time FROM audit WHERE action = $1 ORDER BY seq DESC LIMIT 1",
                    &[&action],
                )
                .await
                .map_err(pg("read the audit log"))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn audit_page(&self, since: u64, limit: u32) -> StoreFuture<'_, Vec<AuditEntry>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT seq, time, actor, action, detail, prev_hash, hash FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&count(since), &i64::from(limit)],
                )
                .await
                .map_err(pg("read audit log"))?;
            rows.into_iter()
                .map(|r| {
                    Ok(AuditEntry {
                        seq: u64::try_from(r.get::<_, i64>(0))
                            .map_err(|_| corrupt("audit sequence"))?,
                        time: r.get(1),
                        actor: r.get(2),
                        action: r.get(3),
                        detail: r.get(4),
                        prev_hash: r.get(5),
                        hash: r.get(6),
                    })
                })
                .collect()
        })
    }

    fn add_encryptions(&self, version: KeyVersion, n: u64) -> StoreFuture<'_, UsageChange> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(pg("begin counting encryptions"))?;
            let change = add_to_total(&tx, version, n).await?;
            tx.commit()
                .await
                .map_err(pg("commit counted encryptions"))?;
            Ok(change)
        })
    }

    fn record_usage(
        &self,
        consumer: &str,
        process: &str,
        counts: &[(KeyVersion, u64)],
    ) -> StoreFuture<'_, Vec<UsageChange>> {
        let (consumer, process) = (consumer.to_owned(), process.to_owned());
        let mut counts = counts.to_vec();
        // Rows are locked in version order, so two reports never deadlock.
        counts.sort_unstable();
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(pg("begin usage report"))?;
            let mut changes = Vec::new();
            for (version, reported) in counts {
                let number = i64::from(version.number());
                // The version's row lock orders every report of it (and
                // another daemon's on the same store) before the read below.
                tx.query_opt(
                    "SELECT 1 FROM key_versions WHERE version = $1 FOR UPDATE",
                    &[&number],
                )
                .await
                .map_err(pg("lock the version's count"))?
                .ok_or(StoreError::UnknownVersion { version })?;
                let seen = tx
                    .query_opt(
                        "SELECT encryptions FROM consumer_usage WHERE consumer = $1 AND process = $2 AND version = $3",
                        &[&consumer, &process, &number],
                    )
                    .await
                    .map_err(pg("read reported usage"))?
                    .map(|row| row.get::<_, i64>(0))
                    .map_or(Ok(0), |n| {
                        u64::try_from(n)
                            .map_err(|_| corrupt(format!("reported usage of {version}")))
                    })?;
                // Only a higher cumulative count says something new.
                let Some(increase) = reported.checked_sub(seen).filter(|n| *n > 0) else {
                    continue;
                };
                tx.execute(
                    "INSERT INTO consumer_usage (consumer, process, version, encryptions) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (consumer, process, version) DO UPDATE SET encryptions = excluded.encryptions",
                    &[&consumer, &process, &number, &count(reported)],
                )
                .await
                .map_err(pg("record reported usage"))?;
                changes.push(add_to_total(&tx, version, increase).await?);
            }
            tx.commit().await.map_err(pg("commit usage report"))?;
            Ok(changes)
        })
    }

    fn share_envelope(
        &self,
        version: KeyVersion,
        principal: &str,
    ) -> StoreFuture<'_, Option<StoredEnvelope>> {
        let principal = principal.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT principal, idx, age_armored FROM share_envelopes WHERE version = $1 AND principal = $2",
                    &[&i64::from(version.number()), &principal],
                )
                .await
                .map_err(pg("read share envelope"))?;
            row.map(|r| {
                Ok(StoredEnvelope {
                    principal: r.get(0),
                    index: unsmall(r.get(1), || format!("share index of {version}"))?,
                    age_armored: r.get(2),
                })
            })
            .transpose()
        })
    }

    fn load_rotation(&self) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt("SELECT state FROM rotation WHERE id = 1", &[])
                .await
                .map_err(pg("load rotation"))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn runtime_settings(&self) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt("SELECT settings FROM runtime_settings WHERE id = 1", &[])
                .await
                .map_err(pg("load runtime settings"))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn checkpoint(&self, target: &str, direction: &str) -> StoreFuture<'_, Option<String>> {
        let (target, direction) = (target.to_owned(), direction.to_owned());
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT state FROM checkpoints WHERE target = $1 AND direction = $2",
                    &[&target, &direction],
                )
                .await
                .map_err(pg("read checkpoint"))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn checkpoint_targets(&self, direction: &str) -> StoreFuture<'_, Vec<String>> {
        let direction = direction.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT target FROM checkpoints WHERE direction = $1 ORDER BY target",
                    &[&direction],
                )
                .await
                .map_err(pg("read checkpoints"))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn put_checkpoint(&self, target: &str, direction: &str, json: String) -> StoreFuture<'_, ()> {
        let (target, direction) = (target.to_owned(), direction.to_owned());
        Box::pin(async move {
            let client = self.client().await?;
            // A checkpoint lost in a crash is harmless (the pass resumes
            // from an earlier one and the compare-and-swap skips what
            // moved), so its commit does not wait for the WAL flush: the
            // setting is local to this statement's own transaction. Every
            // other write of the store commits synchronously, which flushes
            // the WAL up to its own record and so every checkpoint before it.
            client
                .execute(
                    "WITH kh_async AS (SELECT set_config('synchronous_commit', 'off', true))
                     INSERT INTO checkpoints (target, direction, state) SELECT $1::text, $2::text, $3::text FROM kh_async
                     ON CONFLICT (target, direction) DO UPDATE SET state = excluded.state",
                    &[&target, &direction, &json],
                )
                .await
                .map(drop)
                .map_err(pg("write checkpoint"))
        })
    }

    fn record_fetch(
        &self,
        principal: &str,
        versions: &[KeyVersion],
        time: &str,
    ) -> StoreFuture<'_, ()> {
        let principal = principal.to_owned();
        let mut versions: Vec<i64> = versions.iter().map(|v| i64::from(v.number())).collect();
        // One row may be touched once per statement.
        versions.sort_unstable();
        versions.dedup();
        let time = time.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            // One statement for all versions: atomic without a transaction.
            client
                .execute(
                    "INSERT INTO consumer_fetches (principal, version, first_fetch, last_fetch)
                     SELECT $1, v, $3, $3 FROM unnest($2::BIGINT[]) AS v
                     ON CONFLICT (principal, version) DO UPDATE SET last_fetch = excluded.last_fetch",
                    &[&principal, &versions, &time],
                )
                .await
                .map(drop)
                .map_err(pg("record fetch"))
        })
    }

    fn cluster_seal_generation(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT generation FROM cluster_seal WHERE id = 1", &[])
                .await
                .map_err(pg("read the cluster seal generation"))?;
            u64::try_from(row.get::<_, i64>(0)).map_err(|_| corrupt("cluster seal generation"))
        })
    }

    fn seal_cluster(&self, seen: u64, audit: ClusterSealAudit) -> StoreFuture<'_, u64> {
        let seen = i64::try_from(seen).unwrap_or(i64::MAX - 1);
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(pg("begin the cluster seal"))?;
            tx.batch_execute("LOCK TABLE audit IN EXCLUSIVE MODE")
                .await
                .map_err(pg("lock the audit log"))?;
            let row = tx
                .query_one(
                    "UPDATE cluster_seal SET generation = GREATEST(generation, $1) + 1 WHERE id = 1 RETURNING generation",
                    &[&seen],
                )
                .await
                .map_err(pg("bump the cluster seal generation"))?;
            let generation = u64::try_from(row.get::<_, i64>(0))
                .map_err(|_| corrupt("cluster seal generation"))?;
            append_audit(&tx, &audit(generation)).await?;
            tx.commit().await.map_err(pg("commit the cluster seal"))?;
            Ok(generation)
        })
    }
}

/// Adds `n` to the total of `version` inside `tx`.
async fn add_to_total(
    tx: &tokio_postgres::Transaction<'_>,
    version: KeyVersion,
    n: u64,
) -> Result<UsageChange, StoreError> {
    let row = tx
        .query_opt(
            "UPDATE key_versions SET encryptions = encryptions + LEAST($2, 9223372036854775807 - encryptions)
             WHERE version = $1 RETURNING encryptions",
            &[&i64::from(version.number()), &count(n)],
        )
        .await
        .map_err(pg("count encryptions"))?
        .ok_or(StoreError::UnknownVersion { version })?;
    let after: i64 = row.get(0);
    let after =
        u64::try_from(after).map_err(|_| corrupt(format!("encryption count of {version}")))?;
    Ok(UsageChange {
        version,
        before: after.saturating_sub(n),
        after,
    })
}
