package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// isolate gives run a known environment: none of the updater's settings
// and none of Docker's client variables leak in from the shell running
// the tests, and DOCKER_HOST names sock, so no case can reach the host's
// /var/run/docker.sock.
func isolate(t *testing.T, sock string) {
	t.Helper()
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		upper := strings.ToUpper(name)
		for _, p := range []string{"UPDATER_", "SLACK_", "ROLLBAR_", "DOCKER_"} {
			if strings.HasPrefix(upper, p) {
				t.Setenv(name, "") // restored when the test ends
				os.Unsetenv(name)  // unset, not empty: config lists every UPDATER_* name it sees
			}
		}
	}
	t.Setenv("DOCKER_HOST", "unix://"+sock)
}

// sockDir is a short directory for unix sockets: t.TempDir's path holds the
// subtest's name and can pass the 108 bytes a socket path may have.
func sockDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "updsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// recorder is a unix socket that counts the connections made to it and
// closes each at once, so a case that wrongly talks to Docker fails fast
// and is seen doing it.
func recorder(t *testing.T) (sock string, conns *atomic.Int32) {
	t.Helper()
	sock = filepath.Join(sockDir(t), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	conns = new(atomic.Int32)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return sock, conns
}

// healthz serves /healthz with code on 127.0.0.1 and returns its port.
func healthz(t *testing.T, code int) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return port
}

// slackToken is a bot token as Slack writes them, which slackRejects'
// Slack refuses.
const slackToken = "xoxb-0000-rejected-by-the-test"

// slackRejects is the setting of a Slack bot whose Web API, on 127.0.0.1,
// answers auth.test as Slack does a revoked token.
func slackRejects(t *testing.T) map[string]string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path != "/auth.test" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, `{"ok":false,"error":"invalid_auth"}`)
	}))
	t.Cleanup(srv.Close)
	return map[string]string{"SLACK_TOKEN": slackToken, "SLACK_CHANNEL": "#deploys", "SLACK_API_URL": srv.URL + "/"}
}

// TestRunBeforeDocker covers every way out of run that must not need
// Docker: usage errors, help, version, configuration errors, healthcheck.
// DOCKER_HOST names a socket that counts connections; every case asserts
// it saw none.
func TestRunBeforeDocker(t *testing.T) {
	const secret = "s3cret-shared-by-both" // never printed
	type tc struct {
		name   string
		args   []string
		env    map[string]string
		code   int
		stdout []string // each must appear
		stderr []string
		absent []string // in neither output
	}
	cases := []tc{
		{name: "unknown command", args: []string{"bogus"}, code: 2,
			stderr: []string{`updater: unknown command "bogus"` + "\n", "usage: updater [command]", "deploy SERVICE", "approve ID", "reject ID"},
			absent: []string{"[]", "probe"}},
		{name: "known command with an argument", args: []string{"check", "extra"}, code: 2,
			stderr: []string{`updater check: takes no arguments, got "extra"`, "usage: updater check [flags]\n", "-format"}},
		{name: "deploy without a service", args: []string{"deploy"}, code: 2,
			stderr: []string{"updater deploy: name exactly one service\n", "usage: updater deploy [flags] SERVICE"}},
		{name: "deploy with two services", args: []string{"deploy", "web", "db"}, code: 2,
			stderr: []string{`updater deploy: name exactly one service, got "web db"`}},
		{name: "approve without an ID", args: []string{"approve"}, code: 2,
			stderr: []string{"updater approve: name exactly one id", "usage: updater approve ID"}},
		{name: "check with an unknown flag", args: []string{"check", "--bogus"}, code: 2,
			stderr: []string{"updater check: flag provided but not defined: -bogus", "usage: updater check [flags]"}},
		{name: "check in an unknown format", args: []string{"check", "--format", "xml"}, env: map[string]string{"UPDATER_LOG_LEVEL": "loud"}, code: 2,
			stderr: []string{`updater check: --format "xml": use "table" or "json"`}, absent: []string{"UPDATER_LOG_LEVEL"}},
		{name: "deploy waiting less than nothing", args: []string{"deploy", "--wait", "-1s", "web"}, code: 2,
			stderr: []string{"updater deploy: --wait -1s: use a duration of 0 or more"}},
		{name: "deploy with a flag after the service", args: []string{"deploy", "web", "--wait=soon"}, code: 2,
			stderr: []string{`updater deploy: invalid value "soon" for flag -wait`}},
		// Approvals live in the running updater's memory: a local approve
		// has nothing to decide.
		{name: "approve without UPDATER_URL", args: []string{"approve", "d1"}, code: 2,
			stderr: []string{"updater approve: needs UPDATER_URL (and UPDATER_API_TOKEN)"}},
		{name: "reject without UPDATER_URL", args: []string{"reject", "d1"}, code: 2,
			stderr: []string{"updater reject: needs UPDATER_URL (and UPDATER_API_TOKEN)"}},
		{name: "deploy --force through the API", args: []string{"deploy", "--force", "web"},
			env: map[string]string{"UPDATER_URL": "http://127.0.0.1:1", "UPDATER_API_TOKEN": "api-token-0123456789abcdef"}, code: 2,
			stderr: []string{"updater deploy: --force works locally only (the API's deploy has no such switch): unset UPDATER_URL"}},
		{name: "UPDATER_URL without the token", args: []string{"deploy", "web"}, env: map[string]string{"UPDATER_URL": "http://127.0.0.1:1"}, code: 2,
			stderr: []string{"updater: invalid configuration:", "UPDATER_URL=\"http://127.0.0.1:1/\": is set without UPDATER_API_TOKEN"}},
		{name: "help", args: []string{"help"}, code: 0, stdout: []string{"usage: updater [command]", "deploy SERVICE", "healthcheck", "approve ID"},
			absent: []string{"probe"}},
		{name: "--help", args: []string{"--help"}, code: 0, stdout: []string{"usage: updater [command]"}},
		{name: "-h", args: []string{"-h"}, code: 0, stdout: []string{"usage: updater [command]"}},
		{name: "help deploy", args: []string{"help", "deploy"}, code: 0, stdout: []string{"usage: updater deploy [flags] SERVICE", "-wait"}},
		{name: "help of an unknown command", args: []string{"help", "bogus"}, code: 2, stderr: []string{`updater help: unknown command "bogus"`}},
		{name: "version", args: []string{"version"}, code: 0, stdout: []string{"updater " + version + "\n"}},
		{name: "--version", args: []string{"--version"}, code: 0, stdout: []string{"updater " + version + "\n"}},
		// A subcommand's --help is a question: not a service named "--help",
		// and no configuration, lease or Docker before the answer.
		{name: "deploy --help", args: []string{"deploy", "--help"}, code: 0, stdout: []string{"usage: updater deploy [flags] SERVICE\n", "-wait duration"}},
		{name: "deploy SERVICE -h", args: []string{"deploy", "web", "-h"}, code: 0, stdout: []string{"usage: updater deploy [flags] SERVICE"}},
		{name: "check --help", args: []string{"check", "--help"}, code: 0, stdout: []string{"usage: updater check [flags]\n", "-format string", "-now"}},
		{name: "healthcheck --help with a bad configuration", args: []string{"healthcheck", "--help"},
			env: map[string]string{"UPDATER_LOG_LEVEL": "loud"}, code: 0, stdout: []string{"usage: updater healthcheck\n"}},
		{name: "prune --help", args: []string{"prune", "--help"}, code: 0, stderr: []string{"-repo", "-keep"}},
		{name: "an unknown command's --help", args: []string{"bogus", "--help"}, code: 2, stderr: []string{`updater: unknown command "bogus"`}},
		{name: "prune without a repository", args: []string{"prune"}, code: 2,
			stderr: []string{"usage: updater prune --repo REPOSITORY"}},
		{name: "prune with an unknown flag", args: []string{"prune", "--repo", "r.example/x", "--bogus"}, code: 2,
			stderr: []string{"flag provided but not defined: -bogus"}},
		{name: "run with a bad schedule", args: []string{"run"}, env: map[string]string{"UPDATER_SCHEDULE": "every blue moon"}, code: 2,
			stderr: []string{"updater: invalid configuration:", `UPDATER_SCHEDULE="every blue moon"`}},
		{name: "the default command is run", env: map[string]string{"UPDATER_DEPLOY_TIMEOUT": "soon"}, code: 2,
			stderr: []string{"updater: invalid configuration:", "UPDATER_DEPLOY_TIMEOUT"}},
		{name: "check with a misspelt setting", args: []string{"check"}, env: map[string]string{"UPDATER_SCHEDUEL": "@every 1m"}, code: 2,
			stderr: []string{"UPDATER_SCHEDUEL is not a known setting; did you mean UPDATER_SCHEDULE?"}},
		{name: "deploy with a bad setting", args: []string{"deploy", "web"}, env: map[string]string{"UPDATER_LEASE_TTL": "1ms"}, code: 2,
			stderr: []string{"updater: invalid configuration:", "UPDATER_LEASE_TTL"}},
		{name: "a refused secret is not printed", args: []string{"run"},
			env: map[string]string{"UPDATER_API_TOKEN": secret, "UPDATER_WEBHOOK_SECRET": secret}, code: 2,
			stderr: []string{"UPDATER_WEBHOOK_SECRET is the same as UPDATER_API_TOKEN"}, absent: []string{secret}},
		// Docker reserves exit code 2 in a HEALTHCHECK; a bad configuration
		// is "not healthy", 1.
		{name: "healthcheck with a bad configuration", args: []string{"healthcheck"}, env: map[string]string{"UPDATER_LOG_LEVEL": "loud"}, code: 1,
			stderr: []string{"updater: invalid configuration:", "UPDATER_LOG_LEVEL"}},
		{name: "healthcheck with no port", args: []string{"healthcheck"}, env: map[string]string{"UPDATER_LISTEN": ":0"}, code: 1,
			stderr: []string{`updater healthcheck: UPDATER_LISTEN=":0" names no port to ask`}},
		{name: "healthcheck on every interface asks loopback", args: []string{"healthcheck"},
			env: map[string]string{"UPDATER_LISTEN": ":" + healthz(t, http.StatusOK)}, code: 0},
		// A token Slack refuses is a bad setting, found before Docker is
		// asked anything: exit 2 for run and deploy alike.
		{name: "run with a Slack token Slack rejects", args: []string{"run"}, env: slackRejects(t), code: 2,
			stderr: []string{"updater: invalid configuration:\nSLACK_TOKEN: slack rejected the token: invalid_auth"}, absent: []string{slackToken}},
		{name: "deploy with a Slack token Slack rejects", args: []string{"deploy", "web"}, env: slackRejects(t), code: 2,
			stderr: []string{"updater: invalid configuration:\nSLACK_TOKEN: slack rejected the token: invalid_auth"}, absent: []string{slackToken}},
		{name: "healthcheck answered 503", args: []string{"healthcheck"},
			env: map[string]string{"UPDATER_LISTEN": "127.0.0.1:" + healthz(t, http.StatusServiceUnavailable)}, code: 1,
			stderr: []string{"updater healthcheck: /healthz answered 503 Service Unavailable"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sock, conns := recorder(t)
			isolate(t, sock)
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			stdout, stderr := runAndCheck(t, c.args, c.code, c.stdout, c.stderr)
			if len(c.stdout) == 0 && stdout.Len() > 0 {
				t.Errorf("stdout should be empty: %s", stdout)
			}
			if len(c.stderr) == 0 && stderr.Len() > 0 {
				t.Errorf("stderr should be empty: %s", stderr)
			}
			for _, no := range c.absent {
				if strings.Contains(stdout.String()+stderr.String(), no) {
					t.Errorf("output contains %q:\nstdout: %s\nstderr: %s", no, stdout, stderr)
				}
			}
			if n := conns.Load(); n != 0 {
				t.Errorf("%d connections to DOCKER_HOST; this path must not contact Docker", n)
			}
		})
	}
}

// TestRunDockerAbsent: the commands that need Docker say which one they
// could not reach and exit 1 (a bad setting is 2), without waiting.
func TestRunDockerAbsent(t *testing.T) {
	for _, args := range [][]string{{"deploy", "web"}, {"check"}, {"run"}} {
		t.Run(args[0], func(t *testing.T) {
			sock := filepath.Join(sockDir(t), "absent.sock") // never created
			isolate(t, sock)
			var stdout, stderr bytes.Buffer
			start := time.Now()
			code := run(args, &stdout, &stderr)
			if code != 1 {
				t.Errorf("run(%q) = %d, want 1\nstderr: %s", args, code, &stderr)
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("took %v to give up on a socket that does not exist", took)
			}
			l := logLine(t, &stderr, "start")
			if err := fmt.Sprint(l["err"]); !strings.Contains(err, "reach docker") || !strings.Contains(err, sock) {
				t.Errorf(`"start" err = %q, want "reach docker" and the socket %s`, err, sock)
			}
			if l["level"] != "ERROR" {
				t.Errorf(`"start" logged at %v, want ERROR`, l["level"])
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout should be empty: %s", &stdout)
			}
		})
	}
}

// TestPruneDockerAbsent: the prune job's command still prints its one JSON
// report when Docker fails, and exits 0 (Swarm would restart a failed
// global-job task forever).
func TestPruneDockerAbsent(t *testing.T) {
	sock := filepath.Join(sockDir(t), "absent.sock")
	isolate(t, sock)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"prune", "--repo", "registry.example/shop/web"}, &stdout, &stderr); code != 0 {
		t.Fatalf("prune = %d, want 0\nstderr: %s", code, &stderr)
	}
	var r struct {
		Removed int      `json:"removed"`
		Errors  []string `json:"errors"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("stdout is not the JSON report: %v: %s", err, &stdout)
	}
	if r.Removed != 0 || len(r.Errors) == 0 || !strings.Contains(strings.Join(r.Errors, "\n"), sock) {
		t.Fatalf("report %+v, want nothing removed and an error naming %s", r, sock)
	}
}

// fakeEngine answers, on a unix socket, the few Engine API calls an
// updater makes before it acts: the ping, /info (an active manager), the
// lease, and empty lists of services and configs. The lease is held by
// another updater for an hour, or, with free, is there to take: created,
// renewed and removed like a Swarm config. Every request is recorded, and
// its writes also logged to log when set, as the updater logs, so a test
// sees them in order with its lines; any other is refused.
type fakeEngine struct {
	free bool
	log  io.Writer
	// all is the answer to a service list without filters (check's look
	// for services not watched); "": none.
	all string

	mu    sync.Mutex
	reqs  []string
	lease json.RawMessage // the lease's spec as this updater wrote it; nil: none
	index int             // its version
}

func (f *fakeEngine) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

var apiVersion = regexp.MustCompile(`^/v[0-9.]+`)

func (f *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := apiVersion.ReplaceAllString(r.URL.Path, "")
	f.mu.Lock()
	f.reqs = append(f.reqs, r.Method+" "+path)
	if f.log != nil && len(writes(f.reqs[len(f.reqs)-1:])) > 0 {
		fmt.Fprintf(f.log, "{\"msg\":\"engine\",\"req\":%q}\n", r.Method+" "+path)
	}
	f.mu.Unlock()
	w.Header().Set("API-Version", "1.41")
	w.Header().Set("Content-Type", "application/json")
	switch {
	case path == "/_ping":
		fmt.Fprint(w, "OK")
	case r.Method == http.MethodGet && path == "/services" && r.URL.Query().Get("filters") == "" && f.all != "":
		fmt.Fprint(w, f.all)
	case r.Method == http.MethodGet && (path == "/services" || path == "/configs"):
		fmt.Fprint(w, "[]") // no service is watched, no record kept
	case r.Method == http.MethodGet && path == "/info":
		fmt.Fprint(w, `{"Swarm":{"LocalNodeState":"active","ControlAvailable":true}}`)
	case f.free && f.leaseCall(w, r, path):
	case r.Method == http.MethodGet && strings.HasPrefix(path, "/configs/updater-lease-"):
		expires := time.Now().Add(time.Hour).UnixMilli()
		fmt.Fprintf(w, `{"ID":"lease1","Version":{"Index":7},"Spec":{"Name":%q,"Labels":{"io.updater.kind":"lease","io.updater.holder":"other-host/1","io.updater.expires":"%d"}}}`,
			strings.TrimPrefix(path, "/configs/"), expires)
	default:
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `{"message":"not expected by the test"}`)
	}
}

// leaseCall answers the calls on a free lease, and reports whether r was one.
func (f *fakeEngine) leaseCall(w http.ResponseWriter, r *http.Request, path string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == http.MethodGet && strings.HasPrefix(path, "/configs/updater-lease-"):
		if f.lease == nil {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"message":"config not found"}`)
			return true
		}
		fmt.Fprintf(w, `{"ID":"lease1","Version":{"Index":%d},"Spec":%s}`, f.index, f.lease)
	case r.Method == http.MethodPost && (path == "/configs/create" || path == "/configs/lease1/update"):
		body, _ := io.ReadAll(r.Body)
		f.lease, f.index = body, f.index+1
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, `{"ID":"lease1"}`)
	case r.Method == http.MethodDelete && path == "/configs/lease1":
		f.lease = nil
		w.WriteHeader(http.StatusNoContent)
	default:
		return false
	}
	return true
}

// serveEngine starts engine and points DOCKER_HOST at it.
func serveEngine(t *testing.T, engine *fakeEngine) *fakeEngine {
	t.Helper()
	sock := filepath.Join(sockDir(t), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: engine}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	isolate(t, sock)
	return engine
}

// writes lists the requests that were not reads.
func writes(reqs []string) []string {
	var out []string
	for _, r := range reqs {
		if !strings.HasPrefix(r, "GET ") && !strings.HasPrefix(r, "HEAD ") {
			out = append(out, r)
		}
	}
	return out
}

// TestCheckNothingWatched: check is a dry run; with no watched service it
// says so, names the services labelled where the updater does not look
// (their containers), writes nothing and takes no lease.
func TestCheckNothingWatched(t *testing.T) {
	engine := serveEngine(t, &fakeEngine{all: `[{"ID":"s2","Spec":{"Name":"shop_api","Labels":{"com.docker.stack.namespace":"shop"},` +
		`"TaskTemplate":{"ContainerSpec":{"Image":"r.example/api:1","Labels":{"updater.enable":"true"}}}}}]`})
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check"}, &stdout, &stderr); code != 0 {
		t.Fatalf("check = %d, want 0\nstderr: %s", code, &stderr)
	}
	want := "no service is watched: give one the label updater.enable=true under `deploy.labels:`\n\nnot watched:\n" +
		"  shop_api: updater.enable is a label of its containers (compose `labels:`), not of the service: put it under `deploy.labels:`\n"
	if stdout.String() != want {
		t.Errorf("stdout\n%s\nwant\n%s", &stdout, want)
	}
	reqs := engine.requests()
	if w := writes(reqs); len(w) > 0 {
		t.Errorf("check wrote to Docker: %v", w)
	}
	for _, r := range reqs {
		if strings.Contains(r, "updater-lease-") {
			t.Errorf("check, a dry run, asked for the lease: %s", r)
		}
	}

	stdout.Reset()
	if code := run([]string{"check", "--format", "json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("check --format json = %d, want 0\nstderr: %s", code, &stderr)
	}
	var r struct {
		Checked   time.Time         `json:"checked"`
		Services  []json.RawMessage `json:"services"`
		Unwatched []struct {
			Service, Stack, Reason string
		} `json:"unwatched"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, &stdout)
	}
	if r.Services == nil || len(r.Services) != 0 || len(r.Unwatched) != 1 || r.Unwatched[0].Service != "shop_api" ||
		r.Unwatched[0].Stack != "shop" || !strings.Contains(r.Unwatched[0].Reason, "containers") || time.Since(r.Checked) > time.Minute {
		t.Errorf("check --format json:\n%s", &stdout)
	}
}

// TestDeployOnStandby: while another updater holds the lease, `updater
// deploy` changes nothing, exits 1 and says how to ask the running one.
func TestDeployOnStandby(t *testing.T) {
	engine := serveEngine(t, &fakeEngine{})

	var stdout, stderr bytes.Buffer
	if code := run([]string{"deploy", "web"}, &stdout, &stderr); code != 1 {
		t.Errorf("deploy on standby = %d, want 1\nstderr: %s", code, &stderr)
	}
	if l := logLine(t, &stderr, "lease held by another updater: standing by"); l["level"] != "WARN" {
		t.Errorf("standby logged at %v, want WARN", l["level"])
	}
	l2 := logLine(t, &stderr, "deploy")
	if l2["service"] != "web" || !strings.Contains(fmt.Sprint(l2["err"]), "another updater holds the lease") ||
		l2["hint"] != "the running updater deploys on request: set UPDATER_URL (and UPDATER_API_TOKEN) to ask it, or POST /api/v1/services/web/deploy" {
		t.Errorf(`"deploy" line %v, want service web, the standby error and the API hint`, l2)
	}
	if stdout.Len() > 0 {
		t.Errorf("stdout should be empty: %s", &stdout)
	}
	reqs := engine.requests()
	if w := writes(reqs); len(w) > 0 {
		t.Errorf("a standby deploy wrote to Docker: %v", w)
	}
	var asked bool
	for _, r := range reqs {
		asked = asked || strings.HasPrefix(r, "GET /configs/updater-lease-")
	}
	if !asked {
		t.Errorf("the lease was never read: %v", reqs)
	}
}

// TestRunStopsInOrder: `updater run`, holding the lease, stops on SIGTERM
// in the one safe order: nothing new starts (HTTP and its trigger, the
// scheduled backups), the deploys still stopping end, only then is the
// lease given up, and the notifiers are flushed after that, so a deploy
// never writes without the lease and its last report is sent.
func TestRunStopsInOrder(t *testing.T) {
	stderr := &syncBuffer{}
	engine := serveEngine(t, &fakeEngine{free: true, log: stderr})
	var posts atomic.Int32 // to Slack and Rollbar: nothing happened to report
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { posts.Add(1) }))
	t.Cleanup(api.Close)
	for k, v := range map[string]string{
		"UPDATER_LOG_LEVEL": "debug", "UPDATER_LISTEN": "127.0.0.1:0",
		"SLACK_WEBHOOK_URL": api.URL + "/services/T0/B0/x", "ROLLBAR_TOKEN": "rollbar-token", "ROLLBAR_ENDPOINT": api.URL + "/",
	} {
		t.Setenv(k, v)
	}
	// Ours too, so a SIGTERM that comes when run is not listening (it
	// returned early) fails the test instead of killing it.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	defer signal.Stop(sigs)

	done := make(chan int, 1)
	go func() { done <- run([]string{"run"}, io.Discard, stderr) }()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(stderr.String(), `"msg":"http listening"`); {
		select {
		case code := <-done:
			t.Fatalf("run returned %d before it served:\n%s", code, stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no http listening line within 10s:\n%s", stderr)
		}
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("run = %d after SIGTERM, want 0:\n%s", code, stderr)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("run still running 15s after SIGTERM:\n%s", stderr)
	}

	// What happened, in order: the updater's lines and Docker's writes.
	var events []string
	sc := bufio.NewScanner(strings.NewReader(stderr.String()))
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		switch l["msg"] {
		case "updater stopped":
			events = append(events, "schedule")
		case "stopped":
			events = append(events, fmt.Sprint(l["part"]))
		case "engine":
			events = append(events, fmt.Sprint(l["req"]))
		}
	}
	want := []string{"POST /configs/create", "schedule", "http", "scheduled backups", "deploys",
		"DELETE /configs/lease1", "lease", "notifications", "docker client", "rollbar errors"}
	if !slices.Equal(events, want) {
		t.Errorf("stopped in the order\n%q, want\n%q", events, want)
	}
	if w := writes(engine.requests()); len(w) != 2 {
		t.Errorf("writes %q, want the lease created and removed, nothing else", w)
	}
	if n := posts.Load(); n != 0 {
		t.Errorf("%d requests to Slack or Rollbar, want none: nothing was deployed and nothing failed", n)
	}
}

// syncBuffer is a bytes.Buffer the updater may write while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// logLine returns the first JSON log line in out with msg.
func logLine(t *testing.T, out *bytes.Buffer, msg string) map[string]any {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(out.Bytes()))
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) == nil && l["msg"] == msg {
			return l
		}
	}
	t.Fatalf("no %q line in:\n%s", msg, out)
	return nil
}

// runAndCheck runs the command line args and checks its exit code and that
// stdout and stderr hold each of the texts wanted.
func runAndCheck(t *testing.T, args []string, code int, wantOut, wantErr []string) (stdout, stderr *bytes.Buffer) {
	t.Helper()
	stdout, stderr = &bytes.Buffer{}, &bytes.Buffer{}
	if got := run(args, stdout, stderr); got != code {
		t.Errorf("run(%q) = %d, want %d\nstdout: %s\nstderr: %s", args, got, code, stdout, stderr)
	}
	for _, want := range wantOut {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	for _, want := range wantErr {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	return stdout, stderr
}
