//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
	updaterswarm "github.com/updater-dev/updater/internal/swarm"
)

// Beyond the health check (docs/probes.md): a probe of every new task from
// a job on the service's network, and a bake that watches the service
// after Swarm called the rollout done.

// pushProbeImage pushes the updater under test as the image the probe job
// runs (UPDATER_PROBE_IMAGE), as pushPruneImage does for the prune job.
func pushProbeImage(t testing.TB, repo string) string {
	t.Helper()
	bin, err := os.ReadFile(env.bin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "updater", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(bin); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return image(repo) + "@" + pushLayer(t, repo, buf.Bytes(), v1.Config{Entrypoint: []string{"/updater"}, Cmd: []string{"run"}})
}

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
	img := pushProbeImage(t, "e2e/probejob")
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
