package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/updater-dev/updater/internal/app"
	"github.com/updater-dev/updater/internal/client"
	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify/slack"
	"github.com/updater-dev/updater/internal/schedule"
	"github.com/updater-dev/updater/internal/swarm"
)

// withApp builds the parts mode needs, runs cmd with them, and takes them
// down whatever cmd returns.
func withApp(ctx context.Context, cfg config.Config, mode app.Mode, stderr io.Writer, cmd func(*app.App) int) int {
	now, skew := testClock()
	a := app.New(cfg, app.Options{Version: version, Stderr: stderr, Now: now, Skew: skew})
	defer a.Close()
	defer a.ReportPanic()
	switch err := a.Open(ctx, mode); {
	case errors.Is(err, slack.ErrRejected):
		// A token Slack refuses is a bad setting (exit 2), found before
		// Docker is asked whether it answers.
		fmt.Fprintf(stderr, "updater: invalid configuration:\nSLACK_TOKEN: %v\n", err)
		return 2
	case err != nil:
		a.Log.Error("start", "err", err)
		return 1
	}
	return cmd(a)
}

// serve is `updater run`: cycles on the schedule until a signal.
func serve(ctx context.Context, a *app.App) int {
	if err := a.Serve(ctx); err != nil {
		a.Log.Error("start", "err", err)
		return 1
	}
	// The first cycle runs at once: a restarted updater finishes or reports
	// a deploy it left in flight without waiting for the next tick.
	a.Cycle(ctx)
	if err := schedule.Run(ctx, a.Config().Schedule, a.Log, a.Cycle); err != nil {
		a.Log.Error("schedule", "err", err)
		return 1
	}
	a.Log.Info("updater stopped")
	return 0
}

// deployOne is `updater deploy SERVICE`, locally: exit 0 only when it
// succeeded. force goes through a freeze.
func deployOne(ctx context.Context, a *app.App, service string, force bool, out io.Writer) int {
	deployService := a.Pipeline.DeployService
	if force {
		deployService = a.Pipeline.ForceDeployService
	}
	ev, err := deployService(ctx, service)
	if errors.Is(err, deploy.ErrStandby) {
		a.Log.Error("deploy", "service", service, "err", err, "hint", "the running updater deploys on request: "+
			"set UPDATER_URL (and UPDATER_API_TOKEN) to ask it, or POST /api/v1/services/"+service+"/deploy")
		return 1
	}
	if err != nil {
		a.Log.Error("deploy", "service", service, "err", err)
		return 1
	}
	fmt.Fprintf(out, "%s %s: %s -> %s %s\n", ev.Release.ServiceName, ev.Kind, deploy.Short(ev.Release.From), deploy.Short(ev.Release.To), ev.Reason)
	if ev.Kind != deploy.Succeeded {
		return 1
	}
	return 0
}

// check is `updater check`, locally: one dry-run cycle, and the services
// that look meant to be watched but are not.
func check(ctx context.Context, a *app.App, format string, out io.Writer) int {
	plans, err := a.Pipeline.Check(ctx)
	if err != nil {
		a.Log.Error("check", "err", err)
		return 1
	}
	cfg := a.Config()
	r := report{Checked: time.Now().UTC(), Services: make([]client.Service, 0, len(plans)), Unwatched: []swarm.Unwatched{}}
	for _, pl := range plans {
		t := pl.Target
		s := client.Service{Name: t.Name, ID: t.ID, Stack: t.Stack, Ref: t.Ref(), RunningDigest: t.Digest(),
			RegistryDigest: pl.Want, State: string(pl.Action), Reason: pl.Reason, Approval: "auto"}
		if !pl.EligibleAt.IsZero() {
			at := pl.EligibleAt.UTC()
			s.EligibleAt = &at
		}
		if t.Hooks.Approve {
			s.Approval = "manual"
		}
		r.Services = append(r.Services, s)
	}
	// Only check reads every service: a cycle's cost stays one filtered list.
	sw, err := swarm.New(swarm.Config{Label: cfg.Label, Stack: cfg.Stack, Timeout: cfg.DockerTimeout})
	if err == nil {
		defer sw.Close()
		r.Unwatched, err = sw.Unwatched(ctx)
	}
	if err != nil {
		a.Log.Error("check: list the services not watched", "err", err)
		return 1
	}
	return r.print(out, format, fmt.Sprintf("no service is watched: give one the label %s=true under `deploy.labels:`%s", cfg.Label, inStack(cfg.Stack)), "")
}

func inStack(stack string) string {
	if stack == "" {
		return ""
	}
	return fmt.Sprintf(", in stack %s (UPDATER_STACK)", stack)
}

// report is what `updater check` prints; with --format json, as is (its
// fields are documented in docs/cli.md: keep them).
type report struct {
	// Checked is when the plans were made: now for a local check, the
	// running updater's last full check through UPDATER_URL.
	Checked  time.Time        `json:"checked"`
	Services []client.Service `json:"services"`
	// Unwatched are the services with updater labels that are not
	// watched, and why; null through UPDATER_URL (the API has no list).
	Unwatched []swarm.Unwatched `json:"unwatched"`
}

// print writes r as format; in a table, none stands for an empty list and
// note, when set, ends it.
func (r report) print(out io.Writer, format, none, note string) int {
	if format == "json" {
		return printJSON(out, r)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if len(r.Services) == 0 {
		fmt.Fprintln(w, none)
	} else {
		fmt.Fprintln(w, "SERVICE\tTAG\tRUNNING\tREGISTRY\tACTION\tREASON")
	}
	for _, s := range r.Services {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Ref,
			orNone(deploy.Short(s.RunningDigest)), orNone(deploy.Short(s.RegistryDigest)), s.State, s.Reason)
	}
	if len(r.Unwatched) > 0 {
		fmt.Fprintln(w, "\nnot watched:")
	}
	for _, u := range r.Unwatched {
		fmt.Fprintf(w, "  %s: %s\n", u.Service, u.Reason)
	}
	if note != "" {
		fmt.Fprintln(w, "\n"+note)
	}
	if w.Flush() != nil {
		return 1
	}
	return 0
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printJSON writes v indented, as every --format json does: 1 when it
// could not be written.
func printJSON(out io.Writer, v any) int {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	if enc.Encode(v) != nil {
		return 1
	}
	return 0
}
