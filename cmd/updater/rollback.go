package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/updater-dev/updater/internal/app"
	"github.com/updater-dev/updater/internal/client"
	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
)

// `updater history` and `updater rollback`: a service's durable history
// (kept in Swarm, so any updater, or this command, reads the same), and
// a person's return to a digest in it.

// historyFlags: --format.
func historyFlags(fs *flag.FlagSet) func(context.Context, streams, []string) int {
	format := fs.String("format", "table", `the output: "table" for people, "json" for scripts (the API's answer: docs/rollback.md)`)
	return func(ctx context.Context, std streams, args []string) int {
		if *format != "table" && *format != "json" {
			fmt.Fprintf(std.err, "updater history: --format %q: use \"table\" or \"json\"\n", *format)
			return 2
		}
		cfg, code := settings(std, 2)
		if code != 0 {
			return code
		}
		if cfg.URL != "" {
			c, code := dial(cfg, "history", std)
			if c == nil {
				return code
			}
			h, err := c.History(ctx, args[0])
			if err != nil {
				return failed(std, "history", err)
			}
			return printHistory(std.out, *format, h)
		}
		return withApp(ctx, cfg, app.Check, std.err, func(a *app.App) int {
			entries, err := a.Pipeline.ServiceHistory(ctx, args[0])
			if err != nil {
				a.Log.Error("history", "service", args[0], "err", err)
				return 1
			}
			return printHistory(std.out, *format, historyOf(args[0], entries))
		})
	}
}

// historyOf is a local history in the API's shape: `history --format
// json` prints the same fields either way.
func historyOf(service string, entries []deploy.HistoryEntry) client.History {
	h := client.History{Service: service, History: make([]client.HistoryEntry, 0, len(entries))}
	for _, e := range entries {
		h.History = append(h.History, client.HistoryEntry{ID: e.ID, Ref: e.Ref, From: e.From, To: e.To, Started: e.Started, Ended: e.Ended,
			Outcome: string(e.Outcome), Phase: string(e.Phase), Reason: e.Reason, Rollback: e.Rollback, By: e.By})
	}
	return h
}

// printHistory writes h as format. The table shows the whole digest
// returned to: it is what `rollback --to` takes.
func printHistory(out io.Writer, format string, h client.History) int {
	if h.History == nil {
		h.History = []client.HistoryEntry{}
	}
	if format == "json" {
		return printJSON(out, h)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if len(h.History) == 0 {
		fmt.Fprintf(w, "%s has no deploy in its history yet\n", h.Service)
	} else {
		fmt.Fprintln(w, "ENDED\tOUTCOME\tDIGEST\tFROM\tBY\tREASON")
	}
	for _, e := range h.History {
		outcome := e.Outcome
		if e.Phase != "" {
			outcome += " (" + e.Phase + ")"
		}
		by := "deploy"
		if e.Rollback {
			by = "rollback"
			if e.By != "" {
				by += " by " + e.By
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Ended.UTC().Format(time.RFC3339), outcome, e.To, orNone(deploy.Short(e.From)), by, e.Reason)
	}
	if w.Flush() != nil {
		return 1
	}
	return 0
}

// rollbackWithin bounds `rollback --wait` by default: a rollout, its
// probes and bake, and the queue before them.
const rollbackWithin = 30 * time.Minute

// rollbackFlags: --to, --wait, --timeout.
func rollbackFlags(fs *flag.FlagSet) func(context.Context, streams, []string) int {
	to := fs.String("to", "", "the `DIGEST` to return to (sha256:…, as updater history shows it); default: the last that\n"+
		"succeeded before the one the service runs")
	wait := fs.Bool("wait", false, "with UPDATER_URL: wait for the rollback's outcome and exit 1 unless it succeeded (default:\n"+
		"return once the updater has begun it); a local rollback always waits")
	timeout := fs.Duration("timeout", rollbackWithin, "with --wait: how long to wait for the outcome")
	return func(ctx context.Context, std streams, args []string) int {
		if *to != "" && !deploy.IsDigest(*to) {
			fmt.Fprintf(std.err, "updater rollback: --to %q is not a digest: use sha256: and 64 lowercase hex digits, as `updater history %s` shows them\n", *to, args[0])
			return 2
		}
		if *timeout <= 0 {
			fmt.Fprintf(std.err, "updater rollback: --timeout %s: use a duration above 0, like 10m\n", *timeout)
			return 2
		}
		cfg, code := settings(std, 2)
		if code != 0 {
			return code
		}
		if cfg.URL != "" {
			w := time.Duration(0)
			if *wait {
				w = *timeout
			}
			return remoteRollback(ctx, cfg, args[0], *to, w, std)
		}
		return withApp(ctx, cfg, app.Deploy, std.err, func(a *app.App) int { return rollbackOne(ctx, a, args[0], *to, std.out) })
	}
}

// rollbackOne is `updater rollback SERVICE`, locally: like a local
// deploy, it takes the lease (standing by while a running updater holds
// it) and waits for the outcome.
func rollbackOne(ctx context.Context, a *app.App, service, to string, out io.Writer) int {
	ev, err := a.Pipeline.RollbackService(ctx, deploy.RollbackRequest{Service: service, To: to, By: "cli"})
	switch {
	case errors.Is(err, deploy.ErrStandby):
		a.Log.Error("rollback", "service", service, "err", err, "hint", "the running updater rolls back on request: "+
			"set UPDATER_URL (and UPDATER_API_TOKEN) to ask it, or POST /api/v1/services/"+service+"/rollback")
		return 1
	case errors.Is(err, deploy.ErrNoRollbackTarget):
		a.Log.Error("rollback", "service", service, "err", err, "hint", "name the digest to return to with --to; `updater history "+service+"` lists them")
		return 1
	case err != nil:
		a.Log.Error("rollback", "service", service, "err", err)
		return 1
	}
	fmt.Fprintf(out, "%s rollback %s: %s -> %s %s\n", ev.Release.ServiceName, ev.Kind, deploy.Short(ev.Release.From), deploy.Short(ev.Release.To), ev.Reason)
	if ev.Kind != deploy.Succeeded {
		return 1
	}
	return 0
}

// remoteRollback asks the running updater to roll service back; with
// wait, it follows the rollback to its outcome in the service's history:
// the first entry that was not there before the request, is a rollback,
// and returned to the digest the updater answered with. (Not by time: the
// updater's clock is not this machine's.)
func remoteRollback(ctx context.Context, cfg config.Config, service, to string, wait time.Duration, std streams) int {
	c, code := dial(cfg, "rollback", std)
	if c == nil {
		return code
	}
	seen := map[string]bool{}
	if wait > 0 {
		h, err := c.History(ctx, service)
		if err != nil {
			return failed(std, "rollback", err)
		}
		for _, e := range h.History {
			seen[e.ID] = true
		}
	}
	rb, err := c.Rollback(ctx, service, to)
	if err != nil {
		return failed(std, "rollback", err)
	}
	fmt.Fprintf(std.out, "%s: rollback %s -> %s begun by the updater at %s\n", service, deploy.Short(rb.From), deploy.Short(rb.To), cfg.URL)
	if wait == 0 {
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		h, err := c.History(ctx, service)
		if err != nil && ctx.Err() == nil {
			return failed(std, "rollback", err)
		}
		for _, e := range h.History {
			if seen[e.ID] || !e.Rollback || e.To != rb.To {
				continue
			}
			fmt.Fprintf(std.out, "%s rollback %s: %s -> %s %s\n", service, e.Outcome, deploy.Short(e.From), deploy.Short(e.To), e.Reason)
			if e.Outcome != string(deploy.OutcomeSucceeded) {
				return 1
			}
			return 0
		}
		select {
		case <-ctx.Done():
			return failed(std, "rollback", fmt.Errorf("the rollback of %s to %s has no outcome after %s (see updater history %s)", service, deploy.Short(rb.To), wait, service))
		case <-time.After(pollEvery):
		}
	}
}
