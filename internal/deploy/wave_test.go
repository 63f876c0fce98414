package deploy_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// waveWorld is a group of three, waves 1, 2, 2, whose rollouts follow
// their specs: a member whose spec carries bad fails its rollout (Swarm
// pauses it) until rolled back. calls lists the writes and looks in order.
func waveWorld(t *testing.T, bad string) (*world, *[]string) {
	w := newWorld(t)
	mk := func(id, name string, wave int) deploy.Target {
		tg := web(oldD)
		tg.ID, tg.Name, tg.Hooks.Group, tg.Hooks.Wave = id, name, "shop", wave
		return tg
	}
	w.targets = []deploy.Target{mk("svc2", "web", 2), mk("svc1", "api", 1), mk("svc3", "worker", 2)}
	w.digests[ref] = newD
	calls := &[]string{}
	w.services.UpdateFn = func(_ context.Context, tg deploy.Target, image string, _ deploy.Credentials) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		*calls = append(*calls, "write "+tg.ID)
		for i := range w.targets {
			if w.targets[i].ID == tg.ID {
				w.targets[i].Image = image
			}
		}
		return nil
	}
	w.services.RolloutFn = func(_ context.Context, id string) (deploy.Rollout, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		*calls = append(*calls, "look "+id)
		i := slices.IndexFunc(w.targets, func(tg deploy.Target) bool { return tg.ID == id })
		_, d := deploy.SplitImage(w.targets[i].Image)
		switch {
		case slices.Contains(w.rollbacks, id):
			return rollout("rollback_completed", oldD, task(oldD, "running")), nil
		case d == bad:
			return rollout("paused", d, task(oldD, "running"), gone(d, "unhealthy container")), nil
		}
		return rollout("completed", d, task(d, "running")), nil
	}
	return w, calls
}

func TestWavesDeployInOrder(t *testing.T) {
	w, calls := waveWorld(t, "")

	w.cycle(t.Context())

	var writes []string
	for _, c := range *calls {
		if strings.HasPrefix(c, "write ") {
			writes = append(writes, c)
		}
	}
	if !slices.Equal(writes, []string{"write svc1", "write svc2", "write svc3"}) {
		t.Fatalf("writes %v, want wave 1 (svc1) first", writes)
	}
	if i, j := slices.Index(*calls, "look svc1"), slices.Index(*calls, "write svc2"); i < 0 || i > j {
		t.Fatalf("calls %v: wave 2 written before wave 1 was judged", *calls)
	}
	for _, e := range w.milestones() {
		if e.Kind == deploy.Failed {
			t.Errorf("%s failed: %s", e.Release.ServiceName, e.Reason)
		}
	}
}

func TestWavesStopAtTheFailedWave(t *testing.T) {
	w, calls := waveWorld(t, newD)

	w.cycle(t.Context())

	if slices.Contains(*calls, "write svc2") || slices.Contains(*calls, "write svc3") {
		t.Fatalf("calls %v: a wave after the failed one was written", *calls)
	}
	got := map[string]deploy.Event{}
	for _, e := range w.milestones() {
		if e.Kind == deploy.Failed {
			got[e.Release.ServiceID] = e
		}
	}
	if e := got["svc1"]; !e.RolledBack || e.Phase != deploy.PhaseRollout {
		t.Errorf("wave 1: %+v, want a failed rollout rolled back", e)
	}
	for _, id := range []string{"svc2", "svc3"} {
		if e := got[id]; !strings.Contains(e.Reason, "wave 1 stopped the group: api failed") || e.RolledBack {
			t.Errorf("%s: %q, want not deployed, naming the wave that stopped it", id, e.Reason)
		}
	}
	var marked []string
	for _, m := range w.marked {
		marked = append(marked, m.service)
	}
	slices.Sort(marked)
	if !slices.Equal(marked, []string{"svc1", "svc2", "svc3"}) {
		t.Errorf("marked %v, want every member's digest remembered", marked)
	}
	if len(w.open) != 0 {
		t.Errorf("records left open: %v", ids(w.open))
	}
}

// An updater restarted while wave 1 rolled out judges wave 1 before it
// writes wave 2: a bad wave 1 found on resume stops the group there.
func TestResumedWavesKeepTheirOrder(t *testing.T) {
	w, calls := waveWorld(t, newD)
	for i := range w.targets {
		if w.targets[i].ID == "svc1" {
			w.targets[i].Image = pinned(newD) // wave 1 was written before the restart
		}
	}
	for _, id := range []string{"svc1", "svc2", "svc3"} {
		rel := journaled(time.Now().Add(-time.Minute))
		rel.ID, rel.ServiceID, rel.ServiceName, rel.Stage = "rec-"+id, id, id, deploy.StagePrepared
		w.open = append(w.open, rel)
	}

	w.cycle(t.Context())

	if slices.Contains(*calls, "write svc2") || slices.Contains(*calls, "write svc3") {
		t.Fatalf("calls %v: wave 2 was written before wave 1, resumed, was judged", *calls)
	}
	if len(w.open) != 0 {
		t.Errorf("records left open: %v", ids(w.open))
	}
}

// A resumed bake of some members only: the members that never baked are
// baked in full, not credited with the others' time.
func TestResumedBakeOfSomeMembersBakesTheRest(t *testing.T) {
	w, _ := waveWorld(t, "")
	for i := range w.targets {
		w.targets[i].Hooks.Wave = 0
		w.targets[i].Bake = 50 * time.Millisecond
		w.targets[i].Image = pinned(newD)
	}
	for _, id := range []string{"svc1", "svc2"} {
		rel := journaled(time.Now().Add(-3 * time.Hour))
		rel.ID, rel.ServiceID, rel.ServiceName = "rec-"+id, id, id
		if id == "svc1" {
			rel.Stage, rel.StageAt = deploy.StageBaking, time.Now().Add(-2*time.Hour)
		} else {
			rel.Stage = deploy.StagePrepared
		}
		w.open = append(w.open, rel)
	}
	w.targets = w.targets[:2]
	slices.SortFunc(w.targets, func(a, b deploy.Target) int { return strings.Compare(a.ID, b.ID) })

	w.cycle(t.Context())

	for _, e := range w.milestones() {
		if e.Kind != deploy.Succeeded {
			t.Fatalf("%s %s: %s", e.Release.ServiceName, e.Kind, e.Reason)
		}
		if e.Baked >= time.Hour {
			t.Errorf("%s credited with %s baked: svc2 never baked", e.Release.ServiceName, e.Baked)
		}
	}
}
