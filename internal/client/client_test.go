package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/httpapi"
)

// The client is tested against the real API server (its handler in
// httptest, the pipeline behind it faked), so a field or route renamed on
// either side fails here.

const token = "api-token-0123456789abcdef"

var (
	oldD = "sha256:" + strings.Repeat("a", 64)
	newD = "sha256:" + strings.Repeat("b", 64)
)

type fakes struct {
	mu        sync.Mutex
	checks    int
	deploys   []string
	decisions []string
	status    deploy.Status
	approvals []deploy.Approval
}

func (f *fakes) Status() deploy.Status        { return f.status }
func (f *fakes) Approvals() []deploy.Approval { return f.approvals }
func (f *fakes) Push(...deploy.Push)          {}
func (f *fakes) Check()                       { f.mu.Lock(); f.checks++; f.mu.Unlock() }
func (f *fakes) Stuck() []string              { return nil }
func (f *fakes) record(what string) {
	f.mu.Lock()
	f.decisions = append(f.decisions, what)
	f.mu.Unlock()
}
func (f *fakes) snapshot() (int, []string, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.checks, append([]string(nil), f.deploys...), append([]string(nil), f.decisions...)
}

func (f *fakes) Deploy(_ context.Context, name string) error {
	f.mu.Lock()
	f.deploys = append(f.deploys, name)
	f.mu.Unlock()
	if name != "web" && name != "a/b" {
		return fmt.Errorf("service %q is not watched: %w", name, deploy.ErrNotFound)
	}
	return nil
}

func (f *fakes) decide(verb, id string) (deploy.Approval, error) {
	f.record(verb + " " + id)
	if id != "d1" {
		return deploy.Approval{}, fmt.Errorf("deploy %s is rejected: %w", id, deploy.ErrDecided)
	}
	state := deploy.ApprovalApproved
	if verb == "reject" {
		state = deploy.ApprovalRejected
	}
	return deploy.Approval{ID: id, ServiceName: "web", Ref: "r.example/web:1", From: oldD, To: newD, State: state}, nil
}

func (f *fakes) Approve(_ context.Context, id string) (deploy.Approval, error) {
	return f.decide("approve", id)
}

func (f *fakes) Reject(_ context.Context, id string) (deploy.Approval, error) {
	return f.decide("reject", id)
}

func (f *fakes) ServiceHistory(_ context.Context, name string) ([]deploy.HistoryEntry, error) {
	if name != "web" {
		return nil, fmt.Errorf("service %q is not watched: %w", name, deploy.ErrNotFound)
	}
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	return []deploy.HistoryEntry{
		{ID: "h2", Ref: "r.example/web:1", From: newD, To: oldD, Started: at, Ended: at.Add(time.Minute), Outcome: deploy.OutcomeSucceeded, Rollback: true, By: "api"},
		{ID: "h1", Ref: "r.example/web:1", From: oldD, To: newD, Started: at.Add(-time.Hour), Ended: at.Add(-time.Hour), Outcome: deploy.OutcomeFailed,
			Phase: deploy.PhaseBake, Reason: "exited after 20s"},
	}, nil
}

func (f *fakes) History(context.Context, string) ([]deploy.HistoryEntry, error) { return nil, nil }

func (f *fakes) StartRollback(_ context.Context, req deploy.RollbackRequest) (deploy.Rolling, error) {
	f.record(fmt.Sprintf("rollback %s to %q by %s", req.Service, req.To, req.By))
	switch {
	case req.Service != "web":
		return deploy.Rolling{}, fmt.Errorf("service %q is not watched: %w", req.Service, deploy.ErrNotFound)
	case req.To == "":
		return deploy.Rolling{}, deploy.ErrNoRollbackTarget
	}
	return deploy.Rolling{Release: deploy.Release{ID: "r1", ServiceName: "web", Ref: "r.example/web:1", From: newD, To: req.To}}, nil
}

// serve starts the API with f behind it, under prefix, and returns its URL.
func serve(t *testing.T, f *fakes, prefix string) (string, *httpapi.History) {
	t.Helper()
	hist := httpapi.NewHistory(10)
	srv := httpapi.New(httpapi.Config{APIToken: token, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Pipeline: f, Requests: f, Decisions: f, History: hist, Histories: f, Rollbacks: f})
	var h http.Handler = srv.Handler()
	if prefix != "" {
		h = http.StripPrefix(strings.TrimSuffix(prefix, "/"), h)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts.URL + prefix, hist
}

func newClient(t *testing.T, url, tok string) *Client {
	t.Helper()
	c, err := New(url, tok)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestServicesAndDeploys(t *testing.T) {
	checked := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	f := &fakes{status: deploy.Status{Checked: checked, Services: []deploy.Plan{{
		Target: deploy.Target{ID: "s1", Name: "web", Stack: "shop", Image: "r.example/web:1@" + oldD, Hooks: deploy.Hooks{Approve: true}},
		Want:   newD, Action: deploy.ActDeploy, Reason: "the tag moved",
	}}}}
	f.approvals = []deploy.Approval{{ID: "d1", ServiceName: "web", Ref: "r.example/web:1", To: newD, State: deploy.ApprovalPending}}
	url, hist := serve(t, f, "/updater/") // behind a proxy's path prefix
	rel := deploy.Release{ID: "x1", ServiceID: "s1", ServiceName: "web", Ref: "r.example/web:1", From: oldD, To: newD, Started: checked}
	hist.Report(deploy.Event{Kind: deploy.Started, Release: rel})
	hist.Report(deploy.Event{Kind: deploy.Failed, Release: rel, Reason: "tasks failed", RolledBack: true, Duration: 3 * time.Second})

	c := newClient(t, url, token)
	got, err := c.Services(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := Service{Name: "web", ID: "s1", Stack: "shop", Ref: "r.example/web:1", RunningDigest: oldD, RegistryDigest: newD,
		State: "deploy", Reason: "the tag moved", Approval: "manual"}
	if len(got.Services) != 1 || !got.Checked.Equal(checked) {
		t.Fatalf("Services() = %+v, want one service checked at %s", got, checked)
	}
	s := got.Services[0]
	if s.LastDeploy == nil || s.LastDeploy.ID != "x1" || s.LastDeploy.State != "rolled_back" {
		t.Errorf("last deploy %+v, want x1 rolled_back", s.LastDeploy)
	}
	s.LastDeploy = nil
	if s != want {
		t.Errorf("service\n%+v, want\n%+v", s, want)
	}

	d, err := c.Deploys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Approvals) != 1 || d.Approvals[0].ID != "d1" || d.Approvals[0].State != "pending" || d.Approvals[0].To != newD {
		t.Errorf("approvals %+v, want d1 pending", d.Approvals)
	}
	if len(d.Deploys) != 1 {
		t.Fatalf("deploys %+v, want one", d.Deploys)
	}
	x := d.Deploys[0]
	if x.ID != "x1" || x.ServiceName != "web" || x.State != "rolled_back" || !x.Ended() || x.Reason != "tasks failed" ||
		x.Duration != 3*time.Second || !x.RolledBack || x.From != oldD || x.To != newD || !x.Started.Equal(checked) {
		t.Errorf("deploy %+v", x)
	}
}

func TestRequests(t *testing.T) {
	f := &fakes{}
	url, _ := serve(t, f, "")
	c := newClient(t, url, token)
	ctx := context.Background()
	if err := c.Check(ctx); err != nil {
		t.Errorf("Check: %v", err)
	}
	if err := c.Deploy(ctx, "web"); err != nil {
		t.Errorf("Deploy(web): %v", err)
	}
	// One path segment, whatever the name holds.
	if err := c.Deploy(ctx, "a/b"); err != nil {
		t.Errorf("Deploy(a/b): %v", err)
	}
	if err := c.Deploy(ctx, "db"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `service "db" is not watched`) {
		t.Errorf("Deploy(db) = %v, want ErrNotFound with the API's message", err)
	}
	if err := c.Deploy(ctx, ".."); !errors.Is(err, ErrNotFound) {
		t.Errorf("Deploy(..) = %v, want ErrNotFound before asking", err)
	}
	a, err := c.Approve(ctx, "d1")
	if err != nil || a.State != "approved" || a.ServiceName != "web" || a.To != newD {
		t.Errorf("Approve(d1) = %+v, %v", a, err)
	}
	if a, err := c.Reject(ctx, "d1"); err != nil || a.State != "rejected" {
		t.Errorf("Reject(d1) = %+v, %v", a, err)
	}
	if _, err := c.Approve(ctx, "d2"); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "409") {
		t.Errorf("Approve(d2) = %v, want ErrConflict", err)
	}
	checks, deploys, decisions := f.snapshot()
	if checks != 1 || fmt.Sprint(deploys) != "[web a/b db]" || fmt.Sprint(decisions) != "[approve d1 reject d1 approve d2]" {
		t.Errorf("the updater was asked %d checks, deploys %q, decisions %q", checks, deploys, decisions)
	}
}

// TestHistoryAndRollback: the history as the API gives it, and a
// rollback's digest sent in the body (none when not named), its refusals
// the sentinels their statuses stand for.
func TestHistoryAndRollback(t *testing.T) {
	f := &fakes{}
	url, _ := serve(t, f, "")
	c := newClient(t, url, token)
	ctx := context.Background()
	h, err := c.History(ctx, "web")
	if err != nil || h.Service != "web" || len(h.History) != 2 {
		t.Fatalf("History(web) = %+v, %v", h, err)
	}
	if e := h.History[0]; e.ID != "h2" || !e.Rollback || e.By != "api" || e.To != oldD || e.From != newD || e.Outcome != "succeeded" || e.Ended.IsZero() {
		t.Errorf("newest entry %+v", e)
	}
	if e := h.History[1]; e.Outcome != "failed" || e.Phase != "bake" || e.Reason != "exited after 20s" {
		t.Errorf("older entry %+v", e)
	}
	if _, err := c.History(ctx, "db"); !errors.Is(err, ErrNotFound) {
		t.Errorf("History(db) = %v, want ErrNotFound", err)
	}
	rb, err := c.Rollback(ctx, "web", oldD)
	if err != nil || rb.Service != "web" || rb.ID != "r1" || rb.From != newD || rb.To != oldD || rb.Status == "" {
		t.Fatalf("Rollback(web, oldD) = %+v, %v", rb, err)
	}
	if _, err := c.Rollback(ctx, "web", ""); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "--to") {
		t.Errorf("Rollback(web) with no target = %v, want ErrConflict saying --to", err)
	}
	if _, err := c.Rollback(ctx, "db", oldD); !errors.Is(err, ErrNotFound) {
		t.Errorf("Rollback(db) = %v, want ErrNotFound", err)
	}
	if _, err := c.Rollback(ctx, "web", "latest"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("Rollback(web, latest) = %v, want the API's 400", err)
	}
	_, _, asked := f.snapshot()
	want := fmt.Sprintf(`[rollback web to %q by api rollback web to "" by api rollback db to %q by api]`, oldD, oldD)
	if fmt.Sprint(asked) != want {
		t.Errorf("the updater was asked %v, want %s", asked, want)
	}
}

// TestRefused: a wrong token is ErrAuth, with the API's words, and the
// token itself in no error.
func TestRefused(t *testing.T) {
	f := &fakes{}
	url, _ := serve(t, f, "")
	const wrong = "wrong-token-0123456789abcdef"
	c := newClient(t, url, wrong)
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"services": func() error { _, err := c.Services(ctx); return err },
		"deploy":   func() error { return c.Deploy(ctx, "web") },
		"approve":  func() error { _, err := c.Approve(ctx, "d1"); return err },
	} {
		err := call()
		if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "UPDATER_API_TOKEN") {
			t.Errorf("%s: %v, want ErrAuth naming 401 and UPDATER_API_TOKEN", name, err)
		}
		if err != nil && (strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), token)) {
			t.Errorf("%s: the error shows a token: %v", name, err)
		}
	}
	if _, deploys, decisions := f.snapshot(); len(deploys)+len(decisions) > 0 {
		t.Errorf("a refused request reached the pipeline: %q %q", deploys, decisions)
	}
}

// TestNotTheUpdater: an address that answers something else says so.
func TestNotTheUpdater(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "<html>hello</html>") }))
	t.Cleanup(ts.Close)
	_, err := newClient(t, ts.URL, token).Services(context.Background())
	if err == nil || !strings.Contains(err.Error(), "is UPDATER_URL the updater?") {
		t.Errorf("Services() = %v, want the answer called not the API's", err)
	}
}

// TestBody: a request with a body sends it as JSON, below the base's
// path, with the token (what a rollback's --to will need).
func TestBody(t *testing.T) {
	var got string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = fmt.Sprintf("%s %s %s %s %s", r.Method, r.URL.EscapedPath(), r.Header.Get("Content-Type"), r.Header.Get("Authorization"), b)
		fmt.Fprint(w, `{"id":"r1"}`)
	}))
	t.Cleanup(ts.Close)
	var out struct{ ID string }
	err := newClient(t, ts.URL+"/pre", token).do(context.Background(), http.MethodPost, map[string]string{"to": newD}, &out, "services", "a b", "rollback")
	want := "POST /pre/api/v1/services/a%20b/rollback application/json Bearer " + token + ` {"to":"` + newD + `"}`
	if err != nil || got != want || out.ID != "r1" {
		t.Errorf("got %q, %+v, %v; want %q", got, out, err, want)
	}
}
