package deploy_test

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/updater-dev/updater/internal/deploy"
)

// `updater deploy X` and the API's deploy of a group member deploy the
// whole group, as a cycle would.

// written lists the services whose spec was written, in order.
func (w *hookWorld) written() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, c := range w.calls {
		if s, ok := strings.CutPrefix(c, "update "); ok {
			out = append(out, s)
		}
	}
	return out
}

// Asked for the member without hooks, the group deploys: web's backup and
// migration run once, both members are written and judged, and the answer
// is worker's own outcome.
func TestDeployServiceDeploysItsGroup(t *testing.T) {
	w := groupWorld(t, true)

	ev, err := w.p.DeployService(t.Context(), "worker")
	if err != nil {
		t.Fatalf("DeployService: %v", err)
	}

	if ev.Kind != deploy.Succeeded || ev.Release.ServiceName != "worker" || ev.Release.To != newD || ev.Release.ID == "" {
		t.Errorf("DeployService = %s of %s to %s (id %q), want worker's own success to %s", ev.Kind, ev.Release.ServiceName, ev.Release.To, ev.Release.ID, newD)
	}
	want := map[string][]deploy.Kind{"web": {deploy.Started, deploy.Succeeded}, "worker": {deploy.Started, deploy.Succeeded}}
	if got := w.perRelease(); !reflect.DeepEqual(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if len(w.ran) != 2 || w.ran[0].Phase != deploy.PhaseBackup || w.ran[1].Phase != deploy.PhaseMigrate || !strings.HasPrefix(w.ran[0].Name, "g-") {
		t.Errorf("jobs %q, want the group's one backup and one migration", w.jobNames())
	}
	if !w.done["group:site/g "+newD] {
		t.Errorf("migrations recorded %v, want the group's for %s", w.done, newD)
	}
	if want := map[string]string{"web": pinned(newD), "worker": pinned(newD)}; !reflect.DeepEqual(w.specs(), want) {
		t.Errorf("specs %v, want both on the new image", w.specs())
	}
	if len(w.open) != 0 || len(w.ended) != 2 {
		t.Errorf("End %v, open %v: want both closed", ids(w.ended), ids(w.open))
	}
}

// Which members go along is the cycle's rule: for each state of worker,
// DeployService(web) writes the services a cycle would write, and runs the
// same hooks.
func TestDeployServiceGroupIsTheCyclesGroup(t *testing.T) {
	const workerRef = "127.0.0.1:5000/worker:1"
	workerD := "sha256:" + strings.Repeat("c", 64)
	for _, tc := range []struct {
		name  string
		setup func(w *hookWorld, worker *deploy.Target)
		want  []string // written, in order, by both
	}{
		{"worker moved too", func(*hookWorld, *deploy.Target) {}, []string{"worker", "web"}},
		{"worker up to date", func(w *hookWorld, wk *deploy.Target) {
			wk.Image = deploy.Pin(workerRef, workerD)
			w.digests[workerRef] = workerD
		}, []string{"web"}},
		{"worker pinned without a tag", func(w *hookWorld, wk *deploy.Target) {
			wk.Image = "127.0.0.1:5000/worker@" + workerD
		}, []string{"web"}},
		// Not deployable with its group: a cycle deploys it alone, where
		// its labels fail it before any write.
		{"worker's labels invalid", func(w *hookWorld, wk *deploy.Target) {
			wk.HooksErr = errors.New("invalid hook labels: updater.group")
		}, []string{"web"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := func(adhoc bool) (written []string, jobs int) {
				w := groupWorld(t, true)
				tc.setup(w, &w.targets[0]) // worker is first
				if adhoc {
					if _, err := w.p.DeployService(t.Context(), "web"); err != nil {
						t.Fatalf("DeployService: %v", err)
					}
				} else {
					w.cycle(t.Context())
				}
				return w.written(), len(w.ran)
			}
			cycleWrote, cycleJobs := run(false)
			adhocWrote, adhocJobs := run(true)
			if !slices.Equal(cycleWrote, tc.want) {
				t.Fatalf("the cycle wrote %q, want %q: the test's premise is wrong", cycleWrote, tc.want)
			}
			if !slices.Equal(adhocWrote, cycleWrote) || adhocJobs != cycleJobs {
				t.Errorf("DeployService(web) wrote %q with %d jobs; a cycle wrote %q with %d", adhocWrote, adhocJobs, cycleWrote, cycleJobs)
			}
		})
	}
}

// A person's request stands for the whole group: a digest every member
// failed before is retried by all of them, not by the named one alone.
func TestDeployServiceGroupRetriesFailedDigests(t *testing.T) {
	w := groupWorld(t, true)
	w.failed = map[string]map[string]bool{"svc1": {newD: true}, "svc2": {newD: true}}

	ev, err := w.p.DeployService(t.Context(), "web")
	if err != nil || ev.Kind != deploy.Succeeded || ev.Release.ServiceName != "web" {
		t.Fatalf("DeployService = %+v, %v: want web's success", ev, err)
	}
	if got := w.written(); !slices.Equal(got, []string{"worker", "web"}) {
		t.Errorf("written %q, want both members", got)
	}
}

// One member fails its rollout: both are unwound, and each caller gets its
// own service's outcome.
func TestDeployServiceGroupFailsTogether(t *testing.T) {
	for _, name := range []string{"web", "worker"} {
		t.Run(name, func(t *testing.T) {
			w := groupWorld(t, true)
			w.perService(map[string][]deploy.Rollout{
				"svc2": {rollout("completed", newD, task(newD, "running"))},
				"svc1": {rollout("rollback_completed", oldD, task(oldD, "running"), gone(newD, "dockerexec: unhealthy container"))},
			}, map[string][]deploy.Rollout{
				"svc2": {rollout("rollback_completed", oldD, task(oldD, "running"))},
			})

			ev, err := w.p.DeployService(t.Context(), name)
			if err != nil {
				t.Fatalf("DeployService: %v", err)
			}
			if ev.Kind != deploy.Failed || !ev.RolledBack || ev.Release.ServiceName != name {
				t.Errorf("DeployService(%s) = %s of %s, rolled back %v: want its own rolled-back failure", name, ev.Kind, ev.Release.ServiceName, ev.RolledBack)
			}
			if name == "worker" && !strings.Contains(ev.Reason, "web failed") {
				t.Errorf("worker's reason %q, want it rolled back because web failed", ev.Reason)
			}
			if !slices.Equal(w.rollbacks, []string{"svc2"}) {
				t.Errorf("rollbacks %v, want the healthy member's", w.rollbacks)
			}
			want := map[string][]deploy.Kind{"web": {deploy.Started, deploy.Failed}, "worker": {deploy.Started, deploy.Failed}}
			if got := w.perRelease(); !reflect.DeepEqual(got, want) {
				t.Errorf("events = %v, want %v", got, want)
			}
		})
	}
}

// Another member's tag can't be looked up: nothing starts, and the error
// names that member.
func TestDeployServiceGroupMemberLookupFails(t *testing.T) {
	const workerRef = "127.0.0.1:5000/worker:1"
	w := groupWorld(t, true)
	w.targets[0].Image = deploy.Pin(workerRef, oldD) // worker; no digest known: the lookup fails

	_, err := w.p.DeployService(t.Context(), "web")
	if err == nil || !strings.Contains(err.Error(), "worker") || !errors.Is(err, deploy.ErrNotFound) {
		t.Fatalf("DeployService = %v, want the failed lookup of worker's tag", err)
	}
	w.untouched()
	if len(w.events) != 0 {
		t.Errorf("events %v, want none", w.kinds())
	}
}

// Asked for a member already up to date, nothing is deployed, not even a
// member that moved.
func TestDeployServiceGroupMemberUpToDate(t *testing.T) {
	const workerRef = "127.0.0.1:5000/worker:1"
	workerD := "sha256:" + strings.Repeat("c", 64)
	w := groupWorld(t, true)
	w.targets[0].Image = deploy.Pin(workerRef, workerD)
	w.digests[workerRef] = workerD

	ev, err := w.p.DeployService(t.Context(), "worker")
	if err != nil || ev.Kind != deploy.Succeeded || ev.Reason != "already up to date" {
		t.Fatalf("DeployService = %+v, %v: want already up to date", ev, err)
	}
	w.untouched()
}

// A dry run names every member that would deploy and changes nothing.
func TestDeployServiceGroupDryRun(t *testing.T) {
	w := groupWorld(t, true)
	w.p.DryRun = true
	w.services.UpdateFn = nil

	ev, err := w.p.DeployService(t.Context(), "worker")
	if err != nil || !strings.Contains(ev.Reason, "dry run") || ev.Release.ServiceName != "worker" {
		t.Fatalf("DeployService = %+v, %v", ev, err)
	}
	var named []string
	for _, l := range w.logLines("INFO", "dry run: would deploy") {
		named = append(named, l["service"].(string))
	}
	if !slices.Equal(named, []string{"worker", "web"}) {
		t.Errorf("dry run named %q, want both members", named)
	}
	w.untouched()
}

// Docker goes away at a member's spec write: the records stay for the next
// cycle, and the caller hears that its deploy resumes, without a report.
func TestDeployServiceGroupNoOutcomeYet(t *testing.T) {
	w := groupWorld(t, true)
	write := w.services.UpdateFn
	w.services.UpdateFn = func(ctx context.Context, tg deploy.Target, image string, creds deploy.Credentials) error {
		if tg.Name == "worker" {
			return errors.Join(errors.New("update service worker: EOF"), deploy.ErrUnavailable)
		}
		return write(ctx, tg, image, creds)
	}
	w.services.RolloutFn = func(context.Context, string) (deploy.Rollout, error) {
		return deploy.Rollout{}, deploy.ErrUnavailable
	}

	ev, err := w.p.DeployService(t.Context(), "web")
	if err != nil {
		t.Fatalf("DeployService: %v", err)
	}
	if ev.Kind != deploy.Failed || ev.Release.ServiceName != "web" || !strings.Contains(ev.Reason, "carries the deploy on") {
		t.Errorf("DeployService = %+v, want web's deploy said to resume", ev)
	}
	if len(w.open) != 2 {
		t.Errorf("records open %v, want both kept", ids(w.open))
	}
	for _, e := range w.milestones() {
		if e.Kind != deploy.Started {
			t.Errorf("reported %s for %s: nothing is over", e.Kind, e.Release.ServiceName)
		}
	}
}
