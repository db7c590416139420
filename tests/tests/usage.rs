//! Issue 20's "usage from every writer": a database principal reports its
//! processes' encryption counts when it fetches the keyring; the daemon adds
//! them up durably, warns at the (here lowered) warning limit and shows the
//! version exhausted at the limit, in the status, `keyholder status`, the
//! metrics, the log and the audit log, and keeps serving the keyring.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use keyholder_api::{AuditLog, Status, UsageLevel, VersionStatus};
use keyholder_tests::client::tls_config;
use keyholder_tests::daemon::{DATABASE, OPERATOR, free_addr};
use keyholder_tests::{Env, EnvOptions};
use serde_json::json;

/// `warn_at` and `limit` of the test's `[usage]`, far below 2^31 and 2^32.
const WARN_AT: u64 = 100;
const LIMIT: u64 = 200;

fn report(process: &str, count: u64) -> serde_json::Value {
    json!({"process": process, "encryptions": [{"version": 1, "count": count}]})
}

async fn v1(env: &Env) -> VersionStatus {
    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    status.versions.into_iter().next().expect("v1")
}

async fn metrics(addr: std::net::SocketAddr, env: &Env) -> String {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(&env.pki.ca_pem, None))
        .build()
        .unwrap()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn has_line(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "{line} missing from:\n{text}"
    );
}

/// `keyholder status` as text, run as the operator.
fn status_text(env: &Env) -> String {
    let out = env.keyholder_cli(OPERATOR).arg("status").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The keyring fetched with a report; panics unless it was served.
async fn fetch_reporting(env: &Env, body: &serde_json::Value) {
    let answer = env.client(DATABASE).post("/v1/keyring", body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    crypto_core::Keyring::from_handover_json(&answer.body).expect("a hand-over");
}

#[tokio::test]
async fn reported_encryptions_cross_the_limits_and_the_keyring_is_still_served() {
    let metrics_addr = free_addr();
    let env = Env::new(EnvOptions {
        listen_toml: format!("metrics_addr = \"{metrics_addr}\"\n"),
        extra_toml: format!("\n[usage]\nwarn_at = {WARN_AT}\nlimit = {LIMIT}\n"),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    for name in ["alice", "bob"] {
        let answer = env.client(name).unseal(&[&env.share_line(name, 1)]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // v1 starts with the canary's one encryption.
    assert_eq!(v1(&env).await.encryptions, 1);

    // Below the warning limit.
    fetch_reporting(&env, &report("p1", 50)).await;
    let version = v1(&env).await;
    assert_eq!(
        (version.encryptions, version.usage, version.usage_message),
        (51, UsageLevel::Ok, None)
    );

    // Past it, reported through the real hook (as a refreshing database
    // process does, with KEYHOLDER_USAGE).
    let hook = env
        .keyholder_cli(DATABASE)
        .args(["hook", "--wait", "10s", "--format", "json"])
        .env("KEYHOLDER_USAGE", report("p1", 120).to_string())
        .output()
        .unwrap();
    assert!(
        hook.status.success(),
        "{}",
        String::from_utf8_lossy(&hook.stderr)
    );
    crypto_core::Keyring::from_handover_json(String::from_utf8_lossy(&hook.stdout).trim())
        .expect("the hook printed the keyring");
    let warning = "v1 has done 121 encryptions, past the warning limit of 100: rotate now (keyholder rotate prepare)";
    let version = v1(&env).await;
    assert_eq!(
        (version.encryptions, version.usage),
        (121, UsageLevel::Warning)
    );
    assert_eq!(version.usage_message.as_deref(), Some(warning));
    let text = status_text(&env);
    assert!(
        text.contains(&format!("        WARNING: {warning}\n")),
        "{text}"
    );
    let scraped = metrics(metrics_addr, &env).await;
    has_line(&scraped, "keyholder_version_encryptions{version=\"1\"} 121");
    has_line(
        &scraped,
        "keyholder_version_usage{version=\"1\",level=\"warning\"} 1",
    );
    has_line(
        &scraped,
        "keyholder_version_usage{version=\"1\",level=\"exhausted\"} 0",
    );

    // The same report again (a retry) and an older one arriving late add
    // nothing.
    fetch_reporting(&env, &report("p1", 120)).await;
    fetch_reporting(&env, &report("p1", 90)).await;
    assert_eq!(v1(&env).await.encryptions, 121);

    // A second process of the same principal crosses the limit.
    fetch_reporting(&env, &report("p2", 80)).await;
    let exhausted = "v1 has done 201 encryptions and reached its limit of 200: rotate to a new version now (keyholder rotate prepare); the keyring is still served, and each database process refuses to encrypt with v1 past 2^32";
    let version = v1(&env).await;
    assert_eq!(
        (version.encryptions, version.usage),
        (201, UsageLevel::Exhausted)
    );
    assert_eq!(version.usage_message.as_deref(), Some(exhausted));
    let text = status_text(&env);
    assert!(
        text.contains(&format!("        EXHAUSTED: {exhausted}\n")),
        "{text}"
    );
    let scraped = metrics(metrics_addr, &env).await;
    has_line(&scraped, "keyholder_version_encryptions{version=\"1\"} 201");
    has_line(
        &scraped,
        "keyholder_version_usage{version=\"1\",level=\"exhausted\"} 1",
    );
    has_line(
        &scraped,
        "keyholder_version_usage{version=\"1\",level=\"warning\"} 0",
    );

    // Exhausted, the keyring is still served: with a report and without.
    fetch_reporting(&env, &report("p2", 90)).await;
    let plain = env.client(DATABASE).get("/v1/keyring").await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(v1(&env).await.encryptions, 211);

    // A report naming a version the daemon does not know is refused by
    // name, and nothing of it is recorded.
    let bad = env
        .client(DATABASE)
        .post(
            "/v1/keyring",
            &json!({"process": "p2", "encryptions": [
                {"version": 1, "count": 500},
                {"version": 9, "count": 1},
            ]}),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let error = bad.error();
    assert_eq!(
        (error.code.as_str(), error.error.as_str()),
        (
            "bad_usage_report",
            "usage report refused: encryptions: v9 is not a version of this keyring"
        )
    );
    assert_eq!(v1(&env).await.encryptions, 211);
    // Only a database principal reports.
    let operator = env
        .client(OPERATOR)
        .post("/v1/keyring", &report("p3", 1))
        .await;
    assert_eq!(operator.status, 403, "{}", operator.body);

    // The audit log has one entry per crossing, each saying what to do.
    let log: AuditLog = env
        .client(OPERATOR)
        .get("/v1/audit?limit=1000")
        .await
        .json();
    let crossings: Vec<(String, serde_json::Value)> = log
        .entries
        .iter()
        .filter(|e| e.action.starts_with("encryptions_"))
        .map(|e| (e.action.clone(), serde_json::from_str(&e.detail).unwrap()))
        .collect();
    assert_eq!(
        crossings,
        [
            (
                "encryptions_warning".to_owned(),
                json!({"version": 1, "encryptions": 121, "limit": WARN_AT, "reported_by": DATABASE, "message": warning}),
            ),
            (
                "encryptions_exhausted".to_owned(),
                json!({"version": 1, "encryptions": 201, "limit": LIMIT, "reported_by": DATABASE, "message": exhausted}),
            ),
        ]
    );
    // Each fetch's entry carries what came with it: the last two, the
    // exhausted version's report and the plain GET.
    let fetches: Vec<serde_json::Value> = log
        .entries
        .iter()
        .filter(|e| e.action == "keyring_fetched")
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.detail).unwrap()["reported"].clone())
        .collect();
    assert_eq!(
        fetches[fetches.len() - 2..],
        [report("p2", 90), serde_json::Value::Null]
    );

    // And the log says it, each at WARN (an ERROR line means a fault of the
    // daemon; this one is the operator's to act on).
    assert!(env.log_contains(warning).await, "{}", env.log_text());
    let log = env.log_text();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing from:\n{log}"))
            .to_owned()
    };
    assert!(line(warning).contains("WARN"), "{}", line(warning));
    assert!(line(exhausted).contains("WARN"), "{}", line(exhausted));
}

/// The demo application (the database side of the demo) reports the
/// encryptions its keyring did each time it refreshes through the hook: the
/// version's total grows by exactly the last count its process reported.
#[tokio::test]
async fn the_demo_application_reports_its_encryptions_when_it_refreshes() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    for name in ["alice", "bob"] {
        let answer = env.client(name).unseal(&[&env.share_line(name, 1)]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let app = keyholder_tests::daemon::binary("keyholder-demo-app");
    let keyholder = keyholder_tests::daemon::binary("keyholder");
    let db = env.tmp.path().join("demo.db");
    let db = db.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = env
            .keyholder_cli(DATABASE)
            .args(["hook", "--wait", "10s", "--exec", "--"])
            .arg(&app)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["schema", "--db", db]);
    run(&["seed", "--db", db, "--rows", "50"]);
    let before = v1(&env).await.encryptions;
    let summary = run(&[
        "serve",
        "--db",
        db,
        "--duration",
        "3s",
        "--ops-per-sec",
        "100",
        "--write-ratio",
        "1.0",
        "--refresh-every",
        "500ms",
        "--",
        keyholder.to_str().unwrap(),
        "hook",
        "--wait",
        "5s",
        "--format",
        "json",
    ]);
    let field = |name: &str| -> u64 {
        summary
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing from {summary}"))
            .parse()
            .unwrap()
    };
    assert!(
        field("refreshes") > 0 && field("failures") == 0,
        "{summary}"
    );

    let log: AuditLog = env
        .client(OPERATOR)
        .get("/v1/audit?limit=1000")
        .await
        .json();
    let reports: Vec<serde_json::Value> = log
        .entries
        .iter()
        .filter(|e| e.action == "keyring_fetched")
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.detail).unwrap()["reported"].clone())
        .filter(|r| !r.is_null())
        .collect();
    assert!(!reports.is_empty(), "no fetch carried a report");
    let process = reports[0]["process"].as_str().unwrap().to_owned();
    assert_eq!(process.len(), 32, "{process}");
    let counts: Vec<u64> = reports
        .iter()
        .map(|r| {
            assert_eq!(r["process"], process.as_str(), "one serving process");
            r["encryptions"][0]["count"].as_u64().unwrap()
        })
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {counts:?}"
    );
    let last = *counts.last().unwrap();
    // Two columns per rewritten row; the writes after the last refresh are
    // not reported yet.
    assert!(
        last > 0 && last <= 2 * field("rows_written"),
        "{counts:?} {summary}"
    );
    assert_eq!(v1(&env).await.encryptions, before + last);
}
