package deploy_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/updater-dev/updater/internal/deploy"
)

// prefix allows the tags that start with p and picks the last, as text.
type prefix string

func (p prefix) Pick(tags []string) (string, bool) {
	var best string
	for _, t := range tags {
		if strings.HasPrefix(t, string(p)) && t > best {
			best = t
		}
	}
	return best, best != ""
}

func (p prefix) String() string { return "prefix:" + string(p) }

func TestTagPolicyFollowsTheTagItPicks(t *testing.T) {
	w := newWorld(t)
	w.writesLand()
	const repo = "127.0.0.1:5000/shop"
	a := deploy.Target{ID: "svc1", Name: "web", Image: repo + ":1.2.3@" + oldD, Tags: prefix("1.2."), StartFirst: true, RollbackOnFailure: true, Healthcheck: true}
	b := a
	b.ID, b.Name = "svc2", "worker"
	w.targets = []deploy.Target{a, b}
	var mu sync.Mutex
	var listed, looked []string
	w.registry.TagsFn = func(_ context.Context, ref string) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		listed = append(listed, ref)
		return []string{"1.2.3", "1.2.4", "1.3.0", "2.0.0"}, nil
	}
	digest := w.registry.DigestFn
	w.registry.DigestFn = func(ctx context.Context, ref string) (string, error) {
		mu.Lock()
		looked = append(looked, ref)
		mu.Unlock()
		return digest(ctx, ref)
	}
	w.digests[repo+":1.2.4"] = newD
	w.script = []deploy.Rollout{{Image: repo + ":1.2.4@" + newD, UpdateState: "completed", Desired: 1,
		Tasks: []deploy.Task{{ID: "t1", Image: repo + ":1.2.4@" + newD, State: "running", Desired: "running"}}}}

	plans := w.cycle(t.Context())

	if len(listed) != 1 || !slices.Equal(looked, []string{repo + ":1.2.4"}) {
		t.Errorf("listed %v, looked up %v: want one listing for both services and one HEAD of the tag picked", listed, looked)
	}
	if plans[0].Action != deploy.ActDeploy || plans[0].Target.Ref() != repo+":1.2.4" {
		t.Errorf("plan %s of %s", plans[0].Action, plans[0].Target.Ref())
	}
	for _, u := range w.updates {
		if u.image != repo+":1.2.4@"+newD {
			t.Errorf("wrote %s, want the picked tag pinned to its digest", u.image)
		}
	}
	if len(w.updates) != 2 {
		t.Errorf("%d writes, want 2", len(w.updates))
	}
}

func TestTagPolicyWithNoMatchIsAnError(t *testing.T) {
	w := newWorld(t)
	tg := web(oldD)
	tg.Tags = prefix("9.")
	w.targets = []deploy.Target{tg}
	w.registry.TagsFn = func(context.Context, string) ([]string, error) { return []string{"1", "2"}, nil }

	plans := w.cycle(t.Context())

	if pl := plans[0]; pl.Action != deploy.ActError || !strings.Contains(pl.Reason, "no tag of 127.0.0.1:5000/app matches its policy prefix:9.") {
		t.Fatalf("plan %s %q", pl.Action, pl.Reason)
	}
	if len(w.updates) != 0 {
		t.Fatal("deployed without a tag")
	}
}

func TestTagPolicyWarnsOnceWhenSomeoneRetags(t *testing.T) {
	w := newWorld(t)
	w.writesLand()
	const repo = "127.0.0.1:5000/shop"
	w.targets = []deploy.Target{{ID: "svc1", Name: "web", Image: repo + ":1.2.3@" + oldD, Tags: prefix("1.2."), StartFirst: true, RollbackOnFailure: true, Healthcheck: true}}
	w.registry.TagsFn = func(context.Context, string) ([]string, error) { return []string{"1.2.3", "1.2.4"}, nil }
	w.digests[repo+":1.2.4"] = newD
	w.script = []deploy.Rollout{{Image: repo + ":1.2.4@" + newD, UpdateState: "completed", Desired: 1,
		Tasks: []deploy.Task{{ID: "t1", Image: repo + ":1.2.4@" + newD, State: "running", Desired: "running"}}}}
	w.cycle(t.Context()) // 1.2.3 -> 1.2.4
	w.cycle(t.Context()) // up to date
	if n := len(w.logLines("WARN", "changed by someone else")); n != 0 {
		t.Fatalf("%d warnings after the updater's own deploy", n)
	}
	w.mu.Lock()
	w.targets[0].Image = repo + ":1.2.3@" + oldD // a stack deploy puts 1.2.3 back
	w.mu.Unlock()
	w.cycle(t.Context()) // warned, deployed again
	w.cycle(t.Context())
	if n := len(w.logLines("WARN", "changed by someone else")); n != 1 {
		t.Fatalf("%d warnings, want one", n)
	}
	if img := w.targets[0].Image; img != repo+":1.2.4@"+newD {
		t.Errorf("image %s, want the policy's tag again", img)
	}
}
