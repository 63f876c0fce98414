// Package app builds an updater's parts once, for one command, and takes
// them down in one place. Each part pushes its own stop as it is built, and
// Close runs the stops in reverse: a part stops before anything it was
// built on, so the order of building is the order of safety.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
	"github.com/updater-dev/updater/internal/notify/rollbar"
	"github.com/updater-dev/updater/internal/prometheus"
	"github.com/updater-dev/updater/internal/registry"
	"github.com/updater-dev/updater/internal/schedule"
	"github.com/updater-dev/updater/internal/swarm"
)

// Mode is what a command needs built.
type Mode int

const (
	// Check is one dry-run cycle: Docker and the registry, no notifier,
	// no lease.
	Check Mode = iota
	// Deploy is one deploy on request: the notifiers and the lease too.
	Deploy
	// Run is the updater that stays up: also metrics, the deploy history
	// and, with Serve, the HTTP surface and scheduled backups.
	Run
)

// Options are what the command line knows and the configuration does not.
type Options struct {
	Version string
	// Stderr takes the log.
	Stderr io.Writer
	// Now is the lease's and the pipeline's clock, nil for the system's;
	// only an e2e build skews it, by Skew.
	Now  func() time.Time
	Skew time.Duration
}

// App is the parts of one updater process. Build it with New and Open,
// and always Close it.
type App struct {
	// Log is the updater's log; with Rollbar configured its ERROR lines
	// (the updater's own errors) go to Rollbar too.
	Log *slog.Logger
	// Pipeline is the deploy pipeline, once Open has built it.
	Pipeline *deploy.Pipeline

	cfg     config.Config
	opts    Options
	plain   *slog.Logger    // the log as written, without Rollbar: deploy reports
	errs    *rollbar.Errors // nil without Rollbar
	sw      *swarm.Swarm
	surface *operating        // Run only
	backups *schedule.Backups // Serve, unless a dry run
	stops   []stop
}

// stop is one part's way down, named for the log.
type stop struct {
	part string
	fn   func()
}

// push adds a part's stop; Close runs it before the stops pushed earlier.
func (a *App) push(part string, fn func()) { a.stops = append(a.stops, stop{part, fn}) }

// Close stops every part built, the last built first, each once. A
// debug line per part says how long it took: a slow shutdown names the
// part that held it.
func (a *App) Close() {
	for len(a.stops) > 0 {
		s := a.stops[len(a.stops)-1]
		a.stops = a.stops[:len(a.stops)-1]
		start := time.Now()
		s.fn()
		a.plain.Debug("stopped", "part", s.part, "duration", time.Since(start))
	}
}

// ReportPanic, deferred right after Close, sends a panic to Rollbar, when
// it is configured, before Close flushes Rollbar, and panics on. It must
// be the deferred call itself: recover works only there.
func (a *App) ReportPanic() {
	if a.errs == nil {
		return
	}
	if v := recover(); v != nil {
		a.errs.Panic(v)
		panic(v)
	}
}

// New makes the log, and the Rollbar client its errors go to when one is
// configured. It touches nothing else: Open builds the rest.
func New(cfg config.Config, opts Options) *App {
	a := &App{cfg: cfg, opts: opts, plain: newLogger(cfg, opts.Stderr)}
	a.Log = a.plain
	if cfg.Rollbar.Token != "" {
		a.errs = rollbar.NewErrors(a.rollbarConfig(), a.plain)
		a.Log = slog.New(a.errs.Handler(a.plain.Handler()))
		a.push("rollbar errors", func() { flush("rollbar errors", a.Log, a.errs.Close) })
	}
	return a
}

// Open builds what mode needs: the Docker client, the notifiers, the
// pipeline and, unless this is a dry run, the lease keeper. A Slack token
// Slack rejects is slack.ErrRejected, a bad setting; it is found before
// Docker is asked anything.
func (a *App) Open(ctx context.Context, mode Mode) error {
	cfg, log := a.cfg, a.Log
	self := holder()
	sw, err := swarm.New(swarm.Config{Label: cfg.Label, Stack: cfg.Stack, Timeout: cfg.DockerTimeout, Holder: self, Log: log,
		Authority: swarm.Authority{MountRoots: cfg.HookMountRoots, Images: cfg.HookImages}, Policy: cfg.Policy})
	if err != nil {
		return err
	}
	a.sw = sw
	a.push("docker client", func() { sw.Close() })

	var reporter deploy.Reporter = notify.Log{Logger: a.plain}
	imageLabels := false // only Slack and Rollbar show an image's labels
	if mode != Check {
		d, err := a.notifiers(ctx)
		if err != nil {
			return err
		}
		if d != nil {
			// The log first: it is written at once, whatever the notifiers do.
			reporter = notify.Reporters{reporter, d}
			imageLabels = true
			a.push("notifications", func() { flush("notifications", log, d.Close) })
		}
	}

	// Docker is asked only now: a Slack token Slack rejects is a bad
	// setting whether or not Docker answers.
	if err := sw.Ping(ctx); err != nil {
		return err
	}

	p := &deploy.Pipeline{
		Lister:            sw,
		Services:          sw,
		Ledger:            sw,
		Journal:           sw,
		Sightings:         &swarm.Sightings{Swarm: sw},
		Jobs:              sw,
		Migrations:        sw,
		Sweeper:           sw,
		History:           sw,
		Canaries:          sw,
		Reporter:          reporter,
		ImageLabels:       imageLabels,
		Log:               log,
		Timeout:           cfg.DeployTimeout,
		WatchInterval:     cfg.WatchInterval,
		Concurrency:       cfg.RegistryConcurrency,
		DeployConcurrency: cfg.DeployConcurrency,
		DryRun:            cfg.DryRun || mode == Check,
		ApprovalTimeout:   cfg.ApprovalTimeout,
	}
	a.Pipeline = p
	if cfg.PrometheusURL != "" {
		// Built in every mode, a check too: without it a service labelled
		// with a canary is a label error. It asks the server nothing yet.
		if p.Metrics, err = prometheus.New(prometheus.Options{URL: cfg.PrometheusURL, Token: cfg.PrometheusToken}); err != nil {
			return err
		}
	}
	regCfg := registry.Config{Timeout: cfg.RegistryTimeout, Insecure: cfg.InsecureRegistries}
	if mode == Run {
		// Metrics and the deploy history watch the pipeline they serve.
		a.surface = newOperating(p, sw, sw)
		a.surface.metrics.SetVersion(a.opts.Version)
		regCfg.Transport = a.surface.metrics.Transport(remote.DefaultTransport)
		p.Observer = a.surface.metrics
		p.Reporter = notify.Reporters{reporter, a.surface.metrics, a.surface.history}
	}
	p.Registry = registry.New(regCfg)

	if !p.DryRun {
		if p.Pruning, err = pruning(ctx, cfg, sw); err != nil {
			return err
		}
		p.Prober = prober(ctx, cfg, sw, log)
		a.keepLease(ctx, sw, self)
	}
	// Pushed after the lease keeper, so Close runs it before the keeper
	// stops: deploys still stopping (their context ended with ctx) end
	// while the lease is held, none writes after it is given up, and
	// their last reports are queued before the notifiers are flushed.
	a.push("deploys", p.Wait)
	return nil
}

// keepLease takes the lease, if no other updater holds it, and keeps it
// until Close. One updater acts per scope, even when two run by mistake.
func (a *App) keepLease(ctx context.Context, lease deploy.Lease, self string) {
	if a.opts.Skew != 0 {
		a.Log.Warn("clock skewed for a test: an e2e build", "skew", a.opts.Skew.String())
	}
	a.Pipeline.Now = a.opts.Now
	keeper := &deploy.Keeper{Lease: lease, Holder: self, TTL: a.cfg.LeaseTTL, Log: a.Log, Now: a.opts.Now}
	keeper.Acquire(ctx)
	a.Pipeline.Acting = keeper.Held
	// Not ctx: a SIGTERM ends ctx, and the keeper gives the lease up when
	// its context ends, while deploys may still be stopping. Close ends
	// it after them.
	kctx, stopKeeper := context.WithCancel(context.WithoutCancel(ctx))
	kept := make(chan struct{})
	go func() { defer close(kept); keeper.Run(kctx) }()
	a.push("lease", func() { stopKeeper(); <-kept })
}

// Config is the configuration the App was made with.
func (a *App) Config() config.Config { return a.cfg }

// Serve starts, for Run, the scheduled backups and the HTTP surface
// (health, metrics, webhooks, the API, the status page). The HTTP server
// is up before the first cycle: that one may resume a deploy for minutes,
// and the health check must answer meanwhile.
func (a *App) Serve(ctx context.Context) error {
	cfg, log, p := a.cfg, a.Log, a.Pipeline
	if a.surface == nil {
		return errors.New("serve: the app was not opened to run")
	}
	log.Info("updater started", "version", a.opts.Version, "schedule", cfg.Schedule, "label", cfg.Label, "stack", cfg.Stack, "dry_run", p.DryRun, "insecure_registries", cfg.InsecureRegistries)
	if cfg.Stack == "" {
		// Whoever may deploy any stack on this swarm may then have the
		// updater (root on a manager) run hooks for it.
		log.Warn("UPDATER_STACK is not set: every stack on the swarm can opt in with " + cfg.Label + "=true; set UPDATER_STACK to the one stack this updater serves")
	}
	if !p.DryRun {
		a.backups = schedule.NewBackups(ctx, log, func(ctx context.Context, t deploy.Target) {
			switch err := p.Backup(ctx, t); {
			case errors.Is(err, deploy.ErrStandby):
				log.Debug("scheduled backup skipped: standing by", "service", t.Name) // the holder runs it
			case err != nil:
				log.Error("scheduled backup", "service", t.Name, "err", err)
			}
		})
		a.push("scheduled backups", a.backups.Stop)
		p.Schedules = a.backups // each full cycle tells them what it watched
	}
	stopHTTP, err := a.surface.start(ctx, cfg, a.opts.Version, log)
	if err != nil {
		return err
	}
	a.push("http", stopHTTP)
	a.listenSlack(ctx)
	return nil
}

// Cycle is one tick of the schedule: a full cycle, its outcome logged.
func (a *App) Cycle(ctx context.Context) {
	log := a.Log
	start := time.Now()
	plans, err := a.Pipeline.Cycle(ctx)
	switch {
	case errors.Is(err, deploy.ErrBusy):
		// The cycle before is still planning (deploys run beside cycles,
		// never make one busy): counted in updater_cycles_total{result="busy"}
		// by the pipeline's observer, so a debug line is enough.
		log.Debug("tick skipped: the previous cycle is still planning")
	case errors.Is(err, deploy.ErrStandby):
		log.Debug("cycle skipped: standing by") // the keeper logged the change
	case err != nil:
		// The pipeline logs outages once; every failing cycle is only
		// worth a debug line.
		log.Debug("cycle failed", "err", err, "duration", time.Since(start))
	default:
		log.Debug("cycle done", "services", len(plans), "duration", time.Since(start))
	}
}

// holder names this updater process in the lease: in a container the
// hostname is the container's ID.
func holder() string {
	h, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", h, os.Getpid())
}

// flush gives close a few seconds on the way out: enough to send what is
// queued, well inside the 10 s Docker waits after SIGTERM before it kills.
func flush(what string, log *slog.Logger, close func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	if err := close(ctx); err != nil {
		log.Warn("flush "+what+" at shutdown", "err", err)
	}
}
