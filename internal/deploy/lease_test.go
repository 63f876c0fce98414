package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// fakeLease is a lease two keepers can contend for: a compare-and-set
// record, as in Swarm, that keeps no time.
type fakeLease struct {
	mu       sync.Mutex
	holder   string
	ttl      time.Duration
	version  string // "" while there is no lease
	next     int    // versions are never reused, as Swarm's config ID and index are not
	writes   map[string]int
	released []string
	fail     bool
	// during, when set, runs inside a write before it lands (a slow call).
	during func()
}

var _ deploy.Lease = (*fakeLease)(nil)

func (l *fakeLease) ReadLease(context.Context) (deploy.LeaseState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail {
		return deploy.LeaseState{}, context.DeadlineExceeded
	}
	return deploy.LeaseState{Holder: l.holder, Version: l.version, TTL: l.ttl}, nil
}

func (l *fakeLease) WriteLease(_ context.Context, holder string, ttl time.Duration, over string) (bool, error) {
	if l.during != nil {
		l.during()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail {
		return false, context.DeadlineExceeded
	}
	if over != l.version {
		return false, nil
	}
	l.next++
	l.holder, l.ttl, l.version = holder, ttl, fmt.Sprint(l.next)
	if l.writes == nil {
		l.writes = map[string]int{}
	}
	l.writes[holder]++
	return true, nil
}

func (l *fakeLease) Release(_ context.Context, holder string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holder == holder {
		l.holder, l.ttl, l.version = "", 0, ""
		l.released = append(l.released, holder)
	}
	return nil
}

func (l *fakeLease) writesBy(holder string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writes[holder]
}

func keeper(lease deploy.Lease, holder string, ttl time.Duration, clock *fakeClock) *deploy.Keeper {
	return &deploy.Keeper{Lease: lease, Holder: holder, TTL: ttl, Now: clock.Now, Log: slog.New(slog.DiscardHandler)}
}

func TestKeeperOneHolder(t *testing.T) {
	lease := &fakeLease{}
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	a, b := keeper(lease, "a", time.Minute, clock), keeper(lease, "b", time.Minute, clock)
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

// A holder whose renewals fail keeps counting itself as holder for three
// quarters of its TTL after the last renewal that worked (no reader can
// take the lease over before a whole TTL), and not a moment longer.
func TestKeeperLapsesWhenRenewalFails(t *testing.T) {
	const ttl = 40 * time.Second
	lease := &fakeLease{}
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	k := keeper(lease, "a", ttl, clock)
	k.Acquire(t.Context())
	if !k.Held() {
		t.Fatal("not held after a successful acquire")
	}
	lease.mu.Lock()
	lease.fail = true
	lease.mu.Unlock()
	for i := 1; i <= 2; i++ { // two renewals fail, TTL/4 apart, as Run tries them
		clock.Advance(ttl / 4)
		k.Acquire(t.Context())
		if !k.Held() {
			t.Fatalf("not held %s after the last renewal, with a %s TTL", time.Duration(i)*ttl/4, ttl)
		}
	}
	clock.Advance(ttl/4 - time.Millisecond)
	if !k.Held() {
		t.Fatal("lapsed before three quarters of its TTL")
	}
	clock.Advance(time.Millisecond)
	if k.Held() {
		t.Fatalf("still held %s after the last renewal that worked, with a %s TTL: a reader takes over at %s", 3*ttl/4, ttl, ttl)
	}
}

// The hold counts from just before the renewal was sent, not from its
// answer: a write that took 5 s to be answered may have landed at once,
// and a reader's count starts when it sees it.
func TestKeeperHoldCountsFromBeforeTheWrite(t *testing.T) {
	const ttl = 40 * time.Second
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	lease := &fakeLease{during: func() { clock.Advance(5 * time.Second) }}
	k := keeper(lease, "a", ttl, clock)
	k.Acquire(t.Context()) // sent at 0, answered at 5 s
	clock.Advance(3*ttl/4 - 5*time.Second - time.Millisecond)
	if !k.Held() {
		t.Fatal("not held just before three quarters of the TTL after the write was sent")
	}
	clock.Advance(time.Millisecond)
	if k.Held() {
		t.Fatalf("held %s after its renewal was sent: the hold was counted from the answer", 3*ttl/4)
	}
}

// A reader whose wall clock runs 60 s ahead of the holder's (more than the
// TTL) never takes a lease that is renewed, however long it watches.
func TestKeeperSkewedReaderNeverTakesLiveLease(t *testing.T) {
	const ttl = 30 * time.Second
	lease := &fakeLease{}
	base := time.Unix(1_000_000, 0)
	clockA, clockB := &fakeClock{t: base}, &fakeClock{t: base.Add(60 * time.Second)}
	a, b := keeper(lease, "a", ttl, clockA), keeper(lease, "b", ttl, clockB)
	a.Acquire(t.Context())
	for i := range 40 { // ten TTLs, in the steps Run renews in
		clockA.Advance(ttl / 4)
		clockB.Advance(ttl / 4)
		a.Acquire(t.Context())
		b.Acquire(t.Context())
		if !a.Held() || b.Held() {
			t.Fatalf("after %s: a holds %v, b holds %v; want only a, which renews", time.Duration(i+1)*ttl/4, a.Held(), b.Held())
		}
	}
	if n := lease.writesBy("b"); n != 0 {
		t.Fatalf("b wrote the lease %d times while a renewed it", n)
	}
}

// A holder that stops renewing is taken over once its last version has
// stood for the TTL on the reader's own clock, not before; the old holder
// then stands by without writing.
func TestKeeperTakesOverAfterTTLOnItsOwnClock(t *testing.T) {
	const ttl = 30 * time.Second
	lease := &fakeLease{}
	clockA := &fakeClock{t: time.Unix(1_000_000, 0)}
	clockB := &fakeClock{t: time.Unix(5_000_000, 0)} // another machine's idea of the time
	a, b := keeper(lease, "a", ttl, clockA), keeper(lease, "b", ttl, clockB)
	a.Acquire(t.Context())
	b.Acquire(t.Context()) // b first sees a's version now
	// a hangs: it renews no more.
	for elapsed := time.Duration(0); elapsed < ttl-time.Second; elapsed += time.Second {
		clockA.Advance(time.Second)
		clockB.Advance(time.Second)
		b.Acquire(t.Context())
		if b.Held() {
			t.Fatalf("b took the lease %s after first seeing it, before the %s TTL", elapsed+time.Second, ttl)
		}
	}
	if a.Held() {
		t.Fatalf("a still counts itself holder %s after its last renewal", ttl-time.Second)
	}
	clockB.Advance(time.Second)
	b.Acquire(t.Context())
	if !b.Held() {
		t.Fatalf("b did not take a lease unrenewed for the TTL (%s) on its clock", ttl)
	}
	before := lease.writesBy("a")
	a.Acquire(t.Context())
	if a.Held() || lease.writesBy("a") != before {
		t.Fatalf("the old holder, back: holds %v, wrote %d times; want standing by, no write", a.Held(), lease.writesBy("a")-before)
	}
}

// A reader with a shorter TTL waits out the holder's, as the lease says.
func TestKeeperWaitsTheHoldersTTL(t *testing.T) {
	lease := &fakeLease{}
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	a, b := keeper(lease, "a", 2*time.Minute, clock), keeper(lease, "b", 30*time.Second, clock)
	a.Acquire(t.Context())
	b.Acquire(t.Context())
	clock.Advance(2*time.Minute - time.Second)
	b.Acquire(t.Context())
	if b.Held() {
		t.Fatal("b took the lease after its own 30 s TTL, before the holder's 2 min")
	}
	clock.Advance(time.Second)
	b.Acquire(t.Context())
	if !b.Held() {
		t.Fatal("b did not take the lease after the holder's TTL")
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

// leaseFlag is the keeper's answer a test turns off.
func leaseFlag(w *world) *atomic.Bool {
	var held atomic.Bool
	held.Store(true)
	w.p.Acting = held.Load
	return &held
}

// A run that loses the lease right after a hook stops there: no later hook
// starts, the spec is not written, nothing is reported as failed and the
// record stays; the holder (here this updater, once it holds the lease
// again) resumes it from the record and reports it once.
func TestRunLosesLeaseBeforeItsNextWrite(t *testing.T) {
	for _, after := range []deploy.Phase{deploy.PhaseBackup, deploy.PhaseMigrate} {
		t.Run("after "+string(after), func(t *testing.T) {
			w := newHookWorld(t)
			w.targets = []deploy.Target{hooked(oldD)}
			w.digests[ref] = newD
			// Only the checks before each write can see the loss: the
			// looks in between are an hour apart.
			w.p.WatchInterval = time.Hour
			held := leaseFlag(w.world)
			obs := &observed{}
			w.p.Observer = obs
			run, lostOnce := w.jobs.RunFn, false
			w.jobs.RunFn = func(ctx context.Context, j deploy.Job, creds deploy.Credentials) (deploy.JobResult, error) {
				res, err := run(ctx, j, creds)
				if j.Phase == after && !lostOnce {
					lostOnce = true
					held.Store(false) // renewals failed while the job ran
				}
				return res, err
			}

			// Bounded: a run that wrote anyway would wait an hour between
			// looks at its rollout.
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			startRun(t, w.world, ctx)
			// The cycle only started the run; the next one, the lease
			// gone, stands by.
			if _, err := w.p.Cycle(ctx); !errors.Is(err, deploy.ErrStandby) {
				t.Errorf("Cycle after the loss = %v, want ErrStandby", err)
			}
			if obs.mu.Lock(); len(obs.stats) != 1 || obs.stats[0].Err != nil || obs.stats[0].Deploys != 1 {
				t.Errorf("observed %+v, want the cycle that started the run, ok", obs.stats)
			}
			obs.mu.Unlock()
			w.mu.Lock()
			calls := slices.Clone(w.calls)
			w.mu.Unlock()
			jobs := 0
			for _, c := range calls {
				if strings.HasPrefix(c, "update ") {
					t.Errorf("spec written after the lease was lost: calls %q", calls)
				}
				if strings.HasPrefix(c, "job ") {
					jobs++
				}
			}
			if want := map[deploy.Phase]int{deploy.PhaseBackup: 1, deploy.PhaseMigrate: 2}[after]; jobs != want {
				t.Errorf("%d jobs started, want %d (none after the lease was lost): calls %q", jobs, want, calls)
			}
			if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Started}) {
				t.Errorf("events %v, want only Started: a lost lease is no outcome", got)
			}
			if len(w.ended) != 0 || len(w.open) != 1 || len(w.marked) != 0 {
				t.Fatalf("End %v, open %v, MarkFailed %v: want the record kept, no digest remembered", ids(w.ended), ids(w.open), w.marked)
			}

			held.Store(true)
			w.p.WatchInterval = time.Millisecond
			// Swarm's answer follows the spec: old until written.
			w.services.RolloutFn = func(context.Context, string) (deploy.Rollout, error) {
				w.mu.Lock()
				defer w.mu.Unlock()
				_, d := deploy.SplitImage(w.targets[0].Image)
				return rollout("completed", d, task(d, "running")), nil
			}
			w.cycle(t.Context())
			ev := w.outcome(deploy.Succeeded)
			if !ev.Resumed || len(w.updates) != 1 || len(w.open) != 0 {
				t.Errorf("resumed %v, %d spec writes, open %v: want the deploy resumed, written once, closed", ev.Resumed, len(w.updates), ids(w.open))
			}
		})
	}
}

// A rollout that fails after the lease was lost is not rolled back by
// this updater: the holder resumes and judges it.
func TestRunLosesLeaseBeforeRollback(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.p.WatchInterval = time.Hour // the rollout is judged at the first look: only the check before the rollback sees the loss
	held := leaseFlag(w)
	w.services.RolloutFn = func(context.Context, string) (deploy.Rollout, error) {
		held.Store(false)
		return rollout("paused", newD, task(oldD, "running"), gone(newD, "dockerexec: unhealthy container")), nil
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second) // a rollback begun anyway is looked at hourly
	defer cancel()
	startRun(t, w, ctx)
	if len(w.rollbacks) != 0 || len(w.marked) != 0 {
		t.Errorf("Rollback %v, MarkFailed %v after the lease was lost", w.rollbacks, w.marked)
	}
	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Started}) || len(w.open) != 1 {
		t.Errorf("events %v, open %v: want only Started, the record kept", got, ids(w.open))
	}
}

// Losing the lease mid-rollout stops the watch within a look: the run
// reports nothing, so the holder that resumes it reports it once.
func TestRunLosesLeaseMidRollout(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	held := leaseFlag(w)
	var looks atomic.Int32
	w.services.RolloutFn = func(context.Context, string) (deploy.Rollout, error) {
		if looks.Add(1) == 3 {
			held.Store(false)
		}
		return rollout("updating", newD, task(oldD, "running"), task(newD, "starting")), nil
	}
	startRun(t, w, t.Context())
	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Started}) || len(w.open) != 1 || len(w.rollbacks) != 0 {
		t.Errorf("events %v, open %v, rollbacks %v: want only Started, the record kept, no rollback", got, ids(w.open), w.rollbacks)
	}
	if n := looks.Load(); n > 3+100 {
		t.Errorf("%d looks at the rollout after the lease was lost at the third", n-3)
	}
}

// A scheduled backup does not start on an updater that lost the lease.
func TestBackupOnScheduleNeedsTheLease(t *testing.T) {
	w := newHookWorld(t)
	leaseFlag(w.world).Store(false)
	if err := w.p.Backup(t.Context(), hooked(oldD)); !errors.Is(err, deploy.ErrStandby) {
		t.Fatalf("Backup = %v, want ErrStandby", err)
	}
	if len(w.ran) != 0 {
		t.Errorf("jobs %v started without the lease", w.jobNames())
	}
}

// startRun runs a cycle that starts a run, and waits for the run to end:
// stopped where it was, in these tests, by the lease's loss.
func startRun(t *testing.T, w *world, ctx context.Context) {
	t.Helper()
	if _, err := w.p.Cycle(ctx); err != nil {
		t.Errorf("Cycle = %v, want nil: it only starts the run", err)
	}
	w.p.Wait()
}

// standbyLines are the standby lines a keeper logged, each as the holder
// it names.
type standbyLines struct {
	mu      sync.Mutex
	holders []string
}

func (s *standbyLines) Enabled(context.Context, slog.Level) bool { return true }
func (s *standbyLines) WithAttrs([]slog.Attr) slog.Handler       { return s }
func (s *standbyLines) WithGroup(string) slog.Handler            { return s }
func (s *standbyLines) Handle(_ context.Context, r slog.Record) error {
	if !strings.Contains(r.Message, "standing by") {
		return nil
	}
	holder, self := "<none>", ""
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "holder":
			holder = a.Value.String()
		case "self":
			self = a.Value.String()
		}
		return true
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holders = append(s.holders, holder+" (self "+self+")")
	return nil
}

// The standby line names the updater that holds the lease, once per
// holder: not again at each renewal, again when another one takes it,
// and the one that won a race for the write, not the one read before it.
func TestKeeperStandbyNamesHolder(t *testing.T) {
	lease := &fakeLease{}
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	lines := &standbyLines{}
	a, c := keeper(lease, "a", time.Minute, clock), keeper(lease, "c", time.Minute, clock)
	b := keeper(lease, "b", time.Minute, clock)
	b.Log = slog.New(lines)
	a.Acquire(t.Context())
	b.Acquire(t.Context())
	b.Acquire(t.Context())
	// a goes, and while b writes over the released lease c's write lands first.
	if err := lease.Release(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	lease.during = func() { lease.during = nil; c.Acquire(t.Context()) }
	b.Acquire(t.Context())
	b.Acquire(t.Context())
	if b.Held() || !c.Held() {
		t.Fatalf("held: b=%v c=%v, want c", b.Held(), c.Held())
	}
	if want := []string{"a (self b)", "c (self b)"}; !slices.Equal(lines.holders, want) {
		t.Errorf("standby lines name %q, want %q", lines.holders, want)
	}
}
