package swarm

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

// leaseOf reads the lease config of s's scope from the engine: who holds
// it, until when, and its version.
func leaseOf(t *testing.T, e *engine, s *Swarm) (holder string, expires time.Time, version uint64) {
	t.Helper()
	c, ok := e.config("updater-lease-" + s.scope())
	if !ok {
		t.Fatal("no lease config")
	}
	ms, err := strconv.ParseInt(c.Spec.Labels[leaseExpiresLabel], 10, 64)
	if err != nil {
		t.Fatalf("lease expiry label %q: %v", c.Spec.Labels[leaseExpiresLabel], err)
	}
	return c.Spec.Labels[leaseHolderLabel], time.UnixMilli(ms), c.Version.Index
}

func TestLeaseTakeRenewAndLose(t *testing.T) {
	e := newEngine(t)
	a, b := e.client(t, Config{Stack: "shop"}), e.client(t, Config{Stack: "shop"})
	ctx := context.Background()

	ok, err := a.Acquire(ctx, "updater-a", time.Minute)
	if err != nil || !ok {
		t.Fatalf("take a free lease: %v, %v", ok, err)
	}
	holder, exp1, v1 := leaseOf(t, e, a)
	if holder != "updater-a" || time.Until(exp1) < 50*time.Second {
		t.Errorf("lease held by %q until %s, want updater-a for a minute", holder, exp1)
	}

	// Another holder is refused while the lease runs, and changes nothing.
	if ok, err := b.Acquire(ctx, "updater-b", time.Minute); err != nil || ok {
		t.Errorf("take a running lease: %v, %v, want refused", ok, err)
	}
	if holder, _, v := leaseOf(t, e, a); holder != "updater-a" || v != v1 {
		t.Errorf("after a refused take: held by %q at version %d, want updater-a at %d", holder, v, v1)
	}

	// The holder renews: same config, a later end, a new version.
	if ok, err := a.Acquire(ctx, "updater-a", 2*time.Minute); err != nil || !ok {
		t.Fatalf("renew: %v, %v", ok, err)
	}
	holder, exp2, v2 := leaseOf(t, e, a)
	if holder != "updater-a" || !exp2.After(exp1) || v2 <= v1 {
		t.Errorf("renewed lease: %q until %s (was %s), version %d (was %d)", holder, exp2, exp1, v2, v1)
	}

	// Another scope has a lease of its own.
	c := e.client(t, Config{Stack: "blog"})
	if ok, err := c.Acquire(ctx, "updater-c", time.Minute); err != nil || !ok {
		t.Errorf("lease of another scope: %v, %v", ok, err)
	}
}

func TestLeaseExpiry(t *testing.T) {
	e := newEngine(t)
	a, b := e.client(t, Config{}), e.client(t, Config{})
	ctx := context.Background()
	if ok, err := a.Acquire(ctx, "updater-a", time.Minute); err != nil || !ok {
		t.Fatalf("take: %v, %v", ok, err)
	}
	// updater-a stopped renewing a while ago: its hold ended a second ago.
	e.with(func() {
		c := e.configByRef("updater-lease-" + a.scope())
		c.Spec.Labels[leaseExpiresLabel] = strconv.FormatInt(time.Now().Add(-time.Second).UnixMilli(), 10)
	})
	if ok, err := b.Acquire(ctx, "updater-b", time.Minute); err != nil || !ok {
		t.Fatalf("take an expired lease: %v, %v", ok, err)
	}
	if holder, _, _ := leaseOf(t, e, a); holder != "updater-b" {
		t.Errorf("expired lease taken, held by %q", holder)
	}
	if ok, err := a.Acquire(ctx, "updater-a", time.Minute); err != nil || ok {
		t.Errorf("the old holder renews a lease taken from it: %v, %v, want refused", ok, err)
	}
}

// Two updaters race for an expired lease: both read it, the first write
// wins, and the second, carrying the version it read, is refused.
func TestLeaseCompareAndSet(t *testing.T) {
	e := newEngine(t)
	a, b := e.client(t, Config{}), e.client(t, Config{})
	ctx := context.Background()
	if ok, err := a.Acquire(ctx, "updater-a", time.Minute); err != nil || !ok {
		t.Fatalf("take: %v, %v", ok, err)
	}
	name := "updater-lease-" + a.scope()
	e.with(func() {
		e.configByRef(name).Spec.Labels[leaseExpiresLabel] = strconv.FormatInt(time.Now().Add(-time.Second).UnixMilli(), 10)
	})
	// Right after b's read, before b's write, updater-c takes the lease.
	e.after("GET /configs/"+name, 1, func() {
		c := e.configByRef(name)
		c.Spec.Labels = map[string]string{kindLabel: kindLease, scopeLabel: a.scope(), leaseHolderLabel: "updater-c",
			leaseExpiresLabel: strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)}
		c.Version.Index++
	})
	if ok, err := b.Acquire(ctx, "updater-b", time.Minute); err != nil || ok {
		t.Errorf("take a lease someone else took since the read: %v, %v, want refused", ok, err)
	}
	if holder, _, _ := leaseOf(t, e, a); holder != "updater-c" {
		t.Errorf("lease held by %q, want updater-c, whose write came first", holder)
	}
}

// Two updaters start on a swarm with no lease: both try to create it, one
// is told it exists.
func TestLeaseCreateRace(t *testing.T) {
	e := newEngine(t)
	a, b := e.client(t, Config{}), e.client(t, Config{})
	ctx := context.Background()
	// a's create lands between b's "not found" and b's create.
	e.before("POST /configs/create", 1, func() {
		id := e.newID("cfg")
		e.configs[id] = &swarm.Config{ID: id, Spec: swarm.ConfigSpec{Annotations: swarm.Annotations{
			Name: "updater-lease-" + a.scope(), Labels: map[string]string{leaseHolderLabel: "updater-a",
				leaseExpiresLabel: strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)}}}}
	})
	if ok, err := b.Acquire(ctx, "updater-b", time.Minute); err != nil || ok {
		t.Errorf("create a lease another created first: %v, %v, want refused", ok, err)
	}
	if holder, _, _ := leaseOf(t, e, a); holder != "updater-a" {
		t.Errorf("lease held by %q, want updater-a", holder)
	}
}

func TestLeaseRelease(t *testing.T) {
	e := newEngine(t)
	a, b := e.client(t, Config{}), e.client(t, Config{})
	ctx := context.Background()
	if err := a.Release(ctx, "updater-a"); err != nil {
		t.Errorf("release a lease nobody holds: %v", err)
	}
	if ok, err := a.Acquire(ctx, "updater-a", time.Minute); err != nil || !ok {
		t.Fatalf("take: %v, %v", ok, err)
	}
	if err := b.Release(ctx, "updater-b"); err != nil {
		t.Fatal(err)
	}
	if holder, _, _ := leaseOf(t, e, a); holder != "updater-a" {
		t.Fatalf("another holder's release dropped the lease: held by %q", holder)
	}
	if err := a.Release(ctx, "updater-a"); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.config("updater-lease-" + a.scope()); ok {
		t.Error("the lease is still there after its holder released it")
	}
	if ok, err := b.Acquire(ctx, "updater-b", time.Minute); err != nil || !ok {
		t.Errorf("take a released lease: %v, %v", ok, err)
	}
}
