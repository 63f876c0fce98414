#!/usr/bin/env bash
# engine.sh: a current Docker Engine for the e2e suite's engine matrix,
# from Debian's own packages, run beside the host's dockerd without
# touching it.
#
#   fetch     the engine's docker.io and containerd .debs from a newer Debian
#             suite (28.5: sid, or testing; 26.1: trixie), by package name
#             with apt-get download in a private apt state (its own sources
#             entries, lists and cache: the machine's own package lists are
#             untouched); unpacked with dpkg -x into $ENGINE_CACHE/<engine>
#             and reused from there when present. runc is not fetched: the
#             suites' needs glibc 2.38 (bookworm has 2.36), so bookworm's on
#             the PATH runs the containers. dockerd and containerd need glibc
#             2.34 at most.
#   setup     fetch, then the node: faultnode.sh's private dockerd (its own
#             network namespace, data and exec roots, socket, its own
#             containerd), with this engine's binaries; swarm init.
#   teardown  faultnode.sh teardown for this node.
#   env       KEY=VALUE lines the suite reads: DOCKER_HOST and E2E_NETNS
#             (where the suite serves its registry and PostgreSQL).
#   run LOG -- CMD...
#             setup, CMD with that env (its output also written to LOG),
#             teardown; exits with CMD's status.
#
# ENGINE picks the engine (28.5 by default; 26.1 works too). Never start a
# second dockerd in the host's network namespace: one there removed the
# host dockerd's docker0 bridge, and no host container could start after.
set -euo pipefail

ENGINE="${ENGINE:-28.5}"
case "$ENGINE" in
  # sid first; testing too, where 28.5 stays a while after sid moves on.
  # containerd: the 2.x sid pairs it with (2.1.9 when this was written).
  28.5) SUITES="sid testing" DOCKER_VER='28.5.*' CONTAINERD_VER='2.*' ;;
  26.1) SUITES="trixie" DOCKER_VER='26.1.*' CONTAINERD_VER='1.7.*' ;;
  *) echo "engine.sh: unknown ENGINE $ENGINE (28.5 or 26.1)" >&2; exit 2 ;;
esac
ENGINE_CACHE="${ENGINE_CACHE:-/var/cache/updater-e2e-engines}"
DIR="$ENGINE_CACHE/$ENGINE" # the unpacked engine
NS="upd${ENGINE//./}"       # netns and faultnode.sh's node name
HERE="$(cd "$(dirname "$0")" && pwd)"

log() { printf '[engine %s %s] %s\n' "$ENGINE" "$(date +%T.%3N)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- fetch ------------------------------------------------------------------
# The archive this machine already uses for its own Debian release: the
# newer suite lives beside it.
mirror() {
  local codename uri
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  uri="$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(IDENTIFIER)' 2>/dev/null |
    awk -v c="$codename" '$2 == c && $3 == "Packages" {print $1; exit}')"
  [[ -n "$uri" ]] || die "no apt source for this machine's release ($codename) to take the archive's address from"
  echo "$uri"
}

# pick NAME PATTERN: the newest version of NAME in the private lists that
# matches the shell PATTERN (madison lists the newest first).
pick() {
  local all x
  all="$("${APT[@]}" -q madison "$1" 2>/dev/null | awk -F' [|] ' '{print $2}')"
  for x in $all; do
    # shellcheck disable=SC2053
    [[ "$x" == $2 ]] && { echo "$x"; return 0; }
  done
  die "$SUITES: no $1 $2 (there is: $(echo $all))"
}

fetch() {
  if [[ -x "$DIR/usr/sbin/dockerd" && -x "$DIR/usr/bin/containerd" && -s "$DIR/VERSIONS" ]]; then
    log "cached in $DIR: $(tr '\n' ' ' <"$DIR/VERSIONS")"
    return 0
  fi
  command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "apt-get and dpkg needed"
  local t0=$SECONDS apt uri dv cv
  apt="$ENGINE_CACHE/apt-$ENGINE"
  rm -rf "$apt" && mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$apt/empty.d"
  # apt downloads as _apt where it can write.
  if id _apt >/dev/null 2>&1; then chown -R _apt "$apt/lists" "$apt/cache" "$apt/debs"; fi
  uri="$(mirror)"
  local suite
  for suite in $SUITES; do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main"
  done >"$apt/sources.list"
  : >"$apt/status"
  # Only sources, lists, cache and the dpkg status are private: the rest
  # of the machine's apt configuration (how it reaches the archive) holds.
  APT_OPTS=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/empty.d"
    -o Dir::Etc::Preferences=/dev/null -o "Dir::Etc::PreferencesParts=$apt/empty.d" -o "Dir::State=$apt" -o "Dir::State::Lists=$apt/lists" -o "Dir::State::status=$apt/status"
    -o "Dir::Cache=$apt/cache" -o Acquire::Languages=none -o APT::Get::List-Cleanup=0)
  APT=(apt-cache "${APT_OPTS[@]}")
  log "apt-get update for $SUITES (private lists in $apt)"
  apt-get "${APT_OPTS[@]}" -qq update >&2 || die "apt-get update of $SUITES failed"
  dv="$(pick docker.io "$DOCKER_VER")"
  cv="$(pick containerd "$CONTAINERD_VER")"
  log "apt-get download docker.io=$dv containerd=$cv"
  (cd "$apt/debs" && apt-get "${APT_OPTS[@]}" -qq download "docker.io=$dv" "containerd=$cv") >&2 || die "apt-get download failed"
  rm -rf "$DIR.new" && mkdir -p "$DIR.new"
  local deb
  for deb in "$apt"/debs/*.deb; do dpkg -x "$deb" "$DIR.new"; done
  # runc is not fetched (the suite's needs glibc 2.38) and none may come
  # along: bookworm's, on the PATH, runs the containers.
  rm -f "$DIR.new/usr/sbin/runc" "$DIR.new/usr/bin/runc"
  printf 'docker.io %s\ncontainerd %s\n' "$dv" "$cv" >"$DIR.new/VERSIONS"
  rm -rf "$DIR" && mv "$DIR.new" "$DIR"
  rm -rf "$apt"
  log "unpacked into $DIR in $((SECONDS - t0))s: $(du -sh "$DIR" | cut -f1)"
}

# ---- the node: faultnode.sh with this engine's binaries ----------------------
node() {
  command -v runc >/dev/null || die "runc not on the PATH (Debian: apt-get install runc)"
  # dockerd finds containerd, its shim and runc on the PATH.
  PATH="$DIR/usr/bin:$DIR/usr/sbin:$PATH" FN_NS="$NS" FN_DOCKERD="$DIR/usr/sbin/dockerd" "$HERE/faultnode.sh" "$@"
}

cmd_setup() {
  local t0=$SECONDS
  fetch
  node setup
  log "engine $(docker -H "unix:///var/run/docker-$NS.sock" version --format '{{.Server.Version}} (API {{.Server.APIVersion}}, min {{.Server.MinAPIVersion}})') ready in $((SECONDS - t0))s"
}

cmd_env() {
  node env | awk -F= '$1 == "FN_HOST" {print "DOCKER_HOST=" $2} $1 == "FN_NETNS" {print "E2E_NETNS=" $2}'
}

cmd_run() {
  local logf="$1" rc=0 t0=$SECONDS
  shift
  [[ "${1:-}" == -- ]] && shift
  trap 'node teardown || true' EXIT
  cmd_setup
  local vars
  vars="$(cmd_env)"
  log "running with $(echo "$vars" | tr '\n' ' ')"
  mkdir -p "$(dirname "$logf")"
  # pipefail: the status is the command's, not tee's.
  env $vars "$@" 2>&1 | tee "$logf" || rc=$?
  trap - EXIT
  node teardown || rc=1
  log "run took $((SECONDS - t0))s in all (exit $rc)"
  return "$rc"
}

case "${1:-}" in
  fetch) fetch; echo "$DIR" ;;
  setup) cmd_setup ;;
  teardown) node teardown ;;
  env) cmd_env ;;
  run) shift; [[ $# -ge 2 ]] || { echo "usage: $0 run LOG -- CMD..." >&2; exit 2; }; cmd_run "$@" ;;
  *) echo "usage: ENGINE=28.5|26.1 $0 fetch|setup|teardown|env|run LOG -- CMD..." >&2; exit 2 ;;
esac
