package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/httpapi"
	"github.com/updater-dev/updater/internal/metrics"
	"github.com/updater-dev/updater/internal/registry"
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
		Histories: histories{o.p}, Rollbacks: rollbacks{ctx: ctx, p: o.p},
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

// histories are the pipeline's durable histories as the API (a watched
// service by name) and the page (by the ID the last cycle saw) read them.
type histories struct{ p *deploy.Pipeline }

func (h histories) ServiceHistory(ctx context.Context, name string) ([]deploy.HistoryEntry, error) {
	return h.p.ServiceHistory(ctx, name)
}

func (h histories) History(ctx context.Context, serviceID string) ([]deploy.HistoryEntry, error) {
	if h.p.History == nil {
		return nil, nil
	}
	return h.p.History.History(ctx, serviceID)
}

// rollbacks start the API's and the page's rollbacks on the updater's own
// context, not the request's: the rollback runs on after the 202 (or the
// page's redirect) is sent, and stops with the updater, to be resumed by
// the next, like the deploys the trigger starts. Its checks are bounded
// by the Docker and registry deadlines.
type rollbacks struct {
	ctx context.Context
	p   *deploy.Pipeline
}

func (r rollbacks) StartRollback(_ context.Context, req deploy.RollbackRequest) (deploy.Rolling, error) {
	rl, err := r.p.StartRollback(r.ctx, req)
	if errors.Is(err, registry.ErrNotFound) {
		// The API answers a digest the registry lacks apart (422) from an
		// outage (500); it does not know the registry's errors.
		err = fmt.Errorf("%w: %w", httpapi.ErrDigestUnknown, err)
	}
	return rl, err
}

// readyWithin is how old the last full check may be before /readyz says
// not ready: three of the schedule's longest intervals (one late tick is
// no alarm), and never under a minute, which a slow registry can take.
func readyWithin(cfg config.Config) time.Duration {
	return max(3*cfg.LongestInterval(time.Now()), time.Minute)
}
