#!/usr/bin/env bash
# make demo-down: remove everything `make demo` created, and nothing else:
# the stack, its volumes, secrets and the updater's records about its
# services, the registry and Slack containers, the images it built and
# pushed (the tagged build stage among them), and the swarm if the
# demo initialised it. The base images it made (Go builder, PostgreSQL)
# stay cached for the next run, as does the build cache (docker image
# prune --filter label=org.updater.stage=build removes it).
set -uo pipefail
cd "$(dirname "$0")/.."
STACK=updater-demo
STATE=.demo-state
LIMIT=${DEMO_TIMEOUT:-120}

gone() { # gone COMMAND...: poll until COMMAND prints nothing
  local deadline=$((SECONDS + LIMIT))
  while [ -n "$("$@" 2>/dev/null)" ]; do
    ((SECONDS < deadline)) || { echo "demo-down: still there after ${LIMIT}s: $*" >&2; return 1; }
    sleep 1
  done
}

# Full IDs: the updater's records carry them, `service ls -q` shortens them.
ids=$(docker service ls -q --filter "label=com.docker.stack.namespace=$STACK" 2>/dev/null | xargs -r docker service inspect --format '{{.ID}}')
if [ -n "$ids" ]; then
  docker stack rm "$STACK" >/dev/null
  gone docker service ls -q --filter "label=com.docker.stack.namespace=$STACK"
  gone docker ps -aq --filter "label=com.docker.stack.namespace=$STACK"
  gone docker network ls -q --filter "label=com.docker.stack.namespace=$STACK"
fi
# The tokens' secrets go with the stack; a deploy that stopped halfway may
# have left them alone.
for s in $(docker secret ls -q --filter "label=com.docker.stack.namespace=$STACK"); do docker secret rm "$s" >/dev/null; done
# Hook jobs carry the stack label too; a killed updater may leave one.
for j in $(docker service ls -q --filter label=io.updater.job --filter "label=com.docker.stack.namespace=$STACK"); do docker service rm "$j" >/dev/null; done
# The demo updater's own objects (deploys in flight, notifier references,
# its lease) carry its scope: a hash of its opt-in label and stack.
scope=$(printf 'updater.enable\0%s' "$STACK" | sha256sum | cut -c1-16)
for c in $(docker config ls -q --filter "label=io.updater.scope=$scope"); do docker config rm "$c" >/dev/null; done
# The updater's records: by service, and migration records by their key.
for id in $ids; do
  key=$(printf 'service:%s' "$id" | sha256sum | cut -c1-16)
  for f in "label=io.updater.service=$id" "label=io.updater.key=$key"; do
    for c in $(docker config ls -q --filter "$f"); do docker config rm "$c" >/dev/null; done
  done
done
# Task and job containers Swarm left behind (it keeps those of finished
# jobs), by their names.
for c in $(docker ps -aq --filter "name=^${STACK}_"); do docker rm -f -v "$c" >/dev/null; done
for v in "${STACK}_data" "${STACK}_backups"; do
  docker volume inspect "$v" >/dev/null 2>&1 && docker volume rm "$v" >/dev/null
done
docker rm -f updater-demo-registry updater-demo-slack >/dev/null 2>&1
# By ID, which takes every tag and the untagged pushes; a tag is then
# removed by name where its image can't go (updater-demo/build has the
# demo's build stage as a child, so only its tag can).
demo_images() {
  docker image ls --format '{{.Repository}}:{{.Tag}} {{.ID}}' | grep -E '^(updater-demo/|127\.0\.0\.1:[0-9]+/(demo-app|updater):|updater:demo )'
}
demo_images | awk '{print $2}' | sort -u | xargs -r docker rmi -f >/dev/null 2>&1
demo_images | awk '$1 !~ /:<none>$/ {print $1}' | xargs -r docker rmi >/dev/null 2>&1
if [ -f "$STATE" ] && grep -qx swarm-initialised "$STATE"; then
  echo "demo-down: leaving the single-node swarm the demo initialised"
  docker swarm leave --force >/dev/null
fi
rm -f "$STATE"
echo "demo-down: done"
