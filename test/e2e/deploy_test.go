//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

const deployLimit = 2 * time.Minute

// A good version rolls forward, a broken one rolls back and is left alone
// while the tag stays on it, the next good one deploys; services that did
// not opt in, or belong to another stack, are never touched.
func TestRollForwardRollBackAndSkip(t *testing.T) {
	const stack, repo = "e2eroll", "e2e/roll"
	v1 := push(t, repo, "v1")
	app := createService(t, "e2eroll_app", repo, v1, svcOpts{stack: stack, optIn: true, replicas: 2})
	bystander := createService(t, "e2eroll_bystander", repo, v1, svcOpts{stack: stack})
	other := createService(t, "e2eother_app", repo, v1, svcOpts{stack: "e2eother", optIn: true})
	bystanderVer, otherVer := inspect(t, bystander).Version.Index, inspect(t, other).Version.Index

	v2 := push(t, repo, "v2")

	// check is a dry run: it names the action and changes nothing.
	check := exec.Command(env.bin, "check")
	check.Env = append([]string{"UPDATER_STACK=" + stack, "DOCKER_CONFIG=" + t.TempDir()}, dockerHostEnv()...)
	out, err := check.CombinedOutput()
	capture("updater command output and service logs", out)
	if err != nil {
		t.Fatalf("updater check: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "e2eroll_app") || !strings.Contains(string(out), "deploy") ||
		!strings.Contains(string(out), v2[:19]) {
		t.Fatalf("check output does not plan the deploy of %s:\n%s", v2[:19], out)
	}
	if d := specDigest(t, app); d != v1 {
		t.Fatalf("check changed the service: now on %s", d)
	}

	u := startUpdater(t, stack)

	// 1. v2 is promoted once every task runs it and is healthy.
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "service", "e2eroll_app", "to_digest", v2)
	if d := specDigest(t, app); d != v2 {
		t.Fatalf("service pinned to %s, want %s", d, v2)
	}
	if img := inspect(t, app).Spec.TaskTemplate.ContainerSpec.Image; img != image(repo)+"@"+v2 {
		t.Fatalf("spec image %q, want tag pinned to the digest %q", img, image(repo)+"@"+v2)
	}
	if !allRunning(t, app, v2) {
		t.Fatal("deploy reported success before every task ran v2")
	}
	if n := u.count("deploy succeeded"); n != 1 {
		t.Fatalf("%d success events, want 1", n)
	}

	// 2. A broken v3 fails its health check: Swarm rolls back, the updater
	// reports it once, names the phase, and remembers the digest.
	bad := push(t, repo, "broken")
	u.waitLog(t, deployLimit, 1, "deploy failed", "service", "e2eroll_app", "to_digest", bad)
	failed := u.find("deploy failed", "to_digest", bad)
	if failed["step"] != "rollout" || failed["rolled_back"] != true {
		t.Fatalf("failure event: step=%v rolled_back=%v, want rollout/true: %v", failed["step"], failed["rolled_back"], failed)
	}
	waitFor(t, deployLimit, "app back on v2 and healthy", func() bool { return allRunning(t, app, v2) })
	if d := specDigest(t, app); d != v2 {
		t.Fatalf("after the rollback the spec is on %s, want v2 %s", d, v2)
	}
	ver := inspect(t, app).Version.Index
	after := u.cycles()
	waitFor(t, 30*time.Second, "3 more cycles", func() bool { return u.cycles() >= after+3 })
	if n := u.count("deploy started", "to_digest", bad); n != 1 {
		t.Fatalf("the bad digest was started %d times, want once", n)
	}
	if n := u.count("deploy failed"); n != 1 {
		t.Fatalf("%d failure events, want 1", n)
	}
	if v := inspect(t, app).Version.Index; v != ver {
		t.Fatalf("service spec version moved %d -> %d while the tag stayed on the bad digest", ver, v)
	}
	if n := records(t, app, "failed-digest"); n != 1 {
		t.Fatalf("%d failed-digest records in Swarm, want 1", n)
	}

	// A good v4 deploys, and the failed-digest record is dropped.
	v4 := push(t, repo, "v4")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "service", "e2eroll_app", "to_digest", v4)
	if !allRunning(t, app, v4) {
		t.Fatal("v4 reported but not running everywhere")
	}
	if n := records(t, app, "failed-digest"); n != 0 {
		t.Fatalf("%d failed-digest records left after a good deploy, want 0", n)
	}
	if n := records(t, app, "deploy-in-flight"); n != 0 {
		t.Fatalf("%d deploy records left in flight, want 0", n)
	}

	// 4. Neither the unlabelled service nor the other stack's was touched.
	for id, ver := range map[string]uint64{bystander: bystanderVer, other: otherVer} {
		svc := inspect(t, id)
		if svc.Version.Index != ver || specDigest(t, id) != v1 {
			t.Fatalf("%s was touched: version %d -> %d, digest %s", svc.Spec.Name, ver, svc.Version.Index, specDigest(t, id))
		}
	}
}

// 3. While the registry fails, nothing is touched and the outage is logged
// once; when it recovers that is logged and the pending deploy goes out.
func TestRegistryOutage(t *testing.T) {
	const stack, repo = "e2eout", "e2e/outage"
	row := fault(t, "registry answers 500, then 429 with Retry-After (3+3 cycles)")
	v1 := push(t, repo, "v1")
	app := createService(t, "e2eout_app", repo, v1, svcOpts{stack: stack, optIn: true})
	u := startUpdater(t, stack)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
	ver := inspect(t, app).Version.Index

	t.Cleanup(func() { env.faults.set(0) })
	env.faults.set(http.StatusInternalServerError)
	v2 := push(t, repo, "v2") // pushed past the faults
	const down = "registry failing; retrying every cycle, logged again when it recovers"
	u.waitLog(t, 30*time.Second, 1, down)
	after := u.cycles()
	waitFor(t, 60*time.Second, "3 cycles during a 500 outage", func() bool { return u.cycles() >= after+3 })
	env.faults.set(http.StatusTooManyRequests)
	after = u.cycles()
	waitFor(t, 60*time.Second, "3 cycles during a 429 outage", func() bool { return u.cycles() >= after+3 })

	if n := u.count(down); n != 1 {
		t.Fatalf("outage logged %d times, want once", n)
	}
	if v := inspect(t, app).Version.Index; v != ver {
		t.Fatalf("service touched during the outage: version %d -> %d", ver, v)
	}
	if n := u.count("deploy started"); n != 0 {
		t.Fatalf("%d deploys started during the outage", n)
	}

	env.faults.set(0)
	u.waitLog(t, 30*time.Second, 1, "registry recovered")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
	if !allRunning(t, app, v2) {
		t.Fatal("v2 reported but not running")
	}
	row.set("no deploy, spec untouched over 6 cycles; logged once, recovery once; the pending tag then deployed once")
}

// 5. An updater killed mid-rollout and started again reports the outcome
// exactly once and does not start the deploy again.
func TestKilledMidRollout(t *testing.T) {
	const stack, repo = "e2ekill", "e2e/kill"
	row := fault(t, "updater SIGKILLed mid-rollout (spec written, tasks not all on the new version)")
	ev := recordEvents(t)
	v1 := push(t, repo, "v1")
	app := createService(t, "e2ekill_app", repo, v1, svcOpts{stack: stack, optIn: true, replicas: 2})
	// With Slack and Rollbar: the restarted updater must report to the
	// message and the Rollbar deploy the first one opened.
	slack, rollbar := fakeSlack(t), fakeRollbar(t)
	notifiers := append(slackBotEnv(slack), rollbarEnv(rollbar)...)
	first := startUpdater(t, stack, notifiers...)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return first.cycles() >= 1 })

	v2 := push(t, repo, "v2")
	first.waitLog(t, 30*time.Second, 1, "deploy started", "to_digest", v2)
	waitFor(t, 30*time.Second, "the rollout to begin", func() bool { return specDigest(t, app) == v2 })
	first.stop(9) // SIGKILL: no chance to clean up
	if n := first.count("deploy succeeded") + first.count("deploy failed"); n != 0 {
		t.Fatalf("the first updater already reported the outcome (%d events): kill came too late to test anything", n)
	}
	if allRunning(t, app, v2) {
		t.Fatal("the rollout had finished before the kill: kill came too late to test anything")
	}
	if n := records(t, app, "deploy-in-flight"); n != 1 {
		t.Fatalf("%d in-flight records after the kill, want 1", n)
	}

	waitFor(t, 30*time.Second, "the first run's Slack post and Rollbar deploy", func() bool {
		return len(slack.Accepted()) > 0 && len(rollbar.Deploys()) > 0
	})
	second := startUpdater(t, stack, notifiers...)
	second.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2, "resumed", "true")
	waitFor(t, 30*time.Second, "the outcome in Rollbar", func() bool {
		d := rollbar.Deploys()
		return len(d) > 0 && len(d[len(d)-1].Statuses) > 1
	})
	if d := rollbar.Deploys(); len(d) != 1 || strings.Join(d[0].Statuses, ",") != "started,succeeded" {
		t.Fatalf("Rollbar deploys %+v: want the one the first run opened, closed as succeeded", d)
	}
	posts := 0
	for _, c := range slack.Accepted() {
		if c.Method == "chat.postMessage" && c.ThreadTS == "" {
			posts++
		}
	}
	if posts != 1 {
		t.Fatalf("%d Slack messages for one deploy across a restart, want 1", posts)
	}
	after := second.cycles()
	waitFor(t, 30*time.Second, "2 more cycles", func() bool { return second.cycles() >= after+2 })
	if n := second.count("deploy started"); n != 0 {
		t.Fatalf("the restarted updater started the deploy again (%d times)", n)
	}
	ev.wantImageWrites(t, app, v2) // nor wrote the spec again

	if n := second.count("deploy succeeded") + second.count("deploy failed"); n != 1 {
		t.Fatalf("%d outcome events after the restart, want exactly 1", n)
	}
	if !allRunning(t, app, v2) {
		t.Fatal("reported success but v2 is not running everywhere")
	}
	if n := records(t, app, "deploy-in-flight"); n != 0 {
		t.Fatalf("%d in-flight records left, want 0", n)
	}
	row.set("the restart followed the rollout: one outcome (succeeded, resumed=true), not started again (one image write in Docker's events); one Slack message, one Rollbar deploy closed; no record left")
}

// A service created without a digest (docker service create
// --no-resolve-image) is deployed once to pin it; after that it compares
// exactly like any other.
func TestUnpinnedServiceGetsPinned(t *testing.T) {
	const stack, repo = "e2epin", "e2e/pin"
	v1 := push(t, repo, "v1")
	app := createService(t, "e2epin_app", repo, v1, svcOpts{stack: stack, optIn: true, unpinned: true})
	u := startUpdater(t, stack)
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v1, "from_digest", "")
	if img := inspect(t, app).Spec.TaskTemplate.ContainerSpec.Image; img != image(repo)+"@"+v1 {
		t.Fatalf("spec image %q, want %q", img, image(repo)+"@"+v1)
	}
	after := u.cycles()
	waitFor(t, 30*time.Second, "2 more cycles", func() bool { return u.cycles() >= after+2 })
	if n := u.count("deploy started"); n != 1 {
		t.Fatalf("%d deploys of an unchanged pinned tag, want 1", n)
	}

	// SIGTERM stops it cleanly.
	if err := u.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v, want 0", err)
	}
	if u.count("updater stopped") != 1 {
		t.Fatal(`no "updater stopped" line after SIGTERM`)
	}

	// `updater deploy SERVICE` deploys now and waits; an unknown service
	// exits 1 and says what a watched service needs.
	v2 := push(t, repo, "v2")
	deploy := func(name string) (string, int) {
		cmd := exec.Command(env.bin, "deploy", name)
		cmd.Env = []string{"UPDATER_STACK=" + stack, "DOCKER_CONFIG=" + t.TempDir(), "UPDATER_WATCH_INTERVAL=200ms"}
		out, err := cmd.CombinedOutput()
		capture("updater command output and service logs", out)
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if out, code := deploy("e2epin_app"); code != 0 || !strings.Contains(out, "succeeded") {
		t.Fatalf("updater deploy: exit %d\n%s", code, out)
	}
	if !allRunning(t, app, v2) {
		t.Fatal("updater deploy returned before v2 ran everywhere")
	}
	if out, code := deploy("e2epin_nosuch"); code != 1 || !strings.Contains(out, "not watched") {
		t.Fatalf("updater deploy of an unknown service: exit %d, want 1 naming the problem\n%s", code, out)
	}
	out, err := exec.Command(env.bin, "version").Output()
	if err != nil || strings.TrimSpace(string(out)) != "updater e2e" {
		t.Fatalf("updater version: %q, %v", out, err)
	}
}

// 6. Bad configuration exits 2 naming the variable, the value and what is
// valid, before any contact with Docker.
func TestBadConfig(t *testing.T) {
	cmd := exec.Command(env.bin, "run")
	cmd.Env = []string{
		"DOCKER_HOST=unix:///nonexistent/docker.sock", // contact would fail differently (exit 1)
		"UPDATER_SCHEDUEL=@every 1m",
		"UPDATER_SCHEDULE=every 5 minutes",
		"UPDATER_DEPLOY_TIMEOUT=10 minutes",
	}
	out, err := cmd.CombinedOutput()
	capture("updater command output and service logs", out)
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v, want code 2\n%s", err, out)
	}
	for _, want := range []string{
		"UPDATER_SCHEDUEL", "did you mean UPDATER_SCHEDULE",
		`UPDATER_SCHEDULE="every 5 minutes"`, "@every 1m",
		`UPDATER_DEPLOY_TIMEOUT="10 minutes"`, "10m",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("message lacks %q:\n%s", want, out)
		}
	}
}

// records counts the updater's Swarm records of kind about a service.
func records(t testing.TB, serviceID, kind string) int {
	t.Helper()
	f := make(client.Filters).Add("label", "io.updater.service="+serviceID).Add("label", "io.updater.kind="+kind)
	res, err := env.docker.ConfigList(context.Background(), client.ConfigListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Items)
}

// The updater's resident memory while it watches 100 services, each
// cycle asking the registry about their tag: the figure for the docs, and
// a bound so a leak or a per-service cost shows up here. The bound is a
// ratio to the same updater watching a handful, not an absolute figure,
// which depends on the machine and the Go runtime more than on the code.
func TestIdleRSSWatching100Services(t *testing.T) {
	const stack, repo, few, n = "e2erss", "e2e/rss", 5, 100
	const maxRatio = 1.5
	v1 := push(t, repo, "v1")
	ctx := context.Background()
	zero := uint64(0)
	create := func(from, to int) {
		for i := from; i < to; i++ {
			res, err := env.docker.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: swarm.ServiceSpec{
				Annotations: swarm.Annotations{Name: fmt.Sprintf("e2erss_s%03d", i), Labels: map[string]string{
					"com.docker.stack.namespace": stack, "updater.enable": "true"}},
				TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: image(repo) + "@" + v1}},
				// Scaled to zero: watched like any other, no containers to run.
				Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &zero}},
			}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { removeService(res.ID) })
		}
	}
	// idleRSS runs an updater over the stack for 10 cycles past its first
	// full one and returns its resident memory in KiB.
	idleRSS := func(services int) int {
		u := startUpdater(t, stack)
		u.waitLog(t, time.Minute, 1, "cycle done", "services", fmt.Sprint(services))
		after := u.cycles()
		waitFor(t, time.Minute, "10 more cycles", func() bool { return u.cycles() >= after+10 })
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", u.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		var kb int
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				fmt.Sscanf(strings.TrimPrefix(line, "VmRSS:"), "%d", &kb)
			}
		}
		if kb == 0 {
			t.Fatalf("no VmRSS in /proc/%d/status", u.cmd.Process.Pid)
		}
		if s := u.count("deploy started"); s != 0 {
			t.Fatalf("%d deploys started with nothing to deploy", s)
		}
		t.Logf("idle RSS watching %d services after %d cycles: %.1f MiB", services, u.cycles(), float64(kb)/1024)
		u.stop(syscall.SIGTERM)
		return kb
	}
	create(0, few)
	base := idleRSS(few)
	create(few, n)
	kb := idleRSS(n)
	if r := float64(kb) / float64(base); r > maxRatio {
		t.Fatalf("RSS watching %d services is %.2f× that watching %d (%d vs %d KiB), want at most %.1f×", n, r, few, kb, base, maxRatio)
	}
}

// Two updaters on one stack by mistake: only the lease holder acts; when
// it dies, the other takes over once the lease expires.
func TestTwoUpdatersOneActs(t *testing.T) {
	const stack, repo = "e2etwo", "e2e/two"
	row := fault(t, "two updaters on one stack; the acting one SIGKILLed")
	ev := recordEvents(t)
	v1 := push(t, repo, "v1")
	app := createService(t, "e2etwo_app", repo, v1, svcOpts{stack: stack, optIn: true})
	// Each through a proxy of its own: whose connection wrote the spec is
	// seen outside both.
	pa, pb := newDockerProxy(t), newDockerProxy(t)
	a := startUpdater(t, stack, "DOCKER_HOST="+pa.host)
	a.waitLog(t, 30*time.Second, 1, "lease taken: this updater acts")
	b := startUpdater(t, stack, "DOCKER_HOST="+pb.host)
	b.waitLog(t, 30*time.Second, 1, "lease held by another updater: standing by")

	v2 := push(t, repo, "v2")
	a.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
	after := a.cycles()
	waitFor(t, 30*time.Second, "2 more cycles", func() bool { return a.cycles() >= after+2 })
	// By Swarm's account: the lease names a, the push was written once,
	// and only through a's connection.
	if h, want := leaseHolder(t, stack), holderOf(t, a); h != want {
		t.Fatalf("the lease in Swarm names %q, want the acting updater %q", h, want)
	}
	ev.wantImageWrites(t, app, v2)
	if wa, wb := pa.specWrites(app), pb.specWrites(app); wa == 0 || wb != 0 {
		t.Fatalf("spec writes of the service: %d through the holder's connection, %d through the standby's; want some and none", wa, wb)
	}
	if n := b.count("deploy started"); n != 0 {
		t.Fatalf("the standby updater started %d deploys", n)
	}

	a.stop(syscall.SIGKILL) // no release: b waits out the lease
	b.waitLog(t, 30*time.Second, 1, "lease taken: this updater acts")
	if h, want := leaseHolder(t, stack), holderOf(t, b); h != want {
		t.Fatalf("after the takeover the lease in Swarm names %q, want %q", h, want)
	}
	v3 := push(t, repo, "v3")
	b.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v3)
	if !allRunning(t, app, v3) {
		t.Fatal("v3 reported but not running")
	}
	if n := a.count("deploy started") + b.count("deploy started"); n != 2 {
		t.Fatalf("%d deploys started for two pushes, want 2", n)
	}
	ev.wantImageWrites(t, app, v2, v3)
	if pb.specWrites(app) == 0 {
		t.Fatal("v3 written, but not through the new holder's connection")
	}
	row.set("only the lease holder (named in Swarm's lease config) deployed, through its own connection; the standby took over when the lease expired and deployed the next push; 2 image writes in Docker's events for 2 pushes")
}
