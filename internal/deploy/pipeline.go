package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// ErrNotFound is returned by adapters for a service that does not exist.
var ErrNotFound = errors.New("not found")

// ErrBusy means a cycle or deploy is already running.
var ErrBusy = errors.New("a cycle is already running")

// Pipeline runs cycles: find watched services, ask the registry what their
// tags point to, and deploy what moved, one service at a time.
type Pipeline struct {
	Lister   Lister
	Services Services
	Registry Registry
	Ledger   Ledger
	Journal  Journal
	Reporter Reporter
	Log      *slog.Logger

	// Timeout bounds one rollout, and separately the rollback after it.
	Timeout time.Duration
	// WatchInterval is how often a rollout is inspected.
	WatchInterval time.Duration
	// Concurrency bounds registry lookups in flight.
	Concurrency int
	// DryRun plans and logs but changes nothing.
	DryRun bool
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	running sync.Mutex // one cycle or deploy at a time, whoever triggers it
	mu      sync.Mutex // guards the maps below
	outages map[string]bool
	warned  map[string]bool
}

func (p *Pipeline) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// Cycle finishes deploys a previous run left in flight, then deploys every
// watched service whose tag moved. It returns ErrBusy at once when another
// cycle holds the pipeline: a tick that finds one running is skipped, not
// queued, so slow cycles never pile up.
func (p *Pipeline) Cycle(ctx context.Context) ([]Plan, error) {
	if !p.running.TryLock() {
		return nil, ErrBusy
	}
	defer p.running.Unlock()
	if !p.DryRun {
		if err := p.resume(ctx); err != nil {
			// Recovery is left to the service list in plan, so the two
			// calls can't log the outage's end and start in turn.
			if ctx.Err() == nil {
				p.track("docker", "", err)
			}
			return nil, err
		}
	}
	plans, err := p.plan(ctx)
	if err != nil {
		return nil, err
	}
	for _, pl := range plans {
		if pl.Action != ActDeploy {
			continue
		}
		if p.DryRun {
			p.Log.Info("dry run: would deploy", "service", pl.Target.Name, "image", pl.Target.Ref(),
				"from_digest", pl.Target.Digest(), "to_digest", pl.Want)
			continue
		}
		if ctx.Err() != nil {
			break
		}
		p.deploy(ctx, pl.Target, pl.Want)
	}
	return plans, nil
}

// Check plans one cycle without changing anything.
func (p *Pipeline) Check(ctx context.Context) ([]Plan, error) {
	return p.plan(ctx)
}

// DeployService deploys what the named service's tag points to now and
// waits for the outcome. A person asked for it, so a digest that failed
// before is tried again.
func (p *Pipeline) DeployService(ctx context.Context, name string) (Event, error) {
	p.running.Lock()
	defer p.running.Unlock()
	if !p.DryRun {
		if err := p.resume(ctx); err != nil {
			return Event{}, err
		}
	}
	targets, err := p.Lister.List(ctx)
	if err != nil {
		return Event{}, fmt.Errorf("list services: %w", err)
	}
	for _, t := range targets {
		if t.Name != name && t.ID != name {
			continue
		}
		if !Tagged(t.Ref()) {
			return Event{}, fmt.Errorf("service %s runs %s: pinned to a digest without a tag, so there is no tag to follow", t.Name, t.Image)
		}
		want, err := p.Registry.Digest(ctx, t.Ref())
		if err != nil {
			return Event{}, err
		}
		if want == t.Digest() {
			return Event{Kind: Succeeded, Release: Release{ServiceID: t.ID, ServiceName: t.Name, Stack: t.Stack,
				Ref: t.Ref(), From: want, To: want}, Reason: "already up to date"}, nil
		}
		if p.DryRun {
			p.Log.Info("dry run: would deploy", "service", t.Name, "image", t.Ref(), "from_digest", t.Digest(), "to_digest", want)
			return Event{Kind: Succeeded, Release: Release{ServiceID: t.ID, ServiceName: t.Name, Stack: t.Stack,
				Ref: t.Ref(), From: t.Digest(), To: want}, Reason: "dry run: nothing changed"}, nil
		}
		return p.deploy(ctx, t, want), nil
	}
	return Event{}, fmt.Errorf("service %q is not watched: it must exist, carry the opt-in label and belong to the configured stack: %w", name, ErrNotFound)
}

// deploy takes one service from its digest to want and reports how it went.
func (p *Pipeline) deploy(ctx context.Context, t Target, want string) Event {
	rel := Release{ID: newID(), ServiceID: t.ID, ServiceName: t.Name, Stack: t.Stack,
		Ref: t.Ref(), From: t.Digest(), To: want, Started: p.now()}
	// Labels only make reports richer: a registry that won't give them is
	// no reason to hold a deploy back.
	if labels, err := p.Registry.Labels(ctx, Pin(rel.Ref, want)); err != nil {
		p.Log.Warn("read image labels", "service", t.Name, "image", rel.Ref, "to_digest", want, "err", err)
	} else {
		rel.Labels = labels
	}
	// The journal entry comes first: from here on, a crash is found and
	// reported on restart rather than forgotten.
	if err := p.Journal.Begin(ctx, rel); err != nil {
		return p.finish(rel, Event{Kind: Failed, Phase: PhasePrepare, Reason: "record the deploy in Swarm: " + err.Error()}, false)
	}
	p.report(Event{Kind: Started, Release: rel})
	creds, err := p.Registry.Credentials(ctx, rel.Ref)
	if err != nil {
		return p.finish(rel, Event{Kind: Failed, Phase: PhasePrepare, Reason: "get registry credentials: " + err.Error()}, true)
	}
	if err := p.Services.Update(ctx, t, Pin(rel.Ref, want), creds); err != nil {
		// Not remembered as a bad digest: the image never ran, and the cause
		// (Docker unreachable, a spec Swarm refuses) is not the image's.
		return p.finish(rel, Event{Kind: Failed, Phase: PhaseUpdate, Reason: err.Error()}, true)
	}
	return p.follow(ctx, rel, false)
}

// follow watches a started rollout to its end, rolls back what is not
// healthy, and reports. When ctx ends first (the updater is stopping) it
// returns without a report and leaves the journal entry, so the next run
// resumes the deploy instead of forgetting it.
func (p *Pipeline) follow(ctx context.Context, rel Release, resumed bool) Event {
	last := Step{Phase: PhaseRollout, Done: -1}
	v, why, err := p.watch(ctx, rel.ServiceID, rel.Started.Add(p.Timeout), func(r Rollout) (bool, verdict, string) {
		v, why := judge(r, rel.To)
		// Progress is reported when it changes, not on every look.
		if s := progress(r, rel.To); s != last && v == pending {
			last = s
			p.report(Event{Kind: Progress, Release: rel, Phase: PhaseRollout, Step: &s, Resumed: resumed})
		}
		return v != pending, v, why
	})
	if ctx.Err() != nil {
		return Event{Kind: Failed, Release: rel, Phase: PhaseRollout, Reason: "updater stopped; the deploy resumes on restart", Resumed: resumed}
	}
	ev := Event{Kind: Failed, Phase: PhaseRollout, Reason: why, Resumed: resumed}
	if err != nil {
		v, ev.Reason = failing, err.Error()
	}
	switch v {
	case healthy:
		if err := p.Ledger.Forget(ctx, rel.ServiceID); err != nil {
			p.Log.Warn("forget failed digests", "service", rel.ServiceName, "err", err)
		}
		return p.finish(rel, Event{Kind: Succeeded, Phase: PhaseRollout, Resumed: resumed}, true)
	case superseded:
		// Not the image's fault, and no longer ours to roll back.
		return p.finish(rel, ev, true)
	case stuck:
		ev.Phase = PhaseRollback
	case rolledBack:
		ev.RolledBack = true
	case failing, rollingBack:
		if v == failing {
			if err := p.Services.Rollback(ctx, rel.ServiceID); err != nil {
				ev.Phase, ev.Reason = PhaseRollback, ev.Reason+"; roll back: "+err.Error()
				break
			}
		}
		bv, bwhy, err := p.watch(ctx, rel.ServiceID, p.now().Add(p.Timeout), func(r Rollout) (bool, verdict, string) {
			if r.UpdateState == "rollback_paused" {
				return true, stuck, "Swarm paused the rollback: " + r.UpdateMessage
			}
			return restored(r, rel.To), rolledBack, ""
		})
		if ctx.Err() != nil {
			return Event{Kind: Failed, Release: rel, Phase: PhaseRollback, Reason: "updater stopped; the deploy resumes on restart", Resumed: resumed}
		}
		switch {
		case err != nil:
			ev.Phase, ev.Reason = PhaseRollback, ev.Reason+"; roll back: "+err.Error()
		case bv == stuck:
			// Not back on the previous version: a person must look.
			ev.Phase, ev.Reason = PhaseRollback, ev.Reason+"; "+bwhy
		default:
			ev.RolledBack = true
		}
	}
	if err := p.Ledger.MarkFailed(ctx, rel.ServiceID, rel.To, ev.Reason); err != nil {
		p.Log.Error("remember failed digest", "service", rel.ServiceName, "to_digest", rel.To, "err", err)
	}
	return p.finish(rel, ev, true)
}

// watch inspects a rollout every WatchInterval until done says it is
// decided or the deadline passes. A failing inspection (Docker restarting)
// is logged once and retried until the deadline.
func (p *Pipeline) watch(ctx context.Context, serviceID string, deadline time.Time, done func(Rollout) (bool, verdict, string)) (verdict, string, error) {
	var lastErr error
	for {
		r, err := p.Services.Rollout(ctx, serviceID)
		switch {
		case errors.Is(err, ErrNotFound):
			return superseded, "the service was removed during the deploy", nil
		case err != nil:
			if lastErr == nil {
				p.Log.Warn("inspect rollout", "service", serviceID, "err", err)
			}
			lastErr = err
		default:
			lastErr = nil
			if ok, v, why := done(r); ok {
				return v, why, nil
			}
		}
		if !p.now().Before(deadline) {
			if lastErr != nil {
				return failing, "", fmt.Errorf("no healthy outcome within %s; last error: %w", p.Timeout, lastErr)
			}
			return failing, "", fmt.Errorf("no healthy outcome within %s", p.Timeout)
		}
		t := time.NewTimer(p.WatchInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return failing, "", ctx.Err()
		case <-t.C:
		}
	}
}

// finish closes the journal entry and reports the end of a deploy.
func (p *Pipeline) finish(rel Release, ev Event, journaled bool) Event {
	ev.Release = rel
	ev.Duration = p.now().Sub(rel.Started)
	p.report(ev)
	if journaled {
		// A fresh context: the outcome must be recorded even when the
		// cycle's context is ending.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.Journal.End(ctx, rel); err != nil {
			p.Log.Error("close deploy record", "deploy_id", rel.ID, "service", rel.ServiceName, "err", err)
		}
	}
	return ev
}

// resume follows every deploy a previous run left in flight to its end.
func (p *Pipeline) resume(ctx context.Context) error {
	open, err := p.Journal.InFlight(ctx)
	if err != nil {
		return fmt.Errorf("read deploys in flight: %w", err)
	}
	for _, rel := range open {
		r, err := p.Services.Rollout(ctx, rel.ServiceID)
		if errors.Is(err, ErrNotFound) {
			p.finish(rel, Event{Kind: Failed, Phase: PhaseRollout, Reason: "the service was removed while the updater was down", Resumed: true}, true)
			continue
		}
		if err != nil {
			return fmt.Errorf("inspect service %s: %w", rel.ServiceName, err)
		}
		_, d := SplitImage(r.Image)
		if d != rel.To && r.UpdateState != "rollback_started" && r.UpdateState != "rollback_completed" && r.UpdateState != "rollback_paused" {
			// The updater stopped between recording the deploy and writing
			// the spec: nothing ran, and the next plan starts it afresh.
			p.finish(rel, Event{Kind: Failed, Phase: PhasePrepare, Reason: "the updater stopped before the service was updated", Resumed: true}, true)
			continue
		}
		p.Log.Info("resuming deploy left in flight", "deploy_id", rel.ID, "service", rel.ServiceName, "to_digest", rel.To)
		p.follow(ctx, rel, true)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

func (p *Pipeline) report(e Event) {
	if p.Reporter != nil {
		p.Reporter.Report(e)
	}
}
