//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
	updaterswarm "github.com/updater-dev/updater/internal/swarm"
)

// The swarm adapter's canary (internal/swarm/canary.go) on the real
// swarm: Canary moves exactly its tasks and Swarm then waits; Promote
// moves the others and leaves the canary running; Revert replaces only
// the canary; Seal, after either, leaves `docker service rollback`
// nothing to undo. Every claim is read from Docker (the spec, the tasks and
// their containers), never from the adapter's word. The Swarm facts it
// builds on are test/e2e/canary_swarm_test.go's; this proves the
// adapter's writes use them right.

// canaryLabels label a service with a canary of one task, so that the
// adapter's List reads Target.Canary from the real spec.
var canaryLabels = map[string]string{
	deploy.LabelCanary:      "1",
	deploy.LabelCanaryQuery: `sum(rate(http_requests_total{code=~"5..",task=~"{tasks}"}[1m]))`,
	deploy.LabelCanaryMax:   "0.05",
}

// canaryWatch accumulates, over a whole test, every task ever seen on
// each digest: a task that ran the new version for one poll still counts.
type canaryWatch struct {
	t   *testing.T
	id  string
	saw map[string]map[string]bool // digest → task IDs
}

func newCanaryWatch(t *testing.T, id string) *canaryWatch {
	return &canaryWatch{t: t, id: id, saw: map[string]map[string]bool{}}
}

// look lists the service's tasks on digest once, remembers them, and
// returns the running ones with their container IDs.
func (w *canaryWatch) look(digest string) map[string]string {
	w.t.Helper()
	if w.saw[digest] == nil {
		w.saw[digest] = map[string]bool{}
	}
	running := map[string]string{}
	for _, task := range tasksOf(w.t, w.id, digest) {
		w.saw[digest][task.ID] = true
		if task.DesiredState == swarm.TaskStateRunning && task.Status.State == swarm.TaskStateRunning && task.Status.ContainerStatus != nil {
			running[task.ID] = task.Status.ContainerStatus.ContainerID
		}
	}
	return running
}

// ever is how many tasks were ever seen on digest.
func (w *canaryWatch) ever(digest string) int { w.look(digest); return len(w.saw[digest]) }

func updateStateOf(s swarm.Service) swarm.UpdateState {
	if s.UpdateStatus == nil {
		return ""
	}
	return s.UpdateStatus.State
}

// steady checks cond (what is wrong, "" when all is well) every 200 ms
// for d: a claim that nothing moves is watched for its whole length.
func steady(t *testing.T, d time.Duration, what string, cond func() string) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if bad := cond(); bad != "" {
			t.Fatalf("%s: %s", what, bad)
		}
	}
}

// canaryService creates a 4-replica healthchecked service on v1 in a
// stack of its own, labelled with a canary, and returns the adapter, the
// target as the adapter lists it, and the digests of v1 and v2.
func canaryService(t *testing.T, tag string) (sw *updaterswarm.Swarm, target deploy.Target, oldD, newD string) {
	t.Helper()
	repo, stack := "e2e/canaryadapter-"+tag, "e2ecanad"+tag
	oldD, newD = push(t, repo, "v1"), push(t, repo, "v2")
	createService(t, stack+"_web", repo, oldD, svcOpts{stack: stack, optIn: true, replicas: 4, labels: canaryLabels})
	sw, err := updaterswarm.New(updaterswarm.Config{Label: "updater.enable", Stack: stack, Holder: "e2e-canaryadapter"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sw.Close() })
	targets, err := sw.List(t.Context())
	if err != nil || len(targets) != 1 {
		t.Fatalf("list the canary's service: %+v, %v", targets, err)
	}
	target = targets[0]
	if target.HooksErr != nil || target.Canary.Tasks != 1 {
		t.Fatalf("listed target: canary %+v, label error %v; want a canary of 1 task", target.Canary, target.HooksErr)
	}
	return sw, target, oldD, newD
}

// startCanary runs the adapter's Canary of one task and checks, from
// Docker, that exactly one task moves and Swarm then waits. It returns
// the canary's task and container, and the old tasks' containers.
func startCanary(t *testing.T, sw *updaterswarm.Swarm, target deploy.Target, w *canaryWatch, newImg, oldD, newD string) (canary, survivors map[string]string) {
	t.Helper()
	before := w.look(oldD)
	if len(before) != 4 {
		t.Fatalf("%d tasks on v1 before the canary, want 4", len(before))
	}
	start := time.Now()
	if err := sw.Canary(t.Context(), target, newImg, deploy.Credentials{}, target.Canary.Tasks); err != nil {
		t.Fatalf("canary: %v", err)
	}
	waitFor(t, 60*time.Second, "the canary task running v2", func() bool { return len(w.look(newD)) == 1 })
	t.Logf("Canary: 1 task running v2 %s after the write", time.Since(start).Round(100*time.Millisecond))
	canary = w.look(newD)

	// Swarm waits: past the service's monitor (3 s) and its health check
	// interval (1 s) several times over, no second task moves.
	start = time.Now()
	steady(t, 10*time.Second, "after the canary's task, Swarm waits", func() string {
		s := inspect(t, target.ID)
		if st := updateStateOf(s); st != swarm.UpdateStateUpdating {
			return "update state " + string(st) + ", want updating"
		}
		if n := w.ever(newD); n != 1 {
			return fmt.Sprintf("%d tasks ever on v2, want 1", n)
		}
		if old := w.look(oldD); len(old) != 3 {
			return fmt.Sprintf("%d tasks on v1, want 3", len(old))
		}
		return ""
	})
	t.Logf("Canary: nothing else moved for %s (observed)", time.Since(start).Round(100*time.Millisecond))
	ro, err := sw.Rollout(t.Context(), target.ID)
	if err != nil || !ro.Canary {
		t.Fatalf("Rollout during the canary: Canary %t (%v), want true", ro.Canary, err)
	}
	survivors = w.look(oldD)
	for task, ctr := range survivors {
		if before[task] != ctr {
			t.Errorf("old task %.12s changed container during the canary", task)
		}
	}
	return canary, survivors
}

// decided checks what the spec says after the promotion or the revert:
// the service's own update config back, the label gone, Rollout.Canary
// false.
func decided(t *testing.T, sw *updaterswarm.Swarm, id string, own swarm.UpdateConfig, what string) {
	t.Helper()
	s := inspect(t, id)
	if uc := s.Spec.UpdateConfig; uc == nil || *uc != own {
		t.Errorf("%s: update config %+v, want the service's own %+v", what, uc, own)
	}
	if v, ok := s.Spec.Labels["io.updater.canary.update"]; ok {
		t.Errorf("%s: the canary's label is still on the spec: %s", what, v)
	}
	if ro, err := sw.Rollout(t.Context(), id); err != nil || ro.Canary {
		t.Errorf("%s: Rollout.Canary %t (%v), want false", what, ro.Canary, err)
	}
}

// sealed runs the adapter's Seal (the run's third write, once the
// decision's rollout was judged) on a spec decided on img (digest) and
// checks, from Docker, that Swarm's previous spec is then the decided
// one, that nothing restarted, and that `docker service rollback`
// (Rollback: "previous") then moves nothing: no task of newD is started
// again, no running task replaced.
func sealed(t *testing.T, sw *updaterswarm.Swarm, id, img, digest, newD string, own swarm.UpdateConfig, w *canaryWatch, what string) {
	t.Helper()
	target := deploy.Target{ID: id, Name: inspect(t, id).Spec.Name}
	running, ever := w.look(digest), w.ever(newD)
	if err := sw.Seal(t.Context(), target, img, deploy.Credentials{}); err != nil {
		t.Fatalf("%s: seal: %v", what, err)
	}
	prev := inspect(t, id).PreviousSpec
	if prev == nil || prev.TaskTemplate.ContainerSpec.Image != img || prev.UpdateConfig == nil || *prev.UpdateConfig != own || prev.Labels["io.updater.canary.update"] != "" {
		var got any = prev
		if prev != nil {
			got = fmt.Sprintf("image %s, update config %+v, labels %v", prev.TaskTemplate.ContainerSpec.Image, prev.UpdateConfig, prev.Labels)
		}
		t.Errorf("%s: PreviousSpec after the seal: %v; want %s with the service's own update config %+v and no canary label", what, got, img, own)
	}
	unmoved := func() string {
		if n := w.ever(newD); n != ever {
			return fmt.Sprintf("%d tasks ever on v2, %d before", n, ever)
		}
		if got := w.look(digest); !maps.Equal(got, running) {
			return fmt.Sprintf("running %v, want the same tasks and containers as before %v", got, running)
		}
		return ""
	}
	start := time.Now()
	steady(t, 5*time.Second, what+": the seal restarts nothing", unmoved)
	var err error
	for range 5 {
		s := inspect(t, id)
		_, err = env.docker.ServiceUpdate(context.Background(), id, client.ServiceUpdateOptions{Version: s.Version, Spec: s.Spec, Rollback: "previous"})
		if err == nil || !strings.Contains(err.Error(), "out of sequence") {
			break
		}
	}
	if err != nil {
		t.Fatalf("%s: docker service rollback: %v", what, err)
	}
	steady(t, 8*time.Second, what+": docker service rollback after the seal moves nothing", func() string {
		s := inspect(t, id)
		if got := s.Spec.TaskTemplate.ContainerSpec.Image; got != img {
			return "the spec runs " + got + ", want " + img
		}
		if uc := s.Spec.UpdateConfig; uc == nil || *uc != own {
			return fmt.Sprintf("update config %+v, want the service's own", uc)
		}
		return unmoved()
	})
	t.Logf("%s: sealed; nothing moved for %s, then `docker service rollback` moved nothing", what, time.Since(start).Round(100*time.Millisecond))
}

func TestCanaryAdapterPromote(t *testing.T) {
	sw, target, oldD, newD := canaryService(t, "p")
	own := *inspect(t, target.ID).Spec.UpdateConfig
	w := newCanaryWatch(t, target.ID)
	newImg := image("e2e/canaryadapter-p") + "@" + newD
	canary, _ := startCanary(t, sw, target, w, newImg, oldD, newD)

	start := time.Now()
	if err := sw.Promote(t.Context(), target, newImg, deploy.Credentials{}); err != nil {
		t.Fatalf("promote: %v", err)
	}
	waitFor(t, 90*time.Second, "all 4 tasks on v2 and the update completed", func() bool {
		w.look(newD)
		return updateStateOf(inspect(t, target.ID)) == swarm.UpdateStateCompleted && allRunning(t, target.ID, newD)
	})
	t.Logf("Promote: completed, 4 tasks on v2, %s after the write", time.Since(start).Round(100*time.Millisecond))
	after := w.look(newD)
	for task, ctr := range canary {
		if after[task] != ctr {
			t.Errorf("the canary task %.12s (container %.12s) was restarted or replaced by the promotion: now %q", task, ctr, after[task])
		}
	}
	if n := w.ever(newD); n != 4 {
		t.Errorf("%d tasks ever ran v2, want 4 (the canary and the 3 others)", n)
	}
	decided(t, sw, target.ID, own, "after the promotion")
	sealed(t, sw, target.ID, newImg, newD, newD, own, w, "after the promotion")
}

func TestCanaryAdapterRevert(t *testing.T) {
	sw, target, oldD, newD := canaryService(t, "r")
	own := *inspect(t, target.ID).Spec.UpdateConfig
	w := newCanaryWatch(t, target.ID)
	repo := "e2e/canaryadapter-r"
	canary, survivors := startCanary(t, sw, target, w, image(repo)+"@"+newD, oldD, newD)

	start := time.Now()
	if err := sw.Revert(t.Context(), target, image(repo)+"@"+oldD, deploy.Credentials{}); err != nil {
		t.Fatalf("revert: %v", err)
	}
	waitFor(t, 90*time.Second, "all 4 tasks back on v1 and the update completed", func() bool {
		w.look(newD)
		return updateStateOf(inspect(t, target.ID)) == swarm.UpdateStateCompleted && allRunning(t, target.ID, oldD)
	})
	t.Logf("Revert: completed, 4 tasks on v1, %s after the write", time.Since(start).Round(100*time.Millisecond))
	if n := w.ever(newD); n != 1 {
		t.Errorf("%d tasks ever ran v2, want the 1 canary", n)
	}
	after := w.look(oldD)
	for task, ctr := range survivors {
		if after[task] != ctr {
			t.Errorf("old task %.12s (container %.12s) was replaced by the revert: now %q", task, ctr, after[task])
		}
	}
	if running := w.look(newD); len(running) != 0 {
		t.Errorf("tasks still running v2 after the revert: %v", slices.Collect(maps.Keys(running)))
	}
	for task := range canary {
		if _, ok := after[task]; ok {
			t.Errorf("the canary task %.12s runs on", task)
		}
	}
	decided(t, sw, target.ID, own, "after the revert")
	if d := specDigest(t, target.ID); d != oldD {
		t.Errorf("the spec is pinned to %s, want v1's %s", d, oldD)
	}
	sealed(t, sw, target.ID, image(repo)+"@"+oldD, oldD, newD, own, w, "after the revert")
}
