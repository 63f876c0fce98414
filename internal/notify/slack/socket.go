package slack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	slackgo "github.com/slack-go/slack"
	"github.com/slack-go/slack/socketmode"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
)

// Decisions are what the buttons ask of the updater.
type Decisions interface {
	// Approve lets the pending deploy id go ahead; ErrDecided when it is
	// no longer pending.
	Approve(ctx context.Context, id string) (deploy.Approval, error)
	// Reject turns the pending deploy id down; ErrDecided likewise.
	Reject(ctx context.Context, id string) (deploy.Approval, error)
	// StartRollback starts a rollback a person asked for and returns once
	// it began; its outcome arrives on Rolling.Done.
	StartRollback(ctx context.Context, req deploy.RollbackRequest) (deploy.Rolling, error)
}

// ListenerConfig configures a Listener.
type ListenerConfig struct {
	Token    string // the bot token: it answers presses (thread replies, refusals, edits)
	AppToken string // the app-level token (xapp-…) that opens the Socket Mode connection
	// APIURL is the Web API base ending in "/"; "" means Slack's.
	APIURL string
	// Approvers are the user IDs that may press; everyone else is refused.
	Approvers []string
	Decisions Decisions
	Log       *slog.Logger
}

// Listener takes presses of the buttons the Bot puts on its messages over
// Slack's Socket Mode: a WebSocket the updater opens, so nothing listens
// on a port. Each press is acknowledged at once (Slack wants it within
// 3 s) and acted on in the background; its outcome is posted in the
// message's thread, naming who pressed.
type Listener struct {
	api       *slackgo.Client
	approvers []string
	dec       Decisions
	log       *slog.Logger
	redact    notify.Redactor
	now       func() time.Time

	mu sync.Mutex
	// seen are the envelopes taken, by ID: Slack sends one again when an
	// ack was lost (a dropped connection), and a press must count once.
	seen map[string]time.Time
	// decided says who decided an approval or asked to roll a deploy back
	// here, by approval or deploy ID, so a second press names the first.
	decided map[string]string
	wg      sync.WaitGroup // presses being acted on
}

// NewListener returns a Listener; Run connects it.
func NewListener(cfg ListenerConfig) *Listener {
	opts := []slackgo.Option{slackgo.OptionHTTPClient(&http.Client{Timeout: 30 * time.Second}),
		slackgo.OptionAppLevelToken(cfg.AppToken)}
	if cfg.APIURL != "" {
		opts = append(opts, slackgo.OptionAPIURL(cfg.APIURL))
	}
	return &Listener{api: slackgo.New(cfg.Token, opts...), approvers: slices.Clone(cfg.Approvers), dec: cfg.Decisions,
		log: cfg.Log, redact: notify.NewRedactor(cfg.Token, cfg.AppToken), now: time.Now,
		seen: map[string]time.Time{}, decided: map[string]string{}}
}

// Run keeps the Socket Mode connection up, reconnecting after a drop,
// until ctx ends, then waits for the presses being acted on. An app token
// Slack refuses ends it with an error wrapping ErrRejected.
func (l *Listener) Run(ctx context.Context) error {
	defer l.wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// slack-go logs only in debug mode, which is off: its log goes nowhere.
	sm := socketmode.New(l.api, socketmode.OptionLog(log.New(io.Discard, "", 0)))
	done := make(chan error, 1)
	go func() { done <- sm.RunContext(ctx) }()
	down := false // a connection failure is logged once until connected again
	for {
		select {
		case err := <-done:
			if ctx.Err() != nil {
				return nil
			}
			if err != nil && rejected[err.Error()] {
				return fmt.Errorf("%w: the app-level token (SLACK_APP_TOKEN): %s", ErrRejected, err.Error())
			}
			return l.redact.Error(fmt.Errorf("slack socket mode: %w", err))
		case evt := <-sm.Events:
			switch evt.Type {
			case socketmode.EventTypeConnected:
				down = false
				n := 0
				if c, ok := evt.Data.(*socketmode.ConnectedEvent); ok {
					n = c.ConnectionCount
				}
				l.log.Info("slack socket mode connected", "connection", n+1)
			case socketmode.EventTypeConnectionError, socketmode.EventTypeIncomingError:
				if !down {
					l.log.Warn("slack socket mode connection failed; reconnecting", "err", l.redact.Error(eventErr(evt)))
				}
				down = true
			case socketmode.EventTypeEventsAPI, socketmode.EventTypeSlashCommand:
				// Not the updater's (an app with events or commands turned
				// on too): acked, so Slack does not send them again.
				if evt.Request != nil {
					_ = sm.AckCtx(ctx, evt.Request.EnvelopeID, nil)
				}
			case socketmode.EventTypeInteractive:
				if evt.Request == nil {
					continue
				}
				// The ack first: Slack shows the person an error after 3 s
				// without one, and sends the envelope again.
				if err := sm.AckCtx(ctx, evt.Request.EnvelopeID, nil); err != nil {
					l.log.Warn("slack press not acknowledged", "envelope_id", evt.Request.EnvelopeID, "err", err)
				}
				cb, ok := evt.Data.(slackgo.InteractionCallback)
				if !ok || !l.first(evt.Request.EnvelopeID) {
					continue
				}
				l.wg.Add(1)
				go func() {
					defer l.wg.Done()
					// Not ctx alone: a press taken just before shutdown is
					// still answered, within bounds.
					pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pressTimeout)
					defer cancel()
					l.press(pctx, ctx.Done(), cb)
				}()
			}
		}
	}
}

func eventErr(evt socketmode.Event) error {
	switch d := evt.Data.(type) {
	case *slackgo.ConnectionErrorEvent:
		return d.ErrorObj
	case *slackgo.IncomingEventError:
		return d.ErrorObj
	}
	return errors.New(string(evt.Type))
}

// pressTimeout bounds the Slack and updater calls of one press; the wait
// for a rollback's outcome ends with the Listener instead.
const pressTimeout = 30 * time.Second

// keepSeen is how long an envelope ID is remembered: Slack retries within
// minutes, so an hour is plenty, and it bounds the map.
const keepSeen = time.Hour

// first reports whether envelope id is seen for the first time.
func (l *Listener) first(id string) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.seen[id]; ok {
		return false
	}
	for k, at := range l.seen {
		if now.Sub(at) > keepSeen {
			delete(l.seen, k)
		}
	}
	l.seen[id] = now
	return true
}

// mayPress reports whether user is an approver.
func (l *Listener) mayPress(user string) bool {
	return user != "" && slices.Contains(l.approvers, user)
}

// claim notes who acts on key first; it returns who did when someone
// already had.
func (l *Listener) claim(key, who string) (first string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev, taken := l.decided[key]; taken {
		return prev, false
	}
	l.decided[key] = who
	return who, true
}

func (l *Listener) unclaim(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.decided, key)
}

// pressed is one press of one of the updater's buttons.
type pressed struct {
	user, channel, ts string
	action, value     string
	blocks            []slackgo.Block // the message's, to edit the buttons away
	text              string
}

// pressOf finds the updater's button in a block_actions callback.
func pressOf(cb slackgo.InteractionCallback) (pressed, bool) {
	if cb.Type != slackgo.InteractionTypeBlockActions {
		return pressed{}, false
	}
	p := pressed{user: cb.User.ID, channel: cb.Container.ChannelID, ts: cb.Container.MessageTs,
		blocks: cb.Message.Blocks.BlockSet, text: cb.Message.Text}
	if p.channel == "" {
		p.channel = cb.Channel.ID
	}
	if p.ts == "" {
		p.ts = cb.Message.Timestamp
	}
	for _, a := range cb.ActionCallback.BlockActions {
		switch a.ActionID {
		case ActionApprove, ActionReject, ActionRollback:
			p.action, p.value = a.ActionID, a.Value
			return p, p.channel != "" && p.ts != ""
		}
	}
	return pressed{}, false
}

// press acts on one press and answers it.
func (l *Listener) press(ctx context.Context, stop <-chan struct{}, cb slackgo.InteractionCallback) {
	p, ok := pressOf(cb)
	if !ok {
		return
	}
	log := l.log.With("slack_user", p.user, "action", p.action)
	if !l.mayPress(p.user) {
		log.Warn("slack press refused: not an approver (SLACK_APPROVERS)")
		l.ephemeral(ctx, p, "Only the approvers listed in SLACK_APPROVERS may press this button; nothing was done.")
		return
	}
	who := "<@" + p.user + ">"
	switch p.action {
	case ActionApprove, ActionReject:
		l.decide(ctx, log, p, who)
	case ActionRollback:
		l.rollback(ctx, stop, log, p, who)
	}
}

func (l *Listener) decide(ctx context.Context, log *slog.Logger, p pressed, who string) {
	verb, did := "approve", "approved"
	if p.action == ActionReject {
		verb, did = "reject", "rejected"
	}
	var a deploy.Approval
	var err error
	if first, ok := l.claim(p.value, who+" "+did); !ok {
		l.reply(ctx, p, fmt.Sprintf("%s pressed %s: already decided (%s); nothing was done.", who, verb, first))
		return
	}
	if verb == "approve" {
		a, err = l.dec.Approve(ctx, p.value)
	} else {
		a, err = l.dec.Reject(ctx, p.value)
	}
	switch {
	case errors.Is(err, deploy.ErrDecided), errors.Is(err, deploy.ErrNotFound):
		// Decided elsewhere (the API, the page, the CLI), expired or
		// superseded: the claim stays, since nothing here can change it.
		l.reply(ctx, p, fmt.Sprintf("%s pressed %s: already decided: %s. Nothing was done.", who, verb, esc(err.Error())))
		l.claimAs(p.value, "decided elsewhere: "+esc(err.Error()))
		log.Info("slack press: approval already decided", "deploy_id", p.value, "err", err)
		return
	case err != nil:
		l.unclaim(p.value) // a failure to record a rejection: pressing again may work
		l.reply(ctx, p, fmt.Sprintf("%s pressed %s, which failed: %s. Nothing was decided; press again or use `updater %s %s`.",
			who, verb, esc(err.Error()), verb, esc(p.value)))
		log.Error("slack press failed", "deploy_id", p.value, "err", err)
		return
	}
	outcome := "it deploys at the next check"
	if verb == "reject" {
		outcome = "the digest is not deployed, nor asked about again, until the tag moves"
	}
	log.Info("slack press: deploy "+did, "deploy_id", a.ID, "service", a.ServiceName, "to_digest", a.To)
	l.reply(ctx, p, fmt.Sprintf("%s %s deploy %s of *%s* (`%s`): %s.", who, did, esc(a.ID), esc(a.ServiceName), short(a.To), outcome))
	l.edit(ctx, p, fmt.Sprintf("%s by %s %s", capital(did), who, stamp(l.now())))
}

func (l *Listener) claimAs(key, what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.decided[key] = what
}

func (l *Listener) rollback(ctx context.Context, stop <-chan struct{}, log *slog.Logger, p pressed, who string) {
	var v rollbackValue
	if err := json.Unmarshal([]byte(p.value), &v); err != nil || v.Service == "" || v.Deploy == "" {
		log.Warn("slack press: a Roll back button without its deploy", "value", p.value)
		return
	}
	key := "rollback " + v.Deploy
	if first, ok := l.claim(key, who); !ok {
		l.reply(ctx, p, fmt.Sprintf("%s asked for a roll back of *%s*: already asked for by %s; nothing more was done.", who, esc(v.Service), first))
		return
	}
	r, err := l.dec.StartRollback(ctx, deploy.RollbackRequest{Service: v.Service, To: v.To, By: "slack:" + p.user})
	if err != nil {
		l.unclaim(key) // nothing began: a press after the cause is fixed may go ahead
		log.Warn("slack press: rollback refused", "service", v.Service, "err", err)
		l.reply(ctx, p, fmt.Sprintf("%s asked for a roll back of *%s*: not started: %s. The service was not changed.", who, esc(v.Service), esc(err.Error())))
		return
	}
	rel := r.Release
	log.Info("slack press: rollback started", "service", rel.ServiceName, "deploy_id", rel.ID, "from_digest", rel.From, "to_digest", rel.To)
	l.reply(ctx, p, fmt.Sprintf("%s asked for a roll back of *%s*: started (deploy %s, `%s` → `%s`).", who, esc(rel.ServiceName), esc(rel.ID), short(rel.From), short(rel.To)))
	var ev deploy.Event
	select {
	case ev = <-r.Done:
	case <-stop:
		return // the updater stops; the rollback's own message tells how it ends
	}
	// The rollback may outlast pressTimeout: the answer gets its own.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pressTimeout)
	defer cancel()
	switch ev.Kind {
	case deploy.Succeeded:
		l.reply(ctx, p, fmt.Sprintf("Roll back of *%s* asked for by %s succeeded: it runs `%s` again; `%s` is not deployed again until its tag moves.",
			esc(rel.ServiceName), who, short(rel.To), short(rel.From)))
	default:
		l.unclaim(key)
		l.reply(ctx, p, fmt.Sprintf("Roll back of *%s* asked for by %s failed in step `%s`: %s", esc(rel.ServiceName), who, ev.Phase, truncate(esc(ev.Reason), maxSection)))
	}
}

func capital(s string) string {
	if s == "" {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

// reply posts text in the pressed message's thread; a failure is logged,
// since the press itself took effect.
func (l *Listener) reply(ctx context.Context, p pressed, text string) {
	if _, _, err := l.api.PostMessageContext(ctx, p.channel, slackgo.MsgOptionText(text, false), slackgo.MsgOptionTS(p.ts)); err != nil {
		l.log.Warn("post slack thread reply to a press", "slack_user", p.user, "err", l.redact.Error(err))
	}
}

func (l *Listener) ephemeral(ctx context.Context, p pressed, text string) {
	if _, err := l.api.PostEphemeralContext(ctx, p.channel, p.user, slackgo.MsgOptionText(text, false)); err != nil {
		l.log.Warn("post slack refusal", "slack_user", p.user, "err", l.redact.Error(err))
	}
}

// edit takes the buttons off a decided approval's message, saying who
// decided; best effort, as the thread says it too.
func (l *Listener) edit(ctx context.Context, p pressed, line string) {
	if len(p.blocks) == 0 {
		return
	}
	if _, _, _, err := l.api.UpdateMessageContext(ctx, p.channel, p.ts, slackgo.MsgOptionText(p.text, false),
		slackgo.MsgOptionBlocks(decidedBlocks(p.blocks, line)...)); err != nil {
		l.log.Warn("edit decided slack approval", "slack_user", p.user, "err", l.redact.Error(err))
	}
}
