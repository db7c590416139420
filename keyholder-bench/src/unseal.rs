//! `unseal`: from the last share's request to unsealed, with two live
//! versions (v9 and v10 records side by side, the daemon in dual read) and
//! the daemon's sample of 64 records per version per target, on targets of
//! growing size. The time must not grow with the table.

use serde_json::json;

use crate::report::{Table, ms, verdict};
use crate::world::{Store, Tuning, World};
use crate::{Options, seed};

/// Unseals timed per size (the median is reported).
const TRIES: usize = 3;

/// Runs the scenario on SQLite.
pub async fn run(options: &Options) -> (serde_json::Value, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    seed::create_sqlite(&path);
    let mut world = World::start(Store::Sqlite(path.clone()), Tuning::default()).await;
    let v10 = world.prepare_and_activate().await;
    let keys = [
        (crate::world::v(9), world.v9.clone()),
        (crate::world::v(10), v10),
    ];
    let sizes = [10_000, options.rows, options.rows * 10];
    let mut table = Table::new(
        "unseal sqlite: the last share's request -> unsealed, two live versions, 64 samples per version (ms)",
        &["rows", "median", "min", "max"],
    );
    let mut figures = Vec::new();
    let mut seeded = 0;
    let mut medians = Vec::new();
    for rows in sizes {
        world.stop();
        seed::seed_sqlite(&path, seeded + 1, rows, &keys, |id| (id % 2) as usize);
        seeded = rows;
        let mut took = Vec::new();
        for _ in 0..TRIES {
            world.restart().await;
            took.push(world.unseal().await.as_secs_f64() * 1000.0);
        }
        took.sort_by(f64::total_cmp);
        let median = took[TRIES / 2];
        medians.push((rows, median));
        table.row(vec![
            rows.to_string(),
            ms(median),
            ms(took[0]),
            ms(took[TRIES - 1]),
        ]);
        figures.push(json!({"rows": rows, "median_ms": median, "all_ms": took}));
    }
    table.print();
    let rss = world.peak_rss_kib();
    world.stop();
    let largest = medians.last().copied().unwrap_or_default();
    println!(
        "unseal: {:.1} ms on {} rows, {:.1} ms on {} rows (target < 100 ms: {})",
        medians[0].1,
        medians[0].0,
        largest.1,
        largest.0,
        verdict(largest.1 < 100.0)
    );
    (json!(figures), rss)
}
