package httpapi

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

const (
	apiToken = "api-token-0123456789abcdef"
	secret   = "webhook-secret-0123456789abcdef"
)

var (
	oldD = "sha256:" + strings.Repeat("a", 64)
	newD = "sha256:" + strings.Repeat("b", 64)
)

// Function-field fakes, as in deploy's tests: set what a test needs.

type fakePipeline struct {
	StatusFn    func() deploy.Status
	ApprovalsFn func() []deploy.Approval
}

var _ Pipeline = (*fakePipeline)(nil)

func (f *fakePipeline) Status() deploy.Status {
	if f.StatusFn == nil {
		return deploy.Status{}
	}
	return f.StatusFn()
}

func (f *fakePipeline) Approvals() []deploy.Approval {
	if f.ApprovalsFn == nil {
		return nil
	}
	return f.ApprovalsFn()
}

// fakeRequests records what was asked for.
type fakeRequests struct {
	mu       sync.Mutex
	pushes   []deploy.Push
	checks   int
	deploys  []string
	DeployFn func(ctx context.Context, name string) error
}

var _ Requests = (*fakeRequests)(nil)

func (f *fakeRequests) Push(ps ...deploy.Push) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pushes = append(f.pushes, ps...)
}

func (f *fakeRequests) Check() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks++
}

func (f *fakeRequests) Deploy(ctx context.Context, name string) error {
	f.mu.Lock()
	f.deploys = append(f.deploys, name)
	f.mu.Unlock()
	if f.DeployFn == nil {
		return nil
	}
	return f.DeployFn(ctx, name)
}

func (f *fakeRequests) asked() (pushes []deploy.Push, checks int, deploys []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]deploy.Push(nil), f.pushes...), f.checks, append([]string(nil), f.deploys...)
}

type fakeDecisions struct {
	ApproveFn func(ctx context.Context, id string) (deploy.Approval, error)
	RejectFn  func(ctx context.Context, id string) (deploy.Approval, error)
}

var _ Decisions = (*fakeDecisions)(nil)

func (f *fakeDecisions) Approve(ctx context.Context, id string) (deploy.Approval, error) {
	if f.ApproveFn == nil {
		return deploy.Approval{}, deploy.ErrNotFound
	}
	return f.ApproveFn(ctx, id)
}

func (f *fakeDecisions) Reject(ctx context.Context, id string) (deploy.Approval, error) {
	if f.RejectFn == nil {
		return deploy.Approval{}, deploy.ErrNotFound
	}
	return f.RejectFn(ctx, id)
}

type fakeCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

func (f *fakeCounter) Webhook(source, result string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.counts == nil {
		f.counts = map[string]int{}
	}
	f.counts[source+" "+result]++
}

func (f *fakeCounter) get(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[key]
}

func (f *fakeCounter) snapshot() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.counts)
}

// rig is a server on fakes.
type rig struct {
	t         *testing.T
	s         *Server
	cfg       Config
	pipeline  *fakePipeline
	requests  *fakeRequests
	decisions *fakeDecisions
	rollbacks *fakeRollbacks
	counter   *fakeCounter
	history   *History
	logs      *lockedBuffer
	now       time.Time
	skew      atomic.Int64 // added to now: advance moves the clock, race-free
}

// advance moves the server's clock on by d.
func (r *rig) advance(d time.Duration) { r.skew.Add(int64(d)) }

func newRig(t *testing.T, edit ...func(*Config)) *rig {
	t.Helper()
	r := &rig{t: t, pipeline: &fakePipeline{}, requests: &fakeRequests{}, decisions: &fakeDecisions{}, rollbacks: &fakeRollbacks{},
		counter: &fakeCounter{}, history: NewHistory(10), logs: &lockedBuffer{},
		now: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)}
	r.cfg = Config{
		Addr: "127.0.0.1:0", APIToken: apiToken, WebhookSecret: secret, ReadyWithin: 3 * time.Minute,
		Version: "test", Log: slog.New(slog.NewJSONHandler(r.logs, nil)), Now: func() time.Time { return r.now.Add(time.Duration(r.skew.Load())) },
		Pipeline: r.pipeline, Requests: r.requests, Decisions: r.decisions, History: r.history, Rollbacks: r.rollbacks,
		Webhooks: r.counter, Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "metrics\n") }),
	}
	for _, e := range edit {
		e(&r.cfg)
	}
	r.s = New(r.cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", r.logs)
		}
	})
	return r
}

// do serves one request and returns the response.
func (r *rig) do(req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	r.s.Handler().ServeHTTP(rec, req)
	return rec
}

func authed(method, target string, body io.Reader) *http.Request {
	req := httptest.NewRequest(method, target, body)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	return req
}

// lockedBuffer is the rig's log: written by the server's goroutines, read
// by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
