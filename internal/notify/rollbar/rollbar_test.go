package rollbar_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
	"github.com/updater-dev/updater/internal/notify/fakeapi"
	"github.com/updater-dev/updater/internal/notify/notifytest"
	"github.com/updater-dev/updater/internal/notify/rollbar"
)

const token = "0123456789abcdef0123456789abcdef"

func newRollbar(t *testing.T) *fakeapi.Rollbar {
	t.Helper()
	f, err := fakeapi.NewRollbar(token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

func release(labels map[string]string) deploy.Release {
	return deploy.Release{ID: "d1", ServiceName: "shop_web", Stack: "shop", Ref: "r.example.com/web:latest",
		From: "sha256:" + strings.Repeat("a", 64), To: "sha256:" + strings.Repeat("b", 64), Labels: labels}
}

func config(f *fakeapi.Rollbar) rollbar.Config {
	return rollbar.Config{Token: token, Environment: "staging", Endpoint: f.APIURL, CodeVersion: "1.2.3"}
}

func mustNotify(t *testing.T, n notify.Notifier, events ...deploy.Event) {
	t.Helper()
	for _, e := range events {
		if retry, err := n.Notify(context.Background(), e); err != nil && !errors.Is(err, notify.ErrSkipped) {
			t.Fatalf("Notify(%s): retry=%v %v", e.Kind, retry, err)
		}
	}
}

func TestDeployStartedThenSucceeded(t *testing.T) {
	f := newRollbar(t)
	d := rollbar.NewDeploys(config(f))
	rel := release(map[string]string{notify.LabelRevision: "0123abc", notify.LabelVersion: "2.4.1"})
	mustNotify(t, d,
		deploy.Event{Kind: deploy.Started, Release: rel},
		deploy.Event{Kind: deploy.Progress, Release: rel, Step: &deploy.Step{Phase: deploy.PhaseRollout}},
		deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseCanary, Step: &deploy.Step{Phase: deploy.PhaseCanary, Done: 1, Total: 4, Detail: "0.002 ≤ 0.05 · 40s left"}},
		deploy.Event{Kind: deploy.Succeeded, Release: rel, Duration: 12 * time.Second},
	)
	deploys := f.Deploys()
	if len(deploys) != 1 {
		t.Fatalf("%d deploys recorded, want 1", len(deploys))
	}
	got := deploys[0]
	if got.Environment != "staging" || got.Revision != "0123abc" || got.LocalUsername != "updater" {
		t.Errorf("deploy %+v", got)
	}
	if strings.Join(got.Statuses, ",") != "started,succeeded" {
		t.Errorf("statuses %v, want started then succeeded on the same deploy", got.Statuses)
	}
	if !strings.Contains(got.Comments[0], "shop_web") || !strings.Contains(got.Comments[0], "2.4.1") ||
		!strings.Contains(got.Comments[1], "succeeded in 12s") {
		t.Errorf("comments %q", got.Comments)
	}
	for _, c := range f.Calls() {
		if c.Params["access_token"] != "" {
			t.Errorf("%s carries the token in its body; it goes in the header", c.Route)
		}
	}
}

func TestDeployFailedWithDigestRevision(t *testing.T) {
	f := newRollbar(t)
	d := rollbar.NewDeploys(config(f))
	rel := release(nil)
	mustNotify(t, d,
		deploy.Event{Kind: deploy.Started, Release: rel},
		deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollout, RolledBack: true,
			Reason: "dockerexec: unhealthy container"},
	)
	got := f.Deploys()[0]
	if got.Revision != rel.To {
		t.Errorf("revision %q, want the digest when the image has no revision label", got.Revision)
	}
	if strings.Join(got.Statuses, ",") != "started,failed" || !strings.Contains(got.Comments[1], "rolled back: dockerexec: unhealthy container") {
		t.Errorf("statuses %v comments %q", got.Statuses, got.Comments)
	}
}

// An end without a recorded start (resumed after a restart, or the start
// was given up) still records the deploy, with its outcome.
func TestDeployEndWithoutStart(t *testing.T) {
	f := newRollbar(t)
	mustNotify(t, rollbar.NewDeploys(config(f)), deploy.Event{Kind: deploy.Succeeded, Release: release(nil), Resumed: true})
	if d := f.Deploys(); len(d) != 1 || strings.Join(d[0].Statuses, ",") != "succeeded" {
		t.Fatalf("deploys %+v", d)
	}
}

func TestDeployErrors(t *testing.T) {
	started := deploy.Event{Kind: deploy.Started, Release: release(nil)}
	for _, tt := range []struct {
		name    string
		setup   func(f *fakeapi.Rollbar, c *rollbar.Config)
		retry   bool
		wantErr string
	}{
		{"wrong token", func(_ *fakeapi.Rollbar, c *rollbar.Config) { c.Token = "ffffffffffffffffffffffffffffffff" }, false, "invalid access token"},
		{"no environment", func(_ *fakeapi.Rollbar, c *rollbar.Config) { c.Environment = "" }, false, "'environment' is required"},
		{"rate limited", func(f *fakeapi.Rollbar, _ *rollbar.Config) { f.RateLimit("deploy.create", 1, 3*time.Second) }, true, "429"},
		{"server error", func(f *fakeapi.Rollbar, _ *rollbar.Config) { f.Fail("deploy.create", 1, http.StatusBadGateway) }, true, "502"},
		// Refused or reset, by how far the closing server got: both are
		// "connection" errors worth retrying.
		{"down", func(f *fakeapi.Rollbar, _ *rollbar.Config) { f.Close() }, true, "connection "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newRollbar(t)
			c := config(f)
			tt.setup(f, &c)
			retry, err := rollbar.NewDeploys(c).Notify(context.Background(), started)
			if err == nil || retry != tt.retry || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("retry=%v err=%v, want retry=%v and %q", retry, err, tt.retry, tt.wantErr)
			}
			if strings.Contains(err.Error(), c.Token) && c.Token != "" {
				t.Fatalf("error shows the token: %v", err)
			}
			if tt.name == "rate limited" {
				if d, ok := notify.RetryAfterOf(err); !ok || d != 3*time.Second {
					t.Fatalf("wait %v, want Retry-After's 3s", d)
				}
			}
		})
	}
}

// A PATCH for a deploy Rollbar does not know is an error, not retried.
func TestFakeRejectsUnknownDeploy(t *testing.T) {
	f := newRollbar(t)
	req, _ := http.NewRequest(http.MethodPatch, f.APIURL+"deploy/999", strings.NewReader(`{"status":"succeeded"}`))
	req.Header.Set("X-Rollbar-Access-Token", token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status %d, want 404", resp.StatusCode)
	}
}

func TestErrorsForwardsErrorRecords(t *testing.T) {
	f := newRollbar(t)
	x := rollbar.NewErrors(config(f), slog.New(slog.NewTextHandler(io.Discard, nil)))
	var seen strings.Builder
	log := slog.New(x.Handler(slog.NewTextHandler(&seen, &slog.HandlerOptions{Level: slog.LevelInfo})))

	log.Info("updater started")
	log.Debug("not even logged")
	log.With("step", "registry").WithGroup("g").Error("remember failed digest", "service", "web", "err", errors.New("config create: 500"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	log.Error("after close") // must not panic or send

	items := f.Items()
	if len(items) != 1 {
		t.Fatalf("%d items, want only the ERROR record: %+v", len(items), items)
	}
	it := items[0]
	if it.Title != "remember failed digest: config create: 500" || it.Level != "error" ||
		it.Environment != "staging" || it.CodeVersion != "1.2.3" {
		t.Errorf("item %+v", it)
	}
	custom, _ := it.Data["custom"].(map[string]any)
	if custom["step"] != "registry" || custom["g.service"] != "web" || custom["g.err"] != "config create: 500" {
		t.Errorf("custom data %v", custom)
	}
	if !strings.Contains(seen.String(), "updater started") || !strings.Contains(seen.String(), "remember failed digest") {
		t.Errorf("the wrapped handler did not get the records:\n%s", seen.String())
	}
	if strings.Contains(seen.String(), "not even logged") {
		t.Error("the wrapped handler's level was not respected")
	}
}

func TestErrorsPanic(t *testing.T) {
	f := newRollbar(t)
	x := rollbar.NewErrors(config(f), slog.New(slog.NewTextHandler(io.Discard, nil)))
	x.Panic("index out of range")
	items := f.Items()
	if len(items) != 1 || items[0].Level != "critical" || !strings.Contains(items[0].Title, "index out of range") {
		t.Fatalf("items %+v", items)
	}
}

// Rollbar down: logging an error neither blocks nor fails, and Close
// returns within its deadline.
func TestErrorsWithRollbarDown(t *testing.T) {
	f := newRollbar(t)
	f.Close()
	x := rollbar.NewErrors(config(f), slog.New(slog.NewTextHandler(io.Discard, nil)))
	log := slog.New(x.Handler(slog.NewTextHandler(io.Discard, nil)))
	start := time.Now()
	for range 50 {
		log.Error("boom")
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("50 error lines took %s with Rollbar down", took)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = x.Close(ctx)
	if ctx.Err() != nil {
		t.Fatal("Close ran into its deadline")
	}
}

// An updater restarted mid-deploy closes the Rollbar deploy the first run
// opened, found through the memo.
func TestDeployResumedClosesItsDeploy(t *testing.T) {
	f := newRollbar(t)
	memo := &notifytest.Memo{}
	c := config(f)
	c.Memo = memo
	rel := release(nil)
	mustNotify(t, rollbar.NewDeploys(c), deploy.Event{Kind: deploy.Started, Release: rel})
	mustNotify(t, rollbar.NewDeploys(c), deploy.Event{Kind: deploy.Failed, Release: rel, Resumed: true, Reason: "rolled back"})
	deploys := f.Deploys()
	if len(deploys) != 1 || strings.Join(deploys[0].Statuses, ",") != "started,failed" {
		t.Fatalf("deploys %+v: want one, started then failed", deploys)
	}
	if memo.Len() != 0 {
		t.Errorf("memo holds %d entries after the outcome, want 0", memo.Len())
	}
}
