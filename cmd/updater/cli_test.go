package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestHelpTouchesNothing is the CLI table: every subcommand's --help, -h
// and `help COMMAND` exits 0 with its own usage, with DOCKER_HOST on a
// socket that records connections and UPDATER_URL on a server that counts
// requests: neither sees one. The configuration is bad on purpose: help
// is answered before it is read.
func TestHelpTouchesNothing(t *testing.T) {
	for _, c := range commands() {
		for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {"help", c.name}} {
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				sock, conns := recorder(t)
				isolate(t, sock)
				var asked atomic.Int32
				api := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { asked.Add(1) }))
				t.Cleanup(api.Close)
				t.Setenv("UPDATER_URL", api.URL)
				t.Setenv("UPDATER_API_TOKEN", apiToken)
				t.Setenv("UPDATER_LOG_LEVEL", "loud")

				var stdout, stderr bytes.Buffer
				code := run(args, &stdout, &stderr)
				switch {
				case c.hidden:
					// probe's help is its package's business: here that it is
					// reached, not taken for an unknown command, and exits 0.
					if code != 0 || strings.Contains(stderr.String(), "unknown command") || !strings.Contains(stderr.String()+stdout.String(), "probe") {
						t.Errorf("%q did not reach probe.Main: %d\nstdout: %s\nstderr: %s", args, code, &stdout, &stderr)
					}
				case c.raw != nil: // prune: its flag package prints its usage on stderr
					if code != 0 || !strings.Contains(stderr.String(), "-repo") {
						t.Errorf("%q = %d, want 0 and prune's flags\nstderr: %s", args, code, &stderr)
					}
				default:
					if code != 0 || !strings.HasPrefix(stdout.String(), "usage: updater "+c.name) || stderr.Len() > 0 {
						t.Errorf("%q = %d, want 0 and its usage on stdout alone\nstdout: %s\nstderr: %s", args, code, &stdout, &stderr)
					}
				}
				if n := conns.Load(); n != 0 {
					t.Errorf("%q made %d connections to DOCKER_HOST, want none", args, n)
				}
				if n := asked.Load(); n != 0 {
					t.Errorf("%q made %d requests to UPDATER_URL, want none", args, n)
				}
			})
		}
	}
}

const apiToken = "api-token-0123456789abcdef"

// fakeAPI is a running updater's API as the CLI sees it: the routes,
// the bearer token, the answers' shapes (internal/client's tests hold
// them to the real server's). A deploy asked for shows as running at the
// next list and as ended at the one after.
type fakeAPI struct {
	outcome string // the state a deploy ends in; "": it never begins (up to date)

	mu      sync.Mutex
	reqs    []string
	checked time.Time
	deploys []map[string]any // newest first
	polls   int
	// rollbacks asked for, each one step further at each look at the
	// history, shown there once ended; history is what it holds already.
	rollbacks []map[string]any
	history   []map[string]any // newest first
	bodies    []string
}

var (
	digestA = "sha256:" + strings.Repeat("a", 64) // web runs it
	digestB = "sha256:" + strings.Repeat("b", 64)
	digestC = "sha256:" + strings.Repeat("c", 64) // web's last good one before
	digestD = "sha256:" + strings.Repeat("d", 64)
)

// webHistory is web's history before any rollback: a rollback to C that
// failed (one --wait must not take for its own), the deploy of A.
func webHistory() []map[string]any {
	return []map[string]any{
		{"id": "h2", "ref": "r.example/web:1", "from_digest": digestC, "to_digest": digestA, "ended": "2026-12-01T12:00:00Z", "outcome": "succeeded"},
		{"id": "h1", "ref": "r.example/web:1", "from_digest": digestB, "to_digest": digestC, "ended": "2026-12-01T11:00:00Z", "outcome": "failed",
			"phase": "rollout", "reason": "tasks failed", "rollback": true, "by": "page"},
	}
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, r.Method+" "+r.URL.Path)
	w.Header().Set("Content-Type", "application/json")
	if r.Header.Get("Authorization") != "Bearer "+apiToken {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":"a valid bearer token is required"}`)
		return
	}
	for _, d := range f.deploys { // one step further at each look
		switch {
		case d["state"] == "queued":
			d["state"] = "running"
		case d["state"] == "running":
			d["state"] = f.outcome
		}
	}
	if r.URL.Path == "/api/v1/services/web/history" && r.Method == "GET" {
		for _, rb := range f.rollbacks {
			switch rb["state"] {
			case "queued":
				rb["state"] = "running"
			case "running":
				if f.outcome != "" {
					rb["state"], rb["outcome"] = "ended", f.outcome
					f.history = append([]map[string]any{rb}, f.history...)
				}
			}
		}
	}
	switch r.Method + " " + r.URL.Path {
	case "GET /api/v1/services/web/history":
		json.NewEncoder(w).Encode(map[string]any{"service": "web", "history": f.history})
	case "GET /api/v1/services/db/history", "POST /api/v1/services/db/rollback":
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"error":"service \"db\" is not watched: not found"}`)
	case "POST /api/v1/services/web/rollback":
		var body struct{ To string }
		b, _ := io.ReadAll(r.Body)
		f.bodies = append(f.bodies, string(b))
		json.Unmarshal(b, &body)
		if body.To == "" {
			body.To = digestC
		}
		f.rollbacks = append(f.rollbacks, map[string]any{"id": fmt.Sprint("rb", len(f.rollbacks)), "ref": "r.example/web:1", "from_digest": digestA,
			"to_digest": body.To, "ended": time.Now().UTC(), "rollback": true, "by": "api", "state": "queued",
			"reason": map[string]string{"succeeded": "", "rolled_back": "tasks failed"}[f.outcome]})
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(map[string]any{"service": "web", "from_digest": digestA, "to_digest": body.To, "status": "begun"})
	case "POST /api/v1/services/api/rollback":
		w.WriteHeader(http.StatusConflict)
		fmt.Fprint(w, `{"error":"api has no earlier successful deploy in its history to roll back to: name one with --to"}`)
	case "GET /api/v1/services":
		json.NewEncoder(w).Encode(map[string]any{"checked": f.checked, "services": []map[string]any{{"name": "web", "id": "s1",
			"ref": "r.example/web:1", "running_digest": "sha256:" + strings.Repeat("a", 64), "state": "up-to-date", "approval": "auto"}}})
	case "GET /api/v1/deploys":
		json.NewEncoder(w).Encode(map[string]any{"approvals": []any{}, "deploys": f.deploys})
	case "POST /api/v1/check":
		f.checked = time.Now().UTC()
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprint(w, `{"status":"queued"}`)
	case "POST /api/v1/services/web/deploy":
		if f.outcome != "" {
			f.deploys = append([]map[string]any{{"id": fmt.Sprint("x", len(f.deploys)), "service": "web", "service_id": "s1",
				"from_digest": "sha256:" + strings.Repeat("a", 64), "to_digest": "sha256:" + strings.Repeat("b", 64), "state": "queued",
				"reason": map[string]string{"succeeded": "", "rolled_back": "tasks failed"}[f.outcome]}}, f.deploys...)
		}
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprint(w, `{"status":"the deploy of web is queued"}`)
	case "POST /api/v1/services/db/deploy":
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"error":"service \"db\" is not watched: not found"}`)
	case "POST /api/v1/deploys/d1/approve":
		fmt.Fprint(w, `{"id":"d1","service":"web","state":"approved","from_digest":"sha256:aaaaaaaaaaaa1","to_digest":"sha256:bbbbbbbbbbbb1"}`)
	case "POST /api/v1/deploys/d1/reject":
		w.WriteHeader(http.StatusConflict)
		fmt.Fprint(w, `{"error":"deploy d1 is approved: no longer pending"}`)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeAPI) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

// TestClientMode: with UPDATER_URL, the commands ask the API, never
// Docker (DOCKER_HOST records connections), and map its answers to exit
// codes: 2 for a token it refuses, 1 for a failure.
func TestClientMode(t *testing.T) {
	type tc struct {
		name    string
		args    []string
		outcome string
		token   string
		code    int
		stdout  []string
		stderr  []string
		reqs    string // the requests the API saw, in order
		body    string // the rollback's body the API saw; "(none)": an empty one
	}
	cases := []tc{
		{name: "deploy queues", args: []string{"deploy", "web"}, outcome: "succeeded", code: 0,
			stdout: []string{"web: deploy queued by the updater at http://"}, reqs: "[POST /api/v1/services/web/deploy]"},
		{name: "deploy waits for success", args: []string{"deploy", "--wait", "1m", "web"}, outcome: "succeeded", code: 0,
			stdout: []string{"web succeeded: sha256:aaaaaaaaaaaa -> sha256:bbbbbbbbbbbb"},
			reqs:   "[GET /api/v1/deploys POST /api/v1/services/web/deploy GET /api/v1/deploys GET /api/v1/deploys]"},
		{name: "deploy waits for a rollback", args: []string{"deploy", "web", "--wait=1m"}, outcome: "rolled_back", code: 1,
			stdout: []string{"web rolled_back: sha256:aaaaaaaaaaaa -> sha256:bbbbbbbbbbbb tasks failed"}},
		{name: "deploy of a service up to date", args: []string{"deploy", "--wait", "1500ms", "web"}, code: 1,
			stderr: []string{"updater deploy: no deploy of web began within 1.5s"}},
		{name: "deploy of a service not watched", args: []string{"deploy", "db"}, code: 1,
			stderr: []string{`updater deploy: POST http://`, `/api/v1/services/db/deploy answered 404 Not Found: service "db" is not watched`}},
		{name: "a wrong token", args: []string{"deploy", "web"}, token: "wrong-token-0123456789abcdef", code: 2,
			stderr: []string{"answered 401 Unauthorized: a valid bearer token is required: the updater refused the token (UPDATER_API_TOKEN is not its token)"}},
		{name: "approve", args: []string{"approve", "d1"}, code: 0,
			stdout: []string{"deploy d1 of web approved (sha256:aaaaaaaaaaaa -> sha256:bbbbbbbbbbbb): it deploys at the updater's next check"},
			reqs:   "[POST /api/v1/deploys/d1/approve]"},
		{name: "reject one decided", args: []string{"reject", "d1"}, code: 1, stderr: []string{"409 Conflict: deploy d1 is approved: no longer pending"}},
		{name: "check", args: []string{"check"}, code: 0, stdout: []string{"SERVICE", "web", "r.example/web:1", "aaaaaaaaaaaa", "up-to-date",
			"\nas the updater at http://", "saw it at its last full check: none finished yet\n"},
			reqs: "[GET /api/v1/services]"},
		{name: "check --now", args: []string{"check", "--now"}, code: 0, stdout: []string{"up-to-date"},
			reqs: "[GET /api/v1/services POST /api/v1/check GET /api/v1/services]"},
		{name: "history", args: []string{"history", "web"}, code: 0,
			stdout: []string{"ENDED", "OUTCOME", "2026-12-01T12:00:00Z  succeeded", digestA, "sha256:cccccccccccc  deploy",
				"failed (rollout)", digestC + "  sha256:bbbbbbbbbbbb  rollback by page  tasks failed"},
			reqs: "[GET /api/v1/services/web/history]"},
		{name: "history --format json", args: []string{"history", "--format", "json", "web"}, code: 0,
			stdout: []string{`"service": "web"`, `"to_digest": "` + digestA, `"rollback": true`, `"by": "page"`}},
		{name: "history of a service not watched", args: []string{"history", "db"}, code: 1, stderr: []string{"404 Not Found", "not watched"}},
		{name: "history --format yaml", args: []string{"history", "--format", "yaml", "web"}, code: 2, stderr: []string{`--format "yaml"`}, reqs: "[]"},
		{name: "rollback begins", args: []string{"rollback", "web"}, outcome: "succeeded", code: 0,
			stdout: []string{"web: rollback sha256:aaaaaaaaaaaa -> sha256:cccccccccccc begun by the updater at http://"},
			reqs:   "[POST /api/v1/services/web/rollback]", body: "(none)"},
		{name: "rollback --to", args: []string{"rollback", "--to", digestD, "web"}, outcome: "succeeded", code: 0,
			stdout: []string{"web: rollback sha256:aaaaaaaaaaaa -> sha256:dddddddddddd begun"}, body: `{"to":"` + digestD + `"}`},
		{name: "rollback --wait succeeds", args: []string{"rollback", "web", "--wait"}, outcome: "succeeded", code: 0,
			stdout: []string{"web rollback succeeded: sha256:aaaaaaaaaaaa -> sha256:cccccccccccc \n"},
			reqs:   "[GET /api/v1/services/web/history POST /api/v1/services/web/rollback GET /api/v1/services/web/history GET /api/v1/services/web/history]"},
		{name: "rollback --wait rolled back", args: []string{"rollback", "--wait", "web"}, outcome: "rolled_back", code: 1,
			stdout: []string{"web rollback rolled_back: sha256:aaaaaaaaaaaa -> sha256:cccccccccccc tasks failed"}},
		{name: "rollback --wait without an outcome", args: []string{"rollback", "--wait", "--timeout", "1500ms", "web"}, code: 1,
			stderr: []string{"updater rollback: the rollback of web to sha256:cccccccccccc has no outcome after 1.5s"}},
		{name: "rollback with nothing to return to", args: []string{"rollback", "api"}, code: 1,
			stderr: []string{"409 Conflict: api has no earlier successful deploy in its history to roll back to: name one with --to"}},
		{name: "rollback of a service not watched", args: []string{"rollback", "db"}, code: 1, stderr: []string{"404 Not Found"}},
		{name: "rollback --to a tag", args: []string{"rollback", "--to", "latest", "web"}, code: 2,
			stderr: []string{`updater rollback: --to "latest" is not a digest: use sha256: and 64 lowercase hex digits`}, reqs: "[]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sock, conns := recorder(t)
			isolate(t, sock)
			api := &fakeAPI{outcome: c.outcome, history: webHistory()}
			srv := httptest.NewServer(api)
			t.Cleanup(srv.Close)
			token := apiToken
			if c.token != "" {
				token = c.token
			}
			t.Setenv("UPDATER_URL", srv.URL)
			t.Setenv("UPDATER_API_TOKEN", token)
			stdout, stderr := runAndCheck(t, c.args, c.code, c.stdout, c.stderr)
			if strings.Contains(stdout.String()+stderr.String(), token) {
				t.Errorf("the token is in the output:\n%s%s", stdout, stderr)
			}
			if got := fmt.Sprint(api.requests()); c.reqs != "" && got != c.reqs {
				t.Errorf("the API saw %s, want %s", got, c.reqs)
			}
			if n := conns.Load(); n != 0 {
				t.Errorf("%d connections to DOCKER_HOST; a client asks the API only", n)
			}
			if want := strings.TrimSuffix(c.body, "(none)"); c.body != "" && fmt.Sprint(api.bodies) != "["+want+"]" {
				t.Errorf("the API got the bodies %q, want %s", api.bodies, c.body)
			}
		})
	}
}

// TestClientCheckJSON: check --format json through the API has the same
// fields as a local one; unwatched is null (the API does not list them).
func TestClientCheckJSON(t *testing.T) {
	sock, _ := recorder(t)
	isolate(t, sock)
	srv := httptest.NewServer(&fakeAPI{})
	t.Cleanup(srv.Close)
	t.Setenv("UPDATER_URL", srv.URL)
	t.Setenv("UPDATER_API_TOKEN", apiToken)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check", "--format", "json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("check --format json = %d\nstderr: %s", code, &stderr)
	}
	var r map[string]json.RawMessage
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, &stdout)
	}
	var services []map[string]any
	if err := json.Unmarshal(r["services"], &services); err != nil || len(services) != 1 {
		t.Fatalf("services %s: %v", r["services"], err)
	}
	if s := services[0]; s["name"] != "web" || s["state"] != "up-to-date" || s["ref"] != "r.example/web:1" || s["approval"] != "auto" {
		t.Errorf("service %v", s)
	}
	if string(r["unwatched"]) != "null" || r["checked"] == nil {
		t.Errorf("checked %s, unwatched %s; want a time and null", r["checked"], r["unwatched"])
	}
}
