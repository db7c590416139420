//! `keyholderd check-config`'s live checks: the config parsed and validated,
//! this proves that the PostgreSQL stores it names answer, by connecting to
//! each one (the state store; every PostgreSQL target, whose table and
//! columns are checked as the re-encryption engine would). It only reads: no
//! schema is created, no migration run. SQLite targets are not opened here
//! (opening one may switch its journal mode); the config check already
//! refuses a missing file.

use std::time::Duration;

use crate::config::{Config, Problem, StateLocation};

/// How long one store gets to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Logs a warning for every PostgreSQL store of `config` reached in the
/// clear on a host that is not loopback (`sslmode=disable` said
/// explicitly: the only way to get plain TCP to another host).
pub fn warn_plaintext_postgres(config: &Config) {
    if let StateLocation::Postgres(location) = &config.state
        && location.connect().plaintext_to_remote()
    {
        tracing::warn!(
            host = %location.connect().host_for_logs(),
            "the postgresql state store is reached without TLS (sslmode=disable): its traffic, audit log included, crosses the network in the clear"
        );
    }
    for target in &config.targets {
        if let keyholder_reencrypt::StoreLocation::Postgres(at) = target.store()
            && at.plaintext_to_remote()
        {
            tracing::warn!(
                target = target.name(),
                host = %at.host_for_logs(),
                "postgresql target is reached without TLS (sslmode=disable): its records cross the network in the clear"
            );
        }
    }
}

/// Every store of `config` that cannot be reached or used, by field.
pub async fn stores(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let StateLocation::Postgres(location) = &config.state {
        let probe = async {
            let client = location.connect().connect("check-config").await?;
            client
                .simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(|e| keyholder_reencrypt::DatabaseError::from(&e))
        };
        let failed = match tokio::time::timeout(CONNECT_TIMEOUT, probe).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "no answer within {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            )),
        };
        if let Some(reason) = failed {
            problems.push(Problem {
                field: "state_store".to_owned(),
                message: format!(
                    "cannot connect to the PostgreSQL state store: {reason}; check the URL, that the server runs and that it accepts this user"
                ),
            });
        }
    }
    for (i, target) in config.targets.iter().enumerate() {
        if !matches!(
            target.store(),
            keyholder_reencrypt::StoreLocation::Postgres(_)
        ) {
            continue;
        }
        let failed =
            match tokio::time::timeout(CONNECT_TIMEOUT, keyholder_reencrypt::open_store(target))
                .await
            {
                Ok(Ok(_store)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "no answer within {}",
                    humantime::format_duration(CONNECT_TIMEOUT)
                )),
            };
        if let Some(reason) = failed {
            problems.push(Problem {
                field: format!("targets[{i}].store"),
                message: format!("cannot use target {}: {reason}", target.name()),
            });
        }
    }
    problems
}
