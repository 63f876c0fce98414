package deploy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"
)

// Action is what a cycle does with one service.
type Action string

const (
	ActDeploy     Action = "deploy"        // the tag moved: deploy the new digest
	ActNone       Action = "up-to-date"    // runs what the tag points to
	ActSkipFailed Action = "skip-failed"   // the tag points to a digest that failed before
	ActUntagged   Action = "skip-untagged" // pinned to a digest with no tag to follow
	ActError      Action = "registry-error"
	// ActDeploying: a deploy of the service (or its group) is running, in
	// this updater or per a record in Swarm; nothing else starts for it
	// until that one has ended.
	ActDeploying Action = "deploying"
)

// Plan is the decision for one service in one cycle.
type Plan struct {
	Target Target
	// Want is the digest the tag points to now ("" when unknown).
	Want   string
	Action Action
	Reason string
	// EligibleAt is when a held digest (ActHeld) may deploy; zero when
	// not held, or when no time within the policy's horizon is.
	EligibleAt time.Time
}

// plan lists the watched services, resolves each distinct tag once, and
// decides what to do with each service. With pushes it plans only the
// services that track one of the pushed tags.
func (p *Pipeline) plan(ctx context.Context, pushes []Push) ([]Plan, map[string]map[string]bool, error) {
	targets, err := p.Lister.List(ctx)
	p.listed(err)
	if err != nil {
		return nil, nil, fmt.Errorf("list services: %w", err)
	}
	p.warn(targets)
	p.unprobed(targets)
	p.uncanaried(targets)
	if len(pushes) > 0 {
		targets = slices.DeleteFunc(targets, func(t Target) bool {
			// A service with a tag policy may follow any tag of its
			// repository: a push of any of them is its business.
			return !slices.ContainsFunc(pushes, func(ps Push) bool {
				return ps.Matches(t.Ref()) || t.Tags != nil && ps.Matches(Repository(t.Ref())+":"+ps.Tag)
			})
		})
	}
	failed, err := p.Ledger.Failed(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("read failed digests: %w", err)
	}
	tagErrs := p.follow(ctx, targets)
	refs := make([]string, 0, len(targets))
	for _, t := range targets {
		if Tagged(t.Ref()) && tagErrs[t.ID] == nil {
			refs = append(refs, t.Ref())
		}
	}
	digests := p.resolve(ctx, refs)
	plans := decide(targets, digests, failed)
	for i := range plans {
		if err := tagErrs[plans[i].Target.ID]; err != nil {
			plans[i].Action, plans[i].Want, plans[i].Reason = ActError, "", err.Error()
		}
	}
	p.saw(plans, len(pushes) == 0)
	return plans, failed, nil
}

// SweepEvery is how often a full cycle asks the Sweeper which services
// have records (a Docker list call per kind), to remove those of services
// gone: records are small, and a minute's delay costs nothing.
const SweepEvery = 10 * time.Minute

// sweep removes, after a full cycle's plan, the records of services that
// no longer exist: nothing else would, and failed digests are read back
// every cycle. A service that exists but is not watched (its label
// removed, another stack) keeps its records, for when it is watched
// again; it is looked up once per process, not every cycle. Without a
// Sweeper only failed digests go.
func (p *Pipeline) sweep(ctx context.Context, plans []Plan, failed map[string]map[string]bool) {
	ids := slices.Collect(maps.Keys(failed))
	p.mu.Lock()
	due := p.Sweeper != nil && (p.swept.IsZero() || p.now().Sub(p.swept) >= SweepEvery)
	if due {
		p.swept = p.now()
	}
	p.mu.Unlock()
	if due {
		recorded, err := p.Sweeper.Recorded(ctx)
		if err != nil {
			p.Log.Warn("list the services the records name; swept next time", "err", err)
		}
		for _, id := range recorded {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	for _, id := range ids {
		p.mu.Lock()
		known := p.exists[id]
		p.mu.Unlock()
		if known || slices.ContainsFunc(plans, func(pl Plan) bool { return pl.Target.ID == id }) {
			continue
		}
		_, err := p.Services.Rollout(ctx, id)
		switch {
		case errors.Is(err, ErrNotFound):
			forget, what := p.Ledger.Forget, "failed-digest records"
			if p.Sweeper != nil {
				forget, what = p.Sweeper.ForgetService, "records"
			}
			if err := forget(ctx, id); err != nil {
				p.Log.Warn("remove the "+what+" of a service that no longer exists; retried next cycle", "service_id", id, "err", err)
				continue
			}
			p.Log.Info("removed the "+what+" of a service that no longer exists", "service_id", id)
		case err == nil:
			p.mu.Lock()
			if p.exists == nil {
				p.exists = map[string]bool{}
			}
			p.exists[id] = true
			p.mu.Unlock()
		}
	}
}

// lookup is one registry answer.
type lookup struct {
	digest string
	err    error
}

// decide is the planning rule, apart from all I/O.
func decide(targets []Target, digests map[string]lookup, failed map[string]map[string]bool) []Plan {
	plans := make([]Plan, 0, len(targets))
	for _, t := range targets {
		pl := Plan{Target: t}
		l, ok := digests[t.Ref()]
		switch {
		case !Tagged(t.Ref()):
			pl.Action, pl.Reason = ActUntagged, "the image is pinned to a digest without a tag: nothing to follow"
		case !ok || l.err != nil:
			pl.Action = ActError
			if l.err != nil {
				pl.Reason = l.err.Error()
			}
		case l.digest == t.Digest():
			pl.Want, pl.Action = l.digest, ActNone
		case failed[t.ID][l.digest]:
			pl.Want, pl.Action, pl.Reason = l.digest, ActSkipFailed, "this digest failed before (or a person turned it down); waiting for the tag to move"
		default:
			pl.Want, pl.Action = l.digest, ActDeploy
			if t.Digest() == "" {
				// Without a pinned digest we cannot know what the tasks run;
				// deploying pins it, and every later cycle compares exactly.
				pl.Reason = "the service image carries no digest yet"
			}
		}
		plans = append(plans, pl)
	}
	return plans
}

// resolve asks the registry about each distinct ref once, at most
// Concurrency at a time.
func (p *Pipeline) resolve(ctx context.Context, refs []string) map[string]lookup {
	out := make(map[string]lookup, len(refs))
	// The goroutines write to out, so the loop that starts them must not
	// range over it: that would be a concurrent map iteration and write.
	uniq := make([]string, 0, len(refs))
	for _, r := range refs {
		if _, ok := out[r]; !ok {
			out[r] = lookup{}
			uniq = append(uniq, r)
		}
	}
	n := max(p.Concurrency, 1)
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		sema = make(chan struct{}, n)
	)
	for _, ref := range uniq {
		wg.Add(1)
		sema <- struct{}{}
		go func() {
			defer func() { <-sema; wg.Done() }()
			defer func() {
				// A lookup that panics is a failed lookup, logged, not the
				// end of the process.
				if v := recover(); v != nil {
					p.Log.Error("panic: a registry lookup stopped", "image", ref, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
					mu.Lock()
					out[ref] = lookup{err: fmt.Errorf("look up %s: the lookup panicked: %v", ref, v)}
					mu.Unlock()
				}
			}()
			d, err := p.Registry.Digest(ctx, ref)
			mu.Lock()
			out[ref] = lookup{digest: d, err: err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	for ref, l := range out {
		p.track("registry", ref, l.err)
	}
	return out
}

// outageAfter is how many cycles in a row must fail before a failure is
// an outage. One failed lookup that the next cycle does not repeat is a
// blip: a warning in the log, not an outage and a recovery in Slack (the
// soak, at 12 % of registry requests failing, made 700 such pairs in
// 2,000 cycles).
const outageAfter = 2

// track logs the start and the end of an outage once each, instead of an
// error every cycle while a registry or Docker is down.
// part is "docker" or "registry"; image narrows a registry outage to the
// ref that failed, since one registry can be down while another is up.
func (p *Pipeline) track(part, image string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.outages == nil {
		p.outages = map[string]int{}
	}
	key := part + " " + image
	fails := p.outages[key]
	log := p.Log.With("step", part)
	if image != "" {
		log = log.With("image", image)
	}
	switch {
	case err != nil:
		fails++
		p.outages[key] = fails
		switch {
		case fails < outageAfter:
			log.Warn(part+" failed; retrying next cycle", "err", err)
		case fails == outageAfter:
			log.Error(part+" failing; retrying every cycle, logged again when it recovers", "err", err)
			p.report(Event{Kind: Outage, Part: part, Release: Release{Ref: image}, Reason: err.Error()})
		default:
			log.Debug(part+" still failing", "err", err)
		}
	case fails >= outageAfter:
		delete(p.outages, key)
		log.Info(part + " recovered")
		p.report(Event{Kind: Recovered, Part: part, Release: Release{Ref: image}})
	case fails > 0:
		delete(p.outages, key)
	}
}

// warn says once per service when its update_config makes promotion
// prove less than it could: one line per kind of advice, with how many
// services it is about and the first few names, not a line per service (a
// thousand services without health checks would be three thousand lines
// at start).
func (p *Pipeline) warn(targets []Target) {
	p.mu.Lock()
	if p.warned == nil {
		p.warned = map[string]bool{}
	}
	var none, stopFirst, noRollback []string
	for _, t := range targets {
		if p.warned[t.ID] {
			continue
		}
		p.warned[t.ID] = true
		if !t.Healthcheck {
			none = append(none, t.Name)
		}
		if !t.StartFirst {
			stopFirst = append(stopFirst, t.Name)
		}
		if !t.RollbackOnFailure {
			noRollback = append(noRollback, t.Name)
		}
	}
	p.mu.Unlock()
	advise := func(names []string, msg string) {
		if len(names) == 0 {
			return
		}
		slices.Sort(names)
		const shown = 5
		first := names[:min(len(names), shown)]
		p.Log.Warn(msg, "services", len(names), "service", strings.Join(first, ", ")+map[bool]string{true: ", …", false: ""}[len(names) > shown])
	}
	advise(none, "no health check in the service spec: unless the image defines a HEALTHCHECK, a task counts as healthy as soon as it runs")
	advise(stopFirst, "update_config order is not start-first: the old task stops before the new one proves healthy")
	advise(noRollback, "update_config failure_action is not rollback: the updater rolls back itself, after Swarm pauses or the deploy timeout")
}
