package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrNotFound is returned by adapters for a service that does not exist.
var ErrNotFound = errors.New("not found")

// ErrUnavailable marks an error from an adapter that could not reach its
// system or got no answer (Docker restarting), as opposed to one the system
// gave (a spec refused). After it, a write may or may not have happened.
var ErrUnavailable = errors.New("unavailable")

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
	// Jobs and Migrations run hooks; both may be nil when no service
	// has any.
	Jobs       Jobs
	Migrations Migrations
	// Prober probes new tasks (updater.probe.*); nil when this updater
	// runs no probes: a service labelled with one then fails its deploy.
	Prober Prober
	// Canaries and Metrics run and judge canaries (updater.canary); a
	// service labelled with one fails its deploy when either is nil.
	Canaries Canaries
	Metrics  Metrics
	// Sightings remembers when each digest was first seen on its tag,
	// for cooldowns (updater.cooldown); nil: a cooldown holds forever.
	Sightings Sightings
	// History keeps each service's finished deploys (HistoryMax) for
	// ServiceHistory and RollbackService; nil keeps none.
	History  Histories
	Reporter Reporter
	Log      *slog.Logger

	// Timeout bounds one rollout, and separately the rollback after it.
	Timeout time.Duration
	// WatchInterval is how often a rollout is inspected.
	WatchInterval time.Duration
	// Concurrency bounds registry lookups in flight.
	Concurrency int
	// DeployConcurrency bounds the deploys (runs) in flight at once; 0
	// means DefaultDeployConcurrency. 1 deploys one after another.
	DeployConcurrency int
	// DryRun plans and logs but changes nothing.
	DryRun bool
	// ImageLabels has each deploy read its new image's labels (version,
	// commit) for the reports that show them (Slack, Rollbar); without
	// such a report they cost two registry GETs for nothing.
	ImageLabels bool
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// ApprovalTimeout is how long a deploy held for approval waits for a
	// person before it is turned down; 0 means DefaultApprovalTimeout.
	ApprovalTimeout time.Duration
	// Observer, when set, is told how each cycle went (metrics).
	Observer CycleObserver
	// Acting, when set, says whether this updater may act now (it holds
	// the lease, see Keeper); when false, cycles and deploys do nothing,
	// and a run under way stops before its next write (see fenced).
	Acting func() bool
	// Pruning removes, after a successful deploy, the images it made
	// unused on every node; its zero value prunes nothing.
	Pruning Pruning
	// Sweeper, when set, lets a full cycle remove every record (not only
	// the failed digests) of services that no longer exist, at most once
	// per SweepEvery.
	Sweeper Sweeper
	// Schedules, when set, is told after every full cycle which services
	// are watched, with their labels: scheduled backups follow a service
	// that gained, changed or lost its updater.backup.schedule, or went.
	Schedules Schedules

	running   sync.Mutex            // one cycle's planning at a time; runs go on without it
	mu        sync.Mutex            // guards the fields below
	outages   map[string]int        // consecutive failed cycles, by part and image
	backingUp map[string]*backupRun // scheduled backups running, by service ID
	runs      runs                  // deploys running or waiting for a slot
	wg        sync.WaitGroup        // the runs' goroutines
	again     func(...Push)         // asks for a check once a run is over (Trigger.Push); nil: the next tick
	runErr    error                 // Docker unreachable in a run, for the next cycle's outage count
	// closing is held (shared) by every run removing its record and
	// (alone) by resume while it reads the records and sorts out whose
	// they are: a record read just before its run removed it and ended
	// would else look left behind, and be resumed a second time.
	closing  sync.RWMutex
	warned   map[string]bool
	exists   map[string]bool      // services with records, found to exist though not watched
	swept    time.Time            // when Sweeper was last asked which services have records
	unclosed map[string]bool      // deploys over whose journal entry would not go
	seen     seen                 // what the last cycles saw, for Status
	heldSeen map[string]string    // service ID → the digest reported held
	specRefs map[string][2]string // service ID → its spec's tag and the tag its policy picked, last cycle
	refused  map[string]SentAuth  // service ID → the re-send of credentials its spec refused (reauth.go)

	approvals approvalBook // deploys held for approval; has its own lock
}

// DefaultDeployConcurrency is how many deploys run at once unless said.
const DefaultDeployConcurrency = 4

func (p *Pipeline) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// Cycle starts runs for the deploys a previous process left in flight,
// then starts a run for every watched service (or group) whose tag moved,
// and returns: the runs go on in the background (see runs.go). It returns
// ErrBusy at once when another cycle is planning: a tick that finds one is
// skipped, not queued, so slow cycles never pile up.
func (p *Pipeline) Cycle(ctx context.Context) ([]Plan, error) {
	if !p.running.TryLock() {
		p.observe(CycleStats{Full: true, Started: p.now(), Err: ErrBusy})
		return nil, ErrBusy
	}
	defer p.running.Unlock()
	return p.cycle(ctx, nil)
}

// CycleFor is Cycle for the services that track one of the pushed tags
// (every service when pushes is empty). Unlike Cycle it waits for the
// cycle that is planning: a push that arrives while a cycle runs may come
// too late for that cycle's registry lookups, so its check must follow,
// not be dropped. The registry is still asked: a push is a hint, not the
// truth.
func (p *Pipeline) CycleFor(ctx context.Context, pushes []Push) ([]Plan, error) {
	p.running.Lock()
	defer p.running.Unlock()
	return p.cycle(ctx, pushes)
}

// cycle runs one cycle; the caller holds p.running. Runs it starts live
// on ctx, not on the cycle's own fenced context, which ends with it.
func (p *Pipeline) cycle(ctx context.Context, pushes []Push) (plans []Plan, err error) {
	if p.Acting != nil && !p.Acting() {
		return nil, ErrStandby
	}
	base := ctx
	ctx, unfence := p.fenced(ctx)
	defer unfence()
	full, start := len(pushes) == 0, p.now()
	p.setBusy(start)
	deploys := 0
	defer func() {
		// Before it is observed: a cycle that lost the lease is counted
		// as the standby it became, not as ok.
		if lost(ctx) {
			err = ErrStandby
		}
		p.setBusy(time.Time{})
		p.observe(CycleStats{Full: full, Started: start, Duration: p.now().Sub(start), Err: err, Deploys: deploys})
	}()
	// How Docker answered this cycle, tracked once at its end: a list that
	// works must not clear a write that failed in the same cycle (or in a
	// run since the last cycle), or an outage would never count two cycles
	// in a row.
	var dockerErr error
	defer func() {
		if ctx.Err() == nil {
			p.mu.Lock()
			if dockerErr == nil {
				dockerErr = p.runErr
			}
			p.runErr = nil
			running := len(p.runs.live) > 0
			p.mu.Unlock()
			// A cycle that saw no failure does not clear the count while
			// runs are in flight: one of them (this cycle's own, perhaps)
			// may yet fail its write, and is counted with the next cycle.
			if dockerErr != nil || !running {
				p.track("docker", "", dockerErr)
			}
		}
	}()
	var records map[string]Release
	if !p.DryRun {
		if records, err = p.resume(ctx, base); err != nil {
			dockerErr = err
			return nil, err
		}
	}
	plans, failed, err := p.plan(ctx, pushes)
	if err != nil {
		dockerErr = err
		return nil, err
	}
	if full {
		p.checked(p.now())
		if !p.DryRun {
			p.sweep(ctx, plans, failed)
		}
	}
	p.inFlight(plans, records)
	plans = p.policies(ctx, p.gate(ctx, plans, full), !p.DryRun)
	for _, g := range releases(plans) {
		if p.DryRun {
			p.wouldDeploy(g)
			continue
		}
		if !p.confirm(ctx) {
			break
		}
		if _, in := p.start(base, g); in != nil {
			p.wait(plans, g, in)
			continue
		}
		deploys += len(g)
	}
	p.resendCredentials(ctx, plans)
	p.held(plans)
	if full && p.Schedules != nil {
		targets := make([]Target, len(plans))
		for i, pl := range plans {
			targets[i] = pl.Target
		}
		p.Schedules.Sync(targets)
	}
	return plans, nil
}

// start launches the run that deploys the release g (releases); nil and
// the flight in the way when another run claims one of its services or
// prunes its repository.
func (p *Pipeline) start(ctx context.Context, g []Plan) (*flight, *flight) {
	targets := make([]Target, len(g))
	want, from := map[string]string{}, map[string]string{}
	for i, pl := range g {
		targets[i] = pl.Target
		want[pl.Target.ID], from[pl.Target.ID] = pl.Want, pl.Target.Digest()
	}
	keys, refs := keysOf(targets)
	return p.launch(ctx, keys, refs, want, from, nil, targets, func(ctx context.Context) []Event {
		return p.deployRelease(ctx, g)
	})
}

// hookTimeout is the longest hook timeout of targets' hooks; 0 when none
// has a hook.
func hookTimeout(targets []Target) time.Duration {
	var d time.Duration
	for _, t := range targets {
		if h := t.Hooks; h.Backup != nil || h.Migrate != nil {
			d = max(d, h.Timeout)
		}
	}
	return d
}

// wait marks the plans of g as waiting for the flight in the way (which,
// launch saw to it, asks for a check of their tags once over).
func (p *Pipeline) wait(plans []Plan, g []Plan, in *flight) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pl := range g {
		i := slices.IndexFunc(plans, func(q Plan) bool { return q.Target.ID == pl.Target.ID })
		plans[i].Action, plans[i].Reason = ActDeploying, "waits for the deploy of "+strings.Join(in.keys, ", ")+" to end"
		if in.pruning != "" {
			plans[i].Reason = "starts once the prune of " + in.pruning + " has ended"
		}
	}
}

// releases splits the plans that deploy into what deploys together, in
// the order first planned: a service alone, or the members of its group
// that deploy (a member whose tag did not move, or that is held, stays as
// it is). A cycle and `updater deploy` both go by it.
func releases(plans []Plan) [][]Plan {
	at := map[string]int{}
	var out [][]Plan
	for _, pl := range plans {
		if pl.Action != ActDeploy {
			continue
		}
		key := groupKey(pl.Target)
		i, ok := at[key]
		if !ok {
			i, at[key] = len(out), len(out)
			out = append(out, nil)
		}
		out[i] = append(out[i], pl)
	}
	return out
}

// wouldDeploy logs, in a dry run, what a release would deploy.
func (p *Pipeline) wouldDeploy(g []Plan) {
	for _, pl := range g {
		p.Log.Info("dry run: would deploy", "service", pl.Target.Name, "image", pl.Target.Ref(),
			"from_digest", pl.Target.Digest(), "to_digest", pl.Want)
	}
}

// groupKey names what deploys together: the service alone, or its group.
func groupKey(t Target) string {
	if g := t.Hooks.Group; g != "" && t.HooksErr == nil {
		return "group:" + t.Stack + "/" + g
	}
	return "service:" + t.ID
}

// Check plans one cycle without changing anything. A service with a
// deploy record in Swarm (a run of the updater deploying it now, or one
// left behind for the lease holder to resume) is shown as ActDeploying.
func (p *Pipeline) Check(ctx context.Context) ([]Plan, error) {
	plans, _, err := p.plan(ctx, nil)
	if err != nil {
		return nil, err
	}
	open, err := p.Journal.InFlight(ctx)
	if err != nil {
		return nil, fmt.Errorf("read deploys in flight: %w", err)
	}
	records := make(map[string]Release, len(open))
	for _, rel := range open {
		records[rel.ServiceID] = rel
	}
	p.inFlight(plans, records)
	return p.policies(ctx, hold(plans), false), nil
}

// DeployService deploys what the named service's tag points to now and
// waits for the outcome. A person asked for it, so a digest that failed
// before is tried again and no approval is waited for. A deploy of the
// service (or its group) already running is waited for first, then the
// tag is looked at again: the request is for what the tag says after it.
//
// A member of a group (updater.group) deploys with its group, exactly as a
// cycle would deploy it (deployGroup): one backup, one migration, every
// member that moves written and judged, all unwound together if one fails.
// Which members move is the cycle's own rule (decide, then releases): those
// whose tag points to a new digest; one already up to date stays as it is.
// The person's request stands for the whole group, so a member's digest
// that failed before is retried too and no member's approval is awaited.
// A member's tag that cannot be looked up fails the request before
// anything starts: deploying the rest would leave the group half old,
// half new.
//
// The Event returned is the named service's own outcome, also when its
// group deployed with it (the other members' outcomes are reported as
// usual). When the service is already up to date nothing is deployed, not
// even members that moved (the next cycle deploys those), and the Event
// says so. When the deploy stops before the service's outcome (Docker gone
// mid-write, the updater stopping) the Event is a failure saying that it
// resumes; nothing was reported for it yet.
func (p *Pipeline) DeployService(ctx context.Context, name string) (Event, error) {
	return p.deployService(ctx, name, false)
}

// ForceDeployService is DeployService through a freeze (updater.freeze,
// UPDATER_FREEZE), which DeployService refuses with ErrFrozen.
func (p *Pipeline) ForceDeployService(ctx context.Context, name string) (Event, error) {
	return p.deployService(ctx, name, true)
}

func (p *Pipeline) deployService(ctx context.Context, name string, force bool) (Event, error) {
	for {
		ev, f, in, err := p.startDeploy(ctx, name, force)
		switch {
		case err != nil:
			return Event{}, err
		case in != nil:
			p.Log.Info("requested deploy waits for the deploy running", "service", name, "running", strings.Join(in.keys, ", "))
			select {
			case <-in.done:
			case <-ctx.Done():
				return Event{}, fmt.Errorf("deploy %s: waited for the deploy running: %w", name, ctx.Err())
			}
			// A deploy of the service found in flight that its run could not
			// carry on (Docker not answering) is still in flight: waiting for
			// it again at once would spin. The next cycle carries it on.
			if in.resumed && !slices.ContainsFunc(in.out, func(e Event) bool { return e.Release.ServiceID == ev.Release.ServiceID && !e.waiting }) {
				ev.Kind, ev.Phase = Failed, PhaseUpdate
				ev.Reason = "no outcome yet: a deploy of the service found in flight could not be carried on (Docker not answering); the next cycle carries it on"
				return ev, nil
			}
			continue
		case f == nil:
			return ev, nil
		}
		<-f.done
		if f.lost {
			return Event{}, fmt.Errorf("stopped where it was, for the lease holder to resume: %w", ErrStandby)
		}
		for _, out := range f.out {
			if out.Release.ServiceID == ev.Release.ServiceID {
				return out, nil
			}
		}
		ev.Kind, ev.Phase = Failed, PhaseUpdate
		ev.Reason = "no outcome yet: Docker did not answer or the updater is stopping; the next cycle carries the deploy on"
		return ev, nil
	}
}

// startDeploy plans the deploy DeployService asks for and starts its run:
// f is the run, and ev names the service's release. With f nil, ev is the
// outcome already (up to date, a dry run), or in is the run in the way.
func (p *Pipeline) startDeploy(ctx context.Context, name string, force bool) (ev Event, f, in *flight, err error) {
	p.running.Lock()
	defer p.running.Unlock()
	if p.Acting != nil && !p.Acting() {
		return Event{}, nil, nil, ErrStandby
	}
	base := ctx
	ctx, unfence := p.fenced(ctx)
	defer unfence()
	defer func() {
		if lost(ctx) {
			err = fmt.Errorf("stopped where it was, for the lease holder to resume: %w", ErrStandby)
		}
	}()
	p.setBusy(p.now())
	defer p.setBusy(time.Time{})
	var left []Release // records no run owned: resumed now, or waiting
	if !p.DryRun {
		if _, left, err = p.resumeAll(ctx, base); err != nil {
			return Event{}, nil, nil, err
		}
	}
	targets, err := p.Lister.List(ctx)
	if err != nil {
		return Event{}, nil, nil, fmt.Errorf("list services: %w", err)
	}
	i := slices.IndexFunc(targets, func(t Target) bool { return t.Name == name || t.ID == name })
	if i < 0 {
		return Event{}, nil, nil, fmt.Errorf("service %q is not watched: it must exist, carry the opt-in label and belong to the configured stack: %w", name, ErrNotFound)
	}
	p.unprobed(targets)
	p.uncanaried(targets)
	tagErrs := p.follow(ctx, targets)
	t := targets[i]
	if err := tagErrs[t.ID]; err != nil {
		return Event{}, nil, nil, err
	}
	if !Tagged(t.Ref()) {
		return Event{}, nil, nil, fmt.Errorf("service %s runs %s: pinned to a digest without a tag, so there is no tag to follow", t.Name, t.Image)
	}
	// Its group as a cycle would list it; the service's own tag is looked
	// up first, so its failing is the error given.
	members := slices.DeleteFunc(slices.Clone(targets), func(m Target) bool { return groupKey(m) != groupKey(t) })
	keys, _ := keysOf(members)
	p.mu.Lock()
	in = p.claimedBy(keys)
	p.mu.Unlock()
	if in != nil {
		return Event{Release: t.release("", "", time.Time{})}, nil, in, nil
	}
	// A record in flight of the service or its group that no run carries
	// on now (its resume could not, and has ended): deploying beside it
	// would make two deploys of one service. The next cycle carries it on.
	for _, m := range members {
		if i := slices.IndexFunc(left, func(r Release) bool { return r.ServiceID == m.ID }); i >= 0 {
			rec := left[i]
			ev := Event{Kind: Failed, Release: t.release("", "", time.Time{}), Phase: PhaseUpdate,
				Reason: fmt.Sprintf("no outcome yet: deploy %s of %s is in flight (recorded in Swarm) and could not be carried on now (Docker not answering); the next cycle carries it on", rec.ID, m.Name)}
			return ev, nil, nil, nil
		}
	}
	digests := map[string]lookup{}
	for _, m := range append([]Target{t}, members...) {
		if err := tagErrs[m.ID]; err != nil {
			return Event{}, nil, nil, fmt.Errorf("nothing deployed: %s, in the group %s of %s: %w", m.Name, t.Hooks.Group, t.Name, err)
		}
		if _, done := digests[m.Ref()]; done || !Tagged(m.Ref()) {
			continue
		}
		d, err := p.Registry.Digest(ctx, m.Ref())
		if err != nil {
			if m.ID == t.ID {
				return Event{}, nil, nil, err
			}
			return Event{}, nil, nil, fmt.Errorf("look up %s of %s, in the group %s of %s: nothing deployed: %w", m.Ref(), m.Name, t.Hooks.Group, t.Name, err)
		}
		digests[m.Ref()] = lookup{digest: d}
	}
	plans := decide(members, digests, nil) // no failed digests: a person asked
	own := plans[slices.IndexFunc(plans, func(pl Plan) bool { return pl.Target.ID == t.ID })]
	ev = Event{Kind: Succeeded, Release: t.release("", own.Want, time.Time{}), Reason: "already up to date"}
	if own.Action != ActDeploy {
		ev.Release.From = own.Want
		return ev, nil, nil, nil
	}
	// A person's deploy goes outside a window and before a cooldown ends,
	// not through a freeze unless forced.
	if why := frozen(members, p.now()); why != "" && !force {
		return Event{}, nil, nil, fmt.Errorf("deploy %s: %s: deploy it with --force to go through the freeze: %w", t.Name, why, ErrFrozen)
	}
	g := releases(plans)[0] // every member shares t's key: one release
	if p.DryRun {
		p.wouldDeploy(g)
		ev.Reason = "dry run: nothing changed"
		return ev, nil, nil, nil
	}
	if f, in = p.start(base, g); in != nil {
		return Event{}, nil, in, nil
	}
	return ev, f, nil, nil
}

// settle watches a written rollout to its end and rolls back what is not
// healthy: the outcome, and whether it is final (false when the updater
// is stopping or Docker stopped answering; the record then stays).
//
// revert, when set, is how the service goes back (a canary's: Swarm's
// previous spec is the canary's own): then every failure, Swarm's own
// rollback included, is written back with it.
//
// since is when the rollout began: the deploy's start, or a canary's
// promotion (its analysis came before).
func (p *Pipeline) settle(ctx context.Context, rel Release, since time.Time, resumed bool, revert func(context.Context) error) (Event, bool) {
	last := Step{Phase: PhaseRollout, Done: -1}
	var seen Rollout // the last look: what held the rollout up, at the deadline
	v, why, err := p.watch(ctx, rel.ServiceID, since.Add(p.Timeout), func(r Rollout) (bool, verdict, string) {
		r = recent(r, rel.Started)
		seen = r
		v, why := judge(r, rel.To)
		// Progress is reported when it changes, not on every look.
		if s := progress(r, rel.To); (s.Done != last.Done || s.Total != last.Total) && v == pending {
			last = s
			p.report(Event{Kind: Progress, Release: rel, Phase: PhaseRollout, Step: &s, Resumed: resumed})
		}
		return v != pending, v, why
	})
	if ctx.Err() != nil {
		return stopping(rel, PhaseRollout, resumed), false
	}
	if errors.Is(err, ErrUnavailable) {
		return dockerGone(rel, PhaseRollout, resumed, err), false
	}
	ev := Event{Kind: Failed, Phase: PhaseRollout, Reason: why, Resumed: resumed}
	if err != nil {
		// Tasks of the new version waiting for a node ("no suitable node")
		// or failing on one say why the deadline passed.
		v, ev.Reason = failing, err.Error()+taskErrors(seen, rel.To)
	}
	if revert != nil && v != healthy && v != superseded {
		v = failing
	}
	switch v {
	case healthy:
		// A person's rollback lands on an older digest, not on the one the
		// tag names: what was quarantined before it stays quarantined.
		if rel.Rollback {
			return Event{Kind: Succeeded, Phase: PhaseRollout, Resumed: resumed}, true
		}
		if err := p.Ledger.Forget(ctx, rel.ServiceID); err != nil {
			p.Log.Warn("forget failed digests", "service", rel.ServiceName, "err", err)
		}
		return Event{Kind: Succeeded, Phase: PhaseRollout, Resumed: resumed}, true
	case superseded:
		// Not the image's fault, and no longer ours to roll back.
		return ev, true
	case stuck:
		ev.Phase = PhaseRollback
	case rolledBack:
		ev.RolledBack = true
	case failing, rollingBack:
		if v == failing {
			if !p.confirm(ctx) {
				return stopping(rel, PhaseRollback, resumed), false
			}
			back := func(ctx context.Context) error { return p.Services.Rollback(ctx, rel.ServiceID) }
			if revert != nil {
				back = revert
			}
			if err := back(ctx); errors.Is(err, ErrUnavailable) {
				return dockerGone(rel, PhaseRollback, resumed, err), false
			} else if err != nil {
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
			return stopping(rel, PhaseRollback, resumed), false
		}
		if errors.Is(err, ErrUnavailable) {
			return dockerGone(rel, PhaseRollback, resumed, err), false
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
	return ev, true
}

// dockerGone is the unreported outcome of a rollout (or rollback) that
// Docker stopped answering about until its deadline: no verdict on the
// image. The record stays, and the next cycle that reaches Docker follows
// the deploy on from what Swarm says.
func dockerGone(rel Release, phase Phase, resumed bool, err error) Event {
	return Event{Kind: Failed, Release: rel, Phase: phase, Resumed: resumed, waiting: true,
		Reason: "no outcome yet: Docker did not answer about the rollout; the next cycle follows it on: " + err.Error()}
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
	// Kept before the record goes: a restart between the two reports the
	// deploy again, and its history entry is replaced, not doubled.
	p.remember(ev)
	if journaled {
		p.end(rel)
	}
	return ev
}

// end removes rel's journal entry, on a fresh context: it must go even when
// the cycle's context is ending. One that will not go is closed by the next
// cycle's resume, which neither follows nor reports it again.
func (p *Pipeline) end(rel Release) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.closing.RLock()
	defer p.closing.RUnlock()
	if err := p.Journal.End(ctx, rel); err != nil {
		p.Log.Error("remove deploy record; retried next cycle", "deploy_id", rel.ID, "service", rel.ServiceName, "err", err)
		p.mu.Lock()
		if p.unclosed == nil {
			p.unclosed = map[string]bool{}
		}
		p.unclosed[rel.ID] = true
		p.mu.Unlock()
	}
}

// resume starts a run for each deploy in flight that no run of this
// process owns: one a previous process (or this one, before Docker went
// away mid-write) left behind. A deploy that stopped before its spec
// write is carried on from where it stopped (a migration already recorded
// is not run again); one that got further is watched to its outcome.
// Either way the outcome is reported once, and no deploy is started twice.
// The records of a group resume in one run, claiming the group.
//
// It returns every record in flight, by service ID, for the plans to show
// those services as deploying. Runs live on base.
func (p *Pipeline) resume(ctx, base context.Context) (map[string]Release, error) {
	records, _, err := p.resumeAll(ctx, base)
	return records, err
}

// resumeAll is resume, also returning the records no run owned when read
// (those it started runs for, or left for a run in their way).
func (p *Pipeline) resumeAll(ctx, base context.Context) (records map[string]Release, left []Release, err error) {
	records, left, err = p.leftBehind(ctx)
	if err != nil || len(left) == 0 {
		return records, left, err
	}
	if err := p.resumeLeft(ctx, base, left); err != nil {
		return nil, nil, err
	}
	return records, left, nil
}

// leftBehind reads the records in flight: all of them by service ID, and
// those no run of this process owns.
func (p *Pipeline) leftBehind(ctx context.Context) (records map[string]Release, left []Release, err error) {
	p.closing.Lock()
	defer p.closing.Unlock()
	open, err := p.Journal.InFlight(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("read deploys in flight: %w", err)
	}
	// Records of deploys already over (reported, or never announced) are
	// only closed. Marks of records gone anyway are dropped.
	p.mu.Lock()
	unclosed := p.unclosed
	p.unclosed = nil
	p.mu.Unlock()
	records = map[string]Release{}
	for _, rel := range open {
		switch {
		case unclosed[rel.ID]:
			if err := p.Journal.End(ctx, rel); err != nil {
				p.mu.Lock()
				if p.unclosed == nil {
					p.unclosed = map[string]bool{}
				}
				p.unclosed[rel.ID] = true
				p.mu.Unlock()
				return nil, nil, fmt.Errorf("remove deploy record %s: %w", rel.ID, err)
			}
			continue
		case p.owned(rel.ID):
		default:
			left = append(left, rel)
		}
		records[rel.ServiceID] = rel
	}
	return records, left, nil
}

// resumeLeft starts the runs that resume left, the records no run owns.
func (p *Pipeline) resumeLeft(ctx, base context.Context, left []Release) error {
	// A job of the run that died may still be running: it goes first, so
	// nothing it does can race what resumes. Jobs this process runs stay.
	if p.Jobs != nil {
		if err := p.Jobs.Clean(ctx); err != nil {
			return fmt.Errorf("remove jobs left behind: %w", err)
		}
	}
	targets, err := p.Lister.List(ctx)
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	// One run per service, or per group: its records in the order found.
	type batch struct {
		keys, refs []string
		rels       []Release
		targets    []Target // those still watched
	}
	var batches []*batch
	at := map[string]*batch{}
	for _, rel := range left {
		key, keys := "service:"+rel.ServiceID, []string{"service:" + rel.ServiceID}
		i := slices.IndexFunc(targets, func(t Target) bool { return t.ID == rel.ServiceID })
		if i >= 0 {
			key, keys = groupKey(targets[i]), deployKeys(targets[i])
		}
		b := at[key]
		if b == nil {
			b = &batch{}
			at[key] = b
			batches = append(batches, b)
		}
		if i >= 0 {
			b.targets = append(b.targets, targets[i])
		}
		for _, k := range keys {
			if !slices.Contains(b.keys, k) {
				b.keys = append(b.keys, k)
			}
		}
		b.refs = append(b.refs, rel.Ref)
		b.rels = append(b.rels, rel)
	}
	for _, b := range batches {
		want, from, ids := map[string]string{}, map[string]string{}, make([]string, len(b.rels))
		for i, rel := range b.rels {
			want[rel.ServiceID], from[rel.ServiceID], ids[i] = rel.To, rel.From, rel.ID
		}
		rels := b.rels
		if _, in := p.launch(base, b.keys, b.refs, want, from, ids, b.targets, func(ctx context.Context) []Event {
			return p.resumeRelease(ctx, rels, targets)
		}); in != nil {
			p.Log.Debug("deploy left in flight waits for the run in its way", "deploy_id", b.rels[0].ID, "service", b.rels[0].ServiceName)
		}
	}
	return nil
}

func (p *Pipeline) report(e Event) {
	if p.Reporter != nil {
		p.Reporter.Report(e)
	}
}
