//! The engine on real SQLite files.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/scenarios.rs"]
mod scenarios;

use std::sync::Arc;

use fixture::Db;
use keyholder_reencrypt::*;

fn sqlite() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::Sqlite(dir.path().join("app.db"));
    (dir, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_records_move_to_v10_unchanged() {
    let (_dir, db) = sqlite();
    scenarios::forward_pass(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writer_loses_no_update() {
    let (_dir, db) = sqlite();
    scenarios::concurrent_writer(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_five_crashes() {
    let (dir, db) = sqlite();
    let checkpoints = Arc::new(SqliteCheckpoints::open(&dir.path().join("state.db")).unwrap());
    scenarios::crash_and_resume(db, checkpoints).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_moves_records_back() {
    let (_dir, db) = sqlite();
    scenarios::rollback(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_record_stops_the_pass_cleanly() {
    let (_dir, db) = sqlite();
    scenarios::bad_ciphertext(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_writes_within_one_batch() {
    let (_dir, db) = sqlite();
    scenarios::pause_and_resume(db).await;
}
