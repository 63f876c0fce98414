package notify

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// TestLogReport pins the log line each deploy event becomes: the e2e
// suite and the people who grep the log match on these msgs and keys
// (test/e2e waitLog/find/count: "deploy started", "deploy succeeded",
// to_digest, step, state, rolled_back, resumed, deploy_id, duration).
func TestLogReport(t *testing.T) {
	rel := deploy.Release{ID: "d-42", ServiceName: "shop_web", Stack: "shop", Ref: "registry.example/shop/web:prod",
		From: "sha256:aaaa", To: "sha256:bbbb"}
	first := rel
	first.From, first.Stack = "", "" // a service's first deploy, outside a stack
	common := map[string]any{"deploy_id": "d-42", "service": "shop_web", "image": "registry.example/shop/web:prod",
		"from_digest": "sha256:aaaa", "to_digest": "sha256:bbbb", "stack": "shop"}

	cases := []struct {
		name  string
		ev    deploy.Event
		level string
		msg   string
		want  map[string]any // besides common, unless a key is overridden
		none  []string       // keys the line must not have
	}{
		{name: "started", ev: deploy.Event{Kind: deploy.Started, Release: rel, Phase: deploy.PhasePrepare},
			level: "INFO", msg: "deploy started", none: []string{"step", "duration", "err", "rolled_back", "resumed", "reason"}},
		{name: "first deploy, no stack", ev: deploy.Event{Kind: deploy.Started, Release: first},
			level: "INFO", msg: "deploy started", want: map[string]any{"from_digest": "", "stack": nil}},
		{name: "succeeded", ev: deploy.Event{Kind: deploy.Succeeded, Release: rel, Phase: deploy.PhaseRollout, Duration: 1500 * time.Millisecond},
			level: "INFO", msg: "deploy succeeded", want: map[string]any{"step": "rollout", "duration": float64(1500 * time.Millisecond)},
			none: []string{"err", "rolled_back", "resumed"}},
		{name: "succeeded after a restart", ev: deploy.Event{Kind: deploy.Succeeded, Release: rel, Phase: deploy.PhaseRollout, Resumed: true},
			level: "INFO", msg: "deploy succeeded", want: map[string]any{"resumed": true}},
		{name: "failed and rolled back", ev: deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollout,
			Reason: "task exited with code 1", RolledBack: true, Duration: time.Second},
			level: "ERROR", msg: "deploy failed", want: map[string]any{"step": "rollout", "err": "task exited with code 1", "rolled_back": true}},
		{name: "failed before the service was touched", ev: deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseMigrate, Reason: "migration exited 3"},
			level: "ERROR", msg: "deploy failed", want: map[string]any{"step": "migrate", "err": "migration exited 3", "rolled_back": false}},
		{name: "pending approval", ev: deploy.Event{Kind: deploy.Pending, Release: rel, Reason: "waits until 2026-12-02T09:00:00Z"},
			level: "INFO", msg: "deploy pending", want: map[string]any{"reason": "waits until 2026-12-02T09:00:00Z"}, none: []string{"step", "duration"}},
		{name: "hook started", ev: deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseMigrate,
			Step: &deploy.Step{Phase: deploy.PhaseMigrate, State: "started"}},
			level: "INFO", msg: "deploy progress", want: map[string]any{"step": "migrate", "state": "started"}, none: []string{"exit_code", "done", "total"}},
		{name: "hook failed", ev: deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseBackup,
			Step: &deploy.Step{Phase: deploy.PhaseBackup, State: "failed", ExitCode: 3}},
			level: "INFO", msg: "deploy progress", want: map[string]any{"step": "backup", "state": "failed", "exit_code": float64(3)}, none: []string{"log_tail"}},
		// The log keeps a failed hook's output, whatever goes to Slack.
		{name: "hook failed with output", ev: deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseBackup,
			Step: &deploy.Step{Phase: deploy.PhaseBackup, State: "failed", ExitCode: 1, LogTail: []string{"pg_dump: connecting", "pg_dump: refused"}}},
			level: "INFO", msg: "deploy progress", want: map[string]any{"exit_code": float64(1), "log_tail": "pg_dump: connecting\npg_dump: refused"}},
		// Rollout counts are many and dull: debug only.
		{name: "rollout progress", ev: deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseRollout,
			Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 1, Total: 3}},
			level: "DEBUG", msg: "deploy progress", want: map[string]any{"step": "rollout", "done": float64(1), "total": float64(3)}, none: []string{"state", "canary"}},
		// A canary's evaluations too, with the canary's line.
		{name: "canary evaluation", ev: deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseCanary,
			Step: &deploy.Step{Phase: deploy.PhaseCanary, Done: 1, Total: 4, Until: time.Unix(1700000000, 0), Detail: "0.002 ≤ 0.05 · 40s left"}},
			level: "DEBUG", msg: "deploy progress", want: map[string]any{"step": "canary", "done": float64(1), "total": float64(4),
				"canary": "canary 1 of 4 on prod (sha256:bbbb) · 0.002 ≤ 0.05 · 40s left"}, none: []string{"state", "until"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			Log{Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}.Report(c.ev)
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if len(lines) != 1 {
				t.Fatalf("%d lines, want 1:\n%s", len(lines), &buf)
			}
			var got map[string]any
			if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
				t.Fatalf("not JSON: %v: %s", err, lines[0])
			}
			if got["msg"] != c.msg || got["level"] != c.level {
				t.Errorf("msg %q at %v, want %q at %s", got["msg"], got["level"], c.msg, c.level)
			}
			want := map[string]any{}
			for k, v := range common {
				want[k] = v
			}
			for k, v := range c.want {
				want[k] = v
			}
			for k, v := range want {
				gv, ok := got[k]
				if v == nil {
					if ok {
						t.Errorf("%s = %v, want no such key", k, gv)
					}
					continue
				}
				if !ok || gv != v {
					t.Errorf("%s = %#v (present %v), want %#v", k, gv, ok, v)
				}
			}
			for _, k := range c.none {
				if v, ok := got[k]; ok {
					t.Errorf("%s = %v, want no such key", k, v)
				}
			}
		})
	}
}

// TestLogReportSkipsOutages: outages are logged once where the pipeline
// detects them; Report repeating them would double every outage line.
func TestLogReportSkipsOutages(t *testing.T) {
	var buf bytes.Buffer
	l := Log{Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	l.Report(deploy.Event{Kind: deploy.Outage, Part: "docker"})
	l.Report(deploy.Event{Kind: deploy.Recovered, Part: "registry", Release: deploy.Release{Ref: "registry.example/shop/web:prod"}})
	if buf.Len() > 0 {
		t.Fatalf("outage events logged:\n%s", &buf)
	}
}
