#!/usr/bin/env bash
# What ci/slurm/up.sh started and whether SLURM answers. Read-only; exit 0 when all daemons run.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

rc=0
for entry in "${DAEMONS[@]}"; do
  IFS=: read -r name comm own <<<"$entry"
  if pidfile_alive "$STATE_DIR/$name.pid" "$comm"; then
    echo "$name: running (pid $(<"$STATE_DIR/$name.pid"))"
  else
    echo "$name: not running"; rc=1
  fi
done
if command -v sinfo >/dev/null 2>&1; then
  timeout 10 sinfo -o '%P %a %D %t %c %m %G %E' || rc=1
  timeout 10 squeue || true
  timeout 10 sacct -X -S now-1hour -o JobID,JobName%12,Partition,Account,AllocTRES%30,State,ExitCode 2>/dev/null | tail -n 8 || true
fi
exit $rc
