package deploy

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Release policies hold a digest the tag moved to until it may deploy:
// outside a deploy window (updater.window, UPDATER_WINDOWS), inside a
// freeze (updater.freeze, UPDATER_FREEZE), or before it has stayed on its
// tag for the service's cooldown (updater.cooldown). A held digest is not
// deployed, reported once, planned as ActHeld with when it becomes
// eligible, and deployed by the first cycle after that: the newest digest
// the tag points to then, not every one seen meanwhile. A person's
// approval or deploy overrides a window; a freeze only a forced deploy.

// ActHeld is the action of a service whose new digest a policy holds.
const ActHeld Action = "held"

// Held is the event of a digest held by a policy, reported once per
// digest; Reason says until when and why.
const Held Kind = "held"

// Hold is a policy that allows deploys at some times only.
type Hold interface {
	// Eligible reports whether a deploy may go at at; when not, next is
	// when it may (zero: not within the policy's horizon) and why says
	// which window or freeze holds it, in words for people.
	Eligible(at time.Time) (ok bool, next time.Time, why string)
}

// Sightings remembers, outside the process (Swarm), when a service's tag
// was first seen pointing to a digest: the cooldown counts from then.
type Sightings interface {
	// Seen is when digest was first seen on t's tag: now, noted, when it
	// had not been seen before (replacing the digest noted before it).
	// With note false nothing is written: zero when not seen before.
	Seen(ctx context.Context, t Target, digest string, now time.Time, note bool) (time.Time, error)
}

// ErrFrozen refuses a person's deploy during a freeze, unless forced.
var ErrFrozen = errors.New("a freeze holds deploys")

// policies holds back the deploys plans would start that a window, a
// freeze or a cooldown does not let go now. A plan that passed an approval
// (a person said yes) is held by a freeze only.
// With note false (a dry run) nothing is noted or reported.
func (p *Pipeline) policies(ctx context.Context, plans []Plan, note bool) []Plan {
	now := p.now()
	var report []Plan
	for i := range plans {
		pl := &plans[i]
		if pl.Action != ActDeploy {
			continue
		}
		ok, next, why := p.eligible(ctx, pl.Target, pl.Want, now, pl.Target.Hooks.Approve, note)
		if ok {
			continue
		}
		pl.Action, pl.Reason, pl.EligibleAt = ActHeld, why, next
		report = append(report, *pl)
	}
	holdGroupsHeld(plans)
	if !note {
		return plans
	}
	p.mu.Lock()
	if p.heldSeen == nil {
		p.heldSeen = map[string]string{}
	}
	var fresh []Plan
	for _, pl := range report {
		if p.heldSeen[pl.Target.ID] != pl.Want {
			p.heldSeen[pl.Target.ID] = pl.Want
			fresh = append(fresh, pl)
		}
	}
	for _, pl := range plans {
		if pl.Action != ActHeld && pl.Action != ActError && pl.Action != ActDeploying {
			delete(p.heldSeen, pl.Target.ID) // held again later: reported again
		}
	}
	p.mu.Unlock()
	for _, pl := range fresh {
		p.report(Event{Kind: Held, Release: pl.Target.release("", pl.Want, now), Reason: pl.Reason})
	}
	return plans
}

// eligible applies t's policies to a deploy of digest at now; approved
// deploys (a person's yes) skip the windows.
func (p *Pipeline) eligible(ctx context.Context, t Target, digest string, now time.Time, approved, note bool) (bool, time.Time, string) {
	hold := t.Policy
	if approved {
		hold = t.Freeze
	}
	// The cooldown's clock starts when the digest is first seen, whatever
	// holds it besides: asked first, so a window does not delay it.
	var cooled time.Time // when the cooldown ends; zero: none, or over
	var coolWhy string
	if t.Cooldown > 0 {
		if p.Sightings == nil {
			return false, time.Time{}, "the service is labelled with a cooldown, but this updater cannot remember when it saw a digest"
		}
		first, err := p.Sightings.Seen(ctx, t, digest, now, note)
		if err != nil {
			// Fail closed: a cooldown that can't be counted is not over.
			return false, time.Time{}, "held: when the digest was first seen is unknown: " + err.Error()
		}
		if first.IsZero() {
			first = now // a dry run: the cooldown would start now
		}
		if until := first.Add(t.Cooldown); now.Before(until) {
			cooled = until
			coolWhy = fmt.Sprintf("held until %s: the digest has been on the tag for %s of its %s cooldown (updater.cooldown)",
				until.UTC().Format(time.RFC3339), now.Sub(first).Round(time.Second), t.Cooldown)
		}
	}
	if hold != nil {
		if ok, next, why := hold.Eligible(now); !ok {
			if !cooled.IsZero() && next.Before(cooled) {
				next = eligibleFrom(hold, cooled)
			}
			return false, next, why
		}
	}
	if !cooled.IsZero() {
		if hold != nil {
			return false, eligibleFrom(hold, cooled), coolWhy
		}
		return false, cooled, coolWhy
	}
	return true, time.Time{}, ""
}

// eligibleFrom is the first time at or after at that hold lets a deploy
// go (zero when none within its horizon).
func eligibleFrom(hold Hold, at time.Time) time.Time {
	if ok, next, _ := hold.Eligible(at); !ok {
		return next
	}
	return at
}

// holdGroupsHeld holds every member of a group while one member is held.
func holdGroupsHeld(plans []Plan) {
	held := map[string]Plan{}
	for _, pl := range plans {
		if k := groupKey(pl.Target); pl.Action == ActHeld && k != "service:"+pl.Target.ID {
			held[k] = pl
		}
	}
	for i := range plans {
		pl := &plans[i]
		if h, ok := held[groupKey(pl.Target)]; ok && pl.Action == ActDeploy {
			pl.Action, pl.EligibleAt = ActHeld, h.EligibleAt
			pl.Reason = "held with its group: " + h.Target.Name + " is " + h.Reason
		}
	}
}

// frozen is why a person's deploy of members may not go now ("" when it
// may): a freeze holds one of them.
func frozen(members []Target, now time.Time) string {
	for _, m := range members {
		if m.Freeze == nil {
			continue
		}
		if ok, _, why := m.Freeze.Eligible(now); !ok {
			return m.Name + ": " + why
		}
	}
	return ""
}
