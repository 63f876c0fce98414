package deploy_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// A full cycle removes the failed-digest records of a service that no
// longer exists, and keeps those of one that exists but is not watched
// (looked up once, not every cycle); a push's cycle sweeps nothing.
func TestCycleSweepsRecordsOfRemovedServices(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = oldD
	w.failed = map[string]map[string]bool{
		"svc1":      {newD: true}, // watched
		"removed":   {newD: true},
		"unwatched": {newD: true},
	}
	forget := w.ledger.ForgetFn
	w.ledger.ForgetFn = func(ctx context.Context, id string) error {
		w.mu.Lock()
		delete(w.failed, id) // as Swarm would: gone from the next read
		w.mu.Unlock()
		return forget(ctx, id)
	}
	var looked []string
	w.services.RolloutFn = func(_ context.Context, id string) (deploy.Rollout, error) {
		looked = append(looked, id)
		if id == "removed" {
			return deploy.Rollout{}, deploy.ErrNotFound
		}
		return rollout("completed", oldD, task(oldD, "running")), nil
	}

	if _, err := w.p.CycleFor(t.Context(), []deploy.Push{deploy.PushOf(ref)}); err != nil {
		t.Fatal(err)
	}
	if len(w.forgets) != 0 || len(looked) != 0 {
		t.Fatalf("a push's cycle forgot %v, looked up %v: want nothing swept", w.forgets, looked)
	}
	w.cycle(t.Context())
	w.cycle(t.Context())
	if !slices.Equal(w.forgets, []string{"removed"}) {
		t.Errorf("forgot %v, want the removed service's records only", w.forgets)
	}
	slices.Sort(looked)
	if !slices.Equal(looked, []string{"removed", "unwatched"}) {
		t.Errorf("looked up %v, want each once", looked)
	}
}

// Advice about update_config is one line per kind, with the count and
// the first names, once per service: not a line per service per kind.
func TestAdviceIsOneLinePerKind(t *testing.T) {
	w := newWorld(t)
	for i := range 7 {
		tg := web(oldD)
		tg.ID, tg.Name, tg.Healthcheck = fmt.Sprintf("s%d", i), fmt.Sprintf("svc%d", i), false
		w.targets = append(w.targets, tg)
	}
	w.targets = append(w.targets, web(oldD)) // fully configured: no advice
	w.digests[ref] = oldD
	w.cycle(t.Context())
	w.cycle(t.Context())
	lines := w.logLines("WARN", "no health check in the service spec")
	if len(lines) != 1 || lines[0]["services"] != float64(7) || lines[0]["service"] != "svc0, svc1, svc2, svc3, svc4, …" {
		t.Fatalf("advice %v, want one line for the 7 services, naming the first 5", lines)
	}
	if n := len(w.logLines("WARN", "start-first")) + len(w.logLines("WARN", "failure_action")); n != 0 {
		t.Errorf("%d lines of advice the services don't need", n)
	}
}

// `updater check` (another process) shows a service whose deploy record
// is in Swarm as deploying, whatever its tag says.
func TestCheckShowsDeployInFlightFromItsRecord(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.open = []deploy.Release{{ID: "rec1", ServiceID: "svc1", ServiceName: "web", Ref: ref, From: oldD, To: newD}}
	plans, err := w.p.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(plans) != 1 || plans[0].Action != deploy.ActDeploying || !strings.Contains(plans[0].Reason, "deploy rec1 to "+deploy.Short(newD)) {
		t.Errorf("plans %+v, want web deploying per its record", plans)
	}
	if len(w.updates) != 0 || len(w.begun) != 0 {
		t.Errorf("a check changed something: writes %d, records begun %d", len(w.updates), len(w.begun))
	}
}

type syncs struct{ calls [][]string }

func (s *syncs) Sync(targets []deploy.Target) {
	var names []string
	for _, t := range targets {
		names = append(names, t.Name)
	}
	s.calls = append(s.calls, names)
}

// Scheduled backups follow what every full cycle watched; a push's cycle,
// which lists only some services, tells them nothing.
func TestSchedulesFollowEachFullCycle(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = oldD
	s := &syncs{}
	w.p.Schedules = s
	if _, err := w.p.CycleFor(t.Context(), []deploy.Push{deploy.PushOf(ref)}); err != nil {
		t.Fatal(err)
	}
	w.cycle(t.Context())
	w.targets = nil // the service went
	w.cycle(t.Context())
	if len(s.calls) != 2 || !slices.Equal(s.calls[0], []string{"web"}) || len(s.calls[1]) != 0 {
		t.Errorf("schedules told %q, want [web] then nothing, once per full cycle", s.calls)
	}
}

type fakeSweeper struct {
	recorded []string
	asked    int
	forgot   []string
	onForget func(id string)
}

func (f *fakeSweeper) Recorded(context.Context) ([]string, error) { f.asked++; return f.recorded, nil }
func (f *fakeSweeper) ForgetService(_ context.Context, id string) error {
	f.forgot = append(f.forgot, id)
	if f.onForget != nil {
		f.onForget(id)
	}
	f.recorded = slices.DeleteFunc(f.recorded, func(r string) bool { return r == id })
	return nil
}

// With a Sweeper, a service that is gone loses every record, not only its
// failed digests, also one with no failed digest at all; the Sweeper is
// asked at most once per SweepEvery.
func TestCycleSweepsEveryRecordWithASweeper(t *testing.T) {
	w := newWorld(t)
	clock := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	w.p.Now = clock.Now
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = oldD
	w.failed = map[string]map[string]bool{"failedOnly": {newD: true}}
	sw := &fakeSweeper{recorded: []string{"svc1", "promotedOnly"}, onForget: func(id string) {
		w.mu.Lock()
		delete(w.failed, id) // as Swarm would: its failed digests went too
		w.mu.Unlock()
	}}
	w.p.Sweeper = sw
	w.services.RolloutFn = func(_ context.Context, id string) (deploy.Rollout, error) {
		return deploy.Rollout{}, deploy.ErrNotFound // every service not watched is gone
	}
	w.cycle(t.Context())
	w.cycle(t.Context())
	slices.Sort(sw.forgot)
	if !slices.Equal(sw.forgot, []string{"failedOnly", "promotedOnly"}) || len(w.forgets) != 0 {
		t.Errorf("ForgetService %v, Ledger.Forget %v: want every record of both gone services, through the Sweeper", sw.forgot, w.forgets)
	}
	if sw.asked != 1 {
		t.Errorf("Sweeper asked %d times in two cycles a second apart, want once per %s", sw.asked, deploy.SweepEvery)
	}
	clock.Advance(deploy.SweepEvery)
	w.cycle(t.Context())
	if sw.asked != 2 {
		t.Errorf("Sweeper asked %d times after %s, want twice", sw.asked, deploy.SweepEvery)
	}
}
