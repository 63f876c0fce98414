package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// Found in review: a group whose hook owner (web) is up to date and only worker moves:
// the fresh run runs no hook (lead = hookOwner of the moving members). If it
// stops at the write, the resumed run picks the lead among all group members
// (web) and runs web's backup and migration, the migration in worker's image.
func TestReviewResumeRunsHooksTheFreshRunDidNot(t *testing.T) {
	w := newHookWorld(t)
	worker, web := group()
	workerRef := "127.0.0.1:5000/worker:1"
	worker.Image = deploy.Pin(workerRef, oldD)
	otherD := "sha256:" + strings.Repeat("c", 64)
	w.targets = []deploy.Target{worker, web}
	w.digests[ref] = oldD // web up to date
	w.digests[workerRef] = otherD
	write := w.services.UpdateFn
	gone := true
	w.services.UpdateFn = func(ctx context.Context, tg deploy.Target, image string, c deploy.Credentials) error {
		if gone {
			return fmt.Errorf("update service: %w: connection refused", deploy.ErrUnavailable)
		}
		return write(ctx, tg, image, c)
	}
	w.services.RolloutFn = func(_ context.Context, id string) (deploy.Rollout, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, tg := range w.targets {
			if tg.ID == id {
				return deploy.Rollout{Image: tg.Image, UpdateState: "completed", Desired: 1,
					Tasks: []deploy.Task{{ID: "t" + tg.Image, Image: tg.Image, State: "running", Desired: "running"}}}, nil
			}
		}
		return deploy.Rollout{}, deploy.ErrNotFound
	}
	reached := w.journal.ReachedFn
	w.journal.ReachedFn = func(context.Context, deploy.Release, deploy.Stage) error {
		return fmt.Errorf("label config: %w", deploy.ErrUnavailable) // or: SIGKILL before the note
	}
	w.cycle(t.Context())
	w.journal.ReachedFn = reached
	if len(w.ran) != 0 || len(w.open) != 1 {
		t.Fatalf("fresh run: jobs %q, records %v; want no job, one record", w.jobNames(), ids(w.open))
	}
	gone = false
	w.cycle(t.Context())
	if len(w.ran) != 0 {
		t.Errorf("resumed run ran jobs %q (images %v) the fresh run did not", w.jobNames(), []string{w.ran[0].Image, w.ran[len(w.ran)-1].Image})
	}
}

// Found in review: Docker not answering the rollout inspections until the deploy
// timeout passes is no verdict on the image, yet the digest is quarantined.
func TestReviewDockerGoneMidRolloutQuarantinesDigest(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.p.Timeout = 50 * time.Millisecond
	w.services.RolloutFn = func(context.Context, string) (deploy.Rollout, error) {
		return deploy.Rollout{}, fmt.Errorf("inspect service: %w: connection refused", deploy.ErrUnavailable)
	}
	w.services.RollbackFn = func(context.Context, string) error {
		return fmt.Errorf("rollback: %w: connection refused", deploy.ErrUnavailable)
	}
	w.cycle(t.Context())
	if len(w.marked) != 0 {
		t.Errorf("MarkFailed %v: digest quarantined because Docker did not answer", w.marked)
	}
	if got := w.kinds(); len(got) != 1 {
		t.Errorf("events %v: want only Started (the record kept, resumed when Docker answers)", got)
	}
}

// Found in review: a run queued for a slot starts after the lease is lost: it writes
// its record and reports Started without checking the lease.
func TestReviewQueuedRunRecordsAfterLeaseLost(t *testing.T) {
	w := newWorld(t)
	a, b := web(oldD), web(oldD)
	b.ID, b.Name = "svc2", "api"
	w.targets = []deploy.Target{a, b}
	w.digests[ref] = newD
	w.p.DeployConcurrency = 1
	w.p.WatchInterval = time.Hour // only the checks before writes see the loss
	held := leaseFlag(w)
	planned := make(chan struct{})
	w.services.UpdateFn = func(context.Context, deploy.Target, string, deploy.Credentials) error {
		<-planned
		held.Store(false)                 // renewals failed while the first write was under way
		return errors.New("spec refused") // the first run ends at once
	}
	w.services.RolloutFn = func(context.Context, string) (deploy.Rollout, error) {
		return rollout("completed", oldD, task(oldD, "running")), nil
	}
	if _, err := w.p.Cycle(t.Context()); err != nil {
		t.Fatal(err)
	}
	close(planned)
	w.p.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.begun) != 1 {
		t.Errorf("records begun %v: the queued run recorded (and reported Started) after the lease was lost", ids(w.begun))
	}
}

// Found in review: an approved deploy whose record can't be written (Docker gone for a
// moment) deploys nothing, yet its approval is used up: the next cycle asks
// the person again.
func TestReviewApprovalUsedUpWithoutADeploy(t *testing.T) {
	w, _ := gated(t)
	w.cycle(context.Background())
	id := w.p.Approvals()[0].ID
	if _, err := w.p.Approve(id); err != nil {
		t.Fatal(err)
	}
	begin := w.journal.BeginFn
	w.journal.BeginFn = func(context.Context, deploy.Release) error {
		return fmt.Errorf("create config: %w: connection refused", deploy.ErrUnavailable)
	}
	w.cycle(context.Background())
	w.journal.BeginFn = begin
	pl := only(t, w.cycle(context.Background()))
	if pl.Action != deploy.ActDeploy || w.updateCount() != 1 {
		t.Errorf("after Docker came back: action %s (%s), %d writes; approvals %+v: want the approved deploy carried out", pl.Action, pl.Reason, w.updateCount(), w.p.Approvals())
	}
}

// Found in review: a prune that begins while a cycle gates (after inFlight looked)
// makes start() find the pruning flight: the approved release is not
// started, yet gate has used its approval up; the check after the prune
// opens a new approval, and the person is asked again.
func TestReviewApprovalUsedUpByAPruneBegunDuringGate(t *testing.T) {
	w := newWorld(t)
	a, b, c := web(oldD), web(oldD), web(oldD)
	b.ID, b.Name, b.Image, b.Hooks.Approve = "svcB", "b", deploy.Pin("127.0.0.1:5000/app:2", oldD), true
	c.ID, c.Name, c.Image, c.Hooks.Approve = "svcC", "c", deploy.Pin("127.0.0.1:5000/other:1", oldD), true
	w.targets = []deploy.Target{a, b, c}
	w.digests[ref] = newD
	w.digests["127.0.0.1:5000/app:2"] = newD
	w.digests["127.0.0.1:5000/other:1"] = oldD
	w.writesLand()
	w.services.RolloutFn = func(_ context.Context, id string) (deploy.Rollout, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, tg := range w.targets {
			if tg.ID == id {
				return deploy.Rollout{Image: tg.Image, UpdateState: "completed", Desired: 1,
					Tasks: []deploy.Task{{ID: "t", Image: tg.Image, State: "running", Desired: "running"}}}, nil
			}
		}
		return deploy.Rollout{}, deploy.ErrNotFound
	}
	go1, pruning, finish := make(chan struct{}), make(chan struct{}), make(chan struct{})
	w.p.Pruning = deploy.Pruning{Keep: 1, Image: pruneImage, Nodes: &fakePruner{
		PromotedFn: func(context.Context, string) ([]string, error) { <-go1; return nil, nil },
		PruneFn: func(context.Context, deploy.PruneJob, deploy.Credentials) ([]deploy.Pruned, error) {
			close(pruning)
			<-finish
			return nil, nil
		},
	}}
	var pendings atomic.Int32
	w.p.Reporter = &fakeReporter{ReportFn: func(e deploy.Event) {
		if e.Kind != deploy.Pending {
			return
		}
		pendings.Add(1)
		if e.Release.ServiceID == "svcC" { // cycle 2's gate, after its inFlight
			close(go1)
			<-pruning // A's run prunes its repository from now on
		}
	}}
	ctx, cancel := context.WithCancel(t.Context())
	tr := deploy.NewTrigger(ctx, w.p)
	defer func() { cancel(); tr.Stop(); w.p.Wait() }()
	if _, err := w.p.Cycle(ctx); err != nil { // A deploys (prune held on go1); B asks for approval
		t.Fatal(err)
	}
	var id string
	for _, ap := range w.p.Approvals() {
		if ap.ServiceID == "svcB" {
			id = ap.ID
		}
	}
	if _, err := w.p.Approve(id); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	w.digests["127.0.0.1:5000/other:1"] = newD
	w.mu.Unlock()
	if _, err := w.p.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	close(finish) // the prune ends; the run asks for B's check
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		done := slices.ContainsFunc(w.updates, func(u update) bool { return strings.Contains(u.image, "app:2@"+newD) })
		w.mu.Unlock()
		if done {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("B approved but never deployed; %d Pending reports (want 2: B once, C once); approvals %v", pendings.Load(), states(w.p.Approvals()))
}

func states(as []deploy.Approval) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.ServiceName+":"+string(a.State))
	}
	return out
}

// Found in review: a requested deploy of a service whose record can't be resumed
// (Swarm won't answer its inspection) spins: every turn of DeployService's
// loop re-reads the records, lists, relaunches the resume and waits for it,
// with no pause, for as long as its context lives (the trigger's: the
// process's lifetime).
func TestReviewDeployServiceSpinsOnAStuckResume(t *testing.T) {
	w := newWorld(t)
	w.open = []deploy.Release{journaled(time.Now().Add(-time.Minute))}
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	var looks atomic.Int32
	w.services.RolloutFn = func(context.Context, string) (deploy.Rollout, error) {
		looks.Add(1)
		return deploy.Rollout{}, fmt.Errorf("inspect service: %w: context deadline exceeded", deploy.ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err := w.p.DeployService(ctx, "web")
	w.p.Wait()
	if n := looks.Load(); n > 10 {
		t.Errorf("%d inspections in 200 ms (err %v): DeployService loops on the resume without pause", n, err)
	}
}
