#!/usr/bin/env bash
# Stop the one-node SLURM cluster that ci/slurm/up.sh started: cancel leftover jobs, then stop
# slurmd, slurmctld, slurmdbd, MariaDB and munged by the pids up.sh recorded (never by name).
# Zombies count as stopped (PID 1 here reaps late); stale pid files are removed, also the daemons'
# own ones (slurmctld and slurmdbd cannot delete their root-owned files, and a stale
# /run/slurmctld.pid breaks 'apt-get remove slurmctld'). Safe to run when nothing runs.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

ensure_root "$@"

# stop NAME COMM DAEMON_PIDFILE: TERM the recorded pid, KILL after 15 s, wait at most 5 s more.
stop() {
  local name=$1 comm=$2 own=$3 rec="$STATE_DIR/$1.pid" pid i
  if [[ ! -s $rec ]]; then
    if pidfile_alive "$own" "$comm"; then
      log "$name: running (pid $(tr -dc 0-9 < "$own")) but not started by up.sh; left alone"
    else
      log "$name: not running"; rm -f "$own"
    fi
    return 0
  fi
  pid=$(tr -dc 0-9 < "$rec")
  if ! pid_alive "$pid" "$comm"; then
    log "$name: pid $pid not running (stale pid file removed)"
    rm -f "$rec" "$own"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do pid_alive "$pid" "$comm" || break; sleep 0.3; done
  if pid_alive "$pid" "$comm"; then
    log "$name: pid $pid ignored SIGTERM for 15 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 1 17); do pid_alive "$pid" "$comm" || break; sleep 0.3; done
  fi
  if pid_alive "$pid" "$comm"; then warn "$name: pid $pid still alive"; return 1; fi
  log "$name: stopped (pid $pid)"
  rm -f "$rec" "$own"
}

# Jobs left in the queue would be recovered by the next start; cancel them while slurmctld answers.
if command -v squeue >/dev/null 2>&1 && timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; then
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ' || true)
  if [[ -n ${jobs// } ]]; then
    log "cancelling leftover jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 20 scancel $jobs || warn "scancel failed"
  fi
fi

rc=0
for (( i=${#DAEMONS[@]} - 1; i >= 0; i-- )); do
  IFS=: read -r name comm own <<<"${DAEMONS[$i]}"
  stop "$name" "$comm" "$own" || rc=1
done
exit $rc
