#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for tests: munged, slurmctld and slurmd
# from Debian's slurm-wlm and munge packages, state in a temporary folder. Prints the path
# of the slurm.conf it wrote; export SLURM_CONF to it. Needs root (SlurmUser=root).
#
# It never touches daemons it did not start: the PIDs of what it starts are recorded in
# STATE/pids, a second call reuses that cluster while it runs, and a SLURM daemon that is
# not ours (a real cluster on this host) makes it stop without starting anything.
# scripts/stop_test_slurm.sh STATE stops only the recorded PIDs.
set -euo pipefail
STATE="${1:-/tmp/implicit-sparsity-test-slurm}"
mkdir -p "$STATE"/{spool,state,log}
touch "$STATE/pids"

ours() {  # is PID $1 one that this script recorded, or a child of one (daemons fork)?
    local parent
    parent="$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')"
    grep -qx "$1" "$STATE/pids" 2>/dev/null \
        || { [ -n "$parent" ] && grep -qx "$parent" "$STATE/pids" 2>/dev/null; } \
        || ! kill -0 "$1" 2>/dev/null  # gone already: a short-lived helper
}
running_ours=1
for daemon in slurmctld slurmd; do
    for pid in $(pgrep -x "$daemon" || true); do
        if ! ours "$pid"; then
            echo "a $daemon that this script did not start is running (pid $pid): not touching" \
                 "this host's SLURM; start_test_slurm.sh gives up" >&2
            exit 1
        fi
    done
    pgrep -x "$daemon" >/dev/null || running_ours=0
done
if [ "$running_ours" = 1 ] && [ -s "$STATE/slurm.conf" ] \
        && SLURM_CONF="$STATE/slurm.conf" sinfo -h -o "%T" 2>/dev/null | grep -q -E "idle|mixed"; then
    echo "$STATE/slurm.conf"  # our cluster from an earlier call still answers
    exit 0
fi
# a partial cluster of ours (one daemon died): stop what is left of it, by recorded PID
for pid in $(cat "$STATE/pids"); do
    kill "$pid" 2>/dev/null || true
done
: > "$STATE/pids"
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))

# munge: a key, then the daemon as the munge user
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
    sleep 0.5
    pgrep -x munged >> "$STATE/pids" || true
fi

cat > "$STATE/slurm.conf" <<CONF
ClusterName=implicit-sparsity-test
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$STATE/slurm.conf"
slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 10); do  # the daemons write their pid files once they are up
    [ -s "$STATE/slurmctld.pid" ] && [ -s "$STATE/slurmd.pid" ] && break
    sleep 0.5
done
cat "$STATE/slurmctld.pid" "$STATE/slurmd.pid" >> "$STATE/pids" 2>/dev/null || true
for _ in $(seq 1 30); do
    if sinfo -h -o "%T" 2>/dev/null | grep -q -E "idle|mixed"; then
        echo "$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "SLURM did not come up; logs in $STATE/log" >&2
cat "$STATE"/log/*.log >&2 || true
exit 1
