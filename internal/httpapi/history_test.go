package httpapi

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

func TestHistory(t *testing.T) {
	h := NewHistory(3)
	at := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	rel := func(i int) deploy.Release {
		return deploy.Release{ID: fmt.Sprint("d", i), ServiceID: fmt.Sprint("svc", i%2), ServiceName: "web", Ref: "r/web:1", From: oldD, To: newD, Started: at}
	}
	r0 := rel(0)
	h.Report(deploy.Event{Kind: deploy.Started, Release: r0})
	h.Report(deploy.Event{Kind: deploy.Progress, Release: r0, Phase: deploy.PhaseBackup, Step: &deploy.Step{Phase: deploy.PhaseBackup, State: "started"}})
	h.Report(deploy.Event{Kind: deploy.Progress, Release: r0, Phase: deploy.PhaseBackup, Step: &deploy.Step{Phase: deploy.PhaseBackup, State: "succeeded"}})
	h.Report(deploy.Event{Kind: deploy.Progress, Release: r0, Phase: deploy.PhaseRollout, Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 1, Total: 2}})
	if d := h.Recent()[0]; d.State != "running" || d.Phase != deploy.PhaseRollout || d.Rollout != "1/2" ||
		strings.Join(d.Steps, ",") != "backup started,backup succeeded" {
		t.Fatalf("running deploy %+v", d)
	}
	h.Report(deploy.Event{Kind: deploy.Progress, Release: r0, Phase: deploy.PhaseRollout, Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 2, Total: 2}})
	h.Report(deploy.Event{Kind: deploy.Failed, Release: r0, Phase: deploy.PhaseRollout, RolledBack: true, Reason: "unhealthy", Duration: time.Minute})
	d := h.Recent()[0]
	if d.State != "rolled_back" || d.Reason != "unhealthy" || d.Duration != time.Minute || d.Rollout != "2/2" || len(d.Steps) != 2 {
		t.Fatalf("ended deploy %+v", d)
	}

	// Resumed after a restart: first seen at its end.
	r1 := rel(1)
	h.Report(deploy.Event{Kind: deploy.Succeeded, Release: r1, Phase: deploy.PhaseRollout, Resumed: true})
	if d := h.Recent()[0]; d.ID != "d1" || d.State != "succeeded" || !d.Resumed {
		t.Fatalf("resumed deploy %+v", d)
	}
	// Neither approvals nor outages are deploys.
	h.Report(deploy.Event{Kind: deploy.Pending, Release: rel(7)})
	h.Report(deploy.Event{Kind: deploy.Outage, Part: "registry"})
	if n := len(h.Recent()); n != 2 {
		t.Fatalf("%d deploys kept, want 2", n)
	}
	for i := 2; i < 6; i++ {
		h.Report(deploy.Event{Kind: deploy.Started, Release: rel(i)})
	}
	got := h.Recent()
	if len(got) != 3 || got[0].ID != "d5" || got[2].ID != "d3" {
		t.Fatalf("kept %v, want the last 3, newest first", got)
	}
	if d, ok := h.Last("svc0"); !ok || d.ID != "d4" {
		t.Fatalf("Last(svc0) = %+v %v", d, ok)
	}
	if _, ok := h.Last("svc9"); ok {
		t.Fatal("Last of a service never deployed")
	}
}

// canaryEval is a canary's evaluation as the pipeline reports it: 1 of
// 4 tasks judged, a progress step whose state is StepProgress too.
func canaryEval(rel deploy.Release, detail string) deploy.Event {
	return deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseCanary,
		Step: &deploy.Step{Phase: deploy.PhaseCanary, Done: 1, Total: 4, Until: rel.Started.Add(time.Minute), Detail: detail}}
}

// A canary's evaluations are the deploy's canary line (the last one),
// not its rollout count; the API carries it as "canary".
func TestHistoryCanary(t *testing.T) {
	r := newRig(t)
	rel := deploy.Release{ID: "d1", ServiceID: "svc1", ServiceName: "web", Ref: "r.example/web:v5", From: oldD, To: newD, Started: r.now}
	h := r.history
	h.Report(deploy.Event{Kind: deploy.Started, Release: rel})
	h.Report(canaryEval(rel, "0.001 ≤ 0.05 · 50s left"))
	h.Report(canaryEval(rel, "0.002 ≤ 0.05 · 40s left"))
	want := "canary 1 of 4 on v5 (sha256:bbbbbbbbbbbb) · 0.002 ≤ 0.05 · 40s left"
	var got struct {
		Deploys []map[string]any `json:"deploys"`
	}
	decodeJSON(t, r.do(authed("GET", "/api/v1/deploys", nil)), &got)
	if len(got.Deploys) != 1 || got.Deploys[0]["canary"] != want || got.Deploys[0]["phase"] != "canary" ||
		got.Deploys[0]["state"] != "running" || got.Deploys[0]["rollout"] != nil {
		t.Fatalf("GET /api/v1/deploys: deploys %v, want canary %q, no rollout", got.Deploys, want)
	}
	// Promoted: the rollout counts, the canary's last line stays.
	h.Report(deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseRollout, Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 2, Total: 4}})
	h.Report(deploy.Event{Kind: deploy.Succeeded, Release: rel, Phase: deploy.PhaseRollout})
	if d := h.Recent()[0]; d.Rollout != "2/4" || d.Canary != want || d.State != "succeeded" || len(d.Steps) != 0 {
		t.Fatalf("promoted deploy %+v", d)
	}
}
