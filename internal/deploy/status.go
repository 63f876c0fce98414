package deploy

import (
	"slices"
	"strings"
	"time"
)

// Status is what the pipeline saw last: for a status page, an API and a
// readiness probe, which must answer without asking Docker or a registry
// themselves.
type Status struct {
	// Services is the last decision about each watched service, by name.
	// A full cycle replaces it; a push's cycle updates the services it
	// checked.
	Services []Plan
	// Listed is when Docker last answered the service list, and ListErr
	// how the last list went (nil: Docker answered).
	Listed  time.Time
	ListErr error
	// Checked is when the last full cycle finished planning: Docker
	// listed the services and every tag was looked up, whatever the
	// registries answered. Zero until the first one.
	Checked time.Time
	// Busy is when the cycle planning now began; zero when none is.
	Busy time.Time
	// Running are the deploys running now, or waiting for a slot, first
	// planned first.
	Running []Running
}

// Running is one deploy running (a run, see runs.go).
type Running struct {
	// Services names what it deploys: its services (and group), as
	// "service:<id>" and "group:<stack>/<name>".
	Services []string
	// Started is when it was planned; Bound is how long it may take by its
	// own bounds (its hooks' timeouts, then the rollout's and a rollback's),
	// plus a margin: a run older than that is stuck.
	Started time.Time
	Bound   time.Duration
	// Queued is true while it waits for a slot (DeployConcurrency):
	// Started is then when it was planned, and it is not stuck.
	Queued bool
}

// Stuck reports whether r has run longer than its bounds allow at now.
func (r Running) Stuck(now time.Time) bool { return !r.Queued && now.Sub(r.Started) > r.Bound }

// CycleStats is how one cycle went.
type CycleStats struct {
	// Full is true for a cycle over every watched service, false for one
	// restricted to the services a push named.
	Full     bool
	Started  time.Time
	Duration time.Duration
	// Err is the cycle's error: ErrBusy for a tick skipped because the
	// pipeline was busy.
	Err error
	// Deploys is how many services the cycle deployed (or tried to).
	Deploys int
}

// CycleObserver is told about every cycle. It must not block.
type CycleObserver interface {
	ObserveCycle(s CycleStats)
}

// seen is the pipeline's memory for Status; guarded by Pipeline.mu.
type seen struct {
	plans   map[string]Plan // by service ID
	listed  time.Time
	listErr error
	checked time.Time
	busy    time.Time
	// landed are the services whose run ended since their plan was made,
	// by ID, with the digest deployed: the cycle that started the run
	// must not show it as still to deploy.
	landed map[string]string
}

// Status returns what the pipeline saw last.
func (p *Pipeline) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Status{Listed: p.seen.listed, ListErr: p.seen.listErr, Checked: p.seen.checked, Busy: p.seen.busy}
	for _, f := range p.runs.live {
		s.Running = append(s.Running, Running{Services: slices.Clone(f.keys), Started: f.started, Bound: f.bound,
			Queued: slices.Contains(p.runs.queued, f)})
	}
	s.Services = make([]Plan, 0, len(p.seen.plans))
	for _, pl := range p.seen.plans {
		s.Services = append(s.Services, pl)
	}
	slices.SortFunc(s.Services, func(a, b Plan) int { return strings.Compare(a.Target.Name, b.Target.Name) })
	return s
}

func (p *Pipeline) listed(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen.listErr = err
	if err == nil {
		p.seen.listed = p.now()
	}
}

// saw remembers the plans of a cycle; full ones replace what was known,
// so services no longer watched drop out.
func (p *Pipeline) saw(plans []Plan, full bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if full || p.seen.plans == nil {
		p.seen.plans = make(map[string]Plan, len(plans))
	}
	for _, pl := range plans {
		p.seen.plans[pl.Target.ID] = pl
		delete(p.seen.landed, pl.Target.ID)
	}
}

// held updates the remembered plans with what the approval gate decided.
func (p *Pipeline) held(plans []Plan) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pl := range plans {
		if d, ok := p.seen.landed[pl.Target.ID]; ok && d == pl.Want {
			continue // its run ended already: what it did stands (landed)
		}
		if _, ok := p.seen.plans[pl.Target.ID]; ok {
			p.seen.plans[pl.Target.ID] = pl
		}
	}
}

func (p *Pipeline) checked(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen.checked = t
}

func (p *Pipeline) setBusy(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen.busy = t
}

func (p *Pipeline) observe(s CycleStats) {
	if p.Observer != nil {
		p.Observer.ObserveCycle(s)
	}
}

// landed updates the remembered plans with the outcomes of a run that
// ended: a service is not shown deploying until the next full cycle. A
// success runs its digest now; a failure remembered as a bad digest
// (rollout, rollback, hooks, probe, bake) waits for the tag to move. A
// failure that is tried again next cycle (a write Docker refused, a slow
// backup) is left for that cycle to show. The caller holds p.mu.
func (p *Pipeline) landed(out []Event) {
	for _, ev := range out {
		pl, ok := p.seen.plans[ev.Release.ServiceID]
		if !ok || ev.waiting {
			continue
		}
		switch {
		case ev.Kind == Succeeded:
			pl.Target.Image = Pin(ev.Release.Ref, ev.Release.To)
			pl.Want, pl.Action, pl.Reason = ev.Release.To, ActNone, ""
		case ev.Kind == Failed && slices.Contains([]Phase{PhaseRollout, PhaseRollback, PhaseBackup, PhaseMigrate, PhaseProbe, PhaseBake}, ev.Phase):
			pl.Want, pl.Action = ev.Release.To, ActSkipFailed
			pl.Reason = "its deploy of this digest failed: " + firstLine(ev.Reason)
		default:
			continue
		}
		p.seen.plans[ev.Release.ServiceID] = pl
		if p.seen.landed == nil {
			p.seen.landed = map[string]string{}
		}
		p.seen.landed[ev.Release.ServiceID] = ev.Release.To
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
