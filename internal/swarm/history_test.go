package swarm

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
)

func entry(id string) deploy.HistoryEntry {
	at := time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
	return deploy.HistoryEntry{ID: id, Ref: appRepo + ":v1", From: digest1, To: digest2, Started: at, Ended: at.Add(time.Minute),
		Outcome: deploy.OutcomeSucceeded}
}

func ids(entries []deploy.HistoryEntry) []string {
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.ID)
	}
	return out
}

// historyRecords are the names of the service's history records in the
// engine.
func historyRecords(e *engine, serviceID string) []string {
	var out []string
	e.with(func() {
		for _, c := range e.configs {
			if c.Spec.Labels[kindLabel] == kindHistory && c.Spec.Labels[serviceLabel] == serviceID {
				out = append(out, c.Spec.Name)
			}
		}
	})
	slices.Sort(out)
	return out
}

// putHistory writes a history record numbered seq as another writer would;
// call it with the engine locked (inside before, after or with).
func putHistory(e *engine, s *Swarm, serviceID string, seq uint64, entries ...deploy.HistoryEntry) {
	data, err := encodeHistory(entries)
	if err != nil {
		e.t.Fatal(err)
	}
	id := e.newID("cfg")
	e.configs[id] = &swarm.Config{ID: id, Meta: swarm.Meta{CreatedAt: e.tick()}, Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: historyName(serviceID, s.scope(), seq), Labels: map[string]string{
			kindLabel: kindHistory, serviceLabel: serviceID, scopeLabel: s.scope(), seqLabel: strconv.FormatUint(seq, 10)}},
		Data: data}}
}

func TestHistory(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{Stack: "shop"})
	ctx := context.Background()
	if got, err := s.History(ctx, "s1"); got != nil || err != nil {
		t.Errorf("history before any deploy: %v, %v", got, err)
	}
	for _, id := range []string{"d1", "d2", "d3"} {
		if err := s.AddHistory(ctx, "s1", entry(id)); err != nil {
			t.Fatal(err)
		}
	}
	// Another service's, and the same service's under another updater's
	// scope, are their own.
	if err := s.AddHistory(ctx, "s2", entry("x1")); err != nil {
		t.Fatal(err)
	}
	if err := e.client(t, Config{Stack: "blog"}).AddHistory(ctx, "s1", entry("b1")); err != nil {
		t.Fatal(err)
	}
	for _, omits := range []bool{false, true} {
		e.with(func() { e.listOmitsData = omits })
		got, err := s.History(ctx, "s1")
		if err != nil || !slices.Equal(ids(got), []string{"d3", "d2", "d1"}) {
			t.Fatalf("history (list without data %v): %v, %v; want d3 d2 d1", omits, ids(got), err)
		}
		if want := entry("d1"); got[2] != want {
			t.Errorf("read back %+v, want %+v", got[2], want)
		}
	}
	e.with(func() { e.listOmitsData = false })

	// The same deploy reported again (after a restart) replaces its entry
	// and comes first; reported again as it is, nothing is written.
	again := entry("d2")
	again.Outcome, again.Phase, again.Reason = deploy.OutcomeRolledBack, deploy.PhaseRollout, "task exited"
	if err := s.AddHistory(ctx, "s1", again); err != nil {
		t.Fatal(err)
	}
	writes := func() int {
		n := 0
		e.with(func() {
			for _, c := range e.calls {
				if strings.HasSuffix(c, "/configs/create") {
					n++
				}
			}
		})
		return n
	}
	before := writes()
	if err := s.AddHistory(ctx, "s1", again); err != nil {
		t.Fatal(err)
	}
	if n := writes() - before; n != 0 {
		t.Errorf("the same entry reported twice wrote %d records, want none", n)
	}
	got, _ := s.History(ctx, "s1")
	if !slices.Equal(ids(got), []string{"d2", "d3", "d1"}) || got[0].Outcome != deploy.OutcomeRolledBack || got[0].Reason != "task exited" {
		t.Errorf("after d2 again: %+v, want d2 (rolled back) d3 d1", got)
	}

	// Bounded in count, newest first, in one record.
	for i := range deploy.HistoryMax + 5 {
		if err := s.AddHistory(ctx, "s1", entry(fmt.Sprintf("n%02d", i))); err != nil {
			t.Fatal(err)
		}
	}
	got, _ = s.History(ctx, "s1")
	if len(got) != deploy.HistoryMax || got[0].ID != fmt.Sprintf("n%02d", deploy.HistoryMax+4) || got[len(got)-1].ID != "n05" {
		t.Errorf("after %d more: %v, want the last %d, newest first", deploy.HistoryMax+5, ids(got), deploy.HistoryMax)
	}
	if recs := historyRecords(e, "s1"); len(recs) != 2 { // ours and blog's
		t.Errorf("history records of s1: %v, want one per scope", recs)
	}
	if got, _ := s.History(ctx, "s2"); !slices.Equal(ids(got), []string{"x1"}) {
		t.Errorf("s2's history %v, want x1", ids(got))
	}
	if got, _ := e.client(t, Config{Stack: "blog"}).History(ctx, "s1"); !slices.Equal(ids(got), []string{"b1"}) {
		t.Errorf("the blog updater's history of s1 %v, want b1", ids(got))
	}
}

// Two writers that read the same record: the loser's create conflicts,
// and it writes again on top of the winner's record.
func TestHistoryCreateConflict(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	ctx := context.Background()
	if err := s.AddHistory(ctx, "s1", entry("d1")); err != nil {
		t.Fatal(err)
	}
	// Between our read of record 1 and our create of record 2, another
	// writer creates its record 2 (d1 and its own w1).
	e.before("POST /configs/create", 1, func() { putHistory(e, s, "s1", 2, entry("w1"), entry("d1")) })
	if err := s.AddHistory(ctx, "s1", entry("d2")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.History(ctx, "s1"); !slices.Equal(ids(got), []string{"d2", "w1", "d1"}) {
		t.Errorf("history %v, want d2 w1 d1: neither writer's entry lost", ids(got))
	}
	if recs := historyRecords(e, "s1"); !slices.Equal(recs, []string{historyName("s1", s.scope(), 3)}) {
		t.Errorf("records %v, want number 3 only", recs)
	}
}

// A number can be created again once its record was removed; the writer
// that gets it finds a higher number after its create, and writes again.
func TestHistoryNumberTakenAgain(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	ctx := context.Background()
	if err := s.AddHistory(ctx, "s1", entry("d1")); err != nil {
		t.Fatal(err)
	}
	// After our read of record 1: writer A wrote 2 (a1), B built 3 on it
	// (b1) and removed 1 and 2. Number 2 is free again; 3 is the history.
	e.before("POST /configs/create", 1, func() {
		for id, c := range e.configs {
			if c.Spec.Labels[kindLabel] == kindHistory {
				delete(e.configs, id)
			}
		}
		putHistory(e, s, "s1", 3, entry("b1"), entry("a1"), entry("d1"))
	})
	if err := s.AddHistory(ctx, "s1", entry("d2")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.History(ctx, "s1"); !slices.Equal(ids(got), []string{"d2", "b1", "a1", "d1"}) {
		t.Errorf("history %v, want d2 b1 a1 d1", ids(got))
	}
	if recs := historyRecords(e, "s1"); !slices.Equal(recs, []string{historyName("s1", s.scope(), 4)}) {
		t.Errorf("records %v, want number 4 only (the one written out of turn removed)", recs)
	}
}

// Two runs adding to one service's history at once lose no entry.
func TestHistoryConcurrentWriters(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	const each = deploy.HistoryMax / 2
	var wg sync.WaitGroup
	errs := make(chan error, 2*each)
	for w := range 2 {
		s := e.client(t, Config{}) // two updaters, or two runs of one
		wg.Go(func() {
			for i := range each {
				errs <- s.AddHistory(ctx, "s1", entry(fmt.Sprintf("w%d-%02d", w, i)))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	got, err := e.client(t, Config{}).History(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for w := range 2 {
		for i := range each {
			want = append(want, fmt.Sprintf("w%d-%02d", w, i))
		}
	}
	have := ids(got)
	slices.Sort(have)
	if !slices.Equal(have, want) {
		t.Errorf("history of two concurrent writers %v, want every one of %v", have, want)
	}
	if recs := historyRecords(e, "s1"); len(recs) != 1 {
		t.Errorf("records %v, want one", recs)
	}
}

// maximal is an entry with every field as long as it may be, of the
// characters JSON spends most on.
func maximal(i int) deploy.HistoryEntry {
	at := time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.FixedZone("x", -11*3600))
	long := func(n int) string { return strings.Repeat("\"\\\u2028", n) } // 2, 2 and 6 bytes in JSON for 1, 1 and 3
	return deploy.HistoryEntry{
		ID: fmt.Sprintf("%02d", i) + long(100), Ref: long(1000), From: long(100), To: long(100), Started: at, Ended: at,
		Outcome: deploy.Outcome(long(50)), Phase: deploy.Phase(long(50)), Reason: long(1000) + "\x00\xff", Rollback: true, By: long(100),
	}
}

// A history record's size has a bound whatever its entries say; this
// measures the worst case, and what reasons of ordinary text at their cap
// take.
func TestHistoryWorstCaseSize(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	ctx := context.Background()
	for i := range deploy.HistoryMax {
		if err := s.AddHistory(ctx, "worst", maximal(i)); err != nil {
			t.Fatal(err)
		}
		typical := entry(fmt.Sprintf("%012x", i))
		typical.Outcome, typical.Phase = deploy.OutcomeRolledBack, deploy.PhaseMigrate
		typical.Reason = strings.Repeat("migration failed: exit 1; ", 100) // cut to the cap
		if err := s.AddHistory(ctx, "typical", typical); err != nil {
			t.Fatal(err)
		}
	}
	size := func(svc string) int {
		recs := historyRecords(e, svc)
		if len(recs) != 1 {
			t.Fatalf("records of %s: %v", svc, recs)
		}
		c, _ := e.config(recs[0])
		if !utf8.Valid(c.Spec.Data) || !json.Valid(c.Spec.Data) {
			t.Errorf("%s's record is not valid UTF-8 JSON", svc)
		}
		return len(c.Spec.Data)
	}
	worst, typical := size("worst"), size("typical")
	t.Logf("history record of %d entries: worst case %d bytes, reasons of ordinary text at the cap %d bytes (Swarm's limit 512000)",
		deploy.HistoryMax, worst, typical)
	// The bound history.go states: about 57 KB.
	if worst > 60_000 {
		t.Errorf("worst-case history record %d bytes, want at most 60000", worst)
	}
	got, _ := s.History(ctx, "worst")
	for _, h := range got {
		if len(h.Reason) > deploy.HistoryReasonMax || !strings.HasSuffix(h.Reason, "(cut)") || strings.ContainsRune(h.Reason, 0) {
			t.Errorf("reason of %d bytes, ending %q: want at most %d, said to be cut, no control characters",
				len(h.Reason), h.Reason[max(0, len(h.Reason)-12):], deploy.HistoryReasonMax)
		}
	}
	got, _ = s.History(ctx, "typical")
	if r := got[0].Reason; len(r) > deploy.HistoryReasonMax || !strings.HasPrefix(r, "migration failed: exit 1; ") {
		t.Errorf("typical reason %q (%d bytes)", r, len(r))
	}
}

// A record that is not a history (edited by hand) is an error to read,
// and the next deploy starts the history over rather than fail.
func TestHistoryUnreadable(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	ctx := context.Background()
	if err := s.AddHistory(ctx, "s1", entry("d1")); err != nil {
		t.Fatal(err)
	}
	e.with(func() {
		for _, c := range e.configs {
			c.Spec.Data = []byte(`{"entries": [`)
		}
	})
	if _, err := s.History(ctx, "s1"); err == nil || !strings.Contains(err.Error(), "not a history record") {
		t.Errorf("history from a broken record: %v, want an error saying so", err)
	}
	if err := s.AddHistory(ctx, "s1", entry("d2")); err != nil {
		t.Fatalf("add to a broken history: %v, want it started over", err)
	}
	if got, err := s.History(ctx, "s1"); err != nil || !slices.Equal(ids(got), []string{"d2"}) {
		t.Errorf("history after starting over: %v, %v", ids(got), err)
	}
	if recs := historyRecords(e, "s1"); len(recs) != 1 {
		t.Errorf("records %v, want the broken one removed", recs)
	}
}

func TestHistoryErrors(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	ctx := context.Background()
	const refused = "raft: no leader"
	e.fail("GET /configs", 500, refused, 1)
	if _, err := s.History(ctx, "s1"); err == nil || !strings.Contains(err.Error(), refused) {
		t.Errorf("History with the list refused: %v", err)
	}
	e.fail("GET /configs", 500, refused, 1)
	if err := s.AddHistory(ctx, "s1", entry("d1")); err == nil || !strings.Contains(err.Error(), refused) {
		t.Errorf("AddHistory with the list refused: %v", err)
	}
	e.fail("POST /configs/create", 500, refused, 1)
	if err := s.AddHistory(ctx, "s1", entry("d1")); err == nil || !strings.Contains(err.Error(), refused) {
		t.Errorf("AddHistory with the create refused: %v", err)
	}
	if err := s.AddHistory(ctx, "s1", entry("d1")); err != nil {
		t.Fatal(err)
	}
	if err := s.AddHistory(ctx, "s1", entry("d2")); err != nil {
		t.Fatal(err)
	}
	// Written, then the list after it refused: the record is written, the
	// one before it goes next time.
	e.after("POST /configs/create", 1, func() {
		e.faults = append(e.faults, &fault{call: "GET /configs", status: 500, msg: refused, times: 1})
	})
	if err := s.AddHistory(ctx, "s1", entry("d3")); err != nil {
		t.Errorf("AddHistory with the list after its write refused: %v (written)", err)
	}
	if got, _ := s.History(ctx, "s1"); !slices.Equal(ids(got), []string{"d3", "d2", "d1"}) {
		t.Errorf("history %v, want d3 d2 d1", ids(got))
	}
	if recs := historyRecords(e, "s1"); len(recs) != 2 {
		t.Errorf("records %v, want two (the old one left by the refused list)", recs)
	}
	if err := s.AddHistory(ctx, "s1", entry("d4")); err != nil {
		t.Fatal(err)
	}
	if recs := historyRecords(e, "s1"); len(recs) != 1 {
		t.Errorf("records %v, want the ones left behind gone with the next write", recs)
	}
}

// The history of a service that is gone: Recorded names it, ForgetService
// removes it, another service's stays.
func TestHistoryForgotten(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{Stack: "shop"})
	ctx := context.Background()
	for _, id := range []string{"gone", "kept"} {
		if err := s.AddHistory(ctx, id, entry("d1")); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Recorded(ctx)
	if slices.Sort(got); err != nil || !slices.Equal(got, []string{"gone", "kept"}) {
		t.Fatalf("Recorded = %v, %v; want gone and kept", got, err)
	}
	if err := s.ForgetService(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.History(ctx, "gone"); h != nil || len(historyRecords(e, "gone")) != 0 {
		t.Errorf("after ForgetService: history %v, records %v; want none", h, historyRecords(e, "gone"))
	}
	if h, _ := s.History(ctx, "kept"); len(h) != 1 {
		t.Errorf("another service's history went too: %v", h)
	}
}

// BenchmarkAddHistory adds to a full history over the fake engine's HTTP:
// three Docker calls (list, create, list) and one removal each.
func BenchmarkAddHistory(b *testing.B) {
	// The fake engine wants a *testing.T for its reports; its cleanups are
	// the benchmark's.
	t := &testing.T{}
	e := newEngine(t)
	b.Cleanup(e.srv.Close)
	s := e.client(t, Config{})
	ctx := context.Background()
	r := entry("")
	r.Reason = strings.Repeat("x", deploy.HistoryReasonMax)
	for i := range deploy.HistoryMax {
		r.ID = fmt.Sprint("pre", i)
		if err := s.AddHistory(ctx, "s1", r); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		r.ID = fmt.Sprint("d", i)
		if err := s.AddHistory(ctx, "s1", r); err != nil {
			b.Fatal(err)
		}
	}
}
