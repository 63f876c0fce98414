package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// The error paths of a group deploy. Whatever fails, the group must not
// end up half old, half new: nothing written, or every member written
// rolled back; one outcome per member announced; every record closed.

// groupWorld is a hookWorld with the group of group(), listed in order
// (by name when "worker" comes first), where a rollback puts the spec
// back on the previous image, as Swarm does.
func groupWorld(t *testing.T, workerFirst bool) *hookWorld {
	t.Helper()
	w := newHookWorld(t)
	worker, web := group()
	w.targets = []deploy.Target{web, worker}
	if workerFirst {
		w.targets = []deploy.Target{worker, web}
	}
	w.digests[ref] = newD
	w.perService(map[string][]deploy.Rollout{
		"svc1": {rollout("completed", newD, task(newD, "running"))},
		"svc2": {rollout("completed", newD, task(newD, "running"))},
	}, map[string][]deploy.Rollout{
		"svc1": {rollout("rollback_completed", oldD, task(oldD, "running"))},
		"svc2": {rollout("rollback_completed", oldD, task(oldD, "running"))},
	})
	rollback := w.services.RollbackFn
	w.services.RollbackFn = func(ctx context.Context, id string) error {
		if err := rollback(ctx, id); err != nil {
			return err
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		for i := range w.targets {
			if w.targets[i].ID == id {
				w.targets[i].Image = pinned(oldD)
			}
		}
		return nil
	}
	return w
}

// specs is what each service's spec carries now, by name.
func (w *hookWorld) specs() map[string]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]string{}
	for _, t := range w.targets {
		out[t.Name] = t.Image
	}
	return out
}

// untouched asserts no member was changed in any way: no spec write, no
// hook job, no rollback, no digest remembered as failed (the image is
// not to blame, so the next cycle tries the group again), no record left.
func (w *hookWorld) untouched() {
	w.t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.updates) != 0 || len(w.ran) != 0 || len(w.rollbacks) != 0 || len(w.marked) != 0 {
		w.t.Errorf("updates %+v, jobs %d, rollbacks %v, MarkFailed %+v: want the group untouched",
			w.updates, len(w.ran), w.rollbacks, w.marked)
	}
	if len(w.open) != 0 {
		w.t.Errorf("records left in flight: %v", ids(w.open))
	}
}

// A member's record refused (Journal.Begin fails): no member is deployed,
// the records of the others are closed with one outcome each, and the next
// cycle deploys the whole group.
func TestGroupMemberRecordRefused(t *testing.T) {
	for _, tc := range []struct {
		name        string
		workerFirst bool
		err         error
	}{
		{"the later member refused", true, errors.New("create config: permission denied")},
		{"the first member refused", false, errors.New("create config: permission denied")},
		// Not recorded, not announced: Docker being down is no outcome.
		{"docker unreachable at the later member's record", true, fmt.Errorf("create config: %w", deploy.ErrUnavailable)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := groupWorld(t, tc.workerFirst)
			begin := w.journal.BeginFn
			refused := true
			w.journal.BeginFn = func(ctx context.Context, r deploy.Release) error {
				if r.ServiceName == "web" && refused {
					return tc.err
				}
				return begin(ctx, r)
			}

			w.cycle(t.Context())

			w.untouched()
			got := w.perRelease()
			for name, kinds := range got {
				if !slices.Equal(kinds, []deploy.Kind{deploy.Failed}) && !slices.Equal(kinds, []deploy.Kind{deploy.Started, deploy.Failed}) {
					t.Errorf("%s: events %v, want one failure, after its start if it was announced", name, kinds)
				}
			}
			if errors.Is(tc.err, deploy.ErrUnavailable) {
				if _, ok := got["web"]; ok {
					t.Errorf("web: events %v for a deploy never announced", got["web"])
				}
			} else if !slices.Equal(got["web"], []deploy.Kind{deploy.Failed}) {
				t.Errorf("web: events %v, want its refusal reported once", got["web"])
			}
			for _, ev := range w.milestones() {
				if ev.Kind == deploy.Failed && (ev.Phase != deploy.PhasePrepare || ev.RolledBack) {
					t.Errorf("%s: failed in %s, rolled back %v: want prepare, nothing to roll back", ev.Release.ServiceName, ev.Phase, ev.RolledBack)
				}
			}
			if want := map[string]string{"web": pinned(oldD), "worker": pinned(oldD)}; !reflect.DeepEqual(w.specs(), want) {
				t.Fatalf("specs %v, want both on the old image", w.specs())
			}

			// The record goes through now: the whole group deploys.
			w.mu.Lock()
			refused, w.events = false, nil
			w.mu.Unlock()
			w.cycle(t.Context())
			want := map[string][]deploy.Kind{"web": {deploy.Started, deploy.Succeeded}, "worker": {deploy.Started, deploy.Succeeded}}
			if got := w.perRelease(); !reflect.DeepEqual(got, want) {
				t.Errorf("next cycle: events %v, want %v", got, want)
			}
			if want := map[string]string{"web": pinned(newD), "worker": pinned(newD)}; !reflect.DeepEqual(w.specs(), want) {
				t.Errorf("next cycle: specs %v, want both on the new image", w.specs())
			}
		})
	}
}

// Group members may pull from different registries (see
// TestGroupMembersOnTwoRegistries): credentials failing for any member
// stop the whole group before anything runs, whichever member it is.
func TestGroupMemberCredentialsFail(t *testing.T) {
	const workerRef = "127.0.0.1:5001/worker:1"
	workerD := "sha256:" + strings.Repeat("c", 64)
	for _, workerFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("worker's credentials fail, worker first %v", workerFirst), func(t *testing.T) {
			w := groupWorld(t, workerFirst)
			for i := range w.targets {
				if w.targets[i].Name == "worker" {
					w.targets[i].Image = deploy.Pin(workerRef, oldD)
				}
			}
			w.digests[workerRef] = workerD
			w.perService(map[string][]deploy.Rollout{
				"svc1": {rollout("completed", newD, task(newD, "running"))},
				"svc2": {{Image: deploy.Pin(workerRef, workerD), UpdateState: "completed", Desired: 1,
					Tasks: []deploy.Task{{ID: "w1", Image: deploy.Pin(workerRef, workerD), State: "running", Desired: "running"}}}},
			}, nil)
			w.registry.CredentialsFn = func(_ context.Context, r string) (deploy.Credentials, error) {
				if r != workerRef {
					return testCreds, nil
				}
				return deploy.Credentials{}, errors.New("look up credentials for 127.0.0.1:5001: helper exited 1")
			}

			w.cycle(t.Context())

			w.untouched()
			want := map[string][]deploy.Kind{"web": {deploy.Started, deploy.Failed}, "worker": {deploy.Started, deploy.Failed}}
			if got := w.perRelease(); !reflect.DeepEqual(got, want) {
				t.Fatalf("events = %v, want %v", got, want)
			}
			for _, ev := range w.milestones() {
				if ev.Kind == deploy.Failed && (ev.Phase != deploy.PhasePrepare || !strings.Contains(ev.Reason, "helper exited 1")) {
					t.Errorf("%s: failed in %s: %q, want prepare, with the credentials error", ev.Release.ServiceName, ev.Phase, ev.Reason)
				}
			}
		})
	}
}

// A member's spec write refused outright (Swarm answered no; not a lost
// answer): the members written are rolled back, every member's digest is
// remembered, so no later cycle deploys one member alone.
func TestGroupMemberSpecWriteRefused(t *testing.T) {
	for _, refusedName := range []string{"web", "worker"} {
		t.Run(refusedName+" refused", func(t *testing.T) {
			w := groupWorld(t, true)
			write := w.services.UpdateFn
			w.services.UpdateFn = func(ctx context.Context, tg deploy.Target, image string, creds deploy.Credentials) error {
				if tg.Name == refusedName {
					return fmt.Errorf("update service %s: Error response from daemon: rpc error: code = InvalidArgument desc = bad mount", tg.Name)
				}
				return write(ctx, tg, image, creds)
			}
			written := "worker"
			if refusedName == "worker" {
				written = "web"
			}

			w.cycle(t.Context())

			want := map[string][]deploy.Kind{"web": {deploy.Started, deploy.Failed}, "worker": {deploy.Started, deploy.Failed}}
			if got := w.perRelease(); !reflect.DeepEqual(got, want) {
				t.Fatalf("events = %v, want %v", got, want)
			}
			for _, ev := range w.milestones() {
				switch {
				case ev.Kind != deploy.Failed:
				case ev.Release.ServiceName == refusedName && (ev.Phase != deploy.PhaseUpdate || !strings.Contains(ev.Reason, "InvalidArgument")):
					t.Errorf("%s: failed in %s: %q, want the update refusal", refusedName, ev.Phase, ev.Reason)
				case ev.Release.ServiceName == written && (ev.Phase != deploy.PhaseRollback || !ev.RolledBack):
					t.Errorf("%s: failed in %s, rolled back %v: want rolled back with its group", written, ev.Phase, ev.RolledBack)
				}
			}
			svc := map[string]string{"web": "svc1", "worker": "svc2"}
			if !slices.Equal(w.rollbacks, []string{svc[written]}) {
				t.Errorf("rollbacks %v, want %s's only", w.rollbacks, written)
			}
			var marked []string
			for _, m := range w.marked {
				if m.digest == newD {
					marked = append(marked, m.service)
				}
			}
			slices.Sort(marked)
			if !slices.Equal(marked, []string{"svc1", "svc2"}) {
				t.Errorf("failed digests remembered for %q, want every member's: else one deploys alone next cycle", marked)
			}
			if len(w.open) != 0 || len(w.ended) != 2 {
				t.Errorf("End %v, open %v: want both closed", ids(w.ended), ids(w.open))
			}

			// Swarm would take the write now: still no member moves alone.
			w.mu.Lock()
			w.services.UpdateFn, w.updates = write, nil
			w.mu.Unlock()
			w.cycle(t.Context())
			if len(w.updates) != 0 {
				t.Errorf("next cycle wrote %+v: a member of the group deployed alone", w.updates)
			}
			if want := map[string]string{"web": pinned(oldD), "worker": pinned(oldD)}; !reflect.DeepEqual(w.specs(), want) {
				t.Errorf("specs %v, want the group back on the old image", w.specs())
			}
		})
	}
}

// A group's deploy left in flight with one member written and the other
// not resumes as one release: its hooks are not run again (a member past
// its write means they ran), the member left is written, both are
// followed, and when one fails the other, promoted, is unwound with it.
func TestResumeGroupAsOneRelease(t *testing.T) {
	for _, workerFails := range []bool{false, true} {
		t.Run(map[bool]string{false: "both healthy", true: "the member left fails"}[workerFails], func(t *testing.T) {
			w := groupWorld(t, false)
			w.p.WatchInterval = time.Millisecond
			started := time.Now().Add(-time.Minute)
			web := deploy.Release{ID: "rec-web", ServiceID: "svc1", ServiceName: "web", Stack: "site", Ref: ref, From: oldD, To: newD, Started: started}
			worker := web
			worker.ID, worker.ServiceID, worker.ServiceName = "rec-worker", "svc2", "worker"
			w.open = []deploy.Release{web, worker}
			w.targets[0].Image = pinned(newD) // web's write landed before the updater died
			// Swarm's answer follows each spec; the worker's new version
			// never turns healthy when it fails.
			w.writesLand()
			w.services.RolloutFn = func(_ context.Context, id string) (deploy.Rollout, error) {
				w.mu.Lock()
				defer w.mu.Unlock()
				i := slices.IndexFunc(w.targets, func(t deploy.Target) bool { return t.ID == id })
				_, d := deploy.SplitImage(w.targets[i].Image)
				if workerFails && id == "svc2" && d == newD {
					return rollout("paused", newD, task(oldD, "running"), gone(newD, "unhealthy")), nil
				}
				return rollout("completed", d, task(d, "running")), nil
			}

			w.cycle(t.Context())

			if len(w.ran) != 0 {
				t.Errorf("jobs %q: the hooks ran before web's write, not again", w.jobNames())
			}
			if len(w.updates) != 1 || w.updates[0].image != pinned(newD) {
				t.Errorf("spec writes %+v, want the worker's only", w.updates)
			}
			outcomes := map[string]deploy.Event{}
			for _, e := range w.milestones() {
				if e.Kind == deploy.Started {
					t.Errorf("%s started again", e.Release.ServiceName)
				}
				if _, dup := outcomes[e.Release.ServiceName]; dup {
					t.Errorf("%s reported twice", e.Release.ServiceName)
				}
				outcomes[e.Release.ServiceName] = e
			}
			want := deploy.Succeeded
			if workerFails {
				want = deploy.Failed
			}
			for _, name := range []string{"web", "worker"} {
				if ev, ok := outcomes[name]; !ok || ev.Kind != want || !ev.Resumed {
					t.Errorf("%s: %+v, want %s, resumed", name, ev, want)
				}
			}
			if workerFails {
				if !slices.Contains(w.rollbacks, "svc1") || !strings.Contains(outcomes["web"].Reason, "rolled back with its group: worker failed") {
					t.Errorf("rollbacks %v, web %q: want web unwound with its group", w.rollbacks, outcomes["web"].Reason)
				}
			}
			if len(w.open) != 0 {
				t.Errorf("records left %v", ids(w.open))
			}
		})
	}
}
