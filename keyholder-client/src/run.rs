//! Runs a parsed command line: the CLI's side of every command. Local input
//! (identities, share files, flags) is checked before the daemon is called.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crypto_core::KeyVersion;
use keyholder_api::{
    PrepareRequest, RetireRequest, RollbackRequest, RotationState, ShareLine, ThrottleRequest,
    UnsealRequest, UnsealResponse,
};
use serde::Serialize;

use crate::cli::{
    AdminCommand, AuditArgs, Cli, Command, ConnectArgs, HookArgs, HookFormat, Output, PkiCommand,
    PkiInitArgs, PkiRenewArgs, RecoverArgs, RotateCommand, ShareCommand, ShareFetchArgs,
    ShareVerifyArgs, UnsealArgs,
};
use crate::client::{Client, ConnectOptions};
use crate::error::CliError;
use crate::identity::{self, Identities, STDIN, ShareInput};
use crate::pki::PkiPlan;
use crate::{files, hook, recover, render};

/// Runs `cli`; `Ok` carries the exit code (0, or the hook's child's).
pub fn run(cli: Cli) -> Result<u8, CliError> {
    let output = cli.output;
    match cli.command {
        Command::Pki(PkiCommand::Init(args)) => pki_init(args, output).map(|()| 0),
        Command::Pki(PkiCommand::Renew(args)) => pki_renew(args, output).map(|()| 0),
        Command::Recover(args) => recover_key(args, output).map(|()| 0),
        Command::Completions(args) => {
            let mut text = Vec::new();
            crate::manual::completions(args.shell, &mut text);
            print(&String::from_utf8_lossy(&text)).map(|()| 0)
        }
        Command::Man(args) => {
            let written =
                crate::manual::man_pages(&args.out).map_err(|source| CliError::ManPages {
                    dir: args.out.display().to_string(),
                    source,
                })?;
            print(&format!(
                "wrote {} man pages into {}\n",
                written.len(),
                args.out.display()
            ))
            .map(|()| 0)
        }
        command => {
            // The hand-over's pipe before the runtime opens its own
            // descriptors: its read end is then the lowest free one.
            let pipe = match &command {
                Command::Hook(args) if args.exec => Some(hook::KeyringPipe::new()?),
                _ => None,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            runtime.block_on(online(cli.connect, output, command, pipe))
        }
    }
}

fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
}

fn print_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).expect("API documents always serialise");
    print(&format!("{text}\n"))
}

fn show<T: Serialize>(
    output: Output,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    match output {
        Output::Json => print_json(value),
        Output::Text => print(&text(value)),
    }
}

fn connect(args: &ConnectArgs) -> Result<Client, CliError> {
    let need = |value: &Option<PathBuf>, flag, env| {
        value
            .clone()
            .ok_or(CliError::MissingConnectionFlag { flag, env })
    };
    let options = ConnectOptions {
        addr: args.addr.clone(),
        ca: need(&args.ca, "--ca", "KEYHOLDER_CACERT")?,
        cert: need(&args.cert, "--cert", "KEYHOLDER_CLIENT_CERT")?,
        key: need(&args.key, "--key", "KEYHOLDER_CLIENT_KEY")?,
    };
    Ok(Client::new(options)?)
}

async fn online(
    connect_args: ConnectArgs,
    output: Output,
    command: Command,
    pipe: Option<hook::KeyringPipe>,
) -> Result<u8, CliError> {
    match command {
        Command::Status => {
            let client = connect(&connect_args)?;
            let status = client.status().await?;
            show(output, &status, render::status)?;
        }
        Command::Unseal(args) => return unseal(&connect_args, output, args).await,
        Command::Seal => {
            let client = connect(&connect_args)?;
            let status = client.seal().await?;
            show(output, &status, |s| {
                format!("sealed: keyholderd holds no key now\n{}", render::status(s))
            })?;
            if let Some(why) = &status.unaudited {
                eprintln!(
                    "warning: the seal is done, but the audit log does not have it: {why}; note who sealed and when yourself"
                );
            }
        }
        Command::Share(ShareCommand::Fetch(args)) => {
            share_fetch(&connect_args, output, args).await?
        }
        Command::Share(ShareCommand::Verify(args)) => {
            return share_verify(&connect_args, output, args).await;
        }
        Command::Rotate(command) => rotate(&connect_args, output, command).await?,
        Command::Hook(args) => return run_hook(&connect_args, args, pipe).await,
        Command::Audit(args) => audit(&connect_args, output, args).await?,
        Command::Admin(AdminCommand::Reload) => {
            let client = connect(&connect_args)?;
            let reloaded = client.reload().await?;
            show(output, &reloaded, |r| {
                if r.changed.is_empty() {
                    "reloaded: the config and its files were re-read; no setting changed (the TLS files are in force for new connections)\n".to_owned()
                } else {
                    format!(
                        "reloaded: {} changed; new connections get the new config (still unsealed if it was)\n",
                        r.changed.join(", ")
                    )
                }
            })?;
        }
        Command::Pki(_) | Command::Recover(_) | Command::Completions(_) | Command::Man(_) => {
            unreachable!("offline commands run without a runtime")
        }
    }
    Ok(0)
}

/// Reads every input, refusing a version given twice.
fn read_inputs(
    paths: &[PathBuf],
    identities: Option<&Identities>,
) -> Result<Vec<ShareInput>, CliError> {
    let mut inputs: Vec<ShareInput> = Vec::new();
    for path in paths {
        let input = identity::read_shares(path, identities)?;
        for share in &input.shares {
            if let Some(first) = inputs
                .iter()
                .find(|i| i.shares.iter().any(|s| s.version() == share.version()))
            {
                return Err(CliError::VersionTwice {
                    version: share.version(),
                    first: first.name(),
                    second: input.name(),
                });
            }
        }
        inputs.push(input);
    }
    Ok(inputs)
}

fn load_identities(paths: &[PathBuf], shares: &[PathBuf]) -> Result<Option<Identities>, CliError> {
    if paths.is_empty() {
        return Ok(None);
    }
    let stdin_busy = shares.iter().any(|p| p.as_os_str() == STDIN);
    Identities::load(paths, stdin_busy).map(Some)
}

/// The request, where each line came from, and each version's threshold.
struct Submission {
    request: UnsealRequest,
    sources: Vec<String>,
    thresholds: Vec<(KeyVersion, u8)>,
}

fn submission(inputs: &[ShareInput]) -> Submission {
    let mut shares = Vec::new();
    let mut sources = Vec::new();
    let mut thresholds = Vec::new();
    for input in inputs {
        for share in &input.shares {
            shares.push(ShareLine::new(share.to_line()));
            sources.push(input.name());
            thresholds.push((share.version(), share.threshold()));
        }
    }
    Submission {
        request: UnsealRequest { shares },
        sources,
        thresholds,
    }
}

/// The shares refused for what they are; a share sent to a daemon that was
/// already unsealed is not one of them (`keyholder unseal` then exits 0).
fn refused(response: &UnsealResponse) -> Result<(), CliError> {
    let refused = response
        .outcomes
        .iter()
        .filter(|o| !o.accepted && !render::not_needed(o))
        .count();
    if refused == 0 {
        Ok(())
    } else {
        Err(CliError::SharesRefused {
            refused,
            total: response.outcomes.len(),
        })
    }
}

async fn unseal(
    connect_args: &ConnectArgs,
    output: Output,
    args: UnsealArgs,
) -> Result<u8, CliError> {
    if args.reset {
        let client = connect(connect_args)?;
        let response = client.reset_unseal().await?;
        show(output, &response, |_| {
            "unseal progress cleared; keyholders submit their shares again\n".to_owned()
        })?;
        return Ok(0);
    }
    let identities = load_identities(&args.identity, &args.shares)?;
    let inputs = read_inputs(&args.shares, identities.as_ref())?;
    let submission = submission(&inputs);
    let client = connect(connect_args)?;
    let response = client.unseal(&submission.request).await?;
    match output {
        Output::Json => print_json(&response)?,
        Output::Text => {
            print(&render::unseal(
                &response,
                &submission.sources,
                &submission.thresholds,
            ))?;
            if !response.sealed {
                match client.status().await {
                    Ok(status) => print(&render::loaded_keyring(&status))?,
                    Err(e) => eprintln!("unsealed, but the keyring could not be shown: {e}"),
                }
            } else {
                print("still sealed: waiting for more keyholders\n")?;
            }
        }
    }
    refused(&response).map(|()| 0)
}

async fn share_fetch(
    connect_args: &ConnectArgs,
    output: Output,
    args: ShareFetchArgs,
) -> Result<(), CliError> {
    files::ensure_absent(&args.out)?;
    let identities = Identities::load(std::slice::from_ref(&args.identity), false)?;
    let client = connect(connect_args)?;
    let envelope = client.rotation_share(args.version).await?;
    let source = PathBuf::from(format!("the {} share from keyholderd", args.version));
    let plain = identities.decrypt(&source, envelope.age_armored.as_bytes())?;
    let shares =
        crypto_core::parse_share_file(&plain).map_err(|(line, e)| CliError::ShareFile {
            path: source.clone(),
            line,
            source: e,
        })?;
    let found: Vec<String> = shares.iter().map(|s| s.version().to_string()).collect();
    let ours = shares.iter().find(|s| s.version() == args.version);
    match ours {
        Some(share) if share.index() == envelope.index && shares.len() == 1 => {}
        _ => {
            return Err(CliError::UnexpectedShare {
                expected: args.version,
                found: found.join(", "),
            });
        }
    }
    drop(plain);
    files::write_private(&args.out, envelope.age_armored.as_bytes())?;
    let doc = serde_json::json!({
        "keyring": envelope.keyring,
        "version": envelope.version,
        "index": envelope.index,
        "out": args.out,
    });
    show(output, &doc, |_| {
        format!(
            "wrote your {} share (index {}) to {}, still age-encrypted (mode 0600); it decrypts with {}\nnext: keyholder share verify --shares {} --identity {}\n",
            args.version,
            envelope.index,
            args.out.display(),
            args.identity.display(),
            args.out.display(),
            args.identity.display()
        )
    })
}

async fn share_verify(
    connect_args: &ConnectArgs,
    output: Output,
    args: ShareVerifyArgs,
) -> Result<u8, CliError> {
    let identities = load_identities(std::slice::from_ref(&args.identity), &args.shares)?;
    let inputs = read_inputs(&args.shares, identities.as_ref())?;
    let submission = submission(&inputs);
    let client = connect(connect_args)?;
    let response = client.rotation_verify(&submission.request).await?;
    show(output, &response, |r| {
        let mut text = render::unseal(r, &submission.sources, &[]);
        if r.all_accepted() {
            text.push_str("verified: the daemon knows you can rebuild your new share\n");
        }
        text
    })?;
    refused(&response).map(|()| 0)
}

async fn rotate(
    connect_args: &ConnectArgs,
    output: Output,
    command: RotateCommand,
) -> Result<(), CliError> {
    if let RotateCommand::Throttle {
        rows_per_sec: None,
        batch_size: None,
    } = command
    {
        return Err(CliError::ThrottleNothing);
    }
    let client = connect(connect_args)?;
    let rotation = match command {
        RotateCommand::Prepare { version } => {
            client.rotation_prepare(&PrepareRequest { version }).await?
        }
        RotateCommand::Activate => client.rotation_activate().await?,
        RotateCommand::Switch => client.rotation_switch().await?,
        RotateCommand::Pause => client.rotation_pause().await?,
        RotateCommand::Resume => client.rotation_resume().await?,
        RotateCommand::Throttle {
            rows_per_sec,
            batch_size,
        } => {
            client
                .rotation_throttle(&ThrottleRequest {
                    rows_per_sec,
                    batch_size,
                })
                .await?
        }
        RotateCommand::Status { watch: false } => {
            let status = client.status().await?;
            return match output {
                Output::Json => print_json(&status.rotation),
                Output::Text => print(
                    &status
                        .rotation
                        .as_ref()
                        .map(render::rotation)
                        .unwrap_or_else(|| "rotation: none\n".to_owned()),
                ),
            };
        }
        RotateCommand::Status { watch: true } => return watch(&client, output).await,
        RotateCommand::Retire { version, execute } => {
            let plan = client
                .rotation_retire(&RetireRequest { version, execute })
                .await?;
            return show(output, &plan, |p| {
                let mut text = render::retire_plan(p);
                if !execute {
                    text.push_str(&format!(
                        "nothing changed; to approve: keyholder rotate retire {version} --execute\n"
                    ));
                } else if !p.executed {
                    text.push_str("your approval is recorded; another operator must approve too\n");
                }
                text
            });
        }
        RotateCommand::Rollback { execute } => {
            let plan = client
                .rotation_rollback(&RollbackRequest { execute })
                .await?;
            return show(output, &plan, |p| {
                let mut text = render::rollback_plan(p);
                if !execute {
                    text.push_str(
                        "nothing changed; to approve: keyholder rotate rollback --execute\n",
                    );
                } else if !p.executed {
                    text.push_str("your approval is recorded; another operator must approve too\n");
                }
                text
            });
        }
    };
    show(output, &rotation, render::rotation)
}

fn finished(state: RotationState) -> bool {
    matches!(
        state,
        RotationState::Drained | RotationState::Retired | RotationState::Idle
    )
}

/// How often `keyholder rotate status --watch` asks for the status.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// Polls the status every second until the rotation is drained, retired or
/// idle, or Ctrl-C. On a terminal (stdout) a progress bar; otherwise one line
/// per poll, also when nothing changed, so a log shows the watch is alive
/// (a paused rotation prints the same line again).
async fn watch(client: &Client, output: Output) -> Result<(), CliError> {
    let tty = std::io::stdout().is_terminal() && output == Output::Text;
    let bar = if tty {
        indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stdout())
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} rows  {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    // The previous poll's reading of `locked_seconds`: two readings give the
    // share of the time between them the pass held its locks.
    let mut previous: Option<(Instant, f64)> = None;
    // The forward rotation this watch followed (`from`, `to`), if it saw one:
    // a rotation that ends idle after it was rolled back, not drained.
    let mut forward: Option<(Option<KeyVersion>, Option<KeyVersion>)> = None;
    loop {
        let status = client.status().await?;
        let now = Instant::now();
        let Some(r) = status.rotation else {
            bar.finish_and_clear();
            print("rotation: none\n")?;
            return rolled_back(forward);
        };
        if !matches!(r.state, RotationState::Idle | RotationState::RollingBack) {
            forward = Some((r.from, r.to));
        }
        let locked = previous
            .filter(|_| {
                matches!(
                    r.state,
                    RotationState::Reencrypting | RotationState::RollingBack
                )
            })
            .and_then(|(at, before)| render::locked_share(before, r.locked_seconds, now - at))
            .map(|percent| format!("locks held {percent:.1}%"));
        previous = Some((now, r.locked_seconds));
        if tty {
            bar.set_length(r.rows_done + r.rows_remaining);
            bar.set_position(r.rows_done);
            bar.set_prefix(format!(
                "{}{}",
                r.state,
                if r.paused { " (paused)" } else { "" }
            ));
            let eta = r
                .eta_seconds
                .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string())
                .unwrap_or_else(|| "?".to_owned());
            let mut message = format!(
                "{:.0} rows/s, eta {eta}, {} conflicts",
                r.rows_per_sec, r.conflicts
            );
            if let Some(locked) = &locked {
                message.push_str(&format!(", {locked}"));
            }
            bar.set_message(message);
        } else {
            let line = match output {
                Output::Json => serde_json::to_string(&r).expect("serialises"),
                Output::Text => {
                    let text = render::rotation(&r);
                    let mut parts: Vec<String> = text.lines().take(2).map(str::to_owned).collect();
                    parts.extend(locked.as_ref().map(|locked| format!("  {locked}")));
                    parts.join(" |")
                }
            };
            print(&format!("{line}\n"))?;
        }
        if finished(r.state) {
            bar.finish_and_clear();
            if output == Output::Text {
                print(&render::rotation(&r))?;
            }
            return if r.state == RotationState::Idle {
                rolled_back(forward)
            } else {
                Ok(())
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_POLL) => {}
            _ = &mut ctrl_c => {
                bar.abandon();
                return Ok(());
            }
        }
    }
}

/// A watch that followed a forward rotation and saw it end idle: it was
/// rolled back (or cancelled before the switch), which a script waiting for
/// the drain must not take for success. A watch that started on a rollback
/// (or on no rotation) ends idle as it should.
fn rolled_back(forward: Option<(Option<KeyVersion>, Option<KeyVersion>)>) -> Result<(), CliError> {
    match forward {
        None => Ok(()),
        Some((from, to)) => Err(CliError::RotationUndone {
            rotation: match (from, to) {
                (Some(from), Some(to)) => format!(" {from} -> {to}"),
                (_, Some(to)) => format!(" to {to}"),
                _ => String::new(),
            },
        }),
    }
}

async fn run_hook(
    connect_args: &ConnectArgs,
    args: HookArgs,
    pipe: Option<hook::KeyringPipe>,
) -> Result<u8, CliError> {
    match (args.exec, args.command.is_empty(), args.format) {
        (true, true, _) => {
            return Err(CliError::ExecUsage(
                "--exec needs a command after `--`: keyholder hook --wait 30s --exec -- COMMAND ARGS...",
            ));
        }
        (false, false, _) => {
            return Err(CliError::ExecUsage(
                "a command after `--` runs only with --exec: keyholder hook --wait 30s --exec -- COMMAND ARGS...",
            ));
        }
        (true, false, Some(_)) => {
            return Err(CliError::ExecUsage(
                "--format does not apply with --exec: the child always reads the hand-over JSON from its pipe",
            ));
        }
        _ => {}
    }
    let usage = args
        .usage
        .as_deref()
        .map(|text| {
            keyholder_api::from_json::<keyholder_api::KeyringRequest>(text.as_bytes())
                .map_err(|reason| CliError::BadUsage { reason })
        })
        .transpose()?;
    let client = connect(connect_args)?;
    let json = hook::fetch(&client, args.wait, usage.as_ref()).await?;
    drop(client);
    if args.exec {
        let pipe = match pipe {
            Some(pipe) => pipe,
            None => hook::KeyringPipe::new()?,
        };
        return hook::exec(json, &args.command, pipe).await;
    }
    match args.format.unwrap_or(HookFormat::Json) {
        HookFormat::Json => {
            let mut line = json;
            line.push('\n');
            print(&line)?;
        }
        HookFormat::Env => {
            let line = hook::env_line(&json).ok_or(CliError::ExecUsage(
                "the keyring cannot be written as a shell assignment; use --format json",
            ))?;
            print(&line)?;
        }
    }
    Ok(0)
}

/// How often `keyholder audit --follow` asks for new entries.
const FOLLOW_POLL: Duration = Duration::from_secs(2);

async fn audit(
    connect_args: &ConnectArgs,
    output: Output,
    args: AuditArgs,
) -> Result<(), CliError> {
    use keyholder_api::{AUDIT_PAGE_MAX, AuditLog, ChainVerifier};
    let client = connect(connect_args)?;
    if args.verify {
        let mut chain = ChainVerifier::default();
        let mut since = 0;
        loop {
            let page = client.audit_page(since, AUDIT_PAGE_MAX).await?;
            chain
                .push(&page.entries)
                .map_err(CliError::AuditChainBroken)?;
            since = page.next_since;
            if !page.more {
                break;
            }
        }
        let doc = serde_json::json!({"intact": true, "entries": chain.checked()});
        return show(output, &doc, |_| {
            format!("audit chain intact: {} entries\n", chain.checked())
        });
    }
    // Pages are printed as they arrive (text, or one JSON entry per line
    // with --follow), so a long log is never held whole.
    let mut since = args.since.unwrap_or(0);
    let mut left = args.limit;
    let mut kept: Vec<keyholder_api::AuditEntry> = Vec::new();
    loop {
        let want = left.map_or(AUDIT_PAGE_MAX, |n| {
            u32::try_from(n).unwrap_or(u32::MAX).min(AUDIT_PAGE_MAX)
        });
        let page = client.audit_page(since, want).await?;
        since = page.next_since;
        left = left.map(|n| n.saturating_sub(page.entries.len() as u64));
        match (output, args.follow) {
            (Output::Text, _) => print(&render::audit(&page.entries))?,
            (Output::Json, true) => {
                for entry in &page.entries {
                    let line =
                        serde_json::to_string(entry).expect("API documents always serialise");
                    print(&format!("{line}\n"))?;
                }
            }
            (Output::Json, false) => kept.extend(page.entries),
        }
        if left == Some(0) || (!page.more && !args.follow) {
            if output == Output::Json && !args.follow {
                print_json(&AuditLog {
                    entries: kept,
                    next_since: since,
                    more: page.more,
                })?;
            }
            return Ok(());
        }
        if !page.more {
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

fn recover_key(args: RecoverArgs, output: Output) -> Result<(), CliError> {
    let kcv = recover::parse_kcv(&args.kcv)?;
    files::ensure_absent(&args.out)?;
    // Shares on stdin: a passphrase cannot come from there too.
    let stdin_busy = args.shares.iter().any(|p| p.as_os_str() == STDIN);
    let identities = Identities::load(&args.identity, stdin_busy)?;
    let mut inputs: Vec<ShareInput> = Vec::new();
    // The two-person rule offline: each identity opens at most one file,
    // stdin included.
    for path in &args.shares {
        let input = identity::read_shares(path, Some(&identities))?;
        if let Some(by) = &input.opened_by
            && let Some(first) = inputs.iter().find(|i| i.opened_by.as_ref() == Some(by))
        {
            return Err(CliError::OneIdentityForTwoFiles {
                identity: by.clone(),
                first: first.source.clone(),
                second: path.clone(),
            });
        }
        inputs.push(input);
    }
    let recovered = recover::recover(&inputs, &kcv, args.version)?;
    let mut text = recovered.key.expose_base64_for_handover();
    text.push('\n');
    files::write_private(&args.out, text.as_bytes())?;
    let indices: Vec<String> = recovered.indices.iter().map(ToString::to_string).collect();
    let doc = serde_json::json!({
        "keyring": recovered.keyring,
        "version": recovered.version,
        "indices": recovered.indices,
        "kcv": kcv.to_hex(),
        "out": args.out,
    });
    show(output, &doc, |_| {
        format!(
            "rebuilt {} of keyring {} from share indices {}; it matches KCV {}\nwrote the key (base64) to {} (mode 0600); keep it offline and destroy it when done\n",
            recovered.version,
            recovered.keyring,
            indices.join(", "),
            kcv.to_hex(),
            args.out.display()
        )
    })
}

fn pki_renew(args: PkiRenewArgs, output: Output) -> Result<(), CliError> {
    let name = match &args.principal {
        Some(name) => {
            crate::pki::check_principal_name(name)?;
            name.as_str()
        }
        None => "server",
    };
    let written = crate::pki::renew(&args.dir, name)?;
    match output {
        Output::Json => {
            let files: Vec<_> = written
                .iter()
                .map(|w| serde_json::json!({"path": w.path, "what": w.what}))
                .collect();
            print_json(&serde_json::json!({ "written": files }))
        }
        Output::Text => {
            let mut text = String::new();
            for w in &written {
                let file = w.path.file_name().unwrap_or_default().to_string_lossy();
                text.push_str(&format!("  {file:<28} {}\n", w.what));
            }
            text.push_str(if args.server {
                "next: restart keyholderd (or reload it) so it serves the new certificate\n"
            } else {
                "next: nothing; the client sends the new certificate from its next connection\n"
            });
            print(&text)
        }
    }
}

fn pki_init(args: PkiInitArgs, output: Output) -> Result<(), CliError> {
    let plan = PkiPlan {
        dir: args.dir.clone(),
        keyring: args.keyring,
        keyholders: args.keyholders,
        operators: args.operators,
        databases: args.databases,
        server_name: args.server_name,
        listen: args.listen,
    };
    if args.dir.exists() && !args.dir.is_dir() {
        return Err(CliError::NotADirectory { path: args.dir });
    }
    let written = plan.run()?;
    match output {
        Output::Json => {
            let files: Vec<_> = written
                .iter()
                .map(|w| serde_json::json!({"path": w.path, "what": w.what}))
                .collect();
            print_json(&serde_json::json!({ "written": files }))
        }
        Output::Text => {
            let dir = args.dir.display();
            let mut text = format!("wrote {} files to {dir}:\n", written.len());
            for w in &written {
                let name = w.path.file_name().unwrap_or_default().to_string_lossy();
                text.push_str(&format!("  {name:<16} {}\n", w.what));
            }
            let first = &plan.keyholders[0];
            text.push_str(&format!(
                "next: keyholderd init --config {dir}/keyholder.toml --out {dir}/shares\n\
                 then, as {first}: export KEYHOLDER_CACERT={dir}/ca.pem KEYHOLDER_CLIENT_CERT={dir}/{first}.pem KEYHOLDER_CLIENT_KEY={dir}/{first}.key\n"
            ));
            print(&text)
        }
    }
}
