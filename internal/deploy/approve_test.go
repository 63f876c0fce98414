package deploy_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

var thirdD = "sha256:" + strings.Repeat("c", 64)

// gated is a world whose one service asks for approval, with a fake clock
// and a ledger that remembers what it is told (as Swarm's does).
func gated(t *testing.T) (*world, *fakeClock) {
	t.Helper()
	w := newWorld(t)
	clk := &fakeClock{t: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)}
	w.p.Now = clk.Now
	w.p.ApprovalTimeout = time.Hour
	svc := web(oldD)
	svc.Hooks.Approve = true
	w.targets = []deploy.Target{svc}
	w.digests[ref] = newD
	w.failed = map[string]map[string]bool{}
	w.ledger.MarkFailedFn = func(_ context.Context, id, d, reason string) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.marked = append(w.marked, mark{id, d, reason})
		if w.failed[id] == nil {
			w.failed[id] = map[string]bool{}
		}
		w.failed[id][d] = true
		return nil
	}
	// Once updated, the service runs what it was updated to.
	w.services.UpdateFn = func(_ context.Context, tg deploy.Target, image string, creds deploy.Credentials) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.updates = append(w.updates, update{image, creds})
		_, d := deploy.SplitImage(image)
		w.script = []deploy.Rollout{rollout("completed", d, task(d, "running"))}
		for i := range w.targets {
			if w.targets[i].ID == tg.ID {
				w.targets[i].Image = image
			}
		}
		return nil
	}
	return w, clk
}

func (w *world) pending() []deploy.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []deploy.Event
	for _, e := range w.events {
		if e.Kind == deploy.Pending {
			out = append(out, e)
		}
	}
	return out
}

func (w *world) updateCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.updates)
}

func only(t *testing.T, plans []deploy.Plan) deploy.Plan {
	t.Helper()
	if len(plans) != 1 {
		t.Fatalf("%d plans, want 1", len(plans))
	}
	return plans[0]
}

// A new digest on a gated service waits: no spec write however many
// cycles pass, one Pending report, one open approval.
func TestApprovalWaits(t *testing.T) {
	w, clk := gated(t)
	var id string
	for i := range 3 {
		pl := only(t, w.cycle(context.Background()))
		if pl.Action != deploy.ActAwait || pl.Want != newD {
			t.Fatalf("cycle %d: action %s want %s, want %s of %s", i, pl.Action, deploy.Short(pl.Want), deploy.ActAwait, deploy.Short(newD))
		}
		clk.Advance(time.Minute)
		if i == 0 {
			id = w.p.Approvals()[0].ID
		}
		if !strings.Contains(pl.Reason, id) || !strings.Contains(pl.Reason, "10:00:00Z") {
			t.Errorf("reason %q does not name the deploy %s and its deadline", pl.Reason, id)
		}
	}
	if n := w.updateCount(); n != 0 {
		t.Fatalf("%d spec writes while waiting for approval", n)
	}
	ev := w.pending()
	if len(ev) != 1 {
		t.Fatalf("%d Pending events, want 1", len(ev))
	}
	if r := ev[0].Release; r.ID != id || r.ServiceName != "web" || r.From != oldD || r.To != newD || r.Ref != ref {
		t.Errorf("Pending release %+v", r)
	}
	if !strings.Contains(ev[0].Reason, "2026-03-01T10:00:00Z") {
		t.Errorf("Pending reason %q does not say until when", ev[0].Reason)
	}
	as := w.p.Approvals()
	if len(as) != 1 || as[0].State != deploy.ApprovalPending || as[0].To != newD || !as[0].Expires.Equal(clk.t.Add(-3*time.Minute+time.Hour)) {
		t.Fatalf("approvals %+v, want one pending for %s, expiring an hour after the first cycle", as, deploy.Short(newD))
	}
	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Pending}) {
		t.Fatalf("events %v, want only the Pending one", got)
	}
}

// Approved, it deploys at the next cycle, once; the approval names the
// deploy it became and can't be approved again.
func TestApprovalApproveDeploys(t *testing.T) {
	w, _ := gated(t)
	w.cycle(context.Background())
	id := w.p.Approvals()[0].ID
	a, err := w.p.Approve(id)
	if err != nil || a.State != deploy.ApprovalApproved {
		t.Fatalf("Approve = %+v, %v", a, err)
	}
	if n := w.updateCount(); n != 0 {
		t.Fatalf("Approve itself wrote the spec (%d writes): it must leave that to a cycle", n)
	}
	pl := only(t, w.cycle(context.Background()))
	if pl.Action != deploy.ActDeploy {
		t.Fatalf("action %s after approval, want deploy", pl.Action)
	}
	if len(w.updates) != 1 || w.updates[0].image != pinned(newD) {
		t.Fatalf("updates %+v, want one to %s", w.updates, pinned(newD))
	}
	started := w.milestones()[1]
	if started.Kind != deploy.Started {
		t.Fatalf("events %v, want Pending, Started, Succeeded", w.kinds())
	}
	as := w.p.Approvals()
	if len(as) != 1 || as[0].State != deploy.ApprovalDeployed || as[0].DeployID != started.Release.ID {
		t.Fatalf("approvals %+v, want one deployed as %s", as, started.Release.ID)
	}
	if _, err := w.p.Approve(id); !errors.Is(err, deploy.ErrDecided) {
		t.Fatalf("second Approve: %v, want ErrDecided", err)
	}
	if _, err := w.p.Reject(context.Background(), id); !errors.Is(err, deploy.ErrDecided) {
		t.Fatalf("Reject after deploy: %v, want ErrDecided", err)
	}
	if _, err := w.p.Approve("nope"); !errors.Is(err, deploy.ErrNotFound) {
		t.Fatalf("Approve of an unknown ID: %v, want ErrNotFound", err)
	}
	// Up to date now: nothing further happens.
	if pl := only(t, w.cycle(context.Background())); pl.Action != deploy.ActNone || w.updateCount() != 1 {
		t.Fatalf("after the deploy: action %s, %d updates", pl.Action, w.updateCount())
	}
}

// Rejected, the digest is remembered like a failed one: never deployed,
// never asked about again while the tag stays on it; a newer digest asks
// again.
func TestApprovalReject(t *testing.T) {
	w, _ := gated(t)
	w.cycle(context.Background())
	id := w.p.Approvals()[0].ID
	a, err := w.p.Reject(context.Background(), id)
	if err != nil || a.State != deploy.ApprovalRejected {
		t.Fatalf("Reject = %+v, %v", a, err)
	}
	if len(w.marked) != 1 || w.marked[0] != (mark{"svc1", newD, "rejected by a person"}) {
		t.Fatalf("ledger marks %+v, want the rejected digest", w.marked)
	}
	for range 3 {
		if pl := only(t, w.cycle(context.Background())); pl.Action != deploy.ActSkipFailed {
			t.Fatalf("action %s after rejection, want %s", pl.Action, deploy.ActSkipFailed)
		}
	}
	if n := w.updateCount(); n != 0 || len(w.pending()) != 1 {
		t.Fatalf("%d updates and %d Pending events after a rejection, want 0 and 1", n, len(w.pending()))
	}
	if _, err := w.p.Approve(id); !errors.Is(err, deploy.ErrDecided) {
		t.Fatalf("Approve after Reject: %v, want ErrDecided", err)
	}
	w.digests[ref] = thirdD
	if pl := only(t, w.cycle(context.Background())); pl.Action != deploy.ActAwait || pl.Want != thirdD {
		t.Fatalf("a newer digest: action %s want %s, want it awaiting approval", pl.Action, deploy.Short(pl.Want))
	}
	if len(w.pending()) != 2 {
		t.Fatalf("%d Pending events, want a second for the newer digest", len(w.pending()))
	}
}

// A rejection that can't be recorded leaves the deploy pending: after a
// restart it would otherwise be asked about as if nobody had said no.
func TestApprovalRejectLedgerDown(t *testing.T) {
	w, _ := gated(t)
	w.cycle(context.Background())
	id := w.p.Approvals()[0].ID
	w.ledger.MarkFailedFn = func(context.Context, string, string, string) error { return errors.New("swarm unreachable") }
	if _, err := w.p.Reject(context.Background(), id); err == nil || !strings.Contains(err.Error(), "swarm unreachable") {
		t.Fatalf("Reject: %v, want the ledger's error", err)
	}
	if as := w.p.Approvals(); as[0].State != deploy.ApprovalPending {
		t.Fatalf("state %s, want still pending", as[0].State)
	}
}

// A newer digest supersedes the pending one: the old ID can't be approved,
// the new one waits and is reported.
func TestApprovalSupersede(t *testing.T) {
	w, _ := gated(t)
	w.cycle(context.Background())
	old := w.p.Approvals()[0].ID
	w.digests[ref] = thirdD
	pl := only(t, w.cycle(context.Background()))
	if pl.Action != deploy.ActAwait || pl.Want != thirdD {
		t.Fatalf("action %s want %s", pl.Action, deploy.Short(pl.Want))
	}
	as := w.p.Approvals()
	if len(as) != 2 || as[0].State != deploy.ApprovalPending || as[0].To != thirdD ||
		as[1].ID != old || as[1].State != deploy.ApprovalSuperseded || !strings.Contains(as[1].Reason, deploy.Short(thirdD)) {
		t.Fatalf("approvals %+v, want the new one pending and the old superseded by %s", as, deploy.Short(thirdD))
	}
	if _, err := w.p.Approve(old); !errors.Is(err, deploy.ErrDecided) {
		t.Fatalf("Approve of the superseded one: %v, want ErrDecided", err)
	}
	if ev := w.pending(); len(ev) != 2 || ev[1].Release.To != thirdD {
		t.Fatalf("Pending events %+v, want one per digest", ev)
	}
	if _, err := w.p.Approve(as[0].ID); err != nil {
		t.Fatal(err)
	}
	w.cycle(context.Background())
	if len(w.updates) != 1 || w.updates[0].image != pinned(thirdD) {
		t.Fatalf("updates %+v, want one to the newest digest", w.updates)
	}
}

// An approval is for the bytes approved: when the tag moves between the
// approval and the cycle, the newer digest waits instead.
func TestApprovalApprovedButTagMoved(t *testing.T) {
	w, _ := gated(t)
	w.cycle(context.Background())
	if _, err := w.p.Approve(w.p.Approvals()[0].ID); err != nil {
		t.Fatal(err)
	}
	w.digests[ref] = thirdD
	if pl := only(t, w.cycle(context.Background())); pl.Action != deploy.ActAwait || w.updateCount() != 0 {
		t.Fatalf("action %s with %d updates, want the new digest awaiting approval", pl.Action, w.updateCount())
	}
	if as := w.p.Approvals(); as[1].State != deploy.ApprovalSuperseded {
		t.Fatalf("the approved one is %s, want superseded", as[1].State)
	}
}

// Nobody approves in time: it shows as expired at once, refuses approval,
// and the next cycle remembers the digest as turned down.
func TestApprovalExpires(t *testing.T) {
	w, clk := gated(t)
	w.cycle(context.Background())
	id := w.p.Approvals()[0].ID
	clk.Advance(59 * time.Minute)
	if pl := only(t, w.cycle(context.Background())); pl.Action != deploy.ActAwait || w.p.Approvals()[0].State != deploy.ApprovalPending {
		t.Fatalf("before the deadline: %s, %s", pl.Action, w.p.Approvals()[0].State)
	}
	clk.Advance(time.Minute)
	if s := w.p.Approvals()[0].State; s != deploy.ApprovalExpired {
		t.Fatalf("at the deadline it shows %s, want expired", s)
	}
	if _, err := w.p.Approve(id); !errors.Is(err, deploy.ErrDecided) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("Approve after the deadline: %v, want ErrDecided saying expired", err)
	}
	pl := only(t, w.cycle(context.Background()))
	if pl.Action != deploy.ActAwait || !strings.Contains(pl.Reason, "not approved within 1h") {
		t.Fatalf("expiring cycle: %s %q", pl.Action, pl.Reason)
	}
	if len(w.marked) != 1 || w.marked[0].digest != newD || !strings.Contains(w.marked[0].reason, "not approved within 1h") {
		t.Fatalf("ledger marks %+v, want the expired digest", w.marked)
	}
	as := w.p.Approvals()
	if len(as) != 1 || as[0].State != deploy.ApprovalExpired {
		t.Fatalf("approvals %+v, want the one expired", as)
	}
	for range 2 {
		if pl := only(t, w.cycle(context.Background())); pl.Action != deploy.ActSkipFailed {
			t.Fatalf("after expiry: %s, want %s", pl.Action, deploy.ActSkipFailed)
		}
	}
	if w.updateCount() != 0 || len(w.pending()) != 1 {
		t.Fatalf("%d updates, %d Pending events: an expired digest must neither deploy nor ask again", w.updateCount(), len(w.pending()))
	}
}

// A group waits as a whole while one member awaits approval, and deploys
// as a whole once it is approved.
func TestApprovalHoldsItsGroup(t *testing.T) {
	w, _ := gated(t)
	a, b := web(oldD), web(oldD)
	a.ID, a.Name, a.Hooks.Group, a.Hooks.Approve = "svcA", "api", "site", true
	b.ID, b.Name, b.Hooks.Group = "svcB", "worker", "site"
	w.targets = []deploy.Target{a, b}
	plans := w.cycle(context.Background())
	for _, pl := range plans {
		if pl.Action != deploy.ActAwait {
			t.Fatalf("%s: %s, want the whole group awaiting approval", pl.Target.Name, pl.Action)
		}
	}
	if !strings.Contains(plans[1].Reason, "waits with its group") {
		t.Errorf("worker's reason %q", plans[1].Reason)
	}
	if as := w.p.Approvals(); len(as) != 1 || as[0].ServiceName != "api" {
		t.Fatalf("approvals %+v, want one, for the gated member only", as)
	}
	if _, err := w.p.Approve(w.p.Approvals()[0].ID); err != nil {
		t.Fatal(err)
	}
	w.cycle(context.Background())
	if n := w.updateCount(); n != 2 {
		t.Fatalf("%d updates after approval, want both members", n)
	}
}

// A dry run says what would wait and keeps no approval.
func TestApprovalDryRun(t *testing.T) {
	w, _ := gated(t)
	w.p.DryRun = true
	if pl := only(t, w.cycle(context.Background())); pl.Action != deploy.ActAwait {
		t.Fatalf("dry run: %s", pl.Action)
	}
	plans, err := w.p.Check(context.Background())
	if err != nil || only(t, plans).Action != deploy.ActAwait {
		t.Fatalf("Check: %v %v", plans, err)
	}
	if len(w.p.Approvals()) != 0 || len(w.pending()) != 0 {
		t.Fatal("a dry run opened an approval")
	}
}

// An approval closes when it stops mattering: the service runs the digest
// (a person deployed it), the label went away, or the service did; a
// registry error changes nothing.
func TestApprovalClosesWhenMoot(t *testing.T) {
	w, _ := gated(t)
	w.cycle(context.Background())
	w.digests = map[string]string{} // the registry fails for the tag
	if pl := only(t, w.cycle(context.Background())); pl.Action != deploy.ActError || w.p.Approvals()[0].State != deploy.ApprovalPending {
		t.Fatalf("registry error: %s, approval %s; want it left pending", pl.Action, w.p.Approvals()[0].State)
	}
	w.digests[ref] = newD
	if _, err := w.p.DeployService(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	w.cycle(context.Background())
	if as := w.p.Approvals(); as[0].State != deploy.ApprovalSuperseded || !strings.Contains(as[0].Reason, "runs what its tag points to") {
		t.Fatalf("after a person deployed it: %+v", as[0])
	}

	w.digests[ref] = thirdD
	w.cycle(context.Background())
	if _, err := w.p.CycleFor(context.Background(), []deploy.Push{{Repository: "other", Tag: "1"}}); err != nil {
		t.Fatal(err)
	}
	if s := w.p.Approvals()[0].State; s != deploy.ApprovalPending {
		t.Fatalf("a push's cycle that did not look at the service closed its approval: %s", s)
	}
	w.targets = nil
	w.cycle(context.Background())
	if as := w.p.Approvals(); as[0].State != deploy.ApprovalSuperseded || as[0].Reason != "the service is no longer watched" {
		t.Fatalf("service gone: %+v", as[0])
	}
}

// Many people approving and rejecting at once, while cycles run: one
// decision wins, and -race has nothing to say.
func TestApprovalConcurrent(t *testing.T) {
	w, _ := gated(t)
	w.cycle(context.Background())
	id := w.p.Approvals()[0].ID
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if i%2 == 0 {
				_, err = w.p.Approve(id)
			} else {
				_, err = w.p.Reject(context.Background(), id)
			}
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, deploy.ErrDecided) {
				t.Error(err)
			}
			w.p.Approvals()
			w.p.Status()
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d decisions took, want exactly one", wins)
	}
}
