package deploy

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"
)

// Deploys run in the background, each as one run: a release (a service
// alone, or the members of its group that move) taken from its record to
// its outcome, or a deploy found in flight followed to its end. A cycle
// plans, starts a run for each release that moved and returns; it never
// waits on a rollout, a hook or a rollback. The rules:
//
//   - At most DeployConcurrency runs go at once; more wait for a slot in
//     the order they were planned, so 1 deploys one after another as a
//     single loop would.
//   - At most one run per service and per group: a run claims the keys of
//     every service it deploys (deployKeys) until it ends. A cycle that
//     finds a release's key claimed does not start it; its services are
//     planned as ActDeploying, and when the tag has moved again meanwhile
//     the run, once over, asks for a check of that tag (Pipeline.again):
//     the newer digest is planned then, not lost and not raced.
//   - A run's record in Swarm (Journal) is what says a deploy is in
//     flight across processes: a cycle resumes, as runs, the records no
//     run of this process owns, and `updater check` shows a service with a
//     record as deploying too.
//   - A run stops where it is, its record kept, when the updater stops or
//     loses the lease (fenced); Wait waits for every run to have stopped.
//   - Pruning a repository and starting a run of it never overlap (see
//     pruneAfter): the prune keeps every digest a run of that repository
//     in flight deploys or returns to, and no run of it starts meanwhile.

// flight is one run, from when a cycle plans it until it has ended.
type flight struct {
	keys []string          // what it claims: deployKeys of each service
	want map[string]string // service ID → the digest it deploys ("" when resuming)
	from map[string]string // service ID → the digest it may return to
	refs []string          // the tags it deploys, for a check once it is over
	ids  []string          // the records it has begun or resumes
	// stale is set when a cycle saw a tag of the run's point elsewhere
	// than the run deploys: once over, the run asks for a check.
	stale bool
	// moved is closed when a cycle planned a newer digest of one of its
	// services to deploy: a bake under way ends then (bake.go).
	moved     chan struct{}
	movedOnce sync.Once
	// pruning is the repository the run prunes now, "" when it does not.
	pruning string
	// started is when it was planned; bound how long it may take (Running).
	started time.Time
	bound   time.Duration

	slot chan struct{} // closed when the run may go
	done chan struct{} // closed when it has ended
	out  []Event       // its outcomes, set before done is closed
	lost bool          // it stopped because the lease was lost
	// resumed is true for a run of records found in flight.
	resumed bool
}

// runs is the book of flights; guarded by Pipeline.mu.
type runs struct {
	live   []*flight // every flight, in the order planned
	active int       // flights holding a slot
	queued []*flight // waiting for a slot, first planned first
}

func (p *Pipeline) concurrency() int {
	if p.DeployConcurrency > 0 {
		return p.DeployConcurrency
	}
	return DefaultDeployConcurrency
}

// claimedBy is the flight claiming one of keys, nil when none does; the
// caller holds p.mu.
func (p *Pipeline) claimedBy(keys []string) *flight {
	for _, f := range p.runs.live {
		if slices.ContainsFunc(keys, func(k string) bool { return slices.Contains(f.keys, k) }) {
			return f
		}
	}
	return nil
}

// pruningOf is the flight pruning one of refs' repositories; nil when
// none is. The caller holds p.mu.
func (p *Pipeline) pruningOf(refs []string) *flight {
	for _, f := range p.runs.live {
		if f.pruning != "" && slices.ContainsFunc(refs, func(r string) bool { return Repository(r) == f.pruning }) {
			return f
		}
	}
	return nil
}

// bound is how long a run of targets may take: a backup and a migration
// (each as long as the longest hook timeout), the rollout, its probes and
// bake, a rollback, and a minute for the rest (records, reports, the looks
// between). A slot waited for counts: a run queued that long is as stuck
// as one running.
func (p *Pipeline) bound(targets []Target) time.Duration {
	rollouts := time.Duration(len(targetWaves(targets))) * p.Timeout // one per wave, waves one after another
	return 2*hookTimeout(targets) + rollouts + p.Timeout + verifyTime(targets) + p.canaryTime(targets) + time.Minute
}

// launch starts fn as a run claiming keys, once a slot is free, and
// returns its flight; nil, and the flight in the way, when one of keys is
// claimed or a repository of refs is being pruned. ids are the records
// the run resumes; targets are the services it deploys, as watched (its
// bound). fn runs on ctx, fenced by the lease and carrying the flight
// (flightOf); the flight's out is what fn returned.
func (p *Pipeline) launch(ctx context.Context, keys, refs []string, want, from map[string]string, ids []string, targets []Target, fn func(ctx context.Context) []Event) (*flight, *flight) {
	p.mu.Lock()
	in := p.claimedBy(keys)
	if in == nil {
		in = p.pruningOf(refs)
	}
	if in != nil {
		// Under the lock that found it: the flight in the way, once it
		// lands, asks for a check of these tags too.
		in.stale = true
		for _, r := range refs {
			if !slices.Contains(in.refs, r) {
				in.refs = append(in.refs, r)
			}
		}
		p.mu.Unlock()
		return nil, in
	}
	f := &flight{keys: keys, refs: refs, want: want, from: from, ids: ids, resumed: ids != nil, slot: make(chan struct{}), done: make(chan struct{}),
		started: p.now(), bound: p.bound(targets), moved: make(chan struct{})}
	p.runs.live = append(p.runs.live, f)
	p.runs.queued = append(p.runs.queued, f)
	p.dispatch()
	p.wg.Add(1)
	p.mu.Unlock()

	go func() {
		defer p.wg.Done()
		var out []Event
		select {
		case <-f.slot:
			rctx, unfence := p.fenced(context.WithValue(ctx, flightKey{}, f))
			func() {
				// A panic stops this run where it is (its records stay, for
				// the next cycle), not the updater: the other runs go on.
				defer recovered(p.Log, "the deploy of "+strings.Join(keys, ", "))
				out = fn(rctx)
			}()
			f.lost = lost(rctx)
			unfence()
		case <-ctx.Done():
			// Stopping before it began: nothing was recorded (a resumed
			// record stays as it was), and the next run plans it again.
		}
		for _, ev := range out {
			if ev.waiting {
				p.mu.Lock()
				p.runErr = fmt.Errorf("%s: %w", ev.Reason, ErrUnavailable)
				p.mu.Unlock()
				break
			}
		}
		p.land(f, out)
	}()
	return f, nil
}

// deployableNow reports whether a newer digest of t would deploy as soon
// as its run lands: not one that waits for a person, a cooldown or a
// window (a bake is cut short only for a digest that goes at once). The
// caller holds p.mu.
func (p *Pipeline) deployableNow(t Target) bool {
	if t.Hooks.Approve || t.Cooldown > 0 {
		return false
	}
	if t.Policy != nil {
		ok, _, _ := t.Policy.Eligible(p.now())
		return ok
	}
	return true
}

// recovered, deferred at the top of a goroutine's work, turns a panic
// into an ERROR line (which reaches Rollbar, as the main goroutine's
// panics do) naming what stopped, instead of the end of the process.
func recovered(log *slog.Logger, what string) {
	if v := recover(); v != nil {
		log.Error("panic: "+what+" stopped where it was", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	}
}

type flightKey struct{}

// flightOf is the run ctx belongs to; nil outside one.
func flightOf(ctx context.Context) *flight {
	f, _ := ctx.Value(flightKey{}).(*flight)
	return f
}

// dispatch gives free slots to the flights waiting longest; the caller
// holds p.mu.
func (p *Pipeline) dispatch() {
	for p.runs.active < p.concurrency() && len(p.runs.queued) > 0 {
		f := p.runs.queued[0]
		p.runs.queued = p.runs.queued[1:]
		p.runs.active++
		f.started = p.now() // its bound counts from here, not from the queue
		close(f.slot)
	}
}

// land ends a flight: its slot and claims go, the next waiting run
// starts, and a tag that moved on meanwhile is checked again.
func (p *Pipeline) land(f *flight, out []Event) {
	p.mu.Lock()
	select {
	case <-f.slot:
		p.runs.active--
	default:
		p.runs.queued = slices.DeleteFunc(p.runs.queued, func(q *flight) bool { return q == f })
	}
	p.runs.live = slices.DeleteFunc(p.runs.live, func(l *flight) bool { return l == f })
	p.dispatch()
	p.landed(out)
	f.out = out
	stale, again, refs := f.stale, p.again, slices.Clone(f.refs)
	p.mu.Unlock()
	close(f.done)
	if stale && again != nil {
		pushes := make([]Push, 0, len(refs))
		for _, r := range refs {
			pushes = append(pushes, PushOf(r))
		}
		again(pushes...)
	}
}

// Wait returns once every run this pipeline started has ended (or
// stopped where it was, its record kept, when its context ended).
// Shutdown calls it before the lease is given up.
func (p *Pipeline) Wait() { p.wg.Wait() }

// owned reports whether a run of this process owns the record id.
func (p *Pipeline) owned(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.ContainsFunc(p.runs.live, func(f *flight) bool { return slices.Contains(f.ids, id) })
}

// begun notes that the run of ctx owns the record id, before the record is
// written: a cycle resuming records then never takes it for one left
// behind.
func (p *Pipeline) begun(ctx context.Context, id string) {
	f := flightOf(ctx)
	if f == nil {
		return
	}
	p.mu.Lock()
	f.ids = append(f.ids, id)
	p.mu.Unlock()
}

// inFlight marks, in plans, the services a run deploys now (in this
// process, or per a record in Swarm another process left, in ids) as
// ActDeploying, and notes on a run a tag that moved on meanwhile.
func (p *Pipeline) inFlight(plans []Plan, records map[string]Release) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.runs.live) == 0 && len(records) == 0 {
		return // the idle cycle: nothing runs, nothing to mark
	}
	for i := range plans {
		pl := &plans[i]
		id := pl.Target.ID
		var f *flight
		if pl.Action != ActUntagged {
			f = p.claimedBy(deployKeys(pl.Target))
		}
		rec, recorded := records[id]
		switch {
		case f != nil:
			to := orElse(f.want[id], rec.To)
			pl.Reason = "a deploy of it is running"
			if to != "" {
				pl.Reason = "a deploy to " + Short(to) + " is running"
			}
			if pl.Action == ActDeploy || pl.Action == ActSkipFailed || pl.Action == ActAwait {
				if to != "" && pl.Want != to && pl.Want != f.from[id] {
					f.stale = true
					if pl.Action == ActDeploy && p.deployableNow(pl.Target) {
						f.movedOnce.Do(func() { close(f.moved) })
					}
					pl.Reason += "; the tag has moved on to " + Short(pl.Want) + ", planned again when it ends"
				}
			}
			if pl.Action != ActError {
				pl.Action = ActDeploying
			}
		case recorded && pl.Action != ActError && pl.Action != ActUntagged:
			pl.Action = ActDeploying
			pl.Reason = fmt.Sprintf("deploy %s to %s is in flight (recorded in Swarm)", rec.ID, Short(rec.To))
		case pl.Action == ActDeploy:
			// Before the approval gate, which would use an approval up for
			// a deploy that can't start now.
			if pf := p.pruningOf([]string{pl.Target.Ref()}); pf != nil {
				pl.Action, pl.Reason = ActDeploying, "starts once the prune of "+pf.pruning+" has ended"
				pf.stale = true
				if !slices.Contains(pf.refs, pl.Target.Ref()) {
					pf.refs = append(pf.refs, pl.Target.Ref())
				}
			}
		}
	}
}

func orElse(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// keysOf are the keys a run of plans claims.
func keysOf(targets []Target) (keys, refs []string) {
	for _, t := range targets {
		for _, k := range deployKeys(t) {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
		if r := t.Ref(); !slices.Contains(refs, r) {
			refs = append(refs, r)
		}
	}
	return keys, refs
}
