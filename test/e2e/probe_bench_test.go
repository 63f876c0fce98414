//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
	updaterswarm "github.com/updater-dev/updater/internal/swarm"
)

// BenchmarkProbeOverhead is what a probe adds to a deploy of a 2-replica
// service beyond its own probes: the probe job created on the service's
// network, scheduled and started, its results read from its log, the job
// removed. Each task is probed 3 times 1 s apart; the metric is the time
// per probe beyond count × interval (3 s), the target being at most 1 s.
// Run: make bench-e2e.
func BenchmarkProbeOverhead(b *testing.B) {
	const stack, repo = "e2eprobebench", "e2e/probebench-app"
	img := pushUpdaterImage(b, "e2e/probebench")
	net := stack + "_default"
	overlay(b, net)
	d := push(b, repo, "v1")
	id := createOn(b, stack+"_app", repo, d, net, svcOpts{stack: stack, optIn: true, replicas: 2, labels: probeLabels()})
	sw, err := updaterswarm.New(updaterswarm.Config{Label: "updater.enable", Stack: stack, Holder: "e2e-probebench"})
	if err != nil {
		b.Fatal(err)
	}
	defer sw.Close()
	targets, err := sw.List(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	var tg deploy.Target
	for _, t := range targets {
		if t.ID == id {
			tg = t
		}
	}
	if tg.Probe == nil {
		b.Fatalf("no probe read from the labels: %v", tg.HooksErr)
	}
	prober := updaterswarm.ProbeJobs{Swarm: sw, Image: img}
	// The image pulled once, as on a node that ran a probe before.
	if _, err := prober.Probe(b.Context(), tg, d, *tg.Probe); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var worst time.Duration
	for b.Loop() {
		start := time.Now()
		res, err := prober.Probe(b.Context(), tg, d, *tg.Probe)
		if err != nil || len(res) != 2 || !res[0].OK || !res[1].OK {
			b.Fatalf("probe: %+v, %v", res, err)
		}
		worst = max(worst, time.Since(start))
	}
	probes := time.Duration(tg.Probe.Count) * tg.Probe.Interval
	b.ReportMetric((b.Elapsed()/time.Duration(b.N) - probes).Seconds(), "s-beyond-count×interval/op")
	b.ReportMetric((worst - probes).Seconds(), "worst-s-beyond/op")
}

// BenchmarkBakeCrashToRollback is the delay from a crash in the bake
// window to the rollback's start, both read from Docker (the failed task's
// timestamp, the service's update status): each op deploys a version that
// exits 6 s after it started, past Swarm's 1 s monitor, into a 10 s bake.
// The target is at most one watch interval (200 ms here) and the calls
// the rollback takes. Run: make bench-e2e.
func BenchmarkBakeCrashToRollback(b *testing.B) {
	const stack, repo = "e2ebakebench", "e2e/bakebench-app"
	good := push(b, repo, "v1")
	spec := serviceSpec(stack+"_app", repo, good, svcOpts{stack: stack, optIn: true, env: []string{"CRASH_AFTER=6s"},
		labels: map[string]string{deploy.LabelBake: "10s"}})
	spec.UpdateConfig.Monitor = time.Second
	res, err := env.docker.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		b.Fatal(err)
	}
	app := res.ID
	b.Cleanup(func() { removeService(app) })
	waitFor(b, time.Minute, "app running", func() bool { return allRunning(b, app, good) })
	u := startUpdater(b, stack)
	waitFor(b, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
	var total, worst time.Duration
	b.ResetTimer()
	for b.Loop() {
		bad := push(b, repo, "crashlate")
		u.waitLog(b, deployLimit, 1, "deploy failed", "to_digest", bad)
		waitFor(b, deployLimit, "the rollback to v1", func() bool { return allRunning(b, app, good) })
		var crash time.Time
		for _, task := range tasksOf(b, app, bad) {
			if task.Status.State == swarm.TaskStateFailed && (crash.IsZero() || task.Status.Timestamp.Before(crash)) {
				crash = task.Status.Timestamp
			}
		}
		s := inspect(b, app)
		if crash.IsZero() || s.UpdateStatus == nil || s.UpdateStatus.StartedAt == nil {
			b.Fatalf("no crash (%s) or no rollback (%+v) in Docker", crash, s.UpdateStatus)
		}
		d := s.UpdateStatus.StartedAt.Sub(crash)
		total += d
		worst = max(worst, d)
	}
	b.ReportMetric((total / time.Duration(b.N)).Seconds(), "s-crash-to-rollback/op")
	b.ReportMetric(worst.Seconds(), "worst-s/op")
}
