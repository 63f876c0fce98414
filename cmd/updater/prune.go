package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/updater-dev/updater/internal/swarm"
)

// prune is the node's half of image pruning: the prune job runs it on
// every node, where it talks to that node's dockerd through the mounted
// socket, and prints one JSON line that the updater reads from the task's
// log. Arguments, not environment: it is run by the updater, not
// configured by people, and its container gets no other configuration.
func prune(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("prune", flag.ContinueOnError)
	fs.SetOutput(stderr)
	repo := fs.String("repo", "", "the repository whose images go, like registry.example.com/shop/web")
	keep := fs.String("keep", "", "digests that stay, comma-separated")
	service := fs.String("service", "", "the service whose old task containers may go with their image")
	scope := fs.String("scope", "", "the updater scope whose exited job containers go")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0 // the flags' usage is printed; asked for, not an error
		}
		return 2
	}
	if *repo == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: updater prune --repo REPOSITORY [--keep DIGEST,…] [--service ID] [--scope SCOPE]")
		return 2
	}
	var digests []string
	for _, d := range strings.Split(*keep, ",") {
		if d = strings.TrimSpace(d); d != "" {
			digests = append(digests, d)
		}
	}
	sw, err := swarm.New(swarm.Config{})
	if err != nil {
		fmt.Fprintln(stderr, "updater prune:", err)
		return 1
	}
	defer sw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := sw.PruneImages(ctx, *repo, digests, *service, *scope)
	if err != nil {
		// Still a report, so the updater shows why; exit 0, since Swarm
		// would start a failed global-job task again and again.
		r.Errors = append(r.Errors, err.Error())
	}
	if err := json.NewEncoder(stdout).Encode(r); err != nil {
		return 1
	}
	return 0
}
