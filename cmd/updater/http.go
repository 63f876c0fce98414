package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
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
func (o *operating) start(ctx context.Context, cfg config.Config, log *slog.Logger) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	trigger := deploy.NewTrigger(ctx, o.p)
	srv := httpapi.New(httpapi.Config{
		Addr: cfg.Listen, APIToken: cfg.APIToken, WebhookSecret: cfg.WebhookSecret,
		ReadyWithin: readyWithin(cfg), Version: version, Log: log,
		Pipeline: o.p, Docker: o.docker, Records: o.records, Requests: trigger, Decisions: trigger, History: o.history,
		Metrics: o.metrics.Handler(), Webhooks: o.metrics,
	})
	addr, err := srv.Start(ctx)
	if err != nil {
		cancel()
		trigger.Stop()
		return nil, err
	}
	log.Info("http listening", "addr", addr.String(), "api", cfg.APIToken != "", "webhooks", cfg.WebhookSecret != "")
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

// healthcheck asks a running updater's /healthz, for Docker's HEALTHCHECK
// in an image with no shell or curl. An updater listening on every
// interface is asked on loopback.
func healthcheck(listen string, stderr io.Writer) int {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "0" {
		fmt.Fprintf(stderr, "updater healthcheck: UPDATER_LISTEN=%q names no port to ask\n", listen)
		return 1
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + net.JoinHostPort(host, port) + "/healthz")
	if err != nil {
		fmt.Fprintf(stderr, "updater healthcheck: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "updater healthcheck: /healthz answered %s\n", resp.Status)
		return 1
	}
	return 0
}
