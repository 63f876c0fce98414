//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/notify/fakeapi"
)

// The fake Slack and Rollbar run in this test process on 127.0.0.1; the
// updater, a separate process, talks to them as it would to the real ones.

const (
	slackToken   = "xoxb-e2e-0000-notasecretbutlooksone"
	rollbarToken = "e2e0rollbar0token0000000000000000"
)

func fakeSlack(t *testing.T) *fakeapi.Slack {
	t.Helper()
	s, err := fakeapi.NewSlack(slackToken)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	// The webhook URL's last path segment is its secret.
	addSecret("Slack webhook URL of "+t.Name(), s.WebhookURL[strings.LastIndex(s.WebhookURL, "/")+1:])
	t.Cleanup(func() {
		// Every call, refused ones too: a refused message still left.
		for _, c := range s.Calls() {
			capture("Slack calls", fmt.Appendf(nil, "%s %s %s", c.Method, c.Channel, c.Content()))
		}
	})
	return s
}

func fakeRollbar(t *testing.T) *fakeapi.Rollbar {
	t.Helper()
	r, err := fakeapi.NewRollbar(rollbarToken)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	t.Cleanup(func() {
		// Every call, error items and refused calls too. The access_token
		// field is where the token belongs; every other field is output.
		for _, c := range r.Calls() {
			delete(c.Params, "access_token")
			capture("Rollbar calls", fmt.Appendf(nil, "%s %d %v", c.Route, c.DeployID, c.Params))
		}
	})
	return r
}

func slackBotEnv(s *fakeapi.Slack) []string {
	return []string{"SLACK_TOKEN=" + slackToken, "SLACK_CHANNEL=#deploys", "SLACK_API_URL=" + s.APIURL}
}

func rollbarEnv(r *fakeapi.Rollbar) []string {
	return []string{"ROLLBAR_TOKEN=" + rollbarToken, "ROLLBAR_ENVIRONMENT=e2e", "ROLLBAR_ENDPOINT=" + r.APIURL}
}

// thread is a deploy's Slack message as the fake recorded it: the post
// and its edits, in order, and the replies in its thread.
func thread(s *fakeapi.Slack, deployID string) (msgs, replies []fakeapi.SlackCall) {
	ts := ""
	for _, c := range s.Accepted() {
		if ts == "" && c.Method == "chat.postMessage" && c.ThreadTS == "" && strings.Contains(c.Content(), "deploy "+deployID) {
			ts = c.TS
		}
		switch {
		case ts == "":
		case c.TS == ts && c.ThreadTS == "":
			msgs = append(msgs, c)
		case c.ThreadTS == ts:
			replies = append(replies, c)
		}
	}
	return msgs, replies
}

func lastContains(msgs []fakeapi.SlackCall, s string) bool {
	return len(msgs) > 0 && strings.Contains(msgs[len(msgs)-1].Content(), s)
}

// checkOneMessage asserts a deploy's message is one post, then edits of
// that same message, and that only the last says how it ended.
func checkOneMessage(t *testing.T, msgs []fakeapi.SlackCall, outcome string) {
	t.Helper()
	if len(msgs) < 2 || msgs[0].Method != "chat.postMessage" {
		t.Fatalf("want a post then edits, got %v", describe(msgs))
	}
	for i, c := range msgs[1:] {
		if c.Method != "chat.update" || c.TS != msgs[0].TS || c.Channel != "C0DEPLOYS" {
			t.Fatalf("call %d is %s ts=%s channel=%s, want chat.update of %s in C0DEPLOYS", i+1, c.Method, c.TS, c.Channel, msgs[0].TS)
		}
		if i < len(msgs)-2 && strings.Contains(c.Content(), outcome) {
			t.Fatalf("edit %d already says %q before the end:\n%s", i+1, outcome, c.Content())
		}
	}
}

func describe(calls []fakeapi.SlackCall) string {
	var b strings.Builder
	for _, c := range calls {
		fmt.Fprintf(&b, "\n  %s ts=%s thread=%s status=%d %s: %.120s", c.Method, c.TS, c.ThreadTS, c.Status, c.Error, c.Text)
	}
	return b.String()
}

// A good deploy is one Slack message, posted and edited to "succeeded",
// and one Rollbar deploy, started then succeeded; a broken one ends
// "rolled back" with the task error, details in the thread, and a failed
// Rollbar deploy. Nothing else is sent, and no secret is logged.
func TestNotifyGoodAndRolledBackDeploys(t *testing.T) {
	const stack, repo = "e2enote", "e2e/note"
	sl, rb, team := fakeSlack(t), fakeRollbar(t), newTeamEndpoint(t)
	v1 := push(t, repo, "v1")
	createService(t, "e2enote_app", repo, v1, svcOpts{stack: stack, optIn: true, replicas: 2})
	u := startUpdater(t, stack, append(append(slackBotEnv(sl), rollbarEnv(rb)...), team.env()...)...)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	const rev = "0123456789abcdef0123456789abcdef01234567"
	v2 := pushLabelled(t, repo, "v2", map[string]string{
		"org.opencontainers.image.revision": rev,
		"org.opencontainers.image.source":   "https://github.com/updater-dev/demo",
		"org.opencontainers.image.version":  "2.0.0",
	})
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
	id := fmt.Sprint(u.find("deploy succeeded", "to_digest", v2)["deploy_id"])
	var msgs, replies []fakeapi.SlackCall
	waitFor(t, 30*time.Second, "the Slack message to say succeeded", func() bool {
		msgs, replies = thread(sl, id)
		return lastContains(msgs, "deploy succeeded")
	})
	checkOneMessage(t, msgs, "deploy succeeded")
	if len(replies) != 0 {
		t.Fatalf("a good deploy got thread replies:%s", describe(replies))
	}
	final := msgs[len(msgs)-1].Content()
	for _, want := range []string{"e2enote_app", "stack e2enote", v1[:19], v2[:19], "2.0.0",
		"https://github.com/updater-dev/demo/commit/" + rev, "healthy ✓"} {
		if !strings.Contains(final, want) {
			t.Errorf("final message lacks %q:\n%s", want, final)
		}
	}
	if n := len(sl.Accepted()); n != len(msgs) {
		t.Fatalf("Slack got %d calls, want only this deploy's %d:%s", n, len(msgs), describe(sl.Accepted()))
	}
	waitFor(t, 30*time.Second, "the Rollbar deploy to be closed", func() bool {
		d := rb.Deploys()
		return len(d) == 1 && len(d[0].Statuses) == 2
	})
	if d := rb.Deploys()[0]; strings.Join(d.Statuses, ",") != "started,succeeded" || d.Revision != rev ||
		d.Environment != "e2e" || d.LocalUsername != "updater" {
		t.Fatalf("Rollbar deploy %+v, want started then succeeded, revision %s", d, rev)
	}
	t.Logf("good deploy: %d Slack calls (post + %d edits), Rollbar deploy started -> succeeded", len(msgs), len(msgs)-1)
	// The team's webhook: two signed posts, start and end; ntfy: one message.
	waitFor(t, 30*time.Second, "the webhook's succeeded post", func() bool { k, _, _ := team.kinds(id); return len(k) >= 2 })
	if k, outcome, to := team.kinds(id); strings.Join(k, ",") != "started,succeeded" || outcome != "succeeded" || to != v2 {
		t.Errorf("webhook posts %q (outcome %q, to %s), want started then succeeded to %s", k, outcome, to, v2)
	}
	waitFor(t, 30*time.Second, "the ntfy message", func() bool { return len(team.titles()) >= 1 })

	// The broken version fails its health check and Swarm rolls it back.
	bad := push(t, repo, "broken")
	u.waitLog(t, deployLimit, 1, "deploy failed", "to_digest", bad)
	id = fmt.Sprint(u.find("deploy failed", "to_digest", bad)["deploy_id"])
	waitFor(t, 30*time.Second, "the thread reply of the failed deploy", func() bool {
		msgs, replies = thread(sl, id)
		return len(replies) > 0
	})
	checkOneMessage(t, msgs, "rolled back")
	final = msgs[len(msgs)-1].Content()
	for _, want := range []string{"deploy failed and was rolled back", "unhealthy", bad[:19]} {
		if !strings.Contains(final, want) {
			t.Errorf("final message lacks %q:\n%s", want, final)
		}
	}
	if len(replies) != 1 || !strings.Contains(replies[0].Text, "unhealthy") || !strings.Contains(replies[0].Text, bad) {
		t.Fatalf("want one reply with the task error and the digest:%s", describe(replies))
	}
	waitFor(t, 30*time.Second, "the second Rollbar deploy to be closed", func() bool {
		d := rb.Deploys()
		return len(d) == 2 && len(d[1].Statuses) == 2
	})
	if d := rb.Deploys()[1]; strings.Join(d.Statuses, ",") != "started,failed" || d.Revision != bad ||
		!strings.Contains(d.Comments[1], "rolled back") {
		t.Fatalf("Rollbar deploy %+v, want started then failed, revision the digest", d)
	}

	waitFor(t, 30*time.Second, "the webhook's failed post", func() bool { k, _, _ := team.kinds(id); return len(k) >= 2 })
	if k, outcome, to := team.kinds(id); strings.Join(k, ",") != "started,failed" || outcome != "rolled_back" || to != bad {
		t.Errorf("webhook posts %q (outcome %q, to %s), want started then failed, rolled back, to %s", k, outcome, to, bad)
	}
	waitFor(t, 30*time.Second, "the second ntfy message", func() bool { return len(team.titles()) >= 2 })
	if got := team.titles(); strings.Join(got, "|") != "Deployed e2enote_app|Rolled back e2enote_app" || team.refused() != 0 {
		t.Errorf("ntfy titles %q (%d unsigned webhook posts), want one message per deploy", got, team.refused())
	}

	// The updater's own error items: none, a failed deploy is not one.
	if n := len(rb.Items()); n != 0 {
		t.Fatalf("%d Rollbar items, want 0: %+v", n, rb.Items())
	}
	for _, secret := range []string{slackToken, rollbarToken, teamSecret} {
		if strings.Contains(u.log(), secret) {
			t.Fatalf("the updater log shows a token")
		}
	}
}

// Slack answers the first post with 429 Retry-After: 1; the message is
// posted once, at least a second later, and the deploy does not wait.
func TestNotifySlackRateLimited(t *testing.T) {
	const stack, repo = "e2erate", "e2e/rate"
	row := fault(t, "Slack answers 429 with Retry-After")
	sl := fakeSlack(t)
	v1 := push(t, repo, "v1")
	createService(t, "e2erate_app", repo, v1, svcOpts{stack: stack, optIn: true})
	u := startUpdater(t, stack, slackBotEnv(sl)...)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	sl.RateLimit("chat.postMessage", 1, time.Second)
	v2 := push(t, repo, "v2")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
	id := fmt.Sprint(u.find("deploy succeeded", "to_digest", v2)["deploy_id"])
	var msgs []fakeapi.SlackCall
	waitFor(t, 30*time.Second, "the Slack message to say succeeded", func() bool {
		msgs, _ = thread(sl, id)
		return lastContains(msgs, "deploy succeeded")
	})
	checkOneMessage(t, msgs, "deploy succeeded")
	var posts []fakeapi.SlackCall
	for _, c := range sl.Calls() {
		if c.Method == "chat.postMessage" {
			posts = append(posts, c)
		}
	}
	if len(posts) != 2 || posts[0].Status != http.StatusTooManyRequests || !posts[1].Accepted() {
		t.Fatalf("want a 429 then one accepted post:%s", describe(posts))
	}
	gap := posts[1].At.Sub(posts[0].At)
	if gap < time.Second {
		t.Fatalf("posted again %s after the 429, before its Retry-After of 1s", gap)
	}
	t.Logf("429 then delivered %s later", gap.Round(time.Millisecond))
	row.set("one message, posted %s after the 429 (Retry-After 1s), the deploy not held", gap.Round(time.Millisecond))
}

// Slack and Rollbar are down for the whole deploy: it reaches every task
// as fast as a deploy with them up, and each notifier logs one line giving
// up. Timed with the test's clock from the push to every task running the
// new digest, as Docker reports the tasks.
func TestNotifyDownDoesNotHoldDeploys(t *testing.T) {
	const stack, repo = "e2edown", "e2e/down"
	row := fault(t, "Slack and Rollbar down for a whole deploy")
	sl, rb := fakeSlack(t), fakeRollbar(t)
	v1 := push(t, repo, "v1")
	app := createService(t, "e2edown_app", repo, v1, svcOpts{stack: stack, optIn: true})
	notifiers := append(slackBotEnv(sl), rollbarEnv(rb)...)
	// pushToRunning pushes a new version and times it until Docker runs
	// it on every task; the updater's report of it is the end of the deploy.
	pushToRunning := func(u *updater, version string) time.Duration {
		waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
		start := time.Now()
		d := push(t, repo, version)
		waitFor(t, deployLimit, version+" running on every task", func() bool { return allRunning(t, app, d) })
		took := time.Since(start)
		u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", d)
		return took
	}

	// The same deploy with Slack and Rollbar up, for comparison on this
	// machine as loaded as it is now.
	up := startUpdater(t, stack, notifiers...)
	withUp := pushToRunning(up, "v2")
	waitFor(t, 30*time.Second, "Slack to say succeeded", func() bool { return lastContains(sl.Accepted(), "deploy succeeded") })
	if err := up.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop the first updater: %v", err)
	}

	sl.Close()
	rb.Close()
	u := startUpdater(t, stack, notifiers...)
	withDown := pushToRunning(u, "v3")
	const giveUp = "notify failed; giving up on this event, later ones get one attempt each until one gets through"
	for _, n := range []string{"slack", "rollbar"} {
		u.waitLog(t, time.Minute, 1, giveUp, "notifier", n)
		// Every later event of the deploy was tried once, quietly.
		u.waitLog(t, 30*time.Second, 1, "notify still failing", "notifier", n, "kind", "succeeded")
		if c := u.count(giveUp, "notifier", n); c != 1 {
			t.Fatalf("%d give-up lines for %s, want 1", c, n)
		}
	}
	// A deploy held by its start message would wait out the retries of
	// notify.DefaultPolicy: 5 attempts, 1 s backoff doubled each time,
	// jitter -20%, so at least 0.8 × (1+2+4+8) s = 12 s before the spec
	// write. Both runs share this machine's load; half of that hold is far
	// beyond their difference when nothing holds.
	const held = 12 * time.Second
	t.Logf("push -> every task running the new digest: %s with Slack and Rollbar up, %s with them down",
		withUp.Round(time.Millisecond), withDown.Round(time.Millisecond))
	if withDown >= withUp+held/2 {
		t.Fatalf("with the notifiers down the deploy took %s, against %s with them up: it waited on them", withDown, withUp)
	}
	if strings.Contains(u.log(), slackToken) || strings.Contains(u.log(), rollbarToken) {
		t.Fatal("the updater log shows a token")
	}
	row.set("the deploy went on unheld: push to every task running %s with the notifiers down, %s with them up; one give-up line per notifier, later events tried once each",
		withDown.Round(100*time.Millisecond), withUp.Round(100*time.Millisecond))
}

// A registry outage over many cycles is two Slack messages (it started,
// it ended) and one Rollbar item, not one per cycle. The webhook then
// reports the deploy that waited: a start and an end, nothing between.
func TestNotifyRegistryOutageOnce(t *testing.T) {
	const stack, repo = "e2enoteout", "e2e/noteout"
	sl, rb := fakeSlack(t), fakeRollbar(t)
	v1 := push(t, repo, "v1")
	createService(t, "e2enoteout_app", repo, v1, svcOpts{stack: stack, optIn: true})
	u := startUpdater(t, stack, append([]string{"SLACK_WEBHOOK_URL=" + sl.WebhookURL}, rollbarEnv(rb)...)...)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	t.Cleanup(func() { env.faults.set(0) })
	env.faults.set(http.StatusInternalServerError)
	v2 := push(t, repo, "v2")
	u.waitLog(t, 30*time.Second, 1, "registry failing; retrying every cycle, logged again when it recovers")
	after := u.cycles()
	waitFor(t, time.Minute, "5 cycles during the outage", func() bool { return u.cycles() >= after+5 })
	env.faults.set(0)
	u.waitLog(t, 30*time.Second, 1, "registry recovered")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
	waitFor(t, 30*time.Second, "4 webhook messages", func() bool { return len(sl.Accepted()) >= 4 })
	after = u.cycles()
	waitFor(t, 30*time.Second, "2 more cycles", func() bool { return u.cycles() >= after+2 })

	calls := sl.Accepted()
	if len(calls) != 4 {
		t.Fatalf("%d webhook messages, want outage, recovery, start, end:%s", len(calls), describe(calls))
	}
	for i, want := range []string{"the registry for `" + image(repo) + "` failing", "recovered", "deploying", "deploy succeeded"} {
		if calls[i].Method != "webhook" || !strings.Contains(calls[i].Content(), want) {
			t.Errorf("message %d lacks %q:%s", i, want, describe(calls[i:i+1]))
		}
	}
	items := rb.Items()
	if len(items) != 1 || !strings.Contains(items[0].Title, "registry failing") || items[0].Environment != "e2e" || items[0].CodeVersion != "e2e" {
		t.Fatalf("Rollbar items %+v, want the one outage error", items)
	}
	// The webhook URL's path is its secret.
	if path := sl.WebhookURL[strings.Index(sl.WebhookURL, "/services/"):]; strings.Contains(u.log(), path) || strings.Contains(u.log(), rollbarToken) {
		t.Fatal("the updater log shows the webhook URL or the Rollbar token")
	}
}

// Settings that can't work stop the updater before it touches Docker:
// exit 2, the variable named, the token never shown.
func TestNotifyBadSettings(t *testing.T) {
	sl := fakeSlack(t)
	for _, tt := range []struct {
		name string
		env  []string
		want string
	}{
		{"token without channel", []string{"SLACK_TOKEN=" + slackToken}, "SLACK_CHANNEL is not set, but SLACK_TOKEN is"},
		{"token Slack rejects", []string{"SLACK_TOKEN=xoxb-wrong-s3cr3t", "SLACK_CHANNEL=#deploys", "SLACK_API_URL=" + sl.APIURL},
			"SLACK_TOKEN: slack rejected the token: invalid_auth"},
		{"webhook malformed", []string{"SLACK_WEBHOOK_URL=hooks.slack.com/services/T/B/s3cr3t"}, "SLACK_WEBHOOK_URL is not an http(s) URL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(env.bin, "run")
			cmd.Env = append([]string{"DOCKER_HOST=unix:///nonexistent/docker.sock"}, tt.env...)
			out, err := cmd.CombinedOutput()
			capture("updater command output and service logs", out)
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Fatalf("exit: %v, want code 2\n%s", err, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("message lacks %q:\n%s", tt.want, out)
			}
			if strings.Contains(string(out), "s3cr3t") || strings.Contains(string(out), slackToken) {
				t.Errorf("message shows a secret:\n%s", out)
			}
		})
	}
}
