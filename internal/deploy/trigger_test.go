package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

func TestPushMatches(t *testing.T) {
	hub := func(repo, tag string) deploy.Push {
		return deploy.Push{Registry: "docker.io", Repository: repo, Tag: tag}
	}
	tests := []struct {
		push deploy.Push
		ref  string
		want bool
	}{
		{hub("library/nginx", "1.27"), "nginx:1.27", true},
		{hub("nginx", "1.27"), "nginx:1.27", true},
		{hub("nginx", "1.27"), "docker.io/library/nginx:1.27", true},
		{deploy.Push{Registry: "index.docker.io", Repository: "nginx", Tag: "1.27"}, "nginx:1.27", true},
		{hub("nginx", "1.27"), "nginx:1.26", false},
		{hub("nginx", "latest"), "nginx", false}, // Target.Ref always carries the tag
		{hub("acme/web", "latest"), "acme/web:latest", true},
		{hub("acme/web", "latest"), "acme/web:latest@sha256:" + "0123", true},
		{hub("acme/web", "latest"), "ghcr.io/acme/web:latest", false},
		{hub("acme/web", "latest"), "acme/webshop:latest", false},
		{deploy.Push{Registry: "ghcr.io", Repository: "Acme/Web", Tag: "main"}, "ghcr.io/acme/web:main", true},
		{deploy.Push{Registry: "ghcr.io", Repository: "acme/web", Tag: "main"}, "GHCR.io/acme/web:main", true},
		{deploy.Push{Registry: "ghcr.io", Repository: "acme/web", Tag: "Main"}, "ghcr.io/acme/web:main", false},
		{deploy.Push{Registry: "ghcr.io", Repository: "acme/web", Tag: "main"}, "acme/web:main", false},
		// A distribution registry does not know the name the services use
		// for it: repository and tag match on any registry.
		{deploy.Push{Repository: "team/app", Tag: "latest"}, "registry.local:5000/team/app:latest", true},
		{deploy.Push{Repository: "team/app", Tag: "latest"}, "127.0.0.1:5000/team/app:latest", true},
		{deploy.Push{Repository: "app", Tag: "latest"}, "localhost/app:latest", true},
		{deploy.Push{Repository: "app", Tag: "latest"}, "app:latest", true},
		{deploy.Push{Repository: "team/app", Tag: "latest"}, "registry.local:5000/team/app:v2", false},
		{deploy.Push{Repository: "team/app", Tag: "latest"}, "registry.local:5000/other/team/app:latest", false},
		{deploy.Push{Registry: "registry.local:5000", Repository: "team/app", Tag: "1"}, "registry.local:5000/team/app:1", true},
		{deploy.Push{Registry: "registry.local:5000", Repository: "team/app", Tag: "1"}, "registry.local/team/app:1", false},
		{deploy.Push{Repository: "team/app", Tag: ""}, "registry.local/team/app", false},
	}
	for _, tt := range tests {
		if got := tt.push.Matches(tt.ref); got != tt.want {
			t.Errorf("%v.Matches(%q) = %v, want %v", tt.push, tt.ref, got, tt.want)
		}
	}
	for _, r := range []string{"nginx:1", "acme/web:latest", "ghcr.io/acme/web:main", "127.0.0.1:5000/e2e/roll:latest", "localhost/app:v1"} {
		if !deploy.PushOf(r).Matches(r) {
			t.Errorf("PushOf(%q) = %v does not match its own ref", r, deploy.PushOf(r))
		}
	}
}

// A push's cycle asks the registry about the pushed tag only, and deploys
// only the services that track it.
func TestCycleForPushedTagOnly(t *testing.T) {
	w := newWorld(t)
	other := web(oldD)
	other.ID, other.Name, other.Image = "svc2", "other", "127.0.0.1:5000/other:1@"+oldD
	w.targets = []deploy.Target{web(oldD), other}
	w.digests[ref] = newD
	w.digests["127.0.0.1:5000/other:1"] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	var mu sync.Mutex
	var asked []string
	digest := w.registry.DigestFn
	w.registry.DigestFn = func(ctx context.Context, r string) (string, error) {
		mu.Lock()
		asked = append(asked, r)
		mu.Unlock()
		return digest(ctx, r)
	}
	plans, err := w.p.CycleFor(context.Background(), []deploy.Push{deploy.PushOf(ref)})
	if err != nil {
		t.Fatal(err)
	}
	w.p.Wait()
	if len(plans) != 1 || plans[0].Target.Name != "web" || !slices.Equal(asked, []string{ref}) {
		t.Fatalf("plans %v, registry asked about %v: want web only", plans, asked)
	}
	if len(w.updates) != 1 || w.updates[0].image != pinned(newD) {
		t.Fatalf("updates %+v, want web's only", w.updates)
	}
	// No push at all is every service, the safe way to be wrong.
	asked = nil
	if plans, err := w.p.CycleFor(context.Background(), nil); err != nil || len(plans) != 2 || len(asked) != 2 {
		t.Fatalf("CycleFor(nil): %d plans, asked %v, %v", len(plans), asked, err)
	}
}

// Status tells what the last cycles saw; a failing list is there too.
func TestStatus(t *testing.T) {
	w := newWorld(t)
	clk := &fakeClock{t: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)}
	w.p.Now = clk.Now
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = oldD
	if s := w.p.Status(); !s.Checked.IsZero() || len(s.Services) != 0 {
		t.Fatalf("status before any cycle: %+v", s)
	}
	w.cycle(context.Background())
	s := w.p.Status()
	if len(s.Services) != 1 || s.Services[0].Action != deploy.ActNone || !s.Checked.Equal(clk.t) || !s.Listed.Equal(clk.t) ||
		s.ListErr != nil || !s.Busy.IsZero() {
		t.Fatalf("status %+v", s)
	}
	clk.Advance(time.Minute)
	w.lister.ListFn = func(context.Context) ([]deploy.Target, error) { return nil, errors.New("docker down") }
	if _, err := w.p.Cycle(context.Background()); err == nil {
		t.Fatal("want the list error")
	}
	s = w.p.Status()
	if s.ListErr == nil || !s.Checked.Equal(clk.t.Add(-time.Minute)) || len(s.Services) != 1 {
		t.Fatalf("status after a failing list: %+v", s)
	}
}

// cycles records what the pipeline tells its observer.
type cycles struct {
	mu sync.Mutex
	s  []deploy.CycleStats
	ch chan deploy.CycleStats
}

func (c *cycles) ObserveCycle(s deploy.CycleStats) {
	c.mu.Lock()
	c.s = append(c.s, s)
	c.mu.Unlock()
	if c.ch != nil {
		c.ch <- s
	}
}

// Pushes that arrive while a cycle holds the pipeline are not lost: they
// wait, merged, and run as one cycle right after it. The scheduled cycle
// has asked the registry before the tags move, so it finds nothing to
// deploy: only the pushes' follow-up can deploy the new digests, one per
// service and different, so a lost push or a mixed-up service shows.
func TestTriggerQueuesOneFollowUp(t *testing.T) {
	const otherRef = "127.0.0.1:5000/other:1"
	otherD := "sha256:" + strings.Repeat("c", 64)
	w := newWorld(t)
	other := web(oldD)
	other.ID, other.Name, other.Image = "svc2", "other", deploy.Pin(otherRef, oldD)
	w.targets = []deploy.Target{web(oldD), other}
	w.digests[ref] = oldD
	w.digests[otherRef] = oldD
	obs := &cycles{ch: make(chan deploy.CycleStats, 10)}
	w.p.Observer = obs

	// A spec write is what the next List and Rollout show, as in Swarm:
	// a service deployed once is up to date for the next cycle.
	write := w.services.UpdateFn
	w.services.UpdateFn = func(ctx context.Context, tg deploy.Target, image string, creds deploy.Credentials) error {
		if err := write(ctx, tg, image, creds); err != nil {
			return err
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		for i := range w.targets {
			if w.targets[i].ID == tg.ID {
				w.targets[i].Image = image
			}
		}
		return nil
	}
	w.services.RolloutFn = func(_ context.Context, id string) (deploy.Rollout, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, tg := range w.targets {
			if tg.ID == id {
				return deploy.Rollout{Image: tg.Image, UpdateState: "completed", Desired: 1,
					Tasks: []deploy.Task{{ID: id + "-t", Image: tg.Image, State: "running", Desired: "running"}}}, nil
			}
		}
		return deploy.Rollout{}, deploy.ErrNotFound
	}

	// A scheduled cycle that, once both its registry lookups have their
	// answer (the old digests), hangs until released: it holds the
	// pipeline while the tags move and the pushes arrive.
	entered, release := make(chan struct{}), make(chan struct{})
	lookups := 0
	w.registry.DigestFn = func(_ context.Context, r string) (string, error) {
		w.mu.Lock()
		d, ok := w.digests[r]
		lookups++
		hang := lookups == 2
		w.mu.Unlock()
		if hang {
			close(entered)
			<-release
		}
		if !ok {
			return "", fmt.Errorf("resolve %s: %w", r, deploy.ErrNotFound)
		}
		return d, nil
	}
	go w.p.Cycle(context.Background())
	<-entered
	if _, err := w.p.Cycle(context.Background()); !errors.Is(err, deploy.ErrBusy) {
		t.Fatalf("a second tick: %v, want ErrBusy", err)
	}
	<-obs.ch // the busy tick

	ctx, cancel := context.WithCancel(context.Background())
	tr := deploy.NewTrigger(ctx, w.p)
	defer func() { cancel(); tr.Stop() }()
	w.mu.Lock()
	w.digests[ref], w.digests[otherRef] = newD, otherD
	w.mu.Unlock()
	tr.Push(deploy.PushOf(ref))
	tr.Push(deploy.PushOf(otherRef), deploy.PushOf(ref))
	close(release)

	if s := <-obs.ch; !s.Full || s.Err != nil || s.Deploys != 0 {
		t.Fatalf("first cycle done: %+v, want the scheduled one, which looked before the tags moved", s)
	}
	// Both pushes may land before the worker wakes (one cycle) or the
	// second after it took the first (two); never more, never lost.
	var followUps []deploy.CycleStats
	deploys := 0
	timeout := time.After(10 * time.Second)
	for deploys < 2 {
		select {
		case s := <-obs.ch:
			if s.Full || s.Err != nil {
				t.Fatalf("follow-up %+v, want a push's cycle", s)
			}
			followUps = append(followUps, s)
			deploys += s.Deploys
		case <-timeout:
			t.Fatalf("follow-ups %+v deployed %d services in 10 s, want 2: a push was lost", followUps, deploys)
		}
	}
	// The runs those cycles started end; once the trigger has stopped,
	// every cycle it ran has been observed.
	w.p.Wait()
	cancel()
	tr.Stop()
	for len(obs.ch) > 0 {
		followUps = append(followUps, <-obs.ch)
	}
	if len(followUps) > 2 {
		t.Errorf("%d cycles after the scheduled one, want at most one per push: %+v", len(followUps), followUps)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	got := make([]string, 0, len(w.updates))
	for _, u := range w.updates {
		got = append(got, u.image)
	}
	slices.Sort(got)
	if want := []string{pinned(newD), deploy.Pin(otherRef, otherD)}; !slices.Equal(got, want) {
		t.Fatalf("spec writes %q, want each service once on its new digest %q", got, want)
	}
	if ks := w.milestones(); len(ks) != 4 {
		t.Fatalf("%d events, want each service started and succeeded", len(ks))
	}
	for _, e := range w.milestones() {
		if e.Kind != deploy.Started && e.Kind != deploy.Succeeded {
			t.Errorf("%s: %s %s, want started and succeeded", e.Release.ServiceName, e.Kind, e.Reason)
		}
	}
}

func TestTriggerDeployUnknownService(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	ctx, cancel := context.WithCancel(context.Background())
	tr := deploy.NewTrigger(ctx, w.p)
	defer func() { cancel(); tr.Stop() }()
	if err := tr.Deploy(context.Background(), "nope"); !errors.Is(err, deploy.ErrNotFound) {
		t.Fatalf("Deploy(nope): %v, want ErrNotFound", err)
	}
}

// A person's deploy request runs in the background and deploys.
func TestTriggerDeploy(t *testing.T) {
	w := newWorld(t)
	svc := web(oldD)
	svc.Hooks.Approve = true // a person asked: no approval needed
	w.targets = []deploy.Target{svc}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	ctx, cancel := context.WithCancel(context.Background())
	tr := deploy.NewTrigger(ctx, w.p)
	if err := tr.Deploy(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		w.mu.Lock()
		n := len(w.ended)
		w.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the requested deploy did not end")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	tr.Stop()
	w.outcome(deploy.Succeeded)
}

// A tag that moves again while its service's deploy runs is neither raced
// (no second run beside it) nor lost: the cycle shows the service
// deploying, and the run, once over, asks for a check of the tag, which
// deploys the newer digest without waiting for a tick.
func TestTagMovedDuringItsDeployIsCheckedWhenItEnds(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	held := make(chan struct{})
	w.services.UpdateFn = func(_ context.Context, tg deploy.Target, image string, c deploy.Credentials) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.updates = append(w.updates, update{image, c})
		w.targets[0].Image = image
		return nil
	}
	w.services.RolloutFn = func(context.Context, string) (deploy.Rollout, error) {
		w.mu.Lock()
		image := w.targets[0].Image
		w.mu.Unlock()
		_, d := deploy.SplitImage(image)
		if d == newD {
			select {
			case <-held:
			default:
				return deploy.Rollout{Image: image, UpdateState: "updating", Desired: 1}, nil
			}
		}
		return rollout("completed", d, task(d, "running")), nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	tr := deploy.NewTrigger(ctx, w.p)
	defer func() { cancel(); tr.Stop() }()

	if _, err := w.p.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	w.digests[ref] = thirdD
	w.mu.Unlock()
	plans, err := w.p.CycleFor(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(plans) != 1 || plans[0].Action != deploy.ActDeploying || !strings.Contains(plans[0].Reason, "moved on to "+deploy.Short(thirdD)) {
		t.Fatalf("plans %+v, want web deploying, the newer digest noted", plans)
	}
	close(held)
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		n := len(w.updates)
		w.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d spec writes 10 s after the first deploy ended, want the newer digest deployed on its own", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.p.Wait()
	if w.updates[1].image != pinned(thirdD) || len(w.begun) != 2 {
		t.Errorf("writes %+v, begun %d: want the newer digest second, two deploys one after the other", w.updates, len(w.begun))
	}
}

// Pushes waiting for a check are bounded: past 1,000, they become one full
// check, which covers every one of them.
func TestTriggerPushesBounded(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = oldD
	obs := &cycles{ch: make(chan deploy.CycleStats, 4)}
	w.p.Observer = obs
	entered, release := make(chan struct{}), make(chan struct{})
	first := true
	w.lister.ListFn = func(context.Context) ([]deploy.Target, error) {
		if first {
			first = false
			close(entered)
			<-release
		}
		return w.targets, nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	tr := deploy.NewTrigger(ctx, w.p)
	defer func() { cancel(); tr.Stop() }()
	tr.Push(deploy.PushOf(ref))
	<-entered // the worker holds the pipeline, planning that push
	for i := range 1500 {
		tr.Push(deploy.Push{Registry: "127.0.0.1:5000", Repository: fmt.Sprintf("app%d", i), Tag: "1"})
	}
	close(release)
	for want := range []bool{false, true} {
		select {
		case s := <-obs.ch:
			if s.Full != (want == 1) {
				t.Fatalf("cycle %d: full %v, want the first for the push, the next one full for 1,500 pending", want, s.Full)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("cycle %d not observed", want)
		}
	}
}

// A pushed tag whose check fails (here: the lease not held for a moment,
// as on an overloaded machine) is checked again shortly, not lost.
func TestTriggerRetriesAFailedCheck(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	// The lease is not held at the first look, held from then on.
	var looks atomic.Int32
	w.p.Acting = func() bool { return looks.Add(1) > 1 }
	obs := &cycles{ch: make(chan deploy.CycleStats, 4)}
	w.p.Observer = obs
	ctx, cancel := context.WithCancel(t.Context())
	tr := deploy.NewTrigger(ctx, w.p)
	defer func() { cancel(); tr.Stop() }()

	tr.Push(deploy.PushOf(ref))
	// A check standing by is not observed: the first one seen is the retry.
	select {
	case s := <-obs.ch:
		if s.Full || s.Err != nil || s.Deploys != 1 {
			t.Fatalf("the retried check: %+v, want the push's cycle deploying web", s)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the failed check was not tried again")
	}
	w.p.Wait()
	if len(w.updates) != 1 {
		t.Errorf("%d spec writes, want web deployed once", len(w.updates))
	}
}
