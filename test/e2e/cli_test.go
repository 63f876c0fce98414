//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// The CLI as a client of the running updater (UPDATER_URL): `updater
// deploy` asks the updater that holds the lease, on the real swarm, and
// the service moves (read from Docker); `check --now --format json` shows
// the updater's view of it; a wrong token is refused with exit 2 and
// changes nothing; an approval nobody opened is a 404, exit 1. The CLI's
// DOCKER_HOST is a socket that counts connections: it sees none.
func TestCLIClient(t *testing.T) {
	const stack, repo = "e2ecli", "e2e/cli"
	v1 := push(t, repo, "v1")
	app := createService(t, stack+"_app", repo, v1, svcOpts{stack: stack, optIn: true})
	// Polling an hour away: only the CLI's requests deploy.
	u := startUpdater(t, stack, httpEnv("UPDATER_SCHEDULE=@every 1h")...)
	base := u.base(t)
	waitFor(t, 30*time.Second, "the first cycle", func() bool { return u.cycles() >= 1 })
	v2 := push(t, repo, "v2")

	sock, conns := countingSocket(t)
	cli := clientCLI(t, base, sock)

	// A wrong token first: refused, exit 2, the service untouched.
	const wrong = "wrong-token-0123456789abcdef"
	code, out, errOut := cli(wrong, "deploy", stack+"_app")
	if code != 2 || !strings.Contains(errOut, "401 Unauthorized") || !strings.Contains(errOut, "UPDATER_API_TOKEN is not its token") {
		t.Fatalf("deploy with a wrong token = %d, want 2 and the refusal\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if strings.Contains(out+errOut, wrong) || strings.Contains(out+errOut, apiToken) {
		t.Errorf("a token is in the CLI's output:\n%s%s", out, errOut)
	}
	if d := specDigest(t, app); d != v1 {
		t.Fatalf("after a refused deploy the spec pins %s, want v1 %s", d, v1)
	}

	// The deploy, through the API, followed to its end.
	code, out, errOut = cli(apiToken, "deploy", "--wait", "3m", stack+"_app")
	if code != 0 || !strings.Contains(out, stack+"_app succeeded") {
		t.Fatalf("deploy --wait = %d, want 0 and its success\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if d := specDigest(t, app); d != v2 {
		t.Fatalf("the spec pins %s after the deploy, want v2 %s", d, v2)
	}
	waitFor(t, deployLimit, "every task on v2", func() bool { return allRunning(t, app, v2) })
	if n := u.count("deploy requested through the API", "service", stack+"_app"); n != 1 {
		t.Errorf("%d deploys requested through the API, want 1 (the refused one is none)", n)
	}

	// check --now: a fresh full check by the running updater, as JSON.
	code, out, errOut = cli(apiToken, "check", "--now", "--format", "json")
	if code != 0 {
		t.Fatalf("check --now --format json = %d\nstderr: %s", code, errOut)
	}
	var r struct {
		Checked  time.Time `json:"checked"`
		Services []struct {
			Name           string `json:"name"`
			Ref            string `json:"ref"`
			RunningDigest  string `json:"running_digest"`
			RegistryDigest string `json:"registry_digest"`
			State          string `json:"state"`
		} `json:"services"`
		Unwatched json.RawMessage `json:"unwatched"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("check --format json is not JSON: %v\n%s", err, out)
	}
	if len(r.Services) != 1 {
		t.Fatalf("check listed %d services, want %s_app alone:\n%s", len(r.Services), stack, out)
	}
	if s := r.Services[0]; s.Name != stack+"_app" || s.Ref != image(repo) || s.RunningDigest != v2 || s.RegistryDigest != v2 || s.State != "up-to-date" {
		t.Errorf("check's service %+v, want %s_app on v2, up to date", s, stack)
	}
	if r.Checked.IsZero() || string(r.Unwatched) != "null" {
		t.Errorf("checked %s, unwatched %s: want a time and null", r.Checked, r.Unwatched)
	}

	// An approval nobody opened.
	code, _, errOut = cli(apiToken, "approve", "no-such-deploy")
	if code != 1 || !strings.Contains(errOut, "404 Not Found") || !strings.Contains(errOut, "no deploy no-such-deploy awaits approval") {
		t.Errorf("approve of an unknown deploy = %d, want 1 and the API's 404\nstderr: %s", code, errOut)
	}

	if n := conns.Load(); n != 0 {
		t.Errorf("the CLI made %d connections to its DOCKER_HOST; as a client it asks the API only", n)
	}
}

// clientCLI runs the updater binary as a client of the updater at base,
// with token, its DOCKER_HOST the socket sock (countingSocket): it
// returns the exit code and what it printed.
func clientCLI(t *testing.T, base, sock string) func(token string, args ...string) (code int, stdout, stderr string) {
	return func(token string, args ...string) (code int, stdout, stderr string) {
		t.Helper()
		return runCLI(t, []string{"PATH=" + os.Getenv("PATH"), "UPDATER_URL=" + base, "UPDATER_API_TOKEN=" + token,
			"DOCKER_HOST=unix://" + sock}, args...)
	}
}

// runCLI runs the updater binary with args in environ, its outputs kept
// with the test's; the exit code and the outputs.
func runCLI(t testing.TB, environ []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(env.bin, args...)
	cmd.Env = environ
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	capture("updater CLI output", append(out.Bytes(), errb.Bytes()...))
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("updater %q: %v", args, err)
	}
	return code, out.String(), errb.String()
}

// TestCLIHistoryAndRollback: `updater history` and `updater rollback`
// as clients of the running updater on the real swarm. After two deploys
// (v1 -> v2 -> v3) the history lists both, newest first; `rollback
// --wait` returns the service to v2 (the spec pins v2, every task runs
// it: read from Docker) and its history says so; `rollback --to v1`
// without --wait answers at once and the service then moves to v1. A
// digest of the wrong shape is refused before any request, a service not
// watched is the API's 404. The CLI never connects to its DOCKER_HOST.
// (The quarantine over later cycles, hooks not run and a digest gone
// from the registry: TestRollbackOnDemand in history_test.go.)
func TestCLIHistoryAndRollback(t *testing.T) {
	const stack, repo = "e2eclirb", "e2e/clirb"
	svc := stack + "_app"
	v1 := push(t, repo, "v1")
	app := createService(t, svc, repo, v1, svcOpts{stack: stack, optIn: true})
	// Polling an hour away: only the CLI's requests deploy.
	u := startUpdater(t, stack, httpEnv("UPDATER_SCHEDULE=@every 1h")...)
	base := u.base(t)
	waitFor(t, 30*time.Second, "the first cycle", func() bool { return u.cycles() >= 1 })
	sock, conns := countingSocket(t)
	cli := clientCLI(t, base, sock)
	run := func(want int, args ...string) (string, string) {
		t.Helper()
		code, out, errOut := cli(apiToken, args...)
		if code != want {
			t.Fatalf("updater %q = %d, want %d\nstdout: %s\nstderr: %s", args, code, want, out, errOut)
		}
		return out, errOut
	}
	type entry struct {
		ID       string `json:"id"`
		From     string `json:"from_digest"`
		To       string `json:"to_digest"`
		Outcome  string `json:"outcome"`
		Rollback bool   `json:"rollback"`
		By       string `json:"by"`
	}
	history := func() []entry {
		t.Helper()
		out, _ := run(0, "history", "--format", "json", svc)
		var h struct {
			Service string  `json:"service"`
			History []entry `json:"history"`
		}
		if err := json.Unmarshal([]byte(out), &h); err != nil || h.Service != svc {
			t.Fatalf("history --format json: %v\n%s", err, out)
		}
		return h.History
	}

	v2 := push(t, repo, "v2")
	run(0, "deploy", "--wait", "3m", svc)
	v3 := push(t, repo, "v3")
	run(0, "deploy", "--wait", "3m", svc)
	waitFor(t, deployLimit, "every task on v3", func() bool { return allRunning(t, app, v3) })
	h := history()
	if len(h) != 2 || h[0].To != v3 || h[0].From != v2 || h[1].To != v2 || h[1].From != v1 || h[0].Outcome != "succeeded" || h[0].Rollback {
		t.Fatalf("history after v2 and v3: %+v", h)
	}
	table, _ := run(0, "history", svc)
	if !strings.HasPrefix(table, "ENDED") || !strings.Contains(table, v3) || !strings.Contains(table, v2) || strings.Count(table, "succeeded") != 2 {
		t.Errorf("history's table:\n%s", table)
	}

	// Back to the last success before v3, followed to its outcome.
	out, _ := run(0, "rollback", "--wait", "--timeout", "3m", svc)
	if !strings.Contains(out, svc+": rollback "+v3[:19]+" -> "+v2[:19]+" begun") || !strings.Contains(out, svc+" rollback succeeded: "+v3[:19]+" -> "+v2[:19]) {
		t.Fatalf("rollback --wait printed:\n%s", out)
	}
	if d := specDigest(t, app); d != v2 {
		t.Fatalf("after the rollback the spec pins %s, want v2 %s", d, v2)
	}
	waitFor(t, deployLimit, "every task on v2", func() bool { return allRunning(t, app, v2) })
	if h := history(); len(h) != 3 || !h[0].Rollback || h[0].By != "api" || h[0].To != v2 || h[0].From != v3 || h[0].Outcome != "succeeded" {
		t.Fatalf("history after the rollback: %+v", h)
	}
	// Refusals: nothing asked, nothing changed.
	if _, errOut := run(2, "rollback", "--to", "v1", svc); !strings.Contains(errOut, `--to "v1" is not a digest`) {
		t.Errorf("rollback --to v1 said:\n%s", errOut)
	}
	if _, errOut := run(1, "rollback", stack+"_nope"); !strings.Contains(errOut, "404 Not Found") || !strings.Contains(errOut, "not watched") {
		t.Errorf("rollback of a service not watched said:\n%s", errOut)
	}
	if d := specDigest(t, app); d != v2 {
		t.Fatalf("a refused rollback moved the spec to %s", d)
	}

	// --to an older digest, without --wait: begun, then read from Docker.
	out, _ = run(0, "rollback", "--to", v1, svc)
	if !strings.Contains(out, svc+": rollback "+v2[:19]+" -> "+v1[:19]+" begun") {
		t.Fatalf("rollback --to v1 printed:\n%s", out)
	}
	waitFor(t, deployLimit, "the spec pinned to v1", func() bool { return specDigest(t, app) == v1 })
	waitFor(t, deployLimit, "every task on v1", func() bool { return allRunning(t, app, v1) })
	waitFor(t, deployLimit, "the rollback to v1 in the history", func() bool {
		h := history()
		return len(h) == 4 && h[0].Rollback && h[0].To == v1 && h[0].From == v2 && h[0].Outcome == "succeeded"
	})
	if n := conns.Load(); n != 0 {
		t.Errorf("the CLI made %d connections to its DOCKER_HOST; as a client it asks the API only", n)
	}
}

// countingSocket is a unix socket that counts connections and closes
// each at once.
func countingSocket(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	dir, err := os.MkdirTemp("", "e2ecli")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	n := new(atomic.Int32)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done; os.RemoveAll(dir) })
	return sock, n
}

// TestCheckUnwatched: a local `updater check` on the real swarm names a
// service whose opt-in label is on its containers (a compose file's
// `labels:`), not on the service, and says that nothing is watched.
func TestCheckUnwatched(t *testing.T) {
	const stack, repo = "e2ecliuw", "e2e/cliuw"
	v1 := push(t, repo, "v1")
	spec := serviceSpec(stack+"_api", repo, v1, svcOpts{stack: stack})
	spec.TaskTemplate.ContainerSpec.Labels = map[string]string{"updater.enable": "true"}
	res, err := env.docker.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeService(res.ID) })

	check := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(env.bin, append([]string{"check"}, args...)...)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "UPDATER_STACK=" + stack, "DOCKER_CONFIG=" + t.TempDir()}, dockerHostEnv()...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		capture("updater CLI output", append(out.Bytes(), errb.Bytes()...))
		if err != nil {
			t.Fatalf("updater check %q: %v\nstdout: %s\nstderr: %s", args, err, &out, &errb)
		}
		return out.String()
	}
	const why = "updater.enable is a label of its containers (compose `labels:`), not of the service: put it under `deploy.labels:`"
	table := check()
	if !strings.HasPrefix(table, "no service is watched: give one the label updater.enable=true under `deploy.labels:`, in stack "+stack) ||
		!strings.Contains(table, "\nnot watched:\n") || !strings.Contains(table, "  "+stack+"_api: "+why+"\n") {
		t.Errorf("check printed:\n%s", table)
	}
	var r struct {
		Services  []json.RawMessage `json:"services"`
		Unwatched []struct {
			Service, Stack, Reason string
		} `json:"unwatched"`
	}
	out := check("--format", "json")
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	found := false
	for _, u := range r.Unwatched {
		found = found || u.Service == stack+"_api" && u.Stack == stack && u.Reason == why
	}
	if r.Services == nil || len(r.Services) != 0 || !found {
		t.Errorf("check --format json:\n%s", out)
	}
}

// TestDeployForceThroughFreeze: a local `updater deploy` of a frozen
// service (updater.freeze) is refused, naming --force, and leaves the
// spec alone; `updater deploy --force` deploys it (read from Docker).
func TestDeployForceThroughFreeze(t *testing.T) {
	const stack, repo = "e2eclifreeze", "e2e/clifreeze"
	v1 := push(t, repo, "v1")
	today := time.Now().UTC()
	freeze := today.AddDate(0, 0, -1).Format("2006-01-02") + ".." + today.AddDate(0, 0, 1).Format("2006-01-02")
	app := createService(t, stack+"_app", repo, v1, svcOpts{stack: stack, optIn: true, labels: map[string]string{"updater.freeze": freeze}})
	v2 := push(t, repo, "v2")

	local := localCLI(t, stack)
	deploy := func(args ...string) (int, string, string) {
		t.Helper()
		return local(append([]string{"deploy"}, args...)...)
	}
	code, out, errOut := deploy(stack + "_app")
	if code != 1 || !strings.Contains(errOut, "deploy it with --force to go through the freeze") {
		t.Fatalf("deploy of a frozen service = %d, want 1 and the hint\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if d := specDigest(t, app); d != v1 {
		t.Fatalf("a refused deploy moved the spec to %s", d)
	}
	code, out, errOut = deploy("--force", stack+"_app")
	if code != 0 || !strings.HasPrefix(out, stack+"_app succeeded") {
		t.Fatalf("deploy --force = %d, want 0 and its success\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if d := specDigest(t, app); d != v2 {
		t.Fatalf("after deploy --force the spec pins %s, want v2 %s", d, v2)
	}
	waitFor(t, deployLimit, "every task on v2", func() bool { return allRunning(t, app, v2) })
}

// localCLI runs the updater binary acting on the real swarm itself (no
// UPDATER_URL), for stack: it returns the exit code and what it printed.
func localCLI(t *testing.T, stack string) func(args ...string) (code int, stdout, stderr string) {
	return func(args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.Command(env.bin, args...)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "UPDATER_STACK=" + stack, "DOCKER_CONFIG=" + t.TempDir(),
			"UPDATER_WATCH_INTERVAL=200ms", "UPDATER_DEPLOY_TIMEOUT=90s", "UPDATER_LOG_FORMAT=json"}, dockerHostEnv()...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		capture("updater CLI output", append(out.Bytes(), errb.Bytes()...))
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("updater %q: %v", args, err)
		}
		if exit != nil {
			return exit.ExitCode(), out.String(), errb.String()
		}
		return 0, out.String(), errb.String()
	}
}

// TestCLIRollbackLocal: without UPDATER_URL, `updater history` reads the
// service's history from Swarm and `updater rollback` rolls back itself,
// taking the lease as a local deploy does: after a deploy of v2, a
// rollback without --to has nothing to return to (v1 was never deployed
// by an updater) and says to name one, changing nothing; `--to v1`
// returns the service to v1 (spec and tasks, read from Docker), kept in
// the history as a rollback by the cli.
func TestCLIRollbackLocal(t *testing.T) {
	const stack, repo = "e2eclirbl", "e2e/clirbl"
	svc := stack + "_app"
	v1 := push(t, repo, "v1")
	app := createService(t, svc, repo, v1, svcOpts{stack: stack, optIn: true})
	v2 := push(t, repo, "v2")
	local := localCLI(t, stack)
	if code, out, errOut := local("deploy", svc); code != 0 {
		t.Fatalf("deploy = %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if d := specDigest(t, app); d != v2 {
		t.Fatalf("after the deploy the spec pins %s, want v2 %s", d, v2)
	}
	code, out, errOut := local("history", svc)
	if code != 0 || !strings.HasPrefix(out, "ENDED") || !strings.Contains(out, "succeeded  "+v2+"  "+v1[:19]+"  deploy") {
		t.Fatalf("history = %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	code, out, errOut = local("rollback", svc)
	if code != 1 || !strings.Contains(errOut, "no earlier successful deploy to roll back to") || !strings.Contains(errOut, "name the digest to return to with --to") {
		t.Fatalf("rollback with nothing to return to = %d, want 1 and the hint\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if d := specDigest(t, app); d != v2 {
		t.Fatalf("a refused rollback moved the spec to %s", d)
	}

	code, out, errOut = local("rollback", "--to", v1, svc)
	if code != 0 || !strings.HasPrefix(out, svc+" rollback succeeded: "+v2[:19]+" -> "+v1[:19]) {
		t.Fatalf("rollback --to v1 = %d, want 0 and its success\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if d := specDigest(t, app); d != v1 {
		t.Fatalf("after the rollback the spec pins %s, want v1 %s", d, v1)
	}
	waitFor(t, deployLimit, "every task on v1", func() bool { return allRunning(t, app, v1) })
	code, out, errOut = local("history", "--format", "json", svc)
	var h struct {
		History []struct {
			From     string `json:"from_digest"`
			To       string `json:"to_digest"`
			Outcome  string `json:"outcome"`
			Rollback bool   `json:"rollback"`
			By       string `json:"by"`
		} `json:"history"`
	}
	if err := json.Unmarshal([]byte(out), &h); code != 0 || err != nil {
		t.Fatalf("history --format json = %d, %v\nstdout: %s\nstderr: %s", code, err, out, errOut)
	}
	if len(h.History) != 2 || !h.History[0].Rollback || h.History[0].By != "cli" || h.History[0].To != v1 || h.History[0].From != v2 ||
		h.History[0].Outcome != "succeeded" || h.History[1].To != v2 || h.History[1].Rollback {
		t.Errorf("history after the rollback: %+v", h.History)
	}
}
