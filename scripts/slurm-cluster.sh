#!/usr/bin/env bash
# A real single-node Slurm cluster (munged + slurmctld + slurmd, no systemd) in a private folder, for the
# tests and for trying the sbatch script on a laptop. Debian packages: slurmctld slurmd slurm-client munge.
#
#   scripts/slurm-cluster.sh start    # prints: export SLURM_CONF=...
#   scripts/slurm-cluster.sh stop
#   scripts/slurm-cluster.sh status
#
# SLURM_LOCAL_DIR chooses the folder (default target/slurm); SLURM_LOCAL_CPUS the CPUs the node advertises
# (default 8: more tasks than cores, as config_overrides allows); SLURM_LOCAL_PORT the slurmctld port (slurmd
# takes the next one; default: the first free pair from 16817, so a second cluster in another folder runs
# beside the first). Runs as the current user (root in CI).
#
# No accounting database: `sacct` has nothing to show here; `scontrol show job` reports a job's state and exit
# code for 10 minutes after it ends (MinJobAge).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SLURM_LOCAL_DIR:-$root/target/slurm}
cpus=${SLURM_LOCAL_CPUS:-8}
conf=$dir/slurm.conf
user=$(id -un)

stop() {
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$pidfile"
    fi
  done
}

case "${1:-start}" in
start)
  stop
  port=${SLURM_LOCAL_PORT:-$("$root/scripts/free-port.py" 16817 2)}
  rm -rf "$dir/state" "$dir/spool"
  mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
  chmod 700 "$dir/munge"
  [ -f "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key"
  chmod 600 "$dir/munge/munge.key"
  munged --force --socket="$dir/munge/munge.sock" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munge.seed" --log-file="$dir/log/munged.log"
  cat > "$conf" <<EOF
ClusterName=chatspace
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.sock
SlurmUser=$user
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
KillWait=10
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$conf
  slurmctld -c
  slurmd -N localhost
  for _ in $(seq 100); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then
      echo "export SLURM_CONF=$conf"
      exit 0
    fi
    sleep 0.2
  done
  echo "slurm did not come up; logs in $dir/log" >&2
  tail -n 20 "$dir/log/"*.log >&2 || true
  exit 1
  ;;
stop) stop ;;
status) SLURM_CONF=$conf sinfo ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
