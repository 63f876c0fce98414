package deploy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// A release run is one sequence of stages over the services that deploy
// together: a service alone is a group of one. Each stage is a method of
// the run below, in this order:
//
//	record  → one deploy record per service, in Swarm, then "started"
//	prepare → the scheduled backups in its way waited for, credentials,
//	          the backup, the migration in the new image (once per digest)
//	write   → each spec pinned to its new digest, every spec first
//	follow  → each rollout judged (judge.go), rolled back when unhealthy
//	verify  → each new version probed, then all baked (bake.go), as labelled
//	          (with waves, updater.wave: write, follow and verify per wave)
//	close   → what promoted is unwound when another member failed; each
//	          outcome reported once, its record removed; then pruning
//
// A run stops where it is, its records kept and nothing reported, when the
// updater stops, loses the lease or Docker stops answering at a write: the
// next cycle resumes it from the records (resumeRelease), with what Swarm
// says: a member whose spec carries its new digest is past the write, and
// its hooks ran. A member's outcome is reported once, by whichever run
// reaches it.

// member is one service of a release run.
type member struct {
	t     Target // as listed; zero for a resumed member no longer watched
	want  string // the digest it deploys
	rel   Release
	creds Credentials
	ev    Event // its outcome, once its rollout is judged
	// prepared is true once its hooks ran (as its record says, for a
	// resumed member): they are not run again.
	prepared bool
	// baking is when its bake began, as a resumed record says; zero
	// when it was not baking.
	baking time.Time
	// rollback, for a person's rollback (StartRollback), is the request,
	// with ref the tag its record names and from what it rolls away
	// from: it is begun as one.
	rollback *RollbackRequest
	ref      string
	from     string // the digest it rolls away from
	// canary: written as a canary (canary.go), so its rollbacks are
	// Canaries.Revert; promoted once its update was let finish.
	// canaryAt is when its analysis began, as a resumed record says.
	canary, promoted bool
	canaryAt         time.Time
	// promotedAt is when its canary was promoted (its rollout's timeout
	// counts from then); zero: the deploy's start.
	promotedAt time.Time
}

// run is one release run in progress.
type run struct {
	p       *Pipeline
	lead    Target // whose hooks run: hookOwner
	resumed bool
	events  []Event // the outcomes reached, in order
	// failed names the first member that failed ("a spec write" for one
	// Swarm refused): every member promoted is then unwound.
	failed string
}

// deployRelease runs the release g (releases) from its records to its
// outcomes.
func (p *Pipeline) deployRelease(ctx context.Context, g []Plan) []Event {
	r := &run{p: p, lead: hookOwner(g)}
	ms := make([]*member, len(g))
	for i, pl := range g {
		ms[i] = &member{t: pl.Target, want: pl.Want}
	}
	if !r.record(ctx, ms) {
		return r.events
	}
	p.deployed(releasesOf(ms)...) // their approvals, if any, are used up now
	return r.carry(ctx, ms, nil)
}

// resumeRelease carries on the deploys rels of one service or group that
// a run left in flight, from what Swarm says of each: targets are the
// watched services now.
func (p *Pipeline) resumeRelease(ctx context.Context, rels []Release, targets []Target) []Event {
	r := &run{p: p, resumed: true}
	var unwritten, written []*member
	for _, rel := range rels {
		ro, err := p.Services.Rollout(ctx, rel.ServiceID)
		if errors.Is(err, ErrNotFound) {
			r.events = append(r.events, p.finish(rel, Event{Kind: Failed, Phase: PhaseRollout, Reason: "the service was removed while the updater was down", Resumed: true}, true))
			continue
		}
		if err != nil {
			// Every record stays: carrying on the others without knowing
			// where this one stands could leave a group half old, half new.
			p.Log.Warn("inspect a service whose deploy is in flight; resumed next cycle", "deploy_id", rel.ID, "service", rel.ServiceName, "err", err)
			p.mu.Lock()
			p.runErr = fmt.Errorf("inspect service %s: %w", rel.ServiceName, err)
			p.mu.Unlock()
			return r.events
		}
		p.Log.Info("resuming deploy left in flight", "deploy_id", rel.ID, "service", rel.ServiceName, "to_digest", rel.To)
		// The stage is the run's state, not the release's: reports carry
		// the release as it was begun.
		// A rollback's hooks never run: it is prepared from the start.
		m := &member{rel: rel, want: rel.To, prepared: rel.Stage == StagePrepared || rel.Stage == StageBaking || rel.Stage == StageCanary || rel.Rollback}
		if rel.Stage == StageBaking {
			m.baking = cmp.Or(rel.StageAt, p.now()) // unknown: bake in full
		}
		m.rel.Stage = StageRecorded
		i := slices.IndexFunc(targets, func(t Target) bool { return t.ID == rel.ServiceID })
		if i >= 0 {
			m.t = targets[i]
		}
		// A canary: its spec in the canary's form, or a record that says
		// its analysis began. Out of that form past its write, it was
		// promoted (or someone wrote it: its rollbacks are writes anyway).
		if ro.Canary || rel.Stage == StageCanary || rel.Stage == StageBaking && m.t.Canary.Tasks > 0 {
			m.canary = true
			if m.promoted = !ro.Canary; m.promoted {
				m.promotedAt = p.now() // unknown: a full timeout from now
			}
			if rel.Stage == StageCanary && ro.Canary {
				m.canaryAt = rel.StageAt // zero: the whole window again
			}
		}
		if past(ro, rel) {
			written = append(written, m)
			continue
		}
		switch {
		case i < 0:
			r.events = append(r.events, p.finish(rel, Event{Kind: Failed, Phase: PhasePrepare, Reason: "the service is no longer watched", Resumed: true}, true))
			r.failed = cmp.Or(r.failed, rel.ServiceName) // its group's members written are unwound
		case m.t.Ref() != rel.Ref && (m.t.Tags == nil || Repository(m.t.Ref()) != Repository(rel.Ref)):
			// (A service with a tag policy moves from tag to tag of its
			// repository: its record names the tag it moves to.)
			r.failed = cmp.Or(r.failed, rel.ServiceName)
			// A record is input: one whose image is not what the service
			// tracks (edited, or the service retargeted since) is never
			// written to its spec.
			r.events = append(r.events, p.finish(rel, Event{Kind: Failed, Phase: PhasePrepare, Resumed: true,
				Reason: fmt.Sprintf("not resumed: the record's image %s is not the %s the service tracks", rel.Ref, m.t.Ref())}, true))
		default:
			unwritten = append(unwritten, m)
		}
	}
	if len(unwritten) > 0 {
		// The hooks are those of the release's own members, as when it
		// began (hookOwner over the members that moved): not a member's
		// that stayed up to date.
		var own []Plan
		for _, m := range append(slices.Clone(unwritten), written...) {
			if m.t.ID != "" {
				own = append(own, Plan{Target: m.t})
			}
		}
		r.lead = hookOwner(own)
	}
	return r.carry(ctx, unwritten, written)
}

// past reports whether a deploy found in flight got past its spec write:
// the spec carries its digest, or Swarm rolls back an update begun after
// its record was written (the rollback a failed deploy before it left in
// UpdateStatus is not this one's, whose write may never have landed; both
// times are the managers' clock).
func past(ro Rollout, rel Release) bool {
	if _, d := SplitImage(ro.Image); d == rel.To {
		return true
	}
	since := rel.Recorded
	if since.IsZero() {
		since = rel.Started
	}
	return strings.HasPrefix(ro.UpdateState, "rollback_") && (ro.UpdateStarted.IsZero() || !ro.UpdateStarted.Before(since))
}

// carry takes a run on from its records: unwritten members are prepared,
// then written wave by wave (updater.wave; all at once without waves),
// each wave followed and verified before the next is written; members
// written before (a resumed run) are followed with the first wave. When a
// wave fails, the later ones are not written (halt) and close unwinds
// what promoted.
func (r *run) carry(ctx context.Context, unwritten, written []*member) []Event {
	if len(unwritten) > 0 && !r.prepare(ctx, unwritten, len(written) == 0) {
		return r.events
	}
	waves := byWave(unwritten)
	var done []*member
	// Members written before (a resumed run) go with the first wave left
	// when they are of it; of an earlier wave, they are judged first.
	if len(written) > 0 && (len(waves) == 0 || slices.ContainsFunc(written, func(m *member) bool { return m.t.Hooks.Wave != waves[0][0].t.Hooks.Wave })) {
		if !r.canaries(ctx, written) || !r.follow(ctx, written) || !r.verify(ctx, written) {
			return r.events
		}
		done, written = written, nil
	}
	for i, wave := range waves {
		if r.failed != "" {
			// A member failed already (a wave judged before, a resumed
			// member no longer watched): nothing more is written.
			stopper := 0 // the wave judged last, 0 when none is known
			if i > 0 {
				stopper = waves[i-1][0].t.Hooks.Wave
			} else if len(done) > 0 {
				stopper = done[0].t.Hooks.Wave
			}
			r.halt(ctx, waves[i:], stopper)
			break
		}
		w, ok := r.write(ctx, wave)
		if !ok {
			var left []*member
			for _, later := range waves[i:] {
				left = append(left, later...)
			}
			r.stopped(left, w)
			return r.events
		}
		if i == 0 {
			w = append(written, w...)
		}
		if !r.canaries(ctx, w) || !r.follow(ctx, w) || !r.verify(ctx, w) {
			return r.events
		}
		done = append(done, w...)
	}
	r.close(ctx, done)
	return r.events
}

// byWave splits ms into their waves, lowest first: one wave when no
// member names one (or all name the same).
func byWave(ms []*member) [][]*member {
	if len(ms) == 0 {
		return nil
	}
	sorted := slices.Clone(ms)
	slices.SortStableFunc(sorted, func(a, b *member) int { return cmp.Compare(a.t.Hooks.Wave, b.t.Hooks.Wave) })
	var waves [][]*member
	for i, m := range sorted {
		if i == 0 || m.t.Hooks.Wave != sorted[i-1].t.Hooks.Wave {
			waves = append(waves, nil)
		}
		waves[len(waves)-1] = append(waves[len(waves)-1], m)
	}
	return waves
}

// halt closes the members of the waves after a failed one: never
// written, each reported as not deployed, saying which wave stopped it,
// and its digest remembered as failed with its group's (deployed alone
// next cycle, it would leave the group half old, half new).
func (r *run) halt(ctx context.Context, later [][]*member, wave int) {
	p := r.p
	why := fmt.Sprintf("not deployed: wave %d stopped the group: %s failed", wave, r.failed)
	if wave < 1 {
		why = "not deployed: its group stopped: " + r.failed + " failed"
	}
	for _, ms := range later {
		for _, m := range ms {
			if err := p.Ledger.MarkFailed(ctx, m.rel.ServiceID, m.rel.To, why); err != nil {
				p.Log.Error("remember failed digest", "service", m.rel.ServiceName, "to_digest", m.rel.To, "err", err)
			}
			r.events = append(r.events, p.finish(m.rel, Event{Kind: Failed, Phase: PhasePrepare, Reason: why, Resumed: r.resumed}, true))
		}
	}
}

// record begins a deploy for each member. When one can't be recorded, the
// others begun are closed as not deployed: deploying them would leave the
// group half old, half new, its migration run under this member's old
// code. Nothing was touched, and the next cycle tries the release again.
func (r *run) record(ctx context.Context, ms []*member) bool {
	// A run that waited for its slot may have lost the lease meanwhile:
	// nothing is recorded or announced then (the holder plans it anew).
	if !r.p.confirm(ctx) {
		return false
	}
	for i, m := range ms {
		rel, ev, ok := r.p.begin(ctx, m)
		if ok {
			m.rel = rel
			continue
		}
		if len(ms) > 1 {
			r.p.Log.Error("group deploy not started", "service", m.t.Name, "err", ev.Reason)
		}
		// Docker gone (ev.waiting) is no outcome: ev is returned unreported,
		// for the cycle to count the outage.
		r.events = append(r.events, ev)
		for _, b := range ms[:i] {
			r.events = append(r.events, r.p.finish(b.rel, Event{Kind: Failed, Phase: PhasePrepare,
				Reason: "not deployed: the deploy of " + m.t.Name + ", of its group, could not begin: " + ev.Reason}, true))
		}
		return false
	}
	return true
}

// prepare gets ms ready for their writes: the scheduled backups in the
// way waited for, each member's credentials and the hook images', then,
// when hooks is true, the lead's backup and migration. ok is false when
// the run ends here; its outcomes are then in r.events.
func (r *run) prepare(ctx context.Context, ms []*member, hooks bool) bool {
	p, rels := r.p, releasesOf(ms)
	failAll := func(reason string, remember bool) {
		for _, m := range ms {
			ev := Event{Kind: Failed, Phase: PhasePrepare, Reason: reason, Resumed: r.resumed}
			if remember || ctx.Err() != nil {
				r.events = append(r.events, p.fail(ctx, m.rel, ev))
			} else {
				r.events = append(r.events, p.finish(m.rel, ev, true))
			}
		}
	}
	// A slow backup is not the digests' fault: not remembered as failed,
	// so the next cycle tries again (a stopping updater reports nothing).
	if err := p.awaitBackups(ctx, r.lead, rels); err != nil {
		failAll(err.Error(), false)
		return false
	}
	// Each member is written with the credentials of its own image's
	// registry: members may live on different registries, and none is
	// sent another's.
	for _, m := range ms {
		c, err := p.Registry.Credentials(ctx, m.rel.Ref)
		if err != nil {
			failAll("get registry credentials: "+err.Error(), false)
			return false
		}
		m.creds = c
	}
	// Hooks that ran for these records (a run that stopped at its writes,
	// a restart since) are not run again.
	if !hooks || slices.ContainsFunc(ms, func(m *member) bool { return m.prepared }) {
		return true
	}
	jobCreds, err := p.jobCredentials(ctx, r.lead, own(r.lead, rels))
	if err != nil {
		failAll(err.Error(), false)
		return false
	}
	// A hook that failed fails again next cycle: the digests are
	// remembered, so it is reported once, not every cycle.
	if ev, ok := p.prepare(ctx, r.lead, rels, jobCreds, r.resumed); !ok {
		if ev.waiting { // Docker gone during a hook: the records stay
			r.stopped(ms, nil)
			return false
		}
		for _, m := range ms {
			r.events = append(r.events, p.fail(ctx, m.rel, ev))
		}
		return false
	}
	// In the records: a run that resumes them, here or after a restart,
	// does not run the hooks again. One not noted (Docker gone) would run
	// the backup again, not the migration, which has its own record.
	for _, m := range ms {
		m.prepared = true
		if err := p.Journal.Reached(context.WithoutCancel(ctx), m.rel, StagePrepared); err != nil {
			p.Log.Warn("note in the deploy record that its hooks ran", "deploy_id", m.rel.ID, "service", m.rel.ServiceName, "err", err)
		}
	}
	return true
}

// write pins each member's spec to its new digest, every spec first, so
// a group spends as little time as possible half old, half new. It
// returns the members written; ok is false when the run must stop here
// (the lease lost, the updater stopping, Docker not answering a write),
// every record kept. A write Swarm refuses is that member's outcome, not
// remembered as a bad digest (the image never ran), and fails the others.
func (r *run) write(ctx context.Context, ms []*member) (written []*member, ok bool) {
	p := r.p
	var refused []*member
	for _, m := range ms {
		if !p.confirm(ctx) {
			return written, false
		}
		var err error
		// A person's rollback goes back at once: judging the old digest
		// by the metrics that made them roll back would return to the bad one.
		if m.t.Canary.Tasks > 0 && p.Canaries != nil && !m.rel.Rollback {
			m.canary = true
			err = p.Canaries.Canary(ctx, m.t, Pin(m.rel.Ref, m.rel.To), m.creds, m.t.Canary.Tasks)
		} else {
			err = p.Services.Update(ctx, m.t, Pin(m.rel.Ref, m.rel.To), m.creds)
		}
		if err != nil && ctx.Err() != nil {
			return written, false // stopping mid-write: the spec says, on restart
		}
		if err != nil && errors.Is(err, ErrUnavailable) {
			// The write may have landed with its answer lost: the spec says.
			if ro, rerr := p.Services.Rollout(ctx, m.rel.ServiceID); rerr != nil || !past(ro, m.rel) {
				p.unanswered(m.rel, err)
				return written, false
			}
			err = nil
		}
		if err != nil {
			r.events = append(r.events, p.finish(m.rel, Event{Kind: Failed, Phase: PhaseUpdate, Reason: err.Error(), Resumed: r.resumed}, true))
			refused = append(refused, m)
			continue
		}
		written = append(written, m)
	}
	if len(refused) > 0 {
		r.failed = "a spec write"
		if len(written) > 0 {
			// One refused is remembered too, or the next cycle would
			// deploy it alone beside the members unwound.
			for _, m := range refused {
				if err := p.Ledger.MarkFailed(ctx, m.rel.ServiceID, m.rel.To, "its group failed: its spec write was refused"); err != nil {
					p.Log.Error("remember failed digest", "service", m.rel.ServiceName, "to_digest", m.rel.To, "err", err)
				}
			}
		}
	}
	return written, true
}

// stopped ends a run that stopped at its writes: each member not written
// gets an unreported "waiting" outcome (a caller waiting hears that it
// resumes; the cycle counts Docker's outage). Their records say whether
// their hooks ran.
func (r *run) stopped(ms, written []*member) {
	for _, m := range ms {
		if !slices.Contains(written, m) {
			r.events = append(r.events, Event{Kind: Failed, Release: m.rel, Phase: PhaseUpdate, Resumed: r.resumed, waiting: true,
				Reason: "no outcome yet: Docker did not take the spec write, or the updater is stopping; the next cycle carries the deploy on from its record"})
		}
	}
}

// follow judges each written member's rollout, rolling back what is not
// healthy. false: the updater is stopping, every record stays.
func (r *run) follow(ctx context.Context, written []*member) bool {
	for _, m := range written {
		if m.ev.Kind == Failed {
			continue // its canary failed, and was reverted
		}
		ev, final := r.p.settle(ctx, m.rel, cmp.Or(m.promotedAt, m.rel.Started), r.resumed, r.revert(m))
		if !final {
			if ev.waiting {
				r.events = append(r.events, ev) // Docker gone: counted, not reported
			}
			return false
		}
		m.ev = ev
		if ev.Kind == Failed && r.failed == "" {
			r.failed = m.rel.ServiceName
		}
	}
	return true
}

// close reports each written member's outcome and removes its record,
// unwinding first a member that promoted when another failed, then prunes
// what the successes made unused.
func (r *run) close(ctx context.Context, written []*member) {
	p := r.p
	var closed []Event
	for _, m := range written {
		ev := m.ev
		if r.failed != "" && ev.Kind == Succeeded {
			ev = p.unwind(ctx, m.rel, fmt.Sprintf("rolled back with its group: %s failed", r.failed), r.revert(m))
			ev.Resumed = r.resumed
			if ctx.Err() != nil {
				// Stopping, or the lease lost: the rest resume from their
				// records; those closed already are outcomes.
				r.events = append(r.events, closed...)
				return
			}
		}
		if m.rel.Rollback && ev.Kind == Succeeded {
			p.quarantine(ctx, m.rel)
		}
		r.seal(ctx, m, ev)
		closed = append(closed, p.finish(m.rel, ev, true))
	}
	r.events = append(r.events, closed...)
	p.prune(ctx, closed...)
}

func releasesOf(ms []*member) []Release {
	rels := make([]Release, len(ms))
	for i, m := range ms {
		rels[i] = m.rel
	}
	return rels
}
