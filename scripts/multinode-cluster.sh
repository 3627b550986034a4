#!/usr/bin/env bash
# An emulated multi-node Slurm + MPI cluster on one Linux machine, for the tests and for trying multi-node jobs
# without a cluster. Each node is a set of Linux namespaces: its own network (a veth on a private bridge, its
# own IP), hostname, /etc/hosts, /tmp and /dev/shm, and its own slurmd; one slurmctld ("head") and one munged
# serve them all. The rest of the file system (this checkout, /usr) is shared, as a cluster's NFS or Lustre
# is: keep binaries, data and output roots there, never in /tmp (each node has its own /tmp).
# Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), iproute2, util-linux, Slurm and munge (scripts/setup-debian.sh).
#
#   scripts/multinode-cluster.sh start [N]     N nodes node1..nodeN (default 3); prints the exports clients need
#   scripts/multinode-cluster.sh status        sinfo and the namespaces
#   scripts/multinode-cluster.sh env           the exports: SLURM_CONF, and the mpirun launch agent
#   scripts/multinode-cluster.sh exec NODE CMD...   runs CMD on NODE (head, node1, ...), like ssh NODE CMD
#   scripts/multinode-cluster.sh link NODE up|down  connects or cuts NODE's network (fault injection)
#   scripts/multinode-cluster.sh down          stops every process, removes every namespace and link
#
# Without Slurm: mpirun --mca plm_rsh_agent DIR/bin/node-ssh --host node1:2,node2:2 ... (or `eval "$(... env)"`).
#
# MULTINODE_DIR chooses the folder (default target/multinode). Each folder is its own cluster: a second copy
# in another folder takes the next free instance number, and with it its own bridge (csmnI), namespaces and
# links (csmnI-nodeK, csmnIvK), subnet (10.79.I.0/24) and slurmctld port; nothing here collides with
# scripts/slurm-cluster.sh (127.0.0.1, ports from 16817). `start` on a running cluster with the same N is a
# no-op; with another N it restarts it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${MULTINODE_DIR:-$root/target/multinode}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/etc/slurm.conf
sock=$dir/munge/munge.socket
export SLURM_CONF=$conf
# Marks every process this folder starts (daemons, node holders), so a later start can find the ones a folder
# deleted before its `down` left running.
export CHATSPACE_MULTINODE=$dir

# A process that exists and is not a zombie (daemons are reparented to PID 1, which may reap late).
running() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ]
}
alive() { # alive PIDFILE [COMM]
  [ -s "$1" ] || return 1
  local p
  p=$(cat "$1")
  running "$p" && { [ -z "${2:-}" ] || [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ]; }
}

# Everything on this machine under instance I's names: the processes in its node namespaces, the namespaces,
# the veths and the bridge; with OWNER, also every process marked as started for folder OWNER.
clear_instance() { # I [OWNER]
  local i=$1 owner=${2:-} ns p l
  if [ -n "$owner" ]; then
    for p in /proc/[0-9]*; do
      if tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qxF "CHATSPACE_MULTINODE=$owner"; then
        kill -9 "${p#/proc/}" 2>/dev/null || true
      fi
    done
  fi
  for ns in $(ip netns list | awk -v pre="csmn$i-" 'index($1, pre) == 1 { print $1 }'); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  for l in $(ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | grep -E "^csmn${i}(v[0-9]+)?$"); do
    ip link del "$l" 2>/dev/null || true
  done
}

# The instance number of this folder: claimed in /run/chatspace-multinode until `down`; a claim whose folder no
# longer names it is stale and taken over. Claims are made under an flock of $claims/.lock: a claimer writes
# the claim and then the folder's instance file, so without the lock a second `start` in between would see a
# claim whose folder does not name it yet, take it as stale, and both folders would share one bridge.
claims=/run/chatspace-multinode
instance() {
  if [ -s "$dir/instance" ] && [ "$(cat "$claims/$(cat "$dir/instance")" 2>/dev/null)" = "$dir" ]; then
    cat "$dir/instance"
    return
  fi
  mkdir -p "$claims"
  local i owner
  {
    flock 9
    for i in $(seq 0 99); do
      owner=$(cat "$claims/$i" 2>/dev/null || true)
      if [ -n "$owner" ] && [ "$(cat "$owner/instance" 2>/dev/null)" != "$i" ]; then
        rm -f "$claims/$i"
      fi
      # Its processes are killed only when the folder is gone (one still there may run another instance now).
      [ -n "$owner" ] && [ ! -e "$owner" ] || owner=""
      if (set -o noclobber; echo "$dir" > "$claims/$i") 2>/dev/null; then
        clear_instance "$i" "$owner" # what a stale claim's cluster left (a folder deleted before its `down`)
        echo "$i" > "$dir/instance"
        echo "$i"
        return
      fi
    done
  } 9> "$claims/.lock"
  echo "multinode-cluster: no free instance number in $claims" >&2
  exit 1
}

nodes() { cat "$dir/etc/nodes" 2>/dev/null || true; }

# Runs a command inside a node's namespaces, in the caller's folder (entering a mount namespace resets it).
on_node() {
  local n=$1
  shift
  alive "$dir/run/holder-$n.pid" || { echo "multinode-cluster: no node $n (is the cluster up?)" >&2; return 1; }
  nsenter -t "$(cat "$dir/run/holder-$n.pid")" -u -n -m -- /bin/sh -c 'cd "$0" 2>/dev/null; exec "$@"' "$PWD" "$@"
}

# A node's namespaces are held by a `sleep` that set them up: hostname, the cluster's /etc/hosts, a private /tmp
# and /dev/shm. `nsenter --net`, not `ip netns exec`: the latter remounts /sys and slurmd then finds no cgroup fs.
start_holder() { # NAME NETNS|-
  local n=$1 ns=$2 pf=$dir/run/holder-$1.pid pre=() local_fs=""
  alive "$pf" sleep && return 0
  if [ "$ns" != - ]; then
    pre=(nsenter "--net=/run/netns/$ns")
    mkdir -p "$dir/nodes/$n/tmp"
    chmod 1777 "$dir/nodes/$n/tmp"
    # A shared /tmp breaks srun --mpi=pmix (both nodes' slurmstepd create /tmp/spmix_appdir_*).
    local_fs="mount -t tmpfs -o size=1g,mode=1777 csmn-shm-$n /dev/shm; mount --bind $dir/nodes/$n/tmp /tmp;"
    # The checkout and the cluster folder stay shared when they live under /tmp: the host's /tmp is staged at
    # /mnt before the node's own goes over it, and each is bound back at its path.
    local p reexpose=""
    for p in "$root" "$dir"; do
      case "$p" in /tmp/*) reexpose="$reexpose mkdir -p $p && mount --bind /mnt/${p#/tmp/} $p;" ;; esac
    done
    [ -z "$reexpose" ] || local_fs="mount --bind /tmp /mnt; $local_fs $reexpose umount -l /mnt;"
  fi
  setsid "${pre[@]}" unshare --uts --mount --propagation private \
    sh -c "hostname $n; mount --bind $dir/etc/hosts /etc/hosts; $local_fs echo \$\$ > $pf; exec sleep infinity" \
    </dev/null >/dev/null 2>&1 &
  for _ in $(seq 100); do alive "$pf" sleep && return 0; sleep 0.05; done
  echo "multinode-cluster: node $n did not start" >&2
  return 1
}

write_conf() { # N I
  local n=$1 i=$2 k port net=10.79.$2
  port=$("$root/scripts/free-port.py" $((17900 + 10 * i)) 2 0.0.0.0)
  mkdir -p "$dir/etc"
  {
    echo "127.0.0.1 localhost"
    echo "$net.1 head"
    for k in $(seq "$n"); do echo "$net.$((10 + k)) node$k"; done
  } > "$dir/etc/hosts"
  seq -f 'node%g' 1 "$n" > "$dir/etc/nodes"
  cat > "$conf" <<EOF
# Emulated multi-node cluster (scripts/multinode-cluster.sh), instance $i
ClusterName=csmn$i
SlurmctldHost=head($net.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/slurmd-%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
KillWait=30
MinJobAge=600
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
SlurmdParameters=config_overrides
EOF
  for k in $(seq "$n"); do
    echo "NodeName=node$k NodeAddr=$net.$((10 + k)) NodeHostname=node$k CPUs=4 Sockets=1 CoresPerSocket=4 ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN" >> "$conf"
  done
  echo "PartitionName=debug Nodes=node[1-$n] Default=YES MaxTime=INFINITE State=UP" >> "$conf"
  # An ssh stand-in for Open MPI's rsh launcher: node-ssh [ssh options] HOST CMD...
  mkdir -p "$dir/bin"
  cat > "$dir/bin/node-ssh" <<EOF
#!/bin/sh
while [ \$# -gt 0 ]; do case "\$1" in -o|-l|-p|-i) shift 2 ;; -*) shift ;; *) break ;; esac; done
h=\$1; shift
pf=$dir/run/holder-\$h.pid
[ -s "\$pf" ] || { echo "node-ssh: unknown host \$h" >&2; exit 255; }
exec nsenter -t "\$(cat "\$pf")" -u -n -m -- /bin/sh -c "cd '\$PWD' 2>/dev/null; \$*"
EOF
  chmod 755 "$dir/bin/node-ssh"
}

stop_pids() { # PIDFILE:COMM...: TERM together, wait up to 10 s, then KILL
  local e pf c ps=() p
  for e in "$@"; do
    pf=${e%:*}
    c=${e##*:}
    if alive "$pf" "$c"; then
      p=$(cat "$pf")
      ps+=("$p")
      kill "$p" 2>/dev/null || true
    fi
    rm -f "$pf"
  done
  [ ${#ps[@]} = 0 ] && return 0
  for _ in $(seq 100); do
    local left=0
    for p in "${ps[@]}"; do running "$p" && left=1; done
    [ $left = 0 ] && return 0
    sleep 0.1
  done
  for p in "${ps[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}

down() {
  local i n l=() owner
  i=$(cat "$dir/instance" 2>/dev/null || { grep -lsx "$dir" "$claims"/* 2>/dev/null || true; } | head -n 1 | xargs -r basename)
  [ -n "$i" ] || return 0
  for n in $(nodes); do l+=("$dir/run/slurmd-$n.pid:slurmd"); done
  stop_pids "${l[@]}" "$dir/run/slurmctld.pid:slurmctld" "$dir/munge/munged.pid:munged"
  # Job steps left on the nodes (everything in their network namespaces), the node holders, the network; not
  # when another folder has since claimed the number (this one's claim went stale).
  owner=$(cat "$claims/$i" 2>/dev/null || true)
  [ -n "$owner" ] && [ "$owner" != "$dir" ] || clear_instance "$i"
  stop_pids "$dir/run/holder-head.pid:sleep"
  rm -rf "$dir/state" "$dir/spool" "$dir/run" "$dir/nodes" "$dir/etc/nodes" "$conf"
  [ "$(cat "$claims/$i" 2>/dev/null)" = "$dir" ] && rm -f "$claims/$i"
  rm -f "$dir/instance"
}

up() { # N
  local n=$1 i k node t0
  case "$n" in [1-9]) ;; *) echo "multinode-cluster: 1 to 9 nodes, not '$n'" >&2; exit 2 ;; esac
  for b in ip nsenter unshare setsid flock slurmctld slurmd scontrol sinfo munged mungekey python3; do
    command -v "$b" >/dev/null || { echo "multinode-cluster: $b is missing (scripts/setup-debian.sh installs it)" >&2; exit 1; }
  done
  [ "$(id -u)" = 0 ] || { echo "multinode-cluster: needs root (network namespaces)" >&2; exit 1; }
  t0=$(date +%s.%N)
  if [ "$(nodes | wc -l)" != "$n" ] || ! alive "$dir/run/slurmctld.pid" slurmctld; then
    down
  fi
  i=$(instance)
  mkdir -p "$dir"/{etc,state,spool,log,run,munge}
  chmod 0755 "$dir" "$dir/munge"
  [ -s "$conf" ] && [ "$(nodes | wc -l)" = "$n" ] || write_conf "$n" "$i"
  local net=10.79.$i br=csmn$i
  ip link show "$br" >/dev/null 2>&1 || ip link add "$br" type bridge
  ip addr show dev "$br" | grep -q "$net.1/24" || ip addr add "$net.1/24" dev "$br"
  ip link set "$br" up
  for k in $(seq "$n"); do
    node=node$k
    [ -e "/run/netns/csmn$i-$node" ] || ip netns add "csmn$i-$node"
    if ! ip link show "csmn${i}v$k" >/dev/null 2>&1; then
      ip link add "csmn${i}v$k" type veth peer name eth0 netns "csmn$i-$node"
      ip link set "csmn${i}v$k" master "$br" up
      ip -n "csmn$i-$node" addr add "$net.$((10 + k))/24" dev eth0
      ip -n "csmn$i-$node" link set eth0 up
      ip -n "csmn$i-$node" link set lo up
    fi
  done
  start_holder head -
  for node in $(nodes); do start_holder "$node" "csmn$i-$node"; done
  if ! alive "$dir/munge/munged.pid" munged; then
    [ -s "$dir/etc/munge.key" ] || mungekey --create --keyfile="$dir/etc/munge.key"
    chmod 0400 "$dir/etc/munge.key"
    rm -f "$sock" "$sock.lock"
    munged --force --socket="$sock" --key-file="$dir/etc/munge.key" --pid-file="$dir/munge/munged.pid" \
      --seed-file="$dir/munge/munged.seed" --log-file="$dir/log/munged.log"
  fi
  alive "$dir/run/slurmctld.pid" slurmctld || on_node head env SLURM_CONF="$conf" slurmctld -c
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
  for node in $(nodes); do
    mkdir -p "$dir/spool/slurmd-$node"
    alive "$dir/run/slurmd-$node.pid" slurmd || on_node "$node" env SLURM_CONF="$conf" slurmd -N "$node"
  done
  for _ in $(seq 150); do
    local ok=1
    for node in $(nodes); do
      case "$(sinfo -h -n "$node" -o %T 2>/dev/null)" in
        idle | mixed | allocated | completing) ;;
        drain* | down*) ok=0; scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
        *) ok=0 ;;
      esac
    done
    if [ $ok = 1 ]; then
      echo "# multinode-cluster: $n nodes up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s (instance $i, $dir)"
      print_env
      return 0
    fi
    sleep 0.2
  done
  echo "multinode-cluster: nodes not idle; logs in $dir/log" >&2
  sinfo -N >&2 || true
  exit 1
}

print_env() {
  echo "export SLURM_CONF=$conf"
  echo "export OMPI_MCA_plm_rsh_agent=$dir/bin/node-ssh"
}

case "${1:-}" in
start) up "${2:-3}" ;;
down | stop) down ;;
status)
  if [ -s "$dir/instance" ] && alive "$dir/run/slurmctld.pid" slurmctld; then
    sinfo -N -o '%N %T %c'
    ip netns list | grep "^csmn$(cat "$dir/instance")-" || true
  else
    echo "multinode-cluster: down ($dir)"
  fi
  ;;
env) print_env ;;
exec)
  [ $# -ge 3 ] || { echo "usage: $0 exec NODE CMD..." >&2; exit 2; }
  node=$2
  shift 2
  on_node "$node" env SLURM_CONF="$conf" "$@"
  ;;
link)
  [ $# = 3 ] && [ -s "$dir/instance" ] || { echo "usage: $0 link NODE up|down" >&2; exit 2; }
  ip link set "csmn$(cat "$dir/instance")v${2#node}" "$3"
  ;;
*)
  sed -n '2,22p' "$0"
  exit 2
  ;;
esac
