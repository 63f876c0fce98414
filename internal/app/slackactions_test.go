package app

import (
	"context"
	"io"
	"strings"
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
