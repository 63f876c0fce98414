package webhook_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
	"github.com/updater-dev/updater/internal/notify/webhook"
)

const secret = "s3cret-for-the-hmac-0123456789"

// receiver is the team's endpoint: it takes a post only when its
// signature is the body's under the secret, and answers with what
// status says for the attempt.
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	status func(n int, b webhook.Body) int // n: this post's number, from 1

	mu       sync.Mutex
	n        int
	got      []webhook.Body // taken (2xx), in order
	times    []time.Time    // of every post
	ids      []string       // delivery header of every post
	unsigned int
	hold     chan struct{} // when set, every post waits on it
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	if r.hold != nil {
		<-r.hold
	}
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	r.times = append(r.times, time.Now())
	r.ids = append(r.ids, req.Header.Get(webhook.HeaderDelivery))
	if req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/json" {
		r.t.Errorf("%s with Content-Type %q", req.Method, req.Header.Get("Content-Type"))
	}
	if !webhook.Verify(secret, body, req.Header.Get(webhook.HeaderSignature)) {
		r.unsigned++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var b webhook.Body
	if err := json.Unmarshal(body, &b); err != nil {
		r.t.Errorf("body %s: %v", body, err)
	}
	if b.Schema != "updater.event/v1" || b.ID == "" || b.ID != req.Header.Get(webhook.HeaderDelivery) || b.Kind != req.Header.Get(webhook.HeaderEvent) {
		r.t.Errorf("body %s with headers %v", body, req.Header)
	}
	code := http.StatusNoContent
	if r.status != nil {
		code = r.status(r.n, b)
	}
	w.WriteHeader(code)
	if code < 300 {
		r.got = append(r.got, b)
	}
}

func (r *receiver) taken() []webhook.Body {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]webhook.Body(nil), r.got...)
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fast is a policy with short waits, so a test of retries takes
// milliseconds, the shape of the backoff the same as the default's.
func fast() notify.Policy {
	return notify.Policy{Attempts: 4, Timeout: 2 * time.Second, Budget: 10 * time.Second,
		Backoff: 40 * time.Millisecond, MaxBackoff: time.Second, Queue: 16}
}

func dispatcher(t *testing.T, s *webhook.Sender) *notify.Dispatcher {
	d := notify.NewDispatcher(slog.New(slog.DiscardHandler), fast(), notify.Named{Name: "webhook", Notifier: s})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = d.Close(ctx)
	})
	return d
}

var rel = deploy.Release{ID: "d1", ServiceID: "svc1", ServiceName: "web", Stack: "shop", Ref: "registry.example/web:1",
	From: "sha256:aaa", To: "sha256:bbb", Started: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC),
	Labels: map[string]string{"org.opencontainers.image.revision": "abc123"}}

// A deploy with a backup and a migration, as the pipeline reports it:
// one signed post per step, in order, and none for the rollout counts or
// the canary's evaluations.
func TestOnePostPerStep(t *testing.T) {
	r := newReceiver(t)
	d := dispatcher(t, webhook.New(webhook.Config{URL: r.srv.URL + "/hooks/updater?token=abc", Secret: secret}))
	step := func(ph deploy.Phase, st deploy.StepState) *deploy.Step { return &deploy.Step{Phase: ph, State: st} }
	events := []deploy.Event{
		{Kind: deploy.Started, Release: rel},
		{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseBackup, Step: step(deploy.PhaseBackup, deploy.StepStarted)},
		{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseBackup, Step: step(deploy.PhaseBackup, deploy.StepSucceeded), Duration: 2 * time.Second},
		{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseMigrate, Step: step(deploy.PhaseMigrate, deploy.StepSkipped)},
		// A canary's evaluations (one every interval) are progress, not hook steps: not posted either.
		{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseCanary, Step: &deploy.Step{Phase: deploy.PhaseCanary, Done: 1, Total: 2, Detail: "0.002 ≤ 0.05 · 40s left"}},
		{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseRollout, Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 1, Total: 2}},
		{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseRollout, Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 2, Total: 2}},
		{Kind: deploy.Succeeded, Release: rel, Phase: deploy.PhaseRollout, Duration: 90 * time.Second},
	}
	for _, e := range events {
		d.Report(e)
	}
	waitFor(t, 5*time.Second, "the succeeded post", func() bool {
		got := r.taken()
		return len(got) > 0 && got[len(got)-1].Kind == "succeeded"
	})
	got := r.taken()
	var seen []string
	for _, b := range got {
		s := b.Kind
		if b.Step != nil {
			s += " " + b.Step.Phase + " " + b.Step.State
		}
		seen = append(seen, s)
	}
	want := []string{"started", "progress backup started", "progress backup succeeded", "progress migrate skipped", "succeeded"}
	if strings.Join(seen, ", ") != strings.Join(want, ", ") {
		t.Fatalf("posts %q, want %q", seen, want)
	}
	ids := map[string]bool{}
	for _, b := range got {
		ids[b.ID] = true
	}
	if len(ids) != len(got) {
		t.Errorf("%d delivery IDs for %d events", len(ids), len(got))
	}
	last := got[len(got)-1]
	if last.Outcome != "succeeded" || last.Duration != "1m30s" || last.DurationSeconds == nil || *last.DurationSeconds != 90 ||
		last.Deploy == nil || last.Deploy.Service != "web" || last.Deploy.ToDigest != "sha256:bbb" || last.Deploy.FromDigest != "sha256:aaa" ||
		last.Deploy.Labels["org.opencontainers.image.revision"] != "abc123" || last.Phase != "rollout" {
		t.Errorf("succeeded body: %+v %+v", last, last.Deploy)
	}
	if got[0].Duration != "" || got[0].Deploy.Started == nil || !got[0].Deploy.Started.Equal(rel.Started) {
		t.Errorf("started body: %+v %+v", got[0], got[0].Deploy)
	}
}

// A 500 is tried again after a backoff that grows, with the same body,
// delivery ID and signature; the receiver takes the third attempt, once.
func TestServerErrorRetriedWithBackoff(t *testing.T) {
	r := newReceiver(t)
	r.status = func(n int, _ webhook.Body) int {
		if n <= 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	d := dispatcher(t, webhook.New(webhook.Config{URL: r.srv.URL, Secret: secret}))
	d.Report(deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollout, RolledBack: true, Reason: "2 tasks unhealthy"})
	waitFor(t, 5*time.Second, "the post taken", func() bool { return len(r.taken()) == 1 })
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n != 3 {
		t.Fatalf("%d posts, want 3 (two 500s, then taken)", r.n)
	}
	if r.ids[0] != r.ids[1] || r.ids[1] != r.ids[2] {
		t.Errorf("delivery IDs %q: a retry is the same delivery", r.ids)
	}
	// Backoff 40 ms then 80 ms, each ±20%.
	if g1, g2 := r.times[1].Sub(r.times[0]), r.times[2].Sub(r.times[1]); g1 < 32*time.Millisecond || g2 < 64*time.Millisecond {
		t.Errorf("waits %s, %s between attempts; want at least 32 ms, then 64 ms", g1, g2)
	}
	if b := r.got[0]; b.Kind != "failed" || b.Outcome != "rolled_back" || !b.RolledBack || b.Reason != "2 tasks unhealthy" {
		t.Errorf("body %+v", b)
	}
}

// What the receiver refuses for good (a 4xx) is not tried again; a
// network error and a 429 are, the 429 after the wait it asks for.
func TestRetryClassification(t *testing.T) {
	ctx := context.Background()
	e := deploy.Event{Kind: deploy.Started, Release: rel}
	for _, tc := range []struct {
		status int
		retry  bool
	}{{http.StatusBadRequest, false}, {http.StatusUnauthorized, false}, {http.StatusNotFound, false},
		{http.StatusMovedPermanently, false}, {http.StatusRequestTimeout, true}, {http.StatusBadGateway, true}, {http.StatusServiceUnavailable, true}} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Location", "http://127.0.0.1:1/elsewhere")
			w.WriteHeader(tc.status)
		}))
		retry, err := webhook.New(webhook.Config{URL: srv.URL}).Notify(ctx, e)
		srv.Close()
		if err == nil || retry != tc.retry {
			t.Errorf("%d: retry %v, err %v; want retry %v and an error", tc.status, retry, err, tc.retry)
		}
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()
	retry, err := webhook.New(webhook.Config{URL: srv.URL}).Notify(ctx, e)
	if wait, ok := notify.RetryAfterOf(err); !retry || !ok || wait != 7*time.Second {
		t.Errorf("429: retry %v, wait %v %v (%v); want a retry after 7s", retry, wait, ok, err)
	}
	// A port nothing listens on: a network error, worth a retry.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if retry, err := webhook.New(webhook.Config{URL: "http://" + addr + "/x"}).Notify(ctx, e); !retry || err == nil {
		t.Errorf("connection refused: retry %v, err %v", retry, err)
	}
}

// A receiver that hangs holds back no deploy: Report returns at once
// however many events wait, and they are delivered, in order, once it
// answers again.
func TestNeverBlocks(t *testing.T) {
	r := newReceiver(t)
	r.hold = make(chan struct{})
	d := dispatcher(t, webhook.New(webhook.Config{URL: r.srv.URL, Secret: secret}))
	start := time.Now()
	for i := range 10 {
		d.Report(deploy.Event{Kind: deploy.Started, Release: deploy.Release{ID: string(rune('a' + i)), ServiceName: "web"}})
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("10 reports to a hanging receiver took %s", took)
	}
	close(r.hold)
	waitFor(t, 5*time.Second, "every event once the receiver answers", func() bool { return len(r.taken()) == 10 })
	for i, b := range r.taken() {
		if b.Deploy.ID != string(rune('a'+i)) {
			t.Fatalf("post %d is deploy %s: out of order", i, b.Deploy.ID)
		}
	}
}

// The URL (a token in its path or query) and the secret are in no error.
func TestSecretsNotInErrors(t *testing.T) {
	const url = "http://127.0.0.1:1/hooks/tok-9f8e7d6c5b4a?key=qu3ry-s3cret"
	_, err := webhook.New(webhook.Config{URL: url, Secret: secret}).Notify(context.Background(), deploy.Event{Kind: deploy.Started, Release: rel})
	if err == nil {
		t.Fatal("want an error from a closed port")
	}
	for _, s := range []string{"tok-9f8e7d6c5b4a", "qu3ry-s3cret", secret} {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error shows %q: %v", s, err)
		}
	}
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Errorf("the redacted error no longer unwraps to the network error: %v", err)
	}
}

// Without a secret nothing is signed; an outage names its part and image.
func TestUnsignedOutage(t *testing.T) {
	var got *http.Request
	var body webhook.Body
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		_ = json.NewDecoder(r.Body).Decode(&body)
	}))
	defer srv.Close()
	_, err := webhook.New(webhook.Config{URL: srv.URL}).Notify(context.Background(),
		deploy.Event{Kind: deploy.Outage, Part: "registry", Release: deploy.Release{Ref: "registry.example/web:1"}, Reason: "503"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Header.Get(webhook.HeaderSignature) != "" {
		t.Error("signed without a secret")
	}
	if body.Kind != "outage" || body.Part != "registry" || body.Image != "registry.example/web:1" || body.Deploy != nil {
		t.Errorf("outage body %+v", body)
	}
}
