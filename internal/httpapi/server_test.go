package httpapi

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

func TestHealthz(t *testing.T) {
	r := newRig(t)
	if rec := r.do(httptestGet("/healthz")); rec.Code != http.StatusOK || rec.Body.String() != "ok\n" {
		t.Fatalf("healthz: %d %q", rec.Code, rec.Body)
	}
	if rec := r.do(httptestGet("/metrics")); rec.Code != http.StatusOK || rec.Body.String() != "metrics\n" {
		t.Fatalf("metrics: %d %q", rec.Code, rec.Body)
	}
}

func TestReadyz(t *testing.T) {
	r := newRig(t)
	now := r.now
	for _, tt := range []struct {
		name   string
		status deploy.Status
		ready  bool
		says   string
	}{
		{"nothing yet", deploy.Status{}, false, "no cycle has listed"},
		{"docker down", deploy.Status{Listed: now.Add(-time.Minute), ListErr: errors.New("cannot connect to the Docker daemon at tcp://10.0.0.7:2375"), Checked: now},
			false, "docker did not answer the last service list"},
		{"listed, first check still running", deploy.Status{Listed: now, Busy: now}, true, "runs since"},
		{"listed, no full check", deploy.Status{Listed: now}, false, "no full check"},
		{"recent", deploy.Status{Listed: now, Checked: now.Add(-2 * time.Minute)}, true, "ready"},
		{"stale", deploy.Status{Listed: now, Checked: now.Add(-4 * time.Minute)}, false, "4m0s ago, longer than 3m0s"},
		{"stale but a cycle plans", deploy.Status{Listed: now, Checked: now.Add(-20 * time.Minute), Busy: now.Add(-5 * time.Minute)}, true, "runs since"},
		{"a deploy within its bounds", deploy.Status{Listed: now, Checked: now, Running: []deploy.Running{
			{Services: []string{"service:web"}, Started: now.Add(-20 * time.Minute), Bound: 21 * time.Minute}}}, true, "ready"},
		{"a deploy past its bounds", deploy.Status{Listed: now, Checked: now, Running: []deploy.Running{
			{Services: []string{"service:web"}, Started: now.Add(-20 * time.Minute), Bound: 21 * time.Minute},
			{Services: []string{"service:db", "group:site/data"}, Started: now.Add(-22 * time.Minute), Bound: 21 * time.Minute}}},
			false, "not ready: a deploy has run longer than its bounds allow"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r.pipeline.StatusFn = func() deploy.Status { return tt.status }
			rec := r.do(httptestGet("/readyz"))
			if (rec.Code == http.StatusOK) != tt.ready || !strings.Contains(rec.Body.String(), tt.says) {
				t.Fatalf("%d %q, want ready=%v saying %q", rec.Code, rec.Body, tt.ready, tt.says)
			}
		})
	}
	// The details stay out of the answer and go to the log.
	for _, leak := range []string{"10.0.0.7", "service:db", "group:site/data"} {
		if !strings.Contains(r.logs.String(), leak) {
			t.Errorf("the log does not name %q: %s", leak, r.logs)
		}
	}
}

// /readyz answers anyone with fixed words: neither Docker's error (hosts,
// addresses) nor the names of stacks and services, which the log and the
// status page (behind the token) carry. The log line comes once a minute
// while it says the same, and at once when it changes.
func TestReadyzFixedReasons(t *testing.T) {
	var stuck []string
	r := newRig(t, func(c *Config) { c.Docker = stuckCalls(func() []string { return stuck }) })
	now := r.now
	status := deploy.Status{Listed: now, Checked: now, ListErr: errors.New("error during connect: Get \"http://docker-proxy.prod-stack:2375/v1.41/services\": dial tcp 10.1.2.3:2375: i/o timeout")}
	r.pipeline.StatusFn = func() deploy.Status { return status }
	secretWords := []string{"docker-proxy", "prod-stack", "10.1.2.3", "2375", "i/o timeout"}
	body := func() string {
		t.Helper()
		rec := r.do(httptestGet("/readyz"))
		if rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%d %q, want 503", rec.Code, rec.Body)
		}
		for _, w := range secretWords {
			if strings.Contains(rec.Body.String(), w) {
				t.Fatalf("/readyz says %q, naming %q", rec.Body, w)
			}
		}
		return strings.TrimSpace(rec.Body.String())
	}
	if got := body(); got != "not ready: docker did not answer the last service list" {
		t.Fatalf("/readyz says %q", got)
	}
	for range 5 {
		body()
	}
	if n := strings.Count(r.logs.String(), `"msg":"readiness"`); n != 1 || !strings.Contains(r.logs.String(), "10.1.2.3") {
		t.Fatalf("%d readiness lines for six probes, want one with the details: %s", n, r.logs)
	}
	r.advance(sparseEvery)
	body()
	if n := strings.Count(r.logs.String(), `"msg":"readiness"`); n != 2 {
		t.Fatalf("%d readiness lines after a minute, want 2", n)
	}
	stuck = []string{"docker gave TaskList no answer within 30s (since 2026-03-01T08:59:00Z) on prod-stack"}
	if got := body(); got != "not ready: 1 docker calls got no answer within their bounds" {
		t.Fatalf("/readyz says %q", got)
	}
	if n := strings.Count(r.logs.String(), `"msg":"readiness"`); n != 3 || !strings.Contains(r.logs.String(), "TaskList") {
		t.Fatalf("%d readiness lines after the reason changed, want 3 naming TaskList", n)
	}
}

// stuckCalls is a Docker adapter's report of its hung calls.
type stuckCalls func() []string

func (f stuckCalls) Stuck() []string { return f() }

// A deploy waiting on a hung Docker keeps the pipeline busy, which alone
// reads as ready: the hung calls make it unready, each named.
func TestReadyzDockerStuck(t *testing.T) {
	var stuck []string
	r := newRig(t, func(c *Config) { c.Docker = stuckCalls(func() []string { return stuck }) })
	now := r.now
	r.pipeline.StatusFn = func() deploy.Status { return deploy.Status{Listed: now, Checked: now, Busy: now.Add(-time.Minute)} }
	if rec := r.do(httptestGet("/readyz")); rec.Code != http.StatusOK {
		t.Fatalf("no call stuck: %d %q, want ready", rec.Code, rec.Body)
	}
	stuck = []string{"docker gave TaskList no answer within 30s (since 2026-03-01T08:59:00Z)", "docker gave ConfigInspect no answer within 30s (since 2026-03-01T08:59:10Z)"}
	rec := r.do(httptestGet("/readyz"))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("calls stuck: %d %q, want 503", rec.Code, rec.Body)
	}
	if !strings.Contains(rec.Body.String(), "2 docker calls got no answer") {
		t.Errorf("/readyz says %q, want the count of hung calls", rec.Body)
	}
	for _, s := range stuck {
		if strings.Contains(rec.Body.String(), s) || !strings.Contains(r.logs.String(), s) {
			t.Errorf("/readyz says %q; the log should name %q, the answer not", rec.Body, s)
		}
	}
	stuck = nil
	if rec := r.do(httptestGet("/readyz")); rec.Code != http.StatusOK {
		t.Fatalf("docker answers again: %d %q, want ready", rec.Code, rec.Body)
	}
}

// The server is safe to put on a network: every timeout is set, and a
// client that sends its headers too slowly (slowloris) is cut off.
func TestServerTimeouts(t *testing.T) {
	s := newRig(t).s
	if s.srv.ReadHeaderTimeout <= 0 || s.srv.ReadTimeout <= 0 || s.srv.WriteTimeout <= 0 || s.srv.IdleTimeout <= 0 || s.srv.MaxHeaderBytes <= 0 {
		t.Fatalf("timeouts not all set: %+v", s.srv)
	}
	s.srv.ReadHeaderTimeout = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	addr, err := s.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); s.Wait() }()
	if host, _, _ := net.SplitHostPort(addr.String()); host != "127.0.0.1" {
		t.Fatalf("listening on %s", addr)
	}

	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(conn) // returns when the server hangs up
	if err != nil {
		t.Fatalf("the server kept a slow client %s: %v", time.Since(start), err)
	}
	if strings.Contains(string(rest), "ok") {
		t.Fatalf("answered an incomplete request: %q", rest)
	}
	t.Logf("slow client cut off after %s", time.Since(start).Round(time.Millisecond))

	resp, err := http.Get("http://" + addr.String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz over the network: %d", resp.StatusCode)
	}
}

func TestStartFailsOnBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := newRig(t, func(c *Config) { c.Addr = ln.Addr().String() })
	if _, err := r.s.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "listen on "+ln.Addr().String()) {
		t.Fatalf("Start on a busy port: %v", err)
	}
}

func httptestGet(target string) *http.Request {
	req, _ := http.NewRequest("GET", target, nil)
	req.RemoteAddr = "127.0.0.1:1234"
	return req
}

// setAside is a store's list of records it could not use.
type setAside func() []string

func (f setAside) SetAside() []string { return f() }

// A record set aside is named by /readyz for a person, without making the
// updater unready: the other services deploy as usual.
func TestReadyzNamesRecordsSetAside(t *testing.T) {
	var aside []string
	r := newRig(t, func(c *Config) { c.Records = setAside(func() []string { return aside }) })
	now := r.now
	r.pipeline.StatusFn = func() deploy.Status { return deploy.Status{Listed: now, Checked: now} }
	if rec := r.do(httptestGet("/readyz")); rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != "ready" {
		t.Fatalf("nothing set aside: %d %q, want plain ready", rec.Code, rec.Body)
	}
	aside = []string{"deploy record updater-deploy-s1-r1 set aside: not a deploy record: unexpected end of JSON input"}
	rec := r.do(httptestGet("/readyz"))
	if rec.Code != http.StatusOK {
		t.Fatalf("a record set aside: %d %q, want still ready", rec.Code, rec.Body)
	}
	if !strings.Contains(rec.Body.String(), "records set aside for a person to look at: 1") || strings.Contains(rec.Body.String(), "updater-deploy-s1-r1") {
		t.Errorf("/readyz says %q, want the count and not the record's name", rec.Body)
	}
	if !strings.Contains(r.logs.String(), aside[0]) {
		t.Errorf("the log does not name %q", aside[0])
	}
}
