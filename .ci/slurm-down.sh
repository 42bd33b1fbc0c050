#!/usr/bin/env bash
# Stop what slurm-up.sh started, by pid file.
SLURM_DIR=${SLURM_DIR:-/tmp/slurm}
for f in "$SLURM_DIR/slurmd.pid" "$SLURM_DIR/slurmctld.pid" /run/munge/munged.pid; do
  [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
done
