package swarm

import (
	"context"
	"fmt"
	"testing"

	"github.com/moby/moby/api/types/swarm"
)

// TestUnwatched: each service that looks meant to be watched but is not
// is named with its reason; watched ones and unrelated ones are not; the
// updater's own jobs (io.updater.* labels) are not either. One call.
func TestUnwatched(t *testing.T) {
	e := newEngine(t)
	svc := func(name, stack string, labels, containerLabels map[string]string) swarm.ServiceSpec {
		if stack != "" {
			if labels == nil {
				labels = map[string]string{}
			}
			labels[StackLabel] = stack
		}
		return swarm.ServiceSpec{Annotations: swarm.Annotations{Name: name, Labels: labels},
			TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: "r.example/" + name + ":1", Labels: containerLabels}}}
	}
	e.addService("s1", svc("shop_web", "shop", map[string]string{"updater.enable": "true"}, nil))                             // watched
	e.addService("s2", svc("shop_api", "shop", nil, map[string]string{"updater.enable": "true"}))                             // on its containers
	e.addService("s3", svc("shop_db", "shop", map[string]string{"updater.enable": "yes"}, nil))                               // not "true"
	e.addService("s4", svc("blog_web", "blog", map[string]string{"updater.enable": "true"}, nil))                             // another stack
	e.addService("s5", svc("shop_worker", "shop", map[string]string{"updater.approve": "manual", "updater.group": "g"}, nil)) // hooks only
	e.addService("s6", svc("shop_cache", "shop", nil, nil))                                                                   // unrelated
	e.addService("s7", svc("updater-job-1", "", map[string]string{"io.updater.kind": "job"}, nil))                            // ours
	plugin := svc("shop_plugin", "shop", map[string]string{"updater.enable": "true"}, nil)
	plugin.TaskTemplate.ContainerSpec = nil
	e.addService("s8", plugin)

	s := e.client(t, Config{Stack: "shop"})
	before := e.count("GET /services")
	got, err := s.Unwatched(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []Unwatched{
		{"blog_web", "blog", `in stack "blog", and UPDATER_STACK=shop watches only that stack`},
		{"shop_api", "shop", "updater.enable is a label of its containers (compose `labels:`), not of the service: put it under `deploy.labels:`"},
		{"shop_db", "shop", `updater.enable="yes": only "true" opts in`},
		{"shop_plugin", "shop", "not a container service (a plugin): no image to follow"},
		{"shop_worker", "shop", "has updater.approve, updater.group but not updater.enable=true (under `deploy.labels:`)"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Unwatched() =\n%v\nwant\n%v", got, want)
	}
	if n := e.count("GET /services") - before; n != 1 {
		t.Errorf("%d service lists, want 1", n)
	}

	// Without UPDATER_STACK every stack is watched: blog_web is.
	got, err = e.client(t, Config{}).Unwatched(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range got {
		if u.Service == "blog_web" || u.Service == "shop_web" {
			t.Errorf("%s is watched, but reported: %v", u.Service, u)
		}
	}
	if len(got) != 4 {
		t.Errorf("got %v, want the four others", got)
	}
}
