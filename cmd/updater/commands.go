package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/updater-dev/updater/internal/app"
	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify/slack"
	"github.com/updater-dev/updater/internal/schedule"
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

// deployOne is `updater deploy SERVICE`: exit 0 only when it succeeded.
func deployOne(ctx context.Context, a *app.App, service string, out io.Writer) int {
	ev, err := a.Pipeline.DeployService(ctx, service)
	if errors.Is(err, deploy.ErrStandby) {
		a.Log.Error("deploy", "service", service, "err", err,
			"hint", "the running updater deploys on request: POST /api/v1/services/"+service+"/deploy")
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

// check is `updater check`: what each watched service would do, as a table.
func check(ctx context.Context, a *app.App, out io.Writer) int {
	plans, err := a.Pipeline.Check(ctx)
	if err != nil {
		a.Log.Error("check", "err", err)
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

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
