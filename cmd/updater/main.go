// Command updater keeps the services of a Docker Swarm stack on the newest
// image their tag points to, promoting only what is healthy. This package
// is the command line: which command, with which settings; internal/app
// builds the parts and takes them down.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	_ "time/tzdata" // CRON_TZ schedules in a FROM scratch image

	"github.com/updater-dev/updater/internal/app"
	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/nodeprune"
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

// run is the whole command line; it returns the exit code: 2 for a bad
// command or setting, 1 for a failure.
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
		return nodeprune.Main(args, stdout, stderr) // the prune job's command on every node
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

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop() // after the parts are down: a second signal meanwhile does not kill them half-way
	switch cmd {
	case "check":
		return withApp(ctx, cfg, app.Check, stderr, func(a *app.App) int { return check(ctx, a, stdout) })
	case "deploy":
		return withApp(ctx, cfg, app.Deploy, stderr, func(a *app.App) int { return deployOne(ctx, a, args[0], stdout) })
	}
	return withApp(ctx, cfg, app.Run, stderr, func(a *app.App) int { return serve(ctx, a) })
}

func isHelp(arg string) bool { return arg == "-h" || arg == "--help" }
