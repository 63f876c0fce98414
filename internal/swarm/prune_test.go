package swarm

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/image"
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

func TestRepository(t *testing.T) {
	const d = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	same := [][]string{
		{"nginx", "nginx:1.27", "docker.io/library/nginx", "index.docker.io/library/nginx:latest" + d, "nginx" + d},
		{"127.0.0.1:5000/e2e/mn", "127.0.0.1:5000/e2e/mn:latest" + d, "127.0.0.1:5000/e2e/mn" + d},
		{"ghcr.io/org/app", "ghcr.io/org/app:v2"},
	}
	for _, group := range same {
		for _, ref := range group {
			if got, want := repository(ref), repository(group[0]); got != want || got == "" {
				t.Errorf("repository(%q) = %q, want %q", ref, got, want)
			}
		}
	}
	if repository("127.0.0.1:5000/e2e/mn") == repository("127.0.0.1:5000/e2e/mn2") {
		t.Error("different repositories compare equal")
	}
	if got := repository("Not A Ref"); got != "" {
		t.Errorf("repository of garbage = %q, want empty", got)
	}
}

// Layers shared with an image that stays give nothing back; layers two
// removed images share count once.
func TestLayersFreed(t *testing.T) {
	l := layers{
		size: map[string]int64{"base": 80, "base,v1": 5, "base,v2": 6},
		of: map[string][]string{
			"img-v1": {"base", "base,v1"},
			"img-v2": {"base", "base,v2"},
		},
		kept:    map[string]bool{"base": true, "base,v3": true},
		unknown: map[string]int64{"img-odd": 7},
	}
	if got := l.freed(map[string]bool{"img-v1": true, "img-v2": true}); got != 11 {
		t.Errorf("freed %d, want 11 (the base layer stays)", got)
	}
	delete(l.kept, "base")
	if got := l.freed(map[string]bool{"img-v1": true, "img-v2": true, "img-odd": true}); got != 98 {
		t.Errorf("freed %d, want 98 (the base once, and the image whose layers are unknown whole)", got)
	}
}

func TestTagged(t *testing.T) {
	if tagged(nil) || tagged([]string{"<none>:<none>"}) || !tagged([]string{"127.0.0.1:5000/app:v1"}) {
		t.Error("tagged: want only real tags to count")
	}
}

// dg is a digest made of one repeated hex digit.
func dg(c string) string { return "sha256:" + strings.Repeat(c, 64) }

// pruneNode is a node's images and containers as a prune finds them, for
// the service s1 of repo 127.0.0.1:5000/app, keeping digest 1.
func pruneNode(t *testing.T) (*engine, *Swarm) {
	e := newEngine(t)
	s := e.client(t, Config{})
	app := func(d string) string { return appRepo + "@" + dg(d) }
	e.with(func() {
		e.images = []image.Summary{
			{ID: "sha256:new", RepoDigests: []string{app("1")}},                                             // kept
			{ID: "sha256:old", RepoDigests: []string{app("2")}},                                             // goes
			{ID: "sha256:tagged", RepoDigests: []string{app("3")}, RepoTags: []string{appRepo + ":hotfix"}}, // tagged by hand
			{ID: "sha256:run", RepoDigests: []string{app("4")}},                                             // a `docker run` container runs it
			{ID: "sha256:exited", RepoDigests: []string{app("5")}},                                          // a `docker run` container exited on it
			{ID: "sha256:task", RepoDigests: []string{app("6")}},                                            // s1's old task exited on it: goes
			{ID: "sha256:live", RepoDigests: []string{app("7")}},                                            // s1's task runs it
			{ID: "sha256:elsewhere", RepoDigests: []string{"127.0.0.1:5000/other@" + dg("8")}},              // another repository
			{ID: "sha256:mirrored", RepoDigests: []string{app("9"), "mirror.local/app@" + dg("9")}},         // also known elsewhere
		}
		for id, top := range map[string]string{"sha256:new": "l-new", "sha256:old": "l-old", "sha256:task": "l-task"} {
			e.layers[id] = []string{"l-base", top}
		}
		// History is newest first; the metadata-only step has size 0.
		e.history["sha256:old"] = []image.HistoryResponseItem{{Size: 5}, {Size: 0}, {Size: 80}}
		e.history["sha256:task"] = []image.HistoryResponseItem{{Size: 7}, {Size: 80}}
		e.history["sha256:new"] = []image.HistoryResponseItem{{Size: 9}, {Size: 80}}

		task := map[string]string{taskServiceLabel: "s1"}
		job := map[string]string{jobLabel: "s1", scopeLabel: "scope1"}
		e.containers = []container.Summary{
			{ID: "c-run", ImageID: "sha256:run", State: container.StateRunning},
			{ID: "c-exited", ImageID: "sha256:exited", State: container.StateExited},
			{ID: "c-task", ImageID: "sha256:task", State: container.StateExited, Labels: task},
			{ID: "c-live", ImageID: "sha256:live", State: container.StateRunning, Labels: task},
			{ID: "c-job-old", ImageID: "sha256:updater", State: container.StateExited, Labels: job},
			{ID: "c-job-just-now", ImageID: "sha256:updater", State: container.StateExited, Labels: job},
			{ID: "c-job-theirs", ImageID: "sha256:updater", State: container.StateExited,
				Labels: map[string]string{jobLabel: "s9", scopeLabel: "scope2"}},
		}
		e.finished["c-job-old"] = time.Now().Add(-2 * time.Minute)
		e.finished["c-job-just-now"] = time.Now().Add(-5 * time.Second)
		e.finished["c-job-theirs"] = time.Now().Add(-time.Hour)
	})
	return e, s
}

func (e *engine) imageIDs() []string {
	var out []string
	e.with(func() {
		for _, img := range e.images {
			out = append(out, img.ID)
		}
	})
	return out
}

func (e *engine) containerIDs() []string {
	var out []string
	e.with(func() {
		for _, c := range e.containers {
			out = append(out, c.ID)
		}
	})
	return out
}

func TestPruneImages(t *testing.T) {
	e, s := pruneNode(t)
	r, err := s.PruneImages(context.Background(), appRepo+":latest", []string{dg("1")}, "s1", "scope1")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) > 0 {
		t.Errorf("errors: %q", r.Errors)
	}
	want := []string{"sha256:new", "sha256:tagged", "sha256:run", "sha256:exited", "sha256:live", "sha256:elsewhere", "sha256:mirrored"}
	if got := e.imageIDs(); !slices.Equal(got, want) {
		t.Errorf("images after the prune %v,\nwant %v", got, want)
	}
	// The base layer is the kept image's too: only the top layers count.
	if r.Removed != 2 || r.Bytes != 5+7 {
		t.Errorf("report: removed %d, %d bytes; want 2 and 12", r.Removed, r.Bytes)
	}
	e.with(func() {
		if m := e.imageByRef("sha256:mirrored"); m == nil || !slices.Equal(m.RepoDigests, []string{"mirror.local/app@" + dg("9")}) {
			t.Errorf("the image known under another repository: %+v, want it with that name only", m)
		}
		if tagged := e.imageByRef("sha256:tagged"); tagged == nil || len(tagged.RepoDigests) != 1 || len(tagged.RepoTags) != 1 {
			t.Errorf("the tagged image lost a reference: %+v", tagged)
		}
	})
	wantC := []string{"c-run", "c-exited", "c-live", "c-job-just-now", "c-job-theirs"}
	if got := e.containerIDs(); !slices.Equal(got, wantC) {
		t.Errorf("containers after the prune %v,\nwant %v (s1's exited task and this scope's old job leftover go)", got, wantC)
	}
}

// Without a service, no container's image is free: the exited tasks of
// which service would go?
func TestPruneImagesWithoutService(t *testing.T) {
	e, s := pruneNode(t)
	if _, err := s.PruneImages(context.Background(), appRepo, []string{dg("1")}, "", ""); err != nil {
		t.Fatal(err)
	}
	if got := e.imageIDs(); slices.Contains(got, "sha256:old") || !slices.Contains(got, "sha256:task") {
		t.Errorf("images %v: want the unused old digest gone and the one an exited task used kept", got)
	}
	if got := e.containerIDs(); len(got) != 7 {
		t.Errorf("containers %v: without a service or scope none goes", got)
	}
}

func TestPruneImagesErrors(t *testing.T) {
	e, s := pruneNode(t)
	e.fail("DELETE /images/"+appRepo+"@"+dg("2"), 500, "layer in use", 0)
	r, err := s.PruneImages(context.Background(), appRepo, []string{dg("1")}, "s1", "scope1")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) != 1 || !strings.Contains(r.Errors[0], "layer in use") || r.Removed != 1 {
		t.Errorf("report %+v: want the refused removal reported and the other one done", r)
	}
	if _, err := s.PruneImages(context.Background(), "Not A Repo", nil, "s1", ""); err == nil {
		t.Error("no error for a repository that does not parse")
	}
	e.fail("GET /containers/json", 503, "dockerd stopping", 0)
	if _, err := s.PruneImages(context.Background(), appRepo, nil, "s1", ""); err == nil {
		t.Error("pruned without knowing which containers use the images")
	}
}

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
