//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/notify/fakeapi"
)

// Slack both ways: the updater opens Socket Mode to the fake Slack in this
// process (no port of its own), the fake presses buttons on the messages
// the updater posted, and what happened is read from Docker.

const slackAppToken = "xapp-1-A0E2E-0000-notasecretbutlooksone"

func slackSocketEnv(s *fakeapi.Slack, approvers string) []string {
	s.SocketMode(slackAppToken)
	addSecret("Slack app-level token", slackAppToken)
	return append(slackBotEnv(s), "SLACK_APP_TOKEN="+slackAppToken, "SLACK_APPROVERS="+approvers)
}

// pendingPost is the message posted for approval id, or a zero call.
func pendingPost(s *fakeapi.Slack, id string) fakeapi.SlackCall {
	for _, c := range s.Accepted() {
		if c.Method == "chat.postMessage" && c.ThreadTS == "" && strings.Contains(c.Content(), "approval "+id) {
			return c
		}
	}
	return fakeapi.SlackCall{}
}

// threadTexts are the replies in the thread of message ts.
func threadTexts(s *fakeapi.Slack, ts string) []string {
	var out []string
	for _, c := range s.Accepted() {
		if c.Method == "chat.postMessage" && c.ThreadTS == ts {
			out = append(out, c.Text)
		}
	}
	return out
}

func anyContains(texts []string, sub string) bool {
	for _, t := range texts {
		if strings.Contains(t, sub) {
			return true
		}
	}
	return false
}

func ackOf(s *fakeapi.Slack, envelope string, conn int) (fakeapi.Ack, bool) {
	for _, a := range s.Acks() {
		if a.EnvelopeID == envelope && (conn == 0 || a.Conn == conn) {
			return a, true
		}
	}
	return fakeapi.Ack{}, false
}

// A pending approval is posted with Approve and Reject; a non-approver's
// press is refused to them alone and deploys nothing; an approver's
// deploys the digest; every press is acked within Slack's 3 s; after a
// dropped WebSocket the updater reconnects, and the press sent again on
// the new connection is not applied twice; Roll back on the finished
// deploy's message returns the service to the previous digest, and the
// newer one is not deployed again.
func TestSlackSocketButtons(t *testing.T) {
	const stack, repo, svc = "e2esock", "e2e/sock", "e2esock_app"
	sl := fakeSlack(t)
	v1 := push(t, repo, "v1")
	app := createService(t, svc, repo, v1, svcOpts{stack: stack, optIn: true,
		labels: map[string]string{"updater.approve": "manual"}})
	u := startUpdater(t, stack, append(slackSocketEnv(sl, "U0ALICE,U0BOB"), "UPDATER_APPROVAL_TIMEOUT=1h")...)
	waitFor(t, 30*time.Second, "the updater's Socket Mode connection", sl.Connected)
	waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })

	// v2 waits for approval, posted with its buttons.
	ver := inspect(t, app).Version.Index
	v2 := push(t, repo, "v2")
	u.waitLog(t, 30*time.Second, 1, "deploy pending", "to_digest", v2)
	id := fmt.Sprint(u.find("deploy pending", "to_digest", v2)["deploy_id"])
	var msg fakeapi.SlackCall
	waitFor(t, 30*time.Second, "the pending approval's message", func() bool { msg = pendingPost(sl, id); return msg.TS != "" })
	for _, want := range []string{`"action_id":"updater_approve"`, `"action_id":"updater_reject"`, `"value":"` + id + `"`} {
		if !strings.Contains(string(msg.Blocks), want) {
			t.Fatalf("pending message lacks %s:\n%s", want, msg.Blocks)
		}
	}

	// Mallory is no approver: refused, to her alone; nothing deploys.
	refused, err := sl.Press(fakeapi.Press{User: "U0MALLORY", MessageTS: msg.TS, ActionID: "updater_approve"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the ephemeral refusal", func() bool {
		for _, c := range sl.Accepted() {
			if c.Method == "chat.postEphemeral" && c.User == "U0MALLORY" && strings.Contains(c.Text, "SLACK_APPROVERS") {
				return true
			}
		}
		return false
	})
	after := u.cycles()
	waitFor(t, 30*time.Second, "3 more cycles", func() bool { return u.cycles() >= after+3 })
	if v := inspect(t, app).Version.Index; v != ver || specDigest(t, app) != v1 || u.count("deploy started") != 0 {
		t.Fatalf("a non-approver's press moved the service: version %d -> %d, digest %s, %d deploys", ver, v, specDigest(t, app), u.count("deploy started"))
	}
	if n := len(threadTexts(sl, msg.TS)); n != 0 {
		t.Fatalf("the refused press was answered in the channel's thread: %q", threadTexts(sl, msg.TS))
	}

	// Alice approves: v2 is deployed, pinned and running.
	approved, err := sl.Press(fakeapi.Press{User: "U0ALICE", MessageTS: msg.TS, ActionID: "updater_approve"})
	if err != nil {
		t.Fatal(err)
	}
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
	if specDigest(t, app) != v2 || !allRunning(t, app, v2) {
		t.Fatalf("approved, but the spec is on %s (want %s) or its tasks are not running it", specDigest(t, app), v2)
	}
	waitFor(t, 10*time.Second, "the approval in the thread", func() bool {
		return anyContains(threadTexts(sl, msg.TS), "<@U0ALICE> approved deploy "+id)
	})
	for _, e := range []string{refused, approved} {
		a, ok := ackOf(sl, e, 0)
		if !ok {
			t.Fatalf("envelope %s never acked", e)
		}
		t.Logf("ack of envelope %s: %s after it was sent", e, a.Delay)
		if a.Delay > 3*time.Second {
			t.Errorf("envelope %s acked after %s, more than Slack's 3 s", e, a.Delay)
		}
	}

	// The connection drops before Slack saw the ack, as far as Slack
	// knows: it sends the press again on the new connection.
	sl.DropSocket()
	waitFor(t, 60*time.Second, "the updater to reconnect", func() bool { return sl.Connections() >= 2 && sl.Connected() })
	conn := sl.Connections()
	if err := sl.Resend(approved); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the ack of the repeat", func() bool { _, ok := ackOf(sl, approved, conn); return ok })
	if a, _ := ackOf(sl, approved, conn); a.Delay > 3*time.Second {
		t.Errorf("repeat acked after %s", a.Delay)
	} else {
		t.Logf("ack of the repeat on connection %d: %s", conn, a.Delay)
	}

	// Bob rolls the finished deploy back: a press after the repeat, so
	// by its answer the repeat would have been acted on too.
	dep := fmt.Sprint(u.find("deploy succeeded", "to_digest", v2)["deploy_id"])
	var final fakeapi.SlackCall
	waitFor(t, 30*time.Second, "Roll back on the deploy's message", func() bool {
		msgs, _ := thread(sl, dep)
		if len(msgs) == 0 {
			return false
		}
		final = msgs[len(msgs)-1]
		return strings.Contains(final.Content(), "deploy succeeded") && strings.Contains(string(final.Blocks), `"action_id":"updater_rollback"`)
	})
	if _, err := sl.Press(fakeapi.Press{User: "U0BOB", MessageTS: final.TS, ActionID: "updater_rollback"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, deployLimit, "the service back on v1", func() bool { return specDigest(t, app) == v1 && allRunning(t, app, v1) })
	waitFor(t, 30*time.Second, "the rollback's outcome in the thread", func() bool {
		return anyContains(threadTexts(sl, final.TS), "asked for by <@U0BOB> succeeded")
	})
	if !anyContains(threadTexts(sl, final.TS), "<@U0BOB> asked for a roll back of *"+svc+"*: started") {
		t.Errorf("the thread does not say who asked for the roll back: %q", threadTexts(sl, final.TS))
	}

	// Applied once: one approval, one deploy of v2, one answer to it.
	if n := u.count("deploy approved", "deploy_id", id); n != 1 {
		t.Errorf("approved %d times, want once", n)
	}
	if n := u.count("deploy started", "to_digest", v2); n != 1 {
		t.Errorf("v2 deployed %d times, want once", n)
	}
	answers := 0
	for _, r := range threadTexts(sl, msg.TS) {
		if strings.Contains(r, "U0ALICE") {
			answers++
		}
	}
	if answers != 1 {
		t.Errorf("%d answers to Alice's press, want 1: %q", answers, threadTexts(sl, msg.TS))
	}

	// v2 is quarantined: the tag still points at it, and over 3 cycles
	// it is neither deployed nor asked about again.
	after = u.cycles()
	waitFor(t, 30*time.Second, "3 cycles after the rollback", func() bool { return u.cycles() >= after+3 })
	if specDigest(t, app) != v1 || !allRunning(t, app, v1) {
		t.Fatalf("after the rollback the service is on %s, want %s", specDigest(t, app), v1)
	}
	if n := u.count("deploy started", "to_digest", v2); n != 1 {
		t.Errorf("v2 deployed %d times after its rollback, want the approved deploy only", n)
	}
	if n := u.count("deploy pending", "to_digest", v2); n != 1 {
		t.Errorf("v2 asked for approval %d times, want once: the rollback quarantines it", n)
	}
}

// Without the app token a pending approval is still posted, without
// buttons: it says how to decide instead.
func TestSlackPendingWithoutButtons(t *testing.T) {
	const stack, repo = "e2esockoff", "e2e/sockoff"
	sl := fakeSlack(t)
	v1 := push(t, repo, "v1")
	createService(t, "e2esockoff_app", repo, v1, svcOpts{stack: stack, optIn: true,
		labels: map[string]string{"updater.approve": "manual"}})
	u := startUpdater(t, stack, append(slackBotEnv(sl), "UPDATER_APPROVAL_TIMEOUT=1h")...)
	waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })
	v2 := push(t, repo, "v2")
	u.waitLog(t, 30*time.Second, 1, "deploy pending", "to_digest", v2)
	id := fmt.Sprint(u.find("deploy pending", "to_digest", v2)["deploy_id"])
	var msg fakeapi.SlackCall
	waitFor(t, 30*time.Second, "the pending approval's message", func() bool { msg = pendingPost(sl, id); return msg.TS != "" })
	if !strings.Contains(msg.Content(), "updater approve "+id) {
		t.Errorf("the message does not say how to approve:\n%s", msg.Content())
	}
	if _, err := sl.Press(fakeapi.Press{User: "U0ALICE", MessageTS: msg.TS, ActionID: "updater_approve"}); !errors.Is(err, fakeapi.ErrNoButton) {
		t.Errorf("a press on the message without Socket Mode: %v, want no such button", err)
	}
	if sl.Connections() != 0 {
		t.Errorf("%d Socket Mode connections without an app token", sl.Connections())
	}
}
