#!/usr/bin/env bash
# make demo: the updater rolling a new version forward and a broken one
# back, on this machine's Docker, with nothing pulled that can't be; then
# what the team sees: the status page and the deploys' Slack messages.
#
# Builds the updater image from ./Dockerfile, starts a registry on
# 127.0.0.1:$DEMO_REGISTRY_PORT and the demo's Slack (demo/slack: the fake
# Slack Web API the e2e suite uses) on 127.0.0.1:$DEMO_SLACK_PORT,
# deploys demo/docker-stack.yml as stack "updater-demo" (app + PostgreSQL +
# updater, its status page on 127.0.0.1:$DEMO_PAGE_PORT behind a token
# made for this run), pushes v2 (a migration: backup, migrate, roll,
# promote), then a broken v3 (rolled back), and shows each deploy's Slack
# message as text. Exits 0 only when v2 is live, v3 was rolled back, the
# page answered with the token (and refused without) and Slack holds both
# outcomes. `make demo-down` undoes it.
#
# `demo/demo.sh images` only builds the images: a make demo after it is
# a warm run (the e2e test times one).
set -euo pipefail
cd "$(dirname "$0")/.."

STACK=updater-demo
PORT=${DEMO_REGISTRY_PORT:-5000}
REG=127.0.0.1:$PORT
SLACK_PORT=${DEMO_SLACK_PORT:-5001}
PAGE_PORT=${DEMO_PAGE_PORT:-8080}
GO_IMAGE=${GO_IMAGE:-golang:1.26-bookworm}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:15-bookworm}
STATE=.demo-state
LIMIT=${DEMO_TIMEOUT:-300}

# Each step says how far into the run it starts: where the time goes.
say() { printf '\n\033[1m==> %s\033[0m  (%ss)\n' "$*" "$SECONDS"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\n\033[1;31mdemo failed: %s\033[0m\n' "$*" >&2; exit 1; }

# wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + LIMIT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${LIMIT}s waiting for $what"
    sleep 0.5
  done
}

# image_or_make NAME SCRIPT: use NAME if present or pullable, else make it
# from this machine's own packages.
image_or_make() {
  docker image inspect "$1" >/dev/null 2>&1 && return
  if docker pull -q "$1" >/dev/null 2>&1; then return; fi
  info "$1 can't be pulled here: making it from this machine ($2)"
  "scripts/$2" "$1" >/dev/null
}

# http_get PORT PATH [TOKEN]: GET http://127.0.0.1:PORT/PATH (with the
# token as basic auth's password, as a browser sends it); prints the
# status code, a blank line, the body. Bash alone: no curl needed.
http_get() {
  local auth=""
  [ -z "${3:-}" ] || auth="Authorization: Basic $(printf 'demo:%s' "$3" | base64 | tr -d '\n')"$'\r\n'
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n%s\r\n' "$2" "$1" "$auth" >&3
    IFS=' ' read -r _ code _ <&3
    while IFS= read -r line <&3 && [ "${line%$'\r'}" != "" ]; do :; done
    printf '%s\n\n' "$code"
    cat <&3
  )
}
status_of() { { http_get "$@" 2>/dev/null || echo unreachable; } | sed -n 1p; }

images() {
  say "Building images (the updater from ./Dockerfile; the demo app v1/v2/broken v3, the registry and Slack from demo/Dockerfile)"
  image_or_make "$GO_IMAGE" offline-go-image.sh
  image_or_make "$POSTGRES_IMAGE" offline-postgres-image.sh
  # VERSION as the Makefile has it: the build stage tagged below is then
  # the one make image just built (a cache hit), not a second build.
  local version
  version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
  make -s image IMAGE=updater:demo GO_IMAGE="$GO_IMAGE" VERSION="$version" >/dev/null
  build() { docker build -q "$@" . >/dev/null 2>&1 || docker build "$@" .; }
  build --target build --build-arg GO_IMAGE="$GO_IMAGE" --build-arg VERSION="$version" -t updater-demo/build
  # The demo's binaries compile on that stage: its Go build cache holds
  # what they share with the updater.
  demo() { build -f demo/Dockerfile --build-arg GO_IMAGE=updater-demo/build "$@"; }
  demo --target registry -t updater-demo/registry
  demo --target slack -t updater-demo/slack
  demo --target app --build-arg APP_VERSION=v1 --build-arg APP_SCHEMA=1 -t updater-demo/app:v1
  demo --target app --build-arg APP_VERSION=v2 --build-arg APP_SCHEMA=2 -t updater-demo/app:v2
  demo --target app --build-arg APP_VERSION=broken --build-arg APP_SCHEMA=2 -t updater-demo/app:v3-broken
  info "updater image: $(docker image inspect --format '{{.Size}}' updater:demo | awk '{printf "%.1f MB", $1/1e6}')"
}

push() { # push LOCAL_IMAGE NAME: push to the demo registry, print the digest
  docker tag "$1" "$REG/$2" && docker push -q "$REG/$2" >/dev/null
  docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$REG/$2" | grep "^$REG/${2%%:*}@" | head -1 | cut -d@ -f2
}

# The updater logs to stderr, which docker service logs passes on as its own.
updater_logs() { docker service logs --raw "${STACK}_updater" 2>&1; }
# logged MSG TEXT: the updater logged MSG on a line that holds TEXT. (No
# grep -q in a pipe: under pipefail its early exit fails the pipe.)
logged() { updater_logs | grep -F "$1" | grep -F "$2" >/dev/null; }
finished() { updater_logs | grep -E 'deploy (succeeded|failed)' | grep -F "$1" >/dev/null; }
app_on() { # app_on DIGEST: the spec is pinned to DIGEST and every task runs
  [[ "$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${STACK}_app")" == *"@$1" ]] &&
    [ "$(docker service ls --filter "name=${STACK}_app" --format '{{.Replicas}}')" = "2/2" ]
}
# slack_says TEXT: the newest Slack message holds TEXT (edited to it).
slack_says() { http_get "$SLACK_PORT" /last | grep -F "$1" >/dev/null; }
show_slack() {
  info "What your team sees in Slack (#deploys), the deploy's one message as edited to its end:"
  http_get "$SLACK_PORT" /last | tail -n +3 | sed 's/^/      │ /'
}

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "docker is not running (start dockerd)"
if [ "${1:-}" = images ]; then
  images
  exit 0
fi
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != "active" ]; then
  say "No active swarm here: initialising a single-node swarm (docker swarm init --advertise-addr 127.0.0.1)"
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
  echo "swarm-initialised" >>"$STATE"
fi
docker stack ls --format '{{.Name}}' | grep -qx "$STACK" && die "stack $STACK exists already: run make demo-down first"
for p in "$PORT" "$SLACK_PORT" "$PAGE_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    die "127.0.0.1:$p is in use: free it, or choose other ports (DEMO_REGISTRY_PORT, DEMO_SLACK_PORT, DEMO_PAGE_PORT)"
  fi
done

images

say "Starting the demo registry on $REG and the demo's Slack on 127.0.0.1:$SLACK_PORT"
# The tokens: the status page's, made for this run, and the bot token
# the demo's Slack accepts. They reach the updater as Swarm secrets, made
# from files that are removed once the stack is deployed.
API_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
SLACK_TOKEN=xoxb-demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
docker run -d --name updater-demo-registry --network host -e LISTEN="$REG" updater-demo/registry >/dev/null
echo "registry" >>"$STATE"
docker run -d --name updater-demo-slack --network host -e LISTEN="127.0.0.1:$SLACK_PORT" -e SLACK_TOKEN="$SLACK_TOKEN" updater-demo/slack >/dev/null
echo "slack" >>"$STATE"
wait_for "the registry" bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT"
push updater:demo updater:demo >/dev/null
v1=$(push updater-demo/app:v1 demo-app:latest)
info "pushed demo-app:latest = v1 ($v1)"
wait_for "the demo's Slack" http_get "$SLACK_PORT" /

say "Deploying the demo stack (docker stack deploy -c demo/docker-stack.yml $STACK)"
secrets=$(mktemp -d)
trap 'rm -rf "$secrets"' EXIT
printf '%s' "$API_TOKEN" >"$secrets/api_token"
printf '%s' "$SLACK_TOKEN" >"$secrets/slack_token"
DEMO_REGISTRY=$REG POSTGRES_IMAGE=$POSTGRES_IMAGE POSTGRES_REPO=${POSTGRES_IMAGE%:*} UPDATER_IMAGE=$REG/updater:demo \
  DEMO_PAGE_PORT=$PAGE_PORT DEMO_SLACK_PORT=$SLACK_PORT DEMO_API_TOKEN_FILE=$secrets/api_token DEMO_SLACK_TOKEN_FILE=$secrets/slack_token \
  docker stack deploy --quiet -c demo/docker-stack.yml "$STACK" 2>&1 | grep -v "could not be accessed on a registry" || true
rm -rf "$secrets"
wait_for "the app on v1" app_on "$v1"
wait_for "the updater to start" logged "updater started" "schedule"
info "app: 2/2 tasks on v1; db: PostgreSQL; updater: checking the registry every second"

say "CI pushes v2 (with a database migration): watch the updater back up, migrate, roll and promote it"
v2=$(push updater-demo/app:v2 demo-app:latest)
info "pushed demo-app:latest = v2 ($v2)"
wait_for "the v2 deploy to finish" finished "$v2"
updater_logs | grep -F "$v2" | grep -E 'msg="deploy (started|succeeded|failed)"|state=(succeeded|failed)' | sed 's/^/    /'
logged "deploy succeeded" "$v2" || die "the v2 deploy did not succeed (docker service logs ${STACK}_updater)"
# The old tasks may still be stopping (each was replaced once its new one
# was healthy): they are gone a moment later.
wait_for "every task of the app on v2" app_on "$v2"
info "v2 is live on every task; the backup taken before the migration:"
docker run --rm -v "${STACK}_backups:/backups:ro" --entrypoint sh "$POSTGRES_IMAGE" -c 'for f in /backups/*.dump; do echo "    $f"; done'
wait_for "v2's Slack message edited to its outcome" slack_says "deploy succeeded"
show_slack

say "CI pushes a broken v3 (it fails its health check): watch it roll back"
v3=$(push updater-demo/app:v3-broken demo-app:latest)
info "pushed demo-app:latest = broken v3 ($v3)"
wait_for "the v3 deploy to finish" finished "$v3"
updater_logs | grep -F "$v3" | grep -E 'msg="deploy (started|succeeded|failed)"' | sed 's/^/    /'
logged "deploy failed" "$v3" || die "the broken v3 was not reported as failed"
wait_for "the app back on v2" app_on "$v2"
info "v3 was rolled back: every task runs v2 again, and v3 is remembered as bad until the tag moves"
wait_for "v3's Slack message edited to its outcome" slack_says "rolled back"
show_slack

say "The status page: http://127.0.0.1:$PAGE_PORT/"
info "user: any name; password (the API token, made for this demo): $API_TOKEN"
with=$(status_of "$PAGE_PORT" / "$API_TOKEN")
without=$(status_of "$PAGE_PORT" /)
[ "$with" = 200 ] && [ "$without" = 401 ] || die "the status page answered $with with the token and $without without, want 200 and 401"
info "it answered HTTP $with with the token and HTTP $without without it"
info "the same over the API: curl -u demo:$API_TOKEN http://127.0.0.1:$PAGE_PORT/api/v1/deploys"

say "Done: v2 is live, the broken v3 was rolled back"
cat <<EOF
    Where to look:
      http://127.0.0.1:$PAGE_PORT/ (password above)               the status page: services, deploys, approvals
      curl -s http://127.0.0.1:$SLACK_PORT/                          every message in the demo's Slack, as text
      docker service ps ${STACK}_app                          the tasks, old and new
      docker service logs -f ${STACK}_updater                 what the updater did and why
      docker config ls --filter label=io.updater.kind          its records in Swarm (failed digests, migrations)
      docker run --rm ${REG}/updater:demo version             the updater image
    Push another version yourself:
      docker build -f demo/Dockerfile --target app --build-arg GO_IMAGE=updater-demo/build --build-arg APP_VERSION=v4 --build-arg APP_SCHEMA=2 -t $REG/demo-app:latest . && docker push $REG/demo-app:latest
    Remove everything the demo made:  make demo-down
EOF
