//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// The Swarm facts a metric-gated canary stands on (issue 17,
// docs/canary-swarm.md), asserted on whichever engine the suite runs
// against (the host's 20.10, or the engine matrix's 28.5): Swarm's own
// rolling update, with a long Delay after the first batch, moves exactly
// the canary tasks and waits; a second write of the same image with the
// service's own update settings finishes the update without restarting
// the canary; a write of the old pinned image instead replaces only the
// canary. Nothing here runs the updater: the engine code to come builds
// on what this proves.

// canaryCase is one way to canary: the update order, how many tasks go
// first.
type canaryCase struct {
	order  swarm.UpdateOrder
	canary int
	// delay is how long Swarm waits after the canary batch: long enough
	// that the window of any analysis ends first (1h is the window's
	// maximum; a year shows the bound is not near).
	delay time.Duration
}

func TestCanaryOnSwarmUpdate(t *testing.T) {
	for _, c := range []canaryCase{
		{swarm.UpdateOrderStartFirst, 1, time.Hour},
		{swarm.UpdateOrderStopFirst, 2, 365 * 24 * time.Hour},
	} {
		for _, promote := range []bool{true, false} {
			end := "abort"
			if promote {
				end = "promote"
			}
			// Side by side: each case has its own repository and service,
			// and most of a case is waiting on Swarm (108 s one after
			// another on 2 cores).
			t.Run(fmt.Sprintf("%s/%d/%s", c.order, c.canary, end), func(t *testing.T) {
				t.Parallel()
				canaryScenario(t, c, promote)
			})
		}
	}
}

func canaryScenario(t *testing.T, c canaryCase, promote bool) {
	const replicas = 4
	tag := fmt.Sprintf("%s-%d-%t", c.order, c.canary, promote)
	repo, svcName := "e2e/canary-"+tag, "e2ecanary_"+tag
	oldD, newD := push(t, repo, "v1"), push(t, repo, "v2")
	oldImg, newImg := image(repo)+"@"+oldD, image(repo)+"@"+newD
	id := createService(t, svcName, repo, oldD, svcOpts{stack: "e2ecanary", replicas: replicas})
	user := *inspect(t, id).Spec.UpdateConfig // the service's own settings
	before := runningContainers(t, id, oldD)
	if len(before) != replicas {
		t.Fatalf("%d tasks on v1 before the canary, want %d", len(before), replicas)
	}

	// 1. The canary write: the new image, and a Delay after the first
	// batch of c.canary tasks that outlasts any analysis.
	canaryCfg := user
	canaryCfg.Parallelism, canaryCfg.Delay, canaryCfg.Order = uint64(c.canary), c.delay, c.order
	canaryCfg.FailureAction, canaryCfg.Monitor = swarm.UpdateFailureActionRollback, 2*time.Second
	start := time.Now()
	writeSpec(t, id, newImg, canaryCfg, fmt.Sprintf("%+v", user))
	waitFor(t, 60*time.Second, fmt.Sprintf("%d canary tasks running v2", c.canary), func() bool {
		return len(runningContainers(t, id, newD)) == c.canary
	})
	t.Logf("canary of %d running %s after the write", c.canary, time.Since(start).Round(100*time.Millisecond))
	canary := runningContainers(t, id, newD)
	// It waits: past the Monitor (2 s) and the health check's interval
	// (1 s) several times over, no other task moves and the update is
	// still in progress. A window of stability is the claim itself, so it
	// is watched for its whole length, not waited out.
	holds(t, 8*time.Second, "the canary waits", func() string {
		s := inspect(t, id)
		if st := updateState(s); st != swarm.UpdateStateUpdating {
			return "update state " + string(st)
		}
		if got := runningContainers(t, id, newD); !sameContainers(got, canary) {
			return fmt.Sprintf("tasks on v2 %v, want only the canary %v", keysOf(got), keysOf(canary))
		}
		if n := len(tasksOf(t, id, newD)); n != c.canary {
			return fmt.Sprintf("%d tasks ever on v2, want %d", n, c.canary)
		}
		if got := runningContainers(t, id, oldD); len(got) != replicas-c.canary {
			return fmt.Sprintf("%d tasks on v1, want %d", len(got), replicas-c.canary)
		}
		return ""
	})
	if d := inspect(t, id).Spec.UpdateConfig.Delay; d != c.delay {
		t.Errorf("the spec's Delay reads back as %s, want %s", d, c.delay)
	}
	if prev := inspect(t, id).PreviousSpec; prev == nil || prev.TaskTemplate.ContainerSpec.Image != oldImg || prev.UpdateConfig == nil || *prev.UpdateConfig != user {
		t.Errorf("PreviousSpec during the canary is %+v, want v1 with the service's own update settings", prev)
	}
	survivors := runningContainers(t, id, oldD)
	for task := range survivors {
		if before[task] != survivors[task] {
			t.Errorf("old task %s changed container during the canary", task)
		}
	}

	// 2. The decision, a second write with the service's own settings.
	start = time.Now()
	var want map[string]string // the tasks the end state keeps from the canary state
	var wantD, wantImg string
	if promote {
		writeSpec(t, id, newImg, user, "")
		wantD, wantImg, want = newD, newImg, canary
	} else {
		writeSpec(t, id, oldImg, user, "")
		wantD, wantImg, want = oldD, oldImg, survivors
	}
	waitFor(t, 90*time.Second, "every task on "+wantD+" and the update completed", func() bool {
		return updateState(inspect(t, id)) == swarm.UpdateStateCompleted && allRunning(t, id, wantD)
	})
	t.Logf("promote=%t: completed %s after the second write", promote, time.Since(start).Round(100*time.Millisecond))
	after := runningContainers(t, id, wantD)
	for task, ctr := range want {
		if after[task] != ctr {
			t.Errorf("task %s (container %.12s) was restarted or replaced by the second write: now %q", task, ctr, after[task])
		}
	}
	if promote {
		if n := len(tasksOf(t, id, newD)); n != replicas {
			t.Errorf("%d tasks ever ran v2, want %d: the canary was replaced", n, replicas)
		}
	} else {
		if n := len(tasksOf(t, id, newD)); n != c.canary {
			t.Errorf("%d tasks ever ran v2, want the %d canary", n, c.canary)
		}
		for task := range canary {
			if _, ok := after[task]; ok {
				t.Errorf("canary task %s still runs after the rollback write", task)
			}
		}
	}
	// Swarm keeps one level: the spec before the second write, the canary's.
	// `docker service rollback` would return to it (v2 and the canary's
	// Delay), not to v1 with the service's own settings.
	s := inspect(t, id)
	if prev := s.PreviousSpec; prev == nil || prev.TaskTemplate.ContainerSpec.Image != newImg || prev.UpdateConfig == nil || prev.UpdateConfig.Delay != c.delay ||
		prev.Labels[canaryNote] == "" {
		t.Errorf("PreviousSpec after the second write: %+v, want the canary spec (v2, delay %s, the %s label)", prev, c.delay, canaryNote)
	}
	if _, ok := s.Spec.Labels[canaryNote]; ok {
		t.Errorf("the second write left the %s label", canaryNote)
	}

	// 3. A third write of the same spec moves PreviousSpec off the canary
	// spec and restarts nothing: `docker service rollback` is then a no-op
	// rather than the canary's settings (or, after an abort, the canary's
	// image) coming back.
	version := s.Version.Index
	writeSpec(t, id, wantImg, user, "")
	s = inspect(t, id)
	if s.Version.Index == version {
		t.Fatalf("the third write did not move the version")
	}
	if prev := s.PreviousSpec; prev == nil || prev.TaskTemplate.ContainerSpec.Image != wantImg || prev.UpdateConfig == nil || *prev.UpdateConfig != user {
		t.Errorf("PreviousSpec after the third write: %+v, want %s with the service's own settings", prev, wantImg)
	}
	// A write that changes no task starts no update: UpdateStatus is
	// cleared and stays so. Completion is judged before this write.
	holds(t, 5*time.Second, "the third write restarts nothing", func() string {
		if st := inspect(t, id).UpdateStatus; st != nil {
			return fmt.Sprintf("update status %+v, want none", *st)
		}
		if got := runningContainers(t, id, wantD); !sameContainers(got, after) {
			return fmt.Sprintf("running %v, want %v", keysOf(got), keysOf(after))
		}
		return ""
	})
}

// canaryNote is a service label the canary write sets and the decision
// removes, as the engine keeps the service's own update config there: a
// service label is not part of the task spec, so neither write may
// restart a task for it.
const canaryNote = "e2e.canary.update"

// writeSpec writes the service's spec with img and cfg, and canaryNote
// set to note ("" removes it), retrying when the version moved under it
// (Swarm's "update out of sequence").
func writeSpec(t *testing.T, id, img string, cfg swarm.UpdateConfig, note string) {
	t.Helper()
	var err error
	for range 5 {
		s := inspect(t, id)
		spec := s.Spec
		spec.TaskTemplate.ContainerSpec.Image = img
		spec.UpdateConfig = &cfg
		spec.Labels = maps.Clone(spec.Labels)
		delete(spec.Labels, canaryNote)
		if note != "" {
			spec.Labels[canaryNote] = note
		}
		if _, err = env.docker.ServiceUpdate(context.Background(), id, client.ServiceUpdateOptions{Version: s.Version, Spec: spec}); err == nil ||
			!strings.Contains(err.Error(), "out of sequence") {
			break
		}
	}
	if err != nil {
		t.Fatalf("write %s: %v", img, err)
	}
}

// runningContainers maps the service's running tasks on digest to their
// container IDs.
func runningContainers(t testing.TB, id, digest string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, task := range tasksOf(t, id, digest) {
		if task.DesiredState == swarm.TaskStateRunning && task.Status.State == swarm.TaskStateRunning && task.Status.ContainerStatus != nil {
			out[task.ID] = task.Status.ContainerStatus.ContainerID
		}
	}
	return out
}

func updateState(s swarm.Service) swarm.UpdateState {
	if s.UpdateStatus == nil {
		return ""
	}
	return s.UpdateStatus.State
}

func sameContainers(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func keysOf(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k[:min(len(k), 12)])
	}
	return out
}

// holds checks cond (which returns what is wrong, "" when all is well)
// every 200 ms for d and fails the test the first time it does not hold.
func holds(t *testing.T, d time.Duration, what string, cond func() string) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if bad := cond(); bad != "" {
			t.Fatalf("%s: %s", what, bad)
		}
	}
}
