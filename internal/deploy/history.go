package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// HistoryEntry is one finished deploy of a service, as its durable
// history keeps it (Histories): enough to tell what ran when, and to roll
// back to a digest that succeeded.
type HistoryEntry struct {
	ID      string    `json:"id"`
	Ref     string    `json:"ref"` // repo:tag the deploy followed
	From    string    `json:"from_digest,omitempty"`
	To      string    `json:"to_digest"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended"`
	Outcome Outcome   `json:"outcome"`
	// Phase is the phase it failed in; "" for a success.
	Phase Phase `json:"phase,omitempty"`
	// Reason is why it failed, capped at HistoryReasonMax bytes.
	Reason string `json:"reason,omitempty"`
	// Rollback is true for a rollback a person asked for
	// (RollbackService); By names who.
	Rollback bool   `json:"rollback,omitempty"`
	By       string `json:"by,omitempty"`
}

// HistoryMax is how many deploys a service's history keeps, newest
// first; HistoryReasonMax caps each one's reason, so a history stays
// small in Swarm's store whatever the reasons say.
const (
	HistoryMax       = 20
	HistoryReasonMax = 300
)

// Histories keeps each service's last deploys somewhere that outlives the
// updater (Swarm itself in production), removed with the service's other
// records (Sweeper.ForgetService).
type Histories interface {
	// History is the service's deploys, newest first, at most HistoryMax.
	History(ctx context.Context, serviceID string) ([]HistoryEntry, error)
	// AddHistory puts e first in the service's history, replacing an
	// entry of the same ID (a deploy reported again after a restart), and
	// drops what is past HistoryMax.
	AddHistory(ctx context.Context, serviceID string, e HistoryEntry) error
}

// ErrNoRollbackTarget means a rollback was asked for without a digest and
// the service's history has no earlier success to return to.
var ErrNoRollbackTarget = errors.New("no earlier successful deploy to roll back to")

// RollbackRequest is a person's rollback of one service (the API, the
// CLI, the status page, a Slack button).
type RollbackRequest struct {
	// Service is the service's name or ID.
	Service string
	// To is the digest to return to; "" means the last digest that
	// succeeded before the one the service runs now, from its history.
	To string
	// By names who asked, for the reports and the history: "api",
	// "cli", "page", "slack:U123".
	By string
}

// ServiceHistory is the durable history of the watched service name (or
// ID), newest first.
func (p *Pipeline) ServiceHistory(ctx context.Context, name string) ([]HistoryEntry, error) {
	t, err := p.watched(ctx, name)
	if err != nil {
		return nil, err
	}
	if p.History == nil {
		return nil, nil
	}
	h, err := p.History.History(ctx, t.ID)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", t.Name, err)
	}
	return h, nil
}

// watched is the watched service named name (or of that ID).
func (p *Pipeline) watched(ctx context.Context, name string) (Target, error) {
	targets, err := p.Lister.List(ctx)
	if err != nil {
		return Target{}, fmt.Errorf("list services: %w", err)
	}
	i := slices.IndexFunc(targets, func(t Target) bool { return t.Name == name || t.ID == name })
	if i < 0 {
		return Target{}, fmt.Errorf("service %q is not watched: it must exist, carry the opt-in label and belong to the configured stack: %w", name, ErrNotFound)
	}
	return targets[i], nil
}

// Rolling is a rollback RollbackService or StartRollback began.
type Rolling struct {
	// Release names the service, the ref, the digest rolled away from
	// (From) and the one returned to (To); its ID is set once recorded.
	Release Release
	// Done gets the rollback's outcome once, when it lands (buffered: no
	// one need read it).
	Done <-chan Event
}

// StartRollback checks req and starts the rollback of a watched service
// to an earlier digest of its repository, then returns; the rollback's
// outcome arrives on Rolling.Done. It is a deploy like any other
// (recorded, written, judged, probed and baked as labelled, reported
// once, with Release.Rollback set), but without its hooks: a backup or
// migration is never run backwards. Once it lands, the digest rolled
// away from is quarantined until the tag moves on. The digest must still
// be in the registry. A request the updater cannot honour (the service
// not watched, no earlier success in its history, the digest gone from
// the registry, a deploy of the service running) changes nothing and
// returns why: ErrNotFound, ErrNoRollbackTarget, ErrBusy, or the
// registry's error.
func (p *Pipeline) StartRollback(ctx context.Context, req RollbackRequest) (Rolling, error) {
	return Rolling{}, errors.New("rollback on demand: not built yet")
}

// RollbackService is StartRollback waiting for the outcome.
func (p *Pipeline) RollbackService(ctx context.Context, req RollbackRequest) (Event, error) {
	r, err := p.StartRollback(ctx, req)
	if err != nil {
		return Event{}, err
	}
	select {
	case ev := <-r.Done:
		return ev, nil
	case <-ctx.Done():
		return Event{}, fmt.Errorf("rollback of %s: %w", r.Release.ServiceName, ctx.Err())
	}
}
