package swarm

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// The lease makes one updater act per scope when two run by mistake (two
// replicas, or a rescheduled task overlapping the old one). It is a config
// object in Swarm's Raft store whose labels name the holder. Swarm lets a
// config's labels change only with the version that was read, so every
// write is a compare-and-set: of two updaters racing for it, one write
// wins and the other is refused. When a lease may be taken over is
// deploy.Keeper's decision, made from the version alone: no time written
// here is read back.
const (
	leaseHolderLabel = "io.updater.holder"
	// leaseTTLLabel is how long the holder lets its lease go unrenewed
	// before it counts it lost: a reader with a shorter TTL of its own
	// waits this long instead.
	leaseTTLLabel = "io.updater.ttl"
	// leaseExpiresLabel is the holder's wall clock plus its TTL. Only
	// updaters older than the version lease take-over read it; it is
	// written so that one of those, run beside this one during an
	// upgrade, does not take a renewed lease as expired.
	leaseExpiresLabel = "io.updater.expires"
	kindLease         = "lease"
)

// leaseData is every lease's data: Swarm refuses a config update that
// changes it.
var leaseData = []byte("updater lease\n")

var _ deploy.Lease = (*Swarm)(nil)

func (s *Swarm) leaseName() string { return "updater-lease-" + s.scope() }

// ReadLease returns who holds the scope's lease and its version (the
// config's ID and Swarm's version index, which moves on every write); a
// zero LeaseState when there is no lease.
func (s *Swarm) ReadLease(ctx context.Context) (deploy.LeaseState, error) {
	c, ok, err := s.store().get(ctx, s.leaseName())
	if err != nil {
		return deploy.LeaseState{}, fmt.Errorf("read lease %s: %w", s.leaseName(), unavailable(err))
	}
	if !ok {
		return deploy.LeaseState{}, nil
	}
	ttl, _ := time.ParseDuration(c.Spec.Labels[leaseTTLLabel]) // 0 from an older updater: the reader's own TTL holds
	return deploy.LeaseState{Holder: c.Spec.Labels[leaseHolderLabel], TTL: ttl,
		Version: c.ID + "/" + strconv.FormatUint(c.Version.Index, 10)}, nil
}

// WriteLease writes holder over the version read ("" creates the lease),
// and reports false, without error, when another write came first.
func (s *Swarm) WriteLease(ctx context.Context, holder string, ttl time.Duration, over string) (bool, error) {
	name := s.leaseName()
	spec := recordSpec(kindLease, name, map[string]string{
		scopeLabel: s.scope(), leaseHolderLabel: holder, leaseTTLLabel: ttl.String(),
		leaseExpiresLabel: strconv.FormatInt(time.Now().Add(ttl).UnixMilli(), 10),
	}, leaseData)
	st := s.store()
	if over == "" {
		err := st.create(ctx, spec)
		if isConflict(err) {
			return false, nil // another updater created it first
		}
		if err != nil {
			return false, fmt.Errorf("create lease %s: %w", name, unavailable(err))
		}
		return true, nil
	}
	id, index, ok := strings.Cut(over, "/")
	version, err := strconv.ParseUint(index, 10, 64)
	if !ok || err != nil {
		return false, fmt.Errorf("write lease %s: version %q is not one ReadLease gave", name, over)
	}
	err = st.relabel(ctx, id, version, spec)
	if isOutOfSequence(err) || isNotFound(err) {
		return false, nil // written or released since it was read
	}
	if err != nil {
		return false, fmt.Errorf("write lease %s: %w", name, unavailable(err))
	}
	return true, nil
}

// Release gives the lease up if holder has it, so another updater need
// not wait out its TTL.
func (s *Swarm) Release(ctx context.Context, holder string) error {
	name := s.leaseName()
	st := s.store()
	c, ok, err := st.get(ctx, name)
	if err != nil {
		return fmt.Errorf("read lease %s: %w", name, err)
	}
	if !ok || c.Spec.Labels[leaseHolderLabel] != holder {
		return nil
	}
	if err := st.remove(ctx, c.ID); err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}
