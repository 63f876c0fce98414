#!/usr/bin/env bash
# multinode.sh: a 2-node Docker Swarm on one Linux host, for the e2e suite's
# multi-node tests (make e2e-multinode). Adapted from the shared
# tools/multinode.sh recipe.
#
#   host        the existing dockerd (/var/run/docker.sock) = swarm MANAGER,
#               re-initialised to advertise $MN_HOST_IP
#   netns $MN_NS a second dockerd = swarm WORKER, advertising $MN_NS_IP, with
#               its own hostname ($MN_NS) and its own mount namespace, in which
#               /var/run/docker.sock is the worker's own socket: a container
#               on the worker that mounts the Docker socket (the prune job)
#               talks to the worker's dockerd, as on a real node.
#   veth pair   $MN_NS-h (host, $MN_HOST_IP) <-> $MN_NS-c (netns, $MN_NS_IP);
#               no default route and no NAT in the netns.
#
# The registry is not started here: the Go test serves it on 127.0.0.1 and
# forwards the same port from 127.0.0.1 inside the netns, so
# "127.0.0.1:PORT/repo" names one registry on both nodes (127.0.0.0/8 is an
# insecure registry to dockerd by default; no daemon.json change).
#
# Usage (root):
#   multinode.sh setup          idempotent; refuses to wipe a host swarm with services
#   multinode.sh teardown       idempotent; removes everything setup made and restores
#                               a single-node manager advertising $MN_RESTORE_ADVERTISE
#   multinode.sh env            KEY=VALUE lines for the test
#   multinode.sh kill-worker    SIGKILL the worker dockerd (by its pid file only)
#   multinode.sh start-worker   start the worker dockerd again (it rejoins by itself)
#
# Processes are only ever signalled through pid files this script wrote
# ($MN_WORK/*.pid) or that the worker dockerd it started wrote under its own
# exec-root, after checking /proc/PID/cmdline. The host dockerd is never signalled.
set -euo pipefail

MN_NS="${MN_NS:-updmn}"
MN_HOST_IP="${MN_HOST_IP:-10.232.0.1}"
MN_NS_IP="${MN_NS_IP:-10.232.0.2}"
MN_PREFIX="${MN_PREFIX:-24}"
MN_WORK="${MN_WORK:-/tmp/updater-multinode}"
MN_FORCE="${MN_FORCE:-0}"
MN_RESTORE_ADVERTISE="${MN_RESTORE_ADVERTISE:-127.0.0.1}"

export DOCKER_API_VERSION="${DOCKER_API_VERSION:-1.41}" # dockerd 20.10; a newer CLI negotiates down
unset DOCKER_HOST DOCKER_CONTEXT

NSPATH="/run/netns/$MN_NS"
VETH_H="${MN_NS}-h"
VETH_C="${MN_NS}-c"
W_DATA="/var/lib/docker-$MN_NS"
W_EXEC="/var/run/docker-$MN_NS"
W_SOCK="/var/run/docker-$MN_NS.sock"
W_PIDFILE="/var/run/docker-$MN_NS.pid" # written by the worker dockerd itself
W_HOST="unix://$W_SOCK"
LOCK="/run/updater-multinode-$MN_NS.lock"

log() { printf '[multinode %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
dm() { docker "$@"; }                 # manager (host dockerd)
dw() { docker -H "$W_HOST" "$@"; }    # worker
need_root() { [[ $EUID -eq 0 ]] || die "run as root"; }
take_lock() { exec 9>"$LOCK"; flock -w 300 9 || die "another multinode.sh holds $LOCK"; }

# shellcheck source=dockerd-lib.sh
source "$(dirname "$0")/dockerd-lib.sh"

# ---- network namespace ---------------------------------------------------------
setup_netns() {
  [[ -e "$NSPATH" ]] || ip netns add "$MN_NS"
  if ! ip link show "$VETH_H" >/dev/null 2>&1 || ! ip netns exec "$MN_NS" ip link show "$VETH_C" >/dev/null 2>&1; then
    ip link del "$VETH_H" >/dev/null 2>&1 || true
    ip link add "$VETH_H" type veth peer name "$VETH_C"
    ip link set "$VETH_C" netns "$MN_NS"
  fi
  ip addr replace "$MN_HOST_IP/$MN_PREFIX" dev "$VETH_H"
  ip link set "$VETH_H" up
  ip netns exec "$MN_NS" ip addr replace "$MN_NS_IP/$MN_PREFIX" dev "$VETH_C"
  ip netns exec "$MN_NS" ip link set "$VETH_C" up
  ip netns exec "$MN_NS" ip link set lo up
}

teardown_netns() {
  if [[ -e "$NSPATH" ]]; then ip netns del "$MN_NS" || log "ip netns del $MN_NS failed"; fi
  if ip link show "$VETH_H" >/dev/null 2>&1; then ip link del "$VETH_H" || true; fi
}

# ---- worker dockerd --------------------------------------------------------------
worker_pid() { pid_alive_match "$MN_WORK/worker.pid" "--exec-root $W_EXEC "; }

start_worker() {
  if worker_pid >/dev/null && dw version >/dev/null 2>&1; then return 0; fi
  if ! worker_pid >/dev/null; then
    [[ -e "$W_SOCK" ]] && ! dw version >/dev/null 2>&1 && rm -f "$W_SOCK"
    dw version >/dev/null 2>&1 && die "$W_SOCK answers but was not started by this script (no $MN_WORK/worker.pid)"
    mkdir -p "$MN_WORK"
    echo '{}' >"$MN_WORK/worker-daemon.json" # keeps the worker from reading /etc/docker/daemon.json
    log "starting worker dockerd in netns $MN_NS (log $MN_WORK/worker-dockerd.log)"
    # nsenter --net only, not `ip netns exec` (that remounts /sys and hides the
    # cgroup mounts). unshare: its own hostname (the node name) and its own
    # mount namespace (private propagation), where the worker's socket is
    # bind-mounted over /var/run/docker.sock once it exists, below. A
    # containerd that outlived a killed dockerd is reused by the next one, so
    # that one joins its namespaces instead: the "machine" is the same. Every
    # step execs, so $! is the dockerd pid.
    local enter cpid
    if cpid="$(pid_alive_match "$W_EXEC/containerd/containerd.pid" "$W_EXEC/containerd/")"; then
      enter=(nsenter --net="$NSPATH" --mount="/proc/$cpid/ns/mnt" --uts="/proc/$cpid/ns/uts" --)
    else
      enter=(nsenter --net="$NSPATH" unshare --uts --mount --propagation private --)
    fi
    (cd / && exec setsid "${enter[@]}" /bin/sh -c 'hostname "$0" && exec "$@"' "$MN_NS" \
      /usr/sbin/dockerd --config-file "$MN_WORK/worker-daemon.json" \
      --data-root "$W_DATA" --exec-root "$W_EXEC" --pidfile "$W_PIDFILE" -H "$W_HOST" \
      >>"$MN_WORK/worker-dockerd.log" 2>&1 </dev/null 9>&-) &
    echo $! >"$MN_WORK/worker.pid"
  fi
  local i
  for ((i = 0; i < 300; i++)); do
    dw version >/dev/null 2>&1 && break
    worker_pid >/dev/null || { tail -20 "$MN_WORK/worker-dockerd.log" >&2; die "worker dockerd exited"; }
    sleep 0.2
  done
  dw version >/dev/null 2>&1 || die "worker dockerd did not answer on $W_SOCK in 60s"
  # A bind mount holds the socket's inode, and a restarted dockerd makes a
  # new one: bind afresh every time.
  local pid; pid="$(worker_pid)"
  nsenter --target "$pid" --mount -- umount /var/run/docker.sock 2>/dev/null || true
  nsenter --target "$pid" --mount -- mount --bind "$W_SOCK" /var/run/docker.sock ||
    die "cannot bind the worker socket over /var/run/docker.sock in its mount namespace"
}

# kill_worker stops the worker dockerd the hard way (SIGKILL, by its pid
# file), as a node that dies would; containerd and the containers live on.
kill_worker() {
  local pid
  pid="$(worker_pid)" || die "the worker dockerd is not running"
  log "SIGKILL worker dockerd pid $pid"
  kill -KILL "$pid"
  local i
  for ((i = 0; i < 50; i++)); do alive "$pid" || return 0; sleep 0.1; done
  die "worker dockerd pid $pid did not die"
}

stop_worker() {
  local pid
  if pid="$(worker_pid)"; then
    if dw info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null | grep -qE 'active|pending|error'; then
      timeout 30 docker -H "$W_HOST" swarm leave --force >/dev/null 2>&1 || log "worker swarm leave failed (continuing)"
    fi
    log "stopping worker dockerd pid $pid"
    stop_pid "$pid" 45
  fi
  # After a dockerd that died uncleanly; its mounts live in the worker's
  # own mount namespace and went with it.
  dockerd_leftovers "$W_EXEC" "$W_DATA"
  rm -rf "$W_DATA" "$W_EXEC" "$W_SOCK" "$W_PIDFILE" "$MN_WORK/worker.pid" || log "could not remove all worker files"
  return 0
}

# ---- swarm ---------------------------------------------------------------------------
swarm_field() { dm info --format "$1" 2>/dev/null; }

# Refuses, before anything changes, to wipe a host swarm that is in use:
# re-initialising it removes every service.
manager_guard() {
  local state addr ctl n=0 nodes
  state="$(swarm_field '{{.Swarm.LocalNodeState}}')"
  addr="$(swarm_field '{{.Swarm.NodeAddr}}')"
  ctl="$(swarm_field '{{.Swarm.ControlAvailable}}')"
  [[ "$state" == active && "$addr" != "$MN_HOST_IP" ]] || return 0
  [[ "$ctl" == true ]] && n="$(dm service ls -q | wc -l)"
  nodes="$(swarm_field '{{.Swarm.Nodes}}')"
  if [[ "$MN_FORCE" != 1 ]] && { [[ "$ctl" != true ]] || ((n > 0)) || [[ "$nodes" != 1 ]]; }; then
    die "setup would destroy the host swarm (addr $addr, manager=$ctl, $n services, $nodes nodes); remove them or set MN_FORCE=1"
  fi
}

setup_manager() {
  local state addr ctl
  state="$(swarm_field '{{.Swarm.LocalNodeState}}')"
  addr="$(swarm_field '{{.Swarm.NodeAddr}}')"
  ctl="$(swarm_field '{{.Swarm.ControlAvailable}}')"
  if [[ "$state" == active && "$addr" == "$MN_HOST_IP" && "$ctl" == true ]]; then return 0; fi
  if [[ "$state" == active ]]; then
    log "host swarm: leave (was advertising $addr)"
    dm swarm leave --force >/dev/null
  fi
  log "host swarm: init --advertise-addr $MN_HOST_IP"
  dm swarm init --advertise-addr "$MN_HOST_IP" --listen-addr "$MN_HOST_IP:2377" >/dev/null
}

worker_node_id() { dw info --format '{{.Swarm.NodeID}}' 2>/dev/null; }

join_worker() {
  local state wid token i st=""
  state="$(dw info --format '{{.Swarm.LocalNodeState}}')"
  wid="$(worker_node_id)"
  if ! [[ "$state" == active && -n "$wid" ]] || ! dm node inspect "$wid" >/dev/null 2>&1; then
    if [[ "$state" != inactive ]]; then dw swarm leave --force >/dev/null 2>&1 || true; fi
    token="$(dm swarm join-token -q worker)"
    log "worker: join $MN_HOST_IP:2377 advertising $MN_NS_IP"
    dw swarm join --token "$token" --advertise-addr "$MN_NS_IP" --listen-addr "$MN_NS_IP:2377" "$MN_HOST_IP:2377" >/dev/null
    wid="$(worker_node_id)"
  fi
  for ((i = 0; i < 300; i++)); do
    st="$(dm node inspect -f '{{.Status.State}}' "$wid" 2>/dev/null || true)"
    [[ "$st" == ready ]] && break
    sleep 0.2
  done
  [[ "$st" == ready ]] || die "worker node $wid not ready (state '$st')"
  # Down nodes left by earlier joins of this netns.
  dm node ls --format '{{.ID}} {{.Hostname}} {{.Status}}' | awk -v h="$MN_NS" -v w="$wid" '$2 == h && $3 == "Down" && $1 != w {print $1}' |
    while read -r id; do dm node rm --force "$id" >/dev/null 2>&1 || true; done
}

restore_manager() {
  local state addr
  state="$(swarm_field '{{.Swarm.LocalNodeState}}')" || { log "host dockerd not answering; cannot restore the swarm"; return 1; }
  addr="$(swarm_field '{{.Swarm.NodeAddr}}')"
  if [[ "$state" == active && "$addr" == "$MN_RESTORE_ADVERTISE" && "$(swarm_field '{{.Swarm.Nodes}}')" == 1 ]]; then return 0; fi
  if [[ "$state" == active && "$addr" != "$MN_HOST_IP" && "$MN_FORCE" != 1 ]]; then
    log "host swarm advertises $addr (not ours): left as it is"; return 0
  fi
  if [[ "$state" != inactive ]]; then log "host swarm: leave"; dm swarm leave --force >/dev/null || true; fi
  log "host swarm: init --advertise-addr $MN_RESTORE_ADVERTISE"
  dm swarm init --advertise-addr "$MN_RESTORE_ADVERTISE" >/dev/null
}

# ---- subcommands ---------------------------------------------------------------------
cmd_setup() {
  need_root
  local c
  for c in ip nsenter unshare flock mount docker; do
    command -v "$c" >/dev/null || die "$c not found (Debian: apt-get install iproute2 util-linux mount docker.io)"
  done
  take_lock
  dm version >/dev/null 2>&1 || die "the host dockerd does not answer on the default socket"
  [[ -x /usr/sbin/dockerd ]] || die "/usr/sbin/dockerd missing"
  manager_guard
  mkdir -p "$MN_WORK"
  setup_netns
  start_worker
  setup_manager
  join_worker
  log "setup done: manager $(swarm_field '{{.Name}}') $MN_HOST_IP, worker $MN_NS $MN_NS_IP"
}

cmd_teardown() {
  need_root; take_lock
  local rc=0
  if [[ "$(swarm_field '{{.Swarm.NodeAddr}}')" == "$MN_HOST_IP" && "$(swarm_field '{{.Swarm.ControlAvailable}}')" == true ]]; then
    # Services first, while the worker still runs: their tasks stop cleanly.
    local svcs; svcs="$(dm service ls -q | tr '\n' ' ')"
    if [[ -n "${svcs// /}" ]]; then
      log "removing services: $svcs"
      # shellcheck disable=SC2086
      dm service rm $svcs >/dev/null || true
    fi
  fi
  stop_worker || log "stop_worker failed"
  restore_manager || { log "restore_manager failed"; rc=1; }
  teardown_netns || log "teardown_netns failed"
  rm -rf "$MN_WORK"
  [[ ! -e "$NSPATH" ]] || { log "left over: netns $MN_NS"; rc=1; }
  ! ip link show "$VETH_H" >/dev/null 2>&1 || { log "left over: link $VETH_H"; rc=1; }
  [[ ! -e "$W_DATA" && ! -e "$W_EXEC" ]] || { log "left over: $W_DATA / $W_EXEC"; rc=1; }
  [[ "$(swarm_field '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}')" == "active true" ]] || { log "host swarm is not an active manager"; rc=1; }
  rm -f "$LOCK"
  log "teardown $([[ $rc == 0 ]] && echo done || echo 'finished with leftovers')"
  return "$rc"
}

cmd_env() {
  cat <<EOF
MN_NETNS=$NSPATH
MN_WORKER_HOST=$W_HOST
MN_WORKER_NODE=$(worker_node_id)
MN_WORKER_NAME=$MN_NS
MN_MANAGER_NAME=$(swarm_field '{{.Name}}')
EOF
}

case "${1:-}" in
  setup) cmd_setup ;;
  teardown) cmd_teardown ;;
  env) cmd_env ;;
  kill-worker) need_root; kill_worker ;;
  start-worker) need_root; start_worker ;;
  *) echo "usage: $0 setup|teardown|env|kill-worker|start-worker" >&2; exit 2 ;;
esac
