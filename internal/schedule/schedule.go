// Package schedule runs cycles on a cron schedule, one at a time, and
// scheduled backups beside them.
package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/updater-dev/updater/internal/deploy"
)

// Parse reads spec as Run and Backups schedule it: five cron fields or a
// descriptor ("@hourly", "@every 90s"), optionally after "CRON_TZ=Zone "
// or "TZ=Zone ". It is the one reading of a schedule (UPDATER_SCHEDULE,
// updater.backup.schedule, the scheduler itself), and refuses what
// robfig/cron v3.0.1 would run other than as written, or not at all:
// an @every below 1s or with a fraction of a second (robfig runs it every
// second, or cut to whole seconds), and a date that never comes
// ("0 0 30 2 *": no run, without a word). robfig panics on a time zone
// with no schedule after it; a schedule is user input, so that is an
// error too.
func Parse(spec string) (_ cron.Schedule, err error) {
	rest := spec
	if strings.HasPrefix(rest, "TZ=") || strings.HasPrefix(rest, "CRON_TZ=") {
		// The zone ends at the first space, as robfig reads it.
		var ok bool
		if _, rest, ok = strings.Cut(rest, " "); !ok {
			return nil, errors.New("time zone without a schedule")
		}
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("not a schedule (%v)", p)
		}
	}()
	sched, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("not a schedule (%w)", err)
	}
	if d, ok := strings.CutPrefix(strings.TrimSpace(rest), "@every "); ok {
		every, err := time.ParseDuration(d)
		switch {
		case err != nil: // unreachable after ParseStandard, but cheap to keep honest
			return nil, fmt.Errorf("not a schedule (%w)", err)
		case every < time.Second:
			return nil, errors.New(`interval below 1s: the scheduler runs at most once a second; use "@every 1s" or longer`)
		case every%time.Second != 0:
			return nil, errors.New(`interval is not a whole number of seconds: the scheduler truncates to seconds; use a value like "@every 90s"`)
		}
	}
	if sched.Next(time.Now()).IsZero() {
		return nil, errors.New("no date matches: the schedule would never run")
	}
	return sched, nil
}

// Run calls cycle on every tick of spec until ctx ends, then waits for a
// running cycle to return. cycle must itself refuse to overlap with
// anything else using the pipeline (manual triggers too), so ticks that
// find it busy are skipped, never queued; cron.Recover turns a panic into
// a log line instead of a dead daemon.
func Run(ctx context.Context, spec string, log *slog.Logger, cycle func(context.Context)) error {
	l := logger{log}
	sched, err := Parse(spec)
	if err != nil {
		return fmt.Errorf("schedule %q: %w", spec, err)
	}
	c := cron.New(cron.WithLogger(l), cron.WithChain(cron.Recover(l)))
	c.Schedule(sched, cron.FuncJob(func() { cycle(ctx) }))
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

// Backups keeps one cron entry per service whose labels schedule
// backups, following the labels as they change between cycles.
type Backups struct {
	ctx     context.Context
	log     *slog.Logger
	cron    *cron.Cron
	run     func(context.Context, deploy.Target)
	mu      sync.Mutex             // two cycles' Syncs may meet
	entries map[string]backupEntry // by service ID
}

type backupEntry struct {
	fingerprint string
	id          cron.EntryID
}

// NewBackups starts a scheduler that calls run for each due backup until
// Stop. run must decide whether a due backup may run at all, and return
// soon when not: deploy.Pipeline.Backup skips one on a standby updater,
// beside a deploy of the service or its group, or beside its own previous
// run, so Stop never waits on a deploy.
func NewBackups(ctx context.Context, log *slog.Logger, run func(context.Context, deploy.Target)) *Backups {
	l := logger{log}
	b := &Backups{ctx: ctx, log: log, run: run, entries: map[string]backupEntry{},
		cron: cron.New(cron.WithLogger(l), cron.WithChain(cron.Recover(l)))}
	b.cron.Start()
	return b
}

// Sync makes the entries match targets: a service with a valid backup
// schedule has exactly one entry, built from its labels as they are now.
func (b *Backups) Sync(targets []deploy.Target) {
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := map[string]bool{}
	for _, t := range targets {
		if t.HooksErr != nil || t.Hooks.Backup == nil || t.Hooks.BackupSchedule == "" {
			continue
		}
		seen[t.ID] = true
		fp := fmt.Sprintf("%s %+v %s", t.Hooks.BackupSchedule, *t.Hooks.Backup, t.Image)
		if e, ok := b.entries[t.ID]; ok && e.fingerprint == fp {
			continue
		} else if ok {
			b.cron.Remove(e.id)
		}
		sched, err := Parse(t.Hooks.BackupSchedule)
		if err != nil {
			b.log.Error("schedule backups", "service", t.Name, "err", err)
			continue
		}
		id := b.cron.Schedule(sched, cron.FuncJob(func() { b.run(b.ctx, t) }))
		b.entries[t.ID] = backupEntry{fingerprint: fp, id: id}
		b.log.Info("backups scheduled", "service", t.Name, "schedule", t.Hooks.BackupSchedule)
	}
	for id, e := range b.entries {
		if !seen[id] {
			b.cron.Remove(e.id)
			delete(b.entries, id)
		}
	}
}

// Stop stops scheduling and waits for running backups to return.
func (b *Backups) Stop() { <-b.cron.Stop().Done() }
