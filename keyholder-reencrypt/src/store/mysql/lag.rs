//! Replica lag of a MySQL or MariaDB server, read from `SHOW REPLICA STATUS`
//! (MySQL 8.0.22+, MariaDB 10.5+) or `SHOW SLAVE STATUS` (older servers).
//!
//! Owns the parsing of the status rows and the decision it leads to; it does
//! no I/O, so every case is unit-tested here.

use std::collections::BTreeMap;
use std::time::Duration;

/// The lag reported for a replica whose replication is stopped or broken
/// (`Seconds_Behind_Source` is NULL): its lag is unknown and grows, so the
/// pass waits until replication runs again.
pub(crate) const STOPPED_REPLICA_LAG: Duration = Duration::from_secs(u32::MAX as u64);

/// What the status rows of one server say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReplicaState {
    /// No row: the server replicates from no source.
    NotAReplica,
    /// The largest lag over its replication channels.
    Behind(Duration),
    /// At least one channel is stopped or broken (NULL lag).
    Stopped,
}

impl ReplicaState {
    /// The lag the throttle compares with its limit.
    pub(crate) fn lag(&self) -> Duration {
        match self {
            Self::NotAReplica => Duration::ZERO,
            Self::Behind(lag) => *lag,
            Self::Stopped => STOPPED_REPLICA_LAG,
        }
    }
}

/// Reads the status rows (one per replication channel; column name to text
/// value, `None` for NULL). MySQL 8.0.22+ names the column
/// `Seconds_Behind_Source`, MariaDB and older MySQL `Seconds_Behind_Master`.
pub(crate) fn parse_status(
    rows: &[BTreeMap<String, Option<String>>],
) -> Result<ReplicaState, String> {
    let mut largest = None;
    for row in rows {
        let cell = row
            .get("Seconds_Behind_Source")
            .or_else(|| row.get("Seconds_Behind_Master"))
            .ok_or_else(|| {
                "the replica status has no Seconds_Behind_Source or Seconds_Behind_Master column"
                    .to_owned()
            })?;
        let Some(text) = cell else {
            return Ok(ReplicaState::Stopped);
        };
        let seconds: u64 = text.trim().parse().map_err(|_| {
            format!("the replica status reports a lag of `{text}`, not a number of seconds")
        })?;
        largest = largest.max(Some(seconds));
    }
    Ok(largest.map_or(ReplicaState::NotAReplica, |seconds| {
        ReplicaState::Behind(Duration::from_secs(seconds))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn no_row_means_no_lag() {
        let state = parse_status(&[]).unwrap();
        assert_eq!(state, ReplicaState::NotAReplica);
        assert_eq!(state.lag(), Duration::ZERO);
    }

    #[test]
    fn both_column_names_are_read_and_the_largest_channel_counts() {
        let mysql = row(&[
            ("Channel_Name", Some("")),
            ("Seconds_Behind_Source", Some("3")),
        ]);
        let mariadb = row(&[
            ("Connection_name", Some("b")),
            ("Seconds_Behind_Master", Some("12")),
        ]);
        assert_eq!(
            parse_status(std::slice::from_ref(&mysql)).unwrap().lag(),
            Duration::from_secs(3)
        );
        assert_eq!(
            parse_status(&[mysql, mariadb]).unwrap(),
            ReplicaState::Behind(Duration::from_secs(12))
        );
        let caught_up = row(&[("Seconds_Behind_Master", Some("0"))]);
        assert_eq!(parse_status(&[caught_up]).unwrap().lag(), Duration::ZERO);
    }

    #[test]
    fn a_stopped_channel_holds_the_pass() {
        let running = row(&[("Seconds_Behind_Source", Some("1"))]);
        let stopped = row(&[("Seconds_Behind_Source", None)]);
        let state = parse_status(&[running, stopped]).unwrap();
        assert_eq!(state, ReplicaState::Stopped);
        assert!(state.lag() > Duration::from_secs(365 * 24 * 3600));
    }

    #[test]
    fn an_unreadable_status_is_an_error_not_zero() {
        let error = parse_status(&[row(&[("Slave_IO_Running", Some("Yes"))])]).unwrap_err();
        assert_eq!(
            error,
            "the replica status has no Seconds_Behind_Source or Seconds_Behind_Master column"
        );
        let error = parse_status(&[row(&[("Seconds_Behind_Source", Some("soon"))])]).unwrap_err();
        assert_eq!(
            error,
            "the replica status reports a lag of `soon`, not a number of seconds"
        );
    }
}
