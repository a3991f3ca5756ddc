# Shared helpers of ci/slurm/{up,down,status}.sh; sourced, not run.
# A one-node SLURM cluster (slurmctld + slurmd + slurmdbd/MariaDB accounting, munge auth) on the
# loopback interface, for ulbc's SLURM tests. No systemd needed: every daemon is started by hand.

SLURM_CLUSTER=${ULBC_SLURM_CLUSTER:-ulbc}
SLURM_ACCOUNT=${ULBC_SLURM_ACCOUNT:-ulbc}
# Fake GPU advertised on the node (gres/gpu backed by /dev/null): GPU requests can then be
# scheduled and run on a machine without a GPU. 0 turns GRES off; 1 is the only other value.
SLURM_FAKE_GPUS=${ULBC_SLURM_FAKE_GPUS:-1}
DB_PASS=${ULBC_SLURM_DB_PASS:-ulbc-slurmdbd-loopback-only}
# Where this project's scripts record the pids of the daemons they started.
STATE_DIR=${ULBC_SLURM_STATE_DIR:-/run/ulbc-slurm}
LOG_DIR=/var/log/slurm
APT_PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
MARKER="# written by ulbc ci/slurm/up.sh; rewritten on every run"

# name:process-name:daemon's own pid file, in start order (down stops them in reverse).
DAEMONS=(
  "munged:munged:/run/munge/munged.pid"
  "mariadbd:mariadbd:/run/mysqld/mysqld.pid"
  "slurmdbd:slurmdbd:/run/slurmdbd.pid"
  "slurmctld:slurmctld:/run/slurmctld.pid"
  "slurmd:slurmd:/run/slurmd.pid"
)

_T0=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - _T0) / 1000000 )); printf '%d.%01d' $(( ms / 1000 )) $(( (ms % 1000) / 100 )); }
log() { printf '[slurm %5ss] %s\n' "$(elapsed)" "$*"; }
warn() { printf '[slurm %5ss] WARNING: %s\n' "$(elapsed)" "$*" >&2; }
die() { printf '[slurm %5ss] ERROR: %s\n' "$(elapsed)" "$*" >&2; exit 1; }

# cannot_run MESSAGE: this machine cannot host the cluster (not root, no apt); exit status 2.
cannot_run() { printf 'ci/slurm: cannot bring SLURM up here: %s\n' "$*" >&2; exit 2; }

# pid_alive PID COMM: PID exists, is not a zombie (PID 1 here reaps late) and runs COMM.
# Reads /proc directly: minimal Debian images have no `ps`.
pid_alive() {
  local pid=$1 comm=$2 stat name
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  name=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  stat=${stat##*) }                  # the fields after "pid (comm) "; the first is the state
  [[ -n $stat && ${stat:0:1} != Z && ${stat:0:1} != X ]] || return 1
  [[ $name == "$comm"* ]]
}

# pidfile_alive FILE COMM: the pid written in FILE is alive and runs COMM.
pidfile_alive() {
  [[ -s $1 ]] || return 1
  pid_alive "$(head -c 32 "$1" | tr -dc 0-9)" "$2"
}

# wait_for SECONDS WHAT LOGFILE CMD...: poll CMD every 0.3 s; on timeout show LOGFILE's tail and die.
wait_for() {
  local timeout=$1 what=$2 logfile=$3; shift 3
  local end=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= end )); then
      if [[ -n $logfile && -r $logfile ]]; then
        echo "--- last lines of $logfile:" >&2; tail -n 20 "$logfile" >&2
      fi
      die "timed out after ${timeout}s waiting for: $what"
    fi
    sleep 0.3
  done
}

# Run as root; re-run through passwordless sudo if that is available, else exit 2.
# The calling user (if not root) is registered in the accounting DB so that it can submit jobs.
ensure_root() {
  if [[ $(id -u) == 0 ]]; then return 0; fi
  if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    local me
    me=$(id -un)
    exec sudo -n env "ULBC_SLURM_USERS=${me} ${ULBC_SLURM_USERS:-}" \
      "ULBC_SLURM_CLUSTER=$SLURM_CLUSTER" "ULBC_SLURM_ACCOUNT=$SLURM_ACCOUNT" \
      "ULBC_SLURM_FAKE_GPUS=$SLURM_FAKE_GPUS" "ULBC_SLURM_SKIP_APT_UPDATE=${ULBC_SLURM_SKIP_APT_UPDATE:-}" \
      bash "$0" "$@"
  fi
  cannot_run "not root and no passwordless sudo ('sudo -n true' failed); run it as root or with sudo"
}
