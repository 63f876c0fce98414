package deploy_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// Scheduled backups run only on the lease holder and never beside a deploy
// of the same service or its group.

// signal is a log handler that closes ch at the first record whose
// message contains msg: a test waits on it instead of reading the log
// while the pipeline writes it.
type signal struct {
	slog.Handler
	msg  string
	once *sync.Once
	ch   chan struct{}
}

func (s signal) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, s.msg) {
		s.once.Do(func() { close(s.ch) })
	}
	return s.Handler.Handle(ctx, r)
}

func (s signal) WithAttrs(as []slog.Attr) slog.Handler {
	s.Handler = s.Handler.WithAttrs(as)
	return s
}

func (s signal) WithGroup(name string) slog.Handler {
	s.Handler = s.Handler.WithGroup(name)
	return s
}

// onLog returns a channel closed when the pipeline logs msg.
func (w *world) onLog(msg string) <-chan struct{} {
	ch := make(chan struct{})
	w.p.Log = slog.New(signal{Handler: w.p.Log.Handler(), msg: msg, once: &sync.Once{}, ch: ch})
	return ch
}

// skipped are the "backup skipped" steps reported, by service.
func (w *hookWorld) skipped() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, e := range w.events {
		if e.Kind == deploy.Progress && e.Step != nil && e.Step.Phase == deploy.PhaseBackup && e.Step.State == "skipped" {
			out = append(out, e.Release.ServiceName+": "+e.Reason)
		}
	}
	return out
}

func TestBackupOnScheduleStandsBy(t *testing.T) {
	w := newHookWorld(t)
	w.p.Acting = func() bool { return false }
	run := w.jobs.RunFn
	w.jobs.RunFn = nil // a job would fail the backup with another error

	if err := w.p.Backup(t.Context(), hooked(oldD)); !errors.Is(err, deploy.ErrStandby) {
		t.Fatalf("Backup on a standby = %v, want ErrStandby", err)
	}
	if len(w.events) != 0 {
		t.Errorf("events %+v from a standby", w.events)
	}

	w.p.Acting = func() bool { return true }
	w.jobs.RunFn = run
	if err := w.p.Backup(t.Context(), hooked(oldD)); err != nil || len(w.ran) != 1 {
		t.Errorf("Backup on the holder = %v, jobs %q: want it run", err, w.jobNames())
	}
}

// A scheduled backup due while a deploy of its service, or of its group,
// runs (here mid-rollout) is skipped with one warning and a reported
// step; once the deploy is over, the next one runs.
func TestBackupOnScheduleSkipsDuringDeploy(t *testing.T) {
	for _, tc := range []struct {
		name, why string
		world     func(t *testing.T) (*hookWorld, deploy.Target)
	}{
		{"its own deploy", "a deploy of the service is running", func(t *testing.T) (*hookWorld, deploy.Target) {
			w := newHookWorld(t)
			w.targets = []deploy.Target{hooked(oldD)}
			w.digests[ref] = newD
			w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
			return w, hooked(oldD)
		}},
		// db is of the group but up to date, so not deployed: the group's
		// migration still changes what it backs up.
		{"its group's deploy", "a deploy of its group g is running", func(t *testing.T) (*hookWorld, deploy.Target) {
			w := groupWorld(t, true)
			db := hooked(oldD)
			db.ID, db.Name, db.Image, db.Hooks.Group = "svc3", "db", "127.0.0.1:5000/db:15@"+oldD, "g"
			w.targets = append(w.targets, db)
			w.digests["127.0.0.1:5000/db:15"] = oldD
			return w, db
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, target := tc.world(t)
			inRollout, release := w.holdRollout()
			defer release()
			cycled := make(chan error, 1)
			go func() { _, err := w.p.Cycle(t.Context()); w.p.Wait(); cycled <- err }()
			await(t, inRollout, "rollout")

			if err := w.p.Backup(t.Context(), target); err != nil {
				t.Errorf("Backup during the deploy = %v, want nil: skipped", err)
			}
			release()
			if err := <-cycled; err != nil {
				t.Fatalf("Cycle: %v", err)
			}

			if n := len(w.ran); n != 2 {
				t.Errorf("jobs %q, want the deploy's backup and migration only", w.jobNames())
			}
			lines := w.logLines("WARN", "scheduled backup skipped")
			if len(lines) != 1 || lines[0]["service"] != target.Name || !strings.Contains(lines[0]["msg"].(string), tc.why) {
				t.Errorf("warnings %v, want one naming %s and %q", lines, target.Name, tc.why)
			}
			if got, want := w.skipped(), []string{target.Name + ": " + tc.why}; !slices.Equal(got, want) {
				t.Errorf("skipped steps %q, want %q", got, want)
			}
			for _, ev := range w.milestones() {
				if ev.Kind == deploy.Failed {
					t.Errorf("%s failed: %s", ev.Release.ServiceName, ev.Reason)
				}
			}

			// The deploy is over: the next one runs.
			if err := w.p.Backup(t.Context(), target); err != nil {
				t.Errorf("Backup after the deploy: %v", err)
			}
			if n := len(w.ran); n != 3 || !slices.Contains(w.ran[2].Env, "UPDATER_SERVICE="+target.Name) || w.ran[2].Phase != deploy.PhaseBackup {
				t.Errorf("jobs %q, want the scheduled backup to run after the deploy", w.jobNames())
			}
		})
	}
}

// scheduledJob holds the job of a scheduled backup (the one without a
// new digest) until release; in says it has started.
func (w *hookWorld) holdScheduledJob() (in <-chan struct{}, release func()) {
	started, open := make(chan struct{}), make(chan struct{})
	run := w.jobs.RunFn
	w.jobs.RunFn = func(ctx context.Context, j deploy.Job, creds deploy.Credentials) (deploy.JobResult, error) {
		res, err := run(ctx, j, creds)
		if slices.Contains(j.Env, "UPDATER_TO_DIGEST=") {
			close(started)
			select {
			case <-open:
			case <-ctx.Done():
			}
			w.mu.Lock()
			w.calls = append(w.calls, "end "+j.Name)
			w.mu.Unlock()
		}
		return res, err
	}
	return started, sync.OnceFunc(func() { close(open) })
}

// A deploy whose service's scheduled backup is running waits for it to end
// before its own backup, then deploys as usual.
func TestDeployWaitsForScheduledBackup(t *testing.T) {
	for _, grouped := range []bool{false, true} {
		t.Run(map[bool]string{false: "alone", true: "group"}[grouped], func(t *testing.T) {
			var w *hookWorld
			if grouped {
				w = groupWorld(t, true)
			} else {
				w = newHookWorld(t)
				w.targets = []deploy.Target{hooked(oldD)}
				w.digests[ref] = newD
				w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
			}
			waiting := w.onLog("deploy waits for the scheduled backup")
			inJob, release := w.holdScheduledJob()
			defer release()
			backedUp := make(chan error, 1)
			go func() { backedUp <- w.p.Backup(t.Context(), hooked(oldD)) }()
			await(t, inJob, "scheduled backup")
			cycled := make(chan error, 1)
			go func() { _, err := w.p.Cycle(t.Context()); w.p.Wait(); cycled <- err }()

			await(t, waiting, "wait for the scheduled backup")
			w.mu.Lock()
			early := slices.Clone(w.calls)
			w.mu.Unlock()
			if len(early) != 1 {
				t.Errorf("calls while the scheduled backup runs: %q, want its job only", early)
			}
			release()
			if err := <-backedUp; err != nil {
				t.Errorf("Backup: %v", err)
			}
			if err := <-cycled; err != nil {
				t.Fatalf("Cycle: %v", err)
			}

			end := slices.IndexFunc(w.calls, func(c string) bool { return strings.HasPrefix(c, "end web-backup-") })
			first := slices.IndexFunc(w.calls, func(c string) bool {
				return strings.HasPrefix(c, "job ") && !strings.HasPrefix(c, "job web-backup-") || strings.HasPrefix(c, "update ")
			})
			if end < 0 || first < end {
				t.Errorf("calls %q: want the deploy's jobs and writes after the scheduled backup ended", w.calls)
			}
			for _, ev := range w.milestones() {
				if ev.Kind != deploy.Started && ev.Kind != deploy.Succeeded {
					t.Errorf("%s: %s %s", ev.Release.ServiceName, ev.Kind, ev.Reason)
				}
			}
		})
	}
}

// A scheduled backup that outlives its hook timeout fails the deploy
// before anything of it runs, saying why, once.
func TestDeployGivesUpWaitingForScheduledBackup(t *testing.T) {
	w := newHookWorld(t)
	tg := hooked(oldD)
	tg.Hooks.Timeout = 20 * time.Millisecond
	w.targets = []deploy.Target{tg}
	w.digests[ref] = newD
	w.services.UpdateFn = nil
	inJob, release := w.holdScheduledJob()
	defer release()
	backedUp := make(chan error, 1)
	go func() { backedUp <- w.p.Backup(t.Context(), tg) }()
	await(t, inJob, "scheduled backup")

	w.cycle(t.Context())
	release()
	<-backedUp

	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhasePrepare || !strings.Contains(ev.Reason, "scheduled backup of web still runs after 20ms") {
		t.Errorf("outcome %s: %q, want a prepare failure naming the backup and its timeout", ev.Phase, ev.Reason)
	}
	if len(w.ran) != 1 || len(w.updates) != 0 {
		t.Errorf("jobs %q, updates %+v: want the scheduled backup's job only", w.jobNames(), w.updates)
	}
	if len(w.marked) != 0 {
		t.Errorf("MarkFailed %+v: a slow backup is not the digest's fault, the next cycle tries again", w.marked)
	}
	w.journalPaired()
}
