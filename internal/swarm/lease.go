package swarm

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// The lease makes one updater act per scope when two run by mistake (two
// replicas, or a rescheduled task overlapping the old one). It is a config
// object in Swarm's Raft store whose labels name the holder and when its
// hold ends. Swarm lets a config's labels change only with the version
// that was read, so taking an expired lease is a compare-and-set: of two
// updaters racing for it, one write wins and the other is refused.
const (
	leaseHolderLabel  = "io.updater.holder"
	leaseExpiresLabel = "io.updater.expires"
	kindLease         = "lease"
)

// Acquire takes or renews the lease for holder until now+ttl. It returns
// false, without error, while another holder's lease runs.
func (s *Swarm) Acquire(ctx context.Context, holder string, ttl time.Duration) (bool, error) {
	name := "updater-lease-" + s.scope()
	now := time.Now()
	labels := map[string]string{
		kindLabel: kindLease, scopeLabel: s.scope(),
		leaseHolderLabel: holder, leaseExpiresLabel: strconv.FormatInt(now.Add(ttl).UnixMilli(), 10),
	}
	res, err := s.api.ConfigInspect(ctx, name, client.ConfigInspectOptions{})
	if isNotFound(err) {
		_, err := s.api.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
			Annotations: swarm.Annotations{Name: name, Labels: labels}, Data: []byte("updater lease\n")}})
		if isConflict(err) {
			return false, nil // another updater created it first
		}
		if err != nil {
			return false, fmt.Errorf("create lease %s: %w", name, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read lease %s: %w", name, err)
	}
	c := res.Config
	expires, _ := strconv.ParseInt(c.Spec.Labels[leaseExpiresLabel], 10, 64)
	if c.Spec.Labels[leaseHolderLabel] != holder && now.UnixMilli() < expires {
		return false, nil
	}
	spec := c.Spec
	spec.Labels = labels
	if _, err := s.api.ConfigUpdate(ctx, c.ID, client.ConfigUpdateOptions{Version: c.Version, Spec: spec}); err != nil {
		if isOutOfSequence(err) {
			return false, nil // someone else wrote it since we read it
		}
		return false, fmt.Errorf("take lease %s: %w", name, err)
	}
	return true, nil
}

// Release gives the lease up if holder has it, so another updater need
// not wait for it to expire.
func (s *Swarm) Release(ctx context.Context, holder string) error {
	name := "updater-lease-" + s.scope()
	res, err := s.api.ConfigInspect(ctx, name, client.ConfigInspectOptions{})
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read lease %s: %w", name, err)
	}
	if res.Config.Spec.Labels[leaseHolderLabel] != holder {
		return nil
	}
	if _, err := s.api.ConfigRemove(ctx, res.Config.ID, client.ConfigRemoveOptions{}); err != nil && !isNotFound(err) {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}
