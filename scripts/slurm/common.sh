# Sourced by start.sh / stop.sh / status.sh: the layout of the one state folder and PID helpers.
# Settings (environment):
#   HISTOGRAPH_SLURM_DIR     state folder: config, state, spool, pid, log, munge, db  [/tmp/histograph-slurm]
#   HISTOGRAPH_SLURM_GPUS    fake GPUs on the node (ordinary files in $DIR/gpu)     [2]
#   HISTOGRAPH_SLURM_CPUS    CPUs the node advertises (more jobs than cores)         [8]
#   HISTOGRAPH_SLURM_GRACE   preemption GraceTime of the low partition, seconds      [10]
#   HISTOGRAPH_SLURM_PORT    first of 4 ports: slurmctld, slurmd, slurmdbd, mariadb  [6817]
#   HISTOGRAPH_SLURM_ACCOUNTING=1   same as start.sh --accounting
#   HISTOGRAPH_SLURM_NO_INSTALL=1   never run apt-get; fail if the packages are missing
DIR=${HISTOGRAPH_SLURM_DIR:-/tmp/histograph-slurm}
case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR" ;; esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOW=low
HIGH=high
PORT=${HISTOGRAPH_SLURM_PORT:-6817}
CTLD_PORT=$PORT; SLURMD_PORT=$((PORT + 1)); DBD_PORT=$((PORT + 2)); DB_PORT=$((PORT + 3))
export SLURM_CONF="$DIR/etc/slurm.conf"

# name -> pid file (munged writes its own as user munge, so it lives in munge/)
pidfile() {
  case "$1" in
    munged) echo "$DIR/munge/munged.pid" ;;
    *) echo "$DIR/run/$1.pid" ;;
  esac
}

# the PID from the daemon's pid file when that process is alive and is that daemon, else nothing
daemon_pid() {
  local f pid comm
  f=$(pidfile "$1")
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' < "$f")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  # a reused PID is not ours: the command must be the daemon the pid file is for
  [ "$comm" = "$1" ] || return 1
  # a zombie is gone (PID 1 here reaps late; a stopped daemon can stay <defunct> for a while)
  gone "$pid" && return 1
  echo "$pid"
}

running() { daemon_pid "$1" > /dev/null; }

gone() { [ ! -d "/proc/$1" ] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# TERM by PID, wait up to $2 s, then KILL. Removes the pid file.
stop_daemon() {
  local name=$1 wait_s=${2:-10} pid i
  if ! pid=$(daemon_pid "$name"); then
    rm -f "$(pidfile "$name")"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < wait_s * 10; i++)); do
    gone "$pid" && break
    sleep 0.1
  done
  if ! gone "$pid"; then
    echo "  $name ($pid) did not stop after TERM + ${wait_s}s: KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$(pidfile "$name")"
  echo "  stopped $name (pid $pid) in $(elapsed)"
}

T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }
