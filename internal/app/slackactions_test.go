package app

import (
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify/fakeapi"
)

// With SLACK_APP_TOKEN the bot's pending approvals carry the buttons, and
// the app token, like every other secret, never leaves in a message.
func TestNotifiersSlackButtons(t *testing.T) {
	const bot, app = "xoxb-app-test-0000-s3cr3t", "xapp-1-A0APP-0000-s3cr3t"
	fake, err := fakeapi.NewSlack(bot)
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	for _, tt := range []struct {
		name    string
		env     map[string]string
		buttons bool
		secret  string // a configured secret, in the reason
	}{
		{"with the app token", map[string]string{"SLACK_APP_TOKEN": app, "SLACK_APPROVERS": "U0ALICE"}, true, app},
		{"without", map[string]string{}, false, bot},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"SLACK_TOKEN": bot, "SLACK_CHANNEL": "#deploys", "SLACK_API_URL": fake.APIURL}
			for k, v := range tt.env {
				env[k] = v
			}
			cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
			if err != nil {
				t.Fatal(err)
			}
			d, err := New(cfg, Options{Stderr: io.Discard}).notifiers(t.Context())
			if err != nil || d == nil {
				t.Fatalf("notifiers: %v, %v", d, err)
			}
			id := "ap-" + strings.ReplaceAll(tt.name, " ", "-")
			d.Report(deploy.Event{Kind: deploy.Pending, Reason: "waits; token " + tt.secret,
				Release: deploy.Release{ID: id, ServiceName: "web", Ref: "r/web:1", To: "sha256:bbbbbbbbbbbbbbbb"}})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := d.Close(ctx); err != nil {
				t.Fatal(err)
			}
			var msg fakeapi.SlackCall
			for _, c := range fake.Accepted() {
				if c.Method == "chat.postMessage" && strings.Contains(c.Content(), "approval "+id) {
					msg = c
				}
			}
			if msg.TS == "" {
				t.Fatalf("no pending message posted: %v", fake.Calls())
			}
			if got := strings.Contains(string(msg.Blocks), `"action_id":"updater_approve"`); got != tt.buttons {
				t.Errorf("Approve button %v, want %v: %s", got, tt.buttons, msg.Blocks)
			}
			if strings.Contains(msg.Content(), "s3cr3t") {
				t.Errorf("a token left in the message: %s", msg.Content())
			}
		})
	}
}

// The Socket Mode connection is open only while this updater holds the
// lease: Slack spreads presses over an app's connections, and one that
// reached an updater standing by would find nothing to decide.
func TestSlackListensOnlyWithTheLease(t *testing.T) {
	const bot, appTok = "xoxb-lease-test-0000-s3cr3t", "xapp-1-A0APP-0001-s3cr3t"
	fake, err := fakeapi.NewSlack(bot)
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	fake.SocketMode(appTok)
	env := map[string]string{"SLACK_TOKEN": bot, "SLACK_CHANNEL": "#deploys", "SLACK_API_URL": fake.APIURL,
		"SLACK_APP_TOKEN": appTok, "SLACK_APPROVERS": "U0ALICE"}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := New(cfg, Options{Stderr: io.Discard})
	var held atomic.Bool
	a.Pipeline = &deploy.Pipeline{Acting: held.Load, Log: a.Log}
	a.listenSlack(t.Context())
	defer a.Close()
	within := func(d time.Duration, what string, ok func() bool) {
		t.Helper()
		for end := time.Now().Add(d); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%s: not within %s", what, d)
			}
		}
	}
	// Standing by for three of the listener's looks at the lease.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if n := fake.Connections(); n != 0 {
			t.Fatalf("%d Socket Mode connections while standing by, want none", n)
		}
	}
	held.Store(true)
	within(5*time.Second, "connected once the lease is held", fake.Connected)
	held.Store(false)
	within(5*time.Second, "disconnected once the lease is lost", func() bool { return !fake.Connected() })
	held.Store(true)
	within(5*time.Second, "connected again with the lease back", fake.Connected)
	if n := fake.Connections(); n != 2 {
		t.Errorf("%d connections opened, want 2 (one per time the lease was held)", n)
	}
}
