// Command updater keeps the services of a Docker Swarm stack on the newest
// image their tag points to, promoting only what is healthy. This package
// is the command line: which command, with which flags and settings;
// internal/app builds the parts and takes them down, internal/client asks
// a running updater instead (UPDATER_URL).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	_ "time/tzdata" // CRON_TZ schedules in a FROM scratch image

	"github.com/updater-dev/updater/internal/config"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run is the whole command line; it returns the exit code: 2 for a bad
// command, flag or setting (a token the running updater refuses too), 1
// for a failure.
func run(args []string, stdout, stderr io.Writer) int {
	name := "run"
	if len(args) > 0 {
		name, args = args[0], args[1:]
	}
	switch name {
	case "-version", "--version":
		name = "version"
	case "-h", "-help", "--help":
		name = "help"
	}
	cmd, ok := lookup(name)
	if !ok {
		fmt.Fprintf(stderr, "updater: unknown command %q\n\n%s", name, usage())
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop() // after the parts are down: a second signal meanwhile does not kill them half-way
	return cmd.main(ctx, streams{stdout, stderr}, args)
}

// usage is the top-level help: the commands that are not hidden.
func usage() string {
	var b strings.Builder
	b.WriteString("usage: updater [command] [flags] [arguments]\n\ncommands:\n")
	for _, c := range commands() {
		if !c.hidden {
			fmt.Fprintf(&b, "  %-18s%s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
		}
	}
	b.WriteString("\n`updater COMMAND --help` shows a command's flags. Settings come from the environment (see the README);\n" +
		"with UPDATER_URL and UPDATER_API_TOKEN set, check, deploy, approve, reject, history and rollback ask that\n" +
		"running updater's API.\n")
	return b.String()
}

// settings loads the configuration, or says what is wrong with it and
// returns the exit code: nothing is touched before the whole of it is
// valid. bad is the code for a bad setting (healthcheck's is 1, since
// Docker reserves 2 in a HEALTHCHECK).
func settings(std streams, bad int) (config.Config, int) {
	cfg, err := config.Load(os.LookupEnv, os.Environ())
	if err != nil {
		fmt.Fprintf(std.err, "updater: invalid configuration:\n%v\n", err)
		return config.Config{}, bad
	}
	return cfg, 0
}
