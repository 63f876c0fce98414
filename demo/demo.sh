#!/usr/bin/env bash
# make demo: the updater rolling a new version forward and a broken one
# back, on this machine's Docker, with nothing pulled that can't be.
#
# Builds the updater image from ./Dockerfile, starts a registry on
# 127.0.0.1:$DEMO_REGISTRY_PORT, deploys demo/docker-stack.yml as stack
# "updater-demo" (app + PostgreSQL + updater), pushes v2 (a migration:
# backup, migrate, roll, promote), then a broken v3 (rolled back). Exits 0
# only when v2 is live and v3 was rolled back. `make demo-down` undoes it.
set -euo pipefail
cd "$(dirname "$0")/.."

STACK=updater-demo
PORT=${DEMO_REGISTRY_PORT:-5000}
REG=127.0.0.1:$PORT
GO_IMAGE=${GO_IMAGE:-golang:1.26-bookworm}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:15-bookworm}
STATE=.demo-state
LIMIT=${DEMO_TIMEOUT:-300}

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\n\033[1;31mdemo failed: %s\033[0m\n' "$*" >&2; exit 1; }

# wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + LIMIT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${LIMIT}s waiting for $what"
    sleep 1
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

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "docker is not running (start dockerd)"
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != "active" ]; then
  say "No active swarm here: initialising a single-node swarm (docker swarm init --advertise-addr 127.0.0.1)"
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
  echo "swarm-initialised" >>"$STATE"
fi
docker stack ls --format '{{.Name}}' | grep -qx "$STACK" && die "stack $STACK exists already: run make demo-down first"

say "Building images (the updater from ./Dockerfile, the demo app v1/v2/broken v3, the registry)"
image_or_make "$GO_IMAGE" offline-go-image.sh
image_or_make "$POSTGRES_IMAGE" offline-postgres-image.sh
make -s image IMAGE=updater:demo GO_IMAGE="$GO_IMAGE" >/dev/null
build() { docker build -q -f demo/Dockerfile --build-arg GO_IMAGE="$GO_IMAGE" "$@" . >/dev/null 2>&1 || docker build -f demo/Dockerfile --build-arg GO_IMAGE="$GO_IMAGE" "$@" .; }
build --target registry -t updater-demo/registry
build --target app --build-arg APP_VERSION=v1 --build-arg APP_SCHEMA=1 -t updater-demo/app:v1
build --target app --build-arg APP_VERSION=v2 --build-arg APP_SCHEMA=2 -t updater-demo/app:v2
build --target app --build-arg APP_VERSION=broken --build-arg APP_SCHEMA=2 -t updater-demo/app:v3-broken
info "updater image: $(docker image inspect --format '{{.Size}}' updater:demo | awk '{printf "%.1f MB", $1/1e6}')"

say "Starting the demo registry on $REG"
docker run -d --name updater-demo-registry --network host -e LISTEN="$REG" updater-demo/registry >/dev/null
echo "registry" >>"$STATE"
wait_for "the registry" bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT"
push updater:demo updater:demo >/dev/null
v1=$(push updater-demo/app:v1 demo-app:latest)
info "pushed demo-app:latest = v1 ($v1)"

say "Deploying the demo stack (docker stack deploy -c demo/docker-stack.yml $STACK)"
DEMO_REGISTRY=$REG POSTGRES_IMAGE=$POSTGRES_IMAGE POSTGRES_REPO=${POSTGRES_IMAGE%:*} UPDATER_IMAGE=$REG/updater:demo \
  docker stack deploy --quiet -c demo/docker-stack.yml "$STACK" 2>&1 | grep -v "could not be accessed on a registry" || true
wait_for "the app on v1" app_on "$v1"
wait_for "the updater to start" logged "updater started" "schedule"
info "app: 2/2 tasks on v1; db: PostgreSQL; updater: checking the registry every 2 s"

say "CI pushes v2 (with a database migration): watch the updater back up, migrate, roll and promote it"
v2=$(push updater-demo/app:v2 demo-app:latest)
info "pushed demo-app:latest = v2 ($v2)"
wait_for "the v2 deploy to finish" finished "$v2"
updater_logs | grep -F "$v2" | grep -E 'msg="deploy (started|succeeded|failed)"|state=(succeeded|failed)' | sed 's/^/    /'
logged "deploy succeeded" "$v2" || die "the v2 deploy did not succeed (docker service logs ${STACK}_updater)"
app_on "$v2" || die "the app is not on v2"
info "v2 is live on every task; the backup taken before the migration:"
docker run --rm -v "${STACK}_backups:/backups:ro" --entrypoint sh "$POSTGRES_IMAGE" -c 'for f in /backups/*.dump; do echo "    $f"; done'

say "CI pushes a broken v3 (it fails its health check): watch it roll back"
v3=$(push updater-demo/app:v3-broken demo-app:latest)
info "pushed demo-app:latest = broken v3 ($v3)"
wait_for "the v3 deploy to finish" finished "$v3"
updater_logs | grep -F "$v3" | grep -E 'msg="deploy (started|succeeded|failed)"' | sed 's/^/    /'
logged "deploy failed" "$v3" || die "the broken v3 was not reported as failed"
wait_for "the app back on v2" app_on "$v2"
info "v3 was rolled back: every task runs v2 again, and v3 is remembered as bad until the tag moves"

say "Done: v2 is live, the broken v3 was rolled back"
cat <<EOF
    Where to look:
      docker service ps ${STACK}_app                          the tasks, old and new
      docker service logs -f ${STACK}_updater                 what the updater did and why
      docker config ls --filter label=io.updater.kind          its records in Swarm (failed digests, migrations)
      docker run --rm ${REG}/updater:demo version             the updater image
    Push another version yourself:
      docker build -f demo/Dockerfile --target app --build-arg GO_IMAGE=$GO_IMAGE --build-arg APP_VERSION=v4 --build-arg APP_SCHEMA=2 -t $REG/demo-app:latest . && docker push $REG/demo-app:latest
    Remove everything the demo made:  make demo-down
EOF
