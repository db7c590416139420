//! Config mistakes that would break the two-person rule or hide a broken
//! store, met by the real `keyholderd check-config` and `init`: each is
//! refused by name, before the daemon could run on it, with the exit status
//! of its kind (`keyholder_server::exit`).
//!
//! Build the daemon first: `cargo build -p keyholder-server`.

use std::fs;

use keyholder_tests::pg;
use keyholder_tests::{Env, EnvOptions};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The age recipient configured for `name`.
fn recipient_of(config: &str, name: &str) -> String {
    let table: toml::Table = config.parse().unwrap();
    table["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["age_recipient"].as_str())
        .unwrap()
        .to_owned()
}

#[test]
fn two_keyholders_with_one_age_recipient_are_refused_by_check_config_and_init() {
    let env = Env::new(EnvOptions::default());
    let text = fs::read_to_string(&env.config).unwrap();
    let (alice, bob) = (recipient_of(&text, "alice"), recipient_of(&text, "bob"));
    fs::write(&env.config, text.replace(&bob, &alice)).unwrap();
    let expected = "  principals[1].age_recipient: is also the age recipient of \"alice\"; one identity would decrypt both shares and break the two-person rule, give each keyholder their own";
    let check = env.keyholderd(&["check-config"]);
    assert_eq!(check.status.code(), Some(64), "a config error is EX_USAGE");
    assert!(stderr(&check).contains(expected), "{}", stderr(&check));
    let out = env.tmp.path().join("again");
    let init = env.keyholderd(&["init", "--out", &out.display().to_string()]);
    assert_eq!(init.status.code(), Some(64));
    assert!(stderr(&init).contains(expected), "{}", stderr(&init));
    assert!(!out.exists(), "no share file was written");
}

#[test]
fn an_empty_state_dir_is_named_not_a_missing_file() {
    let env = Env::new(EnvOptions::default());
    let text = fs::read_to_string(&env.config).unwrap();
    let state = format!("state_dir = \"{}\"", env.state_dir.display());
    fs::write(&env.config, text.replace(&state, "state_dir = \"\"")).unwrap();
    let check = env.keyholderd(&["check-config"]);
    assert!(!check.status.success());
    assert!(
        stderr(&check).contains("  state_dir: is empty; set the path"),
        "{}",
        stderr(&check)
    );
}

/// A PostgreSQL URL on a port where nothing listens.
fn dead_postgres() -> String {
    let addr = keyholder_tests::daemon::free_addr();
    format!("postgres://postgres@{addr}/test")
}

#[tokio::test]
async fn check_config_connects_to_a_postgres_state_store_and_targets() {
    let Some(url) = pg::url() else { return };
    let env = Env::new(EnvOptions::default());
    let sqlite = fs::read_to_string(&env.config).unwrap();
    let state = format!("state_dir = \"{}\"", env.state_dir.display());
    let schema = pg::unique_name("kh_check");
    let separator = if url.contains('?') { '&' } else { '?' };
    let on_postgres = sqlite.replace(
        &state,
        &format!("state_store = \"{url}{separator}schema={schema}\""),
    );

    // A real target table, so the target's columns are checked too.
    let admin = pg::connect(&url).await;
    let table = pg::unique_name("kh_check_t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, ssn text NOT NULL)"
        ))
        .await
        .unwrap();
    let target = |store: &str, column: &str| {
        format!(
            "\n[[targets]]\nname = \"pg-customers\"\nstore = \"{store}\"\ntable = \"{table}\"\nprimary_key = \"id\"\ncolumns = [\"{column}\"]\n"
        )
    };
    let with_target = |store: &str, column: &str| {
        on_postgres.replacen(
            "\n[[principals]]",
            &format!("{}\n[[principals]]", target(store, column)),
            1,
        )
    };

    fs::write(&env.config, with_target(&url, "ssn")).unwrap();
    let ok = env.keyholderd(&["check-config"]);
    let said = stderr(&ok);
    assert!(ok.status.success(), "{said}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("1 target(s)"),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let created: i64 = admin
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0, "check-config connects; it creates nothing");

    // A column the table does not have: named by its target.
    fs::write(&env.config, with_target(&url, "iban")).unwrap();
    let bad = env.keyholderd(&["check-config"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("  targets[0].store: cannot use target pg-customers: "),
        "{}",
        stderr(&bad)
    );

    // Nothing listening: the state store and the target are each named.
    let dead = dead_postgres();
    let text = with_target(&dead, "ssn").replace(&format!("{url}{separator}"), &format!("{dead}?"));
    fs::write(&env.config, text).unwrap();
    let down = env.keyholderd(&["check-config"]);
    assert_eq!(
        down.status.code(),
        Some(69),
        "a database that cannot be reached is EX_UNAVAILABLE"
    );
    let said = stderr(&down);
    assert!(said.contains("2 store(s) cannot be used"), "{said}");
    assert!(
        said.contains("  state_store: cannot connect to the PostgreSQL state store: ")
            && said.contains("check the URL, that the server runs and that it accepts this user"),
        "{said}"
    );
    assert!(
        said.contains("  targets[0].store: cannot use target pg-customers: "),
        "{said}"
    );
    admin
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[test]
fn a_state_file_that_cannot_be_opened_exits_74_naming_the_file_and_the_operation() {
    let env = Env::new(EnvOptions::default());
    let file = env.state_dir.join("state.db");
    for leftover in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = fs::remove_file(env.state_dir.join(leftover));
    }
    // A directory where the file should be: SQLite cannot open it.
    fs::create_dir(&file).unwrap();
    let run = env.keyholderd(&["run"]);
    assert_eq!(run.status.code(), Some(74), "{}", stderr(&run));
    let said = stderr(&run);
    assert!(
        said.contains(&format!("state store {}: open failed: ", file.display())),
        "{said}"
    );
}
