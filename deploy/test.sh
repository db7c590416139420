#!/usr/bin/env bash
# The README's test command: builds and runs every test in the workspace.
# PostgreSQL tests run when KEYHOLDER_TEST_PG names a server (CI sets it);
# without it they print a notice and skip.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
# The end-to-end tests start the real binaries; build them first so no test
# races the build.
cargo build --workspace --bins --quiet
cargo nextest run --workspace --no-fail-fast "$@"
# nextest does not run doc tests.
cargo test --workspace --doc --quiet
# A longer property run than the default, as a smoke of the parsers.
PROPTEST_CASES=2000 cargo nextest run --workspace --no-fail-fast -E 'package(crypto-core) and binary(properties)'
