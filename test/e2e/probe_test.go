//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
	updaterswarm "github.com/updater-dev/updater/internal/swarm"
)

// Beyond the health check (docs/probes.md): a probe of every new task from
// a job on the service's network, and a bake that watches the service
// after Swarm called the rollout done.

// overlay creates an overlay network of the test's own, removed when the
// test's services are gone (a network with tasks on it can't go).
func overlay(t testing.TB, name string) string {
	t.Helper()
	res, err := env.docker.NetworkCreate(context.Background(), name, client.NetworkCreateOptions{Driver: "overlay"})
	if err != nil {
		t.Fatalf("create network %s: %v", name, err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := env.docker.NetworkRemove(context.Background(), res.ID, client.NetworkRemoveOptions{})
			if err == nil || strings.Contains(err.Error(), "not found") || time.Now().After(deadline) {
				if err != nil && !strings.Contains(err.Error(), "not found") {
					t.Logf("network %s left behind: %v", name, err)
				}
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	return res.ID
}

// createOn is createService with the service attached to net (by name, as
// a stack file attaches it) and env set.
func createOn(t testing.TB, svcName, repo, digest, net string, o svcOpts) string {
	t.Helper()
	spec := serviceSpec(svcName, repo, digest, o)
	spec.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: net}}
	res, err := env.docker.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		t.Fatalf("create service %s: %v", svcName, err)
	}
	t.Cleanup(func() { removeService(res.ID) })
	waitFor(t, 60*time.Second, svcName+" running", func() bool { return allRunning(t, res.ID, "") })
	return res.ID
}

// probeLabels label a service with a probe of / on its tasks, quick.
func probeLabels(extra ...string) map[string]string {
	l := map[string]string{deploy.LabelProbeURL: "http://{task}:8080/?token=s3cret-token", deploy.LabelProbeCount: "3",
		deploy.LabelProbeInterval: "1s", deploy.LabelProbeTimeout: "2s", deploy.LabelProbeExpect: "200 body~=v"}
	for i := 0; i+1 < len(extra); i += 2 {
		l[extra[i]] = extra[i+1]
	}
	return l
}

// The probe job on the real swarm, called as the pipeline calls it: a
// 2-replica service that answers passes, each task 3 times in a row; one
// whose / answers 500 fails, with its task, status and body named and the
// URL's token masked; a service whose probe names a network it is not on
// is refused from its labels. No job service or container is left behind.
func TestProbeJob(t *testing.T) {
	const stack, repo = "e2eprobejob", "e2e/probejob-app"
	img := pushUpdaterImage(t, "e2e/probejob")
	net := stack + "_default"
	overlay(t, net)
	good := push(t, repo, "v1")
	bad := push(t, repo, "probe500")
	createOn(t, stack+"_good", repo, good, net, svcOpts{stack: stack, optIn: true, replicas: 2, labels: probeLabels()})
	createOn(t, stack+"_bad", repo, bad, net, svcOpts{stack: stack, optIn: true, labels: probeLabels(deploy.LabelProbeNetwork, "default")})
	createOn(t, stack+"_lost", repo, good, net, svcOpts{stack: stack, optIn: true, labels: probeLabels(deploy.LabelProbeNetwork, "backend")})

	sw, err := updaterswarm.New(updaterswarm.Config{Label: "updater.enable", Stack: stack, Holder: "e2e-probejob"})
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close()
	targets, err := sw.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]deploy.Target{}
	for _, tg := range targets {
		by[tg.Name] = tg
	}
	lost := by[stack+"_lost"]
	if lost.HooksErr == nil || lost.Probe != nil || !strings.Contains(lost.HooksErr.Error(), `label updater.probe.network="backend"`) ||
		!strings.Contains(lost.HooksErr.Error(), net) {
		t.Errorf("a probe on a network the service is not on: %v, probe %+v; want it refused naming the label and the service's network", lost.HooksErr, lost.Probe)
	}
	prober := updaterswarm.ProbeJobs{Swarm: sw, Image: img}
	for _, name := range []string{stack + "_good", stack + "_bad"} {
		if by[name].HooksErr != nil || by[name].Probe == nil {
			t.Fatalf("%s: probe %+v, %v", name, by[name].Probe, by[name].HooksErr)
		}
	}

	gt := by[stack+"_good"]
	start := time.Now()
	res, err := prober.Probe(t.Context(), gt, good, *gt.Probe)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("probe the good service: %v", err)
	}
	tasks := runningTasks(t, gt.ID)
	if len(res) != 2 || len(tasks) != 2 {
		t.Fatalf("%d results for %d running tasks, want 2: %+v", len(res), len(tasks), res)
	}
	for _, r := range res {
		if !r.OK || r.Passed != 3 || !tasks[r.Task] || r.Node == "" || strings.Contains(r.URL, "s3cret") {
			t.Errorf("good task: %+v", r)
		}
	}
	t.Logf("2 tasks probed 3 times 1 s apart in %s (the probes alone take 2 s)", took.Round(10*time.Millisecond))

	bt := by[stack+"_bad"]
	res, err = prober.Probe(t.Context(), bt, bad, *bt.Probe)
	if err != nil {
		t.Fatalf("probe the bad service: %v", err)
	}
	btasks := runningTasks(t, bt.ID)
	if len(res) != 1 || res[0].OK || res[0].Status != 500 || res[0].Passed != 0 || !btasks[res[0].Task] ||
		!strings.Contains(res[0].Body, `relation "orders" does not exist`) || strings.Contains(res[0].URL, "s3cret") ||
		!strings.Contains(res[0].URL, "token=xxxxx") {
		t.Errorf("bad task: %+v", res)
	}
	// The tasks of another digest are not probed: there are none at it.
	if _, err := prober.Probe(t.Context(), bt, good, *bt.Probe); err == nil || !strings.Contains(err.Error(), "no running task") {
		t.Errorf("probe of a digest no task runs: %v", err)
	}
	noJobsLeft(t)
}

// runningTasks are the IDs of the service's tasks running now.
func runningTasks(t testing.TB, id string) map[string]bool {
	t.Helper()
	res, err := env.docker.TaskList(context.Background(), client.TaskListOptions{
		Filters: make(client.Filters).Add("service", id).Add("desired-state", "running")})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, task := range res.Items {
		if task.Status.State == swarm.TaskStateRunning {
			out[task.ID] = true
		}
	}
	return out
}

// tasksOf are the service's tasks (every state) that run digest.
func tasksOf(t testing.TB, id, digest string) []swarm.Task {
	t.Helper()
	res, err := env.docker.TaskList(context.Background(), client.TaskListOptions{Filters: make(client.Filters).Add("service", id)})
	if err != nil {
		t.Fatal(err)
	}
	var out []swarm.Task
	for _, task := range res.Items {
		if task.Spec.ContainerSpec != nil && strings.HasSuffix(task.Spec.ContainerSpec.Image, "@"+digest) {
			out = append(out, task)
		}
	}
	return out
}

// namesTask reports whether s names one of tasks by its ID's start, as
// reports do.
func namesTask(s string, tasks []swarm.Task) bool {
	for _, task := range tasks {
		if strings.Contains(s, task.ID[:12]) {
			return true
		}
	}
	return false
}

// Prove it 1: a version whose health check passes but whose / answers 500,
// labelled with a probe of /: rolled back, its digest quarantined, one
// failure report with step=probe, the status and the task named; the next
// 3 cycles leave it alone. The probe job leaves nothing behind.
func TestProbeFailureRollsBack(t *testing.T) {
	const stack, repo = "e2eprobe", "e2e/probe-app"
	img := pushUpdaterImage(t, "e2e/probe-job")
	net := stack + "_default"
	overlay(t, net)
	good := push(t, repo, "v1")
	app := createOn(t, stack+"_app", repo, good, net, svcOpts{stack: stack, optIn: true, replicas: 2, labels: probeLabels()})
	u := startUpdater(t, stack, "UPDATER_PROBE_IMAGE="+img)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	bad := push(t, repo, "probe500")
	u.waitLog(t, deployLimit, 1, "deploy failed", "service", stack+"_app", "to_digest", bad)
	failed := u.find("deploy failed", "to_digest", bad)
	why := fmt.Sprint(failed["err"])
	if failed["step"] != "probe" || failed["rolled_back"] != true || !strings.Contains(why, "500") ||
		!namesTask(why, tasksOf(t, app, bad)) || !strings.Contains(why, "token=xxxxx") || strings.Contains(u.log(), "s3cret-token") {
		t.Fatalf("failure event: step=%v rolled_back=%v err=%q: want probe, rolled back, the status and a task of %s named, the token masked everywhere",
			failed["step"], failed["rolled_back"], why, bad[:19])
	}
	waitFor(t, deployLimit, "app back on v1 and running", func() bool { return allRunning(t, app, good) })
	if n := records(t, app, "failed-digest"); n != 1 {
		t.Fatalf("%d failed-digest records in Swarm, want 1 (the digest quarantined)", n)
	}
	ver := inspect(t, app).Version.Index
	after := u.cycles()
	waitFor(t, 30*time.Second, "3 more cycles", func() bool { return u.cycles() >= after+3 })
	if n := u.count("deploy started", "to_digest", bad); n != 1 {
		t.Fatalf("the bad digest was started %d times, want once", n)
	}
	if n := u.count("deploy failed") + u.count("deploy succeeded"); n != 1 {
		t.Fatalf("%d outcome reports, want 1", n)
	}
	if v := inspect(t, app).Version.Index; v != ver {
		t.Fatalf("service spec version moved %d -> %d while the tag stayed on the quarantined digest", ver, v)
	}
	noJobsLeft(t)
}

// Prove it 2: a version that turns healthy and exits 14 s later, with
// update_config.monitor 5s and updater.bake 40s: Swarm reports the update
// completed; the updater rolls back within one watch interval (and the
// calls it takes) of the crash, and reports step=bake. (The crash came
// 20 s in before, 26.5 s the test; Swarm completes the update about 7 s
// in: health and the 5 s monitor.)
func TestBakeCatchesLateCrash(t *testing.T) {
	const stack, repo = "e2ebake", "e2e/bake-app"
	good := push(t, repo, "v1")
	spec := serviceSpec(stack+"_app", repo, good, svcOpts{stack: stack, optIn: true, env: []string{"CRASH_AFTER=14s"},
		labels: map[string]string{deploy.LabelBake: "40s"}})
	spec.UpdateConfig.Monitor = 5 * time.Second
	res, err := env.docker.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	app := res.ID
	t.Cleanup(func() { removeService(app) })
	waitFor(t, 60*time.Second, "app running", func() bool { return allRunning(t, app, good) })
	u := startUpdater(t, stack)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	bad := push(t, repo, "crashlate")
	waitFor(t, deployLimit, "Swarm to call the update to crashlate completed", func() bool {
		s := inspect(t, app)
		return specDigest(t, app) == bad && s.UpdateStatus != nil && s.UpdateStatus.State == swarm.UpdateStateCompleted
	})
	if n := u.count("deploy failed") + u.count("deploy succeeded"); n != 0 {
		t.Fatalf("%d outcomes reported when Swarm completed the update: want none before the bake", n)
	}
	u.waitLog(t, deployLimit, 1, "deploy failed", "service", stack+"_app", "to_digest", bad)
	failed := u.find("deploy failed", "to_digest", bad)
	why := fmt.Sprint(failed["err"])
	if failed["step"] != "bake" || failed["rolled_back"] != true || !strings.Contains(why, "40s bake") {
		t.Fatalf("failure event: step=%v rolled_back=%v err=%q: want bake, rolled back, when in the bake", failed["step"], failed["rolled_back"], why)
	}
	// When the first crashlate task died, by Swarm's clock, and when the
	// rollback began, by the same clock.
	var crash time.Time
	for _, task := range tasksOf(t, app, bad) {
		if task.Status.State == swarm.TaskStateFailed && (crash.IsZero() || task.Status.Timestamp.Before(crash)) {
			crash = task.Status.Timestamp
		}
	}
	if crash.IsZero() || !namesTask(why, tasksOf(t, app, bad)) {
		t.Fatalf("no crashlate task failed in Docker, or the report %q names none", why)
	}
	waitFor(t, deployLimit, "app back on v1", func() bool { return allRunning(t, app, good) })
	s := inspect(t, app)
	if s.UpdateStatus == nil || s.UpdateStatus.StartedAt == nil {
		t.Fatalf("no update status after the rollback: %+v", s.UpdateStatus)
	}
	delay := s.UpdateStatus.StartedAt.Sub(crash)
	t.Logf("crash at %s, rollback began %s later (watch interval 200ms)", crash.Format(time.RFC3339Nano), delay)
	if delay < 0 || delay > 200*time.Millisecond+2*time.Second {
		t.Fatalf("rollback began %s after the crash, want within one watch interval (200ms) and its calls", delay)
	}
	if n := records(t, app, "failed-digest"); n != 1 {
		t.Fatalf("%d failed-digest records, want 1", n)
	}
	if n := u.count("deploy failed") + u.count("deploy succeeded"); n != 1 {
		t.Fatalf("%d outcome reports, want 1", n)
	}
}

// loggedAt is when the updater logged line.
func loggedAt(t testing.TB, line map[string]any) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, fmt.Sprint(line["time"]))
	if err != nil {
		t.Fatalf("log line without a time: %v", line)
	}
	return ts
}

// logDuration reads a duration the log wrote as a Go string ("20.5s") or
// as nanoseconds.
func logDuration(v any) (time.Duration, bool) {
	switch v := v.(type) {
	case string:
		d, err := time.ParseDuration(v)
		return d, err == nil
	case float64:
		return time.Duration(v), true
	}
	return 0, false
}

// Prove it 3: a good version with a probe and a 10 s bake: probed, baked,
// and reported succeeded once, after the bake, with the bake's duration.
// (20 s before, 34.7 s the test; 10 s is still ten cycles and fifty watch
// intervals: a success before the bake's end shows.)
func TestProbeAndBakeSucceed(t *testing.T) {
	const stack, repo = "e2eprobebake", "e2e/probebake-app"
	const bake = 10 * time.Second
	img := pushUpdaterImage(t, "e2e/probebake-job")
	net := stack + "_default"
	overlay(t, net)
	good := push(t, repo, "v1")
	app := createOn(t, stack+"_app", repo, good, net, svcOpts{stack: stack, optIn: true, replicas: 2,
		labels: probeLabels(deploy.LabelBake, bake.String())})
	u := startUpdater(t, stack, "UPDATER_PROBE_IMAGE="+img)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	next := push(t, repo, "v4")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "service", stack+"_app", "to_digest", next)
	probed := u.find("deploy progress", "to_digest", next, "step", "probe", "state", "succeeded")
	baking := u.find("deploy progress", "to_digest", next, "step", "bake", "state", "started")
	done := u.find("deploy succeeded", "to_digest", next)
	if probed == nil || baking == nil {
		t.Fatalf("no probe passed (%v) or no bake begun (%v) before the success", probed, baking)
	}
	if a, b := loggedAt(t, probed), loggedAt(t, baking); b.Before(a) {
		t.Fatalf("the bake began at %s, before the probe passed at %s", b, a)
	}
	// The bake's end as its start announced it (its start is taken just
	// before that line is written): the success comes after it.
	until, err := time.Parse(time.RFC3339Nano, fmt.Sprint(baking["until"]))
	if err != nil {
		t.Fatalf("the bake's start names no end: %v", baking)
	}
	if d := until.Sub(loggedAt(t, baking)); d < bake-time.Second || d > bake {
		t.Fatalf("the bake announced at %s ends at %s: want %s after it began", loggedAt(t, baking), until, bake)
	}
	if at := loggedAt(t, done); at.Before(until) {
		t.Fatalf("succeeded at %s, before the bake's end %s", at, until)
	}
	if baked, ok := logDuration(done["baked"]); !ok || baked < bake {
		t.Fatalf("success event %v: want the bake's duration (baked >= %s)", done, bake)
	}
	if n := u.count("deploy succeeded") + u.count("deploy failed"); n != 1 {
		t.Fatalf("%d outcome reports, want 1", n)
	}
	if !allRunning(t, app, next) || records(t, app, "deploy-in-flight") != 0 {
		t.Fatal("reported success, but v4 is not running everywhere or the deploy record stayed")
	}
	noJobsLeft(t)
}

// Prove it 4: an updater SIGKILLed mid-bake; the one started after it
// finishes the bake from the run's record, counting the time already
// baked (it does not bake again in full), and the deploy is reported once.
func TestKilledMidBake(t *testing.T) {
	const stack, repo = "e2ekillbake", "e2e/killbake-app"
	// A third of the bake before the kill; the restart (a 3 s lease TTL)
	// resumes well within the rest. (30 s and 10 s before: 37.3 s the test.)
	const bake, killAt = 15 * time.Second, 5 * time.Second
	good := push(t, repo, "v1")
	app := createService(t, stack+"_app", repo, good, svcOpts{stack: stack, optIn: true, labels: map[string]string{deploy.LabelBake: bake.String()}})
	first := startUpdater(t, stack)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return first.cycles() >= 1 })

	next := push(t, repo, "v2")
	first.waitLog(t, deployLimit, 1, "deploy progress", "to_digest", next, "step", "bake", "state", "started")
	started := first.find("deploy progress", "to_digest", next, "step", "bake", "state", "started")
	began := loggedAt(t, started)
	until, err := time.Parse(time.RFC3339Nano, fmt.Sprint(started["until"]))
	if err != nil {
		t.Fatalf("the bake's start names no end: %v", started)
	}
	// Killed a third of the way in: a bake begun again in full would end
	// killAt later than one resumed.
	waitFor(t, bake, killAt.String()+" of the bake", func() bool { return time.Since(began) >= killAt })
	first.stop(9)
	if n := first.count("deploy succeeded") + first.count("deploy failed"); n != 0 {
		t.Fatalf("the first updater reported an outcome before the kill (%d)", n)
	}
	if n := records(t, app, "deploy-in-flight"); n != 1 {
		t.Fatalf("%d in-flight records after the kill, want 1", n)
	}

	second := startUpdater(t, stack)
	second.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", next, "resumed", "true")
	ended := loggedAt(t, second.find("deploy succeeded", "to_digest", next))
	total := ended.Sub(began)
	t.Logf("bake of %s began %s, killed %s in, succeeded %s after it began", bake, began.Format(time.RFC3339), killAt, total)
	// Not before the end the first updater announced; well before the
	// end of a bake begun again in full after the restart.
	if ended.Before(until) || total >= bake+killAt {
		t.Fatalf("succeeded %s after the bake began (its end was %s): want the %s bake finished, the %s baked before the kill counted",
			total, until.Format(time.RFC3339Nano), bake, killAt)
	}
	if n := second.count("deploy started"); n != 0 {
		t.Fatalf("the restarted updater started the deploy again (%d times)", n)
	}
	if n := second.count("deploy succeeded") + second.count("deploy failed"); n != 1 {
		t.Fatalf("%d outcome reports after the restart, want 1", n)
	}
	if !allRunning(t, app, next) || records(t, app, "deploy-in-flight") != 0 {
		t.Fatal("v2 not running everywhere, or the deploy record stayed")
	}
}
