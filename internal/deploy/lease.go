package deploy

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"
)

// ErrStandby means another updater holds the lease for this scope, so
// this one does nothing: two updaters acting at once would deploy twice.
var ErrStandby = errors.New("another updater holds the lease; standing by")

// Lease is the swarm-wide hold that lets one updater act per scope.
type Lease interface {
	// Acquire takes or renews the lease for holder until now+ttl; false
	// while another holder's lease runs.
	Acquire(ctx context.Context, holder string, ttl time.Duration) (bool, error)
	Release(ctx context.Context, holder string) error
}

// Keeper holds the lease for one updater: it renews it every TTL/3 and
// gives it up when ctx ends, so a successor takes over at once rather than
// after the TTL. A holder that dies stops renewing, and its lease expires.
type Keeper struct {
	Lease  Lease
	Holder string
	TTL    time.Duration
	Log    *slog.Logger

	held    atomic.Bool
	renewed atomic.Int64 // when the lease was last taken or renewed, unix ms
	known   atomic.Bool  // whether a first answer has been logged
}

// Held reports whether this updater holds the lease now: taken, and
// renewed within its TTL (a renewal failing for longer means another
// updater may have taken it over).
func (k *Keeper) Held() bool {
	return k.held.Load() && time.Since(time.UnixMilli(k.renewed.Load())) < k.TTL
}

// Run keeps the lease until ctx ends. The first attempt is made before it
// returns the first time through, so a caller can check Held right after
// starting it with Acquire.
func (k *Keeper) Run(ctx context.Context) {
	t := time.NewTicker(k.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if k.held.Swap(false) {
				rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := k.Lease.Release(rctx, k.Holder); err != nil {
					k.Log.Warn("release lease", "err", err)
				}
			}
			return
		case <-t.C:
			k.Acquire(ctx)
		}
	}
}

// Acquire tries once, logging only changes: taking the lease, losing it,
// standing by.
func (k *Keeper) Acquire(ctx context.Context) {
	ok, err := k.Lease.Acquire(ctx, k.Holder, k.TTL)
	if err != nil {
		// Docker unreachable: the hold runs out by itself; until it does,
		// no other updater can have taken it.
		k.Log.Debug("renew lease", "err", err)
		return
	}
	if ok {
		k.renewed.Store(time.Now().UnixMilli())
	}
	// Both swaps always run: a short-circuit left known unset on the
	// first take, which then logged twice.
	first := !k.known.Swap(true)
	if was := k.held.Swap(ok); was != ok || first {
		if ok {
			k.Log.Info("lease taken: this updater acts", "holder", k.Holder)
		} else {
			k.Log.Warn("lease held by another updater: standing by", "holder", k.Holder)
		}
	}
}
