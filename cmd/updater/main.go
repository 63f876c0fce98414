// Command updater keeps the services of a Docker Swarm stack on the newest
// image their tag points to, promoting only what is healthy.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	_ "time/tzdata" // CRON_TZ schedules in a FROM scratch image

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
	"github.com/updater-dev/updater/internal/notify/rollbar"
	"github.com/updater-dev/updater/internal/notify/slack"
	"github.com/updater-dev/updater/internal/registry"
	"github.com/updater-dev/updater/internal/schedule"
	"github.com/updater-dev/updater/internal/swarm"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `usage: updater [command]

commands:
  run             watch and deploy on the schedule (the default)
  check           one dry-run cycle: print what each watched service would do
  deploy SERVICE  deploy what SERVICE's tag points to now, wait, exit 1 on failure
  healthcheck     ask the running updater's /healthz (UPDATER_LISTEN): exit 0 if it answers, 1 if not
  prune ...       remove a repository's unused images on this node (what the prune job runs)
  version         print the version

Configuration comes from the environment; see the README.`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	known := cmd == "run" || cmd == "check" || cmd == "deploy" || cmd == "healthcheck"
	switch {
	case cmd == "version" || cmd == "--version":
		fmt.Fprintln(stdout, "updater", version)
		return 0
	// `deploy --help` is a question, not a service named "--help": it is
	// answered before the configuration, the lease or Docker.
	case cmd == "help" || cmd == "-h" || cmd == "--help" || known && slices.ContainsFunc(args, isHelp):
		fmt.Fprintln(stdout, usage)
		return 0
	case cmd == "prune":
		return prune(args, stdout, stderr)
	case cmd == "deploy" && len(args) != 1:
		fmt.Fprintln(stderr, "updater deploy: name exactly one service\n\n"+usage)
		return 2
	case !known:
		fmt.Fprintf(stderr, "updater: unknown command %q\n\n%s\n", cmd, usage)
		return 2
	case cmd != "deploy" && len(args) > 0:
		fmt.Fprintf(stderr, "updater %s: takes no arguments, got %q\n\n%s\n", cmd, strings.Join(args, " "), usage)
		return 2
	}

	// Nothing is touched before the whole configuration is valid.
	cfg, err := config.Load(os.LookupEnv, os.Environ())
	if err != nil {
		fmt.Fprintf(stderr, "updater: invalid configuration:\n%v\n", err)
		if cmd == "healthcheck" {
			return 1 // Docker reserves 2; an updater with this configuration is not running
		}
		return 2
	}
	if cmd == "healthcheck" {
		return healthcheck(cfg.Listen, stderr)
	}
	// plain is the log as written; log also sends ERROR lines (the
	// updater's own errors, cron's recovered panics) to Rollbar when it is
	// configured.
	plain := newLogger(cfg, stderr)
	log := plain
	if cfg.Rollbar.Token != "" {
		errs := rollbar.NewErrors(rollbarConfig(cfg), plain)
		log = slog.New(errs.Handler(plain.Handler()))
		defer flush("rollbar errors", log, errs.Close)
		// A panic outside the cron jobs (the first cycle runs here) would
		// kill the updater without a word to Rollbar.
		defer func() {
			if v := recover(); v != nil {
				errs.Panic(v)
				panic(v)
			}
		}()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	self := holder()
	sw, err := swarm.New(swarm.Config{Label: cfg.Label, Stack: cfg.Stack, Timeout: cfg.DockerTimeout, Holder: self, Log: log})
	if err != nil {
		log.Error("start", "err", err)
		return 1
	}
	defer sw.Close()

	var reporter deploy.Reporter = notify.Log{Logger: plain}
	imageLabels := false // only Slack and Rollbar show an image's labels
	if cmd != "check" {
		d, err := notifiers(ctx, cfg, log, sw)
		if errors.Is(err, slack.ErrRejected) {
			fmt.Fprintf(stderr, "updater: invalid configuration:\nSLACK_TOKEN: %v\n", err)
			return 2
		}
		if d != nil {
			// The log first: it is written at once, whatever the notifiers do.
			reporter = notify.Reporters{reporter, d}
			imageLabels = true
			defer flush("notifications", log, d.Close)
		}
	}

	// Docker is asked only now: a Slack token Slack rejects is a bad
	// setting (exit 2) whether or not Docker answers.
	if err := sw.Ping(ctx); err != nil {
		log.Error("start", "err", err)
		return 1
	}

	p := &deploy.Pipeline{
		Lister:          sw,
		Services:        sw,
		Ledger:          sw,
		Journal:         sw,
		Jobs:            sw,
		Migrations:      sw,
		Reporter:        reporter,
		ImageLabels:     imageLabels,
		Log:             log,
		Timeout:         cfg.DeployTimeout,
		WatchInterval:   cfg.WatchInterval,
		Concurrency:     cfg.RegistryConcurrency,
		DryRun:          cfg.DryRun || cmd == "check",
		ApprovalTimeout: cfg.ApprovalTimeout,
	}
	regCfg := registry.Config{Timeout: cfg.RegistryTimeout, Insecure: cfg.InsecureRegistries}
	var surface *operating
	if cmd == "run" {
		// Metrics and the deploy history watch the pipeline they serve.
		surface = newOperating(p, sw, sw)
		regCfg.Transport = surface.metrics.Transport(remote.DefaultTransport)
		p.Observer = surface.metrics
		p.Reporter = notify.Reporters{reporter, surface.metrics, surface.history}
	}
	p.Registry = registry.New(regCfg)
	if !p.DryRun {
		if p.Pruning, err = pruning(ctx, cfg, sw); err != nil {
			log.Error("start", "err", err)
			return 1
		}
	}

	if !p.DryRun {
		// One updater acts per scope, even when two run by mistake.
		now, skew := testClock()
		if skew != 0 {
			log.Warn("clock skewed for a test: an e2e build", "skew", skew.String())
		}
		p.Now = now
		keeper := &deploy.Keeper{Lease: sw, Holder: self, TTL: cfg.LeaseTTL, Log: log, Now: now}
		keeper.Acquire(ctx)
		p.Acting = keeper.Held
		kctx, stopKeeper := context.WithCancel(ctx)
		kept := make(chan struct{})
		go func() { defer close(kept); keeper.Run(kctx) }()
		defer func() { stopKeeper(); <-kept }()
	}

	switch cmd {
	case "check":
		return check(ctx, p, stdout, log)
	case "deploy":
		ev, err := p.DeployService(ctx, args[0])
		if errors.Is(err, deploy.ErrStandby) {
			log.Error("deploy", "service", args[0], "err", err,
				"hint", "the running updater deploys on request: POST /api/v1/services/"+args[0]+"/deploy")
			return 1
		}
		if err != nil {
			log.Error("deploy", "service", args[0], "err", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s %s: %s -> %s %s\n", ev.Release.ServiceName, ev.Kind, deploy.Short(ev.Release.From), deploy.Short(ev.Release.To), ev.Reason)
		if ev.Kind != deploy.Succeeded {
			return 1
		}
		return 0
	}

	log.Info("updater started", "version", version, "schedule", cfg.Schedule, "label", cfg.Label, "stack", cfg.Stack, "dry_run", p.DryRun, "insecure_registries", cfg.InsecureRegistries)
	// Scheduled backups follow the labels the cycles read.
	var backups *schedule.Backups
	if !p.DryRun {
		backups = schedule.NewBackups(ctx, log, func(ctx context.Context, t deploy.Target) {
			switch err := p.Backup(ctx, t); {
			case errors.Is(err, deploy.ErrStandby):
				log.Debug("scheduled backup skipped: standing by", "service", t.Name) // the holder runs it
			case err != nil:
				log.Error("scheduled backup", "service", t.Name, "err", err)
			}
		})
		defer backups.Stop()
	}
	// Up before the first cycle: that one may resume a deploy for minutes,
	// and the health check must answer meanwhile.
	stopHTTP, err := surface.start(ctx, cfg, log)
	if err != nil {
		log.Error("start", "err", err)
		return 1
	}
	defer stopHTTP()
	cycle := func(ctx context.Context) {
		start := time.Now()
		plans, err := p.Cycle(ctx)
		switch {
		case errors.Is(err, deploy.ErrBusy):
			// Routine while a deploy runs (one tick a second during a
			// minutes-long rollout): counted in updater_cycles_total{result="busy"}
			// by the pipeline's observer, so a debug line is enough.
			log.Debug("tick skipped: a cycle or deploy is still running")
		case errors.Is(err, deploy.ErrStandby):
			log.Debug("cycle skipped: standing by") // the keeper logged the change
		case err != nil:
			// The pipeline logs outages once; every failing cycle is only
			// worth a debug line.
			log.Debug("cycle failed", "err", err, "duration", time.Since(start))
		default:
			log.Debug("cycle done", "services", len(plans), "duration", time.Since(start))
			if backups != nil {
				targets := make([]deploy.Target, len(plans))
				for i, pl := range plans {
					targets[i] = pl.Target
				}
				backups.Sync(targets)
			}
		}
	}
	// The first cycle runs at once: a restarted updater finishes or reports
	// a deploy it left in flight without waiting for the next tick.
	cycle(ctx)
	if err := schedule.Run(ctx, cfg.Schedule, log, cycle); err != nil {
		log.Error("schedule", "err", err)
		return 1
	}
	log.Info("updater stopped")
	return 0
}

func check(ctx context.Context, p *deploy.Pipeline, out io.Writer, log *slog.Logger) int {
	plans, err := p.Check(ctx)
	if err != nil {
		log.Error("check", "err", err)
		return 1
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SERVICE\tTAG\tRUNNING\tREGISTRY\tACTION\tREASON")
	for _, pl := range plans {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", pl.Target.Name, pl.Target.Ref(),
			orNone(deploy.Short(pl.Target.Digest())), orNone(deploy.Short(pl.Want)), pl.Action, pl.Reason)
	}
	if err := w.Flush(); err != nil {
		return 1
	}
	return 0
}

// holder names this updater process in the lease: in a container the
// hostname is the container's ID.
func holder() string {
	h, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", h, os.Getpid())
}

func isHelp(arg string) bool { return arg == "-h" || arg == "--help" }

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// notifiers starts a dispatcher for each configured notifier; nil when
// none is. A Slack token that Slack rejects is a configuration error
// (ErrRejected); Slack being unreachable at start is not, since the
// dispatcher retries and deploys never wait on it.
// memo keeps each deploy's Slack message and Rollbar deploy in Swarm, so a
// deploy resumed after a restart reports to them.
func notifiers(ctx context.Context, cfg config.Config, log *slog.Logger, memo notify.Memo) (*notify.Dispatcher, error) {
	var ns []notify.Named
	switch s := cfg.Slack; {
	case s.Token != "":
		bot := slack.NewBot(slack.BotConfig{Token: s.Token, Channel: s.Channel, APIURL: s.APIURL, Memo: memo})
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
		ns = append(ns, notify.Named{Name: "slack", Notifier: slack.NewWebhook(s.WebhookURL)})
	}
	if cfg.Rollbar.Token != "" {
		ns = append(ns, notify.Named{Name: "rollbar", Notifier: rollbar.NewDeploys(withMemo(rollbarConfig(cfg), memo))})
	}
	if len(ns) == 0 {
		return nil, nil
	}
	return notify.NewDispatcher(log, notify.DefaultPolicy(), ns...), nil
}

func withMemo(c rollbar.Config, memo notify.Memo) rollbar.Config { c.Memo = memo; return c }

func rollbarConfig(cfg config.Config) rollbar.Config {
	return rollbar.Config{Token: cfg.Rollbar.Token, Environment: cfg.Rollbar.Environment,
		Endpoint: cfg.Rollbar.Endpoint, CodeVersion: version}
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

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
