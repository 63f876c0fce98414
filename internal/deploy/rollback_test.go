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

// memHistory is a service history in memory, as Swarm's record keeps it:
// newest first, an entry of the same ID replaced.
type memHistory struct {
	mu   sync.Mutex
	byID map[string][]deploy.HistoryEntry
}

func (h *memHistory) History(_ context.Context, id string) ([]deploy.HistoryEntry, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.byID[id]), nil
}

func (h *memHistory) AddHistory(_ context.Context, id string, e deploy.HistoryEntry) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byID == nil {
		h.byID = map[string][]deploy.HistoryEntry{}
	}
	l := slices.DeleteFunc(h.byID[id], func(o deploy.HistoryEntry) bool { return o.ID == e.ID })
	h.byID[id] = append([]deploy.HistoryEntry{e}, l...)
	return nil
}

var midD = "sha256:" + strings.Repeat("c", 64)

// rollbackWorld: web runs newD, deployed over midD, deployed over oldD,
// all three successes in its history; the registry still serves each.
// Web has a backup hook and the updater runs no hook jobs: a rollback
// that ran a hook would fail on that.
func rollbackWorld(t *testing.T) (*world, *memHistory) {
	w := newWorld(t)
	tg := web(newD)
	tg.Hooks = deploy.Hooks{Backup: &deploy.Hook{Command: []string{"backup"}}, Timeout: time.Minute}
	w.targets = []deploy.Target{tg}
	w.digests[ref] = newD
	for _, d := range []string{oldD, midD, newD} {
		w.digests[pinned(d)] = d
	}
	h := &memHistory{}
	w.p.History = h
	base := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for i, d := range []string{oldD, midD, newD} {
		h.AddHistory(t.Context(), "svc1", deploy.HistoryEntry{ID: "d" + d[7:8], Ref: ref, To: d, Started: base.Add(time.Duration(i) * time.Hour), Outcome: deploy.OutcomeSucceeded})
	}
	return w, h
}

// A rollback without a digest returns to the success before the current
// one: written without its hooks, judged, reported as a rollback by who
// asked, the digest rolled away from quarantined, the history told; the
// next cycle leaves the service where it is while the tag stays.
func TestRollbackServiceReturnsToTheLastSuccess(t *testing.T) {
	w, h := rollbackWorld(t)
	w.script = []deploy.Rollout{rollout("completed", midD, task(midD, "running"))}

	ev, err := w.p.RollbackService(t.Context(), deploy.RollbackRequest{Service: "web", By: "cli"})
	if err != nil {
		t.Fatalf("RollbackService: %v", err)
	}
	w.p.Wait()
	if ev.Kind != deploy.Succeeded || ev.Release.To != midD || ev.Release.From != newD || !ev.Release.Rollback || ev.Release.By != "cli" {
		t.Fatalf("outcome %s to %s from %s (rollback %v by %q), want a rollback by cli from newD to midD", ev.Kind, ev.Release.To, ev.Release.From, ev.Release.Rollback, ev.Release.By)
	}
	out := w.outcome(deploy.Succeeded)
	if !out.Release.Rollback {
		t.Error("the reported outcome does not say it was a rollback")
	}
	w.journalPaired()
	if len(w.begun) != 1 || !w.begun[0].Rollback || w.begun[0].By != "cli" {
		t.Errorf("record begun %+v, want it to say rollback by cli (a resumed run must know)", w.begun)
	}
	if len(w.updates) != 1 || w.updates[0].image != pinned(midD) {
		t.Fatalf("spec writes %v, want one to %s", w.updates, pinned(midD))
	}
	if !slices.ContainsFunc(w.marked, func(m mark) bool {
		return m.service == "svc1" && m.digest == newD && strings.Contains(m.reason, "rolled back on request by cli")
	}) {
		t.Errorf("marked %v, want newD quarantined as rolled back by cli", w.marked)
	}
	hist, _ := h.History(t.Context(), "svc1")
	if len(hist) != 4 || !hist[0].Rollback || hist[0].To != midD || hist[0].Outcome != deploy.OutcomeSucceeded || hist[0].By != "cli" {
		t.Errorf("history head %+v (%d entries), want the rollback first", hist[0], len(hist))
	}

	// The tag still points to newD, now quarantined: nothing deploys.
	w.targets[0].Image = pinned(midD)
	w.failed = map[string]map[string]bool{"svc1": {newD: true}}
	w.events, w.updates = nil, nil
	w.cycle(t.Context())
	if len(w.updates) != 0 {
		t.Errorf("the cycle after the rollback wrote %v, want nothing while the tag stays on the quarantined digest", w.updates)
	}

	// A second rollback goes further back: newD is quarantined and midD
	// runs, so oldD.
	w.script = []deploy.Rollout{rollout("completed", oldD, task(oldD, "running"))}
	w.served = 0
	ev, err = w.p.RollbackService(t.Context(), deploy.RollbackRequest{Service: "web", By: "page"})
	if err != nil || ev.Release.To != oldD {
		t.Fatalf("second rollback: %v to %s, want oldD", err, ev.Release.To)
	}
}

// --to names the digest; the registry must still serve it.
func TestRollbackServiceTo(t *testing.T) {
	w, _ := rollbackWorld(t)
	w.script = []deploy.Rollout{rollout("completed", oldD, task(oldD, "running"))}
	ev, err := w.p.RollbackService(t.Context(), deploy.RollbackRequest{Service: "web", To: oldD, By: "api"})
	if err != nil || ev.Kind != deploy.Succeeded || ev.Release.To != oldD {
		t.Fatalf("RollbackService --to oldD = %s to %s, %v", ev.Kind, ev.Release.To, err)
	}
	if len(w.updates) != 1 || w.updates[0].image != pinned(oldD) {
		t.Errorf("spec writes %v, want one to %s", w.updates, pinned(oldD))
	}
}

// What can't be honoured changes nothing and says why.
func TestRollbackServiceRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, service, to string
		setup             func(w *world, h *memHistory)
		want              error
		says              string
	}{
		{name: "not watched", service: "nope", want: deploy.ErrNotFound},
		{name: "no earlier success", service: "web", setup: func(w *world, h *memHistory) { h.byID = nil }, want: deploy.ErrNoRollbackTarget, says: "--to"},
		{name: "earlier ones quarantined", service: "web", setup: func(w *world, h *memHistory) {
			w.failed = map[string]map[string]bool{"svc1": {oldD: true, midD: true}}
		}, want: deploy.ErrNoRollbackTarget},
		{name: "not a digest", service: "web", to: "latest", want: deploy.ErrInvalid, says: "64 hex"},
		{name: "the digest it runs", service: "web", to: newD, want: deploy.ErrInvalid, says: "already"},
		{name: "gone from the registry", service: "web", to: oldD, setup: func(w *world, h *memHistory) { delete(w.digests, pinned(oldD)) }, want: deploy.ErrNotFound, says: "nothing changed"},
		{name: "a deploy in flight", service: "web", setup: func(w *world, h *memHistory) {
			w.open = []deploy.Release{{ID: "x1", ServiceID: "svc1", ServiceName: "web", Ref: ref, To: newD}}
			// Docker won't say where it stands: the record can't be carried on.
			w.services.RolloutFn = func(context.Context, string) (deploy.Rollout, error) {
				return deploy.Rollout{}, errors.New("boom: " + deploy.ErrUnavailable.Error())
			}
		}, want: deploy.ErrBusy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, h := rollbackWorld(t)
			if tc.setup != nil {
				tc.setup(w, h)
			}
			_, err := w.p.StartRollback(t.Context(), deploy.RollbackRequest{Service: tc.service, To: tc.to})
			w.p.Wait()
			if err == nil {
				t.Fatal("StartRollback accepted it")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.says) {
				t.Errorf("err = %v, want it to say %q", err, tc.says)
			}
			if len(w.updates) != 0 || len(w.begun) != 0 {
				t.Errorf("writes %v, records %v: want none", w.updates, ids(w.begun))
			}
		})
	}
}

// A rollback found in flight after a restart, before its write, is
// carried on without hooks: its record says it is a rollback.
func TestResumedRollbackRunsNoHooks(t *testing.T) {
	w, _ := rollbackWorld(t)
	rec := deploy.Release{ID: "rb1", ServiceID: "svc1", ServiceName: "web", Stack: "site", Ref: ref, From: newD, To: midD,
		Started: time.Now(), Rollback: true, By: "cli"}
	w.open = []deploy.Release{rec}
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running")), rollout("completed", midD, task(midD, "running"))}
	w.digests[ref] = newD
	w.failed = nil
	w.cycle(t.Context())
	if len(w.updates) != 1 || w.updates[0].image != pinned(midD) {
		t.Fatalf("spec writes %v, want the rollback's one to midD", w.updates)
	}
	ev := w.milestones()
	if len(ev) != 1 || ev[0].Kind != deploy.Succeeded || !ev[0].Resumed || !ev[0].Release.Rollback {
		t.Fatalf("events %+v, want the resumed rollback's success", ev)
	}
	if !slices.ContainsFunc(w.marked, func(m mark) bool { return m.digest == newD }) {
		t.Errorf("marked %v, want newD quarantined", w.marked)
	}
}

// A spec not pinned yet runs what its tag points to: that digest is the
// one quarantined, or the next cycle would deploy it straight back.
func TestRollbackOfAnUnpinnedSpecQuarantinesTheTagsDigest(t *testing.T) {
	w, _ := rollbackWorld(t)
	w.targets[0].Image = ref // never deployed by the updater: no digest
	w.script = []deploy.Rollout{rollout("completed", midD, task(midD, "running"))}
	ev, err := w.p.RollbackService(t.Context(), deploy.RollbackRequest{Service: "web", To: midD})
	if err != nil || ev.Kind != deploy.Succeeded || ev.Release.From != newD {
		t.Fatalf("RollbackService = %s from %q, %v: want a success from the tag's newD", ev.Kind, ev.Release.From, err)
	}
	if !slices.ContainsFunc(w.marked, func(m mark) bool { return m.digest == newD }) {
		t.Errorf("marked %v, want the tag's newD quarantined", w.marked)
	}
}

// Two rollbacks in a row: the first one's digest stays quarantined (a
// rollback's success is not the tag's digest deployed, which would
// forget every quarantined one).
func TestSecondRollbackKeepsTheFirstQuarantined(t *testing.T) {
	w, _ := rollbackWorld(t)
	w.script = []deploy.Rollout{rollout("completed", midD, task(midD, "running"))}
	if _, err := w.p.RollbackService(t.Context(), deploy.RollbackRequest{Service: "web"}); err != nil {
		t.Fatal(err)
	}
	w.targets[0].Image = pinned(midD)
	w.script, w.served = []deploy.Rollout{rollout("completed", oldD, task(oldD, "running"))}, 0
	if _, err := w.p.RollbackService(t.Context(), deploy.RollbackRequest{Service: "web", To: oldD}); err != nil {
		t.Fatal(err)
	}
	if len(w.forgets) != 0 {
		t.Errorf("quarantined digests forgotten %d times by rollbacks, want never (the tag has not moved)", len(w.forgets))
	}
}

// A rollback of a canary-labelled service is no canary: judging the old
// digest by the metric that made a person roll back would send it back
// to the bad one.
func TestRollbackOfACanaryServiceIsNoCanary(t *testing.T) {
	w, c := canaryWorld(t, 0.5)
	w.targets[0].Image = pinned(newD)
	w.digests[pinned(oldD)] = oldD
	h := &memHistory{}
	w.p.History = h
	for i, d := range []string{oldD, newD} {
		h.AddHistory(t.Context(), "svc1", deploy.HistoryEntry{ID: "d" + d[7:8], Ref: ref, To: d, Started: time.Unix(int64(i), 0), Outcome: deploy.OutcomeSucceeded})
	}
	var written []string
	w.services.UpdateFn = func(_ context.Context, _ deploy.Target, image string, _ deploy.Credentials) error {
		written = append(written, image)
		return nil
	}
	ev, err := w.p.RollbackService(t.Context(), deploy.RollbackRequest{Service: "web", By: "cli"})
	if err != nil || ev.Kind != deploy.Succeeded || ev.Release.To != oldD {
		t.Fatalf("rollback = %s to %s, %v: want back on oldD", ev.Kind, ev.Release.To, err)
	}
	if got := c.called(); len(got) != 0 || len(c.queries) != 0 {
		t.Errorf("canary calls %q, %d queries: want a plain write, no canary", got, len(c.queries))
	}
	if len(written) != 1 || written[0] != pinned(oldD) {
		t.Errorf("writes %v, want one to oldD", written)
	}
}

// A spec not pinned runs what its tag points to: that digest is not the
// one a rollback returns to.
func TestRollbackOfAnUnpinnedSpecSkipsTheDigestItRuns(t *testing.T) {
	w, _ := rollbackWorld(t)
	w.targets[0].Image = ref // runs the tag's newD
	w.script = []deploy.Rollout{rollout("completed", midD, task(midD, "running"))}
	ev, err := w.p.RollbackService(t.Context(), deploy.RollbackRequest{Service: "web"})
	if err != nil || ev.Release.To != midD || ev.Release.From != newD {
		t.Fatalf("rollback from %.15s to %.15s, %v: want newD to midD", ev.Release.From, ev.Release.To, err)
	}
}
