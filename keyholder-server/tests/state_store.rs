//! The state store's behaviour, written once over `&dyn StateStore` and run
//! on SQLite and on the real PostgreSQL named by `KEYHOLDER_TEST_PG` (CI sets
//! it; without it the PostgreSQL half prints why it skipped, and with it set
//! but the server unreachable it fails). Each PostgreSQL test works in a
//! schema of its own, dropped at the end, so they run in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crypto_core::KeyVersion;
use keyholder_api::{VersionState, verify_chain};
use keyholder_server::principal::{Principal, Role};
use keyholder_server::store::{
    AuditDraft, Canary, DealtShare, Fence, LeaseBid, NewVersion, PgLocation, PostgresStore,
    STORE_FORMAT, SqliteStore, StateStore, StoreError, StoredEnvelope, Transition, UsageChange,
    VersionRecord,
};

/// One store under test and a way around it to its raw tables.
struct Backend {
    store: Arc<dyn StateStore>,
    kind: Kind,
}

enum Kind {
    Sqlite {
        dir: tempfile::TempDir,
    },
    Postgres {
        location: Box<PgLocation>,
        admin: tokio_postgres::Client,
        _schema: DropSchema,
    },
}

/// Drops the test's schema when the test ends, passed or failed.
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Its own thread and runtime: this runs inside the test's runtime,
        // possibly while unwinding.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

impl Backend {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        Self {
            store: Arc::new(store),
            kind: Kind::Sqlite { dir },
        }
    }

    /// `None` (after saying so) when `KEYHOLDER_TEST_PG` is not set.
    async fn postgres(test: &str) -> Option<Self> {
        let Some(url) = std::env::var("KEYHOLDER_TEST_PG")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            println!("skipping: KEYHOLDER_TEST_PG not set");
            return None;
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let schema = format!(
            "kh_test_{}_{}_{}",
            &test[..test.len().min(30)],
            std::process::id(),
            nanos % 1_000_000_000
        );
        let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("KEYHOLDER_TEST_PG is set but PostgreSQL does not answer: {e:?}")
            });
        tokio::spawn(connection);
        let guard = DropSchema {
            url: url.clone(),
            schema: schema.clone(),
        };
        let location = PgLocation::parse(&url)
            .unwrap()
            .with_schema(&schema)
            .unwrap();
        let store = PostgresStore::connect(&location).await.unwrap();
        admin
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await
            .unwrap();
        Some(Self {
            store: Arc::new(store),
            kind: Kind::Postgres {
                location: Box::new(location),
                admin,
                _schema: guard,
            },
        })
    }

    fn store(&self) -> &dyn StateStore {
        &*self.store
    }

    /// A second store on the same data, as a restarted (or a second) daemon
    /// would open it.
    async fn reopen(&self) -> Result<Arc<dyn StateStore>, StoreError> {
        Ok(match &self.kind {
            Kind::Sqlite { dir } => Arc::new(SqliteStore::open(&dir.path().join("state.db"))?),
            Kind::Postgres { location, .. } => Arc::new(PostgresStore::connect(location).await?),
        })
    }

    /// Runs `sql` on the raw tables, bypassing the store; the database's
    /// message when it refuses.
    async fn raw(&self, sql: &str) -> Result<(), String> {
        match &self.kind {
            Kind::Sqlite { dir } => rusqlite::Connection::open(dir.path().join("state.db"))
                .unwrap()
                .execute_batch(sql)
                .map_err(|e| e.to_string()),
            Kind::Postgres { admin, .. } => admin
                .batch_execute(sql)
                .await
                .map_err(|e| e.as_db_error().expect("a refusal").message().to_owned()),
        }
    }

    /// The table recording the store format.
    /// The recorded consumer fetches (principal, version, first, last), read
    /// from the table: the daemon itself only writes them.
    async fn fetches(&self) -> Vec<(String, i64, String, String)> {
        let query = "SELECT principal, version, first_fetch, last_fetch FROM consumer_fetches ORDER BY principal, version";
        match &self.kind {
            Kind::Sqlite { dir } => {
                let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
                let mut stmt = conn.prepare(query).unwrap();
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }
            Kind::Postgres { admin, .. } => admin
                .query(query, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect(),
        }
    }

    fn format_table(&self) -> &'static str {
        match self.kind {
            Kind::Sqlite { .. } => "store_format",
            Kind::Postgres { .. } => "store_meta",
        }
    }
}

/// A transition that stores the rotation blob with its audit entry.
fn saving_rotation(blob: &str, audit: AuditDraft) -> Transition {
    let mut transition = Transition::audit_only(audit);
    transition.rotation = Some(blob.to_owned());
    transition
}

/// Generates `<behaviour>::sqlite` and `<behaviour>::postgres` for each
/// `async fn <behaviour>(Backend)`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::sqlite().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(backend) = super::Backend::postgres(stringify!($name)).await {
                    super::$name(backend).await;
                }
            }
        }
    )*};
}

on_both_stores!(
    a_version_with_its_shares_round_trips,
    a_failing_transition_leaves_nothing,
    the_audit_chain_verifies_and_cannot_be_rewritten,
    two_stores_on_one_database_never_fork_the_chain,
    rotation_and_checkpoints_round_trip,
    consumer_fetches_keep_first_and_last,
    usage_reports_count_each_increase_once,
    another_major_format_is_refused,
    audit_times_never_go_backwards_and_pages_follow_the_chain,
    runtime_settings_are_written_with_their_audit_entry_and_survive_a_reopen,
    the_cluster_seal_generation_rises_with_its_audit_entry_on_postgres_only,
    a_version_without_its_canary_is_named_not_left_out,
);

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

fn draft(action: &str) -> AuditDraft {
    AuditDraft {
        time: "2025-01-02T03:04:05.678Z".to_owned(),
        actor: "keyholderd".to_owned(),
        action: action.to_owned(),
        detail: format!("{{\"action\":\"{action}\"}}"),
    }
}

/// What `keyholderd init` stores for version `n`: three shares dealt to
/// alice, bob and carol, their age envelopes and the canary.
fn new_version(n: u32) -> NewVersion {
    let holders = ["alice", "bob", "carol"];
    let dealt: BTreeMap<u8, DealtShare> = (1u8..)
        .zip(holders)
        .map(|(index, name)| {
            (
                index,
                DealtShare {
                    fingerprint: format!("{:02x}", index + n as u8)
                        .repeat(32)
                        .parse()
                        .unwrap(),
                    principal: name.to_owned(),
                },
            )
        })
        .collect();
    NewVersion {
        record: VersionRecord {
            version: v(n),
            kcv: format!("{:02x}", n as u8).repeat(16).parse().unwrap(),
            set: format!("a{:01x}", n as u8 % 16).repeat(16).parse().unwrap(),
            threshold: 2,
            count: 3,
            state: VersionState::Prepared,
            encryptions: 1,
            dealt,
            canary: Canary {
                record: format!("V{n}:canary-ciphertext"),
                aad: format!("keyholder canary/orders/v{n}"),
            },
        },
        envelopes: (1u8..)
            .zip(holders)
            .map(|(index, name)| StoredEnvelope {
                principal: name.to_owned(),
                index,
                age_armored: format!(
                    "-----BEGIN AGE ENCRYPTED FILE-----\n{name}{n}\n-----END AGE ENCRYPTED FILE-----\n"
                ),
            })
            .collect(),
    }
}

fn inserting(n: u32) -> Transition {
    let mut t = Transition::audit_only(draft("version_made"));
    t.new_version = Some(new_version(n));
    t
}

async fn a_version_with_its_shares_round_trips(b: Backend) {
    let store = b.store();
    store
        .sync_principals(&[Principal {
            name: "alice".to_owned(),
            roles: BTreeSet::from([Role::Keyholder]),
            cert_identity: "alice".to_owned(),
            age_recipient: Some("age1example".to_owned()),
        }])
        .await
        .unwrap();
    for n in [10, 2, 1] {
        store.apply(inserting(n)).await.unwrap();
    }
    let versions = store.versions().await.unwrap();
    let numbers: Vec<u32> = versions.iter().map(|r| r.version.number()).collect();
    assert_eq!(
        numbers,
        [1, 2, 10],
        "numeric order, not insertion or text order"
    );
    assert_eq!(versions[0], new_version(1).record);
    assert_eq!(versions[2], new_version(10).record);

    assert_eq!(
        store.share_envelope(v(2), "bob").await.unwrap(),
        Some(new_version(2).envelopes[1].clone())
    );
    assert_eq!(store.share_envelope(v(2), "mallory").await.unwrap(), None);
    assert_eq!(store.share_envelope(v(3), "bob").await.unwrap(), None);

    assert_eq!(
        store.add_encryptions(v(1), 41).await.unwrap(),
        UsageChange {
            version: v(1),
            before: 1,
            after: 42
        }
    );
    let mut activate = Transition::audit_only(draft("version_activated"));
    activate.version_states = vec![(v(1), VersionState::Active)];
    store.apply(activate).await.unwrap();
    let reopened = b.reopen().await.unwrap();
    let first = &reopened.versions().await.unwrap()[0];
    assert_eq!(
        (first.encryptions, first.state),
        (42, VersionState::Active),
        "persisted across a reopen"
    );
    assert!(matches!(
        store.add_encryptions(v(7), 1).await,
        Err(StoreError::UnknownVersion { version }) if version == v(7)
    ));
}

async fn a_failing_transition_leaves_nothing(b: Backend) {
    let store = b.store();
    store.apply(inserting(1)).await.unwrap();
    let before = (
        store.versions().await.unwrap(),
        store.audit_page(0, u32::MAX).await.unwrap(),
    );

    // Everything in it would succeed except the repeated version.
    let mut again = inserting(1);
    again.rotation = Some("{\"phase\":\"dual_read\"}".to_owned());
    again.version_states = vec![(v(1), VersionState::Active)];
    let err = store.apply(again).await.unwrap_err();
    assert!(
        matches!(err, StoreError::VersionExists { version } if version == v(1)),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "v1 already exists in the state store; a version is made once"
    );

    // A new version written, then a state change of an unknown one.
    let mut half = inserting(2);
    half.rotation = Some("{\"phase\":\"prepared\"}".to_owned());
    half.version_states = vec![(v(9), VersionState::Active)];
    let err = store.apply(half).await.unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownVersion { version } if version == v(9)),
        "{err}"
    );

    let after = (
        store.versions().await.unwrap(),
        store.audit_page(0, u32::MAX).await.unwrap(),
    );
    assert_eq!(after, before, "no version, state or audit entry was left");
    assert_eq!(store.load_rotation().await.unwrap(), None);
    assert_eq!(store.share_envelope(v(2), "alice").await.unwrap(), None);
    // The store still works after the rollbacks.
    store.apply(inserting(2)).await.unwrap();
}

async fn the_audit_chain_verifies_and_cannot_be_rewritten(b: Backend) {
    let store = b.store();
    let mut returned = vec![store.append_audit(draft("started")).await.unwrap()];
    returned.push(store.apply(inserting(1)).await.unwrap());
    returned.push(
        store
            .apply(saving_rotation("{}", draft("rotation_prepared")))
            .await
            .unwrap(),
    );
    returned.push(store.append_audit(draft("sealed")).await.unwrap());
    let log = store.audit_page(0, u32::MAX).await.unwrap();
    assert_eq!(log, returned, "each call returns the entry as stored");
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    verify_chain(&log).unwrap();

    for sql in [
        "UPDATE audit SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit WHERE seq = 4",
    ] {
        let refused = b.raw(sql).await.unwrap_err();
        assert!(
            refused.contains("the audit log is append-only"),
            "{sql}: {refused}"
        );
    }
    assert_eq!(store.audit_page(0, u32::MAX).await.unwrap(), log);
}

async fn audit_times_never_go_backwards_and_pages_follow_the_chain(b: Backend) {
    let store = b.store();
    let at = |time: &str| AuditDraft {
        time: time.to_owned(),
        ..draft("tick")
    };
    let times = [
        "2025-01-02T03:04:05.600Z",
        // Stamped before the entry ahead of it got the lock.
        "2025-01-02T03:04:05.500Z",
        "2025-01-02T03:04:05.700Z",
    ];
    let mut stored = Vec::new();
    for time in times {
        stored.push(store.append_audit(at(time)).await.unwrap().time);
    }
    assert_eq!(
        stored,
        [times[0], times[0], times[2]],
        "an older draft takes the time of the entry before it"
    );
    let log = store.audit_page(0, u32::MAX).await.unwrap();
    verify_chain(&log).unwrap();
    let seqs =
        |page: Vec<keyholder_api::AuditEntry>| page.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.audit_page(1, 1).await.unwrap()), [2]);
    assert_eq!(seqs(store.audit_page(0, 10).await.unwrap()), [1, 2, 3]);
    assert!(store.audit_page(3, 10).await.unwrap().is_empty());
}

async fn two_stores_on_one_database_never_fork_the_chain(b: Backend) {
    let second = b.reopen().await.unwrap();
    let writers = [Arc::clone(&b.store), second].map(|store| {
        tokio::spawn(async move {
            for i in 0..25 {
                store
                    .append_audit(draft(&format!("entry_{i}")))
                    .await
                    .unwrap();
            }
        })
    });
    for writer in writers {
        writer.await.unwrap();
    }
    let log = b.store().audit_page(0, u32::MAX).await.unwrap();
    assert_eq!(log.len(), 50);
    verify_chain(&log).unwrap();
}

async fn rotation_and_checkpoints_round_trip(b: Backend) {
    let store = b.store();
    assert_eq!(store.load_rotation().await.unwrap(), None);
    for blob in ["{\"phase\":\"prepared\"}", "{\"phase\":\"dual_read\"}"] {
        store
            .apply(saving_rotation(blob, draft("rotation")))
            .await
            .unwrap();
        assert_eq!(store.load_rotation().await.unwrap().as_deref(), Some(blob));
    }

    assert_eq!(store.checkpoint("orders", "forward").await.unwrap(), None);
    store
        .put_checkpoint("orders", "forward", "{\"last\":10}".to_owned())
        .await
        .unwrap();
    store
        .put_checkpoint("orders", "forward", "{\"last\":20}".to_owned())
        .await
        .unwrap();
    store
        .put_checkpoint("orders", "backward", "{\"last\":5}".to_owned())
        .await
        .unwrap();
    assert_eq!(
        store
            .checkpoint("orders", "forward")
            .await
            .unwrap()
            .as_deref(),
        Some("{\"last\":20}")
    );
    assert_eq!(
        store
            .checkpoint("orders", "backward")
            .await
            .unwrap()
            .as_deref(),
        Some("{\"last\":5}")
    );
    assert_eq!(store.checkpoint("users", "forward").await.unwrap(), None);

    // Every target a job's passes started on, whatever the config says.
    store
        .put_checkpoint("accounts", "forward", "{\"last\":1}".to_owned())
        .await
        .unwrap();
    assert_eq!(
        store.checkpoint_targets("forward").await.unwrap(),
        ["accounts", "orders"]
    );
    assert_eq!(
        store.checkpoint_targets("backward").await.unwrap(),
        ["orders"]
    );
    assert!(store.checkpoint_targets("v1->v2").await.unwrap().is_empty());
}

async fn consumer_fetches_keep_first_and_last(b: Backend) {
    let store = b.store();
    assert_eq!(b.fetches().await, []);
    store
        .record_fetch("db1", &[v(1), v(2)], "2025-01-01T00:00:00Z")
        .await
        .unwrap();
    store
        .record_fetch("db1", &[v(2), v(2)], "2025-01-02T00:00:00Z")
        .await
        .unwrap();
    store
        .record_fetch("app", &[v(2)], "2025-01-03T00:00:00Z")
        .await
        .unwrap();
    let fetch = |principal: &str, n, first: &str, last: &str| {
        (principal.to_owned(), n, first.to_owned(), last.to_owned())
    };
    assert_eq!(
        b.fetches().await,
        [
            fetch("app", 2, "2025-01-03T00:00:00Z", "2025-01-03T00:00:00Z"),
            fetch("db1", 1, "2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
            fetch("db1", 2, "2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"),
        ]
    );
}

/// The largest cumulative count per (consumer, process, version) is kept
/// and only its increase reaches the version's total: a repeated report and
/// one arriving late add nothing, a new process (a restart) counts from 0,
/// another consumer's process is its own.
async fn usage_reports_count_each_increase_once(b: Backend) {
    let store = b.store();
    for n in [1, 2] {
        store.apply(inserting(n)).await.unwrap();
    }
    // Each new version starts with the canary's 1 encryption.
    let total = |versions: &[VersionRecord], n: u32| {
        versions
            .iter()
            .find(|r| r.version == v(n))
            .unwrap()
            .encryptions
    };
    let change = |n, before, after| UsageChange {
        version: v(n),
        before,
        after,
    };
    let first = store
        .record_usage("db1", "p1", &[(v(1), 100), (v(2), 5)])
        .await
        .unwrap();
    assert_eq!(first, [change(1, 1, 101), change(2, 1, 6)]);
    // The same report again: nothing new.
    assert_eq!(
        store
            .record_usage("db1", "p1", &[(v(1), 100), (v(2), 5)])
            .await
            .unwrap(),
        []
    );
    // A later report, then an older one arriving after it.
    assert_eq!(
        store
            .record_usage("db1", "p1", &[(v(1), 150)])
            .await
            .unwrap(),
        [change(1, 101, 151)]
    );
    assert_eq!(
        store
            .record_usage("db1", "p1", &[(v(1), 120)])
            .await
            .unwrap(),
        []
    );
    // The process restarted with a new id: its count starts again from 0.
    assert_eq!(
        store
            .record_usage("db1", "p2", &[(v(1), 30)])
            .await
            .unwrap(),
        [change(1, 151, 181)]
    );
    // Another consumer may choose the same process id: it is its own.
    assert_eq!(
        store.record_usage("app", "p1", &[(v(1), 7)]).await.unwrap(),
        [change(1, 181, 188)]
    );
    let reopened = b.reopen().await.unwrap();
    let versions = reopened.versions().await.unwrap();
    assert_eq!((total(&versions, 1), total(&versions, 2)), (188, 6));
    // What each process reported is kept across a reopen: a report it
    // repeats after the daemon restarted adds nothing.
    assert_eq!(
        reopened
            .record_usage("db1", "p1", &[(v(1), 150), (v(2), 5)])
            .await
            .unwrap(),
        []
    );
    // A version the store does not know refuses the whole report.
    let refused = reopened
        .record_usage("db1", "p1", &[(v(1), 999), (v(9), 1)])
        .await;
    assert!(
        matches!(&refused, Err(StoreError::UnknownVersion { version }) if *version == v(9)),
        "{refused:?}"
    );
    let versions = reopened.versions().await.unwrap();
    assert_eq!(
        total(&versions, 1),
        188,
        "nothing of a refused report stays"
    );
}

async fn runtime_settings_are_written_with_their_audit_entry_and_survive_a_reopen(b: Backend) {
    let store = b.store();
    assert_eq!(store.runtime_settings().await.unwrap(), None);
    for settings in ["{\"rows_per_sec\":1000}", "{\"rows_per_sec\":20}"] {
        let mut t = Transition::audit_only(draft("rotation_throttled"));
        t.settings = Some(settings.to_owned());
        let entry = store.apply(t).await.unwrap();
        assert_eq!(entry.action, "rotation_throttled");
        assert_eq!(
            store.runtime_settings().await.unwrap().as_deref(),
            Some(settings)
        );
    }
    // A transition that fails writes neither the settings nor its entry.
    let entries = store.audit_page(0, u32::MAX).await.unwrap().len();
    let mut twice = inserting(1);
    store.apply(twice.clone()).await.unwrap();
    twice.settings = Some("{\"rows_per_sec\":7}".to_owned());
    assert!(store.apply(twice).await.is_err());
    assert_eq!(
        store.audit_page(0, u32::MAX).await.unwrap().len(),
        entries + 1
    );
    let reopened = b.reopen().await.unwrap();
    assert_eq!(
        reopened.runtime_settings().await.unwrap().as_deref(),
        Some("{\"rows_per_sec\":20}")
    );
}

async fn a_version_without_its_canary_is_named_not_left_out(b: Backend) {
    let store = b.store();
    store.apply(inserting(1)).await.unwrap();
    store.apply(inserting(2)).await.unwrap();
    b.raw("DELETE FROM canaries WHERE version = 2")
        .await
        .unwrap();
    let err = store.versions().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "state store is corrupt: v2 has no canary; restore it from a backup"
    );
}

async fn another_major_format_is_refused(b: Backend) {
    b.store().apply(inserting(1)).await.unwrap();
    let table = b.format_table();
    b.raw(&format!("UPDATE {table} SET format = '1.7.0'"))
        .await
        .unwrap();
    let minor = b.reopen().await.unwrap();
    assert_eq!(
        minor.versions().await.unwrap().len(),
        1,
        "a newer minor opens"
    );

    b.raw(&format!("UPDATE {table} SET format = '2.0.0'"))
        .await
        .unwrap();
    let err = b.reopen().await.err().expect("format 2.0.0 refused");
    assert!(
        matches!(&err, StoreError::Format { found } if found == "2.0.0"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "state store format 2.0.0 is not readable by this build (it reads {STORE_FORMAT}); run the keyholderd that wrote it"
        )
    );
}

async fn the_cluster_seal_generation_rises_with_its_audit_entry_on_postgres_only(b: Backend) {
    let store = b.store();
    assert_eq!(store.cluster_seal_generation().await.unwrap(), 0);
    let seal = || -> keyholder_server::store::ClusterSealAudit {
        Box::new(|generation| {
            let mut entry = draft("cluster_sealed");
            entry.detail = format!("{{\"generation\":{generation}}}");
            entry
        })
    };
    if matches!(b.kind, Kind::Sqlite { .. }) {
        let refused = store.seal_cluster(0, seal()).await.unwrap_err();
        assert!(matches!(refused, StoreError::NoCluster), "{refused}");
        assert!(store.audit_page(0, 10).await.unwrap().is_empty());
        return;
    }
    assert_eq!(store.seal_cluster(0, seal()).await.unwrap(), 1);
    // A second daemon on the same store sees and bumps the same generation.
    let other = b.reopen().await.unwrap();
    assert_eq!(other.cluster_seal_generation().await.unwrap(), 1);
    assert_eq!(other.seal_cluster(1, seal()).await.unwrap(), 2);
    assert_eq!(store.cluster_seal_generation().await.unwrap(), 2);
    // A node that saw a higher generation than the store holds (the store
    // was restored from an older backup) seals above what it saw.
    assert_eq!(store.seal_cluster(6, seal()).await.unwrap(), 7);
    let log = store.audit_page(0, 10).await.unwrap();
    let details: Vec<&str> = log.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(
        details,
        [
            "{\"generation\":1}",
            "{\"generation\":2}",
            "{\"generation\":7}"
        ]
    );
    verify_chain(&log).unwrap();
}

#[tokio::test]
async fn the_postgres_store_reconnects_after_the_server_drops_it() {
    let Some(b) = Backend::postgres("reconnects").await else {
        return;
    };
    let Kind::Postgres {
        admin, location, ..
    } = &b.kind
    else {
        unreachable!("a postgres backend")
    };
    // A store whose connection is named, so only it is cut.
    let name = format!("kh_{}", location.schema());
    let url = std::env::var("KEYHOLDER_TEST_PG").unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    let named = PgLocation::parse(&format!("{url}{separator}application_name={name}"))
        .unwrap()
        .with_schema(location.schema())
        .unwrap();
    let store = PostgresStore::connect(&named).await.unwrap();
    store.apply(inserting(1)).await.unwrap();

    let cut = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap();
    assert_eq!(cut.len(), 1, "one connection cut");

    // The call that meets the dead connection may fail; the store must not
    // stay broken after it.
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(store.versions().await.map(|v| v.len()));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(matches!(outcomes.last(), Some(Ok(1))), "{outcomes:?}");
    assert!(
        outcomes.iter().filter(|o| o.is_err()).count() <= 1,
        "{outcomes:?}"
    );
    store.append_audit(draft("after_reconnect")).await.unwrap();
    verify_chain(&store.audit_page(0, u32::MAX).await.unwrap()).unwrap();
}

#[tokio::test]
async fn sqlite_snapshots_keep_only_the_newest() {
    let b = Backend::sqlite().await;
    let Kind::Sqlite { dir } = &b.kind else {
        unreachable!("a sqlite backend")
    };
    b.store().apply(inserting(1)).await.unwrap();
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir(&snapshots).unwrap();
    // Not a snapshot: an operator's own file stays.
    std::fs::write(snapshots.join("notes.txt"), "mine").unwrap();
    let mut taken = Vec::new();
    for n in 0..5 {
        let path = b
            .store()
            .snapshot(&format!("retire-v{n}"), 3)
            .await
            .unwrap();
        taken.push(path.expect("sqlite snapshots"));
        // Names carry the time in milliseconds.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut left: Vec<String> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    left.sort();
    let mut expected = taken[2..].to_vec();
    expected.push(snapshots.join("notes.txt").display().to_string());
    expected.sort();
    assert_eq!(left, expected);
}

/// A bid of a process of `node` that holds the lease at `held`.
fn bid(node: &str, lease_ms: u64, held: Option<u64>) -> LeaseBid {
    LeaseBid {
        node: node.to_owned(),
        addr: format!("{node}.example:8443"),
        sealed: false,
        want: true,
        lease: std::time::Duration::from_millis(lease_ms),
        held,
    }
}

fn fence(node: &str, epoch: u64) -> Fence {
    Fence {
        node: node.to_owned(),
        epoch,
    }
}

/// The cluster's fencing (#15): epoch 1 writes; once its lease ran out,
/// epoch 2 takes over, and epoch 1's transition, checkpoint and encryption
/// count are refused with nothing of them stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_epoch_is_refused_and_stores_nothing() {
    let Some(b) = Backend::postgres("fencing").await else {
        return;
    };
    let a = Arc::clone(&b.store);
    let other = b.reopen().await.unwrap();
    a.apply(inserting(1)).await.unwrap();

    let taken = a.lease_round(bid("kh-a", 1_000, None)).await.unwrap();
    assert_eq!(
        (taken.holder.as_deref(), taken.epoch, taken.ours),
        (Some("kh-a"), 1, true)
    );
    // Held and unexpired: another node cannot take it.
    let seen = other.lease_round(bid("kh-b", 1_000, None)).await.unwrap();
    assert_eq!(
        (seen.holder.as_deref(), seen.epoch, seen.ours),
        (Some("kh-a"), 1, false)
    );
    // Nor can a second process of kh-a, which holds no epoch: it would
    // lead beside the first.
    let twin = other.lease_round(bid("kh-a", 1_000, None)).await.unwrap();
    assert_eq!(
        (twin.holder.as_deref(), twin.epoch, twin.ours),
        (Some("kh-a"), 1, false)
    );
    // Its holder renews at its epoch.
    let renewed = a.lease_round(bid("kh-a", 1_000, Some(1))).await.unwrap();
    assert_eq!(
        (renewed.holder.as_deref(), renewed.epoch, renewed.ours),
        (Some("kh-a"), 1, true)
    );

    a.apply_fenced(
        fence("kh-a", 1),
        saving_rotation("epoch-1", draft("step_of_epoch_1")),
    )
    .await
    .unwrap();
    a.put_checkpoint_fenced(fence("kh-a", 1), "orders", "v1->v2", "{\"n\":1}".to_owned())
        .await
        .unwrap();
    a.add_encryptions_fenced(fence("kh-a", 1), v(1), 5)
        .await
        .unwrap();

    // kh-a stops renewing (partitioned); its lease runs out by the
    // database's clock and kh-b takes it at the next epoch.
    tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;
    let expired_write = a
        .apply_fenced(
            fence("kh-a", 1),
            saving_rotation("late", draft("late_step")),
        )
        .await;
    assert!(
        matches!(
            expired_write,
            Err(StoreError::Fenced {
                epoch: 1,
                current: 1,
                expired: true
            })
        ),
        "{expired_write:?}"
    );
    let took = other.lease_round(bid("kh-b", 1_000, None)).await.unwrap();
    assert_eq!(
        (took.holder.as_deref(), took.epoch, took.ours),
        (Some("kh-b"), 2, true)
    );

    let stale = a
        .apply_fenced(
            fence("kh-a", 1),
            saving_rotation("stale", draft("stale_step")),
        )
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::Fenced {
                epoch: 1,
                current: 2,
                expired: false
            })
        ),
        "{stale:?}"
    );
    assert_eq!(
        stale.unwrap_err().to_string(),
        "state store: refused a write of leader epoch 1: the lease is at epoch 2; this node is not the leader"
    );
    let checkpoint = a
        .put_checkpoint_fenced(fence("kh-a", 1), "orders", "v1->v2", "{\"n\":2}".to_owned())
        .await;
    assert!(
        matches!(checkpoint, Err(StoreError::Fenced { .. })),
        "{checkpoint:?}"
    );
    let counted = a.add_encryptions_fenced(fence("kh-a", 1), v(1), 7).await;
    assert!(
        matches!(counted, Err(StoreError::Fenced { .. })),
        "{counted:?}"
    );
    // kh-a's next round does not take the lease back.
    let back = a.lease_round(bid("kh-a", 1_000, Some(1))).await.unwrap();
    assert_eq!(
        (back.holder.as_deref(), back.epoch, back.ours),
        (Some("kh-b"), 2, false)
    );

    // Nothing of epoch 1's refused writes is stored.
    assert_eq!(
        other.load_rotation().await.unwrap().as_deref(),
        Some("epoch-1")
    );
    assert_eq!(
        other
            .checkpoint("orders", "v1->v2")
            .await
            .unwrap()
            .as_deref(),
        Some("{\"n\":1}")
    );
    let versions = other.versions().await.unwrap();
    assert_eq!(versions[0].encryptions, 1 + 5);
    let actions: Vec<String> = other
        .audit_page(0, u32::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["version_made", "step_of_epoch_1"]);

    // The new epoch is the one the store accepts.
    other
        .apply_fenced(
            fence("kh-b", 2),
            saving_rotation("epoch-2", draft("step_of_epoch_2")),
        )
        .await
        .unwrap();
    assert_eq!(a.load_rotation().await.unwrap().as_deref(), Some("epoch-2"));

    // Both nodes' heartbeats were written with their rounds.
    let (lease, beats) = other.cluster_state().await.unwrap();
    assert_eq!((lease.holder.as_deref(), lease.epoch), (Some("kh-b"), 2));
    let nodes: Vec<(&str, &str)> = beats
        .iter()
        .map(|h| (h.node.as_str(), h.addr.as_str()))
        .collect();
    assert_eq!(
        nodes,
        [("kh-a", "kh-a.example:8443"), ("kh-b", "kh-b.example:8443")]
    );
}

/// Outside a cluster (SQLite) there is no lease: a round says so.
#[tokio::test]
async fn sqlite_holds_no_cluster() {
    let b = Backend::sqlite().await;
    let round = b.store().lease_round(bid("kh-a", 1_000, None)).await;
    assert!(matches!(round, Err(StoreError::NoCluster)), "{round:?}");
}
