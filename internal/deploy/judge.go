package deploy

import (
	"fmt"
	"sort"
	"strings"
)

// verdict is what one look at a rollout concludes.
type verdict int

const (
	pending verdict = iota
	healthy
	failing     // Swarm stopped the update; the updater must roll back
	rollingBack // Swarm is already rolling back
	rolledBack  // back on the previous spec
	stuck       // a rollback Swarm gave up on: needs a human
	superseded  // someone else changed or removed the service: theirs to own
)

// judge decides how a rollout to digest want stands. It is the single
// place that defines "promoted": every desired task runs want and is in
// state running, and Swarm does not report the update unfinished. With a
// HEALTHCHECK Swarm keeps a task in "starting" until it is healthy, so
// "running" already means healthy; an unhealthy one fails and Swarm counts
// it against the update.
func judge(r Rollout, want string) (verdict, string) {
	switch r.UpdateState {
	case "paused":
		return failing, "Swarm paused the update: " + r.UpdateMessage + taskErrors(r, want)
	case "rollback_started":
		return rollingBack, "Swarm is rolling back: " + r.UpdateMessage + taskErrors(r, want)
	case "rollback_completed":
		return rolledBack, "Swarm rolled back: " + r.UpdateMessage + taskErrors(r, want)
	case "rollback_paused":
		return stuck, "Swarm paused the rollback: " + r.UpdateMessage + taskErrors(r, want)
	}
	if _, d := SplitImage(r.Image); d != want {
		// The spec no longer asks for want and Swarm reports no rollback:
		// someone else changed the service under us. Rolling back now would
		// undo their change, not ours.
		return superseded, fmt.Sprintf("the service spec changed to %s during the deploy", r.Image)
	}
	if r.UpdateState == "updating" {
		return pending, ""
	}
	// "completed", or no state at all: trust the tasks, since a spec write
	// resets UpdateStatus and a no-op update never sets it.
	ready := 0
	for _, t := range r.Tasks {
		if t.Desired != "running" {
			continue
		}
		if _, d := SplitImage(t.Image); d != want || t.State != "running" {
			return pending, ""
		}
		ready++
	}
	// Desired is 0 for a service scaled to zero; then only Swarm's word
	// that the update completed proves anything.
	if ready < r.Desired || (r.Desired == 0 && r.UpdateState != "completed") {
		return pending, ""
	}
	return healthy, ""
}

// restored reports whether a rollback away from bad has finished: Swarm
// says so, or every desired task runs something other than bad.
func restored(r Rollout, bad string) bool {
	if r.UpdateState == "rollback_completed" {
		return true
	}
	if r.UpdateState == "rollback_started" {
		return false
	}
	if _, d := SplitImage(r.Image); d == bad {
		return false
	}
	ready := 0
	for _, t := range r.Tasks {
		if t.Desired != "running" {
			continue
		}
		if _, d := SplitImage(t.Image); d == bad || t.State != "running" {
			return false
		}
		ready++
	}
	return ready >= r.Desired
}

// taskErrors summarises why tasks of the new version failed, which is what
// a person reading the report needs to fix the image.
func taskErrors(r Rollout, want string) string {
	seen := map[string]bool{}
	for _, t := range r.Tasks {
		if _, d := SplitImage(t.Image); d == want && t.Err != "" {
			seen[t.Err] = true
		}
	}
	if len(seen) == 0 {
		return ""
	}
	errs := make([]string, 0, len(seen))
	for e := range seen {
		errs = append(errs, e)
	}
	sort.Strings(errs)
	return " (task errors: " + strings.Join(errs, "; ") + ")"
}

// progress counts the desired tasks that already run want and are healthy.
func progress(r Rollout, want string) Step {
	s := Step{Phase: PhaseRollout, Total: r.Desired}
	for _, t := range r.Tasks {
		if _, d := SplitImage(t.Image); t.Desired == "running" && d == want && t.State == "running" {
			s.Done++
		}
	}
	return s
}
