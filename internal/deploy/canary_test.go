package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// canarySwarm is a service of 4 tasks as Swarm runs it through a canary:
// written as a canary, 1 task moves and the update waits; promoted, all
// move; reverted (or rolled back), all are back on the old digest.
type canarySwarm struct {
	mu sync.Mutex
	// state: "old", "canary", "promoted", "reverted"
	state string
	calls []string
	// failAfterPromote makes Swarm pause the promoted update.
	failAfterPromote bool
	// values are served one per query, the last repeating; errs likewise.
	values  []float64
	errs    []error
	queries []string
	// canaryAt is when Canary was called, queriedAt when each query was.
	canaryAt  time.Time
	queriedAt []time.Time
}

func (c *canarySwarm) Canary(_ context.Context, t deploy.Target, image string, _ deploy.Credentials, n int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, fmt.Sprintf("canary %s %d", image, n))
	c.canaryAt = time.Now()
	c.state = "canary"
	return nil
}

func (c *canarySwarm) Promote(_ context.Context, t deploy.Target, image string, _ deploy.Credentials) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "promote "+image)
	c.state = "promoted"
	return nil
}

func (c *canarySwarm) Revert(_ context.Context, t deploy.Target, image string, _ deploy.Credentials) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "revert "+image)
	c.state = "reverted"
	return nil
}

func (c *canarySwarm) Seal(_ context.Context, t deploy.Target, image string, _ deploy.Credentials) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "seal "+image)
	return nil
}

func (c *canarySwarm) Query(_ context.Context, expr string, _ time.Time) (float64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := len(c.queries)
	c.queries = append(c.queries, expr)
	c.queriedAt = append(c.queriedAt, time.Now())
	var err error
	if len(c.errs) > 0 {
		err = c.errs[min(i, len(c.errs)-1)]
	}
	if len(c.values) == 0 {
		return 0, err
	}
	return c.values[min(i, len(c.values)-1)], err
}

func (c *canarySwarm) rollout(context.Context, string) (deploy.Rollout, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := func(i int) deploy.Task {
		return deploy.Task{ID: fmt.Sprintf("old%d", i), Image: pinned(oldD), State: "running", Desired: "running"}
	}
	nu := func(i int) deploy.Task {
		return deploy.Task{ID: fmt.Sprintf("new%d", i), Image: pinned(newD), State: "running", Desired: "running"}
	}
	switch c.state {
	case "canary":
		return deploy.Rollout{Image: pinned(newD), UpdateState: "updating", Desired: 4, Canary: true, Tasks: []deploy.Task{nu(1), old(2), old(3), old(4)}}, nil
	case "promoted":
		if c.failAfterPromote {
			return deploy.Rollout{Image: pinned(newD), UpdateState: "paused", UpdateMessage: "update paused due to failure", Desired: 4,
				Tasks: []deploy.Task{nu(1), {ID: "new2", Image: pinned(newD), State: "failed", Desired: "shutdown", Err: "boom"}, old(3), old(4)}}, nil
		}
		return deploy.Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 4, Tasks: []deploy.Task{nu(1), nu(2), nu(3), nu(4)}}, nil
	}
	return deploy.Rollout{Image: pinned(oldD), UpdateState: "completed", Desired: 4, Tasks: []deploy.Task{old(1), old(2), old(3), old(4)}}, nil
}

func (c *canarySwarm) called() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

func canaryWorld(t *testing.T, values ...float64) (*world, *canarySwarm) {
	w := newWorld(t)
	tg := web(oldD)
	tg.Canary = deploy.Canary{Tasks: 1, Window: 40 * time.Millisecond, Interval: 10 * time.Millisecond, Failures: 1,
		Query: `sum(rate(errors{task_id=~"{tasks}"}[1m]))`, Bound: deploy.CanaryBound{Max: 0.05, HasMax: true}, OnError: deploy.OnErrorRollback}
	w.targets = []deploy.Target{tg}
	w.digests[ref] = newD
	c := &canarySwarm{state: "old", values: values}
	w.p.Canaries, w.p.Metrics = c, c
	w.services.RolloutFn = c.rollout
	w.services.UpdateFn = func(context.Context, deploy.Target, string, deploy.Credentials) error {
		t.Error("a canary service written with a plain spec write")
		return nil
	}
	w.services.RollbackFn = func(context.Context, string) error {
		t.Error("a canary service rolled back by Swarm's rollback: its previous spec may be the canary's")
		return nil
	}
	return w, c
}

func (w *world) canarySteps() []deploy.Step {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []deploy.Step
	for _, e := range w.events {
		if e.Kind == deploy.Progress && e.Phase == deploy.PhaseCanary {
			out = append(out, *e.Step)
		}
	}
	return out
}

// Within the bound over the window: promoted, then followed to success.
func TestCanaryPromotedWhenTheQueryHolds(t *testing.T) {
	w, c := canaryWorld(t, 0.01)
	w.cycle(t.Context())
	ev := w.outcome(deploy.Succeeded)
	if got, want := c.called(), []string{"canary " + pinned(newD) + " 1", "promote " + pinned(newD), "seal " + pinned(newD)}; !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	if ev.Release.To != newD {
		t.Errorf("succeeded to %s", ev.Release.To)
	}
	steps := w.canarySteps()
	if len(steps) < 2 || !strings.Contains(steps[0].Detail, "0.01 ≤ 0.05") || steps[0].Done != 1 || steps[0].Total != 4 {
		t.Errorf("canary progress %+v, want an evaluation every interval saying value and bound, 1 of 4 tasks", steps)
	}
	// The first evaluation an interval into the window (a task just
	// started has nothing to judge yet), the last at its end: 40 ms
	// evaluated every 10 ms is 4 evaluations at most.
	if first := c.queriedAt[0].Sub(c.canaryAt); first < 10*time.Millisecond || len(c.queries) > 4 {
		t.Errorf("first evaluation %s after the canary's write, %d evaluations: want the first an interval (10ms) in, at most 4", first, len(c.queries))
	}
	if q := c.queries[0]; q != `sum(rate(errors{task_id=~"new1"}[1m]))` {
		t.Errorf("query %q, want {tasks} filled with the canary task's ID", q)
	}
	if !slices.ContainsFunc(w.begun, func(r deploy.Release) bool { return r.ID == ev.Release.ID }) {
		t.Error("not recorded")
	}
	w.journalPaired()
}

// Out of the bound: written back to the old digest (not Swarm's
// rollback), the new one quarantined, the value and bound in the reason.
func TestCanaryOutOfBoundReverted(t *testing.T) {
	w, c := canaryWorld(t, 0.3)
	w.cycle(t.Context())
	ev := w.outcome(deploy.Failed)
	if got, want := c.called(), []string{"canary " + pinned(newD) + " 1", "revert " + pinned(oldD), "seal " + pinned(oldD)}; !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	if !ev.RolledBack || ev.Phase != deploy.PhaseCanary || !strings.Contains(ev.Reason, "0.3, not ≤ 0.05") {
		t.Errorf("outcome %+v, want rolled back in the canary, quoting 0.3 and ≤ 0.05", ev)
	}
	if !slices.ContainsFunc(w.marked, func(m mark) bool { return m.digest == newD }) {
		t.Errorf("marked %v, want newD quarantined", w.marked)
	}
}

// Failures allows that many evaluations out of the bound.
func TestCanaryFailuresAllowed(t *testing.T) {
	w, c := canaryWorld(t, 0.3, 0.01)
	w.targets[0].Canary.Failures = 2
	w.cycle(t.Context())
	w.outcome(deploy.Succeeded)
	if got := c.called(); len(got) != 3 || !strings.HasPrefix(got[1], "promote") {
		t.Fatalf("calls %q, want the canary promoted after one failed evaluation of 2 allowed", got)
	}
}

// Inconclusive fails closed unless on-error=promote.
func TestCanaryInconclusive(t *testing.T) {
	down := errors.New("query: Post \"http://127.0.0.1:9/api/v1/query\": connection refused")
	w, c := canaryWorld(t)
	c.errs = []error{down}
	w.cycle(t.Context())
	ev := w.outcome(deploy.Failed)
	if !ev.RolledBack || !strings.Contains(ev.Reason, "inconclusive") || !strings.Contains(ev.Reason, "connection refused") {
		t.Errorf("outcome %+v, want rolled back as inconclusive, saying why", ev)
	}

	w, c = canaryWorld(t)
	c.errs = []error{down}
	w.targets[0].Canary.OnError = deploy.OnErrorPromote
	w.cycle(t.Context())
	w.outcome(deploy.Succeeded)
}

// A failure after the promotion is written back too: Swarm's previous
// spec is then the canary's, the new image.
func TestCanaryFailureAfterPromotionReverted(t *testing.T) {
	w, c := canaryWorld(t, 0.01)
	c.failAfterPromote = true
	w.cycle(t.Context())
	ev := w.outcome(deploy.Failed)
	if got := c.called(); len(got) != 4 || got[2] != "revert "+pinned(oldD) || got[3] != "seal "+pinned(oldD) {
		t.Fatalf("calls %q, want canary, promote, revert to the old digest, seal on it", got)
	}
	if !ev.RolledBack || ev.Phase != deploy.PhaseRollout {
		t.Errorf("outcome %+v, want the rollout's failure, rolled back", ev)
	}
}

// Restarted mid-analysis, the run judges what is left of the window from
// the record's start, without writing the canary again.
func TestResumedCanaryJudgesTheRestOfItsWindow(t *testing.T) {
	w, c := canaryWorld(t, 0.01)
	w.targets[0].Canary.Window = time.Hour
	c.state = "canary"
	began := time.Now().Add(-time.Hour + 30*time.Millisecond)
	w.open = []deploy.Release{{ID: "c1", ServiceID: "svc1", ServiceName: "web", Stack: "site", Ref: ref, From: oldD, To: newD,
		Started: began.Add(-time.Second), Stage: deploy.StageCanary, StageAt: began}}
	w.cycle(t.Context())
	ev := w.milestones()
	if len(ev) != 1 || ev[0].Kind != deploy.Succeeded || !ev[0].Resumed {
		t.Fatalf("events %+v, want the resumed canary's success", ev)
	}
	if got := c.called(); len(got) != 2 || !strings.HasPrefix(got[0], "promote") {
		t.Fatalf("calls %q, want the promotion only (no second canary write)", got)
	}
	if n := len(c.queries); n > 10 {
		t.Errorf("%d evaluations for the last 30ms of an hour's window", n)
	}
}

// Without a Prometheus, a canary label is a label error: reported before
// anything runs, as a probe without a prober is.
func TestCanaryWithoutMetricsRefused(t *testing.T) {
	w, c := canaryWorld(t, 0.01)
	w.p.Metrics = nil
	w.cycle(t.Context())
	if got := c.called(); len(got) != 0 {
		t.Fatalf("calls %q, want none", got)
	}
	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhasePrepare || !strings.Contains(ev.Reason, "UPDATER_PROMETHEUS_URL") {
		t.Errorf("outcome %+v, want a label error before anything ran, naming UPDATER_PROMETHEUS_URL", ev)
	}
}

// The promoted rollout gets the whole timeout from its promotion: the
// canary's wait and window come before it (a window longer than the
// timeout reverted a canary that passed).
func TestCanaryRolloutTimedFromThePromotion(t *testing.T) {
	w, c := canaryWorld(t, 0.01)
	w.p.Timeout = 30 * time.Millisecond // the window is 40ms
	looks := 0
	w.services.RolloutFn = func(ctx context.Context, id string) (deploy.Rollout, error) {
		ro, err := c.rollout(ctx, id)
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.state == "promoted" {
			if looks++; looks == 1 { // Swarm has just been told: still updating
				ro.UpdateState = "updating"
				ro.Tasks[2].Image, ro.Tasks[3].Image = pinned(oldD), pinned(oldD)
			}
		}
		return ro, err
	}
	w.p.Timeout = 40 * time.Millisecond
	w.targets[0].Canary.Window = 60 * time.Millisecond
	w.cycle(t.Context())
	if ev := w.outcome(deploy.Succeeded); ev.Release.To != newD {
		t.Fatalf("outcome %+v", ev)
	}
}

// A canary found in flight by an updater that has no Prometheus now is
// written back, not left waiting (nor a panic every cycle).
func TestResumedCanaryWithoutMetricsReverted(t *testing.T) {
	w, c := canaryWorld(t, 0.01)
	w.p.Metrics = nil
	c.state = "canary"
	w.open = []deploy.Release{{ID: "c1", ServiceID: "svc1", ServiceName: "web", Stack: "site", Ref: ref, From: oldD, To: newD,
		Started: time.Now(), Stage: deploy.StageCanary, StageAt: time.Now()}}
	w.cycle(t.Context())
	if got := c.called(); len(got) < 1 || got[0] != "revert "+pinned(oldD) {
		t.Fatalf("calls %q, want the canary written back", got)
	}
	ev := w.milestones()
	if len(ev) != 1 || ev[0].Kind != deploy.Failed || !ev[0].RolledBack || !strings.Contains(ev[0].Reason, "UPDATER_PROMETHEUS_URL") {
		t.Fatalf("events %+v, want one failure, rolled back, naming UPDATER_PROMETHEUS_URL", ev)
	}
	if len(w.open) != 0 || strings.Contains(w.logs.String(), "panic") {
		t.Errorf("records left %v; panic logged: %v", ids(w.open), strings.Contains(w.logs.String(), "panic"))
	}
}

// A canary of a spec that was not pinned has no digest to write back:
// before its promotion Swarm's previous spec is the one before it.
func TestUnpinnedCanaryGoesBackBySwarmsRollback(t *testing.T) {
	w, c := canaryWorld(t, 0.5)
	w.targets[0].Image = ref
	rolled := 0
	w.services.RollbackFn = func(context.Context, string) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		rolled++
		c.state = "old"
		return nil
	}
	w.cycle(t.Context())
	ev := w.outcome(deploy.Failed)
	if rolled != 1 || !ev.RolledBack {
		t.Fatalf("Swarm's rollback asked %d times, outcome %+v: want once, rolled back", rolled, ev)
	}
}

// Someone writing another image during the canary owns the spec: not
// rolled back, but their update must not keep the canary's year-long
// delay after its first tasks.
func TestCanarySupersededGetsItsOwnSettingsBack(t *testing.T) {
	w, c := canaryWorld(t, 0.01)
	other := deploy.Pin(ref, "sha256:"+strings.Repeat("e", 64))
	inner := c.rollout
	w.services.RolloutFn = func(ctx context.Context, id string) (deploy.Rollout, error) {
		ro, err := inner(ctx, id)
		if ro.Canary {
			ro.Image = other // a person's docker service update --image
		}
		return ro, err
	}
	w.cycle(t.Context())
	ev := w.outcome(deploy.Failed)
	if got := c.called(); len(got) != 2 || got[1] != "revert "+other {
		t.Fatalf("calls %q, want the person's image written with the service's own settings", got)
	}
	if ev.RolledBack {
		t.Errorf("outcome %+v: not ours to roll back", ev)
	}
}

func TestCanaryLine(t *testing.T) {
	rel := deploy.Release{Ref: "127.0.0.1:5000/shop/web:v5", To: "sha256:0123456789abcdef0123"}
	s := deploy.Step{Phase: deploy.PhaseCanary, Done: 1, Total: 4, Detail: "0.002 ≤ 0.05 · 40s left"}
	if got, want := s.CanaryLine(rel), "canary 1 of 4 on v5 (sha256:0123456789ab) · 0.002 ≤ 0.05 · 40s left"; got != want {
		t.Errorf("CanaryLine = %q, want %q", got, want)
	}
	rel.Ref = "127.0.0.1:5000/shop/web" // pinned without a tag: the digest alone
	if got, want := s.CanaryLine(rel), "canary 1 of 4 on sha256:0123456789ab · 0.002 ≤ 0.05 · 40s left"; got != want {
		t.Errorf("CanaryLine = %q, want %q", got, want)
	}
	if got := (deploy.Step{Phase: deploy.PhaseRollout, Done: 1, Total: 4}).CanaryLine(rel); got != "" {
		t.Errorf("a rollout step's CanaryLine = %q, want \"\"", got)
	}
}
