//! Getting the keyring: once from the hook's pipe, then (optionally) again
//! from a refresh command's stdout, reporting this process's encryption
//! counts with each refresh.
//!
//! The hand-over is read into zeroizing buffers and parsed at once; it is never
//! written to a file, logged or passed on. The pipe is opened through
//! `/proc/self/fd/<n>` (or `/dev/fd/<n>`), which needs no `unsafe`.

use std::fs::File;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crypto_core::Keyring;
use keyholder_api::KeyringRequest;
use zeroize::Zeroizing;

use crate::error::Error;

/// The variable `keyholder hook --exec` sets to the read end of its pipe.
pub const FD_VARIABLE: &str = "KEYHOLDER_KEYRING_FD";

/// Reads the keyring from the descriptor named in `KEYHOLDER_KEYRING_FD`.
pub fn keyring_from_env() -> Result<Keyring, Error> {
    let value = std::env::var(FD_VARIABLE).map_err(|_| Error::NoHandover)?;
    let fd: u32 = value.parse().map_err(|_| Error::BadHandoverFd { value })?;
    let mut file = open_fd(fd).map_err(|source| Error::ReadHandover { fd, source })?;
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .map_err(|source| Error::ReadHandover { fd, source })?;
    Ok(Keyring::from_handover_json(&text)?)
}

fn open_fd(fd: u32) -> std::io::Result<File> {
    File::open(format!("/proc/self/fd/{fd}")).or_else(|_| File::open(format!("/dev/fd/{fd}")))
}

/// The variable `keyholder hook` reads this process's encryption counts from.
pub const USAGE_VARIABLE: &str = "KEYHOLDER_USAGE";

/// Runs a command that prints a hand-over (e.g. `keyholder hook --format
/// json`) at a fixed interval. Each fetch is also the consumer's
/// acknowledgement of the keyring the daemon serves at that moment, and
/// carries this process's encryption counts (in `KEYHOLDER_USAGE`, which
/// the hook sends with the fetch).
pub struct Refresh {
    every: Duration,
    command: Vec<String>,
    last: Instant,
    /// This process's random id: the daemon keeps the largest count it saw
    /// per process, so a restarted demo (a new id) counts from 0.
    process: String,
}

impl Refresh {
    /// A refresh running `command` every `every`.
    pub fn new(every: Duration, command: Vec<String>) -> Self {
        let mut id = [0u8; 16];
        rand::fill(&mut id);
        Self {
            every,
            command,
            last: Instant::now(),
            process: hex::encode(id),
        }
    }

    /// Whether the interval since the last attempt has passed.
    pub fn due(&self) -> bool {
        self.last.elapsed() >= self.every
    }

    /// Runs the command once, reporting the encryptions done with
    /// `current`, and parses its stdout; the new keyring goes on counting
    /// where `current` stopped.
    pub fn fetch(&mut self, current: &Keyring) -> Result<Keyring, Error> {
        self.last = Instant::now();
        let (program, args) = self
            .command
            .split_first()
            .expect("clap requires a refresh command with --refresh-every");
        let usage = KeyringRequest::from_keyring(self.process.as_str(), current);
        let output = Command::new(program)
            .args(args)
            .env(
                USAGE_VARIABLE,
                serde_json::to_string(&usage).expect("a usage report always serialises"),
            )
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|source| Error::RefreshSpawn {
                program: program.clone(),
                source,
            })?;
        let stdout = Zeroizing::new(output.stdout);
        if !output.status.success() {
            return Err(Error::RefreshFailed {
                status: output.status,
            });
        }
        let text = Zeroizing::new(String::from_utf8_lossy(&stdout).into_owned());
        let fresh = Keyring::from_handover_json(text.trim())?;
        fresh.continue_counts_from(current);
        Ok(fresh)
    }
}

/// `v9,v10 write v10`: what a keyring holds, for logs (no key material).
pub fn describe(keyring: &Keyring) -> String {
    let versions: Vec<String> = keyring.versions().map(|v| v.to_string()).collect();
    format!(
        "versions {} write {}",
        versions.join(","),
        keyring.write_version()
    )
}
