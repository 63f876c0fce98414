#!/usr/bin/env bash
# matrix.sh: the e2e engine matrix's scenarios and its table.
#
#   matrix.sh run-regex        the go test -run pattern of the core scenarios
#   matrix.sh log LOG CMD...   CMD with its output also written to LOG; CMD's status
#   matrix.sh table LOG...     the scenario × engine table from go test -v logs
#                              (one per engine; the engine is named by the
#                              harness's "e2e: docker engine" line). Exits 1
#                              unless every scenario passed on every engine.
set -euo pipefail

# The core of the suite that every engine must pass: test, then what it proves.
SCENARIOS=(
  "TestRollForwardRollBackAndSkip|roll forward, rollback and quarantine"
  "TestKilledMidRollout|killed mid-rollout, resumed"
  "TestBackupMigrateThenPromote|backup, migrate, promote"
  "TestWebhookTriggersDeploy|webhook deploy"
  "TestGroupDeploysTogether|a group deploys together"
  "TestSocketProxyAllowlist|socket-proxy allowlist (docs/socket-proxy.md's endpoints)"
  "TestCanaryOnSwarmUpdate|canary on Swarm's own rolling update (docs/canary-swarm.md)"
)

run_regex() {
  local s names=()
  for s in "${SCENARIOS[@]}"; do names+=("${s%%|*}"); done
  (IFS='|'; echo "^(${names[*]})\$")
}

table() {
  [[ $# -gt 0 ]] || { echo "usage: $0 table LOG..." >&2; exit 2; }
  local logs=() heads=() f s name ok=1
  for f in "$@"; do
    if [[ ! -s "$f" ]]; then echo "engine matrix: no log $f (its run did not happen)" >&2; ok=0; continue; fi
    logs+=("$f")
    heads+=("$(sed -n 's/.*e2e: docker engine \([^ +]*\)[^ ]* (API \([0-9.]*\)).*/Docker \1 (API \2)/p' "$f" | head -1)")
  done
  {
    printf 'SCENARIO'; for s in "${heads[@]}"; do printf '\t%s' "${s:-engine unknown}"; done; echo
    for s in "${SCENARIOS[@]}"; do
      name="${s%%|*}"
      printf '%s' "${s#*|}"
      for f in "${logs[@]}"; do
        # A top-level test's verdict line: "--- PASS: TestX (12.34s)".
        local v
        v="$(sed -n "s/^--- \(PASS\|FAIL\|SKIP\): $name (\([0-9.]*\)s)\$/\1 \2s/p" "$f" | tail -1)"
        case "$v" in
          PASS*) printf '\tpass %s' "${v#* }" ;;
          '') printf '\tnot run'; ok=0 ;;
          *) printf '\t%s' "$v"; ok=0 ;;
        esac
      done
      echo
    done
  } | column -t -s $'\t' | sed '1{p;s/./-/g}'
  [[ $ok == 1 ]] || { echo "engine matrix: not every scenario passed on every engine" >&2; return 1; }
}

case "${1:-}" in
  run-regex) run_regex ;;
  log) shift; [[ $# -ge 2 ]] || { echo "usage: $0 log LOG CMD..." >&2; exit 2; }
    f="$1"; shift; mkdir -p "$(dirname "$f")"; "$@" 2>&1 | tee "$f" ;; # pipefail: CMD's status
  table) shift; echo; echo "engine matrix: scenario × engine"; table "$@" ;;
  *) echo "usage: $0 run-regex | log LOG CMD... | table LOG..." >&2; exit 2 ;;
esac
