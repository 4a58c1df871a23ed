#!/usr/bin/env bash
# Start a single-node Slurm on localhost (as root, no systemd): munged, slurmctld, slurmd and, with
# --accounting, mariadbd + slurmdbd (so `sacct` works and submitit sees CANCELLED/FAILED states).
# Idempotent: daemons already running (checked by the PIDs in their pid files) are left alone;
# a cluster that is fully up is only reported. Everything lives under $HISTOGRAPH_SLURM_DIR.
#   scripts/slurm/start.sh [--accounting] [--gpus N] [--no-install]
#   source "${HISTOGRAPH_SLURM_DIR:-/tmp/histograph-slurm}/env.sh"   # SLURM_CONF for sinfo, sbatch, submitit
# Stop with scripts/slurm/stop.sh. Settings: see common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ACCOUNTING=${HISTOGRAPH_SLURM_ACCOUNTING:-0}
GPUS=${HISTOGRAPH_SLURM_GPUS:-2}
CPUS=${HISTOGRAPH_SLURM_CPUS:-8}
GRACE=${HISTOGRAPH_SLURM_GRACE:-10}
NO_INSTALL=${HISTOGRAPH_SLURM_NO_INSTALL:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --accounting) ACCOUNTING=1 ;;
    --gpus) GPUS=$2; shift ;;
    --gpus=*) GPUS=${1#*=} ;;
    --no-install) NO_INSTALL=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "start.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$ACCOUNTING" = 1 ] || ACCOUNTING=0

die() { echo "start.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root, munged as user munge)"

mkdir -p "$DIR"
# the lock fd (9) is closed for every daemon started below (munged would keep it and hold the lock)
exec 9> "$DIR/.lock"
flock -w 300 9 || die "another start/stop holds $DIR/.lock"

print_env() {
  cat > "$DIR/env.sh" <<ENV
export HISTOGRAPH_SLURM_DIR=$DIR
export SLURM_CONF=$SLURM_CONF
ENV
  echo "# environment for sinfo/sbatch/submitit (also in $DIR/env.sh):"
  cat "$DIR/env.sh"
}

conf_has_accounting() { grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$SLURM_CONF" 2>/dev/null; }

# ------------------------------------------------------------------ already up?
WANT=(munged slurmctld slurmd)
[ "$ACCOUNTING" = 1 ] && WANT=(munged mariadbd slurmdbd slurmctld slurmd)
if running slurmctld && [ "$ACCOUNTING" = 1 ] && ! conf_has_accounting; then
  die "a cluster without accounting is running in $DIR; stop it first (scripts/slurm/stop.sh)"
fi
if running slurmctld && conf_has_accounting; then
  ACCOUNTING=1; WANT=(munged mariadbd slurmdbd slurmctld slurmd)
fi
missing=()
for d in "${WANT[@]}"; do running "$d" || missing+=("$d"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "Slurm already running in $DIR (accounting=$ACCOUNTING):"
  for d in "${WANT[@]}"; do echo "  $d pid $(daemon_pid "$d")"; done
  print_env
  sinfo
  exit 0
fi

# ------------------------------------------------------------------ packages
need_bins=(/usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/bin/sbatch)
pkgs=(slurm-wlm munge)
if [ "$ACCOUNTING" = 1 ]; then
  need_bins+=(/usr/sbin/slurmdbd /usr/sbin/mariadbd /usr/bin/mariadb-install-db /usr/bin/mariadb)
  pkgs+=(slurmdbd mariadb-server mariadb-client)
fi
absent=()
for b in "${need_bins[@]}"; do [ -x "$b" ] || absent+=("$b"); done
if [ ${#absent[@]} -gt 0 ]; then
  [ "$NO_INSTALL" = 1 ] && die "missing ${absent[*]} and --no-install was given"
  command -v apt-get > /dev/null || die "missing ${absent[*]} and no apt-get to install ${pkgs[*]}"
  echo "installing ${pkgs[*]} (missing: ${absent[*]})"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; } \
    > "$DIR/apt.log" 2>&1 || { tail -20 "$DIR/apt.log" >&2; die "apt-get install ${pkgs[*]} failed (log: $DIR/apt.log)"; }
  echo "  installed in $(elapsed)"
fi

# ------------------------------------------------------------------ folders and config
mkdir -p "$DIR"/{etc,state,spool,run,log,gpu,munge}
chown munge:munge "$DIR/munge"; chmod 0755 "$DIR/munge"
chmod 0755 "$DIR"
NODE=$(/usr/sbin/slurmd -C | sed -n 's/^NodeName=\([^ ]*\).*/\1/p')
MEM=$(/usr/sbin/slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
HOST=$(hostname -s)
[ -n "$NODE" ] && [ -n "$MEM" ] || die "cannot read the node from 'slurmd -C'"

if ! running slurmctld && ! running slurmd && ! running slurmdbd; then
  # a fresh config only while no Slurm daemon reads the old one
  GRES=""
  : > "$DIR/etc/gres.conf"
  if [ "$GPUS" -gt 0 ]; then
    GRES="Gres=gpu:$GPUS"
    for ((i = 0; i < GPUS; i++)); do
      : > "$DIR/gpu/gpu$i"
      echo "NodeName=$NODE Name=gpu File=$DIR/gpu/gpu$i" >> "$DIR/etc/gres.conf"
    done
  fi
  ACCT="AccountingStorageType=accounting_storage/none"
  if [ "$ACCOUNTING" = 1 ]; then
    ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# the munge socket for talking to slurmdbd (default /run/munge/munge.socket.2, not AuthInfo's)
AccountingStoragePass=$DIR/munge/munge.socket.2"
  fi
  : > "$DIR/etc/plugstack.conf"
  awk -v acct="$ACCT" '{ if ($0 == "@ACCOUNTING@") print acct; else print }' "$HERE/slurm.conf.in" |
    sed -e "s|@DIR@|$DIR|g" -e "s|@HOST@|$HOST|g" -e "s|@NODE@|$NODE|g" -e "s|@CPUS@|$CPUS|g" \
        -e "s|@MEM@|$MEM|g" -e "s|@GRES@|$GRES|g" -e "s|@GRACE@|$GRACE|g" -e "s|@LOW@|$LOW|g" \
        -e "s|@HIGH@|$HIGH|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
    > "$SLURM_CONF"
  if [ "$ACCOUNTING" = 1 ]; then
    sed -e "s|@DIR@|$DIR|g" -e "s|@HOST@|$HOST|g" -e "s|@DBD_PORT@|$DBD_PORT|g" \
        -e "s|@DB_PORT@|$DB_PORT|g" "$HERE/slurmdbd.conf.in" > "$DIR/etc/slurmdbd.conf"
    chmod 600 "$DIR/etc/slurmdbd.conf"
  fi
  echo "wrote $SLURM_CONF (node $NODE: CPUs=$CPUS RealMemory=$MEM gpus=$GPUS, partitions $LOW* $HIGH, accounting=$ACCOUNTING)"
fi

wait_for() {  # wait_for <seconds> <what> <command...>
  local t=$1 what=$2 end; shift 2
  end=$(($(date +%s) + t))
  while [ "$(date +%s)" -lt "$end" ]; do
    if declare -F "$1" > /dev/null; then "$@" > /dev/null 2>&1 && return 0
    else timeout 10 "$@" > /dev/null 2>&1 && return 0; fi
    sleep 0.1
  done
  die "$what not ready after ${t}s (logs in $DIR/log, $DIR/munge)"
}

# ------------------------------------------------------------------ daemons
if ! running munged; then
  runuser -u munge -- /usr/sbin/munged --socket="$DIR/munge/munge.socket.2" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed" 9>&- \
    || die "munged failed to start (log: $DIR/munge/munged.log)"
  wait_for 10 munged munge -n --socket="$DIR/munge/munge.socket.2"
  echo "started munged (pid $(daemon_pid munged)) at $(elapsed)"
fi

if [ "$ACCOUNTING" = 1 ]; then
  DBSOCK="$DIR/db/mysqld.sock"
  if ! running mariadbd; then
    if [ ! -d "$DIR/db/data/mysql" ]; then
      mkdir -p "$DIR/db/data"
      /usr/bin/mariadb-install-db --no-defaults --user=root --datadir="$DIR/db/data" \
        --auth-root-authentication-method=normal --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed (log: $DIR/log/mariadb-install.log)"
    fi
    # mariadbd does not fork: detach it; it writes its own pid file
    setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$DIR/db/data" \
      --socket="$DBSOCK" --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadb.log" \
      --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
      --innodb-buffer-pool-size=32M --innodb-log-file-size=16M < /dev/null > /dev/null 2>&1 9>&- &
    wait_for 30 mariadbd /usr/bin/mariadb --no-defaults --socket="$DBSOCK" -uroot -e 'select 1'
    /usr/bin/mariadb --no-defaults --socket="$DBSOCK" -uroot -e "
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "cannot create the slurm db user"
    echo "started mariadbd (pid $(daemon_pid mariadbd)) at $(elapsed)"
  fi
  if ! running slurmdbd; then
    /usr/sbin/slurmdbd 9>&- || die "slurmdbd failed to start (log: $DIR/log/slurmdbd.log)"
    wait_for 30 slurmdbd sacctmgr -n list cluster
    echo "started slurmdbd (pid $(daemon_pid slurmdbd)) at $(elapsed)"
  fi
fi

if ! running slurmctld; then
  /usr/sbin/slurmctld -i -f "$SLURM_CONF" 9>&- || die "slurmctld failed to start (log: $DIR/log/slurmctld.log)"
  wait_for 10 slurmctld daemon_pid slurmctld
  wait_for 20 slurmctld scontrol ping
  echo "started slurmctld (pid $(daemon_pid slurmctld)) at $(elapsed)"
fi
if ! running slurmd; then
  /usr/sbin/slurmd -f "$SLURM_CONF" 9>&- || die "slurmd failed to start (log: $DIR/log/slurmd.log)"
  wait_for 10 slurmd daemon_pid slurmd
  echo "started slurmd (pid $(daemon_pid slurmd)) at $(elapsed)"
fi

node_state() { scontrol show node -o "$NODE" 2>/dev/null | sed -n 's/.* State=\([^ ]*\).*/\1/p'; }
for ((i = 0; i < 300; i++)); do
  st=$(node_state)
  case "$st" in
    IDLE|MIXED|ALLOCATED) break ;;
    *DRAIN*|DOWN*)  # e.g. a drain kept in the state folder from an earlier GPU-count mismatch
      if [ -z "${resumed:-}" ]; then
        echo "node $NODE is $st ($(scontrol show node "$NODE" | sed -n 's/^ *Reason=//p')): resuming"
        scontrol update nodename="$NODE" state=resume || true
        resumed=1
      fi ;;
  esac
  sleep 0.1
done
case "$st" in IDLE|MIXED|ALLOCATED) ;; *) die "node $NODE is '$st' after 30s (logs in $DIR/log)" ;; esac
echo "cluster up in $(elapsed): node $NODE $st"
print_env
sinfo
