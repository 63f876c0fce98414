package slack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	slackgo "github.com/slack-go/slack"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
)

// ErrRejected means Slack refused the credentials: retrying will not help,
// a person must fix the setting.
var ErrRejected = errors.New("slack rejected the token")

// BotConfig configures a Bot.
type BotConfig struct {
	Token   string
	Channel string // an ID (C0123…) or a name (#deploys)
	// APIURL is the Web API base ending in "/"; "" means Slack's.
	APIURL string
	// Memo keeps each deploy's message across updater restarts; nil: none.
	Memo notify.Memo
	// SourceHosts are the hosts besides github.com and gitlab.com whose
	// repositories get commit links.
	SourceHosts []string
	// Buttons puts Approve and Reject on pending approvals and Roll back
	// on finished deploys: set when Socket Mode (Listener) takes presses.
	Buttons bool
	// StatusURL is the status page, linked from a pending approval's
	// message when there are no buttons; "" when unknown.
	StatusURL string
}

// Bot posts one message per deploy with a bot token, edits it as the
// deploy moves and answers in its thread with the details of a failure.
type Bot struct {
	api     *slackgo.Client
	channel string
	redact  notify.Redactor
	now     func() time.Time
	memo    notify.Memo
	hosts   []string
	buttons bool
	status  string

	// Only the dispatcher's one worker calls Notify, so these maps need no
	// lock (see notify.Notifier).
	deploys map[string]*thread
	outages map[string]time.Time
	// undoable is, by service ID, the last finished deploy's message that
	// carries Roll back: the next deploy of the service takes it off, so
	// only the message of what runs now offers to undo it.
	undoable map[string]shownMessage
}

// shownMessage is a posted message as it would be without its buttons.
type shownMessage struct {
	channel, ts, text string
	blocks            []slackgo.Block
}

// thread is a deploy's message in Slack.
type thread struct {
	story
	channel, ts string // the message, once posted: channel is the ID Slack answered with
	shown       string // the message last sent, to skip edits that change nothing
	replied     bool
	// sent is when the message was last posted or edited; canaryEvery
	// spaces the edits of a canary's evaluations (canaryGap), set at its
	// first one.
	sent        time.Time
	canaryEvery time.Duration
}

// A canary is evaluated every updater.canary.interval (10 s by default)
// over its window (up to an hour), and each evaluation changes the
// message (the value, the time left). Edited for every one, a canary
// would cost up to 360 chat.update calls; a rollout's progress costs one
// per task that turns healthy. So an evaluation edits the message only
// when the last edit is at least canaryGap old, and at least a tenth of
// the window left at the first evaluation: about ten edits whatever the
// window, two in the default minute. The evaluations skipped are not
// lost: the story keeps the last, which the next edit shows (the
// promotion's rollout, the outcome).
const canaryGap = 30 * time.Second

// throttled reports whether e, a canary's evaluation, is one whose edit
// is skipped: not the first of its canary, and the message was edited
// too recently.
func (th *thread) throttled(e deploy.Event, now time.Time) bool {
	if e.Kind != deploy.Progress || e.Step == nil || e.Step.Phase != deploy.PhaseCanary {
		return false
	}
	if th.canaryEvery == 0 {
		th.canaryEvery = max(canaryGap, e.Step.Until.Sub(now)/10)
		return false
	}
	return now.Sub(th.sent) < th.canaryEvery
}

var _ notify.Notifier = (*Bot)(nil)

// NewBot returns a Bot. No request is made until Check or Notify.
func NewBot(cfg BotConfig) *Bot {
	opts := []slackgo.Option{slackgo.OptionHTTPClient(&http.Client{Timeout: 30 * time.Second})}
	if cfg.APIURL != "" {
		opts = append(opts, slackgo.OptionAPIURL(cfg.APIURL))
	}
	return &Bot{
		api:      slackgo.New(cfg.Token, opts...),
		channel:  cfg.Channel,
		redact:   notify.NewRedactor(cfg.Token),
		now:      time.Now,
		memo:     cfg.Memo,
		hosts:    cfg.SourceHosts,
		buttons:  cfg.Buttons,
		status:   cfg.StatusURL,
		deploys:  map[string]*thread{},
		outages:  map[string]time.Time{},
		undoable: map[string]shownMessage{},
	}
}

// Check asks Slack whether the token is valid (auth.test). An error
// wrapping ErrRejected is a bad setting; any other error says only that
// Slack could not be asked.
func (b *Bot) Check(ctx context.Context) error {
	_, err := b.api.AuthTestContext(ctx)
	if err == nil {
		return nil
	}
	var se slackgo.SlackErrorResponse
	if errors.As(err, &se) && rejected[se.Err] {
		return fmt.Errorf("%w: %s", ErrRejected, se.Err)
	}
	return b.redact.Error(fmt.Errorf("check slack token: %w", err))
}

// rejected are the auth.test answers that mean the token itself is bad.
var rejected = map[string]bool{"invalid_auth": true, "not_authed": true, "account_inactive": true,
	"token_revoked": true, "token_expired": true, "no_permission": true, "missing_scope": true}

// Notify posts, edits or replies for e.
func (b *Bot) Notify(ctx context.Context, e deploy.Event) (bool, error) {
	switch e.Kind {
	case deploy.Outage, deploy.Recovered:
		return b.outage(ctx, e)
	case deploy.Pending:
		// Its own message, not a deploy's living one: the deploy an
		// approval lets go gets its own ID and message.
		text, blocks := pending(e, b.buttons, b.status)
		if _, _, err := b.api.PostMessageContext(ctx, b.channel, slackgo.MsgOptionText(text, false), slackgo.MsgOptionBlocks(blocks...)); err != nil {
			return classify(b.redact.Error(fmt.Errorf("post slack message to %s: %w", b.channel, err)))
		}
		return false, nil
	case deploy.Started, deploy.Progress, deploy.Succeeded, deploy.Failed:
	default:
		return false, notify.ErrSkipped
	}
	th := b.deploys[e.Release.ID]
	if th == nil {
		// A deploy first seen after its start: resumed after a restart,
		// whose message the memo may know, or one whose start was given up,
		// which gets a message now.
		th = &thread{story: story{hosts: b.hosts}}
		if e.Resumed && b.memo != nil {
			if v, ok, err := b.memo.Recall(ctx, e.Release.ID, memoKey); err == nil && ok {
				th.channel, th.ts, _ = strings.Cut(v, " ")
			}
		}
		b.deploys[e.Release.ID] = th
	}
	// Asked before apply: the first evaluation of a canary is news.
	throttled := th.throttled(e, b.now()) && th.ts != ""
	th.apply(e)
	if throttled {
		return false, notify.ErrSkipped
	}
	text, blocks := th.render()
	final := e.Kind == deploy.Succeeded || e.Kind == deploy.Failed
	undo := final && b.buttons && rollbackable(e)
	if undo {
		blocks = append(blocks, rollbackActions(th.rel))
	}
	b.retire(ctx, e.Release.ServiceID, th)
	shown := fingerprint(text, blocks)
	if !final && th.ts != "" && shown == th.shown {
		return false, notify.ErrSkipped
	}
	// A final message that is already shown means this is a retry after
	// the edit went through and the thread reply did not: the reply alone
	// is due.
	if th.ts == "" {
		if err := b.post(ctx, th, text, blocks); err != nil {
			return classify(err)
		}
		if b.memo != nil && !final {
			// Best effort: the message is posted; only a restart would lose it.
			_ = b.memo.Remember(ctx, e.Release.ID, memoKey, th.channel+" "+th.ts)
		}
	} else if shown != th.shown {
		_, _, _, err := b.api.UpdateMessageContext(ctx, th.channel, th.ts,
			slackgo.MsgOptionText(text, false), slackgo.MsgOptionBlocks(blocks...))
		var se slackgo.SlackErrorResponse
		if errors.As(err, &se) && se.Err == "message_not_found" {
			// Someone deleted it: a new message beats an outcome nobody sees.
			err = b.post(ctx, th, text, blocks)
		}
		if err != nil {
			return classify(b.redact.Error(fmt.Errorf("update slack message: %w", err)))
		}
	}
	if shown != th.shown {
		th.sent = b.now() // an edit (or the post) was made: the throttle counts from it
	}
	th.shown = shown
	if e.Kind == deploy.Failed && !th.replied {
		_, _, err := b.api.PostMessageContext(ctx, th.channel, slackgo.MsgOptionText(th.details(), false),
			slackgo.MsgOptionTS(th.ts))
		if err != nil {
			return classify(b.redact.Error(fmt.Errorf("post slack thread reply: %w", err)))
		}
		th.replied = true
	}
	if undo {
		b.undoable[e.Release.ServiceID] = shownMessage{channel: th.channel, ts: th.ts, text: text, blocks: blocks[:len(blocks)-1]}
	}
	if final {
		delete(b.deploys, e.Release.ID)
		if b.memo != nil {
			_ = b.memo.Drop(ctx, e.Release.ID, memoKey) // best effort: a leftover costs one small record
		}
	}
	return false, nil
}

// retire takes Roll back off the service's previous deploy's message once
// another deploy of it (th) is under way: that button would undo a
// version the service no longer runs. Best effort: a failed edit leaves a
// button whose press names the digest it returns to, and is asked to
// confirm.
func (b *Bot) retire(ctx context.Context, serviceID string, th *thread) {
	m, ok := b.undoable[serviceID]
	if !ok || m.ts == th.ts {
		return
	}
	delete(b.undoable, serviceID)
	_, _, _, _ = b.api.UpdateMessageContext(ctx, m.channel, m.ts, slackgo.MsgOptionText(m.text, false), slackgo.MsgOptionBlocks(m.blocks...))
}

// memoKey names the Bot's entries in the memo.
const memoKey = "slack"

func (b *Bot) post(ctx context.Context, th *thread, text string, blocks []slackgo.Block) error {
	ch, ts, err := b.api.PostMessageContext(ctx, b.channel,
		slackgo.MsgOptionText(text, false), slackgo.MsgOptionBlocks(blocks...))
	if err != nil {
		return b.redact.Error(fmt.Errorf("post slack message to %s: %w", b.channel, err))
	}
	th.channel, th.ts = ch, ts
	return nil
}

// fingerprint identifies a message's content, to tell whether an edit
// would change anything.
func fingerprint(text string, blocks []slackgo.Block) string {
	b, _ := json.Marshal(blocks)
	return text + "\x00" + string(b)
}

func (b *Bot) outage(ctx context.Context, e deploy.Event) (bool, error) {
	key := e.Part + " " + e.Release.Ref
	var lasted time.Duration
	if e.Kind == deploy.Outage {
		if _, ok := b.outages[key]; !ok {
			b.outages[key] = b.now()
		}
	} else if since, ok := b.outages[key]; ok {
		lasted = b.now().Sub(since)
	}
	text := outageText(e, lasted)
	if _, _, err := b.api.PostMessageContext(ctx, b.channel, slackgo.MsgOptionText(text, false)); err != nil {
		return classify(b.redact.Error(fmt.Errorf("post slack message to %s: %w", b.channel, err)))
	}
	if e.Kind == deploy.Recovered {
		delete(b.outages, key)
	}
	return false, nil
}

// temporary are Slack error codes worth another try.
var temporary = map[string]bool{"ratelimited": true, "internal_error": true, "fatal_error": true,
	"service_unavailable": true, "request_timeout": true}

// classify says whether err is worth retrying and carries Slack's
// requested wait for a 429.
func classify(err error) (bool, error) {
	var rl *slackgo.RateLimitedError
	if errors.As(err, &rl) {
		return true, notify.RetryAfter(err, max(rl.RetryAfter, time.Second))
	}
	var sc slackgo.StatusCodeError
	if errors.As(err, &sc) {
		return sc.Retryable(), err
	}
	var se slackgo.SlackErrorResponse
	if errors.As(err, &se) {
		return temporary[se.Err], err
	}
	// Timeouts, refused connections, an answer that is not JSON (a proxy's
	// error page): all may pass.
	return true, err
}
