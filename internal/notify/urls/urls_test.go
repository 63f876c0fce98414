package urls_test

import (
	"context"
	"encoding/json"
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
	"github.com/updater-dev/updater/internal/notify/urls"
)

// Services as their APIs are documented, each checking what it is sent
// the way the real one would, and answering as it does.
type service struct {
	mu   sync.Mutex
	got  []message // title and text of each message taken
	errs []string  // what the real service would have refused
	// status, when set, answers each request instead (n from 1).
	status func(n int) int
	n      int
	hold   chan struct{}
}

type message struct{ title, text string }

func (s *service) refuse(w http.ResponseWriter, why string) {
	s.errs = append(s.errs, why)
	http.Error(w, why, http.StatusBadRequest)
}

func (s *service) taken() []message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]message(nil), s.got...)
}

func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.hold != nil {
		<-s.hold
	}
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	if s.status != nil {
		if code := s.status(s.n); code != http.StatusOK {
			http.Error(w, http.StatusText(code), code)
			return
		}
	}
	if r.Method != http.MethodPost {
		s.refuse(w, "method "+r.Method)
		return
	}
	switch {
	// Discord: POST /api/webhooks/{id}/{token}, JSON with content or
	// embeds; 204 without ?wait=true.
	case r.Host == "discord.com":
		var p struct {
			Content string `json:"content"`
			Embeds  []struct{ Title, Description string }
		}
		parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/webhooks/"), "/")
		if len(parts) != 2 || parts[0] != "123456789" || parts[1] != "d1sc0rd-t0ken" || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") ||
			json.Unmarshal(body, &p) != nil || (p.Content == "" && len(p.Embeds) == 0) {
			s.refuse(w, "discord: "+r.URL.Path+" "+string(body))
			return
		}
		m := message{text: p.Content}
		if len(p.Embeds) > 0 {
			m = message{p.Embeds[0].Title, p.Embeds[0].Description}
		}
		s.got = append(s.got, m)
		w.WriteHeader(http.StatusNoContent)
	// Teams: an incoming webhook on <org>.webhook.office.com takes a
	// MessageCard and answers 200 "1".
	case strings.HasSuffix(r.Host, ".webhook.office.com"):
		var p struct {
			Type     string `json:"@type"`
			Title    string
			Sections []struct{ Text string }
		}
		if !strings.HasPrefix(r.URL.Path, "/webhookb2/11111111-2222-3333-4444-555555555555@66666666-7777-8888-9999-000000000000/IncomingWebhook/") ||
			json.Unmarshal(body, &p) != nil || p.Type != "MessageCard" || len(p.Sections) == 0 {
			s.refuse(w, "teams: "+r.URL.Path+" "+string(body))
			return
		}
		s.got = append(s.got, message{p.Title, p.Sections[0].Text})
		io.WriteString(w, "1")
	// Gotify: POST /message with the app token, JSON message; answers
	// with the message stored.
	case r.URL.Path == "/message":
		var p struct {
			Title, Message string
			Priority       int
		}
		if tok := r.URL.Query().Get("token") + r.Header.Get("X-Gotify-Key"); tok != "AgotifyT0ken123" || json.Unmarshal(body, &p) != nil || p.Message == "" {
			s.refuse(w, "gotify: "+r.URL.String()+" "+string(body))
			return
		}
		s.got = append(s.got, message{p.Title, p.Message})
		io.WriteString(w, `{"id":1,"appid":1,"message":"x","title":"x","priority":0,"date":"2026-12-01T09:00:00Z"}`)
	// ntfy: POST /{topic}, the message as the body, its title in a
	// header; answers with the message event.
	case r.URL.Path == "/deploys":
		if len(body) == 0 {
			s.refuse(w, "ntfy: empty message")
			return
		}
		s.got = append(s.got, message{r.Header.Get("Title"), string(body)})
		io.WriteString(w, `{"id":"abc","time":1764579600,"event":"message","topic":"deploys","message":"x"}`)
	default:
		s.refuse(w, "no such endpoint: "+r.Host+r.URL.Path)
	}
}

// route sends every connection, TLS or not, to srv: Discord and Teams
// are reached at their own hosts over HTTPS, and their clients use
// http.DefaultTransport, so the test swaps it for one whose connections
// land on srv unencrypted. The tests of this package do not run in
// parallel.
func route(t *testing.T, srv *httptest.Server) {
	addr := strings.TrimPrefix(srv.URL, "http://")
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	}
	old := http.DefaultTransport
	http.DefaultTransport = &http.Transport{DialContext: dial, DialTLSContext: dial}
	t.Cleanup(func() { http.DefaultTransport = old })
}

func start(t *testing.T) (*service, string) {
	s := &service{}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	route(t, srv)
	return s, strings.TrimPrefix(srv.URL, "http://")
}

const teamsURL = "teams://11111111-2222-3333-4444-555555555555@66666666-7777-8888-9999-000000000000/0123456789abcdef0123456789abcdef/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee/V2t3amsS3cr3t?host=myorg.webhook.office.com"

func urlsFor(host string) map[string]string {
	return map[string]string{
		"discord": "discord://d1sc0rd-t0ken@123456789",
		"teams":   teamsURL,
		"ntfy":    "ntfy://" + host + "/deploys?scheme=http",
		"gotify":  "gotify://" + host + "/AgotifyT0ken123?disabletls=yes",
	}
}

var rel = deploy.Release{ID: "d1", ServiceName: "shop_web", Stack: "shop", Ref: "registry.example/web:1",
	From: "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaa", To: "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbb"}

// Each service gets the message in its own format: the title and the
// line a person reads.
func TestEachServiceFormat(t *testing.T) {
	s, host := start(t)
	e := deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollout, RolledBack: true, Reason: "1 of 2 tasks unhealthy", Duration: 95 * time.Second}
	wantTitle := "Rolled back shop_web"
	wantText := "shop_web rolled back in rollout: 1 of 2 tasks unhealthy. registry.example/web:1 sha256:aaaaaaaaaaaa → sha256:bbbbbbbbbbbb; back on the previous version after 1m35s."
	for _, name := range []string{"discord", "teams", "ntfy", "gotify"} {
		before := len(s.taken())
		n, err := urls.New(urlsFor(host)[name])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n.Name() != name {
			t.Errorf("name %q, want %q", n.Name(), name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = n.Notify(ctx, e)
		cancel()
		if err != nil {
			t.Errorf("%s: %v (refused: %q)", name, err, s.errs)
			continue
		}
		got := s.taken()
		if len(got) != before+1 {
			t.Fatalf("%s: %d messages, want 1 (refused: %q)", name, len(got)-before, s.errs)
		}
		if m := got[len(got)-1]; m.title != wantTitle || m.text != wantText {
			t.Errorf("%s got %q: %q\nwant %q: %q", name, m.title, m.text, wantTitle, wantText)
		}
	}
	if len(s.errs) > 0 {
		t.Errorf("refused: %q", s.errs)
	}
}

func policy() notify.Policy {
	return notify.Policy{Attempts: 3, Timeout: 2 * time.Second, Budget: 10 * time.Second,
		Backoff: 30 * time.Millisecond, MaxBackoff: time.Second, Queue: 16}
}

func dispatch(t *testing.T, rawURL string) *notify.Dispatcher {
	n, err := urls.New(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	d := notify.NewDispatcher(slog.New(slog.DiscardHandler), policy(), notify.Named{Name: n.Name(), Notifier: n})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = d.Close(ctx)
	})
	return d
}

// A deploy is one message, at its end, however many steps and rollout
// counts it reports; a pending approval and an outage with its end are
// one each.
func TestOneMessagePerOutcome(t *testing.T) {
	s, host := start(t)
	d := dispatch(t, urlsFor(host)["ntfy"])
	step := func(ph deploy.Phase, st deploy.StepState) *deploy.Step { return &deploy.Step{Phase: ph, State: st} }
	second := rel
	second.ID = "d2"
	for _, e := range []deploy.Event{
		{Kind: deploy.Started, Release: rel},
		{Kind: deploy.Progress, Release: rel, Step: step(deploy.PhaseBackup, deploy.StepStarted)},
		{Kind: deploy.Progress, Release: rel, Step: step(deploy.PhaseBackup, deploy.StepSucceeded)},
		{Kind: deploy.Progress, Release: rel, Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 1, Total: 2}},
		{Kind: deploy.Progress, Release: rel, Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 2, Total: 2}},
		{Kind: deploy.Succeeded, Release: rel, Phase: deploy.PhaseRollout, Duration: 42 * time.Second},
		{Kind: deploy.Pending, Release: second, Reason: "until 2026-12-02 09:00 UTC"},
		{Kind: deploy.Outage, Part: "registry", Release: deploy.Release{Ref: "registry.example/web:1"}, Reason: "503 Service Unavailable"},
		{Kind: deploy.Recovered, Part: "registry", Release: deploy.Release{Ref: "registry.example/web:1"}},
		{Kind: deploy.Started, Release: second},
		{Kind: deploy.Failed, Release: second, Phase: deploy.PhaseMigrate, Reason: "exit 1"},
	} {
		d.Report(e)
	}
	waitFor(t, "five messages", func() bool { return len(s.taken()) >= 5 })
	var titles []string
	for _, m := range s.taken() {
		titles = append(titles, m.title)
	}
	want := []string{"Deployed shop_web", "Approval needed: shop_web", "Updater: registry failing", "Updater: registry answers", "Deploy failed: shop_web"}
	if strings.Join(titles, "|") != strings.Join(want, "|") {
		t.Errorf("titles %q, want %q; messages %q", titles, want, s.taken())
	}
	if got := s.taken()[4].text; got != "shop_web failed in migrate: exit 1. registry.example/web:1 sha256:aaaaaaaaaaaa → sha256:bbbbbbbbbbbb; the service was not changed." {
		t.Errorf("failed text %q", got)
	}
}

// A 5xx (and no answer) is tried again, a 4xx is not; a service that
// hangs holds no deploy back.
func TestRetriesAndNeverBlocks(t *testing.T) {
	s, host := start(t)
	s.status = func(n int) int {
		if n == 1 {
			return http.StatusBadGateway
		}
		return http.StatusOK
	}
	d := dispatch(t, urlsFor(host)["ntfy"])
	d.Report(deploy.Event{Kind: deploy.Succeeded, Release: rel})
	waitFor(t, "the message after a 502", func() bool { return len(s.taken()) == 1 })

	n, err := urls.New(urlsFor(host)["ntfy"])
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.status = func(int) int { return http.StatusUnauthorized }
	s.mu.Unlock()
	if retry, err := n.Notify(context.Background(), deploy.Event{Kind: deploy.Succeeded, Release: rel}); err == nil || retry {
		t.Errorf("401: retry %v, err %v; want an error not retried", retry, err)
	}
	s.mu.Lock()
	s.status = func(int) int { return http.StatusServiceUnavailable }
	s.mu.Unlock()
	if retry, err := n.Notify(context.Background(), deploy.Event{Kind: deploy.Succeeded, Release: rel}); err == nil || !retry {
		t.Errorf("503: retry %v, err %v; want a retry", retry, err)
	}

	s.mu.Lock()
	s.status, s.hold = nil, make(chan struct{})
	s.mu.Unlock()
	begin := time.Now()
	for range 10 {
		d.Report(deploy.Event{Kind: deploy.Succeeded, Release: rel})
	}
	if took := time.Since(begin); took > 100*time.Millisecond {
		t.Errorf("10 reports to a service that hangs took %s", took)
	}
	close(s.hold)
	waitFor(t, "the ten once it answers", func() bool { return len(s.taken()) == 11 })
}

// No part of a URL that may be a token is in an error: not the URL, not
// its user (Discord's token), path (Gotify's token, Teams' IDs) or query,
// whether the service is down or the URL is wrong.
func TestSecretsNotInErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // every dial through route is refused
	route(t, srv)
	secrets := []string{"d1sc0rd-t0ken", "AgotifyT0ken123", "V2t3amsS3cr3t", "0123456789abcdef0123456789abcdef", "11111111-2222-3333-4444-555555555555"}
	for name, u := range urlsFor(closed) {
		n, err := urls.New(u)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = n.Notify(ctx, deploy.Event{Kind: deploy.Succeeded, Release: rel})
		cancel()
		if err == nil {
			t.Errorf("%s: no error from a closed port", name)
			continue
		}
		for _, s := range secrets {
			if strings.Contains(err.Error(), s) {
				t.Errorf("%s: error shows %q: %v", name, s, err)
			}
		}
	}
	_, err = urls.New("discord://only-a-t0ken-no-id")
	if err == nil || strings.Contains(err.Error(), "only-a-t0ken") {
		t.Errorf("bad URL: %v", err)
	}
	if _, err := urls.New("nosuchservice://s3cr3t@host/x"); err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("unknown service: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The examples docs/notifications.md gives are URLs shoutrrr takes.
func TestDocumentedURLs(t *testing.T) {
	for _, u := range []string{
		"discord://d1sc0rd-t0ken@123456789",
		teamsURL,
		"ntfy://ntfy.sh/deploys",
		"ntfy://user:pass@ntfy.example.com/deploys",
		"gotify://gotify.example.com/AgotifyT0ken123",
		"smtp://user:pass@smtp.example.com:587/?from=updater@example.com&to=ops@example.com",
	} {
		if _, err := urls.New(u); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
}

// A service that does not answer ends the attempt when its context does,
// as one worth another try; the send itself is left to its client.
func TestHangingServiceEndsTheAttempt(t *testing.T) {
	s, host := start(t)
	s.hold = make(chan struct{})
	defer close(s.hold)
	n, err := urls.New(urlsFor(host)["ntfy"])
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	begin := time.Now()
	retry, err := n.Notify(ctx, deploy.Event{Kind: deploy.Succeeded, Release: rel})
	if took := time.Since(begin); err == nil || !retry || took > time.Second {
		t.Errorf("retry %v, err %v after %s; want a retry once the 200ms attempt ended", retry, err, took)
	}
}
