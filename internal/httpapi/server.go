// Package httpapi is the updater's operating surface over HTTP: health
// and readiness probes, Prometheus metrics, registry push webhooks, a
// token-protected API and a status page. It only translates HTTP into
// calls on the small interfaces below; every decision stays in deploy.
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// Pipeline is what the probes, the API and the page read.
type Pipeline interface {
	Status() deploy.Status
	Approvals() []deploy.Approval
}

// Requests asks for work in the background; each call answers at once.
type Requests interface {
	// Push asks for a check of the services tracking the pushed tags.
	Push(pushes ...deploy.Push)
	// Check asks for a full cycle.
	Check()
	// Deploy asks for a service's deploy; deploy.ErrNotFound when the
	// service is not watched.
	Deploy(ctx context.Context, name string) error
}

// Decisions are a person's answers to a deploy that waits for approval.
// Both return deploy.ErrNotFound for an unknown ID and deploy.ErrDecided
// for one no longer pending.
type Decisions interface {
	Approve(ctx context.Context, id string) (deploy.Approval, error)
	Reject(ctx context.Context, id string) (deploy.Approval, error)
}

// Docker names the Docker calls that got no answer within their bound
// since Docker last answered one: a hung engine or socket proxy.
type Docker interface {
	Stuck() []string
}

// Records names the updater's records it could not use and left for a
// person (a deploy record that does not decode, say).
type Records interface {
	SetAside() []string
}

// WebhookCounter counts webhooks by source and result (metrics).
type WebhookCounter interface {
	Webhook(source, result string)
}

// Config is the server's settings and the parts it serves.
type Config struct {
	// Addr is host:port to listen on; port 0 picks a free one.
	Addr string
	// APIToken guards the API and the status page; "" turns them off.
	APIToken string
	// APIReadToken, when set, opens the status page and the API's GETs,
	// and nothing that changes something.
	APIReadToken string
	// WebhookSecret authenticates registry webhooks; "" turns them off
	// unless a source has its own secret.
	WebhookSecret string
	// A source's own secret overrides WebhookSecret for that source.
	WebhookSecretGitHub, WebhookSecretDockerHub, WebhookSecretDistribution string
	// ReadyWithin is how recent the last full check must be for /readyz,
	// unless a cycle or deploy is running (a long deploy holds the
	// pipeline, and the checks with it).
	ReadyWithin time.Duration
	// Version is shown on the status page.
	Version string
	Log     *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	Pipeline Pipeline
	Requests Requests
	// Docker, when set, makes /readyz unready while Docker calls hang,
	// a running deploy or not.
	Docker Docker
	// Records, when set, has /readyz name the records set aside. They
	// don't make it unready: every other service deploys as usual, but a
	// person should look.
	Records   Records
	Decisions Decisions
	History   *History
	// Histories are the services' durable histories (the API's and the
	// page's); Rollbacks takes a person's rollback. Either nil leaves
	// its part out (the API answers 501).
	Histories Histories
	Rollbacks Rollbacks
	// Metrics serves /metrics; nil leaves it out.
	Metrics  http.Handler
	Webhooks WebhookCounter
	// Refusals, when set, counts the API's refused requests.
	Refusals RefusalCounter
}

// RefusalCounter counts requests to the API and the page refused, by
// reason (unauthorized, read_only, throttled).
type RefusalCounter interface {
	APIRefused(reason string)
}

// Timeouts that keep a slow or malicious client (slowloris) from holding
// connections: headers must arrive within ReadHeaderTimeout, a whole
// request within ReadTimeout. Nothing here streams, so WriteTimeout can be
// short too.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 15 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
	shutdownTimeout   = 5 * time.Second
)

// Server serves the operating surface.
type Server struct {
	cfg     Config
	tmpl    *template.Template
	handler http.Handler
	srv     *http.Server
	done    chan struct{}

	hooks      *hooks
	throttle   throttle
	refusedAPI sparse // the API's refusal log line
	readyLog   sparse // the readiness details log line
	lastWhy    string // the last readiness details logged; guarded by readyMu
	readyMu    sync.Mutex
}

// New builds the server; Start listens.
func New(cfg Config) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, tmpl: pageTemplate(), done: make(chan struct{}), hooks: newHooks()}
	s.handler = s.routes()
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(cfg.Log.Handler(), slog.LevelDebug),
	}
	return s
}

// Handler is the server's routes, for tests.
func (s *Server) Handler() http.Handler { return s.handler }

// Start listens on the configured address and serves until ctx ends, then
// shuts down, giving requests in flight a few seconds. It returns the
// address it listens on; Wait waits for the shutdown.
func (s *Server) Start(ctx context.Context) (net.Addr, error) {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	go func() {
		defer close(s.done)
		errc := make(chan error, 1)
		go func() { errc <- s.srv.Serve(ln) }()
		select {
		case err := <-errc:
			if !errors.Is(err, http.ErrServerClosed) {
				s.cfg.Log.Error("http server", "err", err)
			}
			return
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := s.srv.Shutdown(sctx); err != nil {
			s.cfg.Log.Warn("http server shutdown", "err", err)
		}
		<-errc
	}()
	return ln.Addr(), nil
}

// Wait returns once the server has shut down after Start's context ended.
func (s *Server) Wait() { <-s.done }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	if s.cfg.Metrics != nil {
		mux.Handle("GET /metrics", s.cfg.Metrics)
	}
	mux.HandleFunc("POST /hooks/registry", s.webhook)

	mux.Handle("GET /api/v1/services", s.api(s.listServices))
	mux.Handle("GET /api/v1/deploys", s.api(s.listDeploys))
	mux.Handle("POST /api/v1/check", s.api(s.check))
	mux.Handle("POST /api/v1/services/{name}/deploy", s.api(s.deployService))
	mux.Handle("POST /api/v1/deploys/{id}/approve", s.api(s.decide(true)))
	mux.Handle("POST /api/v1/deploys/{id}/reject", s.api(s.decide(false)))
	mux.Handle("GET /api/v1/services/{name}/history", s.api(s.serviceHistory))
	mux.Handle("POST /api/v1/services/{name}/rollback", s.api(s.rollback))

	mux.Handle("GET /{$}", s.page(s.statusPage))
	mux.Handle("POST /ui/deploys/{id}/approve", s.page(s.decideForm(true)))
	mux.Handle("POST /ui/deploys/{id}/reject", s.page(s.decideForm(false)))
	mux.Handle("POST /ui/services/{name}/rollback", s.page(s.rollbackForm))

	// A browser that holds the page's credentials must not be made to
	// approve or roll back by another site's form: cross-origin requests that change
	// something are refused (Sec-Fetch-Site and Origin). Registries and
	// API clients send neither header and pass.
	return http.NewCrossOriginProtection().Handler(mux)
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// readyz is ready when no Docker call hangs, no deploy runs past its
// bounds, Docker answered the last service list and the last full check
// is recent, or a cycle is running now. Anyone who can reach the port
// may ask, so it answers with fixed reasons only: what Docker said (its
// hosts, addresses, stack and service names) goes to the log, once a
// minute or when it changes, and to the status page.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	ready, why, details := s.ready()
	if details != "" {
		s.logReadiness(why, details)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, why)
}

func (s *Server) logReadiness(why, details string) {
	s.readyMu.Lock()
	changed := details != s.lastWhy
	s.lastWhy = details
	s.readyMu.Unlock()
	if ok, _ := s.readyLog.allow(s.cfg.Now()); ok || changed {
		s.cfg.Log.Warn("readiness", "reason", why, "err", details)
	}
}

// ready says whether the updater is ready, why in fixed words, and the
// details behind it, for the log and the status page.
func (s *Server) ready() (ready bool, why, details string) {
	ready, why, details = s.readiness()
	if s.cfg.Records != nil {
		if aside := s.cfg.Records.SetAside(); len(aside) > 0 {
			why += fmt.Sprintf("; records set aside for a person to look at: %d (named in the log)", len(aside))
			details = strings.TrimPrefix(details+"; "+strings.Join(aside, "; "), "; ")
		}
	}
	return ready, why, details
}

func (s *Server) readiness() (bool, string, string) {
	// First: a deploy waiting on a hung engine counts as running, and
	// would otherwise keep the updater ready for as long as it waits.
	if s.cfg.Docker != nil {
		if stuck := s.cfg.Docker.Stuck(); len(stuck) > 0 {
			return false, fmt.Sprintf("not ready: %d docker calls got no answer within their bounds", len(stuck)), strings.Join(stuck, "; ")
		}
	}
	st, now := s.cfg.Pipeline.Status(), s.cfg.Now()
	switch {
	case st.ListErr != nil:
		return false, "not ready: docker did not answer the last service list", st.ListErr.Error()
	case st.Listed.IsZero():
		return false, "not ready: no cycle has listed the services yet", ""
	}
	for _, r := range st.Running {
		if r.Stuck(now) {
			return false, "not ready: a deploy has run longer than its bounds allow",
				fmt.Sprintf("the deploy of %s has run for %s, longer than its bounds allow (%s)",
					strings.Join(r.Services, ", "), now.Sub(r.Started).Round(time.Second), r.Bound)
		}
	}
	switch {
	case !st.Busy.IsZero():
		return true, "ready: a cycle runs since " + st.Busy.UTC().Format(time.RFC3339), ""
	case st.Checked.IsZero():
		return false, "not ready: no full check has finished yet", ""
	case now.Sub(st.Checked) > s.cfg.ReadyWithin:
		return false, fmt.Sprintf("not ready: the last full check was %s ago, longer than %s", now.Sub(st.Checked).Round(time.Second), s.cfg.ReadyWithin), ""
	}
	return true, "ready", ""
}
