package slack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	slackgo "github.com/slack-go/slack"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify/fakeapi"
)

const appToken = "xapp-1-A0TEST-0000-secret"

// decisions is a fake Decisions: it counts calls and answers as told.
type decisions struct {
	mu        sync.Mutex
	approves  []string
	rejects   []string
	rollbacks []deploy.RollbackRequest
	decided   map[string]bool
	rollErr   error
	done      chan deploy.Event
}

var _ Decisions = (*decisions)(nil)

func (d *decisions) Approve(_ context.Context, id string) (deploy.Approval, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.approves = append(d.approves, id)
	if d.decided[id] {
		return deploy.Approval{}, fmt.Errorf("deploy %s is approved: %w", id, deploy.ErrDecided)
	}
	if d.decided == nil {
		d.decided = map[string]bool{}
	}
	d.decided[id] = true
	return deploy.Approval{ID: id, ServiceName: "shop_web", To: "sha256:" + strings.Repeat("b", 64), State: deploy.ApprovalApproved}, nil
}

func (d *decisions) Reject(_ context.Context, id string) (deploy.Approval, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rejects = append(d.rejects, id)
	return deploy.Approval{ID: id, ServiceName: "shop_web", To: "sha256:" + strings.Repeat("b", 64), State: deploy.ApprovalRejected}, nil
}

func (d *decisions) StartRollback(_ context.Context, req deploy.RollbackRequest) (deploy.Rolling, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rollbacks = append(d.rollbacks, req)
	if d.rollErr != nil {
		return deploy.Rolling{}, d.rollErr
	}
	rel := deploy.Release{ID: "r1", ServiceName: req.Service, From: "sha256:" + strings.Repeat("b", 64), To: req.To, Rollback: true, By: req.By}
	return deploy.Rolling{Release: rel, Done: d.done}, nil
}

func (d *decisions) calls() (approves, rejects []string, rollbacks []deploy.RollbackRequest) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.approves), slices.Clone(d.rejects), slices.Clone(d.rollbacks)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// listen starts a Listener against fake, stopped at the test's end.
func listen(t *testing.T, fake *fakeapi.Slack, d Decisions, approvers ...string) {
	t.Helper()
	l := NewListener(ListenerConfig{Token: token, AppToken: appToken, APIURL: fake.APIURL, Approvers: approvers,
		Decisions: d, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitUntil(t, "the socket connected", fake.Connected)
}

// pendingMessage has the Bot post a pending approval and returns its ts.
func pendingMessage(t *testing.T, fake *fakeapi.Slack, id string) string {
	t.Helper()
	b := NewBot(BotConfig{Token: token, Channel: "#deploys", APIURL: fake.APIURL, Buttons: true})
	rel := release()
	rel.ID = id
	notifyAll(t, b, deploy.Event{Kind: deploy.Pending, Release: rel, Reason: "waits for approval until 2026-12-02T18:00:00Z"})
	for _, c := range fake.Accepted() {
		if c.Method == "chat.postMessage" && strings.Contains(c.Content(), "approval "+id) {
			return c.TS
		}
	}
	t.Fatalf("no pending message for %s: %v", id, methods(fake.Accepted()))
	return ""
}

func replies(fake *fakeapi.Slack, ts string) []string {
	var out []string
	for _, c := range fake.Accepted() {
		if c.Method == "chat.postMessage" && c.ThreadTS == ts {
			out = append(out, c.Text)
		}
	}
	return out
}

func ephemerals(fake *fakeapi.Slack) []fakeapi.SlackCall {
	var out []fakeapi.SlackCall
	for _, c := range fake.Accepted() {
		if c.Method == "chat.postEphemeral" {
			out = append(out, c)
		}
	}
	return out
}

// Only an approver's press acts; anyone else's is refused to them alone
// (an ephemeral message) and decides nothing. Every press is acked at
// once, and the outcome is posted in the thread, naming who pressed.
func TestListenerApproverOnly(t *testing.T) {
	fake := newSlack(t)
	fake.SocketMode(appToken)
	d := &decisions{}
	listen(t, fake, d, "U0ALICE")
	ts := pendingMessage(t, fake, "ap1")

	if _, err := fake.Press(fakeapi.Press{User: "U0MALLORY", MessageTS: ts, ActionID: ActionApprove}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the refusal", func() bool { return len(ephemerals(fake)) == 1 })
	if e := ephemerals(fake)[0]; e.User != "U0MALLORY" || !strings.Contains(e.Text, "SLACK_APPROVERS") {
		t.Errorf("refusal to %s: %q", e.User, e.Text)
	}
	if a, _, _ := d.calls(); len(a) != 0 {
		t.Fatalf("a non-approver's press approved %v", a)
	}

	if _, err := fake.Press(fakeapi.Press{User: "U0ALICE", MessageTS: ts, ActionID: ActionApprove}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the approval's reply", func() bool { return len(replies(fake, ts)) == 1 })
	if a, _, _ := d.calls(); !slices.Equal(a, []string{"ap1"}) {
		t.Fatalf("approved %v, want [ap1]", a)
	}
	if r := replies(fake, ts)[0]; !strings.Contains(r, "<@U0ALICE> approved deploy ap1") {
		t.Errorf("reply %q does not say who approved", r)
	}
	// The buttons are gone from the message, which says who decided.
	waitUntil(t, "the message edited", func() bool {
		for _, c := range fake.Accepted() {
			if c.Method == "chat.update" && c.TS == ts {
				return strings.Contains(c.Content(), `Approved by \u003c@U0ALICE\u003e`) && !strings.Contains(c.Content(), ActionApprove)
			}
		}
		return false
	})
	// A second approver pressing the old button (a client that had not
	// refreshed) hears who decided; nothing is decided twice.
	if _, err := fake.Press(fakeapi.Press{User: "U0ALICE", MessageTS: ts, ActionID: ActionReject}); !errors.Is(err, fakeapi.ErrNoButton) {
		t.Fatalf("the edited message still has its buttons: %v", err)
	}
	for _, a := range fake.Acks() {
		if a.Delay > 3*time.Second {
			t.Errorf("ack of %s took %s, more than Slack's 3 s", a.EnvelopeID, a.Delay)
		}
	}
	if n := len(fake.Acks()); n != 2 {
		t.Errorf("%d acks, want one per press (2)", n)
	}
}

// An envelope sent again (its ack lost with a dropped connection) is
// acked again but applied once; the connection comes back by itself.
func TestListenerDedupesAcrossReconnects(t *testing.T) {
	fake := newSlack(t)
	fake.SocketMode(appToken)
	d := &decisions{}
	listen(t, fake, d, "U0ALICE")
	ts := pendingMessage(t, fake, "ap2")

	env, err := fake.Press(fakeapi.Press{User: "U0ALICE", MessageTS: ts, ActionID: ActionReject})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the first ack", func() bool { return len(fake.Acks()) == 1 })
	fake.DropSocket()
	waitUntil(t, "a second connection", func() bool { return fake.Connections() == 2 && fake.Connected() })
	if err := fake.Resend(env); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the second ack", func() bool { return len(fake.Acks()) == 2 })
	if a := fake.Acks(); a[1].EnvelopeID != env || a[1].Conn != 2 {
		t.Errorf("second ack %+v, want %s on connection 2", a[1], env)
	}
	waitUntil(t, "the reply", func() bool { return len(replies(fake, ts)) >= 1 })
	// A press after the repeat, acted on, shows the repeat was not: the
	// listener takes envelopes in order.
	ts3 := pendingMessage(t, fake, "ap3")
	if _, err := fake.Press(fakeapi.Press{User: "U0ALICE", MessageTS: ts3, ActionID: ActionReject}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the later press answered", func() bool { return len(replies(fake, ts3)) == 1 })
	if _, r, _ := d.calls(); !slices.Equal(r, []string{"ap2", "ap3"}) {
		t.Fatalf("rejected %v, want [ap2 ap3], each once", r)
	}
	if n := len(replies(fake, ts)); n != 1 {
		t.Errorf("%d thread replies, want 1: %q", n, replies(fake, ts))
	}
}

func firstPost(t *testing.T, fake *fakeapi.Slack) string {
	t.Helper()
	for _, c := range fake.Accepted() {
		if c.Method == "chat.postMessage" {
			return c.TS
		}
	}
	t.Fatal("nothing posted")
	return ""
}

func edited(fake *fakeapi.Slack, ts string) bool {
	for _, c := range fake.Accepted() {
		if c.Method == "chat.update" && c.TS == ts {
			return true
		}
	}
	return false
}

// Roll back on a finished deploy's message asks for a rollback of that
// service to the digest the deploy replaced, by the presser; the outcome
// follows in the thread; a second press does not roll back again.
func TestListenerRollback(t *testing.T) {
	fake := newSlack(t)
	fake.SocketMode(appToken)
	d := &decisions{done: make(chan deploy.Event, 1)}
	listen(t, fake, d, "U0ALICE", "U0BOB")
	b := NewBot(BotConfig{Token: token, Channel: "#deploys", APIURL: fake.APIURL, Buttons: true})
	rel := release()
	notifyAll(t, b, deploy.Event{Kind: deploy.Started, Release: rel},
		deploy.Event{Kind: deploy.Succeeded, Release: rel, Phase: deploy.PhaseRollout, Duration: time.Minute})
	ts := firstPost(t, fake)

	if _, err := fake.Press(fakeapi.Press{User: "U0ALICE", MessageTS: ts, ActionID: ActionRollback}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the rollback started", func() bool { return len(replies(fake, ts)) == 1 })
	_, _, rb := d.calls()
	if want := []deploy.RollbackRequest{{Service: "shop_web", To: rel.From, By: "slack:U0ALICE"}}; !slices.Equal(rb, want) {
		t.Fatalf("rollbacks %+v, want %+v", rb, want)
	}
	if r := replies(fake, ts)[0]; !strings.Contains(r, "<@U0ALICE> asked for a roll back of *shop_web*: started") {
		t.Errorf("reply %q", r)
	}
	if _, err := fake.Press(fakeapi.Press{User: "U0BOB", MessageTS: ts, ActionID: ActionRollback}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the second press answered", func() bool { return len(replies(fake, ts)) == 2 })
	if r := replies(fake, ts)[1]; !strings.Contains(r, "already asked for by <@U0ALICE>") {
		t.Errorf("second press: %q", r)
	}
	d.done <- deploy.Event{Kind: deploy.Succeeded}
	waitUntil(t, "the outcome", func() bool { return len(replies(fake, ts)) == 3 })
	if r := replies(fake, ts)[2]; !strings.Contains(r, "succeeded") || !strings.Contains(r, "not deployed again until its tag moves") {
		t.Errorf("outcome: %q", r)
	}
	if _, _, rb := d.calls(); len(rb) != 1 {
		t.Errorf("%d rollbacks started, want 1", len(rb))
	}
}

// A rollback the updater refuses (no earlier success, a deploy running)
// says why and changes nothing; a later press may try again.
func TestListenerRollbackRefused(t *testing.T) {
	fake := newSlack(t)
	fake.SocketMode(appToken)
	d := &decisions{rollErr: fmt.Errorf("roll back shop_web: %w", deploy.ErrBusy)}
	listen(t, fake, d, "U0ALICE")
	b := NewBot(BotConfig{Token: token, Channel: "#deploys", APIURL: fake.APIURL, Buttons: true})
	rel := release()
	notifyAll(t, b, deploy.Event{Kind: deploy.Started, Release: rel}, deploy.Event{Kind: deploy.Succeeded, Release: rel})
	ts := firstPost(t, fake)
	for i := 1; i <= 2; i++ {
		if _, err := fake.Press(fakeapi.Press{User: "U0ALICE", MessageTS: ts, ActionID: ActionRollback}); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the refusal in the thread", func() bool { return len(replies(fake, ts)) == i })
		if r := replies(fake, ts)[i-1]; !strings.Contains(r, "not started") || !strings.Contains(r, "was not changed") {
			t.Errorf("press %d: %q", i, r)
		}
	}
	if _, _, rb := d.calls(); len(rb) != 2 {
		t.Errorf("%d rollbacks asked for, want 2 (a refusal claims nothing)", len(rb))
	}
}

// An app token Slack refuses stops the listener with ErrRejected, and the
// token is in no error.
func TestListenerRejectedAppToken(t *testing.T) {
	fake := newSlack(t)
	fake.SocketMode("xapp-1-A0TEST-other")
	l := NewListener(ListenerConfig{Token: token, AppToken: appToken, APIURL: fake.APIURL, Approvers: []string{"U0ALICE"},
		Decisions: &decisions{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := l.Run(ctx)
	if !errors.Is(err, ErrRejected) {
		t.Fatalf("Run: %v, want ErrRejected", err)
	}
	if strings.Contains(err.Error(), appToken) || strings.Contains(err.Error(), token) {
		t.Errorf("error shows a token: %v", err)
	}
}

func TestMayPressAndFirst(t *testing.T) {
	l := NewListener(ListenerConfig{Approvers: []string{"U0ALICE", "W0GRID"}})
	for user, want := range map[string]bool{"U0ALICE": true, "W0GRID": true, "U0MALLORY": false, "": false, "u0alice": false} {
		if got := l.mayPress(user); got != want {
			t.Errorf("mayPress(%q) = %v, want %v", user, got, want)
		}
	}
	now := time.Unix(1700000000, 0)
	l.now = func() time.Time { return now }
	if !l.first("e1") || l.first("e1") || !l.first("e2") {
		t.Fatal("first: a new envelope is first once")
	}
	now = now.Add(keepSeen + time.Second)
	if !l.first("e3") || len(l.seen) != 1 {
		t.Errorf("old envelope IDs kept: %v", l.seen)
	}
}

// Which finished deploys get a Roll back button.
func TestRollbackable(t *testing.T) {
	rel := release()
	asked := rel
	asked.Rollback = true
	for _, tt := range []struct {
		name string
		e    deploy.Event
		want bool
	}{
		{"succeeded", deploy.Event{Kind: deploy.Succeeded, Release: rel}, true},
		{"failed rollout, not rolled back", deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollout}, true},
		{"failed rollback", deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollback}, true},
		{"rolled back already", deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollout, RolledBack: true}, false},
		{"failed before the service changed", deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseMigrate}, false},
		{"a rollback a person asked for", deploy.Event{Kind: deploy.Succeeded, Release: asked}, false},
		{"not finished", deploy.Event{Kind: deploy.Started, Release: rel}, false},
		// The updater wrote the old digest back: nothing to undo.
		{"failed canary, rolled back", deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseCanary, RolledBack: true}, false},
		// Someone else's write took the service over: not this deploy's to undo.
		{"canary superseded", deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseCanary}, false},
	} {
		if got := rollbackable(tt.e); got != tt.want {
			t.Errorf("%s: rollbackable = %v, want %v", tt.name, got, tt.want)
		}
	}
}

type button struct {
	ActionID string `json:"action_id"`
	Value    string `json:"value"`
}

func buttonsOf(t *testing.T, blocks []slackgo.Block) []button {
	t.Helper()
	raw, _ := json.Marshal(blocks)
	var bs []struct {
		Type     string   `json:"type"`
		Elements []button `json:"elements"`
	}
	if err := json.Unmarshal(raw, &bs); err != nil {
		t.Fatal(err)
	}
	var out []button
	for _, b := range bs {
		if b.Type == "actions" {
			out = append(out, b.Elements...)
		}
	}
	return out
}

// A pending approval's message: Approve and Reject carrying its ID with
// buttons; without them, how else to decide, and the status page.
func TestPendingMessage(t *testing.T) {
	rel := release()
	rel.ID = "ap9"
	e := deploy.Event{Kind: deploy.Pending, Release: rel, Reason: "waits for approval until 2026-12-02T18:00:00Z"}
	text, blocks := pending(e, true, "")
	if got, want := buttonsOf(t, blocks), []button{{ActionApprove, "ap9"}, {ActionReject, "ap9"}}; !slices.Equal(got, want) {
		t.Errorf("buttons %v, want %v", got, want)
	}
	if !strings.Contains(text, "shop_web: a new version waits for approval") {
		t.Errorf("text %q", text)
	}
	text, blocks = pending(e, false, "https://updater.example.com/")
	if b := buttonsOf(t, blocks); len(b) != 0 {
		t.Errorf("buttons without Socket Mode: %v", b)
	}
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(blocks)
	raw := sb.String()
	for _, want := range []string{"`updater approve ap9`", "<https://updater.example.com/|", "until 2026-12-02T18:00:00Z"} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("blocks lack %q: %s", want, raw)
		}
	}
	if !strings.Contains(text, "updater approve ap9") {
		t.Errorf("fallback text lacks the command: %q", text)
	}
}

// The Bot posts a pending approval once, and puts Roll back only on the
// outcomes that may want one, only with buttons on.
func TestBotButtons(t *testing.T) {
	rel := release()
	for _, tt := range []struct {
		name    string
		buttons bool
		final   deploy.Event
		want    []button
	}{
		{"succeeded", true, deploy.Event{Kind: deploy.Succeeded, Release: rel}, []button{{ActionRollback,
			`{"d":"d1","s":"shop_web","to":"` + rel.From + `"}`}}},
		{"succeeded, no Socket Mode", false, deploy.Event{Kind: deploy.Succeeded, Release: rel}, nil},
		{"rolled back", true, deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollout, RolledBack: true}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fake := newSlack(t)
			b := NewBot(BotConfig{Token: token, Channel: "#deploys", APIURL: fake.APIURL, Buttons: tt.buttons})
			notifyAll(t, b, deploy.Event{Kind: deploy.Started, Release: rel}, tt.final)
			var calls []fakeapi.SlackCall
			for _, c := range fake.Accepted() {
				if c.ThreadTS == "" {
					calls = append(calls, c)
				}
			}
			if got := buttonsOf(t, blocksOf(t, calls[len(calls)-1].Blocks)); !slices.Equal(got, tt.want) {
				t.Errorf("buttons %v, want %v", got, tt.want)
			}
			if got := buttonsOf(t, blocksOf(t, calls[0].Blocks)); len(got) != 0 {
				t.Errorf("a deploy under way has buttons: %v", got)
			}
		})
	}
}

func blocksOf(t *testing.T, raw json.RawMessage) []slackgo.Block {
	t.Helper()
	var bs slackgo.Blocks
	if err := json.Unmarshal(raw, &bs); err != nil {
		t.Fatal(err)
	}
	return bs.BlockSet
}

// The next deploy of a service takes Roll back off the message of the
// one before: only what runs now may be undone from Slack.
func TestBotRetiresOldRollbackButton(t *testing.T) {
	fake := newSlack(t)
	b := NewBot(BotConfig{Token: token, Channel: "#deploys", APIURL: fake.APIURL, Buttons: true})
	first := release()
	notifyAll(t, b, deploy.Event{Kind: deploy.Started, Release: first}, deploy.Event{Kind: deploy.Succeeded, Release: first})
	ts := firstPost(t, fake)
	next := release()
	next.ID, next.From, next.To = "d2", first.To, "sha256:"+strings.Repeat("c", 64)
	notifyAll(t, b, deploy.Event{Kind: deploy.Started, Release: next})
	var last fakeapi.SlackCall
	for _, c := range fake.Accepted() {
		if c.TS == ts && c.ThreadTS == "" {
			last = c
		}
	}
	if last.Method != "chat.update" || len(buttonsOf(t, blocksOf(t, last.Blocks))) != 0 || !strings.Contains(last.Content(), "deploy succeeded") {
		t.Fatalf("the first deploy's message, last sent: %s %s", last.Method, last.Content())
	}
	// The new deploy's own message keeps its button when it ends.
	notifyAll(t, b, deploy.Event{Kind: deploy.Succeeded, Release: next})
	calls := fake.Accepted()
	if got := buttonsOf(t, blocksOf(t, calls[len(calls)-1].Blocks)); len(got) != 1 || got[0].ActionID != ActionRollback {
		t.Errorf("the new deploy's final message: buttons %v", got)
	}
}

// Envelopes that are not presses (an app with events or slash commands
// on too) are acked, so Slack does not send them again, and do nothing.
func TestListenerAcksOtherEnvelopes(t *testing.T) {
	fake := newSlack(t)
	fake.SocketMode(appToken)
	d := &decisions{}
	listen(t, fake, d, "U0ALICE")
	ev, err := fake.Send("events_api", map[string]any{"type": "event_callback", "team_id": "T0FAKE", "api_app_id": "A0FAKE",
		"event": map[string]any{"type": "app_mention", "user": "U0ALICE", "text": "<@U0UPDATER> approve", "ts": "1700000000.000100", "channel": "C0DEPLOYS"}})
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := fake.Send("slash_commands", map[string]any{"command": "/deploy", "text": "shop_web", "user_id": "U0ALICE", "channel_id": "C0DEPLOYS"})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "both acked", func() bool {
		got := map[string]bool{}
		for _, a := range fake.Acks() {
			got[a.EnvelopeID] = true
		}
		return got[ev] && got[cmd]
	})
	if a, r, rb := d.calls(); len(a)+len(r)+len(rb) != 0 {
		t.Errorf("an event decided something: %v %v %v", a, r, rb)
	}
}

// An incoming webhook takes no presses: its pending approval says how
// to decide, with no button.
func TestWebhookPending(t *testing.T) {
	fake := newSlack(t)
	w := NewWebhook(fake.WebhookURL)
	rel := release()
	rel.ID = "ap7"
	notifyAll(t, w, deploy.Event{Kind: deploy.Pending, Release: rel, Reason: "waits for approval until 2026-12-02T18:00:00Z"})
	calls := fake.Accepted()
	if len(calls) != 1 || calls[0].Method != "webhook" {
		t.Fatalf("calls %v, want one webhook post", methods(calls))
	}
	if c := calls[0]; !strings.Contains(c.Text, "updater approve ap7") || len(buttonsOf(t, blocksOf(t, c.Blocks))) != 0 {
		t.Errorf("pending post: %s", c.Content())
	}
}
