package deploy_test

import (
	"context"
	"slices"
	"strings"
	"testing"

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
