package swarm

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
)

func TestContainerIDIn(t *testing.T) {
	const id = "3f2a9c81d0e4b5a6c7d8e9f00112233445566778899aabbccddeeff001122334"
	for name, tt := range map[string]struct{ mountinfo, want string }{
		"data root on the root fs": {
			"1108 1083 8:1 /var/lib/docker/containers/" + id + "/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/sda1 rw\n", id},
		"data root its own mount": {
			"1108 1083 8:17 /containers/" + id + "/hostname /etc/hostname rw,relatime - xfs /dev/sdb1 rw\n", id},
		"another data root": {
			"9 8 0:5 / / rw - overlay overlay rw\n10 9 8:1 /var/lib/docker-updmn/containers/" + id + "/hosts /etc/hosts rw - ext4 /dev/sda1 rw\n", id},
		"not in a container":           {"22 27 0:21 / /proc rw,relatime - proc proc rw\n24 27 0:6 / /dev rw - devtmpfs devtmpfs rw\n", ""},
		"a directory named containers": {"30 27 8:1 /srv/containers/app /app rw - ext4 /dev/sda1 rw\n", ""},
	} {
		if got := containerIDIn(tt.mountinfo); got != tt.want {
			t.Errorf("%s: got %q, want %q", name, got, tt.want)
		}
	}
}

// dg is a digest made of one repeated hex digit.
func dg(c string) string { return "sha256:" + strings.Repeat(c, 64) }

// Prune keeps what any service pins, runs on every ready Linux node, and
// reports each node: its report, its failure, or that it did not finish.
func TestPrune(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	withPrev := appSpec("shop_web", appRepo+":v1@"+dg("1"))
	e.addService("s1", withPrev)
	e.with(func() {
		prev := appSpec("shop_web", appRepo+":v1@"+dg("2"))
		e.services["s1"].PreviousSpec = &prev
	})
	e.addService("s2", appSpec("shop_worker", "docker.io/library/nginx@"+dg("8")))
	e.addService("s3", appSpec("blog_web", appRepo+"@"+dg("3"))) // not watched, still pinned
	e.addService("stale", swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "updater-prune-old",
		Labels: map[string]string{jobLabel: "s1", jobStepLabel: stepPrune, scopeLabel: s.scope()}}})
	node := func(id, host string, state swarm.NodeState, avail swarm.NodeAvailability, os string) swarm.Node {
		return swarm.Node{ID: id, Spec: swarm.NodeSpec{Availability: avail},
			Description: swarm.NodeDescription{Hostname: host, Platform: swarm.Platform{OS: os}}, Status: swarm.NodeStatus{State: state}}
	}
	t0 := time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
	e.with(func() {
		e.nodes = []swarm.Node{
			node("n2", "beta", swarm.NodeStateReady, swarm.NodeAvailabilityActive, "linux"),
			node("n1", "alpha", swarm.NodeStateReady, swarm.NodeAvailabilityActive, "linux"),
			node("n3", "down", swarm.NodeStateDown, swarm.NodeAvailabilityActive, "linux"),
			node("n4", "drained", swarm.NodeStateReady, swarm.NodeAvailabilityDrain, "linux"),
			node("n5", "win", swarm.NodeStateReady, swarm.NodeAvailabilityActive, "windows"),
			node("n6", "gamma", swarm.NodeStateReady, swarm.NodeAvailabilityActive, "linux"),
		}
		e.onCreate = func(id string, _ swarm.ServiceSpec) {
			task := func(tid, node string, state swarm.TaskState, at time.Time, err string) swarm.Task {
				return swarm.Task{ID: tid, ServiceID: id, NodeID: node, Status: swarm.TaskStatus{State: state, Timestamp: at, Err: err}}
			}
			e.tasks = append(e.tasks,
				task("t1", "n1", swarm.TaskStateComplete, t0, ""),
				// Swarm restarts a failed global-job task: the first end counts.
				task("t2-again", "n2", swarm.TaskStateComplete, t0.Add(2*time.Second), ""),
				task("t2", "n2", swarm.TaskStateFailed, t0, "task: non-zero exit (1)"),
				task("t6", "n6", swarm.TaskStateRunning, t0, ""))
			e.logs["t1"] = "removing old images\n{\"removed\":2,\"bytes\":12}\n"
			e.logs["t2"] = "Cannot connect to the Docker daemon\n"
			e.logs["t2-again"] = "{\"removed\":1,\"bytes\":1}\n"
		}
	})
	j := deploy.PruneJob{Name: "updater-prune-1", Service: "s1", Repo: appRepo, Image: "updater@" + dg("f"),
		Keep: []string{dg("1"), dg("4")}, Timeout: 500 * time.Millisecond}
	got, err := s.Prune(context.Background(), j, deploy.Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	want := []deploy.Pruned{
		{Node: "alpha", Removed: 2, Bytes: 12},
		{Node: "beta", Err: "job task failed: task: non-zero exit (1): Cannot connect to the Docker daemon"},
		{Node: "gamma", Err: "did not finish within 500ms"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("pruned %+v,\nwant %+v", got, want)
	}

	var spec swarm.ServiceSpec
	e.with(func() { spec = e.created[0] })
	c := spec.TaskTemplate.ContainerSpec
	wantArgs := []string{"prune", "--repo", appRepo, "--keep", strings.Join([]string{dg("1"), dg("4"), dg("2"), dg("3")}, ","),
		"--service", "s1", "--scope", s.scope()}
	if spec.Mode.GlobalJob == nil || c.Image != j.Image || !slices.Equal(c.Args, wantArgs) {
		t.Errorf("prune job %+v runs %s %q,\nwant a global job running %q", spec.Mode, c.Image, c.Args, wantArgs)
	}
	if len(c.Mounts) != 1 || c.Mounts[0].Source != DockerSocket || c.Mounts[0].Type != "bind" {
		t.Errorf("mounts %+v: the job needs its node's Docker socket", c.Mounts)
	}
	if _, ok := e.service("stale"); ok {
		t.Error("a prune job left by an earlier run stayed")
	}
	e.with(func() {
		if len(e.services) != 3 {
			t.Errorf("%d services after the prune, want the 3 apps (the job removed)", len(e.services))
		}
	})
}
