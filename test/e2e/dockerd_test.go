//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// The dockerd-restart faults run on a single-node swarm of their own,
// made by faultnode.sh: a second dockerd in a network namespace, which the
// test stops and starts by its pid. The host's dockerd, which other tests
// use meanwhile, is never restarted. The registry is served inside the
// namespace at the same 127.0.0.1:PORT as env.faulty, so image(repo)
// names one registry for both dockerds.

// faultNode is that dockerd: a client for it and the script that runs it.
type faultNode struct {
	script string
	host   string // DOCKER_HOST for it
	log    string // its dockerd log
	docker *client.Client
}

func setupFaultNode(t *testing.T) *faultNode {
	t.Helper()
	script, err := filepath.Abs("faultnode.sh")
	if err != nil {
		t.Fatal(err)
	}
	n := &faultNode{script: script}
	// Registered first, so it runs last: after the services, the updaters
	// and the registry listener in the namespace are gone.
	t.Cleanup(func() {
		if out, err := exec.Command(script, "teardown").CombinedOutput(); err != nil {
			t.Errorf("faultnode.sh teardown: %v\n%s", err, out)
		}
	})
	start := time.Now()
	n.run(t, "setup")
	vars := map[string]string{}
	for _, line := range strings.Split(n.run(t, "env"), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vars[k] = v
		}
	}
	n.host, n.log = vars["FN_HOST"], vars["FN_LOG"]
	if n.host == "" || vars["FN_NETNS"] == "" {
		t.Fatalf("faultnode.sh env: %v", vars)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(n.log); err == nil {
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				t.Logf("fault node dockerd log (last 40 lines):\n%s", strings.Join(lines[max(0, len(lines)-40):], "\n"))
			}
		}
	})
	serveMN(t, vars["FN_NETNS"], env.faulty, env.faultyH)
	if n.docker, err = client.New(client.WithHost(n.host), client.WithAPIVersionNegotiation()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.docker.Close() })
	t.Logf("fault node (own dockerd, single-node swarm) ready in %s", time.Since(start).Round(10*time.Millisecond))
	return n
}

// run runs faultnode.sh arg and returns its output; its log goes to t's.
func (n *faultNode) run(t *testing.T, arg string) string {
	t.Helper()
	cmd := exec.Command(n.script, arg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("faultnode.sh %s: %v\n%s", arg, err, stderr.String())
	}
	if msg := strings.TrimSpace(stderr.String()); msg != "" {
		t.Log(msg)
	}
	return string(out)
}

// stop SIGTERMs the node's dockerd and returns once it has exited.
func (n *faultNode) stop(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	n.run(t, "stop")
	if _, err := n.docker.Ping(context.Background(), client.PingOptions{}); err == nil {
		t.Fatal("the fault node's dockerd still answers after it was stopped")
	}
	return time.Since(start)
}

// start starts it again and returns once its swarm answers.
func (n *faultNode) start(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	n.run(t, "start")
	return time.Since(start)
}

// createService is createService of the harness on the fault node: the
// same spec, opted in, pinned to digest.
func (n *faultNode) createService(t *testing.T, svcName, stack, repo, digest string, replicas uint64) string {
	t.Helper()
	spec := serviceSpec(svcName, repo, digest, svcOpts{stack: stack, optIn: true, replicas: replicas})
	res, err := n.docker.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		t.Fatalf("create service %s on the fault node: %v", svcName, err)
	}
	t.Cleanup(func() { n.removeService(res.ID) })
	waitFor(t, 60*time.Second, svcName+" running on the fault node", func() bool { return n.allRunning(res.ID, "") })
	return res.ID
}

// removeService removes a service and the updater's records about it;
// its containers and images go with the node's data-root.
func (n *faultNode) removeService(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n.docker.ServiceRemove(ctx, id, client.ServiceRemoveOptions{})
	f := make(client.Filters).Add("label", "io.updater.service="+id)
	if res, err := n.docker.ConfigList(ctx, client.ConfigListOptions{Filters: f}); err == nil {
		for _, c := range res.Items {
			n.docker.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{})
		}
	}
}

func (n *faultNode) inspect(t *testing.T, id string) swarm.Service {
	t.Helper()
	res, err := n.docker.ServiceInspect(context.Background(), id, client.ServiceInspectOptions{})
	if err != nil {
		t.Fatalf("inspect %s on the fault node: %v", id, err)
	}
	return res.Service
}

func (n *faultNode) specDigest(t *testing.T, id string) string {
	_, d, _ := strings.Cut(n.inspect(t, id).Spec.TaskTemplate.ContainerSpec.Image, "@")
	return d
}

// tasks counts the tasks Swarm wants running, by the digest they run
// ("" for a task not running, or not healthy yet: a task with a health
// check is "starting" until it passes).
func (n *faultNode) tasks(id string) (map[string]int, error) {
	res, err := n.docker.TaskList(context.Background(), client.TaskListOptions{
		Filters: make(client.Filters).Add("service", id).Add("desired-state", "running"),
	})
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, task := range res.Items {
		d := ""
		if task.Status.State == swarm.TaskStateRunning {
			_, d, _ = strings.Cut(task.Spec.ContainerSpec.Image, "@")
		}
		out[d]++
	}
	return out, nil
}

// allRunning is the harness's allRunning on the fault node; an API error
// (the node restarting) is a no.
func (n *faultNode) allRunning(id, digest string) bool {
	res, err := n.docker.ServiceInspect(context.Background(), id, client.ServiceInspectOptions{})
	if err != nil {
		return false
	}
	byDigest, err := n.tasks(id)
	if err != nil || byDigest[""] > 0 {
		return false
	}
	want := int(*res.Service.Spec.Mode.Replicated.Replicas)
	if digest != "" {
		return byDigest[digest] == want && len(byDigest) == 1
	}
	total := 0
	for _, c := range byDigest {
		total += c
	}
	return total == want
}

// records counts the updater's records of kind about a service.
func (n *faultNode) records(t *testing.T, serviceID, kind string) int {
	t.Helper()
	f := make(client.Filters).Add("label", "io.updater.service="+serviceID).Add("label", "io.updater.kind="+kind)
	res, err := n.docker.ConfigList(context.Background(), client.ConfigListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Items)
}

// settled checks how a deploy of app from v1 to v2 on the fault node
// ended: on v2, or back on v1 when Swarm rolled it back (the only failure
// accepted, and not one whose reason contains blame, the mark of the fault
// itself); healthy on that version, the spec pinned there, no record left.
// It returns the version and the verdict for the fault table.
func (n *faultNode) settled(t *testing.T, u *updater, app, v1, v2, blame string) (final, verdict string) {
	t.Helper()
	final, verdict = v2, "succeeded"
	if ev := u.find("deploy failed", "to_digest", v2); ev != nil {
		if ev["rolled_back"] != true || strings.Contains(fmt.Sprint(ev["err"]), blame) {
			t.Fatalf("deploy failed, not by Swarm's rollback but by the fault: %v", ev)
		}
		final, verdict = v1, fmt.Sprintf("failed, rolled back by Swarm (%v)", ev["err"])
	} else if u.find("deploy succeeded", "to_digest", v2) == nil {
		t.Fatalf("the outcome is not about v2:\n%s", u.log())
	}
	waitFor(t, time.Minute, "the service healthy on one version", func() bool { return n.allRunning(app, final) })
	if d := n.specDigest(t, app); d != final {
		t.Fatalf("spec on %s, want %s", d, final)
	}
	if k := n.records(t, app, "deploy-in-flight"); k != 0 {
		t.Fatalf("%d deploy-in-flight records left, want 0", k)
	}
	return final, verdict
}

// startOn starts an updater that talks to the fault node only.
func (n *faultNode) startOn(t *testing.T, stack string, extra ...string) *updater {
	t.Helper()
	// startUpdater appends the test's own DOCKER_HOST after the extra
	// variables, where it would win.
	if os.Getenv("DOCKER_HOST") != "" {
		t.Setenv("DOCKER_HOST", n.host)
	}
	u := startUpdater(t, stack, append([]string{"DOCKER_HOST=" + n.host}, extra...)...)
	// One service seen: the stack is on this node, not the host's.
	u.waitLog(t, 30*time.Second, 1, "cycle done", "services", "1")
	return u
}

func fnAlive(t *testing.T, u *updater) {
	t.Helper()
	select {
	case <-u.done:
		t.Fatalf("the updater exited: %v\n%s", u.cmd.Wait(), u.log())
	default:
	}
}

func fnOutcomes(u *updater) int { return u.count("deploy succeeded") + u.count("deploy failed") }

// fnComplaints sums the warnings and errors logged from line from on, by
// message.
func fnComplaints(u *updater, from int) map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[string]int{}
	for _, l := range u.lines[min(from, len(u.lines)):] {
		if l["level"] == "WARN" || l["level"] == "ERROR" {
			out[fmt.Sprint(l["msg"])]++
		}
	}
	return out
}

func fnLines(u *updater) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.lines)
}

func fnSummary(m map[string]int) string {
	var s []string
	for k, v := range m {
		s = append(s, fmt.Sprintf("%q×%d", k, v))
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}

// dockerd restarted during a rollout, and down during a cycle: the node is
// set up once for both.
func TestDockerdRestart(t *testing.T) {
	began := time.Now()
	t.Cleanup(func() { t.Logf("TestDockerdRestart took %s in all", time.Since(began).Round(100*time.Millisecond)) })
	n := setupFaultNode(t)

	// The updater is watching a rollout when dockerd goes away and comes
	// back: it keeps watching, Swarm restarts the tasks, and the deploy
	// has one outcome.
	t.Run("DuringRollout", func(t *testing.T) {
		o := fault(t, "dockerd restarted during a rollout")
		const stack, repo = "e2efnroll", "e2e/fnroll"
		v1 := push(t, repo, "v1")
		app := n.createService(t, stack+"_app", stack, repo, v1, 2)
		// The lease outlives the restart (the harness's 3 s TTL lapses in
		// a 2-3 s restart, which stops the run for the holder to resume:
		// right, but not what this row is about).
		u := n.startOn(t, stack, "UPDATER_LEASE_TTL=20s")

		v2 := push(t, repo, "v2")
		u.waitLog(t, 30*time.Second, 1, "deploy started", "to_digest", v2)
		started := time.Now()
		waitFor(t, 30*time.Second, "the rollout to begin", func() bool { return n.specDigest(t, app) == v2 })
		// Mid-rollout, or the restart tests nothing.
		byDigest, err := n.tasks(app)
		if err != nil {
			t.Fatal(err)
		}
		if byDigest[v2] == 2 {
			t.Fatal("the rollout had finished before dockerd was stopped: too late to test anything")
		}
		mark := fnLines(u)
		stopped := n.stop(t)
		if k := fnOutcomes(u); k != 0 {
			t.Fatalf("the outcome was reported (%d events) before dockerd went down: too late to test anything", k)
		}
		// Down long enough for the updater to notice (it looks every 200ms).
		u.waitLog(t, 10*time.Second, 1, "inspect rollout")
		restarted := n.start(t)
		t.Logf("rollout at %d/2 tasks on v2 when dockerd got SIGTERM; it took %s to exit and %s to answer again",
			byDigest[v2], stopped.Round(10*time.Millisecond), restarted.Round(10*time.Millisecond))

		waitFor(t, deployLimit, "the deploy's outcome", func() bool { fnAlive(t, u); return fnOutcomes(u) > 0 })
		took := time.Since(started)
		after := u.cycles()
		waitFor(t, 30*time.Second, "2 more cycles", func() bool { return u.cycles() >= after+2 })
		fnAlive(t, u)

		if k := fnOutcomes(u); k != 1 {
			t.Fatalf("%d outcomes reported for one deploy, want exactly 1:\n%s", k, u.log())
		}
		if k := u.count("deploy started"); k != 1 {
			t.Fatalf("%d deploys started, want 1", k)
		}
		// Swarm may roll back tasks it lost in the restart.
		final, verdict := n.settled(t, u, app, v1, v2, "docker-updfault.sock")
		// Docker's absence is logged once by the rollout watch; cycles go on
		// beside the deploy, and one that failed while dockerd was down is
		// a warning of its own (one failed cycle; two in a row would be an
		// outage, logged once more as it starts). A failed deploy's outcome
		// is checked above.
		during := fnComplaints(u, mark)
		delete(during, "deploy failed")
		failed, outage := during["docker failed; retrying next cycle"], during["docker failing; retrying every cycle, logged again when it recovers"]
		delete(during, "docker failed; retrying next cycle")
		delete(during, "docker failing; retrying every cycle, logged again when it recovers")
		if during["inspect rollout"] != 1 || len(during) != 1 || failed > 1 || outage > 1 {
			t.Fatalf("warnings while dockerd restarted: %s, a failed cycle logged %d times, an outage %d; want one \"inspect rollout\", each of the others at most once",
				fnSummary(during), failed, outage)
		}
		t.Logf("outcome %s %s after the deploy started; warnings: %s", verdict, took.Round(100*time.Millisecond), fnSummary(fnComplaints(u, mark)))
		o.set("one outcome: %s after %s; 2/2 tasks on %s, spec pinned there; dockerd stopped at %d/2 tasks on v2, down %s; "+
			"warned once (inspect rollout); 1 deploy started; no in-flight record left",
			verdict, took.Round(time.Second), map[string]string{v1: "v1", v2: "v2"}[final], byDigest[v2],
			(stopped + restarted).Round(100*time.Millisecond))
	})

	// The updater is idle when dockerd goes away: the outage is logged
	// once, not per cycle, nothing is deployed while it lasts, and the
	// tag that moved meanwhile deploys once dockerd is back.
	t.Run("DuringCycle", func(t *testing.T) {
		o := fault(t, "dockerd down during a cycle")
		const stack, repo = "e2efncycle", "e2e/fncycle"
		const down = "docker failing; retrying every cycle, logged again when it recovers"
		v1 := push(t, repo, "v1")
		app := n.createService(t, stack+"_app", stack, repo, v1, 2)
		u := n.startOn(t, stack)

		stopped := n.stop(t)
		v3 := push(t, repo, "v3")
		u.waitLog(t, 30*time.Second, 1, down)
		// A cycle without Docker fails, or stands by once the lease could
		// not be renewed for its TTL: either way it does nothing.
		failing := func() int { return u.count("cycle failed") + u.count("cycle skipped: standing by") }
		before := failing()
		waitFor(t, 30*time.Second, "3 more failing cycles", func() bool { fnAlive(t, u); return failing() >= before+3 })
		fnAlive(t, u)
		if k := u.count(down); k != 1 {
			t.Fatalf("the outage was logged %d times, want once", k)
		}
		if k := u.count("deploy started"); k != 0 {
			t.Fatalf("%d deploys started while dockerd was down", k)
		}
		cyclesDown := failing()
		standby := u.count("cycle skipped: standing by")

		restarted := n.start(t)
		back := time.Now()
		u.waitLog(t, 30*time.Second, 1, "docker recovered")
		u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v3)
		took := time.Since(back)
		after := u.cycles()
		waitFor(t, 30*time.Second, "2 more cycles", func() bool { return u.cycles() >= after+2 })
		fnAlive(t, u)
		for msg, want := range map[string]int{down: 1, "docker recovered": 1, "deploy started": 1, "deploy succeeded": 1, "deploy failed": 0} {
			if k := u.count(msg); k != want {
				t.Errorf("%q logged %d times, want %d", msg, k, want)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		if !n.allRunning(app, v3) {
			t.Fatal("v3 reported but not running on every task")
		}
		if k := n.records(t, app, "deploy-in-flight"); k != 0 {
			t.Fatalf("%d deploy-in-flight records left, want 0", k)
		}
		t.Logf("dockerd down %s (stop) + %s (start) over %d failing cycles (%d of them standing by: lease not renewable); v3 deployed %s after it answered",
			stopped.Round(10*time.Millisecond), restarted.Round(10*time.Millisecond), cyclesDown, standby, took.Round(100*time.Millisecond))
		o.set("outage logged once over %d failing cycles, no deploy, updater kept running; \"docker recovered\" once; "+
			"v3 (pushed while down) deployed once: 1 started, 1 succeeded, 2/2 tasks on v3, no in-flight record left", cyclesDown)
	})
}
