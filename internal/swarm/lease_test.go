package swarm

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/swarm"
)

// leaseOf reads the lease config of s's scope from the engine: who holds
// it and its version.
func leaseOf(t *testing.T, e *engine, s *Swarm) (holder string, version uint64) {
	t.Helper()
	c, ok := e.config("updater-lease-" + s.scope())
	if !ok {
		t.Fatal("no lease config")
	}
	return c.Spec.Labels[leaseHolderLabel], c.Version.Index
}

// Every write is a compare-and-set on the version read: a write over a
// version that moved since is refused and changes nothing, and each write
// that lands gives a new version.
func TestLeaseWriteReadCompareAndSet(t *testing.T) {
	e := newEngine(t)
	a, b := e.client(t, Config{Stack: "shop"}), e.client(t, Config{Stack: "shop"})
	ctx := context.Background()

	if st, err := a.ReadLease(ctx); err != nil || st.Version != "" || st.Holder != "" {
		t.Fatalf("read with no lease: %+v, %v; want none", st, err)
	}
	if ok, err := a.WriteLease(ctx, "updater-a", time.Minute, ""); err != nil || !ok {
		t.Fatalf("create the lease: %v, %v", ok, err)
	}
	st1, err := b.ReadLease(ctx)
	if err != nil || st1.Holder != "updater-a" || st1.TTL != time.Minute || st1.Version == "" {
		t.Fatalf("read: %+v, %v; want updater-a with a minute and a version", st1, err)
	}
	if ok, err := b.WriteLease(ctx, "updater-b", time.Minute, ""); err != nil || ok {
		t.Errorf("create a lease that exists: %v, %v, want refused", ok, err)
	}

	// a renews over the version it read: a new version.
	if ok, err := a.WriteLease(ctx, "updater-a", 2*time.Minute, st1.Version); err != nil || !ok {
		t.Fatalf("renew: %v, %v", ok, err)
	}
	st2, _ := b.ReadLease(ctx)
	if st2.Version == st1.Version || st2.TTL != 2*time.Minute {
		t.Errorf("after a renewal: %+v, was %+v; want a new version and TTL", st2, st1)
	}
	// b writes over the version it read before that renewal: refused.
	_, v2 := leaseOf(t, e, a)
	if ok, err := b.WriteLease(ctx, "updater-b", time.Minute, st1.Version); err != nil || ok {
		t.Errorf("write over a version that moved: %v, %v, want refused", ok, err)
	}
	if holder, v := leaseOf(t, e, a); holder != "updater-a" || v != v2 {
		t.Errorf("after a refused write: held by %q at version %d, want updater-a at %d", holder, v, v2)
	}
	// Over the current version b's write lands (the Keeper decides when).
	if ok, err := b.WriteLease(ctx, "updater-b", time.Minute, st2.Version); err != nil || !ok {
		t.Fatalf("write over the current version: %v, %v", ok, err)
	}
	if holder, _ := leaseOf(t, e, a); holder != "updater-b" {
		t.Errorf("held by %q, want updater-b", holder)
	}

	// Another scope has a lease of its own.
	c := e.client(t, Config{Stack: "blog"})
	if ok, err := c.WriteLease(ctx, "updater-c", time.Minute, ""); err != nil || !ok {
		t.Errorf("lease of another scope: %v, %v", ok, err)
	}
}

// No time the lease carries decides anything: a lease whose wall-clock
// expiry (written for older updaters) is long past, as a writer whose
// clock runs behind leaves it, reads as held, same version.
func TestLeaseExpiryLabelNotRead(t *testing.T) {
	e := newEngine(t)
	a, b := e.client(t, Config{}), e.client(t, Config{})
	ctx := context.Background()
	if ok, err := a.WriteLease(ctx, "updater-a", time.Minute, ""); err != nil || !ok {
		t.Fatalf("take: %v, %v", ok, err)
	}
	before, _ := b.ReadLease(ctx)
	e.with(func() {
		c := e.configByRef("updater-lease-" + a.scope())
		c.Spec.Labels[leaseExpiresLabel] = strconv.FormatInt(time.Now().Add(-time.Hour).UnixMilli(), 10)
	})
	if after, err := b.ReadLease(ctx); err != nil || after != before {
		t.Errorf("read %+v, %v after the expiry label moved, want %+v", after, err, before)
	}
}

// Two updaters race for the lease: both read it, the first write wins,
// and the second, carrying the version it read, is refused.
func TestLeaseCompareAndSet(t *testing.T) {
	e := newEngine(t)
	a, b := e.client(t, Config{}), e.client(t, Config{})
	ctx := context.Background()
	if ok, err := a.WriteLease(ctx, "updater-a", time.Minute, ""); err != nil || !ok {
		t.Fatalf("take: %v, %v", ok, err)
	}
	st, err := b.ReadLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	name := "updater-lease-" + a.scope()
	// After b's read, before b's write, updater-c takes the lease.
	e.with(func() {
		c := e.configByRef(name)
		c.Spec.Labels = map[string]string{kindLabel: kindLease, scopeLabel: a.scope(), leaseHolderLabel: "updater-c"}
		c.Version.Index++
	})
	if ok, err := b.WriteLease(ctx, "updater-b", time.Minute, st.Version); err != nil || ok {
		t.Errorf("take a lease someone else took since the read: %v, %v, want refused", ok, err)
	}
	if holder, _ := leaseOf(t, e, a); holder != "updater-c" {
		t.Errorf("lease held by %q, want updater-c, whose write came first", holder)
	}
}

// Two updaters start on a swarm with no lease: both try to create it, one
// is told it exists.
func TestLeaseCreateRace(t *testing.T) {
	e := newEngine(t)
	a, b := e.client(t, Config{}), e.client(t, Config{})
	ctx := context.Background()
	e.before("POST /configs/create", 1, func() {
		id := e.newID("cfg")
		e.configs[id] = &swarm.Config{ID: id, Spec: swarm.ConfigSpec{Annotations: swarm.Annotations{
			Name: "updater-lease-" + a.scope(), Labels: map[string]string{leaseHolderLabel: "updater-a"}}, Data: leaseData}}
	})
	if ok, err := b.WriteLease(ctx, "updater-b", time.Minute, ""); err != nil || ok {
		t.Errorf("create a lease another created first: %v, %v, want refused", ok, err)
	}
	if holder, _ := leaseOf(t, e, a); holder != "updater-a" {
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
	if ok, err := a.WriteLease(ctx, "updater-a", time.Minute, ""); err != nil || !ok {
		t.Fatalf("take: %v, %v", ok, err)
	}
	st, _ := b.ReadLease(ctx)
	if err := b.Release(ctx, "updater-b"); err != nil {
		t.Fatal(err)
	}
	if holder, _ := leaseOf(t, e, a); holder != "updater-a" {
		t.Fatalf("another holder's release dropped the lease: held by %q", holder)
	}
	if err := a.Release(ctx, "updater-a"); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.config("updater-lease-" + a.scope()); ok {
		t.Error("the lease is still there after its holder released it")
	}
	if ok, err := b.WriteLease(ctx, "updater-b", time.Minute, st.Version); err != nil || ok {
		t.Errorf("write over the version of a released lease: %v, %v, want refused", ok, err)
	}
	if ok, err := b.WriteLease(ctx, "updater-b", time.Minute, ""); err != nil || !ok {
		t.Errorf("take a released lease: %v, %v", ok, err)
	}
}

// Clean on resume spares the jobs of a live other holder (the lease names
// it) and removes those whose owner's lease is gone, and those an earlier
// run of this holder left; each job carries its starter's name.
func TestCleanSparesLiveHolder(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{Stack: "shop", Holder: "updater-a"})
	ctx := context.Background()
	job := func(id, holder string) {
		e.addService(id, swarm.ServiceSpec{Annotations: swarm.Annotations{Name: id, Labels: map[string]string{
			jobLabel: "s1", jobStepLabel: "migrate", scopeLabel: s.scope(), leaseHolderLabel: holder}}})
	}
	job("job-b", "updater-b")
	job("job-dead", "updater-dead")
	job("job-a-before", "updater-a")
	e.with(func() {
		leftover := func(id, service, holder string) container.Summary {
			return container.Summary{ID: id, State: container.StateExited, Labels: map[string]string{
				jobLabel: "s1", scopeLabel: s.scope(), leaseHolderLabel: holder, taskServiceLabel: service}}
		}
		e.containers = []container.Summary{leftover("c-b", "job-b-gone", "updater-b"), leftover("c-dead", "job-dead-gone", "updater-dead")}
	})
	remaining := func() (services, containers []string) {
		e.with(func() {
			for id := range e.services {
				services = append(services, id)
			}
			for _, c := range e.containers {
				containers = append(containers, c.ID)
			}
		})
		slices.Sort(services)
		return services, containers
	}

	// updater-b holds the lease (a Clean run without it, by mistake or in
	// the moment its hold ran out): b's jobs stay.
	other := e.client(t, Config{Stack: "shop", Holder: "updater-b"})
	if ok, err := other.WriteLease(ctx, "updater-b", time.Minute, ""); err != nil || !ok {
		t.Fatalf("b takes the lease: %v, %v", ok, err)
	}
	if err := s.Clean(ctx); err != nil {
		t.Fatal(err)
	}
	if services, containers := remaining(); !slices.Equal(services, []string{"job-b"}) || !slices.Equal(containers, []string{"c-b"}) {
		t.Errorf("after Clean while updater-b holds the lease: services %v, containers %v; want only b's", services, containers)
	}

	// a took the lease over: b's lease is gone, and so may its jobs be.
	st, _ := s.ReadLease(ctx)
	if ok, err := s.WriteLease(ctx, "updater-a", time.Minute, st.Version); err != nil || !ok {
		t.Fatalf("a takes the lease: %v, %v", ok, err)
	}
	if err := s.Clean(ctx); err != nil {
		t.Fatal(err)
	}
	if services, containers := remaining(); len(services) != 0 || len(containers) != 0 {
		t.Errorf("after Clean by the holder: services %v, containers %v; want none", services, containers)
	}
}

// The jobs an updater starts name it, on the service and its containers.
func TestJobsNameTheirHolder(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{Stack: "shop", Holder: "updater-a"})
	labels := map[string]string{jobLabel: "s1", scopeLabel: s.scope()}
	id, err := s.startJob(context.Background(), swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "web-backup-1", Labels: labels},
		TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Labels: labels}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	svc, _ := e.service(id)
	if h, hc := svc.Spec.Labels[leaseHolderLabel], svc.Spec.TaskTemplate.ContainerSpec.Labels[leaseHolderLabel]; h != "updater-a" || hc != "updater-a" {
		t.Errorf("job labels name %q, its containers %q; want updater-a", h, hc)
	}
	if _, ok := labels[leaseHolderLabel]; ok {
		t.Error("the caller's label map was changed")
	}
}
