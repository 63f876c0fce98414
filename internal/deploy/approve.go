package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Approvals. A service labelled updater.approve=manual does not deploy a
// new digest by itself: the deploy waits, as a pending approval, until a
// person approves or rejects it. The rules, all decided here:
//
//   - a new digest opens one approval per service, reported once (Pending);
//   - a newer digest supersedes it: the new one waits instead;
//   - approved, it deploys at the next cycle that still finds the tag on
//     that digest (a person approved those bytes, not whatever comes next);
//   - rejected, or not approved within ApprovalTimeout, the digest is
//     remembered in the Ledger like a failed one: not asked about again
//     until the tag moves, and `updater deploy` can still deploy it;
//   - a group waits as a whole while any member awaits approval, since a
//     group exists so that it never runs half old, half new.
//
// Open approvals live in memory: an updater restarted with one pending
// asks again (once) at its first cycle.

// ActAwait is the action of a service whose new digest waits for approval.
const ActAwait Action = "awaiting-approval"

// DefaultApprovalTimeout is how long a deploy waits for a person when
// Pipeline.ApprovalTimeout is not set: a working day and a night.
const DefaultApprovalTimeout = 24 * time.Hour

// ErrDecided is the answer to approving or rejecting an approval that is
// no longer pending: decided already, expired or superseded.
var ErrDecided = errors.New("no longer pending")

// ApprovalState is where an approval stands.
type ApprovalState string

const (
	ApprovalPending    ApprovalState = "pending"
	ApprovalApproved   ApprovalState = "approved"   // waits for the next cycle to deploy it
	ApprovalDeployed   ApprovalState = "deployed"   // approved, and its deploy began (see DeployID)
	ApprovalRejected   ApprovalState = "rejected"   // a person said no
	ApprovalExpired    ApprovalState = "expired"    // nobody said yes in time
	ApprovalSuperseded ApprovalState = "superseded" // the tag moved on, or the service no longer needs it
)

// Approval is one deploy held for a person's decision.
type Approval struct {
	// ID is what a person approves or rejects by.
	ID          string        `json:"id"`
	ServiceID   string        `json:"service_id"`
	ServiceName string        `json:"service"`
	Stack       string        `json:"stack,omitempty"`
	Ref         string        `json:"ref"`
	From        string        `json:"from_digest,omitempty"`
	To          string        `json:"to_digest"`
	State       ApprovalState `json:"state"`
	Requested   time.Time     `json:"requested"`
	Expires     time.Time     `json:"expires"`
	Decided     time.Time     `json:"decided,omitzero"`
	// Reason says why an approval was closed without a person, when so.
	Reason string `json:"reason,omitempty"`
	// DeployID is the deploy an approved request became.
	DeployID string `json:"deploy_id,omitempty"`
}

// release is the deploy a is about, as reports name it (its ID the
// approval's, started when asked for).
func (a Approval) release() Release {
	return Release{ID: a.ID, ServiceID: a.ServiceID, ServiceName: a.ServiceName, Stack: a.Stack, Ref: a.Ref,
		From: a.From, To: a.To, Started: a.Requested}
}

// keepDecided bounds the decided approvals kept for people to look at.
const keepDecided = 50

// approvalBook holds the open approvals (at most one per service) and the
// recently decided ones.
type approvalBook struct {
	mu   sync.Mutex
	open map[string]*Approval // by service ID: pending or approved
	done []Approval           // decided, oldest first
}

// close moves the open approval of a service to the decided ones.
// The caller holds b.mu.
func (b *approvalBook) close(serviceID string, state ApprovalState, now time.Time, reason string) Approval {
	a := *b.open[serviceID]
	delete(b.open, serviceID)
	a.State, a.Decided, a.Reason = state, now, reason
	b.done = append(b.done, a)
	if n := len(b.done) - keepDecided; n > 0 {
		b.done = slices.Delete(b.done, 0, n)
	}
	return a
}

// lookup finds the pending approval id. The caller holds b.mu.
func (b *approvalBook) lookup(id string, now time.Time) (*Approval, error) {
	for _, a := range b.open {
		if a.ID != id {
			continue
		}
		switch {
		case a.State != ApprovalPending:
			return nil, fmt.Errorf("deploy %s is %s: %w", id, a.State, ErrDecided)
		case !now.Before(a.Expires):
			return nil, fmt.Errorf("deploy %s expired at %s: %w", id, a.Expires.UTC().Format(time.RFC3339), ErrDecided)
		}
		return a, nil
	}
	for _, a := range b.done {
		if a.ID == id {
			return nil, fmt.Errorf("deploy %s is %s: %w", id, a.State, ErrDecided)
		}
	}
	return nil, fmt.Errorf("no deploy %s awaits approval: %w", id, ErrNotFound)
}

func (p *Pipeline) approvalTimeout() time.Duration {
	if p.ApprovalTimeout > 0 {
		return p.ApprovalTimeout
	}
	return DefaultApprovalTimeout
}

// Approvals returns the open approvals, then the recently decided ones,
// newest first in each part. A pending one past its deadline shows as
// expired even before a cycle has closed it.
func (p *Pipeline) Approvals() []Approval {
	now := p.now()
	b := &p.approvals
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Approval, 0, len(b.open)+len(b.done))
	for _, a := range b.open {
		c := *a
		if c.State == ApprovalPending && !now.Before(c.Expires) {
			c.State = ApprovalExpired
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(x, y Approval) int { return y.Requested.Compare(x.Requested) })
	for i := len(b.done) - 1; i >= 0; i-- {
		out = append(out, b.done[i])
	}
	return out
}

// Approve lets the pending deploy id go ahead. It deploys at the next
// cycle that finds the service's tag still on the approved digest; the
// caller should ask for one (Trigger.Approve does).
func (p *Pipeline) Approve(id string) (Approval, error) {
	now := p.now()
	b := &p.approvals
	b.mu.Lock()
	defer b.mu.Unlock()
	a, err := b.lookup(id, now)
	if err != nil {
		return Approval{}, err
	}
	a.State, a.Decided = ApprovalApproved, now
	p.Log.Info("deploy approved", "deploy_id", a.ID, "service", a.ServiceName, "image", a.Ref, "to_digest", a.To)
	return *a, nil
}

// Reject turns the pending deploy id down. The digest is remembered in the
// Ledger like a failed one before the approval closes, so a rejection that
// could not be recorded leaves the deploy pending rather than asked about
// again after a restart.
func (p *Pipeline) Reject(ctx context.Context, id string) (Approval, error) {
	b := &p.approvals
	b.mu.Lock()
	a, err := b.lookup(id, p.now())
	var c Approval
	if err == nil {
		c = *a
	}
	b.mu.Unlock()
	if err != nil {
		return Approval{}, err
	}
	if err := p.Ledger.MarkFailed(ctx, c.ServiceID, c.To, "rejected by a person"); err != nil {
		return Approval{}, fmt.Errorf("remember rejected digest of %s: %w", c.ServiceName, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// It may have moved on while the ledger was written: a newer digest
	// superseded it, or someone approved it. The record then only keeps
	// a digest the tag has left from being asked about again.
	if a := b.open[c.ServiceID]; a == nil || a.ID != c.ID || a.State != ApprovalPending {
		return Approval{}, fmt.Errorf("deploy %s changed while it was rejected: %w", id, ErrDecided)
	}
	c = b.close(c.ServiceID, ApprovalRejected, p.now(), "")
	p.Log.Info("deploy rejected", "deploy_id", c.ID, "service", c.ServiceName, "image", c.Ref, "to_digest", c.To)
	return c, nil
}

// gate holds back the deploys of services that wait for approval, opening,
// superseding and expiring approvals as the plans say. full is true when
// plans cover every watched service: then approvals of services no longer
// watched are closed too.
func (p *Pipeline) gate(ctx context.Context, plans []Plan, full bool) []Plan {
	if p.DryRun {
		return hold(plans)
	}
	now, timeout := p.now(), p.approvalTimeout()
	var opened, dropped, expired []Approval
	b := &p.approvals
	b.mu.Lock()
	if b.open == nil {
		b.open = map[string]*Approval{}
	}
	planned := make(map[string]bool, len(plans))
	for i := range plans {
		pl := &plans[i]
		t := pl.Target
		planned[t.ID] = true
		a := b.open[t.ID]
		switch {
		case pl.Action == ActError || pl.Action == ActDeploying:
			// The registry did not answer, or a deploy of the service is
			// running: nothing is decided now, and an open approval stays
			// as it is (the check after the run decides).
			continue
		case pl.Action != ActDeploy || !t.Hooks.Approve:
			if a != nil {
				dropped = append(dropped, b.close(t.ID, ApprovalSuperseded, now, moot(*pl)))
			}
			continue
		}
		if a != nil && a.To != pl.Want {
			dropped = append(dropped, b.close(t.ID, ApprovalSuperseded, now, "superseded by "+Short(pl.Want)))
			a = nil
		}
		if a == nil {
			a = &Approval{ID: newID(), ServiceID: t.ID, ServiceName: t.Name, Stack: t.Stack, Ref: t.Ref(),
				From: t.Digest(), To: pl.Want, State: ApprovalPending, Requested: now, Expires: now.Add(timeout)}
			b.open[t.ID] = a
			opened = append(opened, *a)
		}
		if a.State == ApprovalApproved {
			continue // goes ahead, unless its group waits (below)
		}
		pl.Action = ActAwait
		if now.Before(a.Expires) {
			pl.Reason = fmt.Sprintf("deploy %s waits for approval until %s", a.ID, a.Expires.UTC().Format(time.RFC3339))
		} else {
			pl.Reason = fmt.Sprintf("deploy %s was not approved within %s", a.ID, timeout)
			expired = append(expired, *a)
		}
	}
	if full {
		for id := range b.open {
			if !planned[id] {
				dropped = append(dropped, b.close(id, ApprovalSuperseded, now, "the service is no longer watched"))
			}
		}
	}
	// An approval that lets a deploy go stays approved until the deploy is
	// recorded (deployed): a deploy that can't begin now uses nothing up.
	holdGroups(plans)
	b.mu.Unlock()

	for _, a := range opened {
		p.report(Event{Kind: Pending, Release: a.release(), Reason: "waits for approval until " + a.Expires.UTC().Format(time.RFC3339)})
	}
	for _, a := range dropped {
		p.Log.Info("approval closed: "+a.Reason, "deploy_id", a.ID, "service", a.ServiceName, "to_digest", a.To)
	}
	for _, a := range expired {
		p.expire(ctx, a, timeout)
	}
	p.held(plans)
	return plans
}

// expire turns down an approval nobody gave in time. Like a rejection it
// is written to the Ledger first; if that fails the approval stays open
// (and refuses approval) until a later cycle records it.
func (p *Pipeline) expire(ctx context.Context, a Approval, timeout time.Duration) {
	why := fmt.Sprintf("not approved within %s", timeout)
	if err := p.Ledger.MarkFailed(ctx, a.ServiceID, a.To, why); err != nil {
		p.Log.Error("remember expired approval", "deploy_id", a.ID, "service", a.ServiceName, "to_digest", a.To, "err", err)
		return
	}
	b := &p.approvals
	b.mu.Lock()
	defer b.mu.Unlock()
	if o := b.open[a.ServiceID]; o != nil && o.ID == a.ID && o.State == ApprovalPending {
		b.close(a.ServiceID, ApprovalExpired, p.now(), why)
		p.Log.Info("approval expired: "+why, "deploy_id", a.ID, "service", a.ServiceName, "to_digest", a.To)
	}
}

// deployed uses up the approvals of the releases just recorded: each
// becomes the deploy it let go (DeployID). Until then it stays approved,
// so a deploy that could not begin (Docker gone at its record, another run
// in the way) is tried again without a second approval.
func (p *Pipeline) deployed(rels ...Release) {
	b := &p.approvals
	b.mu.Lock()
	defer b.mu.Unlock()
	now := p.now()
	for _, rel := range rels {
		if a := b.open[rel.ServiceID]; a != nil && a.State == ApprovalApproved && a.To == rel.To {
			b.close(rel.ServiceID, ApprovalDeployed, now, "")
			b.done[len(b.done)-1].DeployID = rel.ID
		}
	}
}

// hold is the gate without its memory, for a dry run: it says which
// deploys would wait for approval.
func hold(plans []Plan) []Plan {
	for i := range plans {
		if pl := &plans[i]; pl.Action == ActDeploy && pl.Target.Hooks.Approve {
			pl.Action, pl.Reason = ActAwait, "would wait for a person's approval (updater.approve=manual)"
		}
	}
	holdGroups(plans)
	return plans
}

// holdGroups makes every member of a group wait while one member waits
// for approval.
func holdGroups(plans []Plan) {
	waiting := map[string]string{}
	for _, pl := range plans {
		if k := groupKey(pl.Target); pl.Action == ActAwait && k != "service:"+pl.Target.ID {
			waiting[k] = pl.Target.Name
		}
	}
	for i := range plans {
		pl := &plans[i]
		if who, ok := waiting[groupKey(pl.Target)]; ok && pl.Action == ActDeploy {
			pl.Action, pl.Reason = ActAwait, "waits with its group: "+who+" awaits approval"
		}
	}
}

// moot says why an open approval is no longer needed.
func moot(pl Plan) string {
	switch {
	case !pl.Target.Hooks.Approve:
		return "the service no longer asks for approval"
	case pl.Action == ActNone:
		return "the service runs what its tag points to"
	case pl.Action == ActSkipFailed:
		return "the digest failed or was turned down"
	}
	return "nothing to deploy: " + string(pl.Action)
}
