//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The dockerd the updater talks to freezes mid-rollout (SIGSTOP, as a hung
// engine or a socket proxy that stops answering): it still accepts
// connections, it answers nothing. Each Docker call fails at its bound
// (UPDATER_DOCKER_TIMEOUT) as Docker being unreachable, /readyz turns
// unready within the documented bound (the log naming the call), nothing is
// reported while frozen; after SIGCONT the deploy carries on and is
// reported once. The dockerd is the fault node's (faultnode.sh), never the
// host's.
func TestDockerdFrozen(t *testing.T) {
	n := setupFaultNode(t)
	o := fault(t, "dockerd frozen (SIGSTOP) during a rollout")
	const stack, repo = "e2efnfrozen", "e2e/fnfrozen"
	// The lease held longer than the bound: a renewal that fails for its
	// TTL stops the run, which would hide the call failing at its bound.
	const bound, leaseTTL = 5 * time.Second, 20 * time.Second
	// README: unready at most UPDATER_DOCKER_TIMEOUT + UPDATER_LEASE_TTL/4
	// after Docker stops answering; a second for a loaded machine.
	readyBound := bound + leaseTTL/4 + time.Second

	v1 := push(t, repo, "v1")
	app := n.createService(t, stack+"_app", stack, repo, v1, 2)
	if os.Getenv("DOCKER_HOST") != "" {
		t.Setenv("DOCKER_HOST", n.host)
	}
	u := startUpdater(t, stack, "DOCKER_HOST="+n.host, "UPDATER_DOCKER_TIMEOUT="+bound.String(), "UPDATER_LEASE_TTL="+leaseTTL.String())
	u.waitLog(t, 30*time.Second, 1, "cycle done", "services", "1")
	base := u.base(t)
	if r := get(t, base+"/readyz"); r.status != http.StatusOK {
		t.Fatalf("/readyz before the freeze: %d %s", r.status, r.body)
	}

	v2 := push(t, repo, "v2")
	u.waitLog(t, 30*time.Second, 1, "deploy started", "to_digest", v2)
	waitFor(t, 30*time.Second, "the rollout to begin", func() bool { return n.specDigest(t, app) == v2 })
	byDigest, err := n.tasks(app)
	if err != nil {
		t.Fatal(err)
	}
	if byDigest[v2] == 2 {
		t.Fatal("the rollout had finished before dockerd was frozen: too late to test anything")
	}

	pid := n.dockerdPID(t)
	mark := fnLines(u)
	frozen := time.Now()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP dockerd %d: %v", pid, err)
	}
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				t.Errorf("SIGCONT dockerd %d: %v", pid, err)
			}
		}
	}
	// Before the fault node's teardown, which needs its dockerd.
	t.Cleanup(thaw)
	if k := fnOutcomes(u); k != 0 {
		t.Fatalf("the outcome was reported (%d events) before dockerd froze: too late to test anything", k)
	}

	// /readyz turns unready within its bound, in fixed words; the log
	// names the call that hangs.
	var unready reply
	waitFor(t, readyBound+time.Second, "/readyz unready", func() bool {
		unready = get(t, base+"/readyz")
		return unready.status == http.StatusServiceUnavailable
	})
	tookUnready := time.Since(frozen)
	if tookUnready > readyBound || !strings.Contains(unready.body, "docker calls got no answer within their bounds") {
		t.Fatalf("/readyz unready %s after the freeze saying %q; want within %s, saying docker calls hang",
			tookUnready, unready.body, readyBound)
	}
	// The line is written as /readyz answers: read from the updater's
	// stderr a moment after the answer (the CI run that found it: map[]).
	u.waitLog(t, 5*time.Second, 1, "readiness")
	if l := u.find("readiness"); l == nil || !strings.Contains(fmt.Sprint(l["err"]), "no answer within "+bound.String()) {
		t.Fatalf("the readiness log line %v, want it naming a call unanswered for %s", l, bound)
	}
	// The rollout watch's call failed at its bound, as Docker unreachable.
	u.waitLog(t, bound+2*time.Second, 1, "inspect rollout")
	warned := u.matching("inspect rollout")[0]
	if e := fmt.Sprint(warned["err"]); !strings.Contains(e, "unavailable: docker did not answer") || !strings.Contains(e, "within "+bound.String()) {
		t.Fatalf("the rollout watch logged %q, want a call unanswered within %s", e, bound)
	}
	// Frozen for two more bounds: calls keep failing at theirs, the
	// updater keeps serving, nothing is reported.
	waitFor(t, 2*bound+time.Second, "two more bounds frozen", func() bool { return time.Since(frozen) > tookUnready+2*bound })
	fnAlive(t, u)
	if r := get(t, base+"/healthz"); r.status != http.StatusOK {
		t.Fatalf("/healthz while dockerd is frozen: %d %s", r.status, r.body)
	}
	if r := get(t, base+"/readyz"); r.status != http.StatusServiceUnavailable {
		t.Fatalf("/readyz still frozen: %d %s, want 503", r.status, r.body)
	}
	if k := fnOutcomes(u); k != 0 {
		t.Fatalf("%d outcomes reported while dockerd was frozen:\n%s", k, u.log())
	}
	frozenFor := time.Since(frozen)
	thaw()

	// Thawed: ready again once Docker answers, and the deploy has one
	// outcome.
	waitFor(t, 30*time.Second, "/readyz ready again", func() bool { return get(t, base+"/readyz").status == http.StatusOK })
	readyAgain := time.Since(frozen) - frozenFor
	waitFor(t, deployLimit, "the deploy's outcome", func() bool { fnAlive(t, u); return fnOutcomes(u) > 0 })
	after := u.cycles()
	waitFor(t, 30*time.Second, "2 more cycles", func() bool { return u.cycles() >= after+2 })
	fnAlive(t, u)
	if k := fnOutcomes(u); k != 1 {
		t.Fatalf("%d outcomes reported for one deploy, want exactly 1:\n%s", k, u.log())
	}
	if k := u.count("deploy started"); k != 1 {
		t.Fatalf("%d deploys started, want 1", k)
	}
	// Health checks frozen with dockerd may time out as it thaws, and
	// Swarm roll the tasks back: then that is the outcome, on v1.
	_, verdict := n.settled(t, u, app, v1, v2, "did not answer")
	t.Logf("frozen at %d/2 tasks on v2 for %s: /readyz unready after %s (%q), ready %s after SIGCONT; outcome %s; warnings: %s",
		byDigest[v2], frozenFor.Round(100*time.Millisecond), tookUnready.Round(100*time.Millisecond), unready.body,
		readyAgain.Round(100*time.Millisecond), verdict, fnSummary(fnComplaints(u, mark)))
	o.set("calls failed at their %s bound as unavailable; /readyz 503 after %s (bound %s), the log naming the call, 200 again %s after SIGCONT; "+
		"frozen %s, nothing reported meanwhile; one outcome: %s; no in-flight record left",
		bound, tookUnready.Round(100*time.Millisecond), readyBound, readyAgain.Round(100*time.Millisecond),
		frozenFor.Round(time.Second), verdict)
}

// dockerdPID is the fault node's dockerd, from the pid file faultnode.sh
// wrote, checked against its command line: only that process is signalled.
func (n *faultNode) dockerdPID(t *testing.T) int {
	t.Helper()
	const pidFile, execRoot = "/var/run/docker-updfault-work/dockerd.pid", "/var/run/docker-updfault"
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", pidFile, err)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	args := string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
	if !strings.Contains(args, "dockerd") || !strings.Contains(args, "--exec-root "+execRoot+" ") {
		t.Fatalf("pid %d from %s is not the fault node's dockerd: %q", pid, pidFile, args)
	}
	return pid
}

// get is an unauthenticated GET that, unlike call, tolerates no answer
// only as a failed test, with a short timeout: /readyz must answer while
// Docker does not.
func get(t *testing.T, url string) reply {
	t.Helper()
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return reply{status: resp.StatusCode, body: strings.TrimSpace(b.String())}
}
