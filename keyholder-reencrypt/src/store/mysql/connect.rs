//! Connecting to a MySQL server of a target: the password's source, the
//! driver's options (TLS per `ssl-mode`, READ COMMITTED and strict sessions), which
//! errors pass and are retried, and the engine's error for the others. It
//! must never put the password or a row in an error or a log.

use mysql_async::{Opts, OptsBuilder, PoolConstraints, PoolOpts, SslOpts};

use crate::error::{Error, Result};
use crate::target::{MysqlLocation, SslMode, Target};

/// The password: the first line of `password-file`, else `MYSQL_PWD`, else none.
pub(super) async fn password(target: &Target, location: &MysqlLocation) -> Result<Option<String>> {
    let Some(path) = &location.password_file else {
        return Ok(std::env::var("MYSQL_PWD").ok());
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|error| Error::Schema {
            target: target.name().to_owned(),
            reason: format!(
                "cannot read the mysql password file {}: {}",
                path.display(),
                error.kind()
            ),
        })?;
    Ok(Some(text.lines().next().unwrap_or("").to_owned()))
}

/// The driver's options for one server of the target.
pub(super) fn options(
    location: &MysqlLocation,
    host: &str,
    port: u16,
    password: &Option<String>,
) -> Opts {
    let roots = || match &location.ssl_ca {
        Some(ca) => SslOpts::default()
            .with_root_certs(vec![ca.clone().into()])
            .with_disable_built_in_roots(true),
        None => SslOpts::default(),
    };
    let ssl = match location.ssl_mode {
        SslMode::Disabled => None,
        SslMode::Required => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        SslMode::VerifyCa => Some(roots().with_danger_skip_domain_validation(true)),
        SslMode::VerifyIdentity => Some(roots()),
    };
    let pool = PoolOpts::default()
        .with_constraints(PoolConstraints::new(0, 4).expect("0 <= 4: valid pool constraints"));
    OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .user(Some(&location.user))
        .pass(password.clone())
        .db_name(Some(&location.database))
        .prefer_socket(false)
        .ssl_opts(ssl)
        .pool_opts(pool)
        .init(vec![
            "SET NAMES utf8mb4",
            // Row locks only on the rows a statement touches, no gap locks.
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            // Strict whatever the server's default: without it a value too
            // long for its column is cut with a warning, and a v10 record
            // (one character longer than the v9 one it replaces) in a
            // column sized for v9 was cut and lost while the pass drained.
            "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')",
        ])
        .into()
}

/// Errors that pass: retried on a fresh connection.
pub(super) fn passes(error: &mysql_async::Error) -> bool {
    use mysql_async::{DriverError, IoError};
    match error {
        // Deadlock, lock wait timeout, server shutting down, connection
        // killed, network errors, lost connection, too many connections.
        mysql_async::Error::Server(error) => matches!(
            error.code,
            1213 | 1205 | 1053 | 1927 | 1158..=1161 | 2006 | 2013 | 1040
        ),
        mysql_async::Error::Io(IoError::Io(_)) => true,
        mysql_async::Error::Driver(DriverError::ConnectionClosed) => true,
        _ => false,
    }
}

pub(super) fn server_code(error: &mysql_async::Error) -> Option<u16> {
    match error {
        mysql_async::Error::Server(error) => Some(error.code),
        _ => None,
    }
}

pub(super) fn mysql_error(
    target: &Target,
    operation: &'static str,
) -> impl FnOnce(mysql_async::Error) -> Error + use<> {
    let name = target.name().to_owned();
    move |source| {
        let reason = match &source {
            // Their values can hold a row: name the kind of error only.
            mysql_async::Error::Driver(mysql_async::DriverError::FromValue { .. }) => {
                "a value of an unexpected type".to_owned()
            }
            mysql_async::Error::Driver(mysql_async::DriverError::FromRow { .. }) => {
                "a row of an unexpected shape".to_owned()
            }
            other => other.to_string(),
        };
        Error::Mysql {
            target: name,
            operation,
            code: server_code(&source),
            transient: passes(&source),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use mysql_async::{DriverError, IoError, ServerError};

    use super::passes;

    fn server(code: u16) -> mysql_async::Error {
        mysql_async::Error::Server(ServerError {
            code,
            message: String::new(),
            state: String::new(),
        })
    }

    #[test]
    fn deadlocks_timeouts_and_lost_connections_pass_other_errors_do_not() {
        // Deadlock, lock wait timeout, shutdown, killed, gone away, lost.
        for code in [1213, 1205, 1053, 1927, 2006, 2013] {
            assert!(passes(&server(code)), "{code}");
        }
        // Syntax, unknown column, access denied, duplicate key.
        for code in [1064, 1054, 1045, 1062] {
            assert!(!passes(&server(code)), "{code}");
        }
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(passes(&mysql_async::Error::Io(IoError::Io(reset))));
        assert!(passes(&mysql_async::Error::Driver(
            DriverError::ConnectionClosed
        )));
        assert!(!passes(&mysql_async::Error::Driver(
            DriverError::NoClientSslFlagFromServer
        )));
    }
}
