package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
	"github.com/updater-dev/updater/internal/notify/slack"
)

const token = "xoxb-demo-test"

// The updater's own Slack notifier, talking to the demo's Slack through
// its /api/ front: what GET / and /last show is the channel as a reader
// sees it, each deploy's message edited to its outcome, a failure's
// details counted in its thread.
func TestShowsTheUpdatersMessages(t *testing.T) {
	h, err := handler(token)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	bot := slack.NewBot(slack.BotConfig{Token: token, Channel: "#deploys", APIURL: srv.URL + "/api/"})
	v1, v2, v3 := "sha256:"+strings.Repeat("1", 64), "sha256:"+strings.Repeat("2", 64), "sha256:"+strings.Repeat("3", 64)
	good := deploy.Release{ID: "d0good", ServiceName: "updater-demo_app", Stack: "updater-demo",
		Ref: "127.0.0.1:5000/demo-app:latest", From: v1, To: v2}
	bad := good
	bad.ID, bad.From, bad.To = "d0bad", v2, v3
	for _, e := range []deploy.Event{
		{Kind: deploy.Started, Release: good},
		{Kind: deploy.Progress, Release: good, Phase: deploy.PhaseBackup,
			Step: &deploy.Step{Phase: deploy.PhaseBackup, State: deploy.StepSucceeded}},
		{Kind: deploy.Progress, Release: good, Phase: deploy.PhaseRollout,
			Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 2, Total: 2}},
		{Kind: deploy.Succeeded, Release: good, Phase: deploy.PhaseRollout, Duration: 13 * time.Second},
		{Kind: deploy.Started, Release: bad},
		{Kind: deploy.Failed, Release: bad, Phase: deploy.PhaseRollout, RolledBack: true, Duration: 21 * time.Second,
			Reason: "Swarm is rolling back: task errors: dockerexec: unhealthy container <b>"},
	} {
		if _, err := bot.Notify(context.Background(), e); err != nil && !errors.Is(err, notify.ErrSkipped) {
			t.Fatalf("notify %s: %v", e.Kind, err)
		}
	}

	all, last := get(t, srv.URL+"/"), get(t, srv.URL+"/last")
	wantLast := []string{
		"#deploys · updater · edited 1×",
		"  ↩️ updater-demo_app (stack updater-demo): deploy failed and was rolled back",
		"  Digest: sha256:222222222222 → sha256:333333333333",
		"  rollout ✗ · rolled back ✓ · deploy d0bad",
		"  Swarm is rolling back: task errors: dockerexec: unhealthy container <b>",
		"  ↳ 1 reply in the thread: Deploy d0bad of updater-demo_app failed in step rollout; the service is back on its previous version.",
	}
	for _, w := range wantLast {
		if !strings.Contains(last, w+"\n") {
			t.Errorf("GET /last lacks the line %q:\n%s", w, last)
		}
	}
	if strings.Contains(last, "deploy succeeded") || strings.ContainsAny(last, "*`") {
		t.Errorf("GET /last shows more than the newest message, or mrkdwn marks:\n%s", last)
	}
	for _, w := range []string{"  ✅ updater-demo_app (stack updater-demo): deploy succeeded\n", "  Duration: 13s\n",
		"backup ✓", "rolled out 2/2 ✓", "healthy ✓", "deploy d0good"} {
		if !strings.Contains(all, w) {
			t.Errorf("GET / lacks %q:\n%s", w, all)
		}
	}
	if !strings.HasSuffix(all, last) || strings.Index(all, "deploy succeeded") > strings.Index(all, "rolled back") {
		t.Errorf("GET / is not every message oldest first, ending with /last's:\n%s", all)
	}
}

// The front passes Slack's own checks through: a wrong token is refused.
func TestPassesTheTokenCheckThrough(t *testing.T) {
	h, err := handler(token)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	bot := slack.NewBot(slack.BotConfig{Token: "xoxb-wrong", Channel: "#deploys", APIURL: srv.URL + "/api/"})
	if err := bot.Check(context.Background()); !errors.Is(err, slack.ErrRejected) {
		t.Fatalf("Check with a wrong token: %v, want ErrRejected", err)
	}
	if got := get(t, srv.URL+"/"); got != "" {
		t.Fatalf("the channel shows %q, want nothing", got)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}
