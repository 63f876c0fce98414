package deploy_test

import (
	"context"
	"errors"
	"slices"
	"sync"
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
// wait, merged, and run as one cycle right after it.
func TestTriggerQueuesOneFollowUp(t *testing.T) {
	w := newWorld(t)
	other := web(oldD)
	other.ID, other.Name, other.Image = "svc2", "other", "127.0.0.1:5000/other:1@"+oldD
	w.targets = []deploy.Target{web(oldD), other}
	w.digests[ref] = oldD
	w.digests["127.0.0.1:5000/other:1"] = oldD
	obs := &cycles{ch: make(chan deploy.CycleStats, 10)}
	w.p.Observer = obs

	// A scheduled cycle that hangs in the service list until released.
	entered, release := make(chan struct{}), make(chan struct{})
	list := w.lister.ListFn
	var once sync.Once
	w.lister.ListFn = func(ctx context.Context) ([]deploy.Target, error) {
		hang := false
		once.Do(func() { hang = true })
		if hang {
			close(entered)
			<-release
		}
		return list(ctx)
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
	tr.Push(deploy.PushOf(ref))
	tr.Push(deploy.PushOf("127.0.0.1:5000/other:1"), deploy.PushOf(ref))
	close(release)

	if s := <-obs.ch; !s.Full || s.Err != nil {
		t.Fatalf("first cycle done: %+v, want the scheduled one", s)
	}
	s := <-obs.ch
	if s.Full || s.Err != nil {
		t.Fatalf("follow-up %+v, want a push's cycle", s)
	}
	select {
	case s := <-obs.ch:
		// Both pushes may land before the worker wakes (one cycle) or the
		// second after it took the first (two); never more, never lost.
		if s.Full {
			t.Fatalf("unexpected full cycle %+v", s)
		}
	case <-time.After(200 * time.Millisecond):
	}
	if st := w.p.Status(); len(st.Services) != 2 {
		t.Fatalf("status after the follow-up: %d services", len(st.Services))
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
