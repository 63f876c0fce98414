// Package schedule runs cycles on a cron schedule, one at a time.
package schedule

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/robfig/cron/v3"
)

// Run calls cycle on every tick of spec until ctx ends, then waits for a
// running cycle to return. cycle must itself refuse to overlap with
// anything else using the pipeline (manual triggers too), so ticks that
// find it busy are skipped, never queued; cron.Recover turns a panic into
// a log line instead of a dead daemon.
func Run(ctx context.Context, spec string, log *slog.Logger, cycle func(context.Context)) error {
	l := logger{log}
	c := cron.New(cron.WithLogger(l), cron.WithChain(cron.Recover(l)))
	if _, err := c.AddFunc(spec, func() { cycle(ctx) }); err != nil {
		return fmt.Errorf("schedule %q: %w", spec, err)
	}
	c.Start()
	<-ctx.Done()
	<-c.Stop().Done()
	return nil
}

// logger adapts slog to cron's logr-like interface.
type logger struct{ log *slog.Logger }

func (l logger) Info(msg string, kv ...any) { l.log.Debug("cron: "+msg, kv...) }

func (l logger) Error(err error, msg string, kv ...any) {
	l.log.Error("cron: "+msg, append(kv, "err", err)...)
}
