#!/usr/bin/env bash
# faultnode.sh: a single-node Docker Swarm of its own, for the e2e fault
# suite's dockerd-restart tests (dockerd_test.go): a second dockerd in a
# network namespace, with its own data-root, exec-root, socket and pidfile,
# that a test may stop and start at will. The host dockerd (and its swarm)
# is never touched, so the test can restart "Docker" without restarting
# the machine's.
#
#   netns $FN_NS   loopback only; the Go test serves its registry inside it
#                  at the same 127.0.0.1:PORT as on the host, so one image
#                  reference names one registry for both dockerds.
#   dockerd        $FN_DOCKERD (/usr/sbin/dockerd) --data-root $FN_DATA --exec-root $FN_EXEC
#                  -H unix://$FN_SOCK, in its own mount and UTS namespaces
#                  (its mounts never reach the host's), swarm init on 127.0.0.1.
#
# Usage (root):
#   faultnode.sh setup      idempotent: netns, dockerd, swarm init
#   faultnode.sh stop       SIGTERM the dockerd (by its pid file), wait for it to exit
#   faultnode.sh start      start the dockerd again and wait until its swarm answers
#   faultnode.sh teardown   idempotent: dockerd stopped, leftovers killed, mounts
#                           undone, netns deleted, data and exec dirs removed
#   faultnode.sh env        KEY=VALUE lines for the test
#
# Processes are only ever signalled through pid files this script wrote
# ($FN_WORK/dockerd.pid) or that the dockerd it started wrote under its own
# exec-root, after checking /proc/PID/cmdline. The host dockerd is never signalled.
set -euo pipefail

FN_NS="${FN_NS:-updfault}"
FN_DOCKERD="${FN_DOCKERD:-/usr/sbin/dockerd}" # engine.sh runs a newer engine's, its containerd first on the PATH
FN_DATA="/var/lib/docker-$FN_NS"
FN_EXEC="/var/run/docker-$FN_NS"
FN_SOCK="/var/run/docker-$FN_NS.sock"
FN_PIDFILE="/var/run/docker-$FN_NS.pid" # written by the dockerd itself
FN_WORK="/var/run/docker-$FN_NS-work"   # our pid file, daemon.json, the dockerd log
FN_HOST="unix://$FN_SOCK"
NSPATH="/run/netns/$FN_NS"
LOCK="/run/updater-faultnode-$FN_NS.lock"

export DOCKER_API_VERSION="${DOCKER_API_VERSION:-1.41}" # dockerd 20.10; a newer CLI negotiates down
unset DOCKER_HOST DOCKER_CONTEXT

log() { printf '[faultnode %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
dn() { docker -H "$FN_HOST" "$@"; }
need_root() { [[ $EUID -eq 0 ]] || die "run as root"; }
take_lock() { exec 9>"$LOCK"; flock -w 120 9 || die "another faultnode.sh holds $LOCK"; }

# shellcheck source=dockerd-lib.sh
source "$(dirname "$0")/dockerd-lib.sh"

dockerd_pid() { pid_alive_match "$FN_WORK/dockerd.pid" "--exec-root $FN_EXEC "; }
containerd_pid() { pid_alive_match "$FN_EXEC/containerd/containerd.pid" "$FN_EXEC/containerd/"; }
answers() { dn version >/dev/null 2>&1; }

# ---- the node ------------------------------------------------------------------
setup_netns() {
  [[ -e "$NSPATH" ]] || ip netns add "$FN_NS"
  ip netns exec "$FN_NS" ip link set lo up
}

start_dockerd() {
  if dockerd_pid >/dev/null && answers; then return 0; fi
  if ! dockerd_pid >/dev/null; then
    if [[ -e "$FN_SOCK" ]]; then
      answers && die "$FN_SOCK answers but was not started by this script (no live $FN_WORK/dockerd.pid)"
      rm -f "$FN_SOCK"
    fi
    mkdir -p "$FN_WORK"
    echo '{}' >"$FN_WORK/daemon.json" # keeps it from reading /etc/docker/daemon.json
    launch
  fi
  local i retried=0
  for ((i = 0; i < 300; i++)); do
    answers && return 0
    if ! dockerd_pid >/dev/null; then
      # A containerd that outlived its dockerd may end just as the new
      # one joins it: then once more, afresh.
      if [[ -n "$JOINED" && $retried == 0 ]] && ! alive "$JOINED"; then
        retried=1; launch; continue
      fi
      tail -20 "$FN_WORK/dockerd.log" >&2; die "dockerd exited"
    fi
    sleep 0.1
  done
  die "dockerd did not answer on $FN_SOCK in 30s"
}

# launch starts dockerd; JOINED is the containerd it joined, if any.
JOINED=""
launch() {
  log "starting dockerd in netns $FN_NS (log $FN_WORK/dockerd.log)"
  # nsenter --net only, not `ip netns exec` (that remounts /sys and hides
  # the cgroup mounts). unshare: its own mount namespace (private: its
  # overlay and netns mounts stay in it and go when it ends) and hostname.
  # A containerd that outlived its dockerd is reused by the next one, so
  # that one joins its namespaces instead. Every step execs, so $! is the
  # dockerd pid.
  local enter cpid
  JOINED=""
  if cpid="$(containerd_pid)"; then
    JOINED="$cpid"
    enter=(nsenter --net="$NSPATH" --mount="/proc/$cpid/ns/mnt" --uts="/proc/$cpid/ns/uts" --)
  else
    enter=(nsenter --net="$NSPATH" unshare --uts --mount --propagation private --)
  fi
  (cd / && exec setsid "${enter[@]}" /bin/sh -c 'hostname "$0" && exec "$@"' "$FN_NS" \
    "$FN_DOCKERD" --config-file "$FN_WORK/daemon.json" \
    --data-root "$FN_DATA" --exec-root "$FN_EXEC" --pidfile "$FN_PIDFILE" -H "$FN_HOST" \
    >>"$FN_WORK/dockerd.log" 2>&1 </dev/null 9>&-) &
  echo $! >"$FN_WORK/dockerd.pid"
}

# wait_swarm waits until the node is an active manager whose store answers
# (after a restart the API answers before Raft has a leader).
wait_swarm() {
  local i
  for ((i = 0; i < 300; i++)); do
    [[ "$(dn info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}' 2>/dev/null)" == "active true" ]] &&
      dn service ls -q >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "the node's swarm did not answer in 30s"
}

init_swarm() {
  local state
  state="$(dn info --format '{{.Swarm.LocalNodeState}}')"
  if [[ "$state" != active ]]; then
    [[ "$state" == inactive ]] || dn swarm leave --force >/dev/null 2>&1 || true
    log "swarm init --advertise-addr 127.0.0.1"
    dn swarm init --advertise-addr 127.0.0.1 >/dev/null
  fi
  wait_swarm
}

stop_dockerd() {
  local pid cpid
  pid="$(dockerd_pid)" || { log "dockerd not running"; return 0; }
  cpid="$(containerd_pid)" || cpid=""
  log "SIGTERM dockerd pid $pid"
  stop_pid "$pid" 45
  # A cleanly stopping dockerd stops its containerd too, a moment later:
  # wait for that, so the next start does not join the namespaces of a
  # containerd on its way out.
  if [[ -n "$cpid" ]] && ! wait_gone "$cpid" 15; then
    log "containerd pid $cpid outlived its dockerd (the next start joins it)"
  fi
}

cleanup_leftovers() { dockerd_leftovers "$FN_EXEC" "$FN_DATA"; }

# ---- subcommands ---------------------------------------------------------------------
cmd_setup() {
  need_root
  local c
  for c in ip nsenter unshare flock docker; do
    command -v "$c" >/dev/null || die "$c not found (Debian: apt-get install iproute2 util-linux docker.io)"
  done
  [[ -x "$FN_DOCKERD" ]] || die "$FN_DOCKERD missing"
  take_lock
  setup_netns
  start_dockerd
  init_swarm
  log "setup done: $FN_HOST in netns $FN_NS, swarm manager on 127.0.0.1"
}

cmd_stop() {
  need_root; take_lock
  stop_dockerd
}

cmd_start() {
  need_root; take_lock
  [[ -e "$NSPATH" ]] || die "no netns $FN_NS: run setup first"
  start_dockerd
  wait_swarm
}

cmd_teardown() {
  need_root; take_lock
  local rc=0
  if dockerd_pid >/dev/null && answers; then
    # The swarm goes with the data-root; leaving first stops its tasks
    # while dockerd still runs.
    timeout 30 docker -H "$FN_HOST" swarm leave --force >/dev/null 2>&1 || log "swarm leave failed (continuing)"
  fi
  stop_dockerd
  cleanup_leftovers
  rm -rf "$FN_DATA" "$FN_EXEC" "$FN_SOCK" "$FN_PIDFILE" || log "could not remove all node files"
  if [[ -e "$NSPATH" ]]; then ip netns del "$FN_NS" || log "ip netns del $FN_NS failed"; fi
  rm -rf "$FN_WORK"
  [[ ! -e "$NSPATH" ]] || { log "left over: netns $FN_NS"; rc=1; }
  [[ ! -e "$FN_DATA" && ! -e "$FN_EXEC" && ! -e "$FN_SOCK" ]] || { log "left over: $FN_DATA / $FN_EXEC / $FN_SOCK"; rc=1; }
  if grep -qF -- " $FN_DATA" /proc/self/mountinfo || grep -qF -- " $FN_EXEC" /proc/self/mountinfo; then
    log "left over: mounts under $FN_DATA or $FN_EXEC"; rc=1
  fi
  rm -f "$LOCK"
  log "teardown $([[ $rc == 0 ]] && echo done || echo 'finished with leftovers')"
  return "$rc"
}

cmd_env() {
  cat <<EOF
FN_NETNS=$NSPATH
FN_HOST=$FN_HOST
FN_LOG=$FN_WORK/dockerd.log
EOF
}

case "${1:-}" in
  setup) cmd_setup ;;
  stop) cmd_stop ;;
  start) cmd_start ;;
  teardown) cmd_teardown ;;
  env) cmd_env ;;
  *) echo "usage: $0 setup|stop|start|teardown|env" >&2; exit 2 ;;
esac
