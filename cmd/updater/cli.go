package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/updater-dev/updater/internal/app"
	"github.com/updater-dev/updater/internal/nodeprune"
	"github.com/updater-dev/updater/internal/probe"
)

// streams are a command's stdout and stderr.
type streams struct{ out, err io.Writer }

// command is one subcommand: its own flags (a FlagSet of its own), its
// arguments, its help. `--help` and `-h` anywhere among its arguments
// answer with its usage, exit 0, before any setting is read or Docker is
// asked anything.
type command struct {
	name    string
	args    string // the positional arguments, as usage shows them
	nargs   [2]int // how many it takes: at least, at most
	summary string // one line, in `updater help`
	about   string // more, in `updater COMMAND --help`
	hidden  bool   // a job's command, not a person's: left out of `updater help`
	// flags declares the command's flags on fs and returns what runs it
	// once they and the arguments are parsed.
	flags func(fs *flag.FlagSet) func(ctx context.Context, std streams, args []string) int
	// raw, instead, takes the arguments as they are: a command whose flags
	// and help are its package's own (prune, probe).
	raw func(ctx context.Context, std streams, args []string) int
}

// commands is the command table; a func so that nothing can change it.
func commands() []command {
	none := [2]int{0, 0}
	one := [2]int{1, 1}
	return []command{
		{name: "run", nargs: none, summary: "watch and deploy on the schedule (the default)",
			about: "Cycles on UPDATER_SCHEDULE until SIGTERM, serves UPDATER_LISTEN, and deploys while it holds the lease.",
			flags: func(*flag.FlagSet) func(context.Context, streams, []string) int { return runCmd }},
		{name: "check", nargs: none, summary: "what each watched service would do, and why others are not watched",
			about: "Locally: one dry-run cycle (Docker and the registries are asked, nothing is written), then the\n" +
				"services that carry updater labels but are not watched, and why. With UPDATER_URL: what the running\n" +
				"updater saw at its last check (--now asks it for one first).",
			flags: checkFlags},
		{name: "deploy", args: "SERVICE", nargs: one, summary: "deploy what SERVICE's tag points to now; exit 1 on failure",
			about: "Locally: deploys (no approval needed, a digest that failed before is tried again), waits for the\n" +
				"outcome, exits 1 unless it succeeded; it stands by while a running updater holds the lease. With\n" +
				"UPDATER_URL: asks the running updater, and with --wait waits for the outcome.",
			flags: deployFlags},
		{name: "approve", args: "ID", nargs: one, summary: "let a deploy waiting for approval go ahead (needs UPDATER_URL)",
			about: "ID is the deploy's, as Slack, the status page or GET /api/v1/deploys show it. It deploys at the\n" +
				"running updater's next check that still finds the tag on the approved digest.",
			flags: func(*flag.FlagSet) func(context.Context, streams, []string) int { return decideCmd(true) }},
		{name: "reject", args: "ID", nargs: one, summary: "turn down a deploy waiting for approval (needs UPDATER_URL)",
			about: "The digest is then not asked about again until the tag moves; `updater deploy` can still deploy it.",
			flags: func(*flag.FlagSet) func(context.Context, streams, []string) int { return decideCmd(false) }},
		{name: "history", args: "SERVICE", nargs: one, summary: "SERVICE's last deploys, newest first, as Swarm keeps them",
			about: "Locally: read from Swarm, where every updater keeps each service's last 20 deploys. With UPDATER_URL:\n" +
				"asks the running updater. The digests are what `updater rollback SERVICE --to` takes.",
			flags: historyFlags},
		{name: "rollback", args: "SERVICE", nargs: one, summary: "return SERVICE to an earlier digest that succeeded; exit 1 on failure",
			about: "A deploy like any other (recorded, judged, probed and baked as labelled, reported as a rollback),\n" +
				"without its hooks: no backup, no migration is run backwards (docs/rollback.md). The digest rolled away\n" +
				"from is not deployed again until the tag moves. Locally: takes the lease like deploy (it stands by\n" +
				"while a running updater holds it) and waits for the outcome. With UPDATER_URL: asks the running\n" +
				"updater, and with --wait waits for the outcome in the service's history.",
			flags: rollbackFlags},
		{name: "healthcheck", nargs: none, summary: "ask the running updater's /healthz (UPDATER_LISTEN): exit 0 if it answers, 1 if not",
			about: "For Docker's HEALTHCHECK in an image with no shell or curl.",
			flags: func(*flag.FlagSet) func(context.Context, streams, []string) int { return healthcheckCmd }},
		{name: "prune", args: "...", summary: "remove a repository's unused images on this node (what the prune job runs)",
			raw: func(_ context.Context, std streams, args []string) int { return nodeprune.Main(args, std.out, std.err) }},
		{name: "probe", args: "...", hidden: true, summary: "probe a service's new tasks (what the probe job runs)",
			raw: func(ctx context.Context, std streams, args []string) int {
				return probe.Main(ctx, args, std.out, std.err)
			}},
		{name: "version", nargs: none, summary: "print the version (also --version)",
			flags: func(*flag.FlagSet) func(context.Context, streams, []string) int {
				return func(_ context.Context, std streams, _ []string) int {
					fmt.Fprintln(std.out, "updater", version)
					return 0
				}
			}},
		{name: "help", args: "[COMMAND]", nargs: [2]int{0, 1}, summary: "this list, or a command's flags",
			flags: func(*flag.FlagSet) func(context.Context, streams, []string) int { return helpCmd }},
	}
}

func lookup(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// main parses c's flags and arguments and runs it.
func (c command) main(ctx context.Context, std streams, args []string) int {
	if c.raw != nil {
		return c.raw(ctx, std, args)
	}
	fs := c.flagSet()
	exec := c.flags(fs)
	pos, err := parse(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.usage(fs, std.out)
		return 0
	case err != nil:
		fmt.Fprintf(std.err, "updater %s: %v\n\n", c.name, err)
	case len(pos) < c.nargs[0] || len(pos) > c.nargs[1]:
		got := ""
		if len(pos) > 0 {
			got = fmt.Sprintf(", got %q", strings.Join(pos, " "))
		}
		fmt.Fprintf(std.err, "updater %s: %s%s\n\n", c.name, c.wantArgs(), got)
	default:
		return exec(ctx, std, pos)
	}
	c.usage(fs, std.err)
	return 2
}

func (c command) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors and usage are printed by main, to the stream they belong on
	return fs
}

func (c command) wantArgs() string {
	switch {
	case c.nargs[1] == 0:
		return "takes no arguments"
	case c.nargs[0] == c.nargs[1]:
		return "name exactly one " + strings.ToLower(c.args)
	}
	return fmt.Sprintf("takes at most %d arguments", c.nargs[1])
}

// usage prints c's help: how to call it, what it does, its flags.
func (c command) usage(fs *flag.FlagSet, w io.Writer) {
	line := "updater " + c.name
	if hasFlags(fs) {
		line += " [flags]"
	}
	fmt.Fprintf(w, "usage: %s\n\n%s%s.\n", strings.TrimSpace(line+" "+c.args), strings.ToUpper(c.summary[:1]), c.summary[1:])
	if c.about != "" {
		fmt.Fprintf(w, "\n%s\n", c.about)
	}
	if hasFlags(fs) {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// parse parses flags anywhere among the arguments, so that `updater
// deploy web --help` is a question too; after "--" everything is an
// argument.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

func helpCmd(ctx context.Context, std streams, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(std.out, usage())
		return 0
	}
	c, ok := lookup(args[0])
	switch {
	case !ok:
		fmt.Fprintf(std.err, "updater help: unknown command %q\n\n%s", args[0], usage())
		return 2
	case c.raw != nil:
		return c.raw(ctx, std, []string{"--help"}) // prune's and probe's flags are their packages' own
	}
	fs := c.flagSet()
	c.flags(fs)
	c.usage(fs, std.out)
	return 0
}

func runCmd(ctx context.Context, std streams, _ []string) int {
	cfg, code := settings(std, 2)
	if code != 0 {
		return code
	}
	return withApp(ctx, cfg, app.Run, std.err, func(a *app.App) int { return serve(ctx, a) })
}

func healthcheckCmd(_ context.Context, std streams, _ []string) int {
	cfg, code := settings(std, 1) // an updater with this configuration is not running
	if code != 0 {
		return code
	}
	return healthcheck(cfg.Listen, std.err)
}

// checkFlags: --format and --now.
func checkFlags(fs *flag.FlagSet) func(context.Context, streams, []string) int {
	format := fs.String("format", "table", `the output: "table" for people, "json" for scripts (fields in docs/cli.md)`)
	now := fs.Bool("now", false, "with UPDATER_URL: ask the running updater for a full check first (a real cycle: it deploys\n"+
		"what moved, as its schedule would) and wait for it, up to 10 minutes; a local check is always now")
	return func(ctx context.Context, std streams, _ []string) int {
		if *format != "table" && *format != "json" {
			fmt.Fprintf(std.err, "updater check: --format %q: use \"table\" or \"json\"\n", *format)
			return 2
		}
		cfg, code := settings(std, 2)
		if code != 0 {
			return code
		}
		if cfg.URL != "" {
			return remoteCheck(ctx, cfg, *format, *now, std)
		}
		return withApp(ctx, cfg, app.Check, std.err, func(a *app.App) int { return check(ctx, a, *format, std.out) })
	}
}

// deployFlags: --wait, --force.
func deployFlags(fs *flag.FlagSet) func(context.Context, streams, []string) int {
	wait := fs.Duration("wait", 0, "with UPDATER_URL: wait up to this long for the deploy's outcome, and exit 1 unless it\n"+
		"succeeded (0: return once the updater has queued it); a local deploy always waits")
	force := fs.Bool("force", false, "deploy through a freeze (UPDATER_FREEZE, updater.freeze); local only: the API's deploy\n"+
		"has no such switch")
	return func(ctx context.Context, std streams, args []string) int {
		if *wait < 0 {
			fmt.Fprintf(std.err, "updater deploy: --wait %s: use a duration of 0 or more, like 10m\n", *wait)
			return 2
		}
		cfg, code := settings(std, 2)
		if code != 0 {
			return code
		}
		switch {
		case cfg.URL != "" && *force:
			// Refused rather than dropped: a deploy asked through a freeze
			// must not be queued as one that the freeze then holds.
			fmt.Fprintln(std.err, "updater deploy: --force works locally only (the API's deploy has no such switch): unset UPDATER_URL")
			return 2
		case cfg.URL != "":
			return remoteDeploy(ctx, cfg, args[0], *wait, std)
		}
		return withApp(ctx, cfg, app.Deploy, std.err, func(a *app.App) int { return deployOne(ctx, a, args[0], *force, std.out) })
	}
}

// decideCmd is approve or reject. Pending approvals live in the memory of
// the updater that opened them, so only it can decide one: a local
// approve would find none.
func decideCmd(approve bool) func(context.Context, streams, []string) int {
	return func(ctx context.Context, std streams, args []string) int {
		cfg, code := settings(std, 2)
		if code != 0 {
			return code
		}
		verb := map[bool]string{true: "approve", false: "reject"}[approve]
		if cfg.URL == "" {
			fmt.Fprintf(std.err, "updater %s: needs UPDATER_URL (and UPDATER_API_TOKEN): approvals are kept in the memory of the\n"+
				"running updater that opened them, so only it can decide one; set UPDATER_URL to its address\n", verb)
			return 2
		}
		return remoteDecide(ctx, cfg, args[0], approve, std)
	}
}

// pollEvery is how often a command waiting on the running updater asks
// it again.
const pollEvery = time.Second
