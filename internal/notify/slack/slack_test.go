package slack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	slackgo "github.com/slack-go/slack"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
	"github.com/updater-dev/updater/internal/notify/fakeapi"
	"github.com/updater-dev/updater/internal/notify/notifytest"
)

const token = "xoxb-test-0000-secret"

func newSlack(t *testing.T) *fakeapi.Slack {
	t.Helper()
	s, err := fakeapi.NewSlack(token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func release() deploy.Release {
	return deploy.Release{ID: "d1", ServiceID: "svc1", ServiceName: "shop_web", Stack: "shop",
		Ref: "registry.example.com/shop/web:latest", From: "sha256:" + strings.Repeat("a", 64),
		To: "sha256:" + strings.Repeat("b", 64), Started: time.Unix(1700000000, 0),
		Labels: map[string]string{
			notify.LabelRevision: "0123456789abcdef0123456789abcdef01234567",
			notify.LabelSource:   "https://github.com/acme/shop",
			notify.LabelVersion:  "2.4.1",
		}}
}

func notifyAll(t *testing.T, n notify.Notifier, events ...deploy.Event) {
	t.Helper()
	for _, e := range events {
		if _, err := n.Notify(context.Background(), e); err != nil && !errors.Is(err, notify.ErrSkipped) {
			t.Fatalf("Notify(%s): %v", e.Kind, err)
		}
	}
}

func progress(rel deploy.Release, done, total int) deploy.Event {
	return deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseRollout,
		Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: done, Total: total}}
}

// One message per deploy: posted on start, edited as it moves and at the
// end, always the same ts, with the channel ID Slack answered.
func TestBotEditsOneMessage(t *testing.T) {
	fake := newSlack(t)
	b := NewBot(BotConfig{Token: token, Channel: "#deploys", APIURL: fake.APIURL})
	rel := release()
	notifyAll(t, b,
		deploy.Event{Kind: deploy.Started, Release: rel},
		progress(rel, 0, 2), progress(rel, 1, 2),
		deploy.Event{Kind: deploy.Succeeded, Release: rel, Phase: deploy.PhaseRollout, Duration: 42 * time.Second},
	)
	calls := fake.Accepted()
	want := []string{"chat.postMessage", "chat.update", "chat.update", "chat.update"}
	if len(calls) != len(want) {
		t.Fatalf("calls %v, want %v", methods(calls), want)
	}
	for i, c := range calls {
		if c.Method != want[i] || c.TS != calls[0].TS {
			t.Fatalf("call %d: %s ts=%s, want %s ts=%s", i, c.Method, c.TS, want[i], calls[0].TS)
		}
		if i > 0 && c.Channel != "C0DEPLOYS" {
			t.Fatalf("chat.update to channel %q, want the ID C0DEPLOYS", c.Channel)
		}
	}
	first, last := calls[0].Content(), calls[3].Content()
	for _, s := range []string{"shop_web", "deploying", "shop", "registry.example.com/shop/web:latest",
		"sha256:aaaaaaaaaaaa", "sha256:bbbbbbbbbbbb", "2.4.1",
		"https://github.com/acme/shop/commit/0123456789abcdef0123456789abcdef01234567"} {
		if !strings.Contains(first, s) {
			t.Errorf("start message lacks %q:\n%s", s, first)
		}
	}
	if !strings.Contains(calls[2].Content(), "rolling 1/2") {
		t.Errorf("progress edit lacks the task count:\n%s", calls[2].Content())
	}
	for _, s := range []string{"deploy succeeded", "42s", "rolled out 1/2 ✓", "healthy ✓"} {
		if !strings.Contains(last, s) {
			t.Errorf("final message lacks %q:\n%s", s, last)
		}
	}
	if len(b.deploys) != 0 {
		t.Errorf("%d deploys still tracked after the end", len(b.deploys))
	}
}

// A rollback: the message says so with the task error, and the thread
// gets the details.
func TestBotFailureRepliesInThread(t *testing.T) {
	fake := newSlack(t)
	b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
	rel := release()
	reason := "Swarm rolled back: update paused (task errors: dockerexec: unhealthy container)"
	notifyAll(t, b,
		deploy.Event{Kind: deploy.Started, Release: rel},
		progress(rel, 0, 1),
		deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollout, RolledBack: true, Reason: reason, Duration: time.Minute},
	)
	calls := fake.Accepted()
	if len(calls) != 4 {
		t.Fatalf("calls %v, want post, update, update, reply", methods(calls))
	}
	final, reply := calls[2], calls[3]
	if final.Method != "chat.update" || !strings.Contains(final.Content(), "rolled back") || !strings.Contains(final.Content(), "unhealthy container") {
		t.Errorf("final edit %s:\n%s", final.Method, final.Content())
	}
	if reply.Method != "chat.postMessage" || reply.ThreadTS != calls[0].TS {
		t.Fatalf("reply %s in thread %q, want a reply to %s", reply.Method, reply.ThreadTS, calls[0].TS)
	}
	for _, s := range []string{"failed in step `rollout`", "back on its previous version", "unhealthy container", rel.To} {
		if !strings.Contains(reply.Text, s) {
			t.Errorf("reply lacks %q:\n%s", s, reply.Text)
		}
	}
}

// A retry after the final edit went through but the reply did not sends
// the reply alone, not the edit again.
func TestBotRetriesOnlyTheReply(t *testing.T) {
	fake := newSlack(t)
	b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
	rel := release()
	notifyAll(t, b, deploy.Event{Kind: deploy.Started, Release: rel})
	fake.Fail("chat.postMessage", 1, http.StatusInternalServerError)
	failed := deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollout, RolledBack: true, Reason: "unhealthy"}
	if retry, err := b.Notify(context.Background(), failed); !retry || err == nil {
		t.Fatalf("retry=%v err=%v, want the failed reply retried", retry, err)
	}
	notifyAll(t, b, failed)
	if got := methods(fake.Accepted()); strings.Join(got, " ") != "chat.postMessage chat.update chat.postMessage" {
		t.Fatalf("calls %v, want post, one edit, one reply", got)
	}
}

// Hook steps show as they go; a failed migration's log tail goes to the
// thread. Phases this package has no name for show as they are.
func TestBotHookSteps(t *testing.T) {
	fake := newSlack(t)
	b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
	rel := release()
	step := func(phase deploy.Phase, state deploy.StepState, code int, tail ...string) deploy.Event {
		return deploy.Event{Kind: deploy.Progress, Release: rel, Phase: phase,
			Step: &deploy.Step{Phase: phase, State: state, ExitCode: code, LogTail: tail}}
	}
	failedStep := step("migrate", "failed", 3, "applying 0042_add_index", "ERROR: relation \"orders\" does not exist")
	notifyAll(t, b,
		deploy.Event{Kind: deploy.Started, Release: rel},
		step("backup", "started", 0), step("backup", "succeeded", 0),
		step("warmup", "started", 0), // a phase from the future
		step("migrate", "started", 0), failedStep,
		deploy.Event{Kind: deploy.Failed, Release: rel, Phase: "migrate", Step: failedStep.Step,
			Reason: `migrate exited with code 3: ERROR: relation "orders" does not exist`},
	)
	calls := fake.Accepted()
	if n := len(calls); n != 8 {
		t.Fatalf("calls %v, want a post, 6 edits and a reply", methods(calls))
	}
	if c := calls[3].Content(); !strings.Contains(c, "backup ✓") || !strings.Contains(c, "warmup …") {
		t.Errorf("after warmup started:\n%s", c)
	}
	final := calls[6].Content()
	for _, s := range []string{"backup ✓", "warmup ✓", "migration exit 3 ✗", "the service was not changed"} {
		if !strings.Contains(final, s) {
			t.Errorf("final message lacks %q:\n%s", s, final)
		}
	}
	reply := calls[7].Text
	for _, s := range []string{"exit code 3", "applying 0042_add_index", "relation &quot;orders&quot;", "not changed"} {
		if !strings.Contains(strings.ReplaceAll(reply, `"`, "&quot;"), s) {
			t.Errorf("reply lacks %q:\n%s", s, reply)
		}
	}
}

// A deploy first seen mid-way (resumed after a restart, or its start was
// given up) still gets one message.
func TestBotDeploySeenFirstMidway(t *testing.T) {
	fake := newSlack(t)
	b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
	rel := release()
	notifyAll(t, b,
		deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseRollout, Resumed: true,
			Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 1, Total: 2}},
		deploy.Event{Kind: deploy.Succeeded, Release: rel, Resumed: true},
	)
	calls := fake.Accepted()
	if len(calls) != 2 || calls[0].Method != "chat.postMessage" || calls[1].Method != "chat.update" {
		t.Fatalf("calls %v", methods(calls))
	}
	if !strings.Contains(calls[1].Content(), "after an updater restart") {
		t.Errorf("resumed deploy not marked:\n%s", calls[1].Content())
	}
}

func TestBotDeletedMessageIsPostedAgain(t *testing.T) {
	fake := newSlack(t)
	b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
	rel := release()
	b.deploys[rel.ID] = &thread{story: story{rel: rel}, channel: "C0DEPLOYS", ts: "1600000000.000001"}
	notifyAll(t, b, deploy.Event{Kind: deploy.Succeeded, Release: rel})
	calls := fake.Accepted()
	if len(calls) != 1 || calls[0].Method != "chat.postMessage" || !strings.Contains(calls[0].Content(), "succeeded") {
		t.Fatalf("calls %v", methods(calls))
	}
}

func TestBotOutageMessages(t *testing.T) {
	fake := newSlack(t)
	b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
	now := time.Unix(1700000000, 0)
	b.now = func() time.Time { return now }
	down := deploy.Event{Kind: deploy.Outage, Part: "registry", Release: deploy.Release{Ref: "r.example.com/app:latest"}, Reason: "HEAD: 503"}
	notifyAll(t, b, down)
	now = now.Add(5 * time.Minute)
	notifyAll(t, b, deploy.Event{Kind: deploy.Recovered, Part: "registry", Release: down.Release})
	calls := fake.Accepted()
	if len(calls) != 2 {
		t.Fatalf("calls %v, want two posts", methods(calls))
	}
	if c := calls[0].Text; !strings.Contains(c, "registry") || !strings.Contains(c, "r.example.com/app:latest") || !strings.Contains(c, "HEAD: 503") {
		t.Errorf("outage message: %s", c)
	}
	if c := calls[1].Text; !strings.Contains(c, "recovered after 5m0s") {
		t.Errorf("recovery message: %s", c)
	}
}

func TestBotErrors(t *testing.T) {
	rel := release()
	started := deploy.Event{Kind: deploy.Started, Release: rel}
	t.Run("wrong token", func(t *testing.T) {
		fake := newSlack(t)
		b := NewBot(BotConfig{Token: "xoxb-wrong-secret", Channel: "C0DEPLOYS", APIURL: fake.APIURL})
		retry, err := b.Notify(context.Background(), started)
		if retry || err == nil || !strings.Contains(err.Error(), "invalid_auth") {
			t.Fatalf("retry=%v err=%v, want invalid_auth, not retried", retry, err)
		}
		if strings.Contains(err.Error(), "xoxb-wrong-secret") {
			t.Fatalf("error shows the token: %v", err)
		}
		if err := b.Check(context.Background()); !errors.Is(err, ErrRejected) {
			t.Fatalf("Check: %v, want ErrRejected", err)
		}
	})
	t.Run("good token", func(t *testing.T) {
		fake := newSlack(t)
		if err := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL}).Check(context.Background()); err != nil {
			t.Fatalf("Check: %v", err)
		}
	})
	t.Run("unknown channel", func(t *testing.T) {
		fake := newSlack(t)
		b := NewBot(BotConfig{Token: token, Channel: "#nope", APIURL: fake.APIURL})
		retry, err := b.Notify(context.Background(), started)
		if retry || err == nil || !strings.Contains(err.Error(), "channel_not_found") {
			t.Fatalf("retry=%v err=%v", retry, err)
		}
	})
	t.Run("rate limited", func(t *testing.T) {
		fake := newSlack(t)
		fake.RateLimit("chat.postMessage", 1, 2*time.Second)
		b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
		retry, err := b.Notify(context.Background(), started)
		if d, ok := notify.RetryAfterOf(err); !retry || !ok || d != 2*time.Second {
			t.Fatalf("retry=%v wait=%v err=%v, want a retry after 2s", retry, d, err)
		}
		if _, err := b.Notify(context.Background(), started); err != nil {
			t.Fatalf("second try: %v", err)
		}
		if n := len(fake.Accepted()); n != 1 {
			t.Fatalf("%d messages, want 1", n)
		}
	})
	t.Run("server error", func(t *testing.T) {
		fake := newSlack(t)
		fake.Fail("chat.postMessage", 1, http.StatusServiceUnavailable)
		b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
		if retry, err := b.Notify(context.Background(), started); !retry || err == nil {
			t.Fatalf("retry=%v err=%v, want a retryable error", retry, err)
		}
	})
	t.Run("down", func(t *testing.T) {
		fake := newSlack(t)
		fake.Close()
		b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
		retry, err := b.Notify(context.Background(), started)
		if !retry || err == nil || strings.Contains(err.Error(), token) {
			t.Fatalf("retry=%v err=%v, want retryable, without the token", retry, err)
		}
		if err := b.Check(context.Background()); err == nil || errors.Is(err, ErrRejected) {
			t.Fatalf("Check against a closed port: %v, want an error that is not a rejection", err)
		}
	})
}

// Through the dispatcher, as in production: a 429 with Retry-After 1 is
// waited out and the message arrives exactly once.
func TestBotRateLimitThroughDispatcher(t *testing.T) {
	fake := newSlack(t)
	fake.RateLimit("chat.postMessage", 1, time.Second)
	b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
	d := notify.NewDispatcher(discard(), notify.Policy{Backoff: time.Millisecond}, notify.Named{Name: "slack", Notifier: b})
	d.Report(deploy.Event{Kind: deploy.Started, Release: release()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	calls := fake.Calls()
	if len(calls) != 2 || calls[0].Status != http.StatusTooManyRequests || !calls[1].Accepted() {
		t.Fatalf("calls %+v, want a 429 then an accepted post", calls)
	}
	if gap := calls[1].At.Sub(calls[0].At); gap < time.Second {
		t.Fatalf("retried after %s, before the Retry-After of 1s", gap)
	}
}

func TestWebhookStartAndEndOnly(t *testing.T) {
	fake := newSlack(t)
	w := NewWebhook(fake.WebhookURL)
	rel := release()
	notifyAll(t, w,
		deploy.Event{Kind: deploy.Started, Release: rel},
		progress(rel, 0, 1), progress(rel, 1, 1),
		deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollout, RolledBack: true,
			Reason: "dockerexec: unhealthy container"},
		deploy.Event{Kind: deploy.Outage, Part: "docker", Reason: "Cannot connect to the Docker daemon"},
		deploy.Event{Kind: deploy.Recovered, Part: "docker"},
	)
	calls := fake.Accepted()
	if len(calls) != 4 {
		t.Fatalf("%d webhook posts, want start, end, outage, recovery", len(calls))
	}
	if !strings.Contains(calls[0].Content(), "deploying") || !strings.Contains(calls[1].Content(), "rolled back") ||
		!strings.Contains(calls[1].Content(), "unhealthy container") || !strings.Contains(calls[1].Content(), "rollout 1/1 ✗") {
		t.Errorf("start:\n%s\nend:\n%s", calls[0].Content(), calls[1].Content())
	}
	if !strings.Contains(calls[2].Text, "Docker failing") || !strings.Contains(calls[3].Text, "Docker recovered") {
		t.Errorf("outage %q, recovery %q", calls[2].Text, calls[3].Text)
	}
}

// A repository on a host listed in UPDATER_SOURCE_HOSTS gets its commit
// link in both kinds of message; one on a host that only looks like
// GitHub's gets none.
func TestCommitLinkHosts(t *testing.T) {
	rel := release()
	rel.Labels[notify.LabelSource] = "https://git.corp.example/acme/shop"
	fake := newSlack(t)
	for _, n := range []notify.Notifier{
		NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL, SourceHosts: []string{"git.corp.example"}}),
		NewWebhook(fake.WebhookURL, "git.corp.example"),
	} {
		notifyAll(t, n, deploy.Event{Kind: deploy.Started, Release: rel})
	}
	calls := fake.Accepted()
	if len(calls) != 2 {
		t.Fatalf("%d posts, want 2", len(calls))
	}
	for _, c := range calls {
		if !strings.Contains(c.Content(), "https://git.corp.example/acme/shop/commit/0123456789abcdef0123456789abcdef01234567|0123456") {
			t.Errorf("no commit link to the listed host:\n%s", c.Content())
		}
	}
	rel.Labels[notify.LabelSource] = "https://github.evil.example/acme/shop"
	s := &story{hosts: []string{"git.corp.example"}}
	s.apply(deploy.Event{Kind: deploy.Started, Release: rel})
	if _, blocks := s.render(); strings.Contains(contentOf(t, blocks), "github.evil.example/acme/shop/commit") {
		t.Error("a commit link to a host that only looks like GitHub's")
	}
}

func TestWebhookErrors(t *testing.T) {
	started := deploy.Event{Kind: deploy.Started, Release: release()}
	fake := newSlack(t)
	secret := fake.WebhookURL[strings.LastIndex(fake.WebhookURL, "/")+1:]
	noSecret := func(t *testing.T, err error) {
		t.Helper()
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Fatalf("error shows the webhook URL: %v", err)
		}
	}
	t.Run("wrong URL", func(t *testing.T) {
		w := NewWebhook(fake.WebhookURL + "x")
		retry, err := w.Notify(context.Background(), started)
		noSecret(t, err)
		if retry || err == nil || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), "no_service") {
			t.Fatalf("retry=%v err=%v, want 404 no_service, not retried", retry, err)
		}
	})
	t.Run("rate limited", func(t *testing.T) {
		fake.RateLimit("webhook", 1, time.Second)
		retry, err := NewWebhook(fake.WebhookURL).Notify(context.Background(), started)
		noSecret(t, err)
		if d, ok := notify.RetryAfterOf(err); !retry || !ok || d != time.Second {
			t.Fatalf("retry=%v wait=%v err=%v", retry, d, err)
		}
	})
	t.Run("down", func(t *testing.T) {
		down := newSlack(t)
		down.Close()
		retry, err := NewWebhook(down.WebhookURL).Notify(context.Background(), started)
		if !retry || err == nil {
			t.Fatalf("retry=%v err=%v", retry, err)
		}
		if s := down.WebhookURL[strings.LastIndex(down.WebhookURL, "/")+1:]; strings.Contains(err.Error(), s) {
			t.Fatalf("error shows the webhook URL: %v", err)
		}
	})
}

func TestRenderEscapesAndLinks(t *testing.T) {
	rel := release()
	rel.ServiceName = "<!channel> & co"
	rel.From = ""
	s := &story{}
	s.apply(deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseUpdate, Reason: "<@U123> said no"})
	text, blocks := s.render()
	// The fallback text is mrkdwn too: an unescaped <!channel> pings everyone.
	if strings.Contains(text, "<!channel>") || strings.Contains(text, "<@U123>") {
		t.Errorf("fallback text carries an unescaped mention: %q", text)
	}
	all := contentOf(t, blocks)
	if strings.Contains(all, "<!channel>") || strings.Contains(all, "<@U123>") {
		t.Errorf("blocks carry an unescaped mention:\n%s", all)
	}
	for _, want := range []string{"&lt;!channel&gt; &amp; co", "unpinned", "the service was not changed",
		"<https://github.com/acme/shop/commit/0123456789abcdef0123456789abcdef01234567|0123456>"} {
		if !strings.Contains(all, want) {
			t.Errorf("blocks lack %q:\n%s", want, all)
		}
	}
}

func methods(calls []fakeapi.SlackCall) []string {
	var out []string
	for _, c := range calls {
		out = append(out, c.Method)
	}
	return out
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func contentOf(t *testing.T, blocks []slackgo.Block) string {
	t.Helper()
	b, err := json.Marshal(blocks)
	if err != nil {
		t.Fatal(err)
	}
	// Undo JSON's HTML escaping so the test reads what Slack reads.
	return strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&").Replace(string(b))
}

// An updater restarted mid-deploy edits the message the first run posted,
// found through the memo, instead of posting a second one.
func TestBotResumedDeployEditsItsMessage(t *testing.T) {
	fake := newSlack(t)
	memo := &notifytest.Memo{}
	rel := release()
	first := NewBot(BotConfig{Token: token, Channel: "#deploys", APIURL: fake.APIURL, Memo: memo})
	notifyAll(t, first, deploy.Event{Kind: deploy.Started, Release: rel})
	if memo.Len() != 1 {
		t.Fatalf("memo holds %d entries after the post, want 1", memo.Len())
	}
	second := NewBot(BotConfig{Token: token, Channel: "#deploys", APIURL: fake.APIURL, Memo: memo})
	notifyAll(t, second, deploy.Event{Kind: deploy.Succeeded, Release: rel, Phase: deploy.PhaseRollout, Resumed: true})
	calls := fake.Accepted()
	if len(calls) != 2 || calls[0].Method != "chat.postMessage" || calls[1].Method != "chat.update" || calls[1].TS != calls[0].TS {
		t.Fatalf("calls %v: want the post, then an edit of that message", methods(calls))
	}
	if !strings.Contains(calls[1].Content(), "deploy succeeded") {
		t.Errorf("edit lacks the outcome:\n%s", calls[1].Content())
	}
	if memo.Len() != 0 {
		t.Errorf("memo holds %d entries after the outcome, want 0", memo.Len())
	}
}

// A bake shows how long it goes on while it does, then that it baked.
func TestBotBakeSteps(t *testing.T) {
	fake := newSlack(t)
	b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
	rel := release()
	until := time.Date(2026, 12, 1, 16, 42, 0, 0, time.UTC)
	bake := func(state deploy.StepState) deploy.Event {
		return deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseBake,
			Step: &deploy.Step{Phase: deploy.PhaseBake, State: state, Until: until}}
	}
	notifyAll(t, b, deploy.Event{Kind: deploy.Started, Release: rel}, bake(deploy.StepStarted), bake(deploy.StepSucceeded),
		deploy.Event{Kind: deploy.Succeeded, Release: rel, Baked: 5 * time.Minute})
	calls := fake.Accepted()
	if len(calls) < 3 {
		t.Fatalf("calls %v", methods(calls))
	}
	if c := calls[1].Content(); !strings.Contains(c, "baking until 16:42 UTC …") {
		t.Errorf("while baking:\n%s", c)
	}
	if c := calls[len(calls)-1].Content(); !strings.Contains(c, "baked ✓") || strings.Contains(c, "until") {
		t.Errorf("after the bake:\n%s", c)
	}
}

// canaryEval is a canary's evaluation as the pipeline reports it
// (internal/deploy/canary.go): 1 of 4 tasks, judged until until.
func canaryEval(rel deploy.Release, until time.Time, detail string) deploy.Event {
	return deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseCanary,
		Step: &deploy.Step{Phase: deploy.PhaseCanary, Done: 1, Total: 4, Until: until, Detail: detail}}
}

// A canary shows its line (deploy.Step.CanaryLine) on a line of its own
// while it is judged, edited as it is evaluated but at most every 30 s
// in a minute's window; promoted, the last line stays, marked done.
// judgeCanary starts a deploy on a bot with a fake clock and evaluates its
// canary every 10 s over window, detail saying how evaluation i went.
func judgeCanary(t *testing.T, window time.Duration, detail func(i int, left time.Duration) string) (*fakeapi.Slack, *Bot, deploy.Release, *time.Time) {
	fake := newSlack(t)
	b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL})
	t0 := time.Date(2026, 12, 1, 15, 0, 0, 0, time.UTC)
	now := t0
	b.now = func() time.Time { return now }
	rel := release()
	until := t0.Add(window)
	notifyAll(t, b, deploy.Event{Kind: deploy.Started, Release: rel})
	for i := 1; i <= int(window/(10*time.Second)); i++ {
		now = t0.Add(time.Duration(i) * 10 * time.Second)
		notifyAll(t, b, canaryEval(rel, until, detail(i, until.Sub(now))))
	}
	return fake, b, rel, &now
}

func TestBotCanaryLine(t *testing.T) {
	fake, b, rel, clock := judgeCanary(t, time.Minute, func(i int, left time.Duration) string {
		return fmt.Sprintf("0.00%d ≤ 0.05 · %ds left", i, int(left.Seconds()))
	})
	*clock = clock.Add(2 * time.Second) // the bot's clock
	notifyAll(t, b, progress(rel, 2, 4))
	notifyAll(t, b, deploy.Event{Kind: deploy.Succeeded, Release: rel, Phase: deploy.PhaseRollout, Duration: 80 * time.Second})

	calls := fake.Accepted()
	// The post, the first evaluation (at 10 s), the one 30 s later (40 s),
	// the promotion's rollout, the outcome: the evaluations at 20, 30, 50
	// and 60 s were not sent on their own.
	if got := strings.Join(methods(calls), " "); got != "chat.postMessage chat.update chat.update chat.update chat.update" {
		t.Fatalf("calls %s, want a post and 4 edits", got)
	}
	line := func(detail string) string {
		return "canary 1 of 4 on latest (sha256:bbbbbbbbbbbb) · " + detail
	}
	for i, want := range map[int][]string{
		1: {line("0.001 ≤ 0.05 · 50s left"), "canary …"},
		2: {line("0.004 ≤ 0.05 · 20s left"), "canary …"},
		3: {line("0.006 ≤ 0.05 · 0s left ✓"), "canary ✓", "rolling 2/4 …"},
		4: {line("0.006 ≤ 0.05 · 0s left ✓"), "canary ✓", "healthy ✓", "deploy succeeded"},
	} {
		for _, s := range want {
			if !strings.Contains(calls[i].Content(), s) {
				t.Errorf("call %d lacks %q:\n%s", i, s, calls[i].Content())
			}
		}
	}
	// A canary is not a rollout: neither its task count nor its end time
	// as a step's detail.
	if c := calls[1].Content(); strings.Contains(c, "canary 1/4") || strings.Contains(c, "until") {
		t.Errorf("the canary shown as a rollout:\n%s", c)
	}
}

// However long the window, a canary's evaluations cost about ten edits:
// an hour judged every 10 s is 360 evaluations.
func TestBotCanaryEditsBounded(t *testing.T) {
	fake, _, _, _ := judgeCanary(t, time.Hour, func(i int, left time.Duration) string {
		return fmt.Sprintf("%d ≤ 5 · %s left", i%5, left)
	})
	if n := len(fake.Accepted()) - 1; n < 9 || n > 11 {
		t.Fatalf("%d edits for 360 evaluations, want about 10 (one per tenth of the hour's window)", n)
	}
}

// A canary that failed: the message says it was rolled back, the
// canary's line names what was judged without a stale time left, the
// reason with the measured value is the Why, and the thread says so. No
// Roll back button: the updater rolled it back.
func TestBotCanaryFailed(t *testing.T) {
	fake := newSlack(t)
	b := NewBot(BotConfig{Token: token, Channel: "C0DEPLOYS", APIURL: fake.APIURL, Buttons: true})
	rel := release()
	until := time.Now().Add(time.Minute)
	reason := "the canary's query gave 0.3, not ≤ 0.05, 20s into its analysis (2 failed evaluations): sum(rate(x[1m]))"
	notifyAll(t, b, deploy.Event{Kind: deploy.Started, Release: rel},
		canaryEval(rel, until, "0.3, not ≤ 0.05 (1 of 2 failures allowed) · 50s left"),
		deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseCanary, RolledBack: true, Reason: reason, Duration: 25 * time.Second})
	calls := fake.Accepted()
	if got := strings.Join(methods(calls), " "); got != "chat.postMessage chat.update chat.update chat.postMessage" {
		t.Fatalf("calls %s, want a post, 2 edits and a reply", got)
	}
	final, reply := calls[2].Content(), calls[3].Text
	for _, s := range []string{"deploy failed and was rolled back", "canary 1 of 4 on latest (sha256:bbbbbbbbbbbb) ✗",
		"canary ✗", "rolled back ✓", "0.3, not ≤ 0.05, 20s into its analysis"} {
		if !strings.Contains(final, s) {
			t.Errorf("final message lacks %q:\n%s", s, final)
		}
	}
	if strings.Contains(final, "50s left") {
		t.Errorf("a failed canary shows its time left:\n%s", final)
	}
	if strings.Contains(final, ActionRollback) {
		t.Errorf("a Roll back button on a canary the updater rolled back:\n%s", final)
	}
	for _, s := range []string{"failed in step `canary`", "back on its previous version", "0.3, not ≤ 0.05"} {
		if !strings.Contains(reply, s) {
			t.Errorf("reply lacks %q:\n%s", s, reply)
		}
	}
}

// A canary failure that is no rollback (someone else wrote the spec
// meanwhile) does not claim the service was not changed; a canary still
// judged when its rollback failed is not marked as passed.
func TestStoryCanaryFailureWords(t *testing.T) {
	rel := release()
	until := time.Now().Add(time.Minute)
	s := &story{}
	s.apply(canaryEval(rel, until, "0.001 ≤ 0.05 · 50s left"))
	s.apply(deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseCanary, Reason: "the service runs another image now"})
	_, blocks := s.render()
	all := contentOf(t, blocks)
	if !strings.Contains(all, ":x: *shop_web* (stack shop): deploy failed") || strings.Contains(all, "not changed") {
		t.Errorf("superseded canary:\n%s", all)
	}
	if d := s.details(); !strings.Contains(d, "canary tasks ran the new version") || strings.Contains(d, "not changed") {
		t.Errorf("superseded canary's reply:\n%s", d)
	}

	s = &story{}
	s.apply(canaryEval(rel, until, "0.001 ≤ 0.05 · 50s left"))
	s.apply(deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollback, Reason: "roll back: Docker said no"})
	if _, blocks := s.render(); !strings.Contains(contentOf(t, blocks), "canary ✗") {
		t.Errorf("a canary whose rollback failed:\n%s", contentOf(t, blocks))
	}
}

// An incoming webhook posts no evaluation; its final message carries the
// canary's last line.
func TestWebhookCanary(t *testing.T) {
	fake := newSlack(t)
	w := NewWebhook(fake.WebhookURL)
	rel := release()
	until := time.Now().Add(time.Minute)
	notifyAll(t, w, deploy.Event{Kind: deploy.Started, Release: rel})
	for i := 5; i >= 0; i-- {
		notifyAll(t, w, canaryEval(rel, until, fmt.Sprintf("0.001 ≤ 0.05 · %ds left", 10*i)))
	}
	notifyAll(t, w, progress(rel, 4, 4), deploy.Event{Kind: deploy.Succeeded, Release: rel, Phase: deploy.PhaseRollout})
	calls := fake.Accepted()
	if len(calls) != 2 {
		t.Fatalf("%d webhook posts, want the start and the end", len(calls))
	}
	if c := calls[1].Content(); !strings.Contains(c, "canary 1 of 4 on latest (sha256:bbbbbbbbbbbb) · 0.001 ≤ 0.05 · 0s left ✓") {
		t.Errorf("end:\n%s", c)
	}
}
