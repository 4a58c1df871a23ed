#!/usr/bin/env bash
# Which daemons of the cluster in $HISTOGRAPH_SLURM_DIR run (by pid file), and sinfo/squeue.
# Exit 0 when slurmctld and slurmd run, else 1.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
for d in munged mariadbd slurmdbd slurmctld slurmd; do
  if pid=$(daemon_pid "$d"); then echo "$d: running (pid $pid)"; else echo "$d: not running"; fi
done
running slurmctld && running slurmd || exit 1
echo "SLURM_CONF=$SLURM_CONF"
sinfo
squeue
