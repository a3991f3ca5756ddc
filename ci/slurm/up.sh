#!/usr/bin/env bash
# Bring up a real one-node SLURM cluster on localhost for ulbc's SLURM tests (tests/test_slurm.py).
#
#   bash ci/slurm/up.sh       # install (Debian 12 packages), configure, start, smoke-test
#   bash ci/slurm/status.sh   # what runs, sinfo/squeue, recent sacct lines
#   bash ci/slurm/down.sh     # stop what up.sh started
#
# Debian 12's slurm-wlm 22.05 (slurmctld, slurmd, slurm-client, slurmdbd), munge and MariaDB.
# Every daemon is started by hand in the background (no systemd needed) and listens on loopback
# only: slurmctld 6817, slurmd 6818, slurmdbd 6819, MariaDB 127.0.0.1:3306. Node `localhost`,
# partitions `main` (default) and `short`, account `ulbc` for root and the calling user, and
# one fake GPU (gres/gpu on /dev/null; ULBC_SLURM_FAKE_GPUS=0 turns it off) so that GPU requests run.
#
# Idempotent: when everything already runs with the same configuration, it only re-runs the smoke
# test (a few seconds); a changed configuration restarts the SLURM daemons.
# Exit status: 0 ready, 1 failed, 2 this machine cannot host it (not root and no passwordless sudo,
# no apt-get for missing packages). Every wait is bounded.
#
# Environment (all optional): ULBC_SLURM_USERS="u1 u2" (more users to register),
# ULBC_SLURM_CLUSTER / ULBC_SLURM_ACCOUNT (both "ulbc"), ULBC_SLURM_FAKE_GPUS (1; 0 = no GRES),
# ULBC_SLURM_SKIP_APT_UPDATE=1 (package lists are fresh), ULBC_SLURM_DB_PASS.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

ensure_root "$@"

# ------------------------------------------------------------------------------------------------
install_packages() {
  local p missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
  done
  if (( ${#missing[@]} == 0 )); then log "packages already installed"; return 0; fi
  command -v apt-get >/dev/null 2>&1 || cannot_run "packages missing (${missing[*]}) and no apt-get"
  log "installing ${missing[*]} (apt-get, --no-install-recommends)"
  # Maintainer scripts call invoke-rc.d to start the daemons; forbid that (exit 101) so that
  # nothing starts behind our back with Debian's default configuration.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, from ulbc ci/slurm/up.sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local aptlog=/tmp/ulbc-slurm-apt.log
  export DEBIAN_FRONTEND=noninteractive
  if [[ -z ${ULBC_SLURM_SKIP_APT_UPDATE:-} ]]; then
    timeout 600 apt-get update -q -o Dpkg::Use-Pty=0 > "$aptlog" 2>&1 \
      || { tail -n 20 "$aptlog" >&2; die "apt-get update failed (log: $aptlog)"; }
  fi
  timeout 1200 apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "${APT_PACKAGES[@]}" \
    >> "$aptlog" 2>&1 || { tail -n 30 "$aptlog" >&2; die "apt-get install failed (log: $aptlog)"; }
  grep -E '^(Need to get|[0-9]+ upgraded)' "$aptlog" | sed 's/^/    apt: /' || true
  if (( own_policy )); then rm -f "$policy"; trap - EXIT; fi
}

# ------------------------------------------------------------------------------------------------
# Configuration files. write_conf PATH MODE OWNER < content: replace PATH only when the content
# differs; CHANGED lists what was rewritten (so that running daemons are restarted).
CHANGED=()
write_conf() {
  local path=$1 mode=$2 owner=$3 tmp
  tmp=$(mktemp "$path.XXXXXX")
  cat > "$tmp"
  chmod "$mode" "$tmp"; chown "$owner" "$tmp"
  if [[ -f $path ]] && cmp -s "$tmp" "$path"; then rm -f "$tmp"; return 0; fi
  mv -f "$tmp" "$path"
  CHANGED+=("$path")
}

write_configs() {
  local hw cpus boards sockets cores threads mem gres_node="" gres_types=""
  # The hardware as slurmd detects it; RealMemory under the total so that the node never drains
  # for "Low RealMemory".
  hw=$(slurmd -C | head -n 1)
  field() { sed -nE "s/.*[[:space:]]$1=([0-9]+).*/\1/p" <<<"$hw"; }
  cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
  cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore)
  [[ -n $cpus && -n $cores ]] || die "cannot parse 'slurmd -C': $hw"
  mem=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
  [[ $SLURM_FAKE_GPUS == 0 || $SLURM_FAKE_GPUS == 1 ]] \
    || die "ULBC_SLURM_FAKE_GPUS must be 0 or 1 (got '$SLURM_FAKE_GPUS')"
  if (( SLURM_FAKE_GPUS > 0 )); then
    gres_types="GresTypes=gpu"
    gres_node="Gres=gpu:${SLURM_FAKE_GPUS}"
  fi
  install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld "$LOG_DIR"
  install -d -m 0755 /var/spool/slurmd /etc/slurm

  write_conf /etc/slurm/slurm.conf 0644 root:root <<EOF
$MARKER
ClusterName=${SLURM_CLUSTER}
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroup plugins: works without systemd and with any cgroup layout.
ProctrackType=proctrack/linuxproc
# task/affinity, not task/none: the jobstep plugin runs 'srun --cpu-bind=q'.
TaskPlugin=task/affinity
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Memory is consumable: a job without --mem would otherwise take the whole node.
DefMemPerCPU=1000
# Finished jobs stay visible to squeue/scontrol for 5 minutes.
MinJobAge=300
# Seconds between SIGTERM and SIGKILL for cancelled or timed-out jobs (default 30).
KillWait=5
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
MailProg=/bin/true
${gres_types}
NodeName=localhost NodeAddr=127.0.0.1 CPUs=${cpus} Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores} ThreadsPerCore=${threads:-1} RealMemory=${mem} ${gres_node} State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=localhost MaxTime=01:00:00 State=UP
EOF

  if (( SLURM_FAKE_GPUS > 0 )); then
    # The GPU's "device file" is /dev/null: slurmd counts GPUs by their files (a Count without a
    # File is reported as 0 and the node goes INVAL), nothing opens it, and without cgroup plugins
    # nothing confines devices. Jobs that ask for it get CUDA_VISIBLE_DEVICES=0.
    write_conf /etc/slurm/gres.conf 0644 root:root <<EOF
$MARKER
AutoDetect=off
NodeName=localhost Name=gpu File=/dev/null
EOF
  else
    write_conf /etc/slurm/gres.conf 0644 root:root <<EOF
$MARKER
EOF
  fi

  # slurmdbd refuses a config that others can read.
  write_conf /etc/slurm/slurmdbd.conf 0600 slurm:slurm <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
LogFile=${LOG_DIR}/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=${DB_PASS}
StorageLoc=slurm_acct_db
EOF

  # Loopback only, and the InnoDB values slurmdbd 22.05 asks for in its log.
  install -d -m 0755 /etc/mysql/mariadb.conf.d
  write_conf /etc/mysql/mariadb.conf.d/99-ulbc-slurmdbd.cnf 0644 root:root <<EOF
$MARKER
[mysqld]
bind-address             = 127.0.0.1
innodb_buffer_pool_size  = 256M
innodb_lock_wait_timeout = 900
innodb_log_file_size     = 64M
EOF
  log "node localhost: CPUs=$cpus RealMemory=${mem}MB fake GPUs=$SLURM_FAKE_GPUS"
  if (( ${#CHANGED[@]} )); then log "configuration written: ${CHANGED[*]}"; fi
}

# ------------------------------------------------------------------------------------------------
record() { install -d -m 0755 "$STATE_DIR"; cp "$2" "$STATE_DIR/$1.pid"; }

# stop_daemon NAME COMM PIDFILE: TERM, then KILL after 15 s (used for restarts on config changes).
stop_daemon() {
  local name=$1 comm=$2 pidfile=$3 pid i
  pidfile_alive "$pidfile" "$comm" || { rm -f "$STATE_DIR/$name.pid"; return 0; }
  pid=$(tr -dc 0-9 < "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do pid_alive "$pid" "$comm" || break; sleep 0.3; done
  pid_alive "$pid" "$comm" && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$STATE_DIR/$name.pid" "$pidfile"
  log "$name stopped for a restart (pid $pid)"
}

restart_if_reconfigured() {
  local c slurm=0 db=0 maria=0
  for c in "${CHANGED[@]}"; do
    case $c in
      */slurm.conf|*/gres.conf) slurm=1 ;;
      */slurmdbd.conf) db=1 ;;
      */99-ulbc-slurmdbd.cnf) maria=1 ;;
    esac
  done
  if (( slurm || db || maria )); then
    stop_daemon slurmd slurmd /run/slurmd.pid
    stop_daemon slurmctld slurmctld /run/slurmctld.pid
  fi
  if (( db || maria )); then stop_daemon slurmdbd slurmdbd /run/slurmdbd.pid; fi
  if (( maria )); then stop_daemon mariadbd mariadbd /run/mysqld/mysqld.pid; fi
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; fi
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  if pidfile_alive /run/munge/munged.pid munged; then log "munged already running"
  else runuser -u munge -- /usr/sbin/munged; log "munged started"; fi
  wait_for 20 "a munge credential round trip" /var/log/munge/munged.log bash -c 'munge -n | unmunge'
  record munged /run/munge/munged.pid
}

start_mariadb() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql > /tmp/ulbc-slurm-mariadb-install.log 2>&1 \
      || { tail -n 20 /tmp/ulbc-slurm-mariadb-install.log >&2; die "mariadb-install-db failed"; }
  fi
  if pidfile_alive /run/mysqld/mysqld.pid mariadbd; then log "mariadbd already running"; else
    # mariadbd does not daemonize itself: start it in a session of its own, or it dies with the
    # caller's process group (seen when the shell that ran up.sh was torn down).
    setsid nohup /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
      > "$LOG_DIR/mariadbd.log" 2>&1 < /dev/null &
    log "mariadbd started"
  fi
  wait_for 60 "MariaDB to answer" "$LOG_DIR/mariadbd.log" mariadb-admin ping
  wait_for 10 "MariaDB's pid file" "" test -s /run/mysqld/mysqld.pid
  record mariadbd /run/mysqld/mysqld.pid
  mariadb <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
  if pidfile_alive /run/slurmdbd.pid slurmdbd; then log "slurmdbd already running"
  else /usr/sbin/slurmdbd; log "slurmdbd started"; fi
  wait_for 60 "slurmdbd to answer sacctmgr" "$LOG_DIR/slurmdbd.log" sacctmgr -n list cluster
  record slurmdbd /run/slurmdbd.pid
}

setup_accounts() {
  # Adding what exists already only prints "Nothing new added" (exit 0 or 1 by version).
  sacctmgr -i add cluster "$SLURM_CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i add account "$SLURM_ACCOUNT" Cluster="$SLURM_CLUSTER" Description="ulbc CI" Organization=ulbc >/dev/null 2>&1 || true
  local u users=(root) seen=" "
  [[ -n ${SUDO_USER:-} && ${SUDO_USER} != root ]] && users+=("$SUDO_USER")
  [[ -n ${USER:-} && ${USER} != root ]] && users+=("$USER")
  # shellcheck disable=SC2206
  users+=(${ULBC_SLURM_USERS:-})
  for u in "${users[@]}"; do
    [[ $seen == *" $u "* ]] && continue
    seen+="$u "
    if ! id "$u" >/dev/null 2>&1; then warn "no Unix user '$u'; not registered"; continue; fi
    sacctmgr -i add user "$u" DefaultAccount="$SLURM_ACCOUNT" Account="$SLURM_ACCOUNT" Cluster="$SLURM_CLUSTER" >/dev/null 2>&1 || true
  done
  local have
  have=$(sacctmgr -n -P list assoc cluster="$SLURM_CLUSTER" account="$SLURM_ACCOUNT" format=user | sort -u | xargs)
  [[ $have == *root* ]] || die "account '$SLURM_ACCOUNT' has no association for root (sacctmgr says: $have)"
  log "account '$SLURM_ACCOUNT' users: $have"
}

start_slurm() {
  if pidfile_alive /run/slurmctld.pid slurmctld; then log "slurmctld already running"
  else /usr/sbin/slurmctld; log "slurmctld started"; fi
  wait_for 30 "slurmctld to answer 'scontrol ping'" "$LOG_DIR/slurmctld.log" \
    bash -c 'scontrol ping | grep -q "is UP"'
  # NodeName=localhost is not the machine's hostname: tell slurmd which node it is.
  if pidfile_alive /run/slurmd.pid slurmd; then log "slurmd already running"
  else /usr/sbin/slurmd -N localhost; log "slurmd started"; fi
  wait_for 30 "node localhost to be usable" "$LOG_DIR/slurmd.log" \
    bash -c 'sinfo -h -n localhost -o %t | grep -qE "^(idle|mix|alloc|drain|drng)"'
  record slurmctld /run/slurmctld.pid
  record slurmd /run/slurmd.pid
  # A previous test may have left the node drained: make it schedulable.
  local state
  state=$(sinfo -h -n localhost -o %t | head -n 1)
  if [[ $state == drain* || $state == drng* || $state == down* ]]; then
    scontrol update nodename=localhost state=resume
    log "node was '$state'; resumed"
  fi
}

# ------------------------------------------------------------------------------------------------
# Submit a CPU job (and a GPU job when fake GPUs are configured); wait until sacct, i.e. slurmdbd
# and MariaDB, reports them COMPLETED.
smoke_test() {
  local dir ids=() id state end
  dir=$(mktemp -d /tmp/ulbc-slurm-smoke.XXXXXX)
  chmod 0755 "$dir"
  ids+=("$(sbatch --parsable -J ulbc-smoke -A "$SLURM_ACCOUNT" -p main -t 1 --mem 100 \
            -o "$dir/cpu.out" --wrap 'echo ok host=$(hostname)')")
  if (( SLURM_FAKE_GPUS > 0 )); then
    ids+=("$(sbatch --parsable -J ulbc-smoke-gpu -A "$SLURM_ACCOUNT" -p main -t 1 --mem 100 --gpus=1 \
              -o "$dir/gpu.out" --wrap 'echo ok gpus=${SLURM_GPUS_ON_NODE:-?} cuda=${CUDA_VISIBLE_DEVICES:-unset}')")
  fi
  end=$(( $(date +%s) + 90 ))
  for id in "${ids[@]}"; do
    id=${id%%;*}
    while :; do
      state=$(sacct -X -n -P -j "$id" -o State 2>/dev/null | head -n 1)
      [[ $state == COMPLETED ]] && break
      case $state in FAILED*|CANCELLED*|TIMEOUT*|NODE_FAIL*|OUT_OF_MEMORY*|BOOT_FAIL*)
        cat "$dir"/*.out 2>/dev/null >&2 || true
        die "smoke job $id ended $state (see $LOG_DIR/slurmctld.log, slurmd.log)" ;;
      esac
      if (( $(date +%s) >= end )); then
        squeue >&2 || true; scontrol show job "$id" >&2 || true
        die "smoke job $id not COMPLETED in sacct after 90 s (state: '${state:-not in sacct}')"
      fi
      sleep 0.5
    done
    log "smoke job: $(sacct -X -n -P -j "$id" -o JobID,Account,AllocTRES,State,ExitCode)"
  done
  grep -q '^ok' "$dir/cpu.out" || die "smoke job wrote no output to $dir/cpu.out"
  if (( SLURM_FAKE_GPUS > 0 )); then log "GPU smoke job output: $(cat "$dir/gpu.out")"; fi
  rm -rf "$dir"
}

main() {
  grep -q 'VERSION_ID="12"' /etc/os-release 2>/dev/null || warn "not Debian 12; trying anyway"
  install_packages
  write_configs
  restart_if_reconfigured
  start_munge
  start_mariadb
  start_slurmdbd
  setup_accounts
  start_slurm
  smoke_test
  log "SLURM ready: $(sinfo --version), cluster '$SLURM_CLUSTER', account '$SLURM_ACCOUNT'"
  sinfo -o '%P %a %D %t %c %m %G' | sed 's/^/    /'
  printf '    pids:'; for f in "$STATE_DIR"/*.pid; do printf ' %s=%s' "$(basename "$f" .pid)" "$(<"$f")"; done; echo
  log "stop with: bash ci/slurm/down.sh"
}

main "$@"
