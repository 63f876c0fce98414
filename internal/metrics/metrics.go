// Package metrics counts what the updater does, for Prometheus: cycles,
// registry requests, deploys and how long they take, how fresh the last
// check is. It keeps its own registry, so nothing else in the process can
// add to or collide with what it exports.
package metrics

import (
	"errors"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/updater-dev/updater/internal/deploy"
)

// Source tells the gauges what the pipeline saw last.
type Source interface {
	Status() deploy.Status
	Approvals() []deploy.Approval
}

// Metrics is the updater's metrics. It is a deploy.Reporter (deploys) and
// a deploy.CycleObserver (cycles); Transport counts registry requests.
type Metrics struct {
	reg              *prometheus.Registry
	cycles           *prometheus.CounterVec
	cycleDuration    *prometheus.HistogramVec
	registryRequests *prometheus.CounterVec
	rateLimit        *prometheus.GaugeVec
	rateRemaining    *prometheus.GaugeVec
	deploys          *prometheus.CounterVec
	deployDuration   *prometheus.HistogramVec
	webhooks         *prometheus.CounterVec
	apiRefused       *prometheus.CounterVec
	hookSteps        *prometheus.CounterVec
	buildInfo        *prometheus.GaugeVec
	lastCheck        prometheus.Gauge
	lastCycle        prometheus.Gauge
	src              Source
}

var (
	_ deploy.Reporter      = (*Metrics)(nil)
	_ deploy.CycleObserver = (*Metrics)(nil)
)

// New registers the updater's metrics, and the Go runtime's and the
// process's, on a registry of its own. now is the clock (nil: time.Now).
func New(src Source, now func() time.Time) *Metrics {
	if now == nil {
		now = time.Now
	}
	started := now()
	m := &Metrics{
		src: src,
		reg: prometheus.NewRegistry(),
		cycles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "updater_cycles_total",
			Help: "Cycles run, by scope (all: every watched service; push: the services a webhook or approval named) and result (ok, error, busy: a tick skipped because the cycle before it was still planning; deploys run beside cycles).",
		}, []string{"scope", "result"}),
		cycleDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "updater_cycle_duration_seconds",
			Help: "How long a cycle took, deploys it ran included.",
			// From a cycle with nothing to do (tens of ms) to one that
			// deployed (minutes).
			Buckets: prometheus.ExponentialBuckets(0.025, 2, 15),
		}, []string{"scope"}),
		registryRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "updater_registry_requests_total",
			Help: "HTTP requests to registries, every retry counted, by method and code (the status code, or error when no answer came); result is the same value under its old name, deprecated, removed in the next release.",
		}, []string{"method", "code", "result"}),
		rateLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "updater_registry_ratelimit_limit",
			Help: "Pulls the registry allows per window, from its last RateLimit-Limit header (Docker Hub sends one), by registry host.",
		}, []string{"registry"}),
		rateRemaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "updater_registry_ratelimit_remaining",
			Help: "Pulls left in the registry's window, from its last RateLimit-Remaining header (Docker Hub sends one), by registry host.",
		}, []string{"registry"}),
		deploys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "updater_deploys_total",
			Help: "Deploys ended, by outcome (succeeded, failed, rolled_back) and the phase they ended in.",
		}, []string{"outcome", "phase"}),
		deployDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "updater_deploy_duration_seconds",
			Help:    "How long a deploy took from its start to its outcome, by outcome.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12), // 1s to about 34 minutes
		}, []string{"outcome"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "updater_webhooks_total",
			Help: "Registry webhooks received, by source (dockerhub, github, distribution, unknown) and result (accepted, ignored, full_check: too many tags, one full check instead; replayed: a GitHub delivery taken already; refused: unauthorized, busy: too many bodies at once, too_large, bad_request).",
		}, []string{"source", "result"}),
		apiRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "updater_api_refused_total",
			Help: "Requests to the API and the status page refused, by reason (unauthorized, read_only: the read-only token asked to change something, throttled: too many failures from the address).",
		}, []string{"reason"}),
		hookSteps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "updater_hook_steps_total",
			Help: "Steps of deploys and scheduled backups, by phase (backup, migrate: hooks; probe: the new tasks probed, updater.probe.*; bake: the watch after the rollout, updater.bake) and state (started, succeeded, failed, skipped: a scheduled backup due during a deploy of its service, or a migration already done).",
		}, []string{"phase", "state"}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "updater_build_info",
			Help: "Always 1, labelled with the updater's version and the Go version it was built with.",
		}, []string{"version", "goversion"}),
		// Timestamps, not ages: an alert is then time() minus the gauge,
		// and a scrape that failed does not look like a fresh value.
		lastCheck: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "updater_last_check_timestamp_seconds",
			Help: "When (Unix time) the last full cycle ended in which Docker listed the services and every registry lookup answered with a digest; 0 until one has. Alert on time() minus it: it stops moving when a registry or its credentials fail.",
		}),
		lastCycle: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "updater_last_cycle_timestamp_seconds",
			Help: "When (Unix time) the last full cycle ended, whatever it found (Docker or a registry failing included); 0 until one has. It stops moving when the schedule does.",
		}),
	}
	m.SetVersion("unknown")
	m.reg.MustRegister(m.cycles, m.cycleDuration, m.registryRequests, m.rateLimit, m.rateRemaining, m.deploys, m.deployDuration, m.webhooks, m.apiRefused, m.hookSteps,
		m.buildInfo, m.lastCheck, m.lastCycle, serviceStates{src: src},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "updater_last_successful_cycle_age_seconds",
			Help: "Deprecated, removed in the next release: use updater_last_check_timestamp_seconds. Seconds since the last full cycle listed the services and looked up every tag (registry errors included); since the start until there is one.",
		}, func() float64 {
			last := src.Status().Checked
			if last.IsZero() {
				last = started
			}
			return now().Sub(last).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "updater_watched_services",
			Help: "Services the updater watches, as of the last cycle.",
		}, func() float64 { return float64(len(src.Status().Services)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "updater_approvals_pending",
			Help: "Deploys waiting for a person's approval.",
		}, func() float64 {
			n := 0
			for _, a := range src.Approvals() {
				if a.State == deploy.ApprovalPending {
					n++
				}
			}
			return float64(n)
		}),
	)
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// SetVersion labels updater_build_info with the updater's version; call
// it once, at start.
func (m *Metrics) SetVersion(version string) {
	m.buildInfo.Reset()
	m.buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
}

// ObserveCycle counts a cycle, and moves the timestamps of a full one.
func (m *Metrics) ObserveCycle(s deploy.CycleStats) {
	scope := "all"
	if !s.Full {
		scope = "push"
	}
	result := "ok"
	switch {
	case errors.Is(s.Err, deploy.ErrBusy):
		m.cycles.WithLabelValues(scope, "busy").Inc()
		return // no work done, no duration worth a bucket
	case s.Err != nil:
		result = "error"
	}
	m.cycles.WithLabelValues(scope, result).Inc()
	m.cycleDuration.WithLabelValues(scope).Observe(s.Duration.Seconds())
	if !s.Full || errors.Is(s.Err, deploy.ErrStandby) {
		return // a push checks a few tags; a standby's cycle did not run
	}
	end := unix(s.Started.Add(s.Duration))
	m.lastCycle.Set(end)
	if s.Err == nil && m.answered() {
		m.lastCheck.Set(end)
	}
}

// answered reports whether every lookup of the cycle just observed got a
// digest. The pipeline observes a cycle before the next one may plan, so
// the plans its Status holds are that cycle's: a full cycle replaces
// them all.
func (m *Metrics) answered() bool {
	for _, pl := range m.src.Status().Services {
		if pl.Action == deploy.ActError {
			return false
		}
	}
	return true
}

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// serviceStates exports updater_service_state: one series per watched
// service, made at each scrape from what the last cycles decided, so a
// service no longer watched has none and the count of series is the
// count of services.
type serviceStates struct{ src Source }

var serviceStateDesc = prometheus.NewDesc("updater_service_state",
	"Always 1, one series per watched service, labelled with its state as the API says it (up-to-date, deploy, deploying, awaiting-approval, skip-failed, skip-untagged, registry-error).",
	[]string{"service", "state"}, nil)

func (serviceStates) Describe(ch chan<- *prometheus.Desc) { ch <- serviceStateDesc }

func (c serviceStates) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	for _, pl := range c.src.Status().Services {
		// Names are unique in a swarm, but a service removed and made
		// again under its name is remembered twice until the next full
		// cycle; two series with one label set would fail the scrape.
		if seen[pl.Target.Name] {
			continue
		}
		seen[pl.Target.Name] = true
		ch <- prometheus.MustNewConstMetric(serviceStateDesc, prometheus.GaugeValue, 1, pl.Target.Name, string(pl.Action))
	}
}

// Report counts the deploys that ended.
func (m *Metrics) Report(e deploy.Event) {
	if e.Kind == deploy.Progress && e.Step != nil && e.Step.State != deploy.StepProgress {
		m.hookSteps.WithLabelValues(string(e.Step.Phase), string(e.Step.State)).Inc()
		return
	}
	outcome := e.Outcome()
	if outcome == "" {
		return
	}
	if e.Phase == deploy.PhaseProbe || e.Phase == deploy.PhaseBake {
		// A probe or a bake fails as the deploy's outcome, not as a step
		// of its own: counted with the steps too.
		m.hookSteps.WithLabelValues(string(e.Phase), string(deploy.StepFailed)).Inc()
	}
	m.deploys.WithLabelValues(string(outcome), string(e.Phase)).Inc()
	m.deployDuration.WithLabelValues(string(outcome)).Observe(e.Duration.Seconds())
}

// Webhook counts a registry webhook.
func (m *Metrics) Webhook(source, result string) {
	m.webhooks.WithLabelValues(source, result).Inc()
}

// APIRefused counts a request to the API or the page refused.
func (m *Metrics) APIRefused(reason string) {
	m.apiRefused.WithLabelValues(reason).Inc()
}

// Transport counts every request next makes, and keeps the rate-limit
// headers registries answer with. Give it to the registry client as its
// innermost transport, so each retry is counted.
func (m *Metrics) Transport(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return counting{next: next, requests: m.registryRequests, limit: m.rateLimit, remaining: m.rateRemaining}
}

type counting struct {
	next             http.RoundTripper
	requests         *prometheus.CounterVec
	limit, remaining *prometheus.GaugeVec
}

func (c counting) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	result := "error"
	if err == nil {
		result = strconv.Itoa(resp.StatusCode)
		// Docker Hub answers manifest requests, 429s included, with
		// "RateLimit-Remaining: 76;w=21600" (76 pulls left in a window of
		// 21600 s); a registry without a limit sends nothing, and gets
		// no series.
		if n, ok := rateValue(resp.Header.Get("RateLimit-Remaining")); ok {
			c.remaining.WithLabelValues(r.URL.Host).Set(n)
		}
		if n, ok := rateValue(resp.Header.Get("RateLimit-Limit")); ok {
			c.limit.WithLabelValues(r.URL.Host).Set(n)
		}
	}
	c.requests.WithLabelValues(r.Method, result, result).Inc()
	return resp, err
}

// rateValue reads the count of a rate-limit header: "76;w=21600" or "76".
func rateValue(h string) (float64, bool) {
	v, _, _ := strings.Cut(h, ";")
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	if err != nil {
		return 0, false
	}
	return float64(n), true
}
