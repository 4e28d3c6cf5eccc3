#!/usr/bin/env bash
# Nightly curation from cron. Safe to run as often as you like:
#  - flock makes overlapping cron invocations exit at once instead of queueing up
#    (curate also locks the run directory itself; this guards the whole script);
#  - a rerun resumes the same run directory: finished shards are skipped, new pool files
#    are ingested and only their shards go through the per-shard stages;
#  - the exit code says what happened, so cron's MAILTO or a monitor can react.
#
# crontab -e:
#   0 2 * * *  /srv/curate/pipelines/jobs/curate-cron.sh >> /var/log/curate/cron.log 2>&1
#
# Exit codes (curate run): 0 ok; 2 bad input or config (one line in the log says what and
# where); 3 finished, but more shards failed than run.max_failed_fraction allows (rerun to
# retry them; `curate status RUN --json` lists them); 75 another run holds the lock.
set -uo pipefail

REPO=${REPO:-/srv/curate}
POOL=${POOL:-/data/pool/}                     # a folder that gains Parquet files over time
OUT=${OUT:-/data/runs/nightly}
PIPELINE=${PIPELINE:-$REPO/pipelines/default.yaml}
LOG_DIR=${LOG_DIR:-/var/log/curate}
mkdir -p "$LOG_DIR"

exec 9>"$LOG_DIR/curate.flock"
if ! flock -n 9; then
  echo "$(date -Is) another curate job is still running; skipping" >&2
  exit 75
fi

cd "$REPO"
echo "$(date -Is) start: pool=$POOL out=$OUT"
"$REPO/.venv/bin/curate" run --pool "$POOL" --pipeline "$PIPELINE" --out "$OUT" \
  >> "$LOG_DIR/curate-$(date +%F).log" 2>&1
rc=$?
echo "$(date -Is) end: exit $rc"
"$REPO/.venv/bin/curate" status "$OUT" --json > "$LOG_DIR/status.json" || true
exit $rc
