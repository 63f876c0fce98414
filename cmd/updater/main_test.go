package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
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
			stderr: []string{`updater: unknown command "bogus"` + "\n", "usage: updater [command]"}, absent: []string{"[]"}},
		{name: "known command with an argument", args: []string{"check", "extra"}, code: 2,
			stderr: []string{`updater check: takes no arguments, got "extra"`, "usage: updater [command]"}},
		{name: "deploy without a service", args: []string{"deploy"}, code: 2,
			stderr: []string{"updater deploy: name exactly one service", "deploy SERVICE"}},
		{name: "deploy with two services", args: []string{"deploy", "web", "db"}, code: 2,
			stderr: []string{"updater deploy: name exactly one service"}},
		{name: "help", args: []string{"help"}, code: 0, stdout: []string{"usage: updater [command]", "deploy SERVICE", "healthcheck"}},
		{name: "--help", args: []string{"--help"}, code: 0, stdout: []string{"usage: updater [command]"}},
		{name: "-h", args: []string{"-h"}, code: 0, stdout: []string{"usage: updater [command]"}},
		{name: "version", args: []string{"version"}, code: 0, stdout: []string{"updater " + version + "\n"}},
		{name: "--version", args: []string{"--version"}, code: 0, stdout: []string{"updater " + version + "\n"}},
		// A subcommand's --help is a question: not a service named "--help",
		// and no configuration, lease or Docker before the answer.
		{name: "deploy --help", args: []string{"deploy", "--help"}, code: 0, stdout: []string{"usage: updater [command]"}},
		{name: "deploy SERVICE -h", args: []string{"deploy", "web", "-h"}, code: 0, stdout: []string{"usage: updater [command]"}},
		{name: "check --help", args: []string{"check", "--help"}, code: 0, stdout: []string{"usage: updater [command]"}},
		{name: "healthcheck --help with a bad configuration", args: []string{"healthcheck", "--help"},
			env: map[string]string{"UPDATER_LOG_LEVEL": "loud"}, code: 0, stdout: []string{"usage: updater [command]"}},
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
			var stdout, stderr bytes.Buffer
			code := run(c.args, &stdout, &stderr)
			if code != c.code {
				t.Errorf("run(%q) = %d, want %d\nstdout: %s\nstderr: %s", c.args, code, c.code, &stdout, &stderr)
			}
			for _, want := range c.stdout {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, &stdout)
				}
			}
			for _, want := range c.stderr {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, &stderr)
				}
			}
			if len(c.stdout) == 0 && stdout.Len() > 0 {
				t.Errorf("stdout should be empty: %s", &stdout)
			}
			if len(c.stderr) == 0 && stderr.Len() > 0 {
				t.Errorf("stderr should be empty: %s", &stderr)
			}
			for _, no := range c.absent {
				if strings.Contains(stdout.String()+stderr.String(), no) {
					t.Errorf("output contains %q:\nstdout: %s\nstderr: %s", no, &stdout, &stderr)
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
// lease, which another updater holds for an hour, and empty lists of
// services and configs. Every request is recorded; any other is refused.
type fakeEngine struct {
	mu   sync.Mutex
	reqs []string
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
	f.mu.Unlock()
	w.Header().Set("API-Version", "1.41")
	w.Header().Set("Content-Type", "application/json")
	switch {
	case path == "/_ping":
		fmt.Fprint(w, "OK")
	case r.Method == http.MethodGet && (path == "/services" || path == "/configs"):
		fmt.Fprint(w, "[]") // no service is watched, no record kept
	case r.Method == http.MethodGet && path == "/info":
		fmt.Fprint(w, `{"Swarm":{"LocalNodeState":"active","ControlAvailable":true}}`)
	case r.Method == http.MethodGet && strings.HasPrefix(path, "/configs/updater-lease-"):
		expires := time.Now().Add(time.Hour).UnixMilli()
		fmt.Fprintf(w, `{"ID":"lease1","Version":{"Index":7},"Spec":{"Name":%q,"Labels":{"io.updater.kind":"lease","io.updater.holder":"other-host/1","io.updater.expires":"%d"}}}`,
			strings.TrimPrefix(path, "/configs/"), expires)
	default:
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `{"message":"not expected by the test"}`)
	}
}

// serveEngine starts a fakeEngine and points DOCKER_HOST at it.
func serveEngine(t *testing.T) *fakeEngine {
	t.Helper()
	sock := filepath.Join(sockDir(t), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	engine := &fakeEngine{}
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
// prints only the table's header, writes nothing and takes no lease.
func TestCheckNothingWatched(t *testing.T) {
	engine := serveEngine(t)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check"}, &stdout, &stderr); code != 0 {
		t.Fatalf("check = %d, want 0\nstderr: %s", code, &stderr)
	}
	if got := strings.Fields(stdout.String()); fmt.Sprint(got) != "[SERVICE TAG RUNNING REGISTRY ACTION REASON]" {
		t.Errorf("stdout %q, want the header alone", &stdout)
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
}

// TestDeployOnStandby: while another updater holds the lease, `updater
// deploy` changes nothing, exits 1 and says how to ask the running one.
func TestDeployOnStandby(t *testing.T) {
	engine := serveEngine(t)

	var stdout, stderr bytes.Buffer
	if code := run([]string{"deploy", "web"}, &stdout, &stderr); code != 1 {
		t.Errorf("deploy on standby = %d, want 1\nstderr: %s", code, &stderr)
	}
	if l := logLine(t, &stderr, "lease held by another updater: standing by"); l["level"] != "WARN" {
		t.Errorf("standby logged at %v, want WARN", l["level"])
	}
	l2 := logLine(t, &stderr, "deploy")
	if l2["service"] != "web" || !strings.Contains(fmt.Sprint(l2["err"]), "another updater holds the lease") ||
		l2["hint"] != "the running updater deploys on request: POST /api/v1/services/web/deploy" {
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
