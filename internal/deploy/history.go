package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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
	// drops what is past HistoryMax. It caps what it keeps: the reason at
	// HistoryReasonMax bytes.
	AddHistory(ctx context.Context, serviceID string, e HistoryEntry) error
}

// ErrNoRollbackTarget means a rollback was asked for without a digest and
// the service's history has no earlier success to return to.
var ErrNoRollbackTarget = errors.New("no earlier successful deploy to roll back to")

// ErrInvalid marks a person's request that cannot be done as asked (a
// rollback to what runs already, to something that is not a digest, of a
// service pinned without a tag): the error says what would be right.
var ErrInvalid = errors.New("cannot be done as asked")

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
	// (From) and the one returned to (To); its ID is "" (the run records
	// it later): the outcome on Done carries it.
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
	p.running.Lock()
	defer p.running.Unlock()
	if p.Acting != nil && !p.Acting() {
		return Rolling{}, ErrStandby
	}
	if p.DryRun {
		return Rolling{}, fmt.Errorf("a dry run changes nothing: no rollback: %w", ErrInvalid)
	}
	base := ctx
	ctx, unfence := p.fenced(ctx)
	defer unfence()
	// Records in flight go first, as for a deploy: one of this service's
	// that no run carries on would make two deploys of one service.
	_, left, err := p.resumeAll(ctx, base)
	if err != nil {
		return Rolling{}, err
	}
	t, err := p.watched(ctx, req.Service)
	if err != nil {
		return Rolling{}, err
	}
	if i := slices.IndexFunc(left, func(r Release) bool { return r.ServiceID == t.ID }); i >= 0 {
		return Rolling{}, fmt.Errorf("rollback %s: deploy %s of it is in flight and could not be carried on now (Docker not answering); try again once it has ended: %w", t.Name, left[i].ID, ErrBusy)
	}
	ref, _ := SplitImage(t.Image)
	// What it rolls away from is quarantined once it lands: a spec not
	// pinned yet runs what its tag points to now.
	from := t.Digest()
	if from == "" && Tagged(ref) {
		if from, err = p.Registry.Digest(ctx, ref); err != nil {
			return Rolling{}, fmt.Errorf("rollback %s: look up the digest it rolls away from, nothing changed: %w", t.Name, err)
		}
	}
	to, ref, err := p.rollbackTarget(ctx, t, req.To, from)
	if err != nil {
		return Rolling{}, err
	}
	// A digest gone from the registry would leave tasks no node can pull:
	// asked first, one HEAD, the service untouched when it fails.
	if _, err := p.Registry.Digest(ctx, Pin(ref, to)); err != nil {
		return Rolling{}, fmt.Errorf("rollback %s to %s: the registry does not serve it, nothing changed: %w", t.Name, to, err)
	}
	m := &member{t: t, want: to, prepared: true, rollback: &req, ref: ref, from: from}
	keys, refs := keysOf([]Target{t})
	f, in := p.launch(base, keys, refs, map[string]string{t.ID: to}, map[string]string{t.ID: from}, nil, []Target{t}, func(ctx context.Context) []Event {
		r := &run{p: p, lead: t}
		if !r.record(ctx, []*member{m}) {
			return r.events
		}
		return r.carry(ctx, []*member{m}, nil)
	})
	if in != nil {
		return Rolling{}, fmt.Errorf("rollback %s: the deploy of %s runs; try again once it has ended: %w", t.Name, strings.Join(in.keys, ", "), ErrBusy)
	}
	done := make(chan Event, 1)
	rel := t.release("", to, p.now())
	rel.Ref, rel.From, rel.Rollback, rel.By = ref, from, true, req.By
	go func() {
		<-f.done
		for _, ev := range f.out {
			if ev.Release.ServiceID == t.ID && !ev.waiting {
				done <- ev
				return
			}
		}
		ev := Event{Kind: Failed, Release: rel, Phase: PhaseUpdate,
			Reason: "no outcome yet: Docker did not answer or the updater is stopping; the next cycle carries the rollback on"}
		if f.lost {
			ev.Reason = "stopped where it was, for the lease holder to carry on"
		}
		done <- ev
	}()
	return Rolling{Release: rel, Done: done}, nil
}

// rollbackTarget is the digest a rollback of t returns to, and the tag
// its record names: to when given (a digest of t's repository), else the
// newest success in t's history that t does not run now and that is not
// quarantined (a digest rolled away from before).
//
// current is the digest it runs (the tag's, for a spec not pinned).
func (p *Pipeline) rollbackTarget(ctx context.Context, t Target, to, current string) (digest, ref string, err error) {
	ref, _ = SplitImage(t.Image)
	if !Tagged(ref) {
		return "", "", fmt.Errorf("rollback %s: it runs %s, pinned without a tag: there is no tag to roll back on: %w", t.Name, t.Image, ErrInvalid)
	}
	if to != "" && !IsDigest(to) {
		return "", "", fmt.Errorf("rollback %s: %q is not a digest: want sha256: and 64 hex digits, as `updater history %s` shows them: %w", t.Name, to, t.Name, ErrInvalid)
	}
	if to != "" && to == current {
		return "", "", fmt.Errorf("rollback %s: it runs %s already, nothing to do: %w", t.Name, to, ErrInvalid)
	}
	var hist []HistoryEntry
	if p.History != nil {
		if hist, err = p.History.History(ctx, t.ID); err != nil && to == "" {
			return "", "", fmt.Errorf("rollback %s: read its history: %w", t.Name, err)
		}
	}
	same := func(e HistoryEntry) bool { return e.Ref != "" && Repository(e.Ref) == Repository(ref) }
	if to != "" {
		// The tag it was deployed with, when the history knows; else the
		// spec's (a digest of another repository fails at the registry).
		if i := slices.IndexFunc(hist, func(e HistoryEntry) bool { return e.To == to && same(e) }); i >= 0 {
			ref = hist[i].Ref
		}
		return to, ref, nil
	}
	failed, err := p.Ledger.Failed(ctx)
	if err != nil {
		return "", "", fmt.Errorf("rollback %s: read its quarantined digests: %w", t.Name, err)
	}
	for _, e := range hist {
		if e.Outcome == OutcomeSucceeded && e.To != current && !failed[t.ID][e.To] && same(e) {
			return e.To, e.Ref, nil
		}
	}
	return "", "", fmt.Errorf("rollback %s: %w in its history (%d deploys kept); name a digest with --to", t.Name, ErrNoRollbackTarget, len(hist))
}

// IsDigest reports whether d has a digest's shape as registries write
// it: sha256: and 64 lowercase hex digits (whether a registry has it is
// another question).
func IsDigest(d string) bool {
	hexPart, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hexPart) != 64 {
		return false
	}
	for _, c := range hexPart {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// quarantine remembers the digest a person's rollback returned from as
// failed, so the next cycle does not deploy it again while the tag still
// points to it; the tag moving on to a digest that deploys forgets it.
func (p *Pipeline) quarantine(ctx context.Context, rel Release) {
	if rel.From == "" {
		return
	}
	why := "rolled back on request"
	if rel.By != "" {
		why += " by " + rel.By
	}
	if err := p.Ledger.MarkFailed(context.WithoutCancel(ctx), rel.ServiceID, rel.From, why); err != nil {
		p.Log.Error("quarantine the digest rolled back from", "service", rel.ServiceName, "digest", rel.From, "err", err)
	}
}

// remember puts a deploy's outcome into its service's history, on a fresh
// context: an outcome reported must be kept even as the run's context
// ends. A history that can't be written costs the record, not the deploy.
func (p *Pipeline) remember(ev Event) {
	if p.History == nil || (ev.Kind != Succeeded && ev.Kind != Failed) || ev.Release.ServiceID == "" {
		return
	}
	rel := ev.Release
	e := HistoryEntry{ID: rel.ID, Ref: rel.Ref, From: rel.From, To: rel.To, Started: rel.Started, Ended: p.now(),
		Outcome: ev.Outcome(), Reason: ev.Reason, Rollback: rel.Rollback, By: rel.By}
	if ev.Kind == Failed {
		e.Phase = ev.Phase
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.History.AddHistory(ctx, rel.ServiceID, e); err != nil {
		p.Log.Warn("keep the deploy in the service's history", "deploy_id", rel.ID, "service", rel.ServiceName, "err", err)
	}
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
