//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	updaterswarm "github.com/updater-dev/updater/internal/swarm"
)

// What we ship is what we test: the updater image built from ./Dockerfile
// by `make image`, deployed with the shipped docker-stack.yml by `docker
// stack deploy`, with testdata/stack-override.yml on top for what differs
// on a test machine (timings, the host network). First as shipped, with no
// secret created: one good rollout. Then with its optional Slack and
// Rollbar stanzas uncommented, as the file's comments say, and their
// secrets created: a broken rollout, rolled back and reported to the fake
// Slack and Rollbar through those secrets.
func TestShippedStack(t *testing.T) {
	const stack, repo = "e2estack", "e2e/stack"
	root := repoRoot(t)
	updaterImage := shippedImage(t, root, env.faulty+"/e2e/updater:stack")
	// Where the rest of the test's time goes, for the suite's budget.
	began := time.Now()
	phase := func(what string) { t.Logf("%s at %s", what, time.Since(began).Round(100*time.Millisecond)) }

	slack, rollbar := fakeSlack(t), fakeRollbar(t)
	v1 := push(t, repo, "v1")
	// The secrets the optional stanzas use, made before the stack's
	// cleanup is registered, so they go after the stack (cleanups run last
	// first): a secret a service still uses can't be removed, and made
	// later, they stayed behind.
	secret(t, "slack_token", slackToken)
	secret(t, "rollbar_token", rollbarToken)
	t.Cleanup(func() { stackRemove(t, stack) })
	deploy := func(file string, extra ...string) {
		vars := append([]string{"STACK=" + stack, "APP_IMAGE=" + image(repo), "UPDATER_IMAGE=" + updaterImage,
			"UPDATER_SCHEDULE=@every 1s"}, extra...)
		run(t, root, vars, "docker", "stack", "deploy", "--quiet", "-c", file, "-c", "test/e2e/testdata/stack-override.yml", stack)
	}
	// The override points Slack and Rollbar at the fakes; empty is unset,
	// as the shipped file's optional stanzas are.
	deploy("docker-stack.yml", "SLACK_API_URL=", "ROLLBAR_ENDPOINT=")
	updater := serviceID(t, stack+"_updater")
	spec := inspect(t, updater).Spec.TaskTemplate.ContainerSpec
	if len(spec.Secrets) != 0 {
		t.Fatalf("the shipped stack's updater names %d secrets, want none: a first deploy must not need any", len(spec.Secrets))
	}
	// What the README asks of every updater: scoped to its stack, and time
	// on SIGTERM to stop its deploys where they are.
	if !slices.Contains(spec.Env, "UPDATER_STACK="+stack) {
		t.Fatalf("the shipped stack's updater env %q lacks UPDATER_STACK=%s", spec.Env, stack)
	}
	var grace time.Duration // unset is Docker's default, 10 s
	if spec.StopGracePeriod != nil {
		grace = *spec.StopGracePeriod
	}
	if grace < 30*time.Second {
		t.Fatalf("the shipped stack's updater stop grace period is %v, want at least 30s", grace)
	}
	app := serviceID(t, stack+"_app")
	waitFor(t, 2*time.Minute, "the app on v1", func() bool { return allRunning(t, app, v1) })
	logs := stackLogs{service: stack + "_updater"}
	logs.wait(t, "updater started")
	phase("shipped stack deployed, app on v1, updater started")

	v2 := push(t, repo, "v2")
	logs.wait(t, "deploy succeeded", "to_digest", v2)
	if !allRunning(t, app, v2) {
		t.Fatal("v2 reported but not running on every task")
	}
	// The image's own health check asks the updater.
	waitFor(t, time.Minute, "the updater container healthy", func() bool { return updaterHealthy(t, stack+"_updater") })
	phase("v2 deployed, the updater healthy")

	// The optional stanzas, uncommented: the stack file's own lines, so a
	// stanza that rots fails here. (Their secrets were made first.)
	shipped, err := os.ReadFile(filepath.Join(root, "docker-stack.yml"))
	if err != nil {
		t.Fatal(err)
	}
	withNotify, n := uncommentOptional(string(shipped))
	if n != 10 { // 4 variables; secrets: and its 2 entries, twice
		t.Fatalf("uncommented %d lines of docker-stack.yml's optional Slack and Rollbar stanzas, want 10: their format changed", n)
	}
	notifyFile := filepath.Join(t.TempDir(), "docker-stack.yml")
	if err := os.WriteFile(notifyFile, []byte(withNotify), 0o644); err != nil {
		t.Fatal(err)
	}
	deploy(notifyFile, "SLACK_API_URL="+slack.APIURL, "ROLLBAR_ENDPOINT="+rollbar.APIURL, "ROLLBAR_ENVIRONMENT=e2e")
	if refs := inspect(t, updater).Spec.TaskTemplate.ContainerSpec.Secrets; len(refs) != 2 {
		t.Fatalf("with the Slack and Rollbar stanzas the updater names %d secrets, want 2", len(refs))
	}
	// The replaced updater is the one that reports: its start is the second.
	waitFor(t, deployLimit, "the updater restarted with the secrets", func() bool {
		logs.refresh(t)
		return len(match(logs.lines, "updater started")) >= 2
	})

	phase("redeployed with the Slack and Rollbar stanzas, the updater restarted")
	bad := push(t, repo, "broken")
	logs.wait(t, "deploy failed", "to_digest", bad)
	if ev := logs.find("deploy failed", "to_digest", bad); ev["rolled_back"] != true {
		t.Fatalf("broken version not rolled back: %v", ev)
	}
	waitFor(t, time.Minute, "the app back on v2", func() bool { return allRunning(t, app, v2) })
	phase("the broken version rolled back")

	// The tokens reached the updater through the secrets: the failed deploy
	// is in Slack, posted and edited to its outcome, and in Rollbar.
	waitFor(t, 30*time.Second, "the failure in Rollbar", func() bool {
		for _, d := range rollbar.Deploys() {
			if d.Statuses[len(d.Statuses)-1] == "failed" {
				return true
			}
		}
		return false
	})
	var posts, edits int
	for _, c := range slack.Accepted() {
		switch c.Method {
		case "chat.postMessage":
			posts++
		case "chat.update":
			edits++
		}
	}
	if posts < 1 || edits < 1 {
		t.Fatalf("Slack got %d posts and %d edits, want the failed deploy's message, edited to its outcome", posts, edits)
	}
}

// optionalLine is a commented line of docker-stack.yml's optional Slack
// and Rollbar stanzas: one of their variables, a secrets: key, a secret in
// a service's list or in the top-level block. Removing "# " leaves it at
// its YAML indentation.
var optionalLine = regexp.MustCompile(`^(\s*)# (\s*)((?:SLACK|ROLLBAR)_[A-Z_]+: .*|secrets:|- (?:slack|rollbar)_token|(?:slack|rollbar)_token: \{ external: true \})$`)

// uncommentOptional returns the stack file with its optional stanzas
// uncommented, as an operator would, and how many lines that was.
func uncommentOptional(stackFile string) (string, int) {
	lines := strings.Split(stackFile, "\n")
	n := 0
	for i, l := range lines {
		if optionalLine.MatchString(l) {
			lines[i] = optionalLine.ReplaceAllString(l, "$1$2$3")
			n++
		}
	}
	return strings.Join(lines, "\n"), n
}

// shippedImage is the updater image `make image` builds from this tree,
// pushed to the test registry as ref. An image `make image` already built
// at this commit from a clean tree (updater:VERSION, its revision label
// HEAD) is reused; otherwise it is built now.
func shippedImage(t *testing.T, root, ref string) string {
	t.Helper()
	start := time.Now()
	head := strings.TrimSpace(run(t, root, nil, "git", "rev-parse", "HEAD"))
	version := strings.TrimSpace(run(t, root, nil, "git", "describe", "--tags", "--always", "--dirty"))
	built := "updater:" + version
	reuse := false
	if !strings.HasSuffix(version, "-dirty") {
		out, err := exec.Command("docker", "image", "inspect", "--format", `{{index .Config.Labels "org.opencontainers.image.revision"}}`, built).Output()
		reuse = err == nil && strings.TrimSpace(string(out)) == head
	}
	if reuse {
		run(t, root, nil, "docker", "tag", built, ref)
	} else {
		run(t, root, nil, "make", "-s", "image", "IMAGE="+ref)
	}
	t.Cleanup(func() { exec.Command("docker", "image", "rm", ref).Run() })
	run(t, root, nil, "docker", "push", "-q", ref)
	t.Logf("updater image (reused %s: %v) ready and pushed in %s", built, reuse, time.Since(start).Round(100*time.Millisecond))

	out := run(t, root, nil, "docker", "image", "inspect", "--format", "{{.Size}}", ref)
	var size int64
	fmt.Sscan(out, &size)
	t.Logf("updater image from ./Dockerfile: %.1f MB", float64(size)/1e6)
	// 24.9 MB measured at ffe8e96 (23.8 MB at 238b91e, before shoutrrr;
	// 18 MB before the in-process ECR and Google keychains, the AWS SDK
	// 5.3 MB of it). The bound catches a base image or an unstripped
	// binary (+10 MB), not a library.
	if size == 0 || size > 30e6 {
		t.Fatalf("updater image is %d bytes, want under 30 MB", size)
	}
	return ref
}

// make demo, the README's first command, from a clean state: it exits 0
// only if v2 is live and the broken v3 was rolled back; it shows the
// status page (its URL and a token made for the run) and each deploy's
// Slack message as text; make demo-down then leaves nothing of the demo
// behind. The images are built first (demo/demo.sh images), so make demo
// itself is a warm run, the one a newcomer repeats: it must take under a
// minute. Measured on 2 cores (go test -tags e2e -run 'TestShippedStack|TestDemo'
// -v ./test/e2e/, the updater's layers built by TestShippedStack): images
// 16 s, make demo warm 35.3 s, the test 58.5 s (90.3 s at c8a83e2, when
// the demo's binaries compiled on a bare Go image, 33 s, and its rollouts
// had 2 s health checks and a 5 s monitor).
func TestDemo(t *testing.T) {
	const warmLimit = 60 * time.Second
	root := repoRoot(t)
	t.Cleanup(func() { exec.Command("make", "-C", root, "-s", "demo-down").Run() })
	start := time.Now()
	run(t, root, nil, filepath.Join(root, "demo", "demo.sh"), "images")
	built := time.Since(start)
	start = time.Now()
	cmd := exec.Command("make", "-s", "demo")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	warm := time.Since(start)
	capture("updater command output and service logs", out)
	if err != nil {
		t.Fatalf("make demo: %v\n%s", err, out)
	}
	t.Logf("demo images built in %s; make demo, warm, in %s", built.Round(100*time.Millisecond), warm.Round(100*time.Millisecond))
	for _, want := range []string{"v2 is live on every task", "v3 was rolled back", "deploy succeeded", "deploy failed"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Fatalf("make demo's narrative lacks %q:\n%s", want, out)
		}
	}
	if warm > warmLimit {
		t.Fatalf("make demo took %s with its images built, want under %s", warm.Round(time.Second), warmLimit)
	}

	// The status page, at the URL and with the token the demo printed:
	// it answers with the token, shows the demo's service, and refuses
	// without it.
	page := regexp.MustCompile(`status page: (http://127\.0\.0\.1:\d+/)`).FindSubmatch(out)
	token := regexp.MustCompile(`password \(the API token, made for this demo\): ([0-9a-f]{32})\n`).FindSubmatch(out)
	if page == nil || token == nil {
		t.Fatalf("make demo printed no status page URL and token:\n%s", out)
	}
	get := func(url, password string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if password != "" {
			req.SetBasicAuth("newcomer", password)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(string(page[1]), string(token[1])); code != http.StatusOK || !strings.Contains(body, "updater-demo_app") {
		t.Fatalf("the status page with the printed token answered %d, want 200 naming updater-demo_app:\n%.2000s", code, body)
	}
	if code, _ := get(string(page[1]), ""); code != http.StatusUnauthorized {
		t.Fatalf("the status page without a token answered %d, want 401", code)
	}

	// What the team would see in Slack: the demo printed each deploy's
	// message, and what it printed is what the demo's Slack (the fake
	// Slack API, which checked the updater's token) holds: one message
	// per deploy, edited to its outcome.
	var printed []string
	for _, block := range regexp.MustCompile(`(?m)(?:^      │ .*\n)+`).FindAll(out, -1) {
		printed = append(printed, regexp.MustCompile(`(?m)^      │ `).ReplaceAllString(string(block), ""))
	}
	if len(printed) != 2 || !strings.Contains(printed[0], "✅ updater-demo_app (stack updater-demo): deploy succeeded") ||
		!strings.Contains(printed[0], "migration ✓") ||
		!strings.Contains(printed[1], "updater-demo_app (stack updater-demo): deploy failed and was rolled back") ||
		strings.Contains(printed[1], "deploy succeeded") {
		t.Fatalf("make demo printed %d Slack messages, want v2's (succeeded) then v3's (rolled back):\n%s", len(printed), out)
	}
	_, channel := get("http://127.0.0.1:5001/", "")
	if n := strings.Count(channel, "#deploys · updater"); n != 2 {
		t.Fatalf("the demo's Slack holds %d messages, want 2 (one per deploy):\n%s", n, channel)
	}
	for _, p := range printed {
		if !strings.Contains(channel, p) {
			t.Fatalf("make demo printed a Slack message the demo's Slack does not hold:\n%s\nit holds:\n%s", p, channel)
		}
	}

	// The demo updater's objects carry its scope (see swarm.scope): some
	// exist now, so that none after make demo-down means they went.
	scoped := `docker config ls -q --filter label=io.updater.scope=` + scopeOf("updater-demo")
	if strings.TrimSpace(run(t, root, nil, "sh", "-c", scoped)) == "" {
		t.Fatalf("the demo updater keeps no object with its scope %s in Swarm: the scope this test checks is wrong", scopeOf("updater-demo"))
	}
	run(t, root, nil, "make", "-s", "demo-down")
	ctx := context.Background()
	f := make(client.Filters).Add("label", "com.docker.stack.namespace=updater-demo")
	if res, _ := env.docker.ServiceList(ctx, client.ServiceListOptions{Filters: f}); len(res.Items) != 0 {
		t.Fatalf("%d demo services left", len(res.Items))
	}
	if res, _ := env.docker.NetworkList(ctx, client.NetworkListOptions{Filters: f}); len(res.Items) != 0 {
		t.Fatalf("%d demo networks left", len(res.Items))
	}
	if res, _ := env.docker.SecretList(ctx, client.SecretListOptions{Filters: f}); len(res.Items) != 0 {
		t.Fatalf("%d demo secrets left", len(res.Items))
	}
	left := run(t, root, nil, "sh", "-c", `docker volume ls -q | grep '^updater-demo_'; docker ps -aq --filter name=^updater-demo; docker images --format '{{.Repository}}' | grep -E '^(updater-demo/|127.0.0.1:5000/)'; `+scoped+`; true`)
	if strings.TrimSpace(left) != "" {
		t.Fatalf("make demo-down left:\n%s", left)
	}
}

func repoRoot(t testing.TB) string {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// run runs a command in dir with extra environment and returns its
// output; failing is fatal.
func run(t testing.TB, dir string, extra []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), extra...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func secret(t testing.TB, name, value string) {
	t.Helper()
	ctx := context.Background()
	// The stack file names its secrets, so their names are fixed: one this
	// test left behind (a run killed before its cleanup) carries its label
	// and goes; one of anybody else's stays, and the test says so.
	const owner = "e2e.test"
	if old, err := env.docker.SecretInspect(ctx, name, client.SecretInspectOptions{}); err == nil {
		if old.Secret.Spec.Labels[owner] != t.Name() {
			t.Fatalf("a secret named %s exists and is not this test's (no %s=%s label): remove it, or run the suite on a swarm without it", name, owner, t.Name())
		}
		if _, err := env.docker.SecretRemove(ctx, old.Secret.ID, client.SecretRemoveOptions{}); err != nil {
			t.Fatalf("remove the secret %s a killed run of this test left: %v", name, err)
		}
	}
	res, err := env.docker.SecretCreate(ctx, client.SecretCreateOptions{Spec: swarm.SecretSpec{
		Annotations: swarm.Annotations{Name: name, Labels: map[string]string{owner: t.Name()}}, Data: []byte(value)}})
	if err != nil {
		t.Fatalf("create secret %s: %v", name, err)
	}
	t.Cleanup(func() { env.docker.SecretRemove(context.Background(), res.ID, client.SecretRemoveOptions{}) })
}

func serviceID(t testing.TB, name string) string {
	t.Helper()
	res, err := env.docker.ServiceInspect(context.Background(), name, client.ServiceInspectOptions{})
	if err != nil {
		t.Fatalf("inspect %s: %v", name, err)
	}
	return res.Service.ID
}

// stackRemove removes a stack and what the updater recorded about it, and
// waits until its services and containers are gone.
func stackRemove(t testing.TB, stack string) {
	ctx := context.Background()
	f := make(client.Filters).Add("label", "com.docker.stack.namespace="+stack)
	res, _ := env.docker.ServiceList(ctx, client.ServiceListOptions{Filters: f})
	for _, s := range res.Items {
		removeService(s.ID)
	}
	exec.Command("docker", "stack", "rm", stack).Run()
	removeScope(stack)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		cs, err := env.docker.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
		ns, _ := env.docker.NetworkList(ctx, client.NetworkListOptions{Filters: f})
		if err == nil && len(cs.Items) == 0 && len(ns.Items) == 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("stack %s: containers or networks still there after a minute", stack)
}

// updaterHealthy reports whether the updater's container passes the
// image's HEALTHCHECK.
func updaterHealthy(t testing.TB, service string) bool {
	res, err := env.docker.ContainerList(context.Background(), client.ContainerListOptions{
		Filters: make(client.Filters).Add("label", "com.docker.swarm.service.name="+service).Add("health", "healthy")})
	return err == nil && len(res.Items) > 0
}

// stackLogs reads a stack service's JSON log lines through `docker
// service logs`, as an operator would.
type stackLogs struct {
	service string
	lines   []map[string]any
}

func (l *stackLogs) refresh(t testing.TB) {
	out, _ := exec.Command("docker", "service", "logs", "--raw", l.service).CombinedOutput()
	capture("updater command output and service logs", out)
	l.lines = l.lines[:0]
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			l.lines = append(l.lines, m)
		}
	}
}

func (l *stackLogs) find(msg string, kv ...string) map[string]any {
	if m := match(l.lines, msg, kv...); len(m) > 0 {
		return m[0]
	}
	return nil
}

func (l *stackLogs) wait(t testing.TB, msg string, kv ...string) {
	t.Helper()
	waitFor(t, deployLimit, fmt.Sprintf("%q %v in %s's log", msg, kv, l.service), func() bool {
		l.refresh(t)
		return l.find(msg, kv...) != nil
	})
}

// scopeOf is the scope of an updater with the default opt-in label and
// this stack.
func scopeOf(stack string) string { return updaterswarm.Scope("updater.enable", stack) }

// removeScope removes what an updater of this stack keeps in Swarm (its
// lease, deploys in flight, notifier references) if it left any.
func removeScope(stack string) {
	ctx := context.Background()
	f := make(client.Filters).Add("label", "io.updater.scope="+scopeOf(stack))
	if res, err := env.docker.ConfigList(ctx, client.ConfigListOptions{Filters: f}); err == nil {
		for _, c := range res.Items {
			env.docker.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{})
		}
	}
}
