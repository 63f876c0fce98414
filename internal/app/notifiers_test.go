package app

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify/webhook"
)

// The webhook and a URL notifier configured together each get a deploy's
// end, the webhook's post signed; the updater's secrets are in neither.
func TestNotifiersWebhookAndURLs(t *testing.T) {
	const secret = "0123456789abcdef-notify-s3cr3t"
	var mu sync.Mutex
	var posts []webhook.Body
	var texts []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case "/hook":
			var b webhook.Body
			if !webhook.Verify(secret, body, r.Header.Get(webhook.HeaderSignature)) || json.Unmarshal(body, &b) != nil {
				http.Error(w, "bad signature", http.StatusUnauthorized)
				return
			}
			posts = append(posts, b)
		case "/deploys": // ntfy's topic
			texts = append(texts, string(body))
			io.WriteString(w, `{"id":"1","event":"message","topic":"deploys"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	env := map[string]string{
		"UPDATER_NOTIFY_WEBHOOK_URL":    srv.URL + "/hook",
		"UPDATER_NOTIFY_WEBHOOK_SECRET": secret,
		"UPDATER_NOTIFY_URLS":           "ntfy://" + host + "/deploys?scheme=http",
		"UPDATER_API_TOKEN":             "0123456789abcdef-api-t0ken",
	}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := New(cfg, Options{Stderr: io.Discard})
	d, err := a.notifiers(t.Context())
	if err != nil || d == nil {
		t.Fatalf("notifiers: %v, %v", d, err)
	}
	d.Report(deploy.Event{Kind: deploy.Failed, Phase: deploy.PhaseMigrate, Reason: "migrate: exit 1: token 0123456789abcdef-api-t0ken",
		Release: deploy.Release{ID: "d1", ServiceName: "web", Ref: "r/web:1", To: "sha256:bbbbbbbbbbbbbbbb"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(posts) != 1 || len(texts) != 1 {
		t.Fatalf("%d webhook posts and %d ntfy messages, want one each", len(posts), len(texts))
	}
	if posts[0].Kind != "failed" || posts[0].Deploy.Service != "web" {
		t.Errorf("webhook post %+v", posts[0])
	}
	for _, s := range []string{posts[0].Reason, texts[0]} {
		if strings.Contains(s, "api-t0ken") || !strings.Contains(s, "<redacted>") {
			t.Errorf("the API token is not redacted: %q", s)
		}
	}
}

// A URL shoutrrr does not take stops the start, and the error names the
// entry, not its token.
func TestNotifiersBadURL(t *testing.T) {
	cfg := config.Config{Notify: config.Notify{URLs: []string{"ntfy://ntfy.example/t", "discord://s3cr3t-t0ken"}}}
	_, err := New(cfg, Options{Stderr: io.Discard}).notifiers(t.Context())
	if err == nil || !strings.Contains(err.Error(), "UPDATER_NOTIFY_URLS entry 2") || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("err %v, want one about entry 2 without its token", err)
	}
}
