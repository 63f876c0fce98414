package deploy_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// holdUntil holds every deploy before until.
type holdUntil struct {
	until time.Time
	why   string
}

func (h holdUntil) Eligible(at time.Time) (bool, time.Time, string) {
	if at.Before(h.until) {
		return false, h.until, h.why
	}
	return true, at, ""
}

type memSightings struct {
	mu    sync.Mutex
	first map[string]time.Time // digest → first seen
	notes int
}

func (m *memSightings) Seen(_ context.Context, _ deploy.Target, d string, now time.Time, note bool) (time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.first[d]; ok {
		return t, nil
	}
	if !note {
		return time.Time{}, nil
	}
	m.first = map[string]time.Time{d: now} // the digest before is forgotten
	m.notes++
	return now, nil
}

func policyWorld(t *testing.T, tg deploy.Target) (*world, *fakeClock) {
	w := newWorld(t)
	w.writesLand()
	w.targets = []deploy.Target{tg}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	clock := &fakeClock{t: time.Date(2026, 12, 24, 10, 0, 0, 0, time.UTC)}
	w.p.Now = clock.Now
	return w, clock
}

func TestFreezeHoldsThenTheNewestDeploys(t *testing.T) {
	tg := web(oldD)
	end := time.Date(2026, 12, 24, 12, 0, 0, 0, time.UTC)
	tg.Policy = holdUntil{end, "held until Thu 12:00 UTC: inside the freeze 2026-12-20..2026-12-23"}
	tg.Freeze = tg.Policy
	w, clock := policyWorld(t, tg)

	for range 3 {
		plans := w.cycle(t.Context())
		if pl := plans[0]; pl.Action != deploy.ActHeld || !pl.EligibleAt.Equal(end) || !strings.Contains(pl.Reason, "inside the freeze") {
			t.Fatalf("plan %s %v %q, want held until %v", pl.Action, pl.EligibleAt, pl.Reason, end)
		}
	}
	if len(w.updates) != 0 {
		t.Fatalf("%d spec writes during the freeze", len(w.updates))
	}
	if got := w.kinds(); len(got) != 1 || got[0] != deploy.Held {
		t.Fatalf("events %v, want one held", got)
	}
	if _, err := w.p.DeployService(t.Context(), "web"); !errors.Is(err, deploy.ErrFrozen) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("a person's deploy in a freeze: %v, want ErrFrozen naming --force", err)
	}
	third := "sha256:" + strings.Repeat("c", 64)
	w.mu.Lock()
	w.digests[ref] = third // the tag moved again while frozen
	w.script = []deploy.Rollout{rollout("completed", third, task(third, "running"))}
	w.mu.Unlock()
	clock.Advance(2 * time.Hour)

	w.cycle(t.Context())

	if len(w.updates) != 1 || w.updates[0].image != pinned(third) {
		t.Fatalf("updates %v, want the newest digest once the freeze ended", w.updates)
	}
}

func TestForcedDeployGoesThroughAFreeze(t *testing.T) {
	tg := web(oldD)
	tg.Policy = holdUntil{time.Date(2027, 1, 5, 0, 0, 0, 0, time.UTC), "held: frozen"}
	tg.Freeze = tg.Policy
	w, _ := policyWorld(t, tg)

	ev, err := w.p.ForceDeployService(t.Context(), "web")

	if err != nil || ev.Kind != deploy.Succeeded || len(w.updates) != 1 {
		t.Fatalf("forced deploy: %v %v, %d updates", ev.Kind, err, len(w.updates))
	}
}

func TestWindowHoldsCyclesNotAPerson(t *testing.T) {
	tg := web(oldD)
	tg.Policy = holdUntil{time.Date(2026, 12, 24, 22, 0, 0, 0, time.UTC), "held until Thu 22:00 UTC: outside the window 0 22 * * * 2h"}
	w, _ := policyWorld(t, tg)

	if pl := w.cycle(t.Context())[0]; pl.Action != deploy.ActHeld {
		t.Fatalf("plan %s, want held", pl.Action)
	}
	ev, err := w.p.DeployService(t.Context(), "web")
	if err != nil || ev.Kind != deploy.Succeeded || len(w.updates) != 1 {
		t.Fatalf("a person's deploy outside the window: %v %v, %d updates; want it deployed", ev.Kind, err, len(w.updates))
	}
}

func TestCooldownCountsFromFirstSeen(t *testing.T) {
	tg := web(oldD)
	tg.Cooldown = 20 * time.Second
	w, clock := policyWorld(t, tg)
	seen := &memSightings{}
	w.p.Sightings = seen

	if pl := w.cycle(t.Context())[0]; pl.Action != deploy.ActHeld || !strings.Contains(pl.Reason, "cooldown") {
		t.Fatalf("plan %s %q, want held by the cooldown", pl.Action, pl.Reason)
	}
	// d3 replaces d2 within the cooldown: d2 is never deployed, and d3's
	// cooldown counts from when it was seen.
	clock.Advance(10 * time.Second)
	third := "sha256:" + strings.Repeat("c", 64)
	w.mu.Lock()
	w.digests[ref] = third
	w.script = []deploy.Rollout{rollout("completed", third, task(third, "running"))}
	w.mu.Unlock()
	w.cycle(t.Context())
	clock.Advance(15 * time.Second) // d2's 20 s are over; d3's are not
	if pl := w.cycle(t.Context())[0]; pl.Action != deploy.ActHeld || len(w.updates) != 0 {
		t.Fatalf("plan %s, %d updates: want d3 still cooling", pl.Action, len(w.updates))
	}
	clock.Advance(6 * time.Second)
	w.cycle(t.Context())
	if len(w.updates) != 1 || w.updates[0].image != pinned(third) || seen.notes != 2 {
		t.Fatalf("updates %v, %d notes: want d3 deployed once its cooldown ended, each digest noted once", w.updates, seen.notes)
	}
}

func TestCheckShowsHeldWithoutNoting(t *testing.T) {
	tg := web(oldD)
	tg.Cooldown = time.Hour
	w, _ := policyWorld(t, tg)
	seen := &memSightings{}
	w.p.Sightings = seen

	plans, err := w.p.Check(t.Context())

	if err != nil || plans[0].Action != deploy.ActHeld || seen.notes != 0 || len(w.events) != 0 {
		t.Fatalf("check: %v %s, %d notes, events %v: want held, nothing noted or reported", err, plans[0].Action, seen.notes, w.events)
	}
}

func TestGroupHeldWithItsMember(t *testing.T) {
	a, b := web(oldD), web(oldD)
	a.Hooks.Group, b.Hooks.Group = "shop", "shop"
	b.ID, b.Name = "svc2", "worker"
	a.Policy = holdUntil{time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), "held: frozen"}
	w, _ := policyWorld(t, a)
	w.targets = []deploy.Target{a, b}

	plans := w.cycle(t.Context())

	if plans[0].Action != deploy.ActHeld || plans[1].Action != deploy.ActHeld || !strings.Contains(plans[1].Reason, "with its group") {
		t.Fatalf("plans %s, %s %q: want both held", plans[0].Action, plans[1].Action, plans[1].Reason)
	}
	if len(w.updates) != 0 {
		t.Fatalf("%d writes", len(w.updates))
	}
}

func TestScheduledBackupHeldByItsWindow(t *testing.T) {
	w := newHookWorld(t)
	tg := hooked(oldD)
	tg.BackupWindow = holdUntil{time.Now().Add(time.Hour), "held until 02:00 UTC: outside the window 0 1 * * * 1h"}

	if err := w.p.Backup(t.Context(), tg); err != nil {
		t.Fatal(err)
	}
	if len(w.ran) != 0 || len(w.events) != 1 || w.events[0].Step.State != deploy.StepSkipped || !strings.Contains(w.events[0].Reason, "updater.backup.window") {
		t.Fatalf("jobs %q, events %+v: want the backup skipped, saying why", w.jobNames(), w.events)
	}
	tg.BackupWindow = holdUntil{}
	if err := w.p.Backup(t.Context(), tg); err != nil || len(w.ran) != 1 {
		t.Fatalf("inside the window: %v, jobs %q", err, w.jobNames())
	}
}

// What Status shows once a run has landed: not "deploy" until the next
// cycle, but what the run did.
func TestStatusAfterARunLands(t *testing.T) {
	w, _ := policyWorld(t, web(oldD))

	w.cycle(t.Context())

	st := w.p.Status()
	if len(st.Services) != 1 || st.Services[0].Action != deploy.ActNone || st.Services[0].Target.Digest() != newD {
		t.Fatalf("status after the deploy: %+v", st.Services)
	}
	bad := "sha256:" + strings.Repeat("d", 64)
	w.mu.Lock()
	w.digests[ref] = bad
	w.script = []deploy.Rollout{rollout("rollback_completed", newD, task(newD, "running"), gone(bad, "unhealthy"))}
	w.mu.Unlock()
	w.cycle(t.Context())
	if s := w.p.Status().Services[0]; s.Action != deploy.ActSkipFailed || s.Want != bad {
		t.Fatalf("status after a failed deploy: %s %s %q", s.Action, s.Want, s.Reason)
	}
}

// A cooldown's clock starts when the digest is first seen, even while a
// window holds it; eligible_at is the window's next opening after it.
func TestCooldownCountsWhileAWindowHolds(t *testing.T) {
	tg := web(oldD)
	tg.Cooldown = 2 * time.Hour
	w, clock := policyWorld(t, tg) // 10:00
	opens := time.Date(2026, 12, 24, 14, 0, 0, 0, time.UTC)
	tg.Policy = holdUntil{opens, "outside the window"}
	w.targets = []deploy.Target{tg}
	seen := &memSightings{}
	w.p.Sightings = seen

	pl := w.cycle(t.Context())[0]
	if pl.Action != deploy.ActHeld || seen.notes != 1 || !pl.EligibleAt.Equal(opens) {
		t.Fatalf("plan %s at %v, %d sightings noted: want held until the window opens (the cooldown ends before), the sighting noted", pl.Action, pl.EligibleAt, seen.notes)
	}
	clock.Advance(4 * time.Hour)
	w.cycle(t.Context())
	if len(w.updates) != 1 {
		t.Fatalf("%d writes once the window opened, the cooldown long over", len(w.updates))
	}
}
