package notify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
)

// fakeNotifier is a function-field fake that records what it was given.
type fakeNotifier struct {
	NotifyFn func(ctx context.Context, e deploy.Event, attempt int) (bool, error)

	mu       sync.Mutex
	attempts map[string]int // by event ID (deploy ID + kind)
	got      []deploy.Event // delivered, in order
	times    []time.Time    // of every attempt
}

var _ notify.Notifier = (*fakeNotifier)(nil)

func (f *fakeNotifier) Notify(ctx context.Context, e deploy.Event) (bool, error) {
	f.mu.Lock()
	if f.attempts == nil {
		f.attempts = map[string]int{}
	}
	key := e.Release.ID + "/" + string(e.Kind)
	f.attempts[key]++
	n := f.attempts[key]
	f.times = append(f.times, time.Now())
	f.mu.Unlock()
	retry, err := false, error(nil)
	if f.NotifyFn != nil {
		retry, err = f.NotifyFn(ctx, e, n)
	}
	if err == nil {
		f.mu.Lock()
		f.got = append(f.got, e)
		f.mu.Unlock()
	}
	return retry, err
}

func (f *fakeNotifier) delivered() []deploy.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]deploy.Event(nil), f.got...)
}

func (f *fakeNotifier) tries(id string, k deploy.Kind) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts[id+"/"+string(k)]
}

// logBuffer collects JSON log lines; slog handlers write from many
// goroutines, and the test reads while they do.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) lines(msgPrefix string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(b.buf.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && strings.HasPrefix(fmt.Sprint(m["msg"]), msgPrefix) {
			out = append(out, m)
		}
	}
	return out
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLog() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

func ev(id string, k deploy.Kind) deploy.Event {
	return deploy.Event{Kind: k, Release: deploy.Release{ID: id, ServiceName: "app"}}
}

// fast retries in milliseconds, so tests exercise the policy, not the clock.
var fast = notify.Policy{Attempts: 3, Timeout: time.Second, Budget: 5 * time.Second,
	Backoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond, Queue: 16}

func closeNow(t *testing.T, d *notify.Dispatcher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestEventsArriveInOrderAtEveryNotifier(t *testing.T) {
	log, _ := newLog()
	a, b := &fakeNotifier{}, &fakeNotifier{}
	p := fast
	p.Queue = 64
	d := notify.NewDispatcher(log, p, notify.Named{Name: "a", Notifier: a}, notify.Named{Name: "b", Notifier: b})
	var want []deploy.Event
	for i := range 10 {
		for _, k := range []deploy.Kind{deploy.Started, deploy.Progress, deploy.Succeeded} {
			e := ev(fmt.Sprint(i), k)
			want = append(want, e)
			d.Report(e)
		}
	}
	closeNow(t, d)
	for name, n := range map[string]*fakeNotifier{"a": a, "b": b} {
		got := n.delivered()
		if len(got) != len(want) {
			t.Fatalf("%s: %d events delivered, want %d", name, len(got), len(want))
		}
		for i := range got {
			if got[i].Release.ID != want[i].Release.ID || got[i].Kind != want[i].Kind {
				t.Fatalf("%s: event %d is %s/%s, want %s/%s", name, i, got[i].Release.ID, got[i].Kind, want[i].Release.ID, want[i].Kind)
			}
		}
	}
}

// A notifier that hangs delays only itself: Report returns at once, the
// other notifier gets everything, and the full queue is logged once.
func TestReportNeverBlocks(t *testing.T) {
	log, logs := newLog()
	hung := &fakeNotifier{NotifyFn: func(ctx context.Context, e deploy.Event, _ int) (bool, error) {
		<-ctx.Done()
		return true, ctx.Err()
	}}
	ok := &fakeNotifier{}
	p := fast
	p.Timeout = time.Hour
	d := notify.NewDispatcher(log, p, notify.Named{Name: "hung", Notifier: hung}, notify.Named{Name: "ok", Notifier: ok})
	start := time.Now()
	for i := range 200 {
		d.Report(ev(fmt.Sprint(i), deploy.Started))
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("200 Reports took %s with a hung notifier", took)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := d.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with a hung notifier: %v, want the deadline", err)
	}
	// The healthy notifier drains as events come; it may drop some when
	// Report outpaces it, never more than a full queue's worth is kept.
	if n := len(ok.delivered()); n < p.Queue {
		t.Fatalf("the healthy notifier got %d events", n)
	}
	full := 0
	for _, l := range logs.lines("notification queue full") {
		if l["notifier"] == "hung" {
			full++
		}
	}
	if full != 1 {
		t.Fatalf("%d queue-full lines for the hung notifier, want 1 per run of drops:\n%s", full, logs)
	}
	left := logs.lines("notifications left undelivered at shutdown")
	if len(left) != 1 || left[0]["notifier"] != "hung" {
		t.Fatalf("want one undelivered line for the hung notifier, got %v", left)
	}
}

func TestRetriedUntilDelivered(t *testing.T) {
	log, logs := newLog()
	n := &fakeNotifier{NotifyFn: func(_ context.Context, _ deploy.Event, attempt int) (bool, error) {
		if attempt < 3 {
			return true, errors.New("503 Service Unavailable")
		}
		return false, nil
	}}
	d := notify.NewDispatcher(log, fast, notify.Named{Name: "n", Notifier: n})
	d.Report(ev("1", deploy.Started))
	closeNow(t, d)
	if got := n.tries("1", deploy.Started); got != 3 {
		t.Fatalf("%d attempts, want 3", got)
	}
	if len(n.delivered()) != 1 {
		t.Fatal("not delivered")
	}
	if l := logs.lines("notify failed; giving up"); len(l) != 0 {
		t.Fatalf("gave up on a delivered event: %v", l)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	log, _ := newLog()
	const wait = 300 * time.Millisecond
	n := &fakeNotifier{NotifyFn: func(_ context.Context, _ deploy.Event, attempt int) (bool, error) {
		if attempt == 1 {
			return true, notify.RetryAfter(errors.New("429 Too Many Requests"), wait)
		}
		return false, nil
	}}
	d := notify.NewDispatcher(log, fast, notify.Named{Name: "n", Notifier: n})
	d.Report(ev("1", deploy.Started))
	closeNow(t, d)
	if len(n.times) != 2 {
		t.Fatalf("%d attempts, want 2", len(n.times))
	}
	if gap := n.times[1].Sub(n.times[0]); gap < wait {
		t.Fatalf("retried after %s, want at least the %s asked for", gap, wait)
	}
}

// A wait beyond the budget is not slept through: the event is given up
// at once, with the reason.
func TestRetryAfterBeyondBudgetGivesUpAtOnce(t *testing.T) {
	log, logs := newLog()
	n := &fakeNotifier{NotifyFn: func(context.Context, deploy.Event, int) (bool, error) {
		return true, notify.RetryAfter(errors.New("429 Too Many Requests"), time.Hour)
	}}
	d := notify.NewDispatcher(log, fast, notify.Named{Name: "n", Notifier: n})
	start := time.Now()
	d.Report(ev("1", deploy.Started))
	closeNow(t, d)
	if took := time.Since(start); took > time.Second {
		t.Fatalf("took %s", took)
	}
	if l := logs.lines("notify failed; giving up"); len(l) != 1 || !strings.Contains(fmt.Sprint(l[0]["err"]), "429") {
		t.Fatalf("want one give-up line naming the 429, got %v", l)
	}
}

// A notifier that is down costs one ERROR line, not one per event, and
// later events get a single attempt each until one gets through.
func TestGiveUpLoggedOncePerOutage(t *testing.T) {
	log, logs := newLog()
	var mu sync.Mutex
	down := true
	n := &fakeNotifier{NotifyFn: func(context.Context, deploy.Event, int) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return true, errors.New("connection refused")
		}
		return false, nil
	}}
	d := notify.NewDispatcher(log, fast, notify.Named{Name: "slack", Notifier: n})
	for _, k := range []deploy.Kind{deploy.Started, deploy.Progress, deploy.Succeeded} {
		d.Report(ev("1", k))
	}
	waitUntil(t, func() bool { return n.tries("1", deploy.Succeeded) == 1 })
	if got := []int{n.tries("1", deploy.Started), n.tries("1", deploy.Progress), n.tries("1", deploy.Succeeded)}; got[0] != fast.Attempts || got[1] != 1 || got[2] != 1 {
		t.Fatalf("attempts per event %v, want [%d 1 1]", got, fast.Attempts)
	}
	giveUps := logs.lines("notify failed; giving up")
	if len(giveUps) != 1 {
		t.Fatalf("%d give-up lines, want 1:\n%s", len(giveUps), logs)
	}
	if g := giveUps[0]; g["level"] != "ERROR" || g["notifier"] != "slack" || g["deploy_id"] != "1" || g["kind"] != "started" {
		t.Fatalf("give-up line %v", g)
	}

	mu.Lock()
	down = false
	mu.Unlock()
	d.Report(ev("2", deploy.Started))
	closeNow(t, d)
	if l := logs.lines("notifier recovered"); len(l) != 1 {
		t.Fatalf("want one recovery line, got %v", l)
	}
	if len(n.delivered()) != 1 {
		t.Fatalf("delivered %d, want only the event after recovery", len(n.delivered()))
	}
}

// An event a notifier sends nothing for proves nothing about whether it
// works: a notifier that is down stays down, and says so once.
func TestSkippedIsNeitherDeliveryNorFailure(t *testing.T) {
	log, logs := newLog()
	n := &fakeNotifier{NotifyFn: func(_ context.Context, e deploy.Event, _ int) (bool, error) {
		if e.Kind == deploy.Progress {
			return false, notify.ErrSkipped
		}
		return true, errors.New("connection refused")
	}}
	d := notify.NewDispatcher(log, fast, notify.Named{Name: "rollbar", Notifier: n})
	for _, k := range []deploy.Kind{deploy.Started, deploy.Progress, deploy.Progress, deploy.Succeeded} {
		d.Report(ev("1", k))
	}
	closeNow(t, d)
	if got := n.tries("1", deploy.Succeeded); got != 1 {
		t.Fatalf("the end was tried %d times, want once: the notifier is still down", got)
	}
	if l := logs.lines("notifier recovered"); len(l) != 0 {
		t.Fatalf("a skipped event counted as a recovery: %v", l)
	}
	if l := logs.lines("notify failed; giving up"); len(l) != 1 {
		t.Fatalf("%d give-up lines, want 1", len(l))
	}
}

func TestPermanentFailureIsNotRetried(t *testing.T) {
	log, logs := newLog()
	n := &fakeNotifier{NotifyFn: func(context.Context, deploy.Event, int) (bool, error) {
		return false, errors.New("invalid_auth")
	}}
	d := notify.NewDispatcher(log, fast, notify.Named{Name: "n", Notifier: n})
	d.Report(ev("1", deploy.Started))
	closeNow(t, d)
	if got := n.tries("1", deploy.Started); got != 1 {
		t.Fatalf("%d attempts for a permanent failure, want 1", got)
	}
	if len(logs.lines("notify failed; giving up")) != 1 {
		t.Fatal("no give-up line")
	}
}

// Each attempt has its own deadline: a notifier that hangs is cut off
// and retried, not waited on forever.
func TestAttemptTimeout(t *testing.T) {
	log, _ := newLog()
	n := &fakeNotifier{NotifyFn: func(ctx context.Context, _ deploy.Event, attempt int) (bool, error) {
		if attempt == 1 {
			<-ctx.Done()
			return true, ctx.Err()
		}
		return false, nil
	}}
	p := fast
	p.Timeout = 50 * time.Millisecond
	d := notify.NewDispatcher(log, p, notify.Named{Name: "n", Notifier: n})
	d.Report(ev("1", deploy.Started))
	closeNow(t, d)
	if len(n.delivered()) != 1 || n.tries("1", deploy.Started) != 2 {
		t.Fatalf("delivered %d after %d attempts, want 1 after 2", len(n.delivered()), n.tries("1", deploy.Started))
	}
}

func TestCloseDrainsTheQueue(t *testing.T) {
	log, _ := newLog()
	n := &fakeNotifier{NotifyFn: func(context.Context, deploy.Event, int) (bool, error) {
		time.Sleep(10 * time.Millisecond)
		return false, nil
	}}
	d := notify.NewDispatcher(log, fast, notify.Named{Name: "n", Notifier: n})
	for i := range 10 {
		d.Report(ev(fmt.Sprint(i), deploy.Succeeded))
	}
	closeNow(t, d)
	if len(n.delivered()) != 10 {
		t.Fatalf("%d of 10 delivered before Close returned", len(n.delivered()))
	}
	d.Report(ev("late", deploy.Started)) // after Close: dropped, no panic
}

func TestReportersReportToEach(t *testing.T) {
	var got []string
	rs := notify.Reporters{reporterFunc(func(e deploy.Event) { got = append(got, "a") }),
		reporterFunc(func(e deploy.Event) { got = append(got, "b") })}
	rs.Report(ev("1", deploy.Started))
	if strings.Join(got, "") != "ab" {
		t.Fatalf("got %v", got)
	}
}

type reporterFunc func(deploy.Event)

func (f reporterFunc) Report(e deploy.Event) { f(e) }

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRedactor(t *testing.T) {
	const (
		hook  = "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX"
		token = "xoxb-1234-secret"
	)
	r := notify.NewRedactor(hook, token, "")
	for _, in := range []string{
		`Post "` + hook + `": dial tcp: connection refused`,
		"path /services/T000/B000/XXXXsecretXXXX not found",
		"token=" + token,
	} {
		out := r.String(in)
		if strings.Contains(out, "XXXXsecretXXXX") || strings.Contains(out, token) {
			t.Errorf("%q -> %q still shows a secret", in, out)
		}
		if !strings.Contains(out, "<redacted>") {
			t.Errorf("%q -> %q: nothing marked redacted", in, out)
		}
	}
	if out := r.String(`Post "` + hook + `"`); !strings.Contains(out, "<redacted>") {
		t.Errorf("%q", out)
	}

	// The message is redacted, the chain is kept for classification.
	inner := &url.Error{Op: "Post", URL: hook, Err: context.DeadlineExceeded}
	err := r.Error(fmt.Errorf("post slack webhook: %w", inner))
	if strings.Contains(err.Error(), "XXXXsecretXXXX") {
		t.Errorf("error %q shows the webhook path", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Error("redacted error lost its chain")
	}
	if r.Error(nil) != nil {
		t.Error("Error(nil) != nil")
	}
	plain := errors.New("nothing secret")
	if r.Error(plain) != plain {
		t.Error("an error without secrets should come back as is")
	}
}

func TestCommitURL(t *testing.T) {
	const rev = "0123456789abcdef0123456789abcdef01234567"
	for _, tt := range []struct {
		source, rev, want string
	}{
		{"https://github.com/acme/app", rev, "https://github.com/acme/app/commit/" + rev},
		{"https://github.com/acme/app.git", rev, "https://github.com/acme/app/commit/" + rev},
		{"https://github.com/acme/app/", rev, "https://github.com/acme/app/commit/" + rev},
		{"https://gitlab.com/group/sub/app", rev, "https://gitlab.com/group/sub/app/-/commit/" + rev},
		{"https://gitlab.example.com/g/app", "abc1234", "https://gitlab.example.com/g/app/-/commit/abc1234"}, // listed
		{"https://GIT.corp.example:8443/g/app", rev, "https://GIT.corp.example:8443/g/app/commit/" + rev},    // listed, with its port
		{"https://git.corp.example/g/app", rev, ""},                                                          // not with another port
		{"https://github.evil.example/acme/app", rev, ""},                                                    // looks like GitHub, not listed
		{"https://gitlab.evil.example/acme/app", rev, ""},
		{"https://github.com.evil.example/acme/app", rev, ""},
		{"https://bitbucket.org/acme/app", rev, ""}, // not a host we know the commit URL of
		{"git@github.com:acme/app.git", rev, ""},    // not a URL a browser opens
		{"https://github.com/acme", rev, ""},        // no repository
		{"https://github.com/acme/app", "v1.2.3", ""},
		{"https://github.com/acme/app", "abc12", ""}, // too short to be a commit
		{"", rev, ""},
	} {
		got := notify.CommitURL(map[string]string{notify.LabelSource: tt.source, notify.LabelRevision: tt.rev},
			[]string{"gitlab.example.com", "git.corp.example:8443"})
		if got != tt.want {
			t.Errorf("CommitURL(%q, %q) = %q, want %q", tt.source, tt.rev, got, tt.want)
		}
	}
}

func TestRevision(t *testing.T) {
	r := deploy.Release{To: "sha256:abc"}
	if got := notify.Revision(r); got != "sha256:abc" {
		t.Errorf("without a label: %q", got)
	}
	r.Labels = map[string]string{notify.LabelRevision: "0123abc"}
	if got := notify.Revision(r); got != "0123abc" {
		t.Errorf("with a label: %q", got)
	}
}

type panicky struct{ calls int }

func (p *panicky) Notify(context.Context, deploy.Event) (bool, error) {
	p.calls++
	if p.calls == 1 {
		panic("injected")
	}
	return false, nil
}

// A notifier that panics fails that attempt, logged at ERROR; the worker
// goes on with the next event, and the process with it.
func TestDispatcherSurvivesAPanickingNotifier(t *testing.T) {
	var buf bytes.Buffer // written by the one worker, read after Close
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	n := &panicky{}
	d := notify.NewDispatcher(log, notify.Policy{Attempts: 1}, notify.Named{Name: "p", Notifier: n})
	d.Report(deploy.Event{Kind: deploy.Started, Release: deploy.Release{ID: "a"}})
	d.Report(deploy.Event{Kind: deploy.Started, Release: deploy.Release{ID: "b"}})
	if err := d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n.calls != 2 || !strings.Contains(buf.String(), `"msg":"panic: a notification stopped"`) {
		t.Errorf("calls %d, log %s: want both events tried, the panic logged", n.calls, buf.String())
	}
}
