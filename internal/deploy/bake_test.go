package deploy_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

type fakeProber struct {
	mu    sync.Mutex
	calls int
	fn    func(n int) ([]deploy.ProbeResult, error)
}

func (f *fakeProber) Probe(_ context.Context, _ deploy.Target, _ string, _ deploy.Probe) ([]deploy.ProbeResult, error) {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.mu.Unlock()
	return f.fn(n)
}

func (f *fakeProber) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func passing(int) ([]deploy.ProbeResult, error) {
	return []deploy.ProbeResult{{Task: "t-bb-running", OK: true, Passed: 3}}, nil
}

var probe = &deploy.Probe{URL: "http://{task}:8080/", Expect: deploy.Expect{Statuses: []deploy.StatusRange{{200, 299}}}, Count: 3}

// verified is a world whose rollout of newD completes healthy, and whose
// rollback returns to oldD.
func verified(t *testing.T, tg deploy.Target, prober *fakeProber) *world {
	w := newWorld(t)
	w.targets = []deploy.Target{tg}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	w.afterRollback = []deploy.Rollout{rollout("rollback_completed", oldD, task(oldD, "running"))}
	if prober != nil {
		w.p.Prober = prober
	}
	return w
}

func TestProbeFailureRollsBackAndQuarantines(t *testing.T) {
	tg := web(oldD)
	tg.Probe = probe
	prober := &fakeProber{fn: func(int) ([]deploy.ProbeResult, error) {
		return []deploy.ProbeResult{
			{Task: "t-bb-running", Node: "node-1", URL: "http://10.0.0.7:8080/", OK: true, Passed: 3},
			{Task: "t-bb-second0000", Node: "node-2", URL: "http://10.0.0.8:8080/", Status: 500, Passed: 1, Body: "database missing column"},
		}, nil
	}}
	w := verified(t, tg, prober)

	w.cycle(t.Context())

	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhaseProbe || !ev.RolledBack {
		t.Errorf("outcome phase %s rolled back %v, want probe, true", ev.Phase, ev.RolledBack)
	}
	for _, s := range []string{"t-bb-second", "node-2", "http://10.0.0.8:8080/", "answered 500", "expected 2xx", "1 of 3", "database missing column"} {
		if !strings.Contains(ev.Reason, s) {
			t.Errorf("reason %q lacks %q", ev.Reason, s)
		}
	}
	if len(w.rollbacks) != 1 || len(w.marked) != 1 || w.marked[0].digest != newD {
		t.Errorf("rollbacks %v, marked %+v: want one rollback and %s quarantined", w.rollbacks, w.marked, newD[:19])
	}
	w.journalPaired()
}

func TestProbeThatCannotRunFailsClosed(t *testing.T) {
	tg := web(oldD)
	tg.Probe = probe
	w := verified(t, tg, &fakeProber{fn: func(int) ([]deploy.ProbeResult, error) {
		return nil, errors.New("create the probe job: no such image")
	}})

	w.cycle(t.Context())

	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhaseProbe || !ev.RolledBack || !strings.Contains(ev.Reason, "could not run: create the probe job") {
		t.Errorf("outcome %s rolled back %v %q, want a probe failure, rolled back", ev.Phase, ev.RolledBack, ev.Reason)
	}
}

func TestBakeCatchesATaskThatStops(t *testing.T) {
	tg := web(oldD)
	tg.Bake = time.Hour
	w := verified(t, tg, nil)
	crashed := deploy.Task{ID: "t-crashed-0000", Node: "node-1", Image: pinned(newD), State: "failed", Desired: "shutdown", Err: "task: non-zero exit (2)"}
	w.script = []deploy.Rollout{
		rollout("completed", newD, task(newD, "running")), // judged healthy
		rollout("completed", newD, task(newD, "running")), // the bake's first looks
		rollout("completed", newD, task(newD, "running")),
		rollout("completed", newD, task(newD, "running"), crashed),
	}
	start := time.Now()

	w.cycle(t.Context())

	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhaseBake || !ev.RolledBack {
		t.Errorf("outcome phase %s rolled back %v, want bake, true", ev.Phase, ev.RolledBack)
	}
	for _, s := range []string{"t-crashed-00", "node-1", "failed", "non-zero exit (2)", "into the 1h0m0s bake"} {
		if !strings.Contains(ev.Reason, s) {
			t.Errorf("reason %q lacks %q", ev.Reason, s)
		}
	}
	if time.Since(start) > time.Minute || len(w.marked) != 1 {
		t.Errorf("took %s, marked %+v: want the crash caught at once and the digest quarantined", time.Since(start), w.marked)
	}
}

func TestBakeIgnoresWhatFailedBeforeIt(t *testing.T) {
	tg := web(oldD)
	tg.Bake = 30 * time.Millisecond
	w := verified(t, tg, nil)
	// A task of the new digest that failed during the rollout (Swarm
	// replaced it and the update completed) is the rollout's, judged.
	before := deploy.Task{ID: "t-early-0000", Image: pinned(newD), State: "failed", Desired: "shutdown", Err: "task: non-zero exit (1)"}
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"), before)}

	w.cycle(t.Context())

	if ev := w.outcome(deploy.Succeeded); ev.Baked < tg.Bake || ev.Phase != deploy.PhaseBake {
		t.Errorf("baked %s, step %s: want at least %s, and the bake the success's last step", ev.Baked, ev.Phase, tg.Bake)
	}
}

func TestBakeSucceedsAfterTheBakeWithProbes(t *testing.T) {
	tg := web(oldD)
	tg.Probe, tg.Bake = probe, 60*time.Millisecond
	prober := &fakeProber{fn: passing}
	w := verified(t, tg, prober)
	var stages []deploy.Stage
	reached := w.journal.ReachedFn
	w.journal.ReachedFn = func(ctx context.Context, r deploy.Release, s deploy.Stage) error {
		stages = append(stages, s)
		return reached(ctx, r, s)
	}

	w.cycle(t.Context())

	ev := w.outcome(deploy.Succeeded)
	if ev.Baked < tg.Bake {
		t.Errorf("baked %s, want at least %s", ev.Baked, tg.Bake)
	}
	if len(stages) == 0 || stages[len(stages)-1] != deploy.StageBaking {
		t.Errorf("stages noted %v, want baking last", stages)
	}
	if prober.count() != 1 {
		t.Errorf("%d probes, want 1 (a bake shorter than %s probes no more)", prober.count(), deploy.BakeProbeEvery)
	}
	// The order people see: probed, baking until, baked, then succeeded.
	var seq []string
	for _, e := range w.events {
		switch {
		case e.Kind == deploy.Progress && e.Step != nil && (e.Step.Phase == deploy.PhaseProbe || e.Step.Phase == deploy.PhaseBake):
			seq = append(seq, string(e.Step.Phase)+" "+string(e.Step.State))
			if e.Step.Phase == deploy.PhaseBake && e.Step.Until.IsZero() {
				t.Errorf("bake progress without its end time")
			}
		case e.Kind == deploy.Succeeded:
			seq = append(seq, "succeeded")
		}
	}
	want := "probe started,probe succeeded,bake started,bake succeeded,succeeded"
	if strings.Join(seq, ",") != want {
		t.Errorf("events %v, want %s", seq, want)
	}
}

func TestResumedBakeCountsTheTimeBaked(t *testing.T) {
	tg := web(newD)
	tg.Probe, tg.Bake = probe, 10*time.Minute
	prober := &fakeProber{fn: passing}
	w := verified(t, tg, prober)
	rel := journaled(time.Now().Add(-time.Hour))
	rel.Stage, rel.StageAt = deploy.StageBaking, time.Now().Add(-11*time.Minute)
	w.open = []deploy.Release{rel}
	w.services.UpdateFn = nil

	w.cycle(t.Context())

	if got := w.kinds(); len(got) != 1 || got[0] != deploy.Succeeded {
		t.Fatalf("events %v, want one Succeeded", got)
	}
	if ev := w.milestones()[0]; !ev.Resumed || ev.Baked < 11*time.Minute {
		t.Errorf("resumed %v baked %s: want the 11 minutes baked before the restart counted", ev.Resumed, ev.Baked)
	}
	if prober.count() != 0 {
		t.Errorf("%d probes: a bake resumed was probed before it began", prober.count())
	}
}

func TestBakeEndsWhenANewerDigestIsPlanned(t *testing.T) {
	tg := web(oldD)
	tg.Bake = time.Hour
	w := verified(t, tg, nil)
	w.writesLand()
	baking := make(chan struct{})
	var once sync.Once
	w.p.Reporter = &fakeReporter{ReportFn: func(e deploy.Event) {
		w.mu.Lock()
		w.events = append(w.events, e)
		w.mu.Unlock()
		if e.Step != nil && e.Step.Phase == deploy.PhaseBake && e.Step.State == deploy.StepStarted {
			once.Do(func() { close(baking) })
		}
	}}
	if _, err := w.p.Cycle(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-baking:
	case <-time.After(30 * time.Second):
		t.Fatal("the bake never began")
	}
	w.mu.Lock()
	w.digests[ref] = "sha256:" + strings.Repeat("c", 64)
	w.mu.Unlock()
	if _, err := w.p.Cycle(t.Context()); err != nil {
		t.Fatal(err)
	}
	landed := make(chan struct{})
	go func() { w.p.Wait(); close(landed) }()
	select {
	case <-landed:
	case <-time.After(30 * time.Second):
		t.Fatal("the bake went on after a newer digest was planned")
	}

	ev := w.outcome(deploy.Succeeded)
	if ev.Release.To != newD || ev.Baked >= time.Hour {
		t.Errorf("succeeded %s after %s baked, want %s, ended early", ev.Release.To[:19], ev.Baked, newD[:19])
	}
	if len(w.logLines("INFO", "bake ended early")) != 1 {
		t.Errorf("no log line says the bake ended early")
	}
}

func TestParseProbeLabels(t *testing.T) {
	good, err := deploy.ParseProbe(map[string]string{
		deploy.LabelProbeURL: "http://{task}:8080/orders?limit=1", deploy.LabelProbeExpect: "200,204 body~=orders",
		deploy.LabelProbeCount: "5", deploy.LabelProbeInterval: "1s", deploy.LabelProbeTimeout: "3s", deploy.LabelProbeHeader: "Host:  shop.example.com",
	})
	if err != nil {
		t.Fatal(err)
	}
	if good.Count != 5 || good.Interval != time.Second || good.Timeout != 3*time.Second || good.Header != "Host: shop.example.com" || good.Expect.String() != "200,204 body~=orders" {
		t.Errorf("parsed %+v", good)
	}
	if u := good.For("10.0.1.5", "shop_web", newD); u != "http://10.0.1.5:8080/orders?limit=1" {
		t.Errorf("URL %s", u)
	}
	if d, err := deploy.ParseProbe(map[string]string{deploy.LabelProbeURL: "http://{task}/"}); err != nil || d.Count != 3 || d.Interval != 2*time.Second || d.Timeout != 5*time.Second || !d.Expect.Match(204, nil) || d.Expect.Match(301, nil) {
		t.Errorf("defaults %+v, %v", d, err)
	}
	if p, err := deploy.ParseProbe(map[string]string{}); p != nil || err != nil {
		t.Errorf("no labels: %+v, %v", p, err)
	}
	for _, c := range []struct {
		labels map[string]string
		want   string // in the error
	}{
		{map[string]string{deploy.LabelProbeURL: "http://{task}:8080/{path}"}, "unknown placeholder {path}"},
		{map[string]string{deploy.LabelProbeURL: "http://db:8080/"}, "names no {task}"},
		{map[string]string{deploy.LabelProbeURL: "ftp://{task}/"}, "http:// or https://"},
		{map[string]string{deploy.LabelProbeURL: "http://x{task}.example.com/"}, "host must be {task}"},
		{map[string]string{deploy.LabelProbeURL: "http://{task}/", deploy.LabelProbeExpect: "600"}, `"600" is not an HTTP status`},
		{map[string]string{deploy.LabelProbeURL: "http://{task}/", deploy.LabelProbeExpect: "body~="}, "names no text"},
		{map[string]string{deploy.LabelProbeURL: "http://{task}/", deploy.LabelProbeExpect: ""}, "no status"},
		{map[string]string{deploy.LabelProbeURL: "http://{task}/", deploy.LabelProbeCount: "0"}, "1 to 100"},
		{map[string]string{deploy.LabelProbeURL: "http://{task}/", deploy.LabelProbeInterval: "2"}, "updater.probe.interval=\"2\""},
		{map[string]string{deploy.LabelProbeURL: "http://{task}/", deploy.LabelProbeHeader: "no colon"}, "Name: value"},
		{map[string]string{deploy.LabelProbeURL: "http://{task}/", deploy.LabelProbeHeader: "X: a\r\nEvil: b"}, "Name: value"},
		{map[string]string{deploy.LabelProbeCount: "3"}, "set without updater.probe.url"},
	} {
		_, err := deploy.ParseProbe(c.labels)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want one with %q", c.labels, err, c.want)
		}
	}
	for v, ok := range map[string]bool{"": true, "10s": true, "24h": true, "9s": false, "25h": false, "soon": false} {
		if _, err := deploy.ParseBake(v); (err == nil) != ok {
			t.Errorf("ParseBake(%q) = %v, want ok %v", v, err, ok)
		}
	}
}

func TestMaskURL(t *testing.T) {
	got := deploy.MaskURL("https://probe:s3cret@10.0.0.2:8443/health?token=abc&x=1")
	if strings.Contains(got, "s3cret") || strings.Contains(got, "abc") || !strings.Contains(got, "10.0.0.2:8443/health") {
		t.Errorf("masked %s", got)
	}
}

func FuzzParseProbe(f *testing.F) {
	for _, s := range [][3]string{{"http://{task}:8080/", "2xx", "3"}, {"https://{task}/x?{digest}", "200,204 body~=ok", "1"}, {"http://[{task}]/", "5xx", "100"}, {"{task}", "", "-1"}} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, u, expect, count string) {
		p, err := deploy.ParseProbe(map[string]string{deploy.LabelProbeURL: u, deploy.LabelProbeExpect: expect, deploy.LabelProbeCount: count})
		if err != nil {
			return
		}
		// What parses makes a URL to the task, and an expectation that
		// some status meets.
		if p.Count < 1 || len(p.Expect.Statuses) == 0 || !p.Expect.Match(p.Expect.Statuses[0].Lo, []byte(p.Expect.Body)) {
			t.Fatalf("parsed %+v", p)
		}
		if !strings.Contains(p.For("10.9.8.7", "svc", "sha256:0"), "10.9.8.7") {
			t.Fatalf("URL of %q does not reach the task", u)
		}
	})
}

func TestProbeLabelErrorsMaskTokens(t *testing.T) {
	for _, u := range []string{"http://{task}:8080/h?token=S3CRET&x={svc}", "http://S3CRET@{task}/x{nope}", "http://u:S3CRET@{task}/{path}"} {
		_, err := deploy.ParseProbe(map[string]string{deploy.LabelProbeURL: u})
		if err == nil || strings.Contains(err.Error(), "S3CRET") {
			t.Errorf("%s: %v, want an error that does not show the token", u, err)
		}
	}
	if got := deploy.MaskURL("http://T0KEN@10.0.0.1/"); strings.Contains(got, "T0KEN") {
		t.Errorf("masked %s", got)
	}
}

func TestNoProberRefusesBeforeTheWrite(t *testing.T) {
	tg := web(oldD)
	tg.Probe = probe
	w := verified(t, tg, nil)

	w.cycle(t.Context())

	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhasePrepare || len(w.updates) != 0 || !strings.Contains(ev.Reason, "UPDATER_PROBE_IMAGE") {
		t.Fatalf("outcome %s %q, %d writes: want refused before the write, naming UPDATER_PROBE_IMAGE", ev.Phase, ev.Reason, len(w.updates))
	}
}
