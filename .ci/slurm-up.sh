#!/usr/bin/env bash
# Install (if needed) and start a single-node Slurm cluster on this machine: munge auth, no accounting, no
# cgroups, no systemd (slurm.conf with proctrack/linuxproc, task/none). Needs root, Debian. State under $SLURM_DIR.
set -euo pipefail
SLURM_DIR=${SLURM_DIR:-/tmp/slurm}
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/^MemTotal/{print $2}' /proc/meminfo) / 1024 * 85 / 100 ))
export DEBIAN_FRONTEND=noninteractive

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  PKGS="slurmctld slurmd slurm-client munge"
  apt-get install -y -qq --no-install-recommends $PKGS >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $PKGS >/dev/null; }
fi

mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge /var/log/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.2; done
fi
(munge -n | unmunge) >/dev/null || { echo "munge not working" >&2; exit 1; }

for d in slurmd slurmctld; do  # daemons left by an earlier run of this script
  if [ -s "$SLURM_DIR/$d.pid" ] && kill -0 "$(cat "$SLURM_DIR/$d.pid")" 2>/dev/null; then
    kill "$(cat "$SLURM_DIR/$d.pid")"; sleep 1
  fi
done
rm -rf "$SLURM_DIR/state" "$SLURM_DIR/spool"
mkdir -p "$SLURM_DIR/state" "$SLURM_DIR/spool" "$SLURM_DIR/log" /etc/slurm

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=${SLURM_DIR}/state
SlurmdSpoolDir=${SLURM_DIR}/spool
SlurmctldPidFile=${SLURM_DIR}/slurmctld.pid
SlurmdPidFile=${SLURM_DIR}/slurmd.pid
SlurmctldLogFile=${SLURM_DIR}/log/slurmctld.log
SlurmdLogFile=${SLURM_DIR}/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
DependencyParameters=kill_invalid_depend
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

nohup slurmctld -D > "$SLURM_DIR/log/slurmctld.stdout" 2>&1 &
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
nohup slurmd -D > "$SLURM_DIR/log/slurmd.stdout" 2>&1 &
for _ in $(seq 120); do
  [ "$(sinfo -h -n "$NODE" -o %T 2>/dev/null)" = idle ] && break
  sleep 0.5
done
[ "$(sinfo -h -n "$NODE" -o %T)" = idle ] || { tail -n 30 "$SLURM_DIR"/log/*.log >&2; exit 1; }
echo "slurm: node $NODE idle"
