//go:build e2e

package e2e

// Parallel release runs (issue 20, "Prove it"): a slow rollout does not
// hold up another service's deploy; five services on one tag roll out
// together, or one after another with UPDATER_DEPLOY_CONCURRENCY=1; three
// runs killed at three different stages are each resumed from their
// record, no hook run twice, each reported once. Every timing is read from
// Docker (service events, UpdateStatus), not from the updater's log.

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// runSlack is what a deploy may take beyond what the bounds name
// (a rollout, a schedule interval): the registry HEAD, the service list,
// the plan, and Docker's event for the write, on a loaded 2-core machine.
// One deploy at a time makes the waits these tests look for a rollout
// long (tens of seconds), far beyond it.
const runSlack = 5 * time.Second

// pushHealthEvery is push with the image's HEALTHCHECK probing every
// interval: Docker runs the first probe one interval after the container
// starts, so a task of it turns healthy only then, and Swarm's start-first
// update waits that long on it.
func pushHealthEvery(t testing.TB, repo, version string, interval time.Duration) string {
	t.Helper()
	img := appImage(t, version, nil)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	hc := *cfg.Healthcheck
	hc.Interval = interval
	cfg.Healthcheck = &hc
	if img, err = mutate.Config(img, cfg); err != nil {
		t.Fatal(err)
	}
	return pushImage(t, repo, img)
}

// createFromSpec is createService for a spec the test shaped itself.
func createFromSpec(t testing.TB, spec swarm.ServiceSpec) string {
	t.Helper()
	res, err := env.docker.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		t.Fatalf("create service %s: %v", spec.Annotations.Name, err)
	}
	t.Cleanup(func() { removeService(res.ID) })
	waitFor(t, 60*time.Second, spec.Annotations.Name+" running", func() bool { return allRunning(t, res.ID, "") })
	return res.ID
}

// converged reports whether Swarm finished updating the service to digest:
// its update completed and every task runs the digest.
func converged(t testing.TB, id, digest string) bool {
	t.Helper()
	s := inspect(t, id)
	return s.UpdateStatus != nil && s.UpdateStatus.State == swarm.UpdateStateCompleted &&
		s.UpdateStatus.CompletedAt != nil && specDigest(t, id) == digest && allRunning(t, id, digest)
}

// rollout is Swarm's own account of the service's last update: when it
// started and when it completed (zero while it has not).
func rollout(t testing.TB, id string) (started, completed time.Time) {
	t.Helper()
	st := inspect(t, id).UpdateStatus
	if st == nil {
		return
	}
	if st.StartedAt != nil {
		started = *st.StartedAt
	}
	if st.CompletedAt != nil {
		completed = *st.CompletedAt
	}
	return
}

// onlyWrite is the one image write of digest to the service, from Docker's
// events; a deploy started twice writes it twice.
func onlyWrite(t testing.TB, ev *dockerEvents, id, digest string) imageWrite {
	t.Helper()
	var w []imageWrite
	waitFor(t, 15*time.Second, fmt.Sprintf("the image write of %s in Docker's events", digest[:19]), func() bool {
		w = slices.DeleteFunc(ev.imageWrites(t, id), func(x imageWrite) bool { return x.New != digest })
		return len(w) > 0
	})
	if len(w) != 1 {
		t.Fatalf("%d image writes of %s to %s in Docker's events, want 1: %+v", len(w), digest[:19], id, w)
	}
	return w[0]
}

// oneEach checks, across the logs of every updater given, that n deploys
// started, each once and with one outcome, and that no service was
// deployed to the same digest by two deploys.
func oneEach(t testing.TB, us []*updater, n int) {
	t.Helper()
	started, outcomes := map[string]int{}, map[string]int{}
	byTarget := map[string][]string{} // deploy ids by service and digest
	for _, u := range us {
		for _, l := range u.matching("deploy started") {
			id := fmt.Sprint(l["deploy_id"])
			started[id]++
			k := fmt.Sprint(l["service"], "@", l["to_digest"])
			byTarget[k] = append(byTarget[k], id)
		}
		for _, kind := range []string{"deploy succeeded", "deploy failed"} {
			for _, l := range u.matching(kind) {
				outcomes[fmt.Sprint(l["deploy_id"])]++
			}
		}
	}
	if len(started) != n {
		t.Fatalf("%d deploys started across the updaters' logs, want %d: %v", len(started), n, started)
	}
	for k, ids := range byTarget {
		if len(ids) != 1 {
			t.Fatalf("%s deployed by %d deploys, want 1: %v", k, len(ids), ids)
		}
	}
	for id, c := range started {
		if c != 1 || outcomes[id] != 1 {
			t.Fatalf("deploy %s: started %d times, %d outcomes across the updaters' logs; want one of each", id, c, outcomes[id])
		}
	}
	for id, c := range outcomes {
		if started[id] == 0 {
			t.Fatalf("deploy %s: %d outcomes but never started in these logs", id, c)
		}
	}
}

// Service A's new version takes 25 s to turn healthy; while Swarm waits on
// it, service B's push deploys and converges within its own rollout and
// one schedule interval; then A succeeds. Each deploys once. 25 s is B's
// push→converged (5.3 s measured on 2 cores) four times over: long enough
// that B done while A still rolls out is no accident of timing, short
// enough not to cost the suite a minute (60 s before: 68.8 s → 36.1 s).
func TestParallelSlowRolloutHoldsNoOther(t *testing.T) {
	const stack, repoA, repoB = "e2epar1", "e2e/par1a", "e2e/par1b"
	const schedule = time.Second // startUpdater's @every 1s
	const slowHealthy = 25 * time.Second
	ev := recordEvents(t)
	a := createService(t, "e2epar1_a", repoA, push(t, repoA, "v1"), svcOpts{stack: stack, optIn: true})
	b := createService(t, "e2epar1_b", repoB, push(t, repoB, "v1"), svcOpts{stack: stack, optIn: true})
	// The deadline is the slow rollout's 25 s and then some.
	u := startUpdater(t, stack, "UPDATER_DEPLOY_TIMEOUT=3m")
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	a2 := pushHealthEvery(t, repoA, "v2", slowHealthy)
	aWrite := onlyWrite(t, ev, a, a2)
	pushed := time.Now()
	b2 := push(t, repoB, "v2")

	// One deploy at a time would write B only once A's 25 s are over, so
	// the wait is long enough to see that and say so, not time out.
	waitFor(t, 150*time.Second, "B converged on its new digest", func() bool { return converged(t, b, b2) })
	// Read at once: A is still rolling out, its new task not yet healthy.
	aState, aDone := inspect(t, a).UpdateStatus, converged(t, a, a2)
	bStarted, bCompleted := rollout(t, b)
	bWrite := onlyWrite(t, ev, b, b2)
	if aDone || aState == nil || aState.State != swarm.UpdateStateUpdating {
		t.Fatalf("B converged %s after its push, when A (written %s) was no longer rolling out (state %v): B waited for A",
			bCompleted.Sub(pushed).Round(time.Millisecond), aWrite.At.Format(time.StampMilli), aState)
	}
	own := bCompleted.Sub(bStarted)
	if took := bCompleted.Sub(pushed); took > own+schedule+runSlack {
		t.Fatalf("B's push→converged took %s, its own rollout %s: want at most rollout + %s schedule + %s slack",
			took.Round(time.Millisecond), own.Round(time.Millisecond), schedule, runSlack)
	}
	if w := bWrite.At.Sub(pushed); w > schedule+runSlack {
		t.Fatalf("B's spec written %s after its push, want within a schedule interval (%s) + %s", w.Round(time.Millisecond), schedule, runSlack)
	}
	t.Logf("B: push→write %s, push→converged %s (own rollout %s), while A's rollout (written %s before B's push) went on",
		bWrite.At.Sub(pushed).Round(time.Millisecond), bCompleted.Sub(pushed).Round(time.Millisecond),
		own.Round(time.Millisecond), pushed.Sub(aWrite.At).Round(time.Millisecond))

	u.waitLog(t, 150*time.Second, 1, "deploy succeeded", "to_digest", a2)
	waitFor(t, 30*time.Second, "A converged on its new digest", func() bool { return converged(t, a, a2) })
	if _, aCompleted := rollout(t, a); !aCompleted.After(bCompleted) {
		t.Fatalf("A completed at %s, not after B (%s)", aCompleted.Format(time.StampMilli), bCompleted.Format(time.StampMilli))
	}
	// One outcome each, by the updater's account and by Docker's.
	u.waitLog(t, 30*time.Second, 1, "deploy succeeded", "to_digest", b2)
	oneEach(t, []*updater{u}, 2)
	if n := u.count("deploy failed"); n != 0 {
		t.Fatalf("%d deploys failed", n)
	}
	ev.wantImageWrites(t, a, a2)
	ev.wantImageWrites(t, b, b2)
}

// Five services on one tag: they roll out side by side (all five at once
// with a concurrency of 5; four, then the fifth as a run ends, with the
// default of 4), and one after another with UPDATER_DEPLOY_CONCURRENCY=1.
// Read from Docker: each service's image write from the event stream and
// its rollout's StartedAt/CompletedAt from its UpdateStatus.
func TestParallelOneTagManyServices(t *testing.T) {
	const stack, repo, n = "e2epar5", "e2e/par5", 5
	ev := recordEvents(t)
	v1 := push(t, repo, "v1")
	ids := make([]string, n)
	for i := range ids {
		ids[i] = createService(t, fmt.Sprintf("e2epar5_s%d", i), repo, v1, svcOpts{stack: stack, optIn: true})
	}

	type run struct {
		write, started, completed time.Time
		name                      string
	}
	// phase starts an updater with extra, moves the tag to version and
	// returns each service's write and rollout, in the order written.
	phase := func(t *testing.T, version string, extra ...string) []run {
		u := startUpdater(t, stack, extra...)
		waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
		d := push(t, repo, version)
		waitFor(t, 3*time.Minute, "every service converged on "+version, func() bool {
			for _, id := range ids {
				if !converged(t, id, d) {
					return false
				}
			}
			return true
		})
		u.waitLog(t, 30*time.Second, n, "deploy succeeded", "to_digest", d)
		var runs []run
		for _, id := range ids {
			s, c := rollout(t, id)
			runs = append(runs, run{write: onlyWrite(t, ev, id, d).At, started: s, completed: c, name: inspect(t, id).Spec.Name})
		}
		if err := u.stop(syscall.SIGTERM); err != nil {
			t.Fatalf("updater exit after SIGTERM: %v", err)
		}
		oneEach(t, []*updater{u}, n)
		sort.Slice(runs, func(i, j int) bool { return runs[i].write.Before(runs[j].write) })
		var b strings.Builder
		for _, r := range runs {
			fmt.Fprintf(&b, "\n  %s: written %s, rollout %s–%s", r.name, r.write.Format(time.StampMilli),
				r.started.Format(time.StampMilli), r.completed.Format(time.StampMilli))
		}
		t.Logf("by Docker's clock:%s", b.String())
		return runs
	}
	firstDone := func(runs []run) time.Time {
		first := runs[0].completed
		for _, r := range runs {
			if r.completed.Before(first) {
				first = r.completed
			}
		}
		return first
	}

	t.Run("together", func(t *testing.T) {
		runs := phase(t, "v2", "UPDATER_DEPLOY_CONCURRENCY=5")
		if done := firstDone(runs); !runs[n-1].write.Before(done) {
			t.Fatalf("the last of %d writes at %s, after the first rollout completed at %s: want all %d written before",
				n, runs[n-1].write.Format(time.StampMilli), done.Format(time.StampMilli), n)
		}
	})
	t.Run("default concurrency", func(t *testing.T) {
		// The default bound is 4: four start at once, the fifth when a
		// slot frees, that is after one of the four completed.
		runs := phase(t, "v3")
		done := firstDone(runs[:n-1])
		if !runs[n-2].write.Before(done) {
			t.Fatalf("the 4th write at %s, after the first rollout completed at %s: want 4 written at once",
				runs[n-2].write.Format(time.StampMilli), done.Format(time.StampMilli))
		}
		if !runs[n-1].write.After(done) {
			t.Fatalf("the 5th write at %s, before any of the first 4 rollouts completed (first at %s): more than the default 4 in flight",
				runs[n-1].write.Format(time.StampMilli), done.Format(time.StampMilli))
		}
	})
	t.Run("one at a time", func(t *testing.T) {
		runs := phase(t, "v4", "UPDATER_DEPLOY_CONCURRENCY=1")
		for i := 1; i < n; i++ {
			if !runs[i].write.After(runs[i-1].completed) {
				t.Fatalf("%s written at %s, before %s's rollout completed at %s: want one at a time", runs[i].name,
					runs[i].write.Format(time.StampMilli), runs[i-1].name, runs[i-1].completed.Format(time.StampMilli))
			}
		}
	})
}

// Three runs in flight, SIGKILLed at once: X after its backup (its spec
// write held by a proxy in front of Docker), Y after its backup, migration
// and spec write (its new task not yet healthy), Z mid-rollout (one of two
// tasks updated, Swarm waiting out the update delay before the next). The
// restarted updater resumes each from its record: no hook runs twice (by
// Docker's job events and the migration's own count in the database), each
// deploy is reported started once and ended once across both updaters.
func TestParallelKilledWithThreeRunsInFlight(t *testing.T) {
	const stack = "e2eparkill"
	const repoX, repoY, repoZ = "e2e/parkillx", "e2e/parkilly", "e2e/parkillz"
	// Y's new task turns healthy this long after it starts, and Z's
	// rollout waits this long between its two tasks: the windows in which
	// all three stages hold at once. Both start within a few seconds of
	// the push; X's backup ends a few seconds later still (all three were
	// staged 3.2 s after the pushes on 2 cores: 15 s leaves four times that).
	const yHealthy, zDelay = 15 * time.Second, 18 * time.Second
	ev := recordEvents(t)
	t.Cleanup(removeMigrationRecords)
	dbURL := createDB(t, "e2eparkill")
	migrateTo(t, "v1", dbURL)
	x := hookService(t, stack, "e2eparkill_x", repoX, push(t, repoX, "v1"), dbURL, backupDir(t), map[string]string{
		"updater.migrate.command": "",
	})
	y := hookService(t, stack, "e2eparkill_y", repoY, push(t, repoY, "v1"), dbURL, backupDir(t), nil)
	zSpec := serviceSpec("e2eparkill_z", repoZ, push(t, repoZ, "v1"), svcOpts{stack: stack, optIn: true, replicas: 2})
	zSpec.UpdateConfig.Delay = zDelay
	z := createFromSpec(t, zSpec)

	proxy := newDockerProxy(t)
	proxy.hold(x)
	first := startUpdater(t, stack, "DOCKER_HOST="+proxy.host, "UPDATER_DEPLOY_TIMEOUT=3m")
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return first.cycles() >= 1 })

	pushed := time.Now()
	x2 := push(t, repoX, "v2")
	y2 := pushHealthEvery(t, repoY, "v2", yHealthy)
	z2 := push(t, repoZ, "v2")
	staged := func() (xs, ys, zs string) {
		// X: its backup job ran and is gone, its spec write waits in the proxy.
		bx := ev.jobs(t, "e2eparkill_x", "backup")
		xs = fmt.Sprintf("backup jobs %d (done: %v), write held: %v", len(bx), len(bx) == 1 && !bx[0].Removed.IsZero(), proxy.held() > 0)
		// Y: both hooks ran, the spec names the new digest, its task is not healthy yet.
		by, my := ev.jobs(t, "e2eparkill_y", "backup"), ev.jobs(t, "e2eparkill_y", "migrate")
		ys = fmt.Sprintf("backup jobs %d, migrate jobs %d (done: %v), spec on v2: %v, v2 running: %v", len(by), len(my),
			len(my) == 1 && !my[0].Removed.IsZero(), specDigest(t, y) == y2, allRunning(t, y, y2))
		// Z: one task on the new digest and running, one still on the old.
		res, err := env.docker.TaskList(context.Background(), client.TaskListOptions{
			Filters: make(client.Filters).Add("service", z).Add("desired-state", "running")})
		if err != nil {
			t.Fatal(err)
		}
		newRunning, old := 0, 0
		for _, tk := range res.Items {
			if strings.HasSuffix(tk.Spec.ContainerSpec.Image, "@"+z2) {
				if tk.Status.State == swarm.TaskStateRunning {
					newRunning++
				}
			} else {
				old++
			}
		}
		zs = fmt.Sprintf("tasks on v2 running %d, on v1 %d", newRunning, old)
		return
	}
	want := [3]string{"backup jobs 1 (done: true), write held: true",
		"backup jobs 1, migrate jobs 1 (done: true), spec on v2: true, v2 running: false",
		"tasks on v2 running 1, on v1 1"}
	var got [3]string
	deadline := time.Now().Add(yHealthy)
	for {
		got[0], got[1], got[2] = staged()
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the three runs never were at their stages at once within %s:\n  X: %s\n  Y: %s\n  Z: %s", yHealthy, got[0], got[1], got[2])
		}
		time.Sleep(200 * time.Millisecond)
	}
	first.stop(syscall.SIGKILL)
	t.Logf("killed %s after the pushes, all three staged", time.Since(pushed).Round(time.Millisecond))
	// Released only once the held write's client is gone: released before,
	// the proxy would still pass the dead updater's write on to Docker.
	waitFor(t, 10*time.Second, "the killed updater's write to end", func() bool { return proxy.abandoned() > 0 })
	proxy.release()
	if got[0], got[1], got[2] = staged(); got != want {
		t.Fatalf("the stages moved on by the kill:\n  X: %s\n  Y: %s\n  Z: %s", got[0], got[1], got[2])
	}
	if s := inspect(t, z).UpdateStatus; s == nil || s.State != swarm.UpdateStateUpdating {
		t.Fatalf("Z's update is %v at the kill, want updating", s)
	}
	if n := first.count("deploy started"); n != 3 {
		t.Fatalf("the killed updater started %d deploys, want 3", n)
	}

	second := startUpdater(t, stack, "UPDATER_DEPLOY_TIMEOUT=3m")
	for _, d := range []string{x2, y2, z2} {
		second.waitLog(t, 2*time.Minute, 1, "deploy succeeded", "to_digest", d, "resumed", "true")
	}
	if n := second.count("deploy started"); n != 0 {
		t.Fatalf("the restarted updater started %d deploys, want 0", n)
	}
	t.Logf("all three resumed and succeeded %s after the pushes", time.Since(pushed).Round(time.Millisecond))
	// Cycles after the last outcome: nothing is started or reported again.
	after := second.cycles()
	waitFor(t, 30*time.Second, "2 more cycles", func() bool { return second.cycles() >= after+2 })
	oneEach(t, []*updater{first, second}, 3)
	if n := first.count("deploy succeeded") + first.count("deploy failed"); n != 0 {
		t.Fatalf("the killed updater reported %d outcomes before the kill", n)
	}

	// No hook ran twice, by Docker's account and the database's.
	for _, h := range []struct {
		svc, phase string
	}{{"e2eparkill_x", "backup"}, {"e2eparkill_y", "backup"}, {"e2eparkill_y", "migrate"}} {
		if j := ev.jobs(t, h.svc, h.phase); len(j) != 1 {
			t.Fatalf("%d %s jobs of %s in Docker's events, want 1: %+v", len(j), h.phase, h.svc, j)
		}
	}
	if j := ev.jobs(t, "e2eparkill_x", "migrate"); len(j) != 0 {
		t.Fatalf("X has no migration but %d migrate jobs ran", len(j))
	}
	if runs := migrateRuns(t, dbURL, "v2"); runs != 1 {
		t.Fatalf("v2's migrate ran %d times, want once", runs)
	}
	for _, s := range []struct{ id, digest string }{{x, x2}, {y, y2}, {z, z2}} {
		ev.wantImageWrites(t, s.id, s.digest)
		waitFor(t, 30*time.Second, "converged on the new digest", func() bool { return converged(t, s.id, s.digest) })
		if n := records(t, s.id, "deploy-in-flight"); n != 0 {
			t.Fatalf("%d in-flight records left for %s", n, s.id)
		}
	}
	noJobsLeft(t)
}
