package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
	"github.com/updater-dev/updater/internal/notify/rollbar"
	"github.com/updater-dev/updater/internal/notify/slack"
	"github.com/updater-dev/updater/internal/notify/urls"
	"github.com/updater-dev/updater/internal/notify/webhook"
	"github.com/updater-dev/updater/internal/swarm"
)

// notifiers starts a dispatcher for the configured notifiers (Slack,
// Rollbar, the webhook, each URL of UPDATER_NOTIFY_URLS); nil when none
// is. A URL shoutrrr does not take is a configuration error. A Slack token that Slack rejects is a configuration error
// (ErrRejected); Slack being unreachable at start is not, since the
// dispatcher retries and deploys never wait on it.
// The Swarm keeps each deploy's Slack message and Rollbar deploy (their
// memo), so a deploy resumed after a restart reports to them.
func (a *App) notifiers(ctx context.Context) (*notify.Dispatcher, error) {
	cfg, log, memo := a.cfg, a.Log, notify.Memo(a.sw)
	var ns []notify.Named
	switch s := cfg.Slack; {
	case s.Token != "":
		// With an app token the messages carry buttons, which `updater
		// run` takes presses of (listenSlack); UPDATER_URL, when set, is
		// where people find the status page otherwise.
		bot := slack.NewBot(slack.BotConfig{Token: s.Token, Channel: s.Channel, APIURL: s.APIURL, Memo: memo, SourceHosts: cfg.SourceHosts,
			Buttons: s.AppToken != "", StatusURL: cfg.URL})
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := bot.Check(cctx)
		cancel()
		if errors.Is(err, slack.ErrRejected) {
			return nil, err
		}
		if err != nil {
			log.Warn("slack token not checked; messages are retried when slack answers", "err", err)
		}
		ns = append(ns, notify.Named{Name: "slack", Notifier: bot})
	case s.WebhookURL != "":
		ns = append(ns, notify.Named{Name: "slack", Notifier: slack.NewWebhook(s.WebhookURL, cfg.SourceHosts...)})
	}
	if cfg.Rollbar.Token != "" {
		rc := a.rollbarConfig()
		rc.Memo = memo
		ns = append(ns, notify.Named{Name: "rollbar", Notifier: rollbar.NewDeploys(rc)})
	}
	if n := cfg.Notify; n.WebhookURL != "" {
		ns = append(ns, notify.Named{Name: "webhook", Notifier: webhook.New(webhook.Config{URL: n.WebhookURL, Secret: n.WebhookSecret})})
	}
	for i, raw := range cfg.Notify.URLs {
		// One notifier (and queue) per URL: a retry for one service must
		// not post twice to another that took the message.
		u, err := urls.New(raw)
		if err != nil {
			return nil, fmt.Errorf("UPDATER_NOTIFY_URLS entry %d: %w", i+1, err)
		}
		ns = append(ns, notify.Named{Name: u.Name(), Notifier: u})
	}
	if len(ns) == 0 {
		return nil, nil
	}
	// The notifiers leave the host: hook output goes only when asked
	// for, and no secret of the updater's goes at all.
	secrets := append([]string{cfg.Slack.Token, cfg.Slack.AppToken, cfg.Slack.WebhookURL, cfg.Rollbar.Token, cfg.APIToken, cfg.APIReadToken,
		cfg.WebhookSecret, cfg.WebhookSecretGitHub, cfg.WebhookSecretDockerHub, cfg.WebhookSecretDistribution,
		cfg.Notify.WebhookURL, cfg.Notify.WebhookSecret, cfg.PrometheusToken}, cfg.Notify.URLs...)
	red := notify.NewRedactor(secrets...)
	for i := range ns {
		ns[i].Notifier = notify.HookLogs{Notifier: ns[i].Notifier, Report: cfg.ReportHookLogs, Redactor: red}
	}
	return notify.NewDispatcher(log, notify.DefaultPolicy(), ns...), nil
}

func (a *App) rollbarConfig() rollbar.Config {
	r := a.cfg.Rollbar
	return rollbar.Config{Token: r.Token, Environment: r.Environment, Endpoint: r.Endpoint, CodeVersion: a.opts.Version}
}

// pruning wires image pruning when UPDATER_PRUNE asks for it. The prune
// job runs the updater's own image on every node unless
// UPDATER_PRUNE_IMAGE names another.
func pruning(ctx context.Context, cfg config.Config, sw *swarm.Swarm) (deploy.Pruning, error) {
	if !cfg.Prune.AfterDeploy {
		return deploy.Pruning{}, nil
	}
	image := cfg.Prune.Image
	if image == "" {
		var err error
		if image, err = sw.SelfImage(ctx); err != nil {
			return deploy.Pruning{}, fmt.Errorf("UPDATER_PRUNE=after-deploy needs the image the prune job runs: %w; set UPDATER_PRUNE_IMAGE to the updater's image", err)
		}
	}
	return deploy.Pruning{Nodes: sw, Keep: cfg.Prune.Keep, Image: image}, nil
}
