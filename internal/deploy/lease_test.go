package deploy_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// fakeLease is a lease two keepers can contend for.
type fakeLease struct {
	mu       sync.Mutex
	holder   string
	expires  time.Time
	released []string
	fail     bool
}

var _ deploy.Lease = (*fakeLease)(nil)

func (l *fakeLease) Acquire(_ context.Context, holder string, ttl time.Duration) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail {
		return false, context.DeadlineExceeded
	}
	if l.holder != "" && l.holder != holder && time.Now().Before(l.expires) {
		return false, nil
	}
	l.holder, l.expires = holder, time.Now().Add(ttl)
	return true, nil
}

func (l *fakeLease) Release(_ context.Context, holder string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holder == holder {
		l.holder = ""
		l.released = append(l.released, holder)
	}
	return nil
}

func TestKeeperOneHolder(t *testing.T) {
	lease := &fakeLease{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	a := &deploy.Keeper{Lease: lease, Holder: "a", TTL: time.Minute, Log: quiet}
	b := &deploy.Keeper{Lease: lease, Holder: "b", TTL: time.Minute, Log: quiet}
	a.Acquire(t.Context())
	b.Acquire(t.Context())
	if !a.Held() || b.Held() {
		t.Fatalf("held: a=%v b=%v, want only a", a.Held(), b.Held())
	}

	// a stops cleanly: it releases, and b takes over at its next try.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	cancel()
	<-done
	if a.Held() || len(lease.released) != 1 {
		t.Fatalf("after stopping: a held %v, releases %v", a.Held(), lease.released)
	}
	b.Acquire(t.Context())
	if !b.Held() {
		t.Fatal("b did not take the released lease")
	}
}

// A holder whose renewals fail keeps counting itself as holder until its
// TTL has passed (no other updater can take the lease before), and stops
// once it has: by then another updater may have taken over.
func TestKeeperLapsesWhenRenewalFails(t *testing.T) {
	const ttl = 500 * time.Millisecond // far above the few µs between the renewals below
	lease := &fakeLease{}
	k := &deploy.Keeper{Lease: lease, Holder: "a", TTL: ttl, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	taken := time.Now()
	k.Acquire(t.Context())
	if !k.Held() {
		t.Fatal("not held after a successful acquire")
	}
	lease.mu.Lock()
	lease.fail = true
	lease.mu.Unlock()
	k.Acquire(t.Context())
	if !k.Held() {
		t.Fatalf("not held right after one failed renewal, %s into a %s TTL", time.Since(taken), ttl)
	}
	deadline := time.Now().Add(5 * time.Second)
	for k.Held() {
		k.Acquire(t.Context())
		if time.Now().After(deadline) {
			t.Fatalf("still held 5 s after renewals began to fail, with a %s TTL", ttl)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if held := time.Since(taken); held < ttl {
		t.Fatalf("lapsed %s after the last renewal, before its %s TTL ran out", held, ttl)
	}
}

// A pipeline that does not hold the lease does nothing.
func TestCycleStandsByWithoutLease(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.p.Acting = func() bool { return false }
	if _, err := w.p.Cycle(t.Context()); err != deploy.ErrStandby {
		t.Fatalf("Cycle = %v, want ErrStandby", err)
	}
	if _, err := w.p.DeployService(t.Context(), "web"); err != deploy.ErrStandby {
		t.Fatalf("DeployService = %v, want ErrStandby", err)
	}
	if len(w.updates) != 0 || len(w.events) != 0 {
		t.Fatalf("updates %v, events %v while standing by", w.updates, w.kinds())
	}
}
