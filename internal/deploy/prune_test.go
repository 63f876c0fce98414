package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

type fakePruner struct {
	PromotedFn    func(ctx context.Context, serviceID string) ([]string, error)
	SetPromotedFn func(ctx context.Context, serviceID string, digests []string) error
	PruneFn       func(ctx context.Context, j deploy.PruneJob, creds deploy.Credentials) ([]deploy.Pruned, error)
}

var _ deploy.Pruner = (*fakePruner)(nil)

func (f *fakePruner) Promoted(ctx context.Context, serviceID string) ([]string, error) {
	if f.PromotedFn == nil {
		return nil, nil
	}
	return f.PromotedFn(ctx, serviceID)
}

func (f *fakePruner) SetPromoted(ctx context.Context, serviceID string, digests []string) error {
	if f.SetPromotedFn == nil {
		return nil
	}
	return f.SetPromotedFn(ctx, serviceID, digests)
}

func (f *fakePruner) Prune(ctx context.Context, j deploy.PruneJob, creds deploy.Credentials) ([]deploy.Pruned, error) {
	if f.PruneFn == nil {
		return nil, fmt.Errorf("unexpected Prune(%s)", j.Name)
	}
	return f.PruneFn(ctx, j, creds)
}

var (
	olderD  = "sha256:" + strings.Repeat("9", 64)
	oldestD = "sha256:" + strings.Repeat("8", 64)
)

const pruneImage = "ghcr.io/updater-dev/updater:1.0@sha256:" + "0000000000000000000000000000000000000000000000000000000000000001"

// pruneWorld is a world whose pipeline prunes, with a record of the
// promoted digests per service and every prune job it ran.
type pruneWorld struct {
	*world
	pmu      sync.Mutex
	promoted map[string][]string
	jobs     []deploy.PruneJob
	creds    []deploy.Credentials
	result   []deploy.Pruned
	err      error
}

func newPruneWorld(t *testing.T, keep int) *pruneWorld {
	w := &pruneWorld{world: newWorld(t), promoted: map[string][]string{},
		result: []deploy.Pruned{{Node: "manager-1", Removed: 2, Bytes: 4 << 20}, {Node: "worker-1", Removed: 1, Bytes: 2 << 20}}}
	imageCreds := deploy.Credentials{ServerAddress: "ghcr.io", Username: "bot", Password: "s3cret"}
	w.registry.CredentialsFn = func(_ context.Context, r string) (deploy.Credentials, error) {
		if r == pruneImage {
			return imageCreds, nil
		}
		return testCreds, nil
	}
	w.p.Pruning = deploy.Pruning{Keep: keep, Image: pruneImage, Timeout: time.Minute, Nodes: &fakePruner{
		PromotedFn: func(_ context.Context, id string) ([]string, error) {
			w.pmu.Lock()
			defer w.pmu.Unlock()
			return slices.Clone(w.promoted[id]), nil
		},
		SetPromotedFn: func(_ context.Context, id string, ds []string) error {
			w.pmu.Lock()
			defer w.pmu.Unlock()
			w.promoted[id] = slices.Clone(ds)
			return nil
		},
		PruneFn: func(_ context.Context, j deploy.PruneJob, c deploy.Credentials) ([]deploy.Pruned, error) {
			w.pmu.Lock()
			defer w.pmu.Unlock()
			w.jobs = append(w.jobs, j)
			w.creds = append(w.creds, c)
			return w.result, w.err
		},
	}}
	return w
}

func (w *pruneWorld) deployOK(t *testing.T) {
	t.Helper()
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	w.cycle(t.Context())
}

func TestPruneAfterSuccessfulDeploy(t *testing.T) {
	w := newPruneWorld(t, 1)
	w.promoted["svc1"] = []string{oldD, olderD}

	w.deployOK(t)

	ev := w.outcome(deploy.Succeeded)
	if len(w.jobs) != 1 {
		t.Fatalf("%d prune jobs, want 1", len(w.jobs))
	}
	j := w.jobs[0]
	if want := "web-prune-" + ev.Release.ID[:8]; j.Name != want {
		t.Errorf("job name %q, want %q", j.Name, want)
	}
	if j.Service != "svc1" || j.Repo != "127.0.0.1:5000/app" || j.Image != pruneImage || j.Timeout != time.Minute {
		t.Errorf("job %+v: want service svc1, repo 127.0.0.1:5000/app, the prune image and the timeout", j)
	}
	// One previous version kept: the one a rollback returns to.
	if want := []string{newD, oldD}; !slices.Equal(j.Keep, want) {
		t.Errorf("kept %v, want %v", j.Keep, want)
	}
	if want := []string{newD, oldD}; !slices.Equal(w.promoted["svc1"], want) {
		t.Errorf("promoted record %v, want %v", w.promoted["svc1"], want)
	}
	if w.creds[0].ServerAddress != "ghcr.io" {
		t.Errorf("prune job sent credentials for %q, want those of the prune image's registry", w.creds[0].ServerAddress)
	}
	lines := w.logLines("INFO", "images pruned")
	if len(lines) != 2 || lines[1]["node"] != "worker-1" || lines[1]["removed"] != 1.0 || lines[1]["bytes"] != float64(2<<20) ||
		lines[1]["service"] != "web" || lines[1]["image"] != "127.0.0.1:5000/app" {
		t.Errorf("prune log lines %v, want one per node with node, removed, bytes, service and image", lines)
	}
}

func TestPruneKeepsTheCountAsked(t *testing.T) {
	for _, tt := range []struct {
		keep   int
		before []string
		want   []string
	}{
		{0, []string{oldD}, []string{newD}},
		{1, nil, []string{newD, oldD}},
		{2, []string{oldD, olderD, oldestD}, []string{newD, oldD, olderD}},
		{3, []string{olderD, oldD}, []string{newD, oldD, olderD}}, // From first, then the record; no repeats
		{5, []string{newD, oldD}, []string{newD, oldD}},           // a record that already has the new digest
	} {
		t.Run(fmt.Sprint(tt.keep, tt.before), func(t *testing.T) {
			w := newPruneWorld(t, tt.keep)
			w.promoted["svc1"] = tt.before
			w.deployOK(t)
			if len(w.jobs) != 1 || !slices.Equal(w.jobs[0].Keep, tt.want) {
				t.Fatalf("jobs %+v, want one keeping %v", w.jobs, tt.want)
			}
		})
	}
}

func TestPruneNotAfterFailedDeploy(t *testing.T) {
	w := newPruneWorld(t, 1)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("rollback_completed", oldD, task(oldD, "running"))}

	w.cycle(t.Context())

	w.outcome(deploy.Failed)
	if len(w.jobs) != 0 || len(w.promoted["svc1"]) != 0 {
		t.Errorf("prune jobs %+v, record %v after a failed deploy: want none", w.jobs, w.promoted["svc1"])
	}
}

// A prune that fails, on one node or as a whole, is logged; the deploy
// stays a success reported once.
func TestPruneFailureLeavesTheDeployAlone(t *testing.T) {
	t.Run("on a node", func(t *testing.T) {
		w := newPruneWorld(t, 1)
		w.result = []deploy.Pruned{{Node: "manager-1", Removed: 1}, {Node: "worker-1", Err: "job task rejected: No such image: " + pruneImage}}
		w.deployOK(t)
		w.outcome(deploy.Succeeded)
		warn := w.logLines("WARN", "prune failed on a node")
		if len(warn) != 1 || warn[0]["node"] != "worker-1" || !strings.Contains(fmt.Sprint(warn[0]["err"]), "No such image") {
			t.Errorf("warnings %v, want one naming worker-1 and the error", warn)
		}
	})
	t.Run("the job", func(t *testing.T) {
		w := newPruneWorld(t, 1)
		w.result, w.err = nil, errors.New("create job web-prune-x: permission denied")
		w.deployOK(t)
		w.outcome(deploy.Succeeded)
		if warn := w.logLines("WARN", "prune failed"); len(warn) != 1 {
			t.Errorf("warnings %v, want one", warn)
		}
	})
}

func TestPruneOffByDefault(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	w.cycle(t.Context())
	w.outcome(deploy.Succeeded)
	if lines := w.logLines("INFO", "images pruned"); len(lines) != 0 {
		t.Errorf("pruned without Pruning set: %v", lines)
	}
}

// Every promoted member of a group is pruned, after the whole group.
func TestPruneAfterGroupDeploy(t *testing.T) {
	w := newPruneWorld(t, 1)
	a, b := web(oldD), web(oldD)
	b.ID, b.Name = "svc2", "worker"
	a.Hooks.Group, b.Hooks.Group = "g", "g"
	w.targets = []deploy.Target{a, b}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}

	w.cycle(t.Context())

	var services []string
	for _, j := range w.jobs {
		services = append(services, j.Service)
	}
	slices.Sort(services)
	if want := []string{"svc1", "svc2"}; !slices.Equal(services, want) {
		t.Errorf("pruned after %v, want %v", services, want)
	}
}

func TestRepository(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:5000/app:1":                  "127.0.0.1:5000/app",
		"127.0.0.1:5000/app":                    "127.0.0.1:5000/app",
		"127.0.0.1:5000/app:1@" + newD:          "127.0.0.1:5000/app",
		"nginx":                                 "nginx",
		"ghcr.io/org/team/app:v1.2.3-rc1":       "ghcr.io/org/team/app",
		"localhost:5000/app@" + newD:            "localhost:5000/app",
		"registry.example.com:443/shop/web:2.4": "registry.example.com:443/shop/web",
	} {
		if got := deploy.Repository(in); got != want {
			t.Errorf("Repository(%q) = %q, want %q", in, got, want)
		}
	}
}

// Runs of one repository side by side: the prune after one keeps what the
// others deploy and would return to, and no run of the repository starts
// while it prunes (its freshly pulled image could go).
func TestPruneBesideRunsOfItsRepository(t *testing.T) {
	w := newPruneWorld(t, 1)
	apiNew, workerNew := "sha256:"+strings.Repeat("c", 64), "sha256:"+strings.Repeat("d", 64)
	const apiRef, workerRef = "127.0.0.1:5000/app:2", "127.0.0.1:5000/app:3"
	api := web(oldD)
	api.ID, api.Name, api.Image = "svc2", "api", deploy.Pin(apiRef, oldD)
	w.targets = []deploy.Target{web(oldD), api}
	w.digests[ref], w.digests[apiRef], w.digests[workerRef] = newD, apiNew, oldD
	apiHeld := make(chan struct{})
	// web's rollout completes only once api's spec is written: api's run
	// is then in flight when web's prune computes what it keeps (else
	// web could deploy and prune before the cycle launched api's run).
	apiWritten, once := make(chan struct{}), sync.Once{}
	update := w.services.UpdateFn
	w.services.UpdateFn = func(ctx context.Context, tg deploy.Target, image string, c deploy.Credentials) error {
		if tg.ID == "svc2" {
			defer once.Do(func() { close(apiWritten) })
		}
		return update(ctx, tg, image, c)
	}
	w.services.RolloutFn = func(ctx context.Context, id string) (deploy.Rollout, error) {
		if id != "svc2" {
			select {
			case <-apiWritten:
			case <-ctx.Done():
				return deploy.Rollout{}, ctx.Err()
			}
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if id == "svc2" {
			select {
			case <-apiHeld:
				return deploy.Rollout{Image: deploy.Pin(apiRef, apiNew), UpdateState: "completed", Desired: 1,
					Tasks: []deploy.Task{{ID: "a", Image: deploy.Pin(apiRef, apiNew), State: "running", Desired: "running"}}}, nil
			default:
				return deploy.Rollout{Image: deploy.Pin(apiRef, apiNew), UpdateState: "updating", Desired: 1}, nil
			}
		}
		return rollout("completed", newD, task(newD, "running")), nil
	}
	pruning, pruned := make(chan deploy.PruneJob, 2), make(chan struct{})
	w.p.Pruning.Nodes.(*fakePruner).PruneFn = func(_ context.Context, j deploy.PruneJob, _ deploy.Credentials) ([]deploy.Pruned, error) {
		pruning <- j
		<-pruned
		return nil, nil
	}

	if _, err := w.p.Cycle(t.Context()); err != nil {
		t.Fatal(err)
	}
	var j deploy.PruneJob
	select {
	case j = <-pruning:
	case <-time.After(10 * time.Second):
		t.Fatal("no prune after web's deploy")
	}
	if !slices.Contains(j.Keep, apiNew) || !slices.Contains(j.Keep, oldD) || !slices.Contains(j.Keep, newD) {
		t.Errorf("prune keeps %v: want web's new digest, and what api deploys (%s) and returns to (%s)", j.Keep, deploy.Short(apiNew), deploy.Short(oldD))
	}

	// A third service of the repository moves while web's prune runs.
	worker := web(oldD)
	worker.ID, worker.Name, worker.Image = "svc3", "worker", deploy.Pin(workerRef, oldD)
	w.mu.Lock()
	w.targets = append(w.targets, worker)
	w.digests[workerRef] = workerNew
	w.mu.Unlock()
	plans, err := w.p.CycleFor(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(plans, func(pl deploy.Plan) bool { return pl.Target.Name == "worker" })
	if plans[i].Action != deploy.ActDeploying || !strings.Contains(plans[i].Reason, "prune of 127.0.0.1:5000/app") {
		t.Errorf("worker planned %s (%s) while its repository prunes, want it to wait", plans[i].Action, plans[i].Reason)
	}
	close(pruned)
	close(apiHeld)
	w.p.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.begun {
		if r.ServiceID == "svc3" {
			t.Errorf("worker's deploy began while its repository pruned")
		}
	}
}
