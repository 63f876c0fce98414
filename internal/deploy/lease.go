package deploy

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// ErrStandby means another updater holds the lease for this scope, so
// this one does nothing: two updaters acting at once would deploy twice.
var ErrStandby = errors.New("another updater holds the lease; standing by")

// LeaseState is the lease as read.
type LeaseState struct {
	// Holder names the updater that wrote the lease last; "" when there
	// is no lease.
	Holder string
	// Version changes with every write of the lease; "" when there is
	// none.
	Version string
	// TTL is how long Holder lets its lease go unrenewed before it counts
	// it lost; 0 when it did not say.
	TTL time.Duration
}

// Lease is the swarm-wide hold that lets one updater act per scope: a
// record written only by compare-and-set. It keeps no time: when a lease
// may be taken over is the Keeper's decision, on its own clock.
type Lease interface {
	ReadLease(ctx context.Context) (LeaseState, error)
	// WriteLease writes holder and its ttl over the version read ("" to
	// create the lease); false, without error, when another write came
	// first.
	WriteLease(ctx context.Context, holder string, ttl time.Duration, over string) (bool, error)
	// Release removes the lease if holder holds it.
	Release(ctx context.Context, holder string) error
}

// Keeper holds the lease for one updater. It renews it four times per TTL
// and gives it up when Run's ctx ends, so a successor takes over at once
// rather than after the TTL.
//
// No wall clock is compared between machines: another holder's lease is
// taken over only once the same version of it has gone unrenewed for the
// TTL by this updater's own monotonic clock, counted from when it first
// read that version. The holder, for its part, counts its hold from just
// before it sent the renewal that worked (the write cannot land earlier,
// so no reader's count can start earlier), and gives it up a quarter TTL
// before any reader could take over, leaving a write it checked the lease
// for just before the time to land.
type Keeper struct {
	Lease  Lease
	Holder string
	TTL    time.Duration
	Log    *slog.Logger
	// Now is the clock; nil means time.Now. Only the time between two of
	// its readings matters, never what it says.
	Now func() time.Time

	mu      sync.Mutex
	renewed time.Time // when the write that last took or renewed the lease was sent; zero: not held
	seen    string    // another holder's lease version, as last read
	seenAt  time.Time // when that version was first read
	known   bool      // whether a first answer has been logged
	logged  bool      // the answer logged last: acting or standing by
	other   string    // while standing by, the holder named in the log
}

func (k *Keeper) now() time.Time {
	if k.Now != nil {
		return k.Now()
	}
	return time.Now()
}

// Held reports whether this updater holds the lease now: taken, and the
// last renewal that worked was sent less than three quarters of the TTL
// ago. A pipeline checks it before every write.
func (k *Keeper) Held() bool {
	now := k.now()
	k.mu.Lock()
	defer k.mu.Unlock()
	return !k.renewed.IsZero() && now.Sub(k.renewed) < k.TTL-k.TTL/4
}

// Run keeps the lease until ctx ends. Call Acquire once before, so the
// first answer is known when Run starts.
func (k *Keeper) Run(ctx context.Context) {
	t := time.NewTicker(k.TTL / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			k.mu.Lock()
			had := !k.renewed.IsZero()
			k.renewed = time.Time{}
			k.mu.Unlock()
			if had {
				rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := k.Lease.Release(rctx, k.Holder); err != nil {
					k.Log.Warn("release lease", "err", err)
				}
			}
			return
		case <-t.C:
			func() {
				// A panic costs one renewal (the hold runs out by itself),
				// not the process.
				defer recovered(k.Log, "a lease renewal")
				k.Acquire(ctx)
			}()
		}
	}
}

// Acquire tries once to take or renew the lease, logging only changes:
// taking the lease, losing it, standing by.
func (k *Keeper) Acquire(ctx context.Context) {
	st, err := k.Lease.ReadLease(ctx)
	if err != nil {
		// Docker unreachable: the hold runs out by itself; until a reader
		// has seen it unrenewed for the TTL, none can have taken it over.
		k.Log.Debug("renew lease", "err", err)
		return
	}
	if st.Version != "" && st.Holder != k.Holder && !k.unrenewed(st) {
		k.settle(false, st.Holder)
		return
	}
	sent := k.now()
	ok, err := k.Lease.WriteLease(ctx, k.Holder, k.TTL, st.Version)
	if err != nil {
		// The write may have landed, or not: the hold runs out as above.
		k.Log.Debug("renew lease", "err", err)
		return
	}
	other := ""
	if ok {
		k.mu.Lock()
		k.renewed = sent
		k.mu.Unlock()
	} else if now, err := k.Lease.ReadLease(ctx); err == nil {
		// Another updater wrote between the read and the write: the log
		// names it, not the holder read before (or none).
		other = now.Holder
	}
	k.settle(ok, other)
}

// unrenewed reports whether st, another holder's lease, has gone
// unrenewed for the TTL (the holder's, when longer than this updater's)
// by this updater's clock, counted from the first read of its version.
func (k *Keeper) unrenewed(st LeaseState) bool {
	now := k.now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if st.Version != k.seen {
		k.seen, k.seenAt = st.Version, now
	}
	return now.Sub(k.seenAt) >= max(k.TTL, st.TTL)
}

// settle records whether the lease is this updater's after an attempt and
// logs a change: taken, lost, or held by another holder than the one
// named last. Both lines name the holder, so an operator looking at a
// standby's log finds which updater acts ("" when it could not be read).
func (k *Keeper) settle(ok bool, other string) {
	k.mu.Lock()
	if !ok {
		k.renewed = time.Time{} // another holder's now: no margin left to wait out
	} else {
		other = ""
	}
	changed := !k.known || k.logged != ok || other != k.other
	k.known, k.logged, k.other = true, ok, other
	k.mu.Unlock()
	if !changed {
		return
	}
	if ok {
		k.Log.Info("lease taken: this updater acts", "holder", k.Holder)
	} else {
		k.Log.Warn("lease held by another updater: standing by", "holder", other, "self", k.Holder)
	}
}

// ErrLeaseLost is why a run's context ended when this updater no longer
// holds the lease.
var ErrLeaseLost = errors.New("this updater lost the lease")

type fenceKey struct{}

// fence ends the context of work done under the lease, once.
type fence struct {
	once   sync.Once
	cancel context.CancelCauseFunc
}

// fenced returns ctx for work done under the lease. It ends, with
// ErrLeaseLost as its cause, as soon as confirm finds the lease gone:
// right before a write, or at a look every WatchInterval meanwhile (while
// a rollout is followed or a hook job waited for). A run that lost the
// lease so stops where it is by the paths a stopping updater takes: its
// record kept, nothing reported, its job removed; the holder resumes it
// from the record. stop ends ctx and waits for the looks to end.
func (p *Pipeline) fenced(ctx context.Context) (_ context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	ctx = context.WithValue(ctx, fenceKey{}, &fence{cancel: cancel})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if p.Acting == nil {
			return
		}
		t := time.NewTicker(max(p.WatchInterval, time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.confirm(ctx)
			}
		}
	}()
	return ctx, func() { cancel(context.Canceled); <-done }
}

// confirm reports whether this updater may write now: ctx is live and
// the lease is held (a local look at the keeper, no Docker call). When the
// lease is not held, it ends ctx (see fenced).
func (p *Pipeline) confirm(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	if p.Acting == nil || p.Acting() {
		return true
	}
	if f, ok := ctx.Value(fenceKey{}).(*fence); ok {
		f.once.Do(func() {
			p.Log.Warn("lease lost: deploys stop where they are, their records kept for the lease holder to resume")
			f.cancel(ErrLeaseLost)
		})
	}
	return false
}

// lost reports whether ctx ended because the lease was lost.
func lost(ctx context.Context) bool { return errors.Is(context.Cause(ctx), ErrLeaseLost) }
