package fakeapi

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

// apps.connections.open takes the app-level token only, and the URL it
// answers opens one connection, which starts with hello.
func TestSlackSocketModeChecks(t *testing.T) {
	const app = "xapp-1-A0FAKE-token"
	s, err := NewSlack(slackToken)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, body, _ := do(t, s.APIURL, req{method: "POST", path: "apps.connections.open", auth: "Bearer " + app}); slackError(t, body) != "invalid_auth" {
		t.Errorf("before SocketMode: %s, want invalid_auth", body)
	}
	s.SocketMode(app)
	for _, tt := range []struct{ auth, want string }{
		{"", "not_authed"},
		{"Bearer " + slackToken, "not_allowed_token_type"},
		{"Bearer xapp-1-other", "invalid_auth"},
	} {
		if _, body, _ := do(t, s.APIURL, req{method: "POST", path: "apps.connections.open", auth: tt.auth}); slackError(t, body) != tt.want {
			t.Errorf("auth %q: %s, want %s", tt.auth, body, tt.want)
		}
	}
	_, body, _ := do(t, s.APIURL, req{method: "POST", path: "apps.connections.open", auth: "Bearer " + app})
	var open struct {
		OK  bool   `json:"ok"`
		URL string `json:"url"`
	}
	if err := json.Unmarshal([]byte(body), &open); err != nil || !open.OK || !strings.HasPrefix(open.URL, "ws://127.0.0.1:") {
		t.Fatalf("apps.connections.open: %s", body)
	}
	ws, _, err := websocket.DefaultDialer.Dial(open.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	var hello map[string]any
	if err := ws.ReadJSON(&hello); err != nil || hello["type"] != "hello" {
		t.Fatalf("first message %v, %v; want hello", hello, err)
	}
	if _, resp, err := websocket.DefaultDialer.Dial(open.URL, nil); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the URL opened a second connection: %v", err)
	}
	if _, err := s.Press(Press{User: "U1", MessageTS: "1700000000.000001", ActionID: "x"}); err == nil {
		t.Error("a press on a message never posted was sent")
	}
}
