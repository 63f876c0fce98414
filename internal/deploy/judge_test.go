package deploy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var (
	oldD   = "sha256:" + strings.Repeat("a", 64)
	newD   = "sha256:" + strings.Repeat("b", 64)
	otherD = "sha256:" + strings.Repeat("c", 64)
)

const testRef = "127.0.0.1:5000/app:1"

func pinned(d string) string { return Pin(testRef, d) }

// up is a task Swarm wants running, on digest d, in state.
func up(d, state string) Task {
	return Task{ID: "t-" + d[7:9] + "-" + state, Image: pinned(d), State: state, Desired: "running"}
}

// down is a replaced task (desired shutdown) on digest d.
func down(d, state, err string) Task {
	return Task{ID: "t-" + d[7:9] + "-down", Image: pinned(d), State: state, Desired: "shutdown", Err: err}
}

func TestJudge(t *testing.T) {
	const unhealthy = "dockerexec: unhealthy container"
	tests := []struct {
		name    string
		r       Rollout
		want    verdict
		reasons []string // substrings the reason must contain
	}{
		{
			name: "updating",
			r:    Rollout{Image: pinned(newD), UpdateState: "updating", Desired: 2, Tasks: []Task{up(newD, "running"), up(newD, "running")}},
			want: pending,
		},
		{
			name: "completed, every desired task on want and running",
			r: Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 2,
				Tasks: []Task{up(newD, "running"), up(newD, "running")}},
			want: healthy,
		},
		{
			name: "no state yet, every desired task on want and running",
			r:    Rollout{Image: pinned(newD), Desired: 1, Tasks: []Task{up(newD, "running")}},
			want: healthy,
		},
		{
			name: "completed, one task still on the old digest",
			r: Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 2,
				Tasks: []Task{up(newD, "running"), up(oldD, "running")}},
			want: pending,
		},
		{
			name: "completed, a task still starting",
			r: Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 2,
				Tasks: []Task{up(newD, "running"), up(newD, "starting")}},
			want: pending,
		},
		{
			name: "completed, fewer running than desired",
			r: Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 3,
				Tasks: []Task{up(newD, "running"), up(newD, "running")}},
			want: pending,
		},
		{
			name: "paused, with the task errors of the new digest",
			r: Rollout{Image: pinned(newD), UpdateState: "paused", UpdateMessage: "update paused due to failure", Desired: 1,
				Tasks: []Task{up(oldD, "running"), down(newD, "failed", unhealthy), down(oldD, "failed", "old trouble")}},
			want:    failing,
			reasons: []string{"Swarm paused the update: update paused due to failure", "(task errors: " + unhealthy + ")"},
		},
		{
			name: "rollback started",
			r: Rollout{Image: pinned(oldD), UpdateState: "rollback_started", UpdateMessage: "rollback initiated", Desired: 1,
				Tasks: []Task{up(oldD, "starting"), down(newD, "failed", unhealthy)}},
			want:    rollingBack,
			reasons: []string{"Swarm is rolling back: rollback initiated", unhealthy},
		},
		{
			name: "rollback completed",
			r: Rollout{Image: pinned(oldD), UpdateState: "rollback_completed", UpdateMessage: "rollback completed", Desired: 1,
				Tasks: []Task{up(oldD, "running")}},
			want:    rolledBack,
			reasons: []string{"Swarm rolled back: rollback completed"},
		},
		{
			name: "rollback paused",
			r: Rollout{Image: pinned(oldD), UpdateState: "rollback_paused", UpdateMessage: "rollback paused", Desired: 1,
				Tasks: []Task{up(oldD, "failed")}},
			want:    stuck,
			reasons: []string{"Swarm paused the rollback: rollback paused"},
		},
		{
			name: "spec changed to another digest by someone else",
			r: Rollout{Image: pinned(otherD), UpdateState: "completed", Desired: 1,
				Tasks: []Task{up(otherD, "running")}},
			want:    superseded,
			reasons: []string{"spec changed to " + pinned(otherD)},
		},
		{
			name: "spec changed while updating",
			r:    Rollout{Image: pinned(otherD), UpdateState: "updating", Desired: 1},
			want: superseded,
		},
		{
			name: "scaled to zero and completed",
			r:    Rollout{Image: pinned(newD), UpdateState: "completed"},
			want: healthy,
		},
		{
			name: "scaled to zero, no state yet",
			r:    Rollout{Image: pinned(newD)},
			want: pending,
		},
		{
			name: "shutdown tasks do not count, even failed ones on the new digest",
			r: Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 1,
				Tasks: []Task{up(newD, "running"), down(newD, "failed", unhealthy), down(oldD, "shutdown", "")}},
			want: healthy,
		},
		{
			// failure_action continue: Swarm says completed, has shut the
			// old task down and retries the rejected one without end.
			name: "completed, the new version rejected three times",
			r: Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 1, Tasks: []Task{
				rejected(newD, "worker-1", "ready"), rejected(newD, "worker-1", "shutdown"), rejected(newD, "worker-1", "shutdown"),
				down(oldD, "shutdown", "")}},
			want:    failing,
			reasons: []string{"rejected 3 times", "(task errors: on node worker-1: No such image: " + testRef + ")"},
		},
		{
			name: "updating, the new version rejected three times on two nodes",
			r: Rollout{Image: pinned(newD), UpdateState: "updating", Desired: 2, Tasks: []Task{
				rejected(newD, "w1", "shutdown"), rejected(newD, "w2", "shutdown"), rejected(newD, "w2", "ready"), up(oldD, "running")}},
			want:    failing,
			reasons: []string{"on nodes w1, w2: No such image"},
		},
		{
			name: "two rejections may be a registry hiccup: Swarm retries",
			r: Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 1, Tasks: []Task{
				rejected(newD, "w1", "shutdown"), rejected(newD, "w1", "shutdown"), up(newD, "pending")}},
			want: pending,
		},
		{
			name: "rejections that Swarm got past: healthy",
			r: Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 1, Tasks: []Task{
				rejected(newD, "w1", "shutdown"), rejected(newD, "w1", "shutdown"), rejected(newD, "w1", "shutdown"), up(newD, "running")}},
			want: healthy,
		},
		{
			name: "rejections of another digest do not count",
			r: Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 1, Tasks: []Task{
				rejected(oldD, "w1", "shutdown"), rejected(oldD, "w1", "shutdown"), rejected(oldD, "w1", "shutdown"), up(newD, "starting")}},
			want: pending,
		},
		{
			name: "the task Swarm names is on a node",
			r: Rollout{Image: pinned(oldD), UpdateState: "rollback_started", Desired: 1,
				UpdateMessage: "update rolled back due to failure or early termination of task t-bb-down",
				Tasks:         []Task{up(oldD, "running"), on("worker-1", down(newD, "shutdown", ""))}},
			want:    rollingBack,
			reasons: []string{"early termination of task t-bb-down (on node worker-1)"},
		},
		{
			name: "rollback started after a rejection names the node",
			r: Rollout{Image: pinned(oldD), UpdateState: "rollback_started", UpdateMessage: "update rolled back due to failure or early termination of task x", Desired: 1,
				Tasks: []Task{up(oldD, "running"), rejected(newD, "worker-1", "shutdown")}},
			want:    rollingBack,
			reasons: []string{"on node worker-1: No such image: " + testRef},
		},
		{
			name: "shutdown tasks do not make up the count",
			r: Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 2,
				Tasks: []Task{up(newD, "running"), down(newD, "running", "")}},
			want: pending,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := judge(tt.r, newD)
			if got != tt.want {
				t.Errorf("judge = %d (%q), want %d", got, why, tt.want)
			}
			for _, s := range tt.reasons {
				if !strings.Contains(why, s) {
					t.Errorf("reason %q lacks %q", why, s)
				}
			}
			if tt.want == pending || tt.want == healthy {
				if why != "" {
					t.Errorf("reason %q, want none for a verdict that is not a failure", why)
				}
			}
		})
	}
}

func on(node string, t Task) Task { t.Node = node; return t }

// rejected is a task of digest d a node rejected; desired is "ready" for
// the newest (Swarm keeps it until it replaces it), "shutdown" for older.
func rejected(d, node, desired string) Task {
	return Task{ID: "t-" + d[7:9] + "-rejected", Node: node, Image: pinned(d), State: "rejected", Desired: desired,
		Err: "No such image: " + testRef}
}

func TestTaskErrorsNameNodes(t *testing.T) {
	failed := func(node, err string) Task { return on(node, down(newD, "failed", err)) }
	r := Rollout{Tasks: []Task{
		failed("w2", "dockerexec: unhealthy container"),
		failed("w1", "dockerexec: unhealthy container"),
		failed("w1", "dockerexec: unhealthy container"),
		failed("", "no suitable node (1 node not available for new tasks)"),
		failed("w3", "No such image: x"),
	}}
	want := " (task errors: no suitable node (1 node not available for new tasks); on node w3: No such image: x; on nodes w1, w2: dockerexec: unhealthy container)"
	if got := taskErrors(r, newD); got != want {
		t.Errorf("taskErrors = %q\nwant          %q", got, want)
	}
}

func TestTaskErrorsSortedAndDeduplicated(t *testing.T) {
	r := Rollout{Tasks: []Task{
		down(newD, "failed", "b: exit 1"),
		down(newD, "failed", "a: no such file"),
		down(newD, "failed", "b: exit 1"),
		down(oldD, "failed", "from the old version"),
	}}
	if got, want := taskErrors(r, newD), " (task errors: a: no such file; b: exit 1)"; got != want {
		t.Errorf("taskErrors = %q, want %q", got, want)
	}
	if got := taskErrors(Rollout{}, newD); got != "" {
		t.Errorf("taskErrors without tasks = %q, want empty", got)
	}
}

func TestRestored(t *testing.T) {
	tests := []struct {
		name string
		r    Rollout
		want bool
	}{
		{"rollback completed", Rollout{Image: pinned(newD), UpdateState: "rollback_completed", Desired: 1, Tasks: []Task{up(newD, "running")}}, true},
		{"rollback started", Rollout{Image: pinned(oldD), UpdateState: "rollback_started", Desired: 1, Tasks: []Task{up(oldD, "running")}}, false},
		{"spec still on the bad digest", Rollout{Image: pinned(newD), UpdateState: "paused", Desired: 1, Tasks: []Task{up(oldD, "running")}}, false},
		{"a task still on the bad digest", Rollout{Image: pinned(oldD), Desired: 2, Tasks: []Task{up(oldD, "running"), up(newD, "running")}}, false},
		{"a task not yet running", Rollout{Image: pinned(oldD), Desired: 1, Tasks: []Task{up(oldD, "starting")}}, false},
		{"too few tasks", Rollout{Image: pinned(oldD), Desired: 2, Tasks: []Task{up(oldD, "running")}}, false},
		{"every task back, failed ones shut down", Rollout{Image: pinned(oldD), Desired: 2,
			Tasks: []Task{up(oldD, "running"), up(oldD, "running"), down(newD, "failed", "unhealthy")}}, true},
		{"a third digest counts as away from bad", Rollout{Image: pinned(otherD), Desired: 1, Tasks: []Task{up(otherD, "running")}}, true},
		{"scaled to zero", Rollout{Image: pinned(oldD)}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := restored(tt.r, newD); got != tt.want {
				t.Errorf("restored = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	svc := func(id, image string) Target { return Target{ID: id, Name: "svc-" + id, Image: image} }
	outage := errors.New("resolve 127.0.0.1:5000/app:1: 503 service unavailable")
	digests := map[string]lookup{
		testRef:                      {digest: newD},
		"127.0.0.1:5000/app:latest":  {digest: newD},
		"127.0.0.1:5000/down:1":      {err: outage},
		"127.0.0.1:5000/other:1":     {digest: oldD},
		"127.0.0.1:5000/never-asked": {digest: newD}, // not a tagged ref: must not be used
	}
	failed := map[string]map[string]bool{
		"failed": {newD: true},
		"other":  {otherD: true},
	}
	tests := []struct {
		name       string
		target     Target
		action     Action
		want       string
		reasonHas  string
		reasonNone bool
	}{
		{"tag moved", svc("moved", pinned(oldD)), ActDeploy, newD, "", true},
		{"up to date", svc("same", pinned(newD)), ActNone, newD, "", true},
		{"digest failed before", svc("failed", pinned(oldD)), ActSkipFailed, newD, "failed before", false},
		{"another digest failed before", svc("other", pinned(oldD)), ActDeploy, newD, "", true},
		{"pinned without a tag", svc("untagged", "127.0.0.1:5000/never-asked@"+oldD), ActUntagged, "", "without a tag", false},
		{"registry error", svc("down", "127.0.0.1:5000/down:1@"+oldD), ActError, "", outage.Error(), false},
		{"no answer for the ref", svc("missing", "127.0.0.1:5000/missing:1@"+oldD), ActError, "", "", true},
		{"unpinned service", svc("unpinned", testRef), ActDeploy, newD, "no digest", false},
		{"bare repository tracks latest", svc("bare", "127.0.0.1:5000/app"), ActDeploy, newD, "no digest", false},
	}
	targets := make([]Target, len(tests))
	for i, tt := range tests {
		targets[i] = tt.target
	}
	plans := decide(targets, digests, failed)
	if len(plans) != len(tests) {
		t.Fatalf("decide returned %d plans for %d targets", len(plans), len(tests))
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl := plans[i]
			if pl.Target.ID != tt.target.ID {
				t.Fatalf("plan %d is for %s, want %s: order must follow the targets", i, pl.Target.ID, tt.target.ID)
			}
			if pl.Action != tt.action || pl.Want != tt.want {
				t.Errorf("plan = %s want %q, want %s want %q", pl.Action, pl.Want, tt.action, tt.want)
			}
			if tt.reasonNone && pl.Reason != "" {
				t.Errorf("reason = %q, want none", pl.Reason)
			}
			if !strings.Contains(pl.Reason, tt.reasonHas) {
				t.Errorf("reason = %q, want it to contain %q", pl.Reason, tt.reasonHas)
			}
		})
	}
}

// A digest deployed again after it failed (updater deploy, once the
// credentials are fixed) is judged on its own tasks, not on the rejections
// of the earlier attempt.
func TestRecentLeavesOutEarlierAttempts(t *testing.T) {
	started := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(tk Task, ago time.Duration) Task { tk.Since = started.Add(-ago); return tk }
	r := Rollout{Image: pinned(newD), UpdateState: "completed", Desired: 1, Tasks: []Task{
		at(rejected(newD, "w1", "shutdown"), 10*time.Minute),
		at(rejected(newD, "w1", "shutdown"), 9*time.Minute),
		at(rejected(newD, "w1", "shutdown"), 8*time.Minute),
		at(up(oldD, "running"), time.Hour),               // wanted running: stays, however old
		at(up(newD, "pending"), -time.Second),            // this attempt
		at(rejected(newD, "w1", "ready"), 5*time.Second), // within the clock skew: this attempt
	}}
	got := recent(r, started)
	if len(got.Tasks) != 3 {
		t.Fatalf("recent kept %d tasks, want 3: %+v", len(got.Tasks), got.Tasks)
	}
	if v, why := judge(got, newD); v != pending {
		t.Errorf("judge = %d (%q), want pending: the earlier attempt's rejections do not count", v, why)
	}
	if v, _ := judge(r, newD); v != failing {
		t.Errorf("judge of the whole history = %d, want failing (the test would prove nothing)", v)
	}
}
