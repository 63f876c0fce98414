// Package urls reaches Discord, Microsoft Teams, ntfy, Gotify, email and
// the other services shoutrrr speaks, each named by a URL
// (UPDATER_NOTIFY_URLS), the way Watchtower and Diun do. It uses
// github.com/nicholas-fedor/shoutrrr, the maintained fork (the one the
// maintained Watchtower fork uses; containrrr/shoutrrr's last release was
// in 2023).
//
// These services cannot edit what they posted, so a deploy gets one
// message, when it ends; a pending approval, an outage and its end get one
// each; starts and steps get none.
package urls

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/nicholas-fedor/shoutrrr/pkg/router"
	"github.com/nicholas-fedor/shoutrrr/pkg/types"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
)

// Sender sends to the service one URL names.
type Sender struct {
	name   string // the URL's scheme: discord, teams, ntfy…
	send   func(ctx context.Context, msg string, params *types.Params) error
	redact notify.Redactor
}

var _ notify.Notifier = (*Sender)(nil)

// New makes a Sender for rawURL. Neither the URL nor any part of it is in
// the error: it carries the service's token.
func New(rawURL string) (*Sender, error) {
	red := redactor(rawURL)
	scheme, _, _ := strings.Cut(rawURL, "://")
	var r router.ServiceRouter // no logger: shoutrrr logs URLs
	if _, err := r.Locate(rawURL); err != nil {
		return nil, fmt.Errorf("notify URL (%s): %w", scheme, red.Error(err))
	}
	return &Sender{name: scheme, redact: red, send: func(ctx context.Context, msg string, params *types.Params) error {
		// A service made afresh for each message: some keep what one
		// message's params set (ntfy its title) for the next.
		svc, err := r.Locate(rawURL)
		if err != nil {
			return err
		}
		// A send takes no context: it is left to end by its own client's
		// timeout (Discord 30 s, ntfy and Gotify 10 s; Teams' has none)
		// while the attempt ends with ctx. The result has room, so the
		// goroutine ends with the send, answered or not.
		done := make(chan error, 1)
		go func() { done <- svc.Send(msg, params) }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return fmt.Errorf("no answer: %w", ctx.Err())
		}
	}}, nil
}

// Name is the service's scheme, for log lines.
func (s *Sender) Name() string { return s.name }

// Notify sends the message for e, if e is one that has one.
func (s *Sender) Notify(ctx context.Context, e deploy.Event) (bool, error) {
	title, msg, ok := Message(e)
	if !ok {
		return false, notify.ErrSkipped
	}
	params := types.Params{}
	params.SetTitle(title)
	if err := s.send(ctx, msg, &params); err != nil {
		err = s.redact.Error(fmt.Errorf("send to %s: %w", s.name, err))
		return retryable(err), err
	}
	return false, nil
}

// clientError finds a 4xx status in a shoutrrr error ("400 Bad Request"),
// which their services write into the message rather than a type.
var clientError = regexp.MustCompile(`\b4\d\d [A-Z]`)

// retryable: a refusal (a 4xx other than 408 and 429: a wrong token, a
// bad request) will not change; anything else (a timeout, no answer, a
// 5xx) may.
func retryable(err error) bool {
	m := clientError.FindString(err.Error())
	return m == "" || strings.HasPrefix(m, "408") || strings.HasPrefix(m, "429")
}

// Message is what is sent for e: a title, a line of text and whether e
// has a message at all.
func Message(e deploy.Event) (title, text string, ok bool) {
	r := e.Release
	what := r.ServiceName
	if r.Stack != "" && !strings.HasPrefix(what, r.Stack+"_") {
		what = r.Stack + "/" + what
	}
	move := fmt.Sprintf("%s %s → %s", r.Ref, deploy.Short(r.From), deploy.Short(r.To))
	if r.From == "" {
		move = fmt.Sprintf("%s → %s", r.Ref, deploy.Short(r.To))
	}
	took := e.Duration.Round(time.Second).String()
	switch e.Kind {
	case deploy.Succeeded:
		return "Deployed " + what, fmt.Sprintf("%s deployed: %s, in %s.", what, move, took), true
	case deploy.Failed:
		if e.RolledBack {
			return "Rolled back " + what, fmt.Sprintf("%s rolled back in %s: %s. %s; back on the previous version after %s.",
				what, e.Phase, e.Reason, move, took), true
		}
		state := "the service was not changed"
		if e.Phase == deploy.PhaseRollback || e.Phase == deploy.PhaseRollout || e.Phase == deploy.PhaseUpdate {
			state = "the service may be on either version: look at it"
		}
		return "Deploy failed: " + what, fmt.Sprintf("%s failed in %s: %s. %s; %s.", what, e.Phase, e.Reason, move, state), true
	case deploy.Pending:
		return "Approval needed: " + what, fmt.Sprintf("%s waits for approval: %s (%s).", what, move, e.Reason), true
	case deploy.Outage:
		return "Updater: " + e.Part + " failing", fmt.Sprintf("The updater cannot reach %s%s: %s. Deploys wait until it answers.",
			e.Part, about(e), e.Reason), true
	case deploy.Recovered:
		return "Updater: " + e.Part + " answers", fmt.Sprintf("%s%s answers again.", upper(e.Part), about(e)), true
	}
	return "", "", false
}

func about(e deploy.Event) string {
	if e.Part == "registry" && e.Release.Ref != "" {
		return " (" + e.Release.Ref + ")"
	}
	return ""
}

func upper(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// redactor hides the URL and every part of it that may be a token: its
// user and password, its path segments and its query values. A service's
// error names the URL it built from them (Teams': its webhook URL), not
// the shoutrrr URL, so the parts go one by one.
func redactor(raw string) notify.Redactor {
	secrets := []string{raw}
	if _, rest, ok := strings.Cut(raw, "://"); ok {
		secrets = append(secrets, rest)
	}
	if u, err := url.Parse(raw); err == nil {
		if u.User != nil {
			secrets = append(secrets, u.User.Username())
			if p, ok := u.User.Password(); ok {
				secrets = append(secrets, p)
			}
		}
		for _, seg := range strings.Split(u.Path, "/") {
			if len(seg) >= 4 {
				secrets = append(secrets, seg)
			}
		}
		for _, vs := range u.Query() {
			for _, v := range vs {
				if len(v) >= 8 {
					secrets = append(secrets, v)
				}
			}
		}
	}
	return notify.NewRedactor(secrets...)
}
