package fakeapi

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Socket Mode, as Slack speaks it: apps.connections.open, called with the
// app-level token, answers a one-use wss:// URL (ws:// on 127.0.0.1 here);
// on that WebSocket Slack sends {"type":"hello"}, then envelopes
// ({"type":"interactive","envelope_id":…,"payload":…}) that the app must
// acknowledge within 3 s by sending {"envelope_id":…} back, and WebSocket
// pings the app answers. Slack retries an envelope nobody acknowledged.

// Ack is one acknowledgement the fake received.
type Ack struct {
	EnvelopeID string
	Conn       int // which connection it came on, from 1
	At         time.Time
	// Delay is how long after the envelope was sent (its last sending)
	// the ack arrived.
	Delay time.Duration
}

// Press is a person pressing a button on a message the fake holds.
type Press struct {
	User      string // a user ID, U…
	MessageTS string // the message the button is on, as chat.postMessage answered
	ActionID  string
	// EnvelopeID names the envelope; "" makes a new one.
	EnvelopeID string
}

// socket is the fake's Socket Mode state, guarded by Slack.mu.
type socket struct {
	appToken string
	tickets  map[string]bool // URLs handed out and not yet used
	conn     *wsConn         // the live connection, if any
	conns    int             // connections ever opened
	sent     map[string]envelope
	acks     []Ack
}

type envelope struct {
	body []byte
	at   time.Time
	conn int
	n    int // times sent
}

type wsConn struct {
	n    int
	ws   *websocket.Conn
	wmu  sync.Mutex // one writer at a time, as gorilla/websocket requires
	done chan struct{}
}

func (c *wsConn) write(kind int, b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if kind == websocket.PingMessage {
		return c.ws.WriteControl(kind, b, time.Now().Add(5*time.Second))
	}
	return c.ws.WriteMessage(kind, b)
}

// SocketMode turns Socket Mode on, accepting appToken (xapp-…) at
// apps.connections.open.
func (s *Slack) SocketMode(appToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sock.appToken = appToken
}

// socketURL hands out a new one-use WebSocket URL.
func (s *Slack) socketURL() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	ticket := hex.EncodeToString(b)
	s.mu.Lock()
	if s.sock.tickets == nil {
		s.sock.tickets = map[string]bool{}
	}
	s.sock.tickets[ticket] = true
	s.mu.Unlock()
	return "ws" + strings.TrimPrefix(s.srv.url, "http") + "/link/?ticket=" + ticket
}

// pingEvery is how often the fake pings, as Slack does; slack-go's client
// reconnects when 30 s pass without one.
const pingEvery = 2 * time.Second

func (s *Slack) serveSocket(w http.ResponseWriter, r *http.Request) {
	ticket := r.URL.Query().Get("ticket")
	s.mu.Lock()
	ok := s.sock.tickets[ticket]
	delete(s.sock.tickets, ticket)
	s.mu.Unlock()
	if !ok {
		http.Error(w, "invalid ticket", http.StatusUnauthorized)
		return
	}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.sock.conns++
	c := &wsConn{n: s.sock.conns, ws: ws, done: make(chan struct{})}
	old := s.sock.conn
	s.sock.conn = c
	s.mu.Unlock()
	if old != nil {
		// One connection at a time keeps "which connection got it" plain.
		_ = old.ws.Close()
	}
	hello, _ := json.Marshal(map[string]any{"type": "hello", "num_connections": 1,
		"debug_info":      map[string]any{"host": "fake-socket", "approximate_connection_time": 3600},
		"connection_info": map[string]any{"app_id": "A0FAKE"}})
	if c.write(websocket.TextMessage, hello) != nil {
		_ = ws.Close()
		return
	}
	go func() {
		t := time.NewTicker(pingEvery)
		defer t.Stop()
		for {
			select {
			case <-c.done:
				return
			case <-t.C:
				if c.write(websocket.PingMessage, []byte("ping")) != nil {
					return
				}
			}
		}
	}()
	defer close(c.done)
	defer func() {
		s.mu.Lock()
		if s.sock.conn == c {
			s.sock.conn = nil
		}
		s.mu.Unlock()
		_ = ws.Close()
	}()
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			return
		}
		now := time.Now()
		var ack struct {
			EnvelopeID string `json:"envelope_id"`
		}
		if json.Unmarshal(msg, &ack) != nil || ack.EnvelopeID == "" {
			continue // not an ack: Slack ignores it too
		}
		s.mu.Lock()
		a := Ack{EnvelopeID: ack.EnvelopeID, Conn: c.n, At: now}
		if e, ok := s.sock.sent[ack.EnvelopeID]; ok {
			a.Delay = now.Sub(e.at)
		}
		s.sock.acks = append(s.sock.acks, a)
		s.mu.Unlock()
	}
}

// Connections is how many Socket Mode connections were opened so far.
func (s *Slack) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sock.conns
}

// Connected reports whether a Socket Mode connection is open now.
func (s *Slack) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sock.conn != nil
}

// DropSocket closes the live connection at once, without a close frame or
// a disconnect message, as a network failure would.
func (s *Slack) DropSocket() {
	s.mu.Lock()
	c := s.sock.conn
	s.sock.conn = nil
	s.mu.Unlock()
	if c != nil {
		_ = c.ws.UnderlyingConn().Close()
	}
}

// Acks returns the acknowledgements received so far.
func (s *Slack) Acks() []Ack {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sock.acks)
}

// ErrNoButton means a Press named a button the message does not have.
var ErrNoButton = errors.New("no such button on the message")

// Press sends the block_actions envelope Slack sends when p.User presses
// the button p.ActionID on the message p.MessageTS, with the button's
// value and block as the message (its last post or edit) has them. It
// returns the envelope ID. A message without that button is ErrNoButton:
// nobody can press what is not there.
func (s *Slack) Press(p Press) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var msg *SlackCall
	for i := range s.calls {
		c := &s.calls[i]
		if c.Accepted() && c.TS == p.MessageTS && c.ThreadTS == "" && (c.Method == "chat.postMessage" || c.Method == "chat.update") {
			msg = c
		}
	}
	if msg == nil {
		return "", fmt.Errorf("press on message %s: message_not_found", p.MessageTS)
	}
	action, blockID, ok := findButton(msg.Blocks, p.ActionID)
	if !ok {
		return "", fmt.Errorf("press %s on message %s: %w", p.ActionID, p.MessageTS, ErrNoButton)
	}
	action["action_ts"] = fmt.Sprintf("%d.%06d", time.Now().Unix(), time.Now().Nanosecond()/1000)
	action["block_id"] = blockID
	channel := s.channels[strings.TrimPrefix(msg.Channel, "#")]
	var blocks any = json.RawMessage(msg.Blocks)
	payload := map[string]any{
		"type":         "block_actions",
		"team":         map[string]any{"id": "T0FAKE", "domain": "fake"},
		"user":         map[string]any{"id": p.User, "username": strings.ToLower(p.User), "name": strings.ToLower(p.User), "team_id": "T0FAKE"},
		"api_app_id":   "A0FAKE",
		"trigger_id":   "1700000000.1.fake",
		"container":    map[string]any{"type": "message", "message_ts": msg.TS, "channel_id": channel, "is_ephemeral": false},
		"channel":      map[string]any{"id": channel, "name": "deploys"},
		"message":      map[string]any{"type": "message", "ts": msg.TS, "text": msg.Text, "blocks": blocks, "user": "U0UPDATER", "bot_id": "B0UPDATER"},
		"response_url": s.srv.url + "/actions/T0FAKE/1/fake",
		"actions":      []any{action},
	}
	id := p.EnvelopeID
	if id == "" {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		id = "env-" + hex.EncodeToString(b)
	}
	body, err := json.Marshal(map[string]any{"envelope_id": id, "type": "interactive", "payload": payload,
		"accepts_response_payload": false, "retry_attempt": 0, "retry_reason": ""})
	if err != nil {
		return "", err
	}
	if s.sock.sent == nil {
		s.sock.sent = map[string]envelope{}
	}
	s.sock.sent[id] = envelope{body: body}
	return id, s.sendLocked(id)
}

// Send sends an envelope of another type ("events_api", "slash_commands")
// with payload, as Slack does for an app with events or commands on; it
// returns the envelope ID.
func (s *Slack) Send(kind string, payload any) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	id := "env-" + hex.EncodeToString(b)
	body, err := json.Marshal(map[string]any{"envelope_id": id, "type": kind, "payload": payload,
		"accepts_response_payload": false, "retry_attempt": 0, "retry_reason": ""})
	if err != nil {
		return "", err
	}
	if s.sock.sent == nil {
		s.sock.sent = map[string]envelope{}
	}
	s.sock.sent[id] = envelope{body: body}
	return id, s.sendLocked(id)
}

// Resend sends envelope id again, with retry_attempt counted up, as Slack
// does when an ack did not arrive; on the live connection, which may be
// a newer one than the first sending went to.
func (s *Slack) Resend(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.sock.sent[id]
	if !ok {
		return fmt.Errorf("resend %s: never sent", id)
	}
	var m map[string]any
	if err := json.Unmarshal(e.body, &m); err != nil {
		return err
	}
	m["retry_attempt"], m["retry_reason"] = e.n, "timeout"
	e.body, _ = json.Marshal(m)
	s.sock.sent[id] = e
	return s.sendLocked(id)
}

// sendLocked writes envelope id on the live connection. The caller holds
// s.mu.
func (s *Slack) sendLocked(id string) error {
	c := s.sock.conn
	if c == nil {
		return fmt.Errorf("send envelope %s: no Socket Mode connection", id)
	}
	e := s.sock.sent[id]
	e.at, e.conn, e.n = time.Now(), c.n, e.n+1
	s.sock.sent[id] = e
	if err := c.write(websocket.TextMessage, e.body); err != nil {
		return fmt.Errorf("send envelope %s: %w", id, err)
	}
	return nil
}

// findButton finds the button actionID in a message's blocks: a copy of
// its element, and its block's ID.
func findButton(raw json.RawMessage, actionID string) (map[string]any, string, bool) {
	var blocks []struct {
		Type     string           `json:"type"`
		BlockID  string           `json:"block_id"`
		Elements []map[string]any `json:"elements"`
	}
	if json.Unmarshal(raw, &blocks) != nil {
		return nil, "", false
	}
	for _, b := range blocks {
		if b.Type != "actions" {
			continue
		}
		for _, el := range b.Elements {
			if el["type"] == "button" && el["action_id"] == actionID {
				return el, b.BlockID, true
			}
		}
	}
	return nil, "", false
}
