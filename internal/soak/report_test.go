package soak

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/updater-dev/updater/internal/deploy"
)

// tally is the Reporter: it counts events and checks that every deploy
// reports one start and then exactly one outcome.
type tally struct {
	mu         sync.Mutex
	started    map[string]int // by deploy ID
	outcomes   map[string]int
	open       map[string]string // service ID -> the deploy started and not yet ended
	peak       int               // the most deploys open at once: the runs side by side
	kinds      map[deploy.Kind]int
	failed     map[deploy.Phase]int
	rolledBack int
	problems   []string
	// check looks at the swarm when an outcome is reported: "" when
	// the service is where the outcome says it is.
	check func(deploy.Event) string
}

var _ deploy.Reporter = (*tally)(nil)

func newTally(check func(deploy.Event) string) *tally {
	return &tally{started: map[string]int{}, outcomes: map[string]int{}, open: map[string]string{}, kinds: map[deploy.Kind]int{}, failed: map[deploy.Phase]int{}, check: check}
}

func (t *tally) Report(e deploy.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.kinds[e.Kind]++
	id := e.Release.ID
	switch e.Kind {
	case deploy.Started:
		if t.started[id]++; t.started[id] > 1 || t.outcomes[id] > 0 {
			t.problem("deploy %s (%s): start number %d, after %d outcomes", id, e.Release.ServiceName, t.started[id], t.outcomes[id])
		}
		// Never two deploys of one service at once.
		if other, ok := t.open[e.Release.ServiceID]; ok {
			t.problem("deploy %s (%s to %s) started while deploy %s of the service has not ended", id, e.Release.ServiceName, deploy.Short(e.Release.To), other)
		}
		t.open[e.Release.ServiceID] = id
		t.peak = max(t.peak, len(t.open))
	case deploy.Succeeded, deploy.Failed:
		if t.outcomes[id]++; t.outcomes[id] > 1 || t.started[id] != 1 {
			t.problem("deploy %s (%s): outcome number %d (%s: %s), after %d starts", id, e.Release.ServiceName, t.outcomes[id], e.Kind, e.Reason, t.started[id])
		}
		if t.open[e.Release.ServiceID] == id {
			delete(t.open, e.Release.ServiceID)
		}
		if why := t.check(e); why != "" {
			t.problem("deploy %s (%s to %s) %s (%s), but %s", id, e.Release.ServiceName, deploy.Short(e.Release.To), e.Kind, e.Phase, why)
		}
		if e.Kind == deploy.Failed {
			t.failed[e.Phase]++
			if e.RolledBack {
				t.rolledBack++
			}
		}
	case deploy.Progress:
		if t.started[id] != 1 || t.outcomes[id] != 0 {
			t.problem("deploy %s (%s): progress outside the deploy", id, e.Release.ServiceName)
		}
	}
}

func (t *tally) problem(format string, args ...any) {
	if len(t.problems) < 50 {
		t.problems = append(t.problems, fmt.Sprintf(format, args...))
	}
}

// unfinished lists the deploys that started and never reported an outcome.
func (t *tally) unfinished() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for id, n := range t.started {
		if n == 1 && t.outcomes[id] != 1 {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return fmt.Sprintf("events %s; failures by phase %s; rolled back %d", counts(t.kinds), counts(t.failed), t.rolledBack)
}

// logCount is a slog.Handler that keeps only a count of warnings and
// errors by message: what an operator would have seen, without the cost
// of writing it.
type logCount struct {
	mu     *sync.Mutex
	counts map[string]int
}

func newLogCount() logCount { return logCount{mu: &sync.Mutex{}, counts: map[string]int{}} }

func (l logCount) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelWarn }

func (l logCount) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.counts[r.Level.String()+" "+r.Message]++
	l.mu.Unlock()
	return nil
}

func (l logCount) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logCount) WithGroup(string) slog.Handler      { return l }

func (l logCount) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return counts(l.counts)
}

// counts prints a map of counts sorted by key.
func counts[K ~string](m map[K]int) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
