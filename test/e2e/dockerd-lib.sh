# dockerd-lib.sh: what multinode.sh and faultnode.sh share to run a dockerd
# of their own and clean up after it. Sourced, not run; the caller defines
# log. Processes are only ever signalled through pid files the caller wrote
# or that its dockerd wrote under its own exec-root, after checking
# /proc/PID/cmdline.

alive() { local st; st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null)" || return 1; [[ -n "$st" && "${st:0:1}" != Z ]]; }
pid_alive_match() { # PIDFILE SUBSTRING -> pid if alive and its cmdline has SUBSTRING
  local f="$1" want="$2" pid
  [[ -s "$f" ]] || return 1
  pid="$(tr -dc '0-9' <"$f")"; [[ -n "$pid" ]] || return 1
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$want" || return 1
  echo "$pid"
}
wait_gone() { # PID SECONDS
  local i
  for ((i = 0; i < $2 * 10; i++)); do alive "$1" || return 0; sleep 0.1; done
  return 1
}
stop_pid() { # PID SECONDS: TERM, wait, KILL
  kill -TERM "$1" 2>/dev/null || return 0
  wait_gone "$1" "$2" && return 0
  log "pid $1 still alive after ${2}s: SIGKILL"
  kill -KILL "$1" 2>/dev/null || true
  wait_gone "$1" 5 || true
}

# dockerd_leftovers EXEC_ROOT DATA_ROOT: after a dockerd that died
# uncleanly, its containerd, container processes and shims, found through
# pid files under its own exec-root; then any mount of its that reached the
# host's mount namespace (none should), deepest first.
dockerd_leftovers() {
  local exec_root="$1" data_root="$2" cpid b id ip sp rd re m
  if cpid="$(pid_alive_match "$exec_root/containerd/containerd.pid" "$exec_root/containerd/")"; then
    log "stopping leftover containerd pid $cpid"; stop_pid "$cpid" 15
  fi
  for b in "$exec_root"/containerd/daemon/io.containerd.runtime.v2.task/*/*/; do
    [[ -f "$b/init.pid" ]] || continue
    id="$(basename "$b")"; ip="$(tr -dc '0-9' <"$b/init.pid")"
    [[ -n "$ip" ]] && alive "$ip" && grep -q "$id" "/proc/$ip/cgroup" 2>/dev/null || continue
    sp="$(awk '/^PPid:/ {print $2}' "/proc/$ip/status")"
    log "killing leftover container process $ip (container ${id:0:12})"; kill -KILL "$ip" || true
    if [[ -n "$sp" ]] && tr '\0' ' ' <"/proc/$sp/cmdline" 2>/dev/null | grep -q -- "-id $id .*$exec_root/containerd/"; then
      log "killing its shim $sp"; kill -KILL "$sp" || true
    fi
    rmdir /sys/fs/cgroup/*/docker/"$id" 2>/dev/null || true
  done
  rd="$(readlink -m "$data_root")"; re="$(readlink -m "$exec_root")"
  awk -v a="$rd" -v b="$re" 'index($5, a "/") == 1 || $5 == a || index($5, b "/") == 1 || $5 == b {print $5}' /proc/self/mountinfo |
    sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"; done
}
