#!/usr/bin/env bash
# Stop the cluster started by start.sh: cancel its jobs, then TERM each daemon by the PID in its pid
# file (slurmd, slurmctld, slurmdbd, mariadbd, munged), wait, KILL if needed. Never by name.
# A no-op when nothing runs.
#   scripts/slurm/stop.sh [--wipe]     # --wipe: also delete $HISTOGRAPH_SLURM_DIR (job ids restart at 1)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
WIPE=0
case "${1:-}" in
  --wipe) WIPE=1 ;;
  "") ;;
  -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
  *) echo "stop.sh: unknown argument $1" >&2; exit 2 ;;
esac

if [ ! -d "$DIR" ]; then
  echo "Slurm not running (no $DIR)"
  exit 0
fi
exec 9> "$DIR/.lock"
flock -w 300 9 || { echo "stop.sh: another start/stop holds $DIR/.lock" >&2; exit 1; }

any=0
for d in slurmd slurmctld slurmdbd mariadbd munged; do running "$d" && any=1; done
if [ $any = 0 ]; then
  echo "Slurm not running in $DIR"
else
  # jobs first, while slurmctld and slurmd still run, so that no job processes outlive the cluster
  if running slurmctld && running slurmd; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
      echo "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 150; i++)); do
        [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
        sleep 0.1
      done
      [ -n "$(squeue -h -o %A 2>/dev/null)" ] && echo "  jobs still listed after 15s: $(squeue -h -o '%A %T' | tr '\n' ' ')"
      echo "  jobs gone at $(elapsed)"
    fi
  fi
  stop_daemon slurmd 10
  stop_daemon slurmctld 15
  stop_daemon slurmdbd 15
  stop_daemon mariadbd 30
  stop_daemon munged 10
  echo "Slurm stopped in $(elapsed)"
fi
if [ $WIPE = 1 ]; then
  exec 9>&-
  rm -rf "$DIR"
  echo "removed $DIR"
fi
