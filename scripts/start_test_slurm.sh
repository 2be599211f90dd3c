#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for tests: munged, slurmctld and slurmd
# from Debian's slurm-wlm and munge packages, state in a temporary folder. Prints the path
# of the slurm.conf it wrote; export SLURM_CONF to it. Needs root (SlurmUser=root).
set -euo pipefail
STATE="${1:-$(mktemp -d /tmp/test-slurm.XXXXXX)}"
mkdir -p "$STATE"/{spool,state,log}
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
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF"
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
