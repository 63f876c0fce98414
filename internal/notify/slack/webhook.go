package slack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	slackgo "github.com/slack-go/slack"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
)

// Webhook posts to a Slack incoming webhook: a message when a deploy
// starts and one when it ends, since a webhook cannot edit what it posted.
type Webhook struct {
	url    string
	client *http.Client
	redact notify.Redactor
	now    func() time.Time
	hosts  []string // for commit links

	// Only the dispatcher's one worker calls Notify: no lock needed.
	outages map[string]time.Time
	steps   map[string]*story // by deploy ID: the final message lists the steps seen
}

var _ notify.Notifier = (*Webhook)(nil)

// NewWebhook returns a Webhook posting to url, which is a secret: it
// never appears in an error. sourceHosts are the hosts besides github.com
// and gitlab.com whose repositories get commit links.
func NewWebhook(url string, sourceHosts ...string) *Webhook {
	return &Webhook{url: url, client: &http.Client{Timeout: 30 * time.Second}, redact: notify.NewRedactor(url),
		now: time.Now, hosts: sourceHosts, outages: map[string]time.Time{}, steps: map[string]*story{}}
}

// Notify posts for the start and the end of a deploy and for outages.
func (w *Webhook) Notify(ctx context.Context, e deploy.Event) (bool, error) {
	msg := slackgo.WebhookMessage{}
	switch e.Kind {
	case deploy.Outage, deploy.Recovered:
		key := e.Part + " " + e.Release.Ref
		var lasted time.Duration
		if e.Kind == deploy.Outage {
			if _, ok := w.outages[key]; !ok {
				w.outages[key] = w.now()
			}
		} else if since, ok := w.outages[key]; ok {
			lasted = w.now().Sub(since)
		}
		msg.Text = outageText(e, lasted)
		if retry, err := w.post(ctx, &msg); err != nil {
			return retry, err
		}
		if e.Kind == deploy.Recovered {
			delete(w.outages, key)
		}
		return false, nil
	case deploy.Pending:
		// A webhook takes no presses: the message says how to decide.
		text, blocks := pending(e, false, "")
		msg.Text, msg.Blocks = text, &slackgo.Blocks{BlockSet: blocks}
		return w.post(ctx, &msg)
	case deploy.Progress:
		// Kept for the final message's list of steps; not posted.
		w.story(e).apply(e)
		return false, notify.ErrSkipped
	case deploy.Started, deploy.Succeeded, deploy.Failed:
	default:
		return false, notify.ErrSkipped
	}
	s := w.story(e)
	s.apply(e)
	text, blocks := s.render()
	msg.Text, msg.Blocks = text, &slackgo.Blocks{BlockSet: blocks}
	if retry, err := w.post(ctx, &msg); err != nil {
		return retry, err
	}
	if e.Kind != deploy.Started {
		delete(w.steps, e.Release.ID)
	}
	return false, nil
}

func (w *Webhook) story(e deploy.Event) *story {
	s := w.steps[e.Release.ID]
	if s == nil {
		s = &story{hosts: w.hosts}
		w.steps[e.Release.ID] = s
	}
	return s
}

// post sends msg itself rather than through slack-go's PostWebhook, whose
// errors drop the body that says what was wrong ("no_service": the URL is
// wrong; "invalid_payload") and carry the URL, which is the secret.
func (w *Webhook) post(ctx context.Context, msg *slackgo.WebhookMessage) (bool, error) {
	body, err := json.Marshal(msg)
	if err != nil {
		return false, fmt.Errorf("encode slack webhook message: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return false, w.redact.Error(fmt.Errorf("post slack webhook: %w", err))
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return true, w.redact.Error(fmt.Errorf("post slack webhook: %w", err))
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode == http.StatusOK {
		return false, nil
	}
	err = w.redact.Error(fmt.Errorf("post slack webhook: %s: %s", resp.Status, strings.TrimSpace(string(answer))))
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		wait := time.Second
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			wait = time.Duration(s) * time.Second
		}
		return true, notify.RetryAfter(err, wait)
	case resp.StatusCode >= 500:
		return true, err
	}
	return false, err
}
