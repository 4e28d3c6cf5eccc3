#!/usr/bin/env bash
# Submit curation as a Ray Job to a running cluster. The run directory must be storage that
# every node reads and writes: NFS, or an fsspec URL (s3://, gs://, with s3fs/gcsfs installed
# on the cluster). Resubmitting the same command resumes.
#
#   RAY_ADDRESS=http://head:8265 pipelines/jobs/ray-job.sh s3://bucket/pool/ s3://bucket/runs/x
set -euo pipefail
POOL=${1:?pool (path or URL)}
OUT=${2:?run directory (shared path or URL)}
PIPELINE=${3:-pipelines/default.yaml}

ray job submit --working-dir . \
  --runtime-env-json '{"pip": ["-e ."], "env_vars": {"HF_HUB_OFFLINE": "0", "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}}' \
  -- curate run --pool "$POOL" --pipeline "$PIPELINE" --out "$OUT"
# Monitoring: `ray job logs --follow <id>`, and `curate status OUT --json` from anywhere
# that can read OUT. The job's exit code is curate's (0 / 2 / 3, see README).
