#!/usr/bin/env bash
# Herald benchmarks: release builds, then peers side by side in one run (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
cargo pgrx install --release -p herald --pg-config "$PG_CONFIG" ${SUDO:+--sudo}
cargo build --release -p herald-coordinator -p herald-bench
# The jobs phase's peer, graphile-worker, at the version pinned in bench/graphile/package-lock.json.
if command -v npm >/dev/null; then
    (cd bench/graphile && npm ci --no-audit --no-fund --loglevel=error)
fi
HERALD_BIN=target/release/herald ./target/release/herald-bench "$@"
