package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

var (
	oldD = "sha256:" + strings.Repeat("a", 64)
	newD = "sha256:" + strings.Repeat("b", 64)
)

const ref = "127.0.0.1:5000/app:1"

func pinned(d string) string { return deploy.Pin(ref, d) }

func web(d string) deploy.Target {
	return deploy.Target{ID: "svc1", Name: "web", Stack: "site", Image: pinned(d),
		StartFirst: true, RollbackOnFailure: true, Healthcheck: true}
}

func task(d, state string) deploy.Task {
	return deploy.Task{ID: "t-" + d[7:9] + "-" + state, Image: pinned(d), State: state, Desired: "running"}
}

func gone(d, err string) deploy.Task {
	return deploy.Task{ID: "t-" + d[7:9] + "-gone", Image: pinned(d), State: "failed", Desired: "shutdown", Err: err}
}

func rollout(state, d string, tasks ...deploy.Task) deploy.Rollout {
	desired := 0
	for _, t := range tasks {
		if t.Desired == "running" {
			desired++
		}
	}
	return deploy.Rollout{Image: pinned(d), UpdateState: state, Desired: desired, Tasks: tasks}
}

type update struct {
	image string
	creds deploy.Credentials
}

type mark struct{ service, digest, reason string }

// world is a swarm and a registry made of fakes: it serves scripted
// rollouts and records every call the pipeline makes.
type world struct {
	t        *testing.T
	p        *deploy.Pipeline
	lister   *fakeLister
	services *fakeServices
	registry *fakeRegistry
	ledger   *fakeLedger
	journal  *fakeJournal
	logs     *bytes.Buffer

	mu      sync.Mutex
	targets []deploy.Target
	digests map[string]string
	failed  map[string]map[string]bool
	// script is served one Rollout per inspection, the last one repeating;
	// afterRollback takes over once Rollback was called.
	script, afterRollback []deploy.Rollout
	served, servedAfter   int
	rollbackCalled        bool

	updates   []update
	rollbacks []string
	marked    []mark
	forgets   []string
	begun     []deploy.Release
	ended     []deploy.Release
	open      []deploy.Release
	events    []deploy.Event
}

var testCreds = deploy.Credentials{ServerAddress: "127.0.0.1:5000", Username: "ci", Password: "hunter2"}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{t: t, digests: map[string]string{}, logs: &bytes.Buffer{}}
	w.lister = &fakeLister{ListFn: func(context.Context) ([]deploy.Target, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		return slices.Clone(w.targets), nil
	}}
	w.registry = &fakeRegistry{
		DigestFn: func(_ context.Context, ref string) (string, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			d, ok := w.digests[ref]
			if !ok {
				return "", fmt.Errorf("resolve %s: %w", ref, deploy.ErrNotFound)
			}
			return d, nil
		},
		CredentialsFn: func(context.Context, string) (deploy.Credentials, error) { return testCreds, nil },
	}
	w.services = &fakeServices{
		UpdateFn: func(_ context.Context, _ deploy.Target, image string, creds deploy.Credentials) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.updates = append(w.updates, update{image, creds})
			return nil
		},
		RolloutFn: func(context.Context, string) (deploy.Rollout, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			if w.rollbackCalled && len(w.afterRollback) > 0 {
				r := w.afterRollback[min(w.servedAfter, len(w.afterRollback)-1)]
				w.servedAfter++
				return r, nil
			}
			if len(w.script) == 0 {
				return deploy.Rollout{}, errors.New("no rollout scripted")
			}
			r := w.script[min(w.served, len(w.script)-1)]
			w.served++
			return r, nil
		},
		RollbackFn: func(_ context.Context, id string) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.rollbacks = append(w.rollbacks, id)
			w.rollbackCalled = true
			return nil
		},
	}
	w.ledger = &fakeLedger{
		FailedFn: func(context.Context) (map[string]map[string]bool, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			return w.failed, nil
		},
		MarkFailedFn: func(_ context.Context, id, d, reason string) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.marked = append(w.marked, mark{id, d, reason})
			return nil
		},
		ForgetFn: func(_ context.Context, id string) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.forgets = append(w.forgets, id)
			return nil
		},
	}
	w.journal = &fakeJournal{
		BeginFn: func(_ context.Context, r deploy.Release) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.begun = append(w.begun, r)
			w.open = append(w.open, r)
			return nil
		},
		// As Swarm's record would: the stage is read back with it.
		ReachedFn: func(_ context.Context, r deploy.Release, s deploy.Stage) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			for i := range w.open {
				if w.open[i].ID == r.ID {
					w.open[i].Stage = s
				}
			}
			return nil
		},
		EndFn: func(_ context.Context, r deploy.Release) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.ended = append(w.ended, r)
			w.open = slices.DeleteFunc(w.open, func(o deploy.Release) bool { return o.ID == r.ID })
			return nil
		},
		InFlightFn: func(context.Context) ([]deploy.Release, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			return slices.Clone(w.open), nil
		},
	}
	reporter := &fakeReporter{ReportFn: func(e deploy.Event) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.events = append(w.events, e)
	}}
	w.p = &deploy.Pipeline{
		Lister:        w.lister,
		Services:      w.services,
		Registry:      w.registry,
		Ledger:        w.ledger,
		Journal:       w.journal,
		Reporter:      reporter,
		Log:           slog.New(slog.NewJSONHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Timeout:       5 * time.Second,
		WatchInterval: time.Millisecond,
		Concurrency:   4,
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", w.logs.String())
		}
	})
	return w
}

func (w *world) cycle(ctx context.Context) []deploy.Plan {
	w.t.Helper()
	plans, err := w.p.Cycle(ctx)
	if err != nil {
		w.t.Fatalf("Cycle: %v", err)
	}
	// The runs it started go on in the background: the tests judge what
	// they did once they have ended.
	w.p.Wait()
	return plans
}

// kinds lists the kinds of the events reported, progress left out.
func (w *world) kinds() []deploy.Kind {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ks []deploy.Kind
	for _, e := range w.milestones() {
		ks = append(ks, e.Kind)
	}
	return ks
}

// milestones are the events other than progress; the caller holds w.mu
// or is the only goroutine left.
func (w *world) milestones() []deploy.Event {
	var out []deploy.Event
	for _, e := range w.events {
		if e.Kind != deploy.Progress {
			out = append(out, e)
		}
	}
	return out
}

// outcome asserts the events were Started then one outcome of kind, both
// about the same release, and returns the outcome.
func (w *world) outcome(kind deploy.Kind) deploy.Event {
	w.t.Helper()
	if got, want := w.kinds(), []deploy.Kind{deploy.Started, kind}; !slices.Equal(got, want) {
		w.t.Fatalf("events = %v, want %v", got, want)
	}
	ev := w.milestones()
	if ev[0].Release.ID == "" || !reflect.DeepEqual(ev[0].Release, ev[1].Release) {
		w.t.Errorf("started and outcome disagree on the release:\n%+v\n%+v", ev[0].Release, ev[1].Release)
	}
	return ev[1]
}

// journalPaired asserts one Begin and one End, for the same deploy.
func (w *world) journalPaired() {
	w.t.Helper()
	if len(w.begun) != 1 || len(w.ended) != 1 || w.begun[0].ID != w.ended[0].ID {
		w.t.Errorf("journal Begin %v, End %v: want one of each for the same deploy", ids(w.begun), ids(w.ended))
	}
	if len(w.open) != 0 {
		w.t.Errorf("deploys left in flight: %v", ids(w.open))
	}
}

func ids(rs []deploy.Release) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

// logLines returns the JSON log records at level whose message contains msg.
func (w *world) logLines(level, msg string) []map[string]any {
	w.t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(w.logs.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			w.t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		if rec["level"] == level && strings.Contains(fmt.Sprint(rec["msg"]), msg) {
			out = append(out, rec)
		}
	}
	return out
}

func TestCycleDeploysWhatMoved(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{
		rollout("updating", newD, task(oldD, "running"), task(oldD, "running")),
		rollout("updating", newD, task(newD, "starting"), task(oldD, "running")),
		rollout("completed", newD, task(newD, "running"), task(newD, "running")),
	}

	plans := w.cycle(t.Context())

	if len(plans) != 1 || plans[0].Action != deploy.ActDeploy || plans[0].Want != newD {
		t.Fatalf("plans = %+v, want one deploy to %s", plans, newD)
	}
	if want := []update{{pinned(newD), testCreds}}; !slices.Equal(w.updates, want) {
		t.Errorf("updates = %+v, want %+v", w.updates, want)
	}
	ev := w.outcome(deploy.Succeeded)
	rel := ev.Release
	if rel.ServiceID != "svc1" || rel.ServiceName != "web" || rel.Stack != "site" || rel.Ref != ref ||
		rel.From != oldD || rel.To != newD || rel.Started.IsZero() {
		t.Errorf("release = %+v", rel)
	}
	if w.served < len(w.script) {
		t.Errorf("succeeded after %d inspections, before the rollout completed (%d scripted)", w.served, len(w.script))
	}
	w.journalPaired()
	if !slices.Equal(w.forgets, []string{"svc1"}) {
		t.Errorf("Forget calls = %v, want [svc1]", w.forgets)
	}
	if len(w.marked) != 0 || len(w.rollbacks) != 0 {
		t.Errorf("MarkFailed %v, Rollback %v: want none", w.marked, w.rollbacks)
	}
}

func TestCycleRollsBackPausedUpdate(t *testing.T) {
	const unhealthy = "dockerexec: unhealthy container"
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{
		rollout("updating", newD, task(oldD, "running")),
		func() deploy.Rollout {
			r := rollout("paused", newD, task(oldD, "running"), gone(newD, unhealthy))
			r.UpdateMessage = "update paused due to failure or early termination of task x"
			return r
		}(),
	}
	w.afterRollback = []deploy.Rollout{
		rollout("paused", newD, task(oldD, "running"), gone(newD, unhealthy)), // our request not yet seen
		rollout("rollback_started", oldD, task(oldD, "running"), gone(newD, unhealthy)),
		rollout("rollback_started", oldD, task(oldD, "running")),
		rollout("rollback_completed", oldD, task(oldD, "running")),
	}

	w.cycle(t.Context())

	if !slices.Equal(w.rollbacks, []string{"svc1"}) {
		t.Errorf("Rollback calls = %v, want [svc1]", w.rollbacks)
	}
	if w.servedAfter < len(w.afterRollback) {
		t.Errorf("reported after %d inspections of the rollback, before it was restored", w.servedAfter)
	}
	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhaseRollout || !ev.RolledBack {
		t.Errorf("outcome phase %s rolled back %v, want rollout, true", ev.Phase, ev.RolledBack)
	}
	for _, s := range []string{"Swarm paused the update", unhealthy} {
		if !strings.Contains(ev.Reason, s) {
			t.Errorf("reason %q lacks %q", ev.Reason, s)
		}
	}
	if len(w.marked) != 1 || w.marked[0].service != "svc1" || w.marked[0].digest != newD || w.marked[0].reason != ev.Reason {
		t.Errorf("MarkFailed calls = %+v, want one for svc1 %s with the reason", w.marked, newD)
	}
	if len(w.forgets) != 0 || len(w.updates) != 1 {
		t.Errorf("Forget %v, updates %v: want no Forget and one update", w.forgets, w.updates)
	}
	w.journalPaired()
}

func TestCycleFollowsSwarmsOwnRollback(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{
		rollout("updating", newD, task(oldD, "running")),
		rollout("rollback_started", oldD, task(oldD, "running"), gone(newD, "task: non-zero exit (1)")),
		rollout("rollback_started", oldD, task(oldD, "running")),
		rollout("rollback_completed", oldD, task(oldD, "running")),
	}

	w.cycle(t.Context())

	if len(w.rollbacks) != 0 {
		t.Errorf("Rollback calls = %v: Swarm was already rolling back", w.rollbacks)
	}
	if w.served < len(w.script) {
		t.Errorf("reported after %d inspections, before Swarm's rollback completed", w.served)
	}
	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhaseRollout || !ev.RolledBack {
		t.Errorf("outcome phase %s rolled back %v, want rollout, true", ev.Phase, ev.RolledBack)
	}
	if !strings.Contains(ev.Reason, "non-zero exit (1)") {
		t.Errorf("reason %q lacks the task error", ev.Reason)
	}
	if len(w.marked) != 1 || w.marked[0].digest != newD {
		t.Errorf("MarkFailed calls = %+v, want one for %s", w.marked, newD)
	}
	w.journalPaired()
}

func TestCycleReportsRollbackSwarmGaveUpOn(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("paused", newD, task(oldD, "running"), gone(newD, "unhealthy"))}
	w.afterRollback = []deploy.Rollout{
		rollout("rollback_started", oldD, task(newD, "running")),
		rollout("rollback_paused", oldD, task(newD, "running"), gone(oldD, "no such image")),
	}

	w.cycle(t.Context())

	ev := w.outcome(deploy.Failed)
	if ev.RolledBack || ev.Phase != deploy.PhaseRollback {
		t.Errorf("outcome phase %s rolled back %v, want rollback, false: the rollback did not finish", ev.Phase, ev.RolledBack)
	}
	if !strings.Contains(ev.Reason, "paused the rollback") {
		t.Errorf("reason %q does not say the rollback paused", ev.Reason)
	}
	if len(w.marked) != 1 || w.marked[0].digest != newD {
		t.Errorf("MarkFailed calls = %+v, want one for %s", w.marked, newD)
	}
	w.journalPaired()
}

func TestCycleRollsBackAfterTimeout(t *testing.T) {
	w := newWorld(t)
	clock := &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	w.p.Now = clock.Now
	w.p.Timeout = time.Minute
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("updating", newD, task(oldD, "running"))}
	w.afterRollback = []deploy.Rollout{rollout("rollback_completed", oldD, task(oldD, "running"))}
	inspect := w.services.RolloutFn
	w.services.RolloutFn = func(ctx context.Context, id string) (deploy.Rollout, error) {
		clock.Advance(20 * time.Second) // each look takes a while of fake time
		return inspect(ctx, id)
	}

	w.cycle(t.Context())

	if !slices.Equal(w.rollbacks, []string{"svc1"}) {
		t.Errorf("Rollback calls = %v, want [svc1]", w.rollbacks)
	}
	if w.served != 3 {
		t.Errorf("inspected the rollout %d times, want 3 (at 20s, 40s, 60s of a 1m timeout)", w.served)
	}
	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhaseRollout || !ev.RolledBack {
		t.Errorf("outcome phase %s rolled back %v, want rollout, true", ev.Phase, ev.RolledBack)
	}
	if !strings.Contains(ev.Reason, "within 1m0s") {
		t.Errorf("reason %q does not mention the timeout", ev.Reason)
	}
	if ev.Duration != 80*time.Second {
		t.Errorf("duration %s, want 1m20s of fake time", ev.Duration)
	}
	if len(w.marked) != 1 || w.marked[0].digest != newD {
		t.Errorf("MarkFailed calls = %+v, want one for %s", w.marked, newD)
	}
	w.journalPaired()
}

func TestCycleUpdateRefused(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.services.UpdateFn = func(context.Context, deploy.Target, string, deploy.Credentials) error {
		return errors.New("update service web: rpc error: update out of sequence")
	}
	w.services.RolloutFn = nil // must not be inspected: nothing changed

	w.cycle(t.Context())

	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhaseUpdate || ev.RolledBack {
		t.Errorf("outcome phase %s rolled back %v, want update, false", ev.Phase, ev.RolledBack)
	}
	if !strings.Contains(ev.Reason, "out of sequence") {
		t.Errorf("reason %q lacks the update error", ev.Reason)
	}
	if len(w.marked) != 0 || len(w.rollbacks) != 0 {
		t.Errorf("MarkFailed %+v, Rollback %v: the image never ran, want neither", w.marked, w.rollbacks)
	}
	w.journalPaired()
}

func TestCycleJournalRefused(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.journal.BeginFn = func(context.Context, deploy.Release) error { return errors.New("create config: permission denied") }
	w.services.UpdateFn = nil

	w.cycle(t.Context())

	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Failed}) {
		t.Fatalf("events = %v, want one Failed and no Started", got)
	}
	if ev := w.milestones()[0]; ev.Phase != deploy.PhasePrepare || !strings.Contains(ev.Reason, "permission denied") {
		t.Errorf("outcome phase %s reason %q", ev.Phase, ev.Reason)
	}
	if len(w.ended) != 0 {
		t.Errorf("End called for a deploy never begun: %v", ids(w.ended))
	}
}

func TestCycleSkipsFailedDigest(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.failed = map[string]map[string]bool{"svc1": {newD: true}}
	w.services.UpdateFn = nil

	plans := w.cycle(t.Context())

	if len(plans) != 1 || plans[0].Action != deploy.ActSkipFailed {
		t.Fatalf("plans = %+v, want one skip-failed", plans)
	}
	if len(w.events) != 0 || len(w.begun) != 0 || len(w.updates) != 0 {
		t.Errorf("events %v, journal %v, updates %v: want nothing", w.kinds(), ids(w.begun), w.updates)
	}
}

func TestCycleLogsRegistryOutageOnce(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(newD)}
	down := true
	w.registry.DigestFn = func(_ context.Context, ref string) (string, error) {
		if down {
			return "", fmt.Errorf("resolve %s: 503 service unavailable", ref)
		}
		return newD, nil
	}

	for range 5 {
		plans := w.cycle(t.Context())
		if len(plans) != 1 || plans[0].Action != deploy.ActError || !strings.Contains(plans[0].Reason, "503") {
			t.Fatalf("plans = %+v, want a registry error", plans)
		}
	}
	down = false
	if plans := w.cycle(t.Context()); plans[0].Action != deploy.ActNone {
		t.Fatalf("plans after recovery = %+v, want up to date", plans)
	}
	w.cycle(t.Context())

	errs := w.logLines("ERROR", "")
	if len(errs) != 1 || !strings.Contains(errs[0]["msg"].(string), "registry failing") || errs[0]["image"] != ref ||
		!strings.Contains(fmt.Sprint(errs[0]["err"]), "503") {
		t.Errorf("error lines = %v, want exactly one saying the registry is failing for %s", errs, ref)
	}
	if n := len(w.logLines("DEBUG", "still failing")); n != 3 {
		t.Errorf("%d debug lines for the ongoing outage, want 3", n)
	}
	if back := w.logLines("INFO", "recovered"); len(back) != 1 || back[0]["image"] != ref {
		t.Errorf("recovery lines = %v, want exactly one for %s", back, ref)
	}
	if n := len(w.logLines("WARN", "")); n != 1 {
		t.Errorf("%d warnings, want 1: the first failure, before it was an outage", n)
	}
	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Outage, deploy.Recovered}) {
		t.Errorf("events %v, want one outage and one recovery", got)
	}
}

// One failed lookup that the next cycle does not repeat is a blip: a
// warning, no outage and no recovery to report.
func TestCycleRegistryBlipIsNoOutage(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(newD)}
	fail := true
	w.registry.DigestFn = func(_ context.Context, ref string) (string, error) {
		if fail {
			fail = false
			return "", fmt.Errorf("resolve %s: 503 service unavailable", ref)
		}
		return newD, nil
	}
	for range 3 {
		w.cycle(t.Context())
	}
	if len(w.events) != 0 {
		t.Errorf("events %v for one failed lookup, want none", w.kinds())
	}
	if n := len(w.logLines("WARN", "registry failed; retrying next cycle")); n != 1 {
		t.Errorf("%d warnings, want 1", n)
	}
	if n := len(w.logLines("ERROR", "")); n != 0 {
		t.Errorf("%d error lines for a blip", n)
	}
}

func TestCycleDryRunChangesNothing(t *testing.T) {
	w := newWorld(t)
	w.p.DryRun = true
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.services = &fakeServices{} // every call fails the deploy, and is seen below
	w.p.Services = w.services
	w.journal.BeginFn = func(context.Context, deploy.Release) error {
		t.Error("journal Begin in a dry run")
		return nil
	}

	plans := w.cycle(t.Context())

	if len(plans) != 1 || plans[0].Action != deploy.ActDeploy || plans[0].Want != newD {
		t.Fatalf("plans = %+v, want one deploy to %s", plans, newD)
	}
	if len(w.events) != 0 {
		t.Errorf("events %v in a dry run", w.kinds())
	}
	if n := len(w.logLines("INFO", "dry run: would deploy")); n != 1 {
		t.Errorf("%d dry-run lines, want 1", n)
	}
}

func TestCycleBusy(t *testing.T) {
	w := newWorld(t)
	entered, release := make(chan struct{}), make(chan struct{})
	w.lister.ListFn = func(context.Context) ([]deploy.Target, error) {
		close(entered)
		<-release
		return nil, nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.p.Cycle(t.Context())
		done <- err
	}()
	<-entered

	if _, err := w.p.Cycle(t.Context()); !errors.Is(err, deploy.ErrBusy) {
		t.Errorf("second Cycle = %v, want ErrBusy", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Errorf("first Cycle: %v", err)
	}
	w.lister.ListFn = func(context.Context) ([]deploy.Target, error) { return nil, nil }
	if _, err := w.p.Cycle(t.Context()); err != nil {
		t.Errorf("Cycle after the first ended: %v", err)
	}
}

func journaled(started time.Time) deploy.Release {
	return deploy.Release{ID: "left-over", ServiceID: "svc1", ServiceName: "web", Stack: "site", Ref: ref,
		From: oldD, To: newD, Started: started}
}

func TestResumeReportsFinishedDeployOnce(t *testing.T) {
	w := newWorld(t)
	w.open = []deploy.Release{journaled(time.Now().Add(-time.Minute))}
	w.targets = []deploy.Target{web(newD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	w.services.UpdateFn = nil

	w.cycle(t.Context())
	w.cycle(t.Context())

	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Succeeded}) {
		t.Fatalf("events = %v, want one Succeeded and no Started", got)
	}
	if ev := w.milestones()[0]; !ev.Resumed || ev.Release.ID != "left-over" {
		t.Errorf("event resumed %v release %s, want a resumed left-over", ev.Resumed, ev.Release.ID)
	}
	if !slices.Equal(ids(w.ended), []string{"left-over"}) || len(w.open) != 0 {
		t.Errorf("End calls %v, open %v: want the left-over closed", ids(w.ended), ids(w.open))
	}
	if len(w.begun) != 0 || len(w.updates) != 0 {
		t.Errorf("Begin %v, updates %v: want none", ids(w.begun), w.updates)
	}
}

func TestResumeDeployThatNeverStarted(t *testing.T) {
	w := newWorld(t)
	w.open = []deploy.Release{journaled(time.Now())}
	w.script = []deploy.Rollout{rollout("completed", oldD, task(oldD, "running"))}
	w.services.UpdateFn = nil
	w.services.RollbackFn = nil

	w.cycle(t.Context())

	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Failed}) {
		t.Fatalf("events = %v, want one Failed", got)
	}
	if ev := w.milestones()[0]; ev.Phase != deploy.PhasePrepare || ev.RolledBack || !ev.Resumed {
		t.Errorf("event phase %s rolled back %v resumed %v, want prepare, false, true", ev.Phase, ev.RolledBack, ev.Resumed)
	}
	if !slices.Equal(ids(w.ended), []string{"left-over"}) {
		t.Errorf("End calls %v, want the left-over closed", ids(w.ended))
	}
	if len(w.marked) != 0 {
		t.Errorf("MarkFailed %+v for a digest that never ran", w.marked)
	}
}

func TestCycleStoppedMidRolloutResumesLater(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("updating", newD, task(oldD, "running"))}
	ctx, cancel := context.WithCancel(t.Context())
	inspect := w.services.RolloutFn
	looks := 0
	w.services.RolloutFn = func(ctx context.Context, id string) (deploy.Rollout, error) {
		if looks++; looks == 2 {
			cancel() // the updater is told to stop while it watches
		}
		return inspect(ctx, id)
	}

	if _, err := w.p.Cycle(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Cycle: %v", err)
	}
	w.p.Wait()

	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Started}) {
		t.Fatalf("events = %v, want only Started: no outcome is known", got)
	}
	if len(w.ended) != 0 || len(w.open) != 1 {
		t.Fatalf("End %v, open %v: the deploy must stay in the journal", ids(w.ended), ids(w.open))
	}
	if len(w.rollbacks) != 0 || len(w.marked) != 0 {
		t.Errorf("Rollback %v, MarkFailed %+v while stopping", w.rollbacks, w.marked)
	}

	// The next run finds it and reports how it ended.
	id := w.open[0].ID
	w.services.RolloutFn = inspect
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	w.targets = []deploy.Target{web(newD)}
	w.cycle(t.Context())

	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Started, deploy.Succeeded}) {
		t.Fatalf("events = %v, want Started then the resumed Succeeded", got)
	}
	if ev := w.milestones()[1]; !ev.Resumed || ev.Release.ID != id {
		t.Errorf("outcome resumed %v for %s, want resumed for %s", ev.Resumed, ev.Release.ID, id)
	}
	w.journalPaired()
	if len(w.updates) != 1 {
		t.Errorf("updates %v, want the one from the first run", w.updates)
	}
}

func TestDeployServiceUnknown(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.services.UpdateFn = nil

	_, err := w.p.DeployService(t.Context(), "api")
	if !errors.Is(err, deploy.ErrNotFound) {
		t.Fatalf("DeployService(api) = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), `"api"`) {
		t.Errorf("error %q does not name the service", err)
	}
}

func TestDeployServiceRetriesFailedDigest(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.failed = map[string]map[string]bool{"svc1": {newD: true}}
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}

	ev, err := w.p.DeployService(t.Context(), "web")
	if err != nil {
		t.Fatalf("DeployService: %v", err)
	}
	if ev.Kind != deploy.Succeeded || ev.Release.To != newD {
		t.Errorf("DeployService = %s to %s, want succeeded to %s", ev.Kind, ev.Release.To, newD)
	}
	if want := []update{{pinned(newD), testCreds}}; !slices.Equal(w.updates, want) {
		t.Errorf("updates = %+v, want %+v", w.updates, want)
	}
	w.outcome(deploy.Succeeded)
	w.journalPaired()
}

func TestDeployServiceUpToDate(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(newD)}
	w.digests[ref] = newD
	w.services.UpdateFn = nil

	ev, err := w.p.DeployService(t.Context(), "svc1") // by ID
	if err != nil {
		t.Fatalf("DeployService: %v", err)
	}
	if ev.Kind != deploy.Succeeded || ev.Reason != "already up to date" || len(w.events) != 0 {
		t.Errorf("DeployService = %+v, events %v: want an up-to-date answer and no report", ev, w.kinds())
	}
}

func TestCycleResolvesEachTagOnce(t *testing.T) {
	w := newWorld(t)
	w.p.Concurrency = 3
	for i := range 60 {
		tg := web(oldD)
		tg.ID, tg.Name = fmt.Sprintf("svc%d", i), fmt.Sprintf("web%d", i)
		tg.Image = fmt.Sprintf("127.0.0.1:5000/app%d:1@%s", i%20, oldD)
		w.targets = append(w.targets, tg)
	}
	var (
		mu            sync.Mutex
		calls         = map[string]int{}
		inFlight, top int
	)
	w.registry.DigestFn = func(_ context.Context, ref string) (string, error) {
		mu.Lock()
		calls[ref]++
		inFlight++
		top = max(top, inFlight)
		mu.Unlock()
		defer func() { mu.Lock(); inFlight--; mu.Unlock() }()
		return oldD, nil
	}

	plans := w.cycle(t.Context())

	if len(calls) != 20 {
		t.Errorf("asked about %d refs, want 20", len(calls))
	}
	for ref, n := range calls {
		if n != 1 {
			t.Errorf("asked about %s %d times, want once per cycle", ref, n)
		}
	}
	if top > 3 {
		t.Errorf("%d lookups in flight, want at most Concurrency = 3", top)
	}
	for _, pl := range plans {
		if pl.Action != deploy.ActNone {
			t.Errorf("plan for %s = %s, want up to date", pl.Target.Name, pl.Action)
		}
	}
}

// Someone else changed the service mid-deploy: rolling back would undo
// their change, and the digest did nothing wrong.
func TestCycleLeavesSupersededDeployAlone(t *testing.T) {
	const theirs = "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{
		rollout("updating", newD, task(oldD, "running")),
		rollout("", theirs, task(oldD, "running")),
	}

	w.cycle(t.Context())

	if len(w.rollbacks) != 0 {
		t.Errorf("Rollback calls = %v: would undo someone else's change", w.rollbacks)
	}
	if len(w.marked) != 0 {
		t.Errorf("MarkFailed calls = %+v: the digest never failed", w.marked)
	}
	ev := w.outcome(deploy.Failed)
	if !strings.Contains(ev.Reason, "changed to") || ev.RolledBack {
		t.Errorf("outcome %q rolled back %v, want a superseded report", ev.Reason, ev.RolledBack)
	}
	w.journalPaired()
}

func TestDeployServiceDryRunChangesNothing(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.p.DryRun = true
	w.services.UpdateFn = nil // a call would panic

	ev, err := w.p.DeployService(t.Context(), "web")
	if err != nil {
		t.Fatalf("DeployService: %v", err)
	}
	if ev.Release.To != newD || !strings.Contains(ev.Reason, "dry run") || len(w.events) != 0 {
		t.Errorf("DeployService = %+v, events %v: want a dry-run answer naming %s and no report", ev, w.kinds(), newD)
	}
}

// Rollout progress is reported when it changes, not on every look.
func TestCycleReportsRolloutProgressOnChange(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{
		withDesired(2, rollout("updating", newD, task(oldD, "running"), task(oldD, "running"))),
		withDesired(2, rollout("updating", newD, task(oldD, "running"), task(oldD, "running"))),
		withDesired(2, rollout("updating", newD, task(newD, "running"), task(oldD, "running"))),
		withDesired(2, rollout("completed", newD, task(newD, "running"), task(newD, "running"))),
	}

	w.cycle(t.Context())

	var steps []string
	for _, e := range w.events {
		if e.Kind == deploy.Progress {
			steps = append(steps, fmt.Sprintf("%d/%d", e.Step.Done, e.Step.Total))
		}
	}
	if want := []string{"0/2", "1/2"}; !slices.Equal(steps, want) {
		t.Errorf("progress %v, want %v", steps, want)
	}
	w.outcome(deploy.Succeeded)
}

func withDesired(n int, r deploy.Rollout) deploy.Rollout { r.Desired = n; return r }

// Docker going away at the journal write is no deploy outcome: nothing is
// reported, and the next cycle that reaches Docker deploys with one start
// and one outcome.
func TestCycleJournalUnavailableWaits(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	begin := w.journal.BeginFn
	w.journal.BeginFn = func(context.Context, deploy.Release) error {
		return fmt.Errorf("record deploy: %w: connection refused", deploy.ErrUnavailable)
	}
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}

	w.cycle(t.Context())
	if len(w.events) != 0 {
		t.Fatalf("events %v, want none", w.kinds())
	}
	if len(w.updates) != 0 {
		t.Fatalf("updates %v while the journal could not be written", w.updates)
	}

	w.journal.BeginFn = begin
	w.events = nil
	w.cycle(t.Context())
	if got, want := w.kinds(), []deploy.Kind{deploy.Started, deploy.Succeeded}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	// The run's failure is counted by the cycle after it: a warning, since
	// one failure is not an outage yet.
	if n := len(w.logLines("WARN", "docker failed")); n != 1 {
		t.Errorf("%d warnings, want 1", n)
	}
	// The failed Begin's record is removed too, in case it was written.
	if len(w.begun) != 1 || len(w.ended) != 2 || w.ended[1].ID != w.begun[0].ID || len(w.open) != 0 {
		t.Errorf("journal Begin %v, End %v, open %v", ids(w.begun), ids(w.ended), ids(w.open))
	}
}

// Docker going away at the spec write leaves the deploy in flight, with
// nothing reported, unless the spec shows the write landed (then it is
// followed at once); the next cycle resumes it from what the spec says, so
// the deploy has one start and one outcome.
func TestCycleUpdateUnavailableResumesLater(t *testing.T) {
	for _, applied := range []bool{false, true} {
		t.Run(fmt.Sprint("applied=", applied), func(t *testing.T) {
			w := newWorld(t)
			w.targets = []deploy.Target{web(oldD)}
			w.digests[ref] = newD
			update := w.services.UpdateFn
			// land is the write taking effect: the spec and its tasks move.
			land := func(ctx context.Context, tg deploy.Target, image string, c deploy.Credentials) error {
				w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
				w.targets = []deploy.Target{web(newD)}
				return update(ctx, tg, image, c)
			}
			w.services.UpdateFn = func(ctx context.Context, tg deploy.Target, image string, c deploy.Credentials) error {
				if applied { // the write landed, its answer was lost
					land(ctx, tg, image, c)
				}
				return fmt.Errorf("update service: %w: unexpected EOF", deploy.ErrUnavailable)
			}
			w.script = []deploy.Rollout{rollout("completed", oldD, task(oldD, "running"))}

			w.cycle(t.Context())
			if applied {
				// The spec says the write landed: the run follows it at
				// once, one start and one outcome, written once.
				if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Started, deploy.Succeeded}) ||
					len(w.begun) != 1 || len(w.updates) != 1 || len(w.open) != 0 || w.outcome(deploy.Succeeded).Resumed {
					t.Fatalf("events %v, begun %d, writes %d, open %v: want the landed write read back and followed in the same run",
						got, len(w.begun), len(w.updates), ids(w.open))
				}
				return
			}
			if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Started}) {
				t.Fatalf("events %v after the lost write, want only Started", got)
			}
			if len(w.open) != 1 || len(w.marked) != 0 {
				t.Fatalf("in flight %v, marked %v: want the deploy kept in flight, no digest blamed", ids(w.open), w.marked)
			}
			if !applied {
				// Still unreachable next cycle: the deploy waits in flight,
				// and no second deploy of the service begins beside it.
				w.cycle(t.Context())
				if len(w.begun) != 1 || len(w.open) != 1 {
					t.Fatalf("journal Begin %v, in flight %v: want the one deploy, still waiting", ids(w.begun), ids(w.open))
				}
			}

			w.services.UpdateFn = land
			w.cycle(t.Context())
			var deploys []deploy.Event // the outage and its end aside
			for _, e := range w.milestones() {
				if e.Kind != deploy.Outage && e.Kind != deploy.Recovered {
					deploys = append(deploys, e)
				}
			}
			if len(deploys) != 2 || deploys[0].Kind != deploy.Started || deploys[1].Kind != deploy.Succeeded {
				t.Fatalf("events %v, want started, then one succeeded", w.kinds())
			}
			ev := deploys[1]
			if !ev.Resumed {
				t.Errorf("outcome not marked resumed: %+v", ev)
			}
			if n := len(w.begun); n != 1 {
				t.Errorf("journal Begin %d times, want once", n)
			}
			if n := len(w.updates); n != 1 {
				t.Errorf("%d spec writes landed, want 1 (a write that landed is not made again)", n)
			}
			if len(w.open) != 0 {
				t.Errorf("left in flight: %v", ids(w.open))
			}
		})
	}
}

// A deploy left in flight before its spec write, on a service whose last
// update was rolled back before it began: that rollback is not the
// deploy's, so the deploy is carried on, not reported rolled back.
func TestResumeIgnoresEarlierRollback(t *testing.T) {
	w := newWorld(t)
	started := time.Now().Add(-time.Minute)
	w.open = []deploy.Release{journaled(started)}
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	stale := rollout("rollback_completed", oldD, task(oldD, "running"))
	stale.UpdateStarted = started.Add(-time.Second)
	w.script = []deploy.Rollout{stale}
	update := w.services.UpdateFn
	w.services.UpdateFn = func(ctx context.Context, tg deploy.Target, image string, c deploy.Credentials) error {
		w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
		w.targets = []deploy.Target{web(newD)}
		return update(ctx, tg, image, c)
	}

	w.cycle(t.Context())

	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Succeeded}) {
		t.Fatalf("events = %v, want the resumed deploy carried on to one success", got)
	}
	if len(w.updates) != 1 || len(w.marked) != 0 {
		t.Errorf("updates %v, marked %v: want one spec write, nothing blamed", w.updates, w.marked)
	}
}

// Docker failing writes while reads work is counted per cycle, however many
// deploys tried: two services refused in one cycle are a warning, the
// second cycle of it an outage, reported once.
func TestCycleDockerWriteOutageCountsCycles(t *testing.T) {
	w := newWorld(t)
	other := web(oldD)
	other.ID, other.Name, other.Image = "svc2", "api", "127.0.0.1:5000/api:1@"+oldD
	w.targets = []deploy.Target{web(oldD), other}
	w.digests[ref] = newD
	w.digests["127.0.0.1:5000/api:1"] = newD
	w.journal.BeginFn = func(context.Context, deploy.Release) error {
		return fmt.Errorf("record deploy: %w: 503 this node is not a swarm manager", deploy.ErrUnavailable)
	}
	w.cycle(t.Context())
	if len(w.events) != 0 {
		t.Fatalf("events %v after one cycle, want none", w.kinds())
	}
	w.cycle(t.Context())
	w.cycle(t.Context())
	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Outage}) {
		t.Fatalf("events %v after three cycles refusing writes, want one outage", got)
	}
	if len(w.updates) != 0 {
		t.Fatalf("updates %v without a record", w.updates)
	}
}

// writesLand makes a spec write take effect: the target's image is what
// was written, as Swarm's spec would be.
func (w *world) writesLand() {
	w.services.UpdateFn = func(_ context.Context, tg deploy.Target, image string, c deploy.Credentials) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.updates = append(w.updates, update{image, c})
		for i := range w.targets {
			if w.targets[i].ID == tg.ID {
				w.targets[i].Image = image
			}
		}
		return nil
	}
}
