package fakeapi

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// SlackCall is one request the fake Slack received.
type SlackCall struct {
	// Method is the Web API method ("chat.postMessage", "chat.update",
	// "auth.test") or "webhook" for the incoming webhook.
	Method   string
	Channel  string // as sent; see SlackMessage for the resolved ID
	TS       string // chat.update: the message edited; chat.postMessage: the ts given to the new message
	ThreadTS string
	User     string // chat.postEphemeral: whom the message is shown to
	Text     string
	Blocks   json.RawMessage
	At       time.Time
	// Status and Error are the HTTP status and Slack error code of the
	// answer; a call that was accepted has 200 and "".
	Status int
	Error  string
}

// Accepted reports whether the fake did what the call asked.
func (c SlackCall) Accepted() bool { return c.Status == http.StatusOK && c.Error == "" }

// Content is the call's text and blocks together, for searching.
func (c SlackCall) Content() string { return c.Text + "\n" + string(c.Blocks) }

// Slack is a fake Slack: the Web API methods auth.test, chat.postMessage,
// chat.update and chat.postEphemeral under APIURL, one incoming webhook
// at WebhookURL and, once SocketMode is called, apps.connections.open and
// the Socket Mode WebSocket it hands out (socket.go).
type Slack struct {
	// APIURL is the Web API base, ending in "/" as slack-go wants it.
	APIURL string
	// WebhookURL is the incoming webhook; its path is the secret part.
	WebhookURL string

	token    string
	channels map[string]string // name (without #) and ID -> ID
	srv      *server
	once     once

	mu     sync.Mutex
	calls  []SlackCall
	faults faults
	seq    int
	sock   socket // guarded by mu
}

// NewSlack starts a fake Slack that accepts token and knows one channel,
// "deploys", with ID C0DEPLOYS.
func NewSlack(token string) (*Slack, error) {
	secret := make([]byte, 12)
	_, _ = rand.Read(secret)
	s := &Slack{token: token, faults: faults{},
		channels: map[string]string{"deploys": "C0DEPLOYS", "C0DEPLOYS": "C0DEPLOYS"}}
	webhookPath := "/services/T0FAKE/B0FAKE/" + hex.EncodeToString(secret)
	mux := http.NewServeMux()
	mux.HandleFunc("/api/{method}", s.api)
	mux.HandleFunc("/link/", s.serveSocket)
	mux.HandleFunc(webhookPath, s.webhook)
	mux.HandleFunc("/services/", func(w http.ResponseWriter, r *http.Request) {
		s.record(SlackCall{Method: "webhook", At: time.Now(), Status: http.StatusNotFound, Error: "no_service"})
		http.Error(w, "no_service", http.StatusNotFound)
	})
	srv, err := serve(mux)
	if err != nil {
		return nil, err
	}
	s.srv = srv
	s.APIURL = srv.url + "/api/"
	s.WebhookURL = srv.url + webhookPath
	return s, nil
}

// Close makes the fake unreachable, like Slack down.
func (s *Slack) Close() { s.once.close(s.srv.close) }

// RateLimit answers the next n calls of method ("chat.postMessage",
// "chat.update", "auth.test", "webhook") with 429 and Retry-After.
func (s *Slack) RateLimit(method string, n int, retryAfter time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[method] = &fault{n: n, status: http.StatusTooManyRequests, retryAfter: retryAfter}
}

// Fail answers the next n calls of method with an HTTP status (a 5xx, say).
func (s *Slack) Fail(method string, n, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[method] = &fault{n: n, status: status}
}

// Calls returns every call received so far, rejected ones included.
func (s *Slack) Calls() []SlackCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// Accepted returns the calls the fake acted on, except auth.test.
func (s *Slack) Accepted() []SlackCall {
	var out []SlackCall
	for _, c := range s.Calls() {
		if c.Accepted() && c.Method != "auth.test" {
			out = append(out, c)
		}
	}
	return out
}

func (s *Slack) record(c SlackCall) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, c)
}

// api serves one Web API method the way Slack does: HTTP 200 with
// {"ok":false,"error":…} for every problem except transport-level ones.
func (s *Slack) api(w http.ResponseWriter, r *http.Request) {
	method := r.PathValue("method")
	c := SlackCall{Method: method, At: time.Now(), Status: http.StatusOK}
	answer := func(status int, body map[string]any) {
		c.Status = status
		if ok, _ := body["ok"].(bool); !ok {
			c.Error, _ = body["error"].(string)
		}
		s.record(c)
		writeJSON(w, status, body)
	}
	fail := func(code string) { answer(http.StatusOK, map[string]any{"ok": false, "error": code}) }

	if r.Method != http.MethodPost {
		answer(http.StatusMethodNotAllowed, map[string]any{"ok": false, "error": "method_not_allowed"})
		return
	}
	if method == "apps.connections.open" {
		// The one method that takes the app-level token, and only it, in
		// the header; slack-go sends no body at all.
		s.mu.Lock()
		app := s.sock.appToken
		s.mu.Unlock()
		switch token := bearer(r); {
		case token == "":
			fail("not_authed")
		case strings.HasPrefix(token, "xox"):
			fail("not_allowed_token_type")
		case app == "" || token != app:
			fail("invalid_auth")
		default:
			answer(http.StatusOK, map[string]any{"ok": true, "url": s.socketURL()})
		}
		return
	}
	p, isJSON, err := params(r)
	if err != nil {
		fail("invalid_form_data")
		return
	}
	c.Channel, c.TS, c.ThreadTS, c.Text, c.User = p["channel"], p["ts"], p["thread_ts"], p["text"], p["user"]
	if b := p["blocks"]; b != "" {
		c.Blocks = json.RawMessage(b)
	}
	s.mu.Lock()
	ft, faulty := s.faults.take(method)
	s.mu.Unlock()
	if faulty {
		c.Status, c.Error = ft.status, "ratelimited"
		if ft.status != http.StatusTooManyRequests {
			c.Error = "fatal_error"
		}
		s.record(c)
		writeFault(w, ft, map[string]any{"ok": false, "error": c.Error})
		return
	}
	// Slack takes the token from the Authorization header, or for a form
	// body from its token field; a JSON body must use the header.
	token := bearer(r)
	if token == "" && !isJSON {
		token = p["token"]
	}
	switch {
	case token == "":
		fail("not_authed")
		return
	case token != s.token:
		fail("invalid_auth")
		return
	}
	switch method {
	case "auth.test":
		answer(http.StatusOK, map[string]any{"ok": true, "url": "https://fake.slack.com/", "team": "Fake",
			"user": "updater", "team_id": "T0FAKE", "user_id": "U0UPDATER", "bot_id": "B0UPDATER"})
	case "chat.postMessage":
		id, ok := s.channels[strings.TrimPrefix(c.Channel, "#")]
		if !ok {
			fail("channel_not_found")
			return
		}
		if msg := checkContent(c); msg != "" {
			fail(msg)
			return
		}
		s.mu.Lock()
		if c.ThreadTS != "" && !s.posted(id, c.ThreadTS) {
			s.mu.Unlock()
			fail("thread_not_found")
			return
		}
		s.seq++
		c.TS = fmt.Sprintf("1700000000.%06d", s.seq)
		s.mu.Unlock()
		answer(http.StatusOK, map[string]any{"ok": true, "channel": id, "ts": c.TS,
			"message": map[string]any{"type": "message", "text": c.Text, "ts": c.TS, "thread_ts": c.ThreadTS}})
	case "chat.postEphemeral":
		id, ok := s.channels[strings.TrimPrefix(c.Channel, "#")]
		switch {
		case !ok:
			fail("channel_not_found")
			return
		case c.User == "":
			fail("user_not_in_channel")
			return
		}
		if msg := checkContent(c); msg != "" {
			fail(msg)
			return
		}
		answer(http.StatusOK, map[string]any{"ok": true, "channel": id, "message_ts": fmt.Sprintf("1700000001.%06d", time.Now().Nanosecond()/1000)})
	case "chat.update":
		// Unlike chat.postMessage, chat.update wants the channel ID: the
		// one chat.postMessage answered with.
		if c.Channel == "" || s.channels[c.Channel] != c.Channel {
			fail("channel_not_found")
			return
		}
		if c.TS == "" {
			fail("message_not_found")
			return
		}
		if msg := checkContent(c); msg != "" {
			fail(msg)
			return
		}
		s.mu.Lock()
		found := s.posted(c.Channel, c.TS)
		s.mu.Unlock()
		if !found {
			fail("message_not_found")
			return
		}
		answer(http.StatusOK, map[string]any{"ok": true, "channel": c.Channel, "ts": c.TS, "text": c.Text})
	default:
		answer(http.StatusNotFound, map[string]any{"ok": false, "error": "unknown_method"})
	}
}

// posted reports whether a message ts was posted to channel ID id.
// The caller holds s.mu.
func (s *Slack) posted(id, ts string) bool {
	for _, c := range s.calls {
		if c.Method == "chat.postMessage" && c.Accepted() && c.TS == ts && s.channels[strings.TrimPrefix(c.Channel, "#")] == id {
			return true
		}
	}
	return false
}

// checkContent is Slack's rule that a message has text or blocks, and
// that blocks, when given, are a JSON array.
func checkContent(c SlackCall) string {
	if len(c.Blocks) > 0 {
		var blocks []map[string]any
		if json.Unmarshal(c.Blocks, &blocks) != nil {
			return "invalid_blocks"
		}
		for _, b := range blocks {
			if _, ok := b["type"].(string); !ok {
				return "invalid_blocks"
			}
		}
		return ""
	}
	if strings.TrimSpace(c.Text) == "" {
		return "no_text"
	}
	return ""
}

// webhook serves the incoming webhook: plain-text answers, 400 for a bad
// payload, as Slack's hooks do.
func (s *Slack) webhook(w http.ResponseWriter, r *http.Request) {
	c := SlackCall{Method: "webhook", At: time.Now(), Status: http.StatusOK}
	answer := func(status int, body string) {
		c.Status = status
		if status != http.StatusOK {
			c.Error = body
		}
		s.record(c)
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}
	if r.Method != http.MethodPost {
		answer(http.StatusMethodNotAllowed, "invalid_method")
		return
	}
	s.mu.Lock()
	ft, faulty := s.faults.take("webhook")
	s.mu.Unlock()
	if faulty {
		c.Status, c.Error = ft.status, "rate_limited"
		s.record(c)
		if ft.retryAfter > 0 {
			w.Header().Set("Retry-After", fmt.Sprint(max(1, int(ft.retryAfter/time.Second))))
		}
		http.Error(w, c.Error, ft.status)
		return
	}
	var msg struct {
		Text   string          `json:"text"`
		Blocks json.RawMessage `json:"blocks"`
	}
	if err := json.NewDecoder(r.Body).Decode(&msg); err != nil {
		answer(http.StatusBadRequest, "invalid_payload")
		return
	}
	c.Text, c.Blocks = msg.Text, msg.Blocks
	if string(c.Blocks) == "null" {
		c.Blocks = nil
	}
	if e := checkContent(c); e != "" {
		answer(http.StatusBadRequest, e)
		return
	}
	answer(http.StatusOK, "ok")
}
