//! `keyholder hook`: the database host's start-up step. It waits (with
//! backoff) until keyholderd is reachable and unsealed, fetches the keyring
//! and hands it over — printed for a pipe, or through an inherited pipe to a
//! child started with `--exec`. A database process that refreshes its
//! keyring by running the hook again passes its encryption counts in
//! `KEYHOLDER_USAGE` (`--usage`); the hook sends them with the fetch.
//!
//! The hand-over never touches disk or argv: it lives in a zeroizing buffer,
//! crosses to the child through a pipe whose read end is the only descriptor
//! the child inherits from us (everything std and tokio open is close-on-exec),
//! and its number travels in `KEYHOLDER_KEYRING_FD`.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use zeroize::Zeroizing;

use keyholder_api::KeyringRequest;

use crate::client::{Client, ClientError};
use crate::error::CliError;

/// The environment variable that carries the pipe's descriptor number.
pub const KEYRING_FD_ENV: &str = "KEYHOLDER_KEYRING_FD";

/// The variable `--format env` sets.
pub const KEYRING_ENV: &str = "KEYHOLDER_KEYRING";

/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `KEYHOLDER_KEYRING='<json>'` plus a newline, for `eval`. The hand-over
/// holds no single quote (keyring names are `[a-z0-9-]`, keys base64), so
/// single quotes are a complete shell quoting; any other input is refused.
pub fn env_line(json: &str) -> Option<Zeroizing<String>> {
    if json.contains('\'') {
        return None;
    }
    let mut line = Zeroizing::new(String::with_capacity(json.len() + 24));
    line.push_str(KEYRING_ENV);
    line.push_str("='");
    line.push_str(json);
    line.push_str("'\n");
    Some(line)
}

/// The pause after `attempt` failed attempts: 250 ms doubling, at most 5 s.
pub fn backoff(attempt: u32) -> Duration {
    let millis = 250u64.saturating_mul(1u64 << attempt.min(5));
    Duration::from_millis(millis).min(MAX_BACKOFF)
}

fn short_reason(error: &ClientError) -> String {
    match error {
        ClientError::Unreachable { .. } | ClientError::Timeout { .. } => {
            "keyholderd is not reachable".to_owned()
        }
        ClientError::Sealed { .. } => "keyholderd is sealed".to_owned(),
        ClientError::StoreUnavailable { .. } => {
            "keyholderd cannot reach its state store".to_owned()
        }
        ClientError::TooManyConnections { .. } => {
            "keyholderd holds as many connections of this certificate as it allows".to_owned()
        }
        other => other.to_string(),
    }
}

/// The least time the hook's last attempt is given, however little of
/// `--wait` is left: a connection and one answer.
const LAST_ATTEMPT: Duration = Duration::from_secs(2);

/// Fetches the keyring, retrying while the daemon is unreachable, sealed or
/// without its state store,
/// until `wait` has passed; with `usage`, the calling process's encryption
/// counts go with each attempt (the daemon records them once the keyring
/// is served). Progress goes to stderr.
pub async fn fetch(
    client: &Client,
    wait: Duration,
    usage: Option<&KeyringRequest>,
) -> Result<Zeroizing<String>, CliError> {
    let start = Instant::now();
    let deadline = start.checked_add(wait).ok_or(CliError::ExecUsage(
        "--wait is longer than this system's clock can count; give it like 30s, 2m or 1h",
    ))?;
    let mut attempt = 0u32;
    loop {
        // One attempt (over every node) may take the client's own timeouts
        // per node; it is cut at `--wait` (the last attempt is given at
        // least LAST_ATTEMPT), so the hook ends when its caller was told.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(LAST_ATTEMPT);
        let attempt_fetch = async {
            match usage {
                Some(report) => client.keyring_reporting(report).await,
                None => client.keyring().await,
            }
        };
        let Ok(fetched) = tokio::time::timeout(left, attempt_fetch).await else {
            return Err(CliError::HookTimedOut {
                waited: humantime::format_duration(round(start.elapsed())).to_string(),
                last: Box::new(ClientError::Timeout {
                    addr: client.addr().to_owned(),
                }),
            });
        };
        match fetched {
            Ok(handover) => {
                if attempt > 0 {
                    eprintln!(
                        "keyholder hook: got the keyring after {}",
                        humantime::format_duration(round(start.elapsed()))
                    );
                }
                return Ok(handover.to_json());
            }
            Err(error) if error.is_transient() => {
                let pause = backoff(attempt);
                let now = Instant::now();
                if now + pause > deadline {
                    return Err(CliError::HookTimedOut {
                        waited: humantime::format_duration(round(start.elapsed())).to_string(),
                        last: Box::new(error),
                    });
                }
                let left = deadline - now;
                eprintln!(
                    "keyholder hook: {} at {}; retrying in {} ({} left)",
                    short_reason(&error),
                    client.addr(),
                    humantime::format_duration(pause),
                    humantime::format_duration(round(left)),
                );
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Whole seconds, rounded up: "0s left" would read as "no time left".
fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// The pipe the hand-over goes through, made before anything else opens a
/// descriptor (the runtime opens several), so its read end is the lowest
/// free one, 3 when the hook inherits only stdin, stdout and stderr: a
/// POSIX shell reads `<&3`, and cannot redirect a descriptor above 9.
pub struct KeyringPipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl KeyringPipe {
    /// Both ends close-on-exec, then only the read end made inheritable:
    /// the child gets exactly one descriptor from us.
    pub fn new() -> Result<Self, CliError> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(CliError::Pipe)?;
        fcntl(&read, FcntlArg::F_SETFD(FdFlag::empty())).map_err(CliError::Pipe)?;
        Ok(Self { read, write })
    }
}

/// Starts `command` with the hand-over on `pipe`, forwards signals to it,
/// and returns the exit code to exit with (the child's, or 128 + the signal
/// that ended it). Forwarded: a service manager's stop (TERM, INT, QUIT) and
/// the reload and user signals databases take (HUP reloads PostgreSQL's and
/// MySQL's configuration; USR1, USR2); any of them not forwarded would end
/// the hook and orphan the database.
pub async fn exec(
    json: Zeroizing<String>,
    command: &[OsString],
    pipe: KeyringPipe,
) -> Result<u8, CliError> {
    let (program, args) = command
        .split_first()
        .ok_or(CliError::ExecUsage("--exec needs a command after `--`"))?;
    let KeyringPipe { read, write } = pipe;
    let listen = |kind| signal(kind).map_err(CliError::Signals);
    let mut term = listen(SignalKind::terminate())?;
    let mut int = listen(SignalKind::interrupt())?;
    let mut quit = listen(SignalKind::quit())?;
    let mut hup = listen(SignalKind::hangup())?;
    let mut usr1 = listen(SignalKind::user_defined1())?;
    let mut usr2 = listen(SignalKind::user_defined2())?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env(KEYRING_FD_ENV, read.as_raw_fd().to_string())
        .spawn()
        .map_err(|source| CliError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source,
        })?;
    drop(read);
    // Written after the spawn, off the runtime: a keyring larger than the
    // pipe's buffer must not block us before the child can read.
    let writer = tokio::task::spawn_blocking(move || {
        let mut pipe = std::fs::File::from(write);
        pipe.write_all(json.as_bytes())
    });
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = term.recv() => forward(pid, Signal::SIGTERM),
            _ = int.recv() => forward(pid, Signal::SIGINT),
            _ = quit.recv() => forward(pid, Signal::SIGQUIT),
            _ = hup.recv() => forward(pid, Signal::SIGHUP),
            _ = usr1.recv() => forward(pid, Signal::SIGUSR1),
            _ = usr2.recv() => forward(pid, Signal::SIGUSR2),
        }
    }
    .map_err(|source| CliError::Spawn {
        program: program.to_string_lossy().into_owned(),
        source,
    })?;
    if let Ok(Err(e)) = writer.await {
        eprintln!("keyholder hook: the child did not read the whole keyring: {e}");
    }
    Ok(exit_code(status))
}

fn forward(pid: Option<Pid>, sig: Signal) {
    if let Some(pid) = pid {
        // The child may have exited already; nothing to forward then.
        let _ = kill(pid, sig);
    }
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDOVER: &str = r#"{"keyring":"orders","write_version":10,"keys":[{"version":9,"key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},{"version":10,"key":"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="}]}"#;

    #[test]
    fn env_format_is_one_single_quoted_assignment() {
        let line = env_line(HANDOVER).unwrap();
        assert_eq!(*line, format!("KEYHOLDER_KEYRING='{HANDOVER}'\n"));
        assert!(env_line("{\"a\":\"it's\"}").is_none());
    }

    #[test]
    fn json_format_loads_as_the_same_keyring() {
        let ring = crypto_core::Keyring::from_handover_json(HANDOVER).unwrap();
        let again = ring.to_handover().to_json();
        assert_eq!(*again, HANDOVER);
    }

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let pauses: Vec<u64> = (0..8).map(|a| backoff(a).as_millis() as u64).collect();
        assert_eq!(pauses, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }

    /// The descriptors this process lets children inherit (no O_CLOEXEC),
    /// from /proc/self/fdinfo: the test harness may hold some of its own.
    fn inheritable_fds() -> Vec<String> {
        const O_CLOEXEC: u32 = 0o2000000;
        std::fs::read_dir("/proc/self/fdinfo")
            .unwrap()
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{name}")).ok()?;
                let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
                let flags = u32::from_str_radix(flags.trim(), 8).ok()?;
                (flags & O_CLOEXEC == 0).then_some(name)
            })
            .collect()
    }

    /// One child checks everything, so no second exec runs concurrently in
    /// this process (a pipe being handed over is briefly inheritable).
    #[tokio::test]
    async fn exec_hands_the_keyring_on_the_only_leaked_fd_and_returns_the_child_code() {
        let allowed = inheritable_fds().join("|");
        // Exit 7: wrong content; 8: a descriptor the child should not have
        // (the glob's own directory, closed by the time it is checked, is
        // skipped); 3: all good, and the hook must return it.
        let script = format!(
            r#"got=$(cat <&$KEYHOLDER_KEYRING_FD); test "$got" = '{{"k":1}}' || exit 7
            for fd in /proc/$$/fd/*; do
              [ -e "$fd" ] && [ ! -d "$fd" ] || continue
              f=${{fd##*/}}
              case $f in {allowed}|$KEYHOLDER_KEYRING_FD) ;; *) echo "leaked fd $f" >&2; exit 8;; esac
            done
            exit 3"#
        );
        let code = exec(
            Zeroizing::new(r#"{"k":1}"#.to_owned()),
            &["sh".into(), "-c".into(), script.into()],
            KeyringPipe::new().unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(code, 3);
    }

    #[tokio::test]
    async fn exec_without_a_command_is_a_usage_error() {
        let err = exec(
            Zeroizing::new(String::new()),
            &[],
            KeyringPipe::new().unwrap(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
