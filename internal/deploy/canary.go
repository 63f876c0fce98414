package deploy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// The canary stage of a release run (updater.canary, canary_labels.go),
// between the write and follow: a member labelled with a canary is
// written so that Swarm's own update moves only its first Canary.Tasks
// tasks and then waits (Canaries.Canary); once those run the new digest,
// the query is evaluated every Canary.Interval over Canary.Window; then
// the update is let finish with the service's own update settings
// (Canaries.Promote) and followed as any rollout, or the service is
// written back to the digest it ran (Canaries.Revert) and the new one
// quarantined.
//
// Why Revert and not Swarm's rollback: Swarm keeps one previous spec.
// Before the promotion it is the spec before the canary, after it the
// canary's own (the new image), so from then on `rollback` would return
// to the new version. A canary member's every rollback (a failed canary,
// a failed rollout or probe or bake after the promotion, its group's
// unwind, Swarm's own rollback to the canary spec) is therefore the
// explicit write of the old digest with the service's own settings.
//
// Restart safety: the analysis' start is noted in the run's record
// (StageCanary, when on the managers' clock). A resumed run whose spec is
// still in its canary form (Rollout.Canary) judges the rest of the window
// from there, the whole window when the record does not say (never a
// promotion unjudged); one whose spec was promoted follows the rollout.

// Canaries writes a service's spec for a canary and out of it; a Swarm
// adapter keeps the service's own update settings aside in the spec
// meanwhile (Rollout.Canary tells).
type Canaries interface {
	// Canary is Services.Update with Swarm's update set to move tasks
	// tasks and then wait: the canary.
	Canary(ctx context.Context, t Target, image string, creds Credentials, tasks int) error
	// Promote writes image (the canary's) again with the service's own
	// update settings back: Swarm moves the other tasks as it would.
	Promote(ctx context.Context, t Target, image string, creds Credentials) error
	// Revert writes image (the digest the service ran before, pinned)
	// with the service's own update settings: every task of the new
	// digest is replaced.
	Revert(ctx context.Context, t Target, image string, creds Credentials) error
	// Seal writes the spec again as it is (image, pinned, what it runs
	// now) once the decision's rollout was judged: Swarm's previous spec
	// is then the decided one, so `docker service rollback` restarts
	// nothing, where it would else return to the canary's (after a revert,
	// start the rejected version again). It refuses a spec not on image.
	Seal(ctx context.Context, t Target, image string, creds Credentials) error
}

// Metrics evaluates a canary's query (Prometheus in production).
type Metrics interface {
	// Query is expr's one value at at; any error (unreachable, a query
	// error, no series or several, not a number) is inconclusive.
	Query(ctx context.Context, expr string, at time.Time) (float64, error)
}

// StageCanary: the canary's tasks ran the new digest and its analysis
// began at Release.StageAt; a resumed run judges what is left of the
// window.
const StageCanary Stage = "canary"

// PhaseCanary is the canary's analysis.
const PhaseCanary Phase = "canary"

// canaryTime bounds the canary stages of targets: each canary's tasks
// converging (a rollout's timeout) and its window, one after another.
func (p *Pipeline) canaryTime(targets []Target) time.Duration {
	var d time.Duration
	for _, t := range targets {
		if t.Canary.Tasks > 0 {
			d += p.Timeout + t.Canary.Window + t.Canary.Interval
		}
	}
	return d
}

// uncanaried refuses, as a label error, the deploys of services labelled
// with a canary when this updater has no Prometheus to judge one: found
// before anything runs.
func (p *Pipeline) uncanaried(targets []Target) {
	if p.Metrics != nil && p.Canaries != nil {
		return
	}
	for i := range targets {
		if t := &targets[i]; t.Canary.Tasks > 0 {
			t.HooksErr = errors.Join(t.HooksErr, fmt.Errorf("label %s is set, but this updater has no Prometheus to judge a canary: set UPDATER_PROMETHEUS_URL", LabelCanary))
			t.Canary = Canary{}
		}
	}
}

// revert is how m is rolled back: nil (Swarm's rollback to the previous
// spec) unless it was written as a canary.
func (r *run) revert(m *member) func(context.Context) error {
	if !m.canary || r.p.Canaries == nil {
		return nil
	}
	return func(ctx context.Context) error {
		if m.rel.From == "" {
			// Unpinned before: no digest to write back. Before the
			// promotion Swarm's previous spec is the one before the
			// canary, so its rollback is the way back.
			if !m.promoted {
				return r.p.Services.Rollback(ctx, m.rel.ServiceID)
			}
			return fmt.Errorf("no digest to return to: the spec was not pinned before the deploy, and Swarm's previous spec is the canary's")
		}
		return r.p.Canaries.Revert(ctx, m.t, Pin(m.rel.Ref, m.rel.From), m.creds)
	}
}

// canaries runs the canary stage of each member of ms written as a canary
// and not promoted yet. false: the run stops here, every record kept.
func (r *run) canaries(ctx context.Context, ms []*member) bool {
	for _, m := range ms {
		if !m.canary || m.promoted {
			continue
		}
		if failed := r.failed; failed != "" {
			// Another member failed: this canary is not promoted, and
			// waiting on its long update delay would gain nothing.
			if !r.abort(ctx, m, "not promoted: "+failed+" failed") {
				return false
			}
			r.failed = failed
			continue
		}
		if m.t.Canary.Tasks == 0 || r.p.Metrics == nil {
			// A resumed canary whose service lost its label (or is no
			// longer watched), or an updater without a Prometheus now:
			// nothing to judge it by, so back it goes.
			why := "the service is no longer labelled with a canary to judge it by"
			if r.p.Metrics == nil {
				why = "this updater has no Prometheus to judge the canary by (UPDATER_PROMETHEUS_URL is not set)"
			}
			if !r.abort(ctx, m, why) {
				return false
			}
			continue
		}
		ok, stop := r.canary(ctx, m)
		if stop {
			return false
		}
		if !ok {
			continue // m.ev says why; close unwinds the others
		}
		if !r.p.confirm(ctx) {
			return false
		}
		if err := r.p.Canaries.Promote(ctx, m.t, Pin(m.rel.Ref, m.rel.To), m.creds); err != nil {
			if ctx.Err() != nil {
				return false
			}
			// Whether it landed or not, the spec says: the run's rollback
			// of a canary is its own write, good either way.
			if !r.abort(ctx, m, "promote the canary: "+err.Error()) {
				return false
			}
			continue
		}
		m.promoted, m.promotedAt = true, r.p.now()
	}
	return true
}

// canary waits for m's canary tasks to run the new digest, then judges
// them over the window. ok: promote; !ok: m.ev is the failure (rolled
// back). stop: the run must stop where it is.
func (r *run) canary(ctx context.Context, m *member) (ok, stop bool) {
	p, c := r.p, m.t.Canary
	var tasks, baseline []string
	var last Rollout
	v, why, err := p.watch(ctx, m.rel.ServiceID, p.now().Add(p.Timeout), func(ro Rollout) (bool, verdict, string) {
		last = ro
		v, why := canaryReady(recent(ro, m.rel.Started), m.rel.To, c.Tasks)
		if v == healthy {
			tasks, baseline = splitTasks(ro, m.rel.To)
		}
		return v != pending, v, why
	})
	switch {
	case ctx.Err() != nil:
		return false, true
	case errors.Is(err, ErrUnavailable):
		r.events = append(r.events, dockerGone(m.rel, PhaseCanary, r.resumed, err))
		return false, true
	case err != nil:
		return false, !r.abort(ctx, m, "the canary's tasks did not run the new version: "+err.Error())
	case v == superseded:
		r.superseded(ctx, m, last, why)
		return false, false
	case v != healthy:
		return false, !r.abort(ctx, m, "the canary's tasks failed: "+why)
	}

	start := m.canaryAt
	if start.IsZero() {
		start = p.now()
		if err := p.Journal.Reached(context.WithoutCancel(ctx), m.rel, StageCanary); err != nil {
			// A restart then judges the whole window again: later, not
			// looser.
			p.Log.Warn("note in the deploy record that its canary's analysis began", "deploy_id", m.rel.ID, "service", m.rel.ServiceName, "err", err)
		}
	}
	end := start.Add(c.Window)
	expr := c.Expr(m.rel.ServiceName, m.rel.To, tasks, baseline)
	p.Log.Info("canary judged", "deploy_id", m.rel.ID, "service", m.rel.ServiceName, "tasks", len(tasks), "of", len(tasks)+len(baseline),
		"until", end, "query", expr, "bound", c.Bound.String())
	failures := 0
	for {
		// Every evaluation comes an interval after the one before, the
		// first an interval into the window: a canary task that just
		// started has served little or nothing yet, and Prometheus has
		// scraped it once or not at all (an empty answer is inconclusive,
		// which fails closed). The last one is at the window's end, or at
		// once when a resumed run finds the window over.
		t := time.NewTimer(min(c.Interval, max(end.Sub(p.now()), 0)))
		select {
		case <-ctx.Done():
			t.Stop()
			return false, true
		case <-t.C:
		}
		now := p.now()
		ro, err := p.Services.Rollout(ctx, m.rel.ServiceID)
		switch {
		case ctx.Err() != nil:
			return false, true
		case err == nil:
			// A canary task Swarm gave up on ends it: the query would
			// judge the ones left.
			if v, why := canaryReady(recent(ro, m.rel.Started), m.rel.To, c.Tasks); v != healthy && v != pending {
				if v == superseded {
					r.superseded(ctx, m, ro, why)
					return false, false
				}
				return false, !r.abort(ctx, m, fmt.Sprintf("the canary's tasks failed %s into its analysis: %s", now.Sub(start).Round(time.Second), why))
			}
		}
		val, qerr := p.Metrics.Query(ctx, expr, now)
		if ctx.Err() != nil {
			return false, true
		}
		left := max(end.Sub(now), 0).Round(time.Second)
		step := Step{Phase: PhaseCanary, Until: end, Done: len(tasks), Total: len(tasks) + len(baseline)}
		switch {
		case qerr != nil && c.OnError == OnErrorPromote:
			step.Detail = "inconclusive (counted as a pass: on-error=promote): " + qerr.Error()
		case qerr != nil:
			return false, !r.abort(ctx, m, fmt.Sprintf("the canary's analysis was inconclusive %s into it, so it fails closed: %s", now.Sub(start).Round(time.Second), qerr))
		case c.Bound.Holds(val):
			step.Detail = fmt.Sprintf("%s %s · %s left", formatValue(val), c.Bound, left)
		default:
			failures++
			step.Detail = fmt.Sprintf("%s, not %s (%d of %d failures allowed) · %s left", formatValue(val), c.Bound, failures, c.Failures, left)
			if failures >= c.Failures {
				return false, !r.abort(ctx, m, fmt.Sprintf("the canary's query gave %s, not %s, %s into its analysis (%d failed evaluations): %s",
					formatValue(val), c.Bound, now.Sub(start).Round(time.Second), failures, expr))
			}
		}
		p.report(Event{Kind: Progress, Release: m.rel, Phase: PhaseCanary, Resumed: r.resumed, Step: &step})
		if !now.Before(end) {
			return true, false
		}
	}
}

// superseded ends m's canary when someone else wrote the spec (another
// image): theirs now, so it is not rolled back, but the canary's update
// settings would hold their update after its first tasks for a year:
// their image is written with the service's own settings (Revert).
func (r *run) superseded(ctx context.Context, m *member, ro Rollout, why string) {
	m.ev, r.failed = Event{Kind: Failed, Phase: PhaseCanary, Reason: why, Resumed: r.resumed}, m.rel.ServiceName
	if !ro.Canary || ro.Image == "" || !r.p.confirm(ctx) {
		return
	}
	if err := r.p.Canaries.Revert(ctx, m.t, ro.Image, m.creds); err != nil {
		m.ev.Reason += "; give the spec its own update settings back: " + err.Error()
	} else {
		m.ev.Reason += "; its own update settings are back, with the image written"
	}
	m.canary = false // not ours to seal
}

// abort writes m back to the digest it ran, quarantines the new one and
// makes why its outcome (PhaseCanary); the run's other members are
// unwound by close. false: the run stopped during the rollback.
func (r *run) abort(ctx context.Context, m *member, why string) bool {
	return r.reject(ctx, m, PhaseCanary, why)
}

// seal leaves m's spec as the run decided it (Canaries.Seal) once its
// outcome is known: promoted, or back on the digest it ran. A failure to
// seal costs only what `docker service rollback` would do: logged.
func (r *run) seal(ctx context.Context, m *member, ev Event) {
	p := r.p
	if !m.canary || p.Canaries == nil || !p.confirm(ctx) {
		return
	}
	var image string
	switch {
	case ev.Kind == Succeeded:
		image = Pin(m.rel.Ref, m.rel.To)
	case ev.RolledBack && m.rel.From != "":
		image = Pin(m.rel.Ref, m.rel.From)
	default:
		return // not known to be on either: a person must look, not a write
	}
	if err := p.Canaries.Seal(ctx, m.t, image, m.creds); err != nil {
		p.Log.Warn("seal the spec after a canary: `docker service rollback` would return to the canary's spec", "deploy_id", m.rel.ID, "service", m.rel.ServiceName, "err", err)
	}
}

// canaryReady judges a canary's first tasks: healthy once at least n of
// the desired tasks run want (Swarm then waits, its update "updating"),
// as judge does for a whole rollout otherwise.
func canaryReady(ro Rollout, want string, n int) (verdict, string) {
	switch v, why := judge(ro, want); v {
	case failing, rollingBack, rolledBack, stuck, superseded, healthy:
		return v, why
	}
	ready := 0
	for _, t := range ro.Tasks {
		if _, d := SplitImage(t.Image); d == want && t.Desired == "running" && t.State == "running" {
			ready++
		}
	}
	if ready >= n {
		return healthy, ""
	}
	return notYet(ro, want)
}

// splitTasks are the IDs of the desired tasks that run want (the
// canary) and of those that do not (the baseline), for the query.
func splitTasks(ro Rollout, want string) (canary, baseline []string) {
	for _, t := range ro.Tasks {
		if t.Desired != "running" {
			continue
		}
		if _, d := SplitImage(t.Image); d == want {
			canary = append(canary, t.ID)
		} else {
			baseline = append(baseline, t.ID)
		}
	}
	return canary, baseline
}

// formatValue writes a measured value as people read it.
func formatValue(v float64) string { return strconv.FormatFloat(v, 'g', 4, 64) }
