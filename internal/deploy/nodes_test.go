package deploy_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

func on(node string, tk deploy.Task) deploy.Task { tk.Node = node; return tk }

// With failure_action continue Swarm reports the update completed while a
// node keeps rejecting the new version (it can't pull it): the updater
// ends the deploy at the third rejection, rolls back, and names the node.
func TestCycleFailsOnRepeatedRejections(t *testing.T) {
	const noImage = "No such image: " + ref
	rejected := func(desired string) deploy.Task {
		return deploy.Task{ID: "r", Node: "worker-1", Image: pinned(newD), State: "rejected", Desired: desired, Err: noImage}
	}
	pending := task(newD, "pending")
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{
		rollout("completed", newD, pending, rejected("ready")),
		rollout("completed", newD, pending, rejected("shutdown"), rejected("ready")),
		rollout("completed", newD, pending, rejected("shutdown"), rejected("shutdown"), rejected("ready")),
	}
	w.afterRollback = []deploy.Rollout{rollout("rollback_completed", oldD, task(oldD, "running"))}

	w.cycle(t.Context())

	if w.served != 3 {
		t.Errorf("inspected %d times, want 3: two rejections are not yet a failure, three are", w.served)
	}
	if !slices.Equal(w.rollbacks, []string{"svc1"}) {
		t.Errorf("Rollback calls = %v, want [svc1]: Swarm will not roll back with failure_action continue", w.rollbacks)
	}
	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhaseRollout || !ev.RolledBack ||
		!strings.Contains(ev.Reason, "rejected 3 times") || !strings.Contains(ev.Reason, "on node worker-1: "+noImage) {
		t.Errorf("outcome phase %s rolled back %v reason %q: want rollout, rolled back, three rejections on worker-1", ev.Phase, ev.RolledBack, ev.Reason)
	}
	w.journalPaired()
}

// A rollout that waits for a node until the deadline says why.
func TestCycleTimeoutNamesWhatTasksWait(t *testing.T) {
	const noNode = "no suitable node (1 node not available for new tasks; scheduling constraints not satisfied on 1 node)"
	w := newWorld(t)
	clock := &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	w.p.Now = clock.Now
	w.p.Timeout = time.Minute
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	waiting := task(newD, "pending")
	waiting.Err = noNode
	w.script = []deploy.Rollout{rollout("updating", newD, waiting, on("worker-1", gone(oldD, "")))}
	w.afterRollback = []deploy.Rollout{rollout("rollback_completed", oldD, task(oldD, "running"))}
	inspect := w.services.RolloutFn
	w.services.RolloutFn = func(ctx context.Context, id string) (deploy.Rollout, error) {
		clock.Advance(30 * time.Second)
		return inspect(ctx, id)
	}

	w.cycle(t.Context())

	ev := w.outcome(deploy.Failed)
	if !strings.Contains(ev.Reason, "within 1m0s") || !strings.Contains(ev.Reason, "(task errors: "+noNode+")") {
		t.Errorf("reason %q: want the timeout and what the new task waits for", ev.Reason)
	}
}
