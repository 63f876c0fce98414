package deploy_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

type observed struct {
	mu    sync.Mutex
	stats []deploy.CycleStats
}

func (o *observed) ObserveCycle(s deploy.CycleStats) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stats = append(o.stats, s)
}

// A tick while `updater deploy` (or the API's deploy) runs is refused as
// busy and observed as such: that is what updater_cycles_total{result="busy"}
// counts, so the tick itself needs no warning.
func TestTickDuringDeployIsBusy(t *testing.T) {
	w := newHookWorld(t)
	w.targets = []deploy.Target{hooked(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	obs := &observed{}
	w.p.Observer = obs
	inRollout, release := w.holdRollout()
	defer release()
	deployed := make(chan error, 1)
	go func() { _, err := w.p.DeployService(t.Context(), "web"); deployed <- err }()
	await(t, inRollout, "rollout")

	_, err := w.p.Cycle(t.Context())
	release()
	if !errors.Is(err, deploy.ErrBusy) {
		t.Errorf("Cycle during a deploy = %v, want ErrBusy", err)
	}
	if err := <-deployed; err != nil {
		t.Fatalf("DeployService: %v", err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.stats) != 1 || !errors.Is(obs.stats[0].Err, deploy.ErrBusy) || !obs.stats[0].Full {
		t.Errorf("observed %+v, want one full cycle refused as busy", obs.stats)
	}
}

func await(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
	}
}

// holdRollout makes the first rollout inspection wait until the returned
// func is called; in says it has been reached.
func (w *hookWorld) holdRollout() (in <-chan struct{}, release func()) {
	reached, open := make(chan struct{}), make(chan struct{})
	var once sync.Once
	inspect := w.services.RolloutFn
	w.services.RolloutFn = func(ctx context.Context, id string) (deploy.Rollout, error) {
		once.Do(func() { close(reached) })
		select {
		case <-open:
		case <-ctx.Done():
		}
		return inspect(ctx, id)
	}
	return reached, sync.OnceFunc(func() { close(open) })
}
