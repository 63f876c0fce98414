//go:build e2e

package e2e

import (
	"testing"
	"time"

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
	img := pushProbeImage(b, "e2e/probebench")
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
