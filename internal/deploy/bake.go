package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The verify stage of a release run (between follow and close): each
// member whose rollout Swarm and judge call healthy is probed
// (updater.probe.*), then the members are baked together (updater.bake,
// the longest a member asks for): watched that long for a task of the new
// digest that stops, and probed again now and then. A member that fails
// either is rolled back and its digest quarantined, as a failed rollout's
// is; the others of its group are then unwound by close. "Succeeded" is
// reported only after the bake.
//
// A bake is noted in the run's records (StageBaking, when on the
// managers' clock), so an updater restarted mid-bake bakes only what is
// left, and does not probe again what it probed before. A newer digest of
// one of the run's services, planned by a cycle during the bake, ends the
// bake as succeeded so far: that digest is deployed next, when the run
// has landed.

// BakeProbeEvery is how often the probes run again during a bake.
const BakeProbeEvery = 30 * time.Second

// verifyTime is how long the probes and the bakes of targets may take:
// in each wave the members are probed one after another, then baked
// together (probing again every BakeProbeEvery); waves one after another.
func verifyTime(targets []Target) time.Duration {
	var total time.Duration
	for _, wave := range targetWaves(targets) {
		var probes, bake time.Duration
		for _, t := range wave {
			if t.Probe != nil {
				probes += probeTime(*t.Probe)
			}
			bake = max(bake, t.Bake)
		}
		if bake > 0 && probes > 0 {
			probes += time.Duration(bake/BakeProbeEvery+1) * probes
		}
		total += probes + bake
	}
	return total
}

// targetWaves groups targets by updater.wave (one group without waves).
func targetWaves(targets []Target) map[int][]Target {
	out := map[int][]Target{}
	for _, t := range targets {
		out[t.Hooks.Wave] = append(out[t.Hooks.Wave], t)
	}
	return out
}

// probeTime bounds one probe of every task: each probe's timeout and the
// interval between them, and a minute for the probe job to start and go.
func probeTime(p Probe) time.Duration {
	return time.Duration(p.Count)*(p.Interval+p.Timeout) + time.Minute
}

// verify probes and bakes the members ms whose rollouts were judged
// healthy; nothing when one failed already (close unwinds the others).
// false: the run stops here, every record kept (the updater stopping,
// the lease lost, Docker gone: then r.events has the waiting outcome).
func (r *run) verify(ctx context.Context, ms []*member) bool {
	if r.failed != "" {
		return true
	}
	for _, m := range ms {
		if m.t.Probe == nil || !m.baking.IsZero() {
			continue // a resumed bake probed before it began
		}
		r.p.report(Event{Kind: Progress, Release: m.rel, Phase: PhaseProbe, Resumed: r.resumed, Step: &Step{Phase: PhaseProbe, State: StepStarted}})
		why, ok := r.probe(ctx, m)
		if !ok {
			return false
		}
		if why != "" {
			return r.reject(ctx, m, PhaseProbe, why)
		}
		r.p.report(Event{Kind: Progress, Release: m.rel, Phase: PhaseProbe, Resumed: r.resumed, Step: &Step{Phase: PhaseProbe, State: StepSucceeded}})
	}
	return r.bake(ctx, ms)
}

// probe probes m's new tasks once: why is "" when each passed, else what
// failed, for the report. ok is false when the run must stop here.
func (r *run) probe(ctx context.Context, m *member) (why string, ok bool) {
	p := r.p
	if p.Prober == nil {
		return "the service is labelled with a probe, but this updater cannot run probes", true
	}
	res, err := p.Prober.Probe(ctx, m.t, m.rel.To, *m.t.Probe)
	switch {
	case ctx.Err() != nil:
		return "", false
	case errors.Is(err, ErrUnavailable):
		r.events = append(r.events, dockerGone(m.rel, PhaseProbe, r.resumed, err))
		return "", false
	case err != nil:
		// Fail closed: a version nobody could probe is not promoted.
		return "the probe could not run: " + err.Error(), true
	case len(res) == 0:
		return "the probe found no task of the new version to probe", true
	}
	for _, x := range res {
		if !x.OK {
			return probeFailure(*m.t.Probe, x), true
		}
	}
	return "", true
}

// probeFailure says how a task's probe failed: which task, the URL (its
// secrets masked by the prober), the status or error, the body's start.
func probeFailure(spec Probe, x ProbeResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "probe of task %s", shortID(x.Task))
	if x.Node != "" {
		fmt.Fprintf(&b, " on %s", x.Node)
	}
	fmt.Fprintf(&b, ": GET %s ", x.URL)
	if x.Status != 0 {
		fmt.Fprintf(&b, "answered %d, expected %s", x.Status, spec.Expect)
	} else {
		fmt.Fprintf(&b, "failed: %s", x.Err)
	}
	fmt.Fprintf(&b, " (after %d of %d probes in a row passed)", x.Passed, spec.Count)
	if body := strings.TrimSpace(x.Body); body != "" {
		if len(body) > ProbeBodyMax {
			body = body[:ProbeBodyMax]
		}
		fmt.Fprintf(&b, "; body: %q", body)
	}
	return b.String()
}

// reject rolls m back, quarantines its digest and makes why (in phase)
// its outcome; the run's other members are unwound by close. false: the
// run stopped during the rollback (its records stay).
func (r *run) reject(ctx context.Context, m *member, phase Phase, why string) bool {
	ev := r.p.unwind(ctx, m.rel, why, r.revert(m))
	if ctx.Err() != nil {
		return false
	}
	if ev.RolledBack {
		ev.Phase = phase // else PhaseRollback: the rollback did not finish
	}
	ev.Resumed = r.resumed
	m.ev, r.failed = ev, m.rel.ServiceName
	return true
}

// bake watches ms for the longest bake any asks for, from when it began
// (now, or as a resumed record says).
func (r *run) bake(ctx context.Context, ms []*member) bool {
	p := r.p
	var d time.Duration
	for _, m := range ms {
		d = max(d, m.t.Bake)
	}
	if d == 0 {
		return true
	}
	// A bake resumes only when every member was baking: then from the
	// latest start among them, so none is credited with time another
	// baked. Else it begins now for all.
	start, resumed := time.Time{}, true
	for _, m := range ms {
		if m.baking.IsZero() {
			resumed = false
			break
		}
		if m.baking.After(start) {
			start = m.baking
		}
	}
	if !resumed {
		start = p.now()
	}
	// What failed before the bake is the rollout's business (judged
	// already); for a resumed bake, what failed before it began.
	known := map[string]map[string]bool{}
	for _, m := range ms {
		ro, err := p.Services.Rollout(ctx, m.rel.ServiceID)
		switch {
		case ctx.Err() != nil:
			return false
		case errors.Is(err, ErrNotFound):
			m.ev, r.failed = Event{Kind: Failed, Phase: PhaseBake, Resumed: r.resumed, Reason: "the service was removed before its bake"}, m.rel.ServiceName
			return true
		case err != nil:
			// Without this look, a task the rollout lost (and judge
			// allowed) would be taken for one that failed in the bake.
			r.events = append(r.events, dockerGone(m.rel, PhaseBake, r.resumed, err))
			return false
		}
		known[m.rel.ServiceID] = map[string]bool{}
		for _, t := range ro.Tasks {
			if stoppedTask(t, m.rel.To) && (!resumed || t.Since.Before(start)) {
				known[m.rel.ServiceID][t.ID] = true
			}
		}
		if !resumed {
			if err := p.Journal.Reached(context.WithoutCancel(ctx), m.rel, StageBaking); err != nil {
				p.Log.Warn("note in the deploy record that its bake began (a restart would bake it again in full)", "deploy_id", m.rel.ID, "service", m.rel.ServiceName, "err", err)
			}
		}
	}
	until := start.Add(d)
	for _, m := range ms {
		p.report(Event{Kind: Progress, Release: m.rel, Phase: PhaseBake, Resumed: r.resumed, Step: &Step{Phase: PhaseBake, State: StepStarted, Until: until}})
	}
	var moved <-chan struct{} // nil outside a run: never
	if f := flightOf(ctx); f != nil {
		moved = f.moved
	}
	lastProbe := p.now()
	var lastErr error
	for {
		lastErr = nil
		for _, m := range ms {
			ro, err := p.Services.Rollout(ctx, m.rel.ServiceID)
			switch {
			case ctx.Err() != nil:
				return false
			case errors.Is(err, ErrNotFound):
				m.ev, r.failed = Event{Kind: Failed, Phase: PhaseBake, Resumed: r.resumed, Reason: "the service was removed during the bake"}, m.rel.ServiceName
				return true
			case err != nil:
				if lastErr == nil {
					p.Log.Warn("inspect a service during its bake", "service", m.rel.ServiceName, "err", err)
				}
				lastErr = err
				continue
			}
			if _, dg := SplitImage(ro.Image); dg != m.rel.To {
				// Someone else changed the spec: no longer this deploy's to
				// judge, nor to roll back.
				m.ev, r.failed = Event{Kind: Failed, Phase: PhaseBake, Resumed: r.resumed,
					Reason: fmt.Sprintf("the spec changed during the bake (its image is now %s): not judged, not rolled back", ro.Image)}, m.rel.ServiceName
				return true
			}
			if why := bakeFailure(ro, m.rel.To, known[m.rel.ServiceID]); why != "" {
				return r.reject(ctx, m, PhaseBake, fmt.Sprintf("%s, %s into the %s bake", why, p.now().Sub(start).Round(time.Second), d))
			}
		}
		if p.now().Sub(lastProbe) >= BakeProbeEvery && p.now().Before(until) {
			lastProbe = p.now()
			for _, m := range ms {
				if m.t.Probe == nil {
					continue
				}
				why, ok := r.probe(ctx, m)
				if !ok {
					return false
				}
				if why != "" {
					return r.reject(ctx, m, PhaseBake, fmt.Sprintf("%s, %s into the %s bake", why, p.now().Sub(start).Round(time.Second), d))
				}
			}
		}
		if !p.now().Before(until) {
			break
		}
		t := time.NewTimer(min(p.WatchInterval, max(until.Sub(p.now()), time.Millisecond)))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-moved:
			t.Stop()
			p.Log.Info("bake ended early: a newer digest is to deploy; this one succeeded so far", "service", ms[0].rel.ServiceName, "baked", p.now().Sub(start).Round(time.Second).String())
			until, moved = p.now(), nil // one last look, then the end
		case <-t.C:
		}
	}
	if lastErr != nil {
		// The bake ended without a last look: no verdict on the image.
		for _, m := range ms {
			r.events = append(r.events, dockerGone(m.rel, PhaseBake, r.resumed, lastErr))
		}
		return false
	}
	baked := p.now().Sub(start)
	for _, m := range ms {
		// Its success is the bake's now: the last step it passed.
		m.ev.Baked, m.ev.Phase = baked, PhaseBake
		p.report(Event{Kind: Progress, Release: m.rel, Phase: PhaseBake, Resumed: r.resumed, Step: &Step{Phase: PhaseBake, State: StepSucceeded, Until: until}})
	}
	return true
}

// stoppedTask reports whether t, a task of digest, stopped by itself:
// exited (complete), failed (a crash, an unhealthy container: Swarm
// fails those), rejected, or orphaned. A task shut down by Swarm (scaled
// down, replaced by a newer spec) did not fail.
func stoppedTask(t Task, digest string) bool {
	if _, d := SplitImage(t.Image); d != digest {
		return false
	}
	switch t.State {
	case "complete", "failed", "rejected", "orphaned":
		return true
	}
	return false
}

// bakeFailure says which task of digest stopped during the bake ("" when
// none did): known are the tasks that had stopped before it.
func bakeFailure(ro Rollout, digest string, known map[string]bool) string {
	for _, t := range ro.Tasks {
		if known[t.ID] || !stoppedTask(t, digest) {
			continue
		}
		s := fmt.Sprintf("task %s", shortID(t.ID))
		if t.Node != "" {
			s += " on " + t.Node
		}
		s += " " + t.State
		if t.Err != "" {
			s += ": " + t.Err
		}
		return s
	}
	return ""
}

// shortID is a Docker object ID cut as the docker CLI shows it.
func shortID(id string) string { return id[:min(len(id), 12)] }
