package deploy

import (
	"fmt"
	"sort"
	"strings"
	"time"
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
	switch msg := onNode(r); r.UpdateState {
	case "paused":
		return failing, "Swarm paused the update: " + msg + taskErrors(r, want)
	case "rollback_started":
		return rollingBack, "Swarm is rolling back: " + msg + taskErrors(r, want)
	case "rollback_completed":
		return rolledBack, "Swarm rolled back: " + msg + taskErrors(r, want)
	case "rollback_paused":
		return stuck, "Swarm paused the rollback: " + msg + taskErrors(r, want)
	}
	if _, d := SplitImage(r.Image); d != want {
		// The spec no longer asks for want and Swarm reports no rollback:
		// someone else changed the service under us. Rolling back now would
		// undo their change, not ours.
		return superseded, fmt.Sprintf("the service spec changed to %s during the deploy", r.Image)
	}
	if r.UpdateState == "updating" {
		return notYet(r, want)
	}
	// "completed", or no state at all: trust the tasks, since a spec write
	// resets UpdateStatus and a no-op update never sets it.
	ready := 0
	for _, t := range r.Tasks {
		if t.Desired != "running" {
			continue
		}
		if _, d := SplitImage(t.Image); d != want || t.State != "running" {
			return notYet(r, want)
		}
		ready++
	}
	// Desired is 0 for a service scaled to zero; then only Swarm's word
	// that the update completed proves anything.
	if ready < r.Desired || (r.Desired == 0 && r.UpdateState != "completed") {
		return notYet(r, want)
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

// onNode is Swarm's update message with the node of the task it names
// ("update paused due to failure or early termination of task x"): a task
// that ended without an error of its own, because its node went down, is
// otherwise a bare ID.
func onNode(r Rollout) string {
	for _, t := range r.Tasks {
		if t.ID != "" && t.Node != "" && strings.Contains(r.UpdateMessage, t.ID) {
			return r.UpdateMessage + " (on node " + t.Node + ")"
		}
	}
	return r.UpdateMessage
}

// notYet is the verdict on a rollout that is not healthy yet: pending,
// unless Swarm keeps retrying tasks that nodes reject. Swarm only does
// that with failure_action continue (or a max_failure_ratio that tolerates
// the rejections): with rollback or pause the first rejection already ended
// the update. Then Swarm reports the update completed, has shut the old
// tasks down, and retries the rejected task every restart delay, without
// end: a missing image or missing credentials never get better by waiting
// for the deadline. Fewer rejections than the limit let a transient one (a
// registry hiccup) pass.
func notYet(r Rollout, want string) (verdict, string) {
	if n := rejections(r, want); n >= rejectLimit {
		return failing, fmt.Sprintf("tasks of the new version were rejected %d times; Swarm retries them without end", n) + taskErrors(r, want)
	}
	return pending, ""
}

// taskSkew allows for the clock of the Swarm manager that stamps tasks
// running behind the updater's.
const taskSkew = 10 * time.Second

// recent leaves out the tasks that ended before a deploy started at
// started: the history of an earlier attempt at the same digest (`updater
// deploy` after the credentials were fixed) is not this deploy's, and its
// three rejections must not fail it at once. Tasks Swarm wants running stay
// whatever their age: they are the service now.
func recent(r Rollout, started time.Time) Rollout {
	cut := started.Add(-taskSkew)
	out := r
	out.Tasks = make([]Task, 0, len(r.Tasks))
	for _, t := range r.Tasks {
		if t.Desired != "running" && !t.Since.IsZero() && t.Since.Before(cut) {
			continue
		}
		out.Tasks = append(out.Tasks, t)
	}
	return out
}

// rejectLimit is how many rejected tasks of the new version end a rollout
// Swarm would retry for ever. With the default restart delay of 5 s the
// third comes about 10 s after the first.
const rejectLimit = 3

// rejections counts the tasks of want that a node rejected: it could not
// pull the image, found no such image, or could not create the container.
func rejections(r Rollout, want string) int {
	n := 0
	for _, t := range r.Tasks {
		if _, d := SplitImage(t.Image); d == want && t.State == "rejected" {
			n++
		}
	}
	return n
}

// taskErrors summarises why tasks of the new version failed, and on which
// nodes: what a person reading the report needs to fix the image, the
// credentials or the node.
func taskErrors(r Rollout, want string) string {
	nodes := map[string]map[string]bool{} // error -> nodes
	for _, t := range r.Tasks {
		if _, d := SplitImage(t.Image); d != want || t.Err == "" {
			continue
		}
		if nodes[t.Err] == nil {
			nodes[t.Err] = map[string]bool{}
		}
		if t.Node != "" {
			nodes[t.Err][t.Node] = true
		}
	}
	if len(nodes) == 0 {
		return ""
	}
	errs := make([]string, 0, len(nodes))
	for e, on := range nodes {
		names := make([]string, 0, len(on))
		for n := range on {
			names = append(names, n)
		}
		sort.Strings(names)
		switch len(names) {
		case 0:
		case 1:
			e = "on node " + names[0] + ": " + e
		default:
			e = "on nodes " + strings.Join(names, ", ") + ": " + e
		}
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
