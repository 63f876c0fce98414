package deploy_test

import (
	"context"
	"slices"
	"strings"
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
// A tick while a deploy runs is a cycle like any other: the deploy runs on
// in the background, the cycle plans the service as deploying and starts
// nothing beside it, and is observed as an ordinary cycle, not as busy.
func TestTickDuringDeployPlansDeploying(t *testing.T) {
	w := newHookWorld(t)
	w.targets = []deploy.Target{hooked(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	obs := &observed{}
	w.p.Observer = obs
	inRollout, release := w.holdRollout()
	defer release()
	deployed := make(chan deploy.Event, 1)
	go func() {
		ev, err := w.p.DeployService(t.Context(), "web")
		if err != nil {
			t.Errorf("DeployService: %v", err)
		}
		deployed <- ev
	}()
	await(t, inRollout, "rollout")

	// CycleFor, a full cycle like a tick's, waits for DeployService to have
	// planned (its run may reach the rollout first); a tick would find the
	// pipeline busy for that instant only.
	plans, err := w.p.CycleFor(t.Context(), nil)
	if err != nil {
		t.Errorf("Cycle during a deploy = %v, want nil", err)
	}
	if len(plans) != 1 || plans[0].Action != deploy.ActDeploying || !strings.Contains(plans[0].Reason, "running") {
		t.Errorf("plans %+v, want web deploying", plans)
	}
	// The status names the run, and how long it may take: the backup and
	// the migration, the rollout, a rollback, a minute.
	running := w.p.Status().Running
	if bound := 2*hooked(oldD).Hooks.Timeout + 2*w.p.Timeout + time.Minute; len(running) != 1 ||
		!slices.Equal(running[0].Services, []string{"service:svc1"}) || running[0].Bound != bound || running[0].Stuck(time.Now()) {
		t.Errorf("Status().Running = %+v, want web's run, bound %s, not stuck", running, bound)
	}
	release()
	if ev := <-deployed; ev.Kind != deploy.Succeeded {
		t.Errorf("DeployService = %s %s, want succeeded", ev.Kind, ev.Reason)
	}
	w.p.Wait()
	if running := w.p.Status().Running; len(running) != 0 {
		t.Errorf("Status().Running = %+v after the run ended", running)
	}
	if len(w.begun) != 1 {
		t.Errorf("records begun %v, want the one deploy: none beside it", ids(w.begun))
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.stats) != 1 || obs.stats[0].Err != nil || obs.stats[0].Deploys != 0 {
		t.Errorf("observed %+v, want one cycle, ok, deploying nothing", obs.stats)
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
