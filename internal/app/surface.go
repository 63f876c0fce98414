package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/httpapi"
	"github.com/updater-dev/updater/internal/metrics"
)

// operating is what `updater run` serves over HTTP besides the pipeline:
// its metrics, its recent deploys, the Docker calls that hang and the
// records set aside.
type operating struct {
	p       *deploy.Pipeline
	docker  httpapi.Docker
	records httpapi.Records
	metrics *metrics.Metrics
	history *httpapi.History
}

// keptDeploys bounds the in-memory history the API and the page show.
const keptDeploys = 100

func newOperating(p *deploy.Pipeline, docker httpapi.Docker, records httpapi.Records) *operating {
	return &operating{p: p, docker: docker, records: records, metrics: metrics.New(p, nil), history: httpapi.NewHistory(keptDeploys)}
}

// start runs the trigger that webhooks and the API ask for work through,
// and the HTTP server; stop ends both and waits for them, whether or not
// ctx has ended.
func (o *operating) start(ctx context.Context, cfg config.Config, version string, log *slog.Logger) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	trigger := deploy.NewTrigger(ctx, o.p)
	srv := httpapi.New(httpapi.Config{
		Addr: cfg.Listen, APIToken: cfg.APIToken, APIReadToken: cfg.APIReadToken, WebhookSecret: cfg.WebhookSecret,
		WebhookSecretGitHub: cfg.WebhookSecretGitHub, WebhookSecretDockerHub: cfg.WebhookSecretDockerHub,
		WebhookSecretDistribution: cfg.WebhookSecretDistribution,
		ReadyWithin:               readyWithin(cfg), Version: version, Log: log,
		Pipeline: o.p, Docker: o.docker, Records: o.records, Requests: trigger, Decisions: trigger, History: o.history,
		Metrics: o.metrics.Handler(), Webhooks: o.metrics, Refusals: o.metrics,
	})
	addr, err := srv.Start(ctx)
	if err != nil {
		cancel()
		trigger.Stop()
		return nil, err
	}
	log.Info("http listening", "addr", addr.String(), "api", cfg.APIToken != "", "webhooks", cfg.WebhookSecret != "" || cfg.WebhookSecretGitHub != "" || cfg.WebhookSecretDockerHub != "" || cfg.WebhookSecretDistribution != "")
	return func() {
		cancel()
		srv.Wait()
		trigger.Stop()
	}, nil
}

// readyWithin is how old the last full check may be before /readyz says
// not ready: three of the schedule's longest intervals (one late tick is
// no alarm), and never under a minute, which a slow registry can take.
func readyWithin(cfg config.Config) time.Duration {
	return max(3*cfg.LongestInterval(time.Now()), time.Minute)
}
