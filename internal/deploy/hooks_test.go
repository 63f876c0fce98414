package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

type fakeJobs struct {
	RunFn   func(ctx context.Context, j deploy.Job, creds deploy.Credentials) (deploy.JobResult, error)
	CleanFn func(ctx context.Context) error
}

var _ deploy.Jobs = (*fakeJobs)(nil)

func (f *fakeJobs) Run(ctx context.Context, j deploy.Job, creds deploy.Credentials) (deploy.JobResult, error) {
	if f.RunFn == nil {
		return deploy.JobResult{}, fmt.Errorf("unexpected Run(%s)", j.Name)
	}
	return f.RunFn(ctx, j, creds)
}

func (f *fakeJobs) Clean(ctx context.Context) error {
	if f.CleanFn == nil {
		return errors.New("unexpected Clean")
	}
	return f.CleanFn(ctx)
}

type fakeMigrations struct {
	MigratedFn     func(ctx context.Context, key, digest string) (bool, error)
	MarkMigratedFn func(ctx context.Context, key, digest string) error
}

var _ deploy.Migrations = (*fakeMigrations)(nil)

func (f *fakeMigrations) Migrated(ctx context.Context, key, digest string) (bool, error) {
	if f.MigratedFn == nil {
		return false, nil
	}
	return f.MigratedFn(ctx, key, digest)
}

func (f *fakeMigrations) MarkMigrated(ctx context.Context, key, digest string) error {
	if f.MarkMigratedFn == nil {
		return fmt.Errorf("unexpected MarkMigrated(%s, %s)", key, digest)
	}
	return f.MarkMigratedFn(ctx, key, digest)
}

// hookWorld is a world that also runs jobs and remembers migrations. It
// records jobs, migration marks and spec writes in one sequence, so a test
// can tell what happened before what.
type hookWorld struct {
	*world
	jobs       *fakeJobs
	migrations *fakeMigrations

	// The fields below are guarded by world.mu.
	calls    []string // "job <name>", "migrated <key> <digest>", "update <service>"
	ran      []deploy.Job
	jobCreds []deploy.Credentials
	done     map[string]bool // key + " " + digest
	cleans   int
	// results maps a phase to how its jobs end; a missing phase exits 0.
	results map[deploy.Phase]jobEnd
}

type jobEnd struct {
	res deploy.JobResult
	err error
}

func newHookWorld(t *testing.T) *hookWorld {
	t.Helper()
	w := &hookWorld{world: newWorld(t), done: map[string]bool{}, results: map[deploy.Phase]jobEnd{}}
	w.jobs = &fakeJobs{
		RunFn: func(_ context.Context, j deploy.Job, creds deploy.Credentials) (deploy.JobResult, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.calls = append(w.calls, "job "+j.Name)
			w.ran = append(w.ran, j)
			w.jobCreds = append(w.jobCreds, creds)
			end := w.results[j.Phase]
			return end.res, end.err
		},
		CleanFn: func(context.Context) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.cleans++
			return nil
		},
	}
	w.migrations = &fakeMigrations{
		MigratedFn: func(_ context.Context, key, digest string) (bool, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			return w.done[key+" "+digest], nil
		},
		MarkMigratedFn: func(_ context.Context, key, digest string) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.calls = append(w.calls, "migrated "+key+" "+digest)
			w.done[key+" "+digest] = true
			return nil
		},
	}
	// A failed digest is seen by the next cycle's plan, as with the
	// real ledger.
	markFailed := w.ledger.MarkFailedFn
	w.ledger.MarkFailedFn = func(ctx context.Context, id, d, reason string) error {
		if err := markFailed(ctx, id, d, reason); err != nil {
			return err
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.failed == nil {
			w.failed = map[string]map[string]bool{}
		}
		if w.failed[id] == nil {
			w.failed[id] = map[string]bool{}
		}
		w.failed[id][d] = true
		return nil
	}
	// A spec write is seen by the next List, as in Swarm: a later cycle
	// must find the service deployed, not deploy it again.
	write := w.services.UpdateFn
	w.services.UpdateFn = func(ctx context.Context, t deploy.Target, image string, creds deploy.Credentials) error {
		if err := write(ctx, t, image, creds); err != nil {
			return err
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		w.calls = append(w.calls, "update "+t.Name)
		for i := range w.targets {
			if w.targets[i].ID == t.ID {
				w.targets[i].Image = image
			}
		}
		return nil
	}
	w.p.Jobs, w.p.Migrations = w.jobs, w.migrations
	return w
}

// hooked is web with a backup and a migration.
func hooked(d string) deploy.Target {
	t := web(d)
	t.Hooks = deploy.Hooks{
		Backup: &deploy.Hook{
			Command: []string{"pg_dump", "-f", "/backup/db.dump"},
			Env:     []string{"PGHOST=db"},
			Mounts:  []deploy.Mount{{Source: "backups", Target: "/backup"}},
		},
		Migrate: &deploy.Hook{
			Command: []string{"./app", "migrate"},
			Env:     []string{"MIGRATE_LOCK=1"},
		},
		Timeout: 2 * time.Minute,
	}
	return t
}

// steps lists the hook steps reported, as "release phase state".
func (w *hookWorld) steps() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, e := range w.events {
		if e.Kind == deploy.Progress && e.Phase != deploy.PhaseRollout {
			out = append(out, fmt.Sprintf("%s %s %s", e.Release.ServiceName, e.Step.Phase, e.Step.State))
		}
	}
	return out
}

func (w *hookWorld) jobNames() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, j := range w.ran {
		out = append(out, j.Name)
	}
	return out
}

func TestHooksRunBackupThenMigrateThenUpdate(t *testing.T) {
	w := newHookWorld(t)
	w.targets = []deploy.Target{hooked(oldD)}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}
	var migratedAsked []string
	w.migrations.MigratedFn = func(_ context.Context, key, digest string) (bool, error) {
		migratedAsked = append(migratedAsked, key+" "+digest)
		return false, nil
	}

	w.cycle(t.Context())

	ev := w.outcome(deploy.Succeeded)
	id := ev.Release.ID
	backup, migrate := "web-backup-"+id[:8], "web-migrate-"+id[:8]
	if want := []string{"job " + backup, "job " + migrate, "migrated service:svc1 " + newD, "update web"}; !slices.Equal(w.calls, want) {
		t.Errorf("calls =\n%q\nwant\n%q", w.calls, want)
	}
	if want := []string{"service:svc1 " + newD}; !slices.Equal(migratedAsked, want) {
		t.Errorf("Migrated asked %q, want %q", migratedAsked, want)
	}
	env := []string{
		"UPDATER_DEPLOY_ID=" + id,
		"UPDATER_SERVICE=web",
		"UPDATER_IMAGE=" + ref,
		"UPDATER_FROM_DIGEST=" + oldD,
		"UPDATER_TO_DIGEST=" + newD,
	}
	want := []deploy.Job{
		{
			Name: backup, Phase: deploy.PhaseBackup, Service: "svc1", InheritEnv: false,
			Image:   pinned(oldD), // the version that wrote the data
			Command: []string{"pg_dump", "-f", "/backup/db.dump"},
			Env:     append(slices.Clone(env), "PGHOST=db"),
			Mounts:  []deploy.Mount{{Source: "backups", Target: "/backup"}},
			Timeout: 2 * time.Minute,
		},
		{
			Name: migrate, Phase: deploy.PhaseMigrate, Service: "svc1", InheritEnv: true,
			Image:   pinned(newD),
			Command: []string{"./app", "migrate"},
			Env:     append(slices.Clone(env), "MIGRATE_LOCK=1"),
			Timeout: 2 * time.Minute,
		},
	}
	if !reflect.DeepEqual(w.ran, want) {
		t.Errorf("jobs =\n%+v\nwant\n%+v", w.ran, want)
	}
	for i, c := range w.jobCreds {
		if c != testCreds {
			t.Errorf("job %d got credentials %+v, want the registry's", i, c)
		}
	}
	if want := []string{"web backup started", "web backup succeeded", "web migrate started", "web migrate succeeded"}; !slices.Equal(w.steps(), want) {
		t.Errorf("steps = %q, want %q", w.steps(), want)
	}
	w.journalPaired()
	if len(w.marked) != 0 {
		t.Errorf("MarkFailed %+v after a successful deploy", w.marked)
	}
}

func TestHooksUseTheirOwnImage(t *testing.T) {
	w := newHookWorld(t)
	tg := hooked(oldD)
	tg.Hooks.Backup.Image = "127.0.0.1:5000/pg:16"
	tg.Hooks.Migrate.Image = "127.0.0.1:5000/migrator:2"
	w.targets = []deploy.Target{tg}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}

	w.cycle(t.Context())

	w.outcome(deploy.Succeeded)
	var images []string
	for _, j := range w.ran {
		images = append(images, j.Image)
	}
	if want := []string{"127.0.0.1:5000/pg:16", "127.0.0.1:5000/migrator:2"}; !slices.Equal(images, want) {
		t.Errorf("job images = %q, want %q", images, want)
	}
}

func TestHooksBackupFails(t *testing.T) {
	w := newHookWorld(t)
	w.targets = []deploy.Target{hooked(oldD)}
	w.digests[ref] = newD
	tail := []string{"pg_dump: connecting", "pg_dump: error: connection refused"}
	w.results[deploy.PhaseBackup] = jobEnd{res: deploy.JobResult{ExitCode: 3, LogTail: tail}}
	w.services.UpdateFn = nil // a spec write fails the test below
	w.services.RolloutFn = nil

	w.cycle(t.Context())

	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhaseBackup || ev.RolledBack {
		t.Errorf("outcome phase %s rolled back %v, want backup, false", ev.Phase, ev.RolledBack)
	}
	for _, s := range []string{"code 3", "connection refused"} {
		if !strings.Contains(ev.Reason, s) {
			t.Errorf("reason %q lacks %q", ev.Reason, s)
		}
	}
	if strings.Contains(ev.Reason, "pg_dump: connecting") {
		t.Errorf("reason %q carries more than the last log line", ev.Reason)
	}
	if ev.Step == nil || ev.Step.Phase != deploy.PhaseBackup || ev.Step.State != "failed" || ev.Step.ExitCode != 3 || !slices.Equal(ev.Step.LogTail, tail) {
		t.Errorf("outcome step = %+v, want backup failed with code 3 and the log tail", ev.Step)
	}
	if names := w.jobNames(); len(names) != 1 || !strings.Contains(names[0], "-backup-") {
		t.Errorf("jobs %q, want only the backup", names)
	}
	if len(w.updates) != 0 {
		t.Errorf("updates %+v after a failed backup", w.updates)
	}
	if len(w.marked) != 1 || w.marked[0].service != "svc1" || w.marked[0].digest != newD {
		t.Errorf("MarkFailed %+v, want one for svc1 %s", w.marked, newD)
	}
	if want := []string{"web backup started", "web backup failed"}; !slices.Equal(w.steps(), want) {
		t.Errorf("steps = %q, want %q", w.steps(), want)
	}
	w.journalPaired()

	// The next cycle does not try the same digest again.
	w.cycle(t.Context())
	if n := len(w.ran); n != 1 {
		t.Errorf("%d jobs after a second cycle, want the failed digest skipped", n)
	}
}

func TestHooksMigrationFails(t *testing.T) {
	w := newHookWorld(t)
	w.targets = []deploy.Target{hooked(oldD)}
	w.digests[ref] = newD
	w.results[deploy.PhaseMigrate] = jobEnd{res: deploy.JobResult{ExitCode: 1, LogTail: []string{"relation users already exists"}}}
	w.services.UpdateFn = nil
	w.services.RolloutFn = nil

	w.cycle(t.Context())

	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhaseMigrate || ev.Reason != "migrate exited with code 1: relation users already exists" {
		t.Errorf("outcome phase %s reason %q", ev.Phase, ev.Reason)
	}
	if ev.Step == nil || ev.Step.ExitCode != 1 {
		t.Errorf("outcome step = %+v, want exit code 1", ev.Step)
	}
	if names := w.jobNames(); len(names) != 2 {
		t.Errorf("jobs %q, want backup and migration", names)
	}
	for _, c := range w.calls {
		if strings.HasPrefix(c, "migrated ") || strings.HasPrefix(c, "update ") {
			t.Errorf("%s after a failed migration", c)
		}
	}
	if len(w.marked) != 1 || w.marked[0].digest != newD {
		t.Errorf("MarkFailed %+v, want one for %s", w.marked, newD)
	}
	w.journalPaired()
}

func TestHooksJobCannotRun(t *testing.T) {
	for _, phase := range []deploy.Phase{deploy.PhaseBackup, deploy.PhaseMigrate} {
		t.Run(string(phase), func(t *testing.T) {
			w := newHookWorld(t)
			w.targets = []deploy.Target{hooked(oldD)}
			w.digests[ref] = newD
			w.results[phase] = jobEnd{err: errors.New("run job web-x: no outcome within 2m0s")}
			w.services.UpdateFn = nil
			w.services.RolloutFn = nil

			w.cycle(t.Context())

			ev := w.outcome(deploy.Failed)
			if ev.Phase != phase || !strings.Contains(ev.Reason, "no outcome within 2m0s") || !strings.HasPrefix(ev.Reason, string(phase)) {
				t.Errorf("outcome phase %s reason %q, want %s failed with the job's error", ev.Phase, ev.Reason, phase)
			}
			if ev.Step == nil || ev.Step.State != "failed" {
				t.Errorf("outcome step = %+v, want failed", ev.Step)
			}
			if len(w.updates) != 0 {
				t.Errorf("updates %+v", w.updates)
			}
			if len(w.marked) != 1 || w.marked[0].digest != newD {
				t.Errorf("MarkFailed %+v, want one for %s", w.marked, newD)
			}
			w.journalPaired()
		})
	}
}

func TestHooksSkippedOnceMigrated(t *testing.T) {
	w := newHookWorld(t)
	w.targets = []deploy.Target{hooked(oldD)}
	w.digests[ref] = newD
	w.done["service:svc1 "+newD] = true
	w.jobs.RunFn = nil // a job fails the deploy, seen below
	w.migrations.MarkMigratedFn = nil
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}

	w.cycle(t.Context())

	w.outcome(deploy.Succeeded)
	if want := []string{"web migrate skipped"}; !slices.Equal(w.steps(), want) {
		t.Errorf("steps = %q, want %q", w.steps(), want)
	}
	if want := []string{"update web"}; !slices.Equal(w.calls, want) {
		t.Errorf("calls = %q, want %q", w.calls, want)
	}
	w.journalPaired()
}

func TestHooksMigrationRecordsUnreadable(t *testing.T) {
	w := newHookWorld(t)
	w.targets = []deploy.Target{hooked(oldD)}
	w.digests[ref] = newD
	w.migrations.MigratedFn = func(context.Context, string, string) (bool, error) {
		return false, errors.New("list configs: permission denied")
	}
	w.jobs.RunFn = nil
	w.services.UpdateFn = nil
	w.services.RolloutFn = nil

	w.cycle(t.Context())

	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhaseMigrate || !strings.Contains(ev.Reason, "permission denied") {
		t.Errorf("outcome phase %s reason %q", ev.Phase, ev.Reason)
	}
	if len(w.ran) != 0 || len(w.updates) != 0 {
		t.Errorf("jobs %q, updates %+v: want none", w.jobNames(), w.updates)
	}
	w.journalPaired()
}

// A deploy the migration's record could not be written for still goes
// on: the migration ran, and the service needs the new version now.
func TestHooksMigrationRecordRefused(t *testing.T) {
	w := newHookWorld(t)
	w.targets = []deploy.Target{hooked(oldD)}
	w.digests[ref] = newD
	w.migrations.MarkMigratedFn = func(context.Context, string, string) error { return errors.New("create config: disk full") }
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}

	w.cycle(t.Context())

	w.outcome(deploy.Succeeded)
	if lines := w.logLines("ERROR", "record migration"); len(lines) != 1 || !strings.Contains(fmt.Sprint(lines[0]["err"]), "disk full") {
		t.Errorf("error lines %v, want one about the migration record", lines)
	}
}

func TestHooksLabelsInvalid(t *testing.T) {
	w := newHookWorld(t)
	tg := hooked(oldD)
	tg.HooksErr = errors.New(`invalid hook labels: label updater.hooks.timeout="5 minutes": use a Go duration`)
	w.targets = []deploy.Target{tg}
	w.digests[ref] = newD
	w.jobs.RunFn = nil
	w.migrations.MigratedFn = func(context.Context, string, string) (bool, error) {
		t.Error("migration records read for a service whose labels are invalid")
		return false, nil
	}
	w.services.UpdateFn = nil
	w.services.RolloutFn = nil

	w.cycle(t.Context())

	ev := w.outcome(deploy.Failed)
	if ev.Phase != deploy.PhasePrepare || ev.Reason != tg.HooksErr.Error() {
		t.Errorf("outcome phase %s reason %q, want prepare, %q", ev.Phase, ev.Reason, tg.HooksErr)
	}
	if len(w.ran) != 0 || len(w.updates) != 0 {
		t.Errorf("jobs %q, updates %+v: want none", w.jobNames(), w.updates)
	}
	w.journalPaired()
}

func TestHooksWithoutJobRunner(t *testing.T) {
	for name, tg := range map[string]deploy.Target{
		"backup and migration": hooked(oldD),
		"backup only": func() deploy.Target {
			tg := hooked(oldD)
			tg.Hooks.Migrate = nil
			return tg
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t) // no Jobs, no Migrations
			w.targets = []deploy.Target{tg}
			w.digests[ref] = newD
			w.services.UpdateFn = nil
			w.services.RolloutFn = nil

			w.cycle(t.Context())

			ev := w.outcome(deploy.Failed)
			if ev.Phase != deploy.PhasePrepare || !strings.Contains(ev.Reason, "has hooks but this updater runs none") {
				t.Errorf("outcome phase %s reason %q", ev.Phase, ev.Reason)
			}
			w.journalPaired()
		})
	}
}

// The updater died after recording the migration and before the spec
// write: the restart writes the spec without migrating again.
func TestResumeAfterMigration(t *testing.T) {
	w := newHookWorld(t)
	rel := journaled(time.Now())
	w.open = []deploy.Release{rel}
	w.done["service:svc1 "+newD] = true
	w.targets = []deploy.Target{hooked(oldD)}
	w.digests[ref] = newD
	w.jobs.RunFn = nil
	w.migrations.MarkMigratedFn = nil
	w.script = []deploy.Rollout{
		rollout("completed", oldD, task(oldD, "running")), // as the dead run left it
		rollout("completed", newD, task(newD, "running")),
	}

	w.cycle(t.Context())
	w.cycle(t.Context()) // nothing left to resume: no Clean

	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Succeeded}) {
		t.Fatalf("events = %v, want one Succeeded and no Started", got)
	}
	if ev := w.milestones()[0]; !ev.Resumed || ev.Release.ID != rel.ID {
		t.Errorf("outcome resumed %v for %s, want resumed for %s", ev.Resumed, ev.Release.ID, rel.ID)
	}
	if want := []string{"update web"}; !slices.Equal(w.calls, want) {
		t.Errorf("calls = %q, want %q", w.calls, want)
	}
	if want := []update{{pinned(newD), testCreds}}; !slices.Equal(w.updates, want) {
		t.Errorf("updates = %+v, want %+v", w.updates, want)
	}
	if w.cleans != 1 {
		t.Errorf("Clean called %d times, want once, before resuming", w.cleans)
	}
	if len(w.begun) != 0 || !slices.Equal(ids(w.ended), []string{rel.ID}) || len(w.open) != 0 {
		t.Errorf("Begin %v, End %v, open %v: want the left-over closed, nothing new", ids(w.begun), ids(w.ended), ids(w.open))
	}
}

// Jobs left behind are removed before anything resumes, so an old
// migration cannot race a new one.
func TestResumeCleansJobsFirst(t *testing.T) {
	w := newHookWorld(t)
	w.open = []deploy.Release{journaled(time.Now())}
	w.targets = []deploy.Target{hooked(oldD)}
	w.jobs.CleanFn = func(context.Context) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.cleans++
		w.calls = append(w.calls, "clean")
		return nil
	}
	w.script = []deploy.Rollout{
		rollout("completed", oldD, task(oldD, "running")),
		rollout("completed", newD, task(newD, "running")),
	}
	w.digests[ref] = newD

	w.cycle(t.Context())

	if len(w.calls) < 2 || w.calls[0] != "clean" || !strings.HasPrefix(w.calls[1], "job web-backup-") {
		t.Errorf("calls = %q, want clean, then the backup", w.calls)
	}
	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Succeeded}) {
		t.Errorf("events = %v, want one Succeeded", got)
	}
}

func TestResumeNothingInFlightCleansNothing(t *testing.T) {
	w := newHookWorld(t)
	w.targets = []deploy.Target{hooked(newD)}
	w.digests[ref] = newD
	w.jobs.CleanFn = nil // a call fails the cycle

	w.cycle(t.Context())
	w.cycle(t.Context())

	if w.cleans != 0 || len(w.events) != 0 {
		t.Errorf("Clean %d times, events %v: want neither", w.cleans, w.kinds())
	}
}

func TestResumeCleanFails(t *testing.T) {
	w := newHookWorld(t)
	w.open = []deploy.Release{journaled(time.Now())}
	w.jobs.CleanFn = func(context.Context) error { return errors.New("remove service web-migrate-1: conflict") }
	w.services.UpdateFn = nil

	for range 2 { // the second failing cycle makes it an outage
		if _, err := w.p.Cycle(t.Context()); err == nil || !strings.Contains(err.Error(), "conflict") {
			t.Fatalf("Cycle = %v, want the Clean error", err)
		}
	}
	if got := w.kinds(); len(w.open) != 1 || !slices.Equal(got, []deploy.Kind{deploy.Outage}) {
		t.Errorf("open %v, events %v: want the deploy left for the next cycle, and Docker reported failing", ids(w.open), got)
	}
}

func TestHooksStoppedDuringJobResumesLater(t *testing.T) {
	w := newHookWorld(t)
	w.targets = []deploy.Target{hooked(oldD)}
	w.digests[ref] = newD
	ctx, cancel := context.WithCancel(t.Context())
	run := w.jobs.RunFn
	w.jobs.RunFn = func(jctx context.Context, j deploy.Job, creds deploy.Credentials) (deploy.JobResult, error) {
		if j.Phase == deploy.PhaseMigrate {
			cancel() // the updater is told to stop while the migration runs
			<-jctx.Done()
			run(jctx, j, creds)
			return deploy.JobResult{}, fmt.Errorf("wait for job %s: %w", j.Name, jctx.Err())
		}
		return run(jctx, j, creds)
	}
	w.services.UpdateFn = nil
	w.services.RolloutFn = nil

	if _, err := w.p.Cycle(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Cycle: %v", err)
	}
	w.p.Wait()

	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Started}) {
		t.Fatalf("events = %v, want only Started: no outcome is known", got)
	}
	if len(w.ended) != 0 || len(w.open) != 1 {
		t.Errorf("End %v, open %v: the deploy must stay in the journal", ids(w.ended), ids(w.open))
	}
	if len(w.marked) != 0 {
		t.Errorf("MarkFailed %+v while stopping", w.marked)
	}
	for _, c := range w.calls {
		if strings.HasPrefix(c, "migrated ") {
			t.Errorf("%s for a migration that was stopped", c)
		}
	}
}

// Two services of one stack that move together: web carries the hooks,
// worker runs the same app.
func group() (worker, web deploy.Target) {
	web = hooked(oldD)
	web.Hooks.Group = "g"
	worker = deploy.Target{ID: "svc2", Name: "worker", Stack: "site", Image: pinned(oldD),
		StartFirst: true, RollbackOnFailure: true, Healthcheck: true,
		Hooks: deploy.Hooks{Group: "g", Timeout: 5 * time.Minute}}
	return worker, web
}

// perService serves each service its own rollout script, the last one
// repeating; after a Rollback of a service its afterRollback script.
type perService struct {
	w             *hookWorld
	script, after map[string][]deploy.Rollout
	served        map[string]int
	rolledBack    map[string]bool
}

func (w *hookWorld) perService(script, after map[string][]deploy.Rollout) {
	ps := &perService{w: w, script: script, after: after, served: map[string]int{}, rolledBack: map[string]bool{}}
	w.services.RolloutFn = func(_ context.Context, id string) (deploy.Rollout, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		s := ps.script[id]
		if ps.rolledBack[id] {
			s = ps.after[id]
		}
		if len(s) == 0 {
			return deploy.Rollout{}, fmt.Errorf("no rollout scripted for %s", id)
		}
		key := fmt.Sprint(id, ps.rolledBack[id])
		r := s[min(ps.served[key], len(s)-1)]
		ps.served[key]++
		return r, nil
	}
	w.services.RollbackFn = func(_ context.Context, id string) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.rollbacks = append(w.rollbacks, id)
		ps.rolledBack[id] = true
		return nil
	}
}

// perRelease groups the milestones by release, in order.
func (w *hookWorld) perRelease() map[string][]deploy.Kind {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string][]deploy.Kind{}
	for _, e := range w.milestones() {
		out[e.Release.ServiceName] = append(out[e.Release.ServiceName], e.Kind)
	}
	return out
}

func TestGroupDeploysTogether(t *testing.T) {
	w := newHookWorld(t)
	worker, web := group()
	w.targets = []deploy.Target{worker, web}
	w.digests[ref] = newD
	w.perService(map[string][]deploy.Rollout{
		"svc1": {rollout("completed", newD, task(newD, "running"))},
		"svc2": {rollout("completed", newD, task(newD, "running"))},
	}, nil)

	w.cycle(t.Context())

	want := map[string][]deploy.Kind{"web": {deploy.Started, deploy.Succeeded}, "worker": {deploy.Started, deploy.Succeeded}}
	if got := w.perRelease(); !reflect.DeepEqual(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if len(w.ran) != 2 || w.ran[0].Phase != deploy.PhaseBackup || w.ran[1].Phase != deploy.PhaseMigrate {
		t.Fatalf("jobs %q, want one backup and one migration", w.jobNames())
	}
	for _, j := range w.ran {
		if !strings.HasPrefix(j.Name, "g-") || j.Service != "svc1" || j.Timeout != 2*time.Minute {
			t.Errorf("job %+v: want it named after the group, attached to web, with web's timeout", j)
		}
	}
	var marks, updated []string
	for _, c := range w.calls {
		if s, ok := strings.CutPrefix(c, "migrated "); ok {
			marks = append(marks, s)
		}
		if s, ok := strings.CutPrefix(c, "update "); ok {
			updated = append(updated, s)
		}
	}
	if want := []string{"group:site/g " + newD}; !slices.Equal(marks, want) {
		t.Errorf("migrations recorded %q, want %q", marks, want)
	}
	if want := []string{"worker", "web"}; !slices.Equal(updated, want) {
		t.Errorf("updated %q, want %q", updated, want)
	}
	// Both releases hear about the group's hooks.
	steps := w.steps()
	for _, name := range []string{"web", "worker"} {
		for _, s := range []string{"backup started", "backup succeeded", "migrate started", "migrate succeeded"} {
			if !slices.Contains(steps, name+" "+s) {
				t.Errorf("steps %q lack %q", steps, name+" "+s)
			}
		}
	}
	if len(w.rollbacks) != 0 || len(w.marked) != 0 {
		t.Errorf("Rollback %v, MarkFailed %+v: want none", w.rollbacks, w.marked)
	}
	if len(w.open) != 0 || len(w.ended) != 2 {
		t.Errorf("End %v, open %v: want both closed", ids(w.ended), ids(w.open))
	}
}

// The migration of a group runs in the new image of the service whose
// labels define it, not in whichever member happens to come first.
// groupOn is the group with worker on workerRef: both tags moved (web's to
// newD, worker's to the digest returned) and both rollouts complete.
func groupOn(w *hookWorld, workerRef string) (otherD string) {
	otherD = "sha256:" + strings.Repeat("c", 64)
	worker, web := group()
	worker.Image = deploy.Pin(workerRef, oldD)
	w.targets = []deploy.Target{worker, web}
	w.digests[ref] = newD
	w.digests[workerRef] = otherD
	w.perService(map[string][]deploy.Rollout{
		"svc1": {rollout("completed", newD, task(newD, "running"))},
		"svc2": {{Image: deploy.Pin(workerRef, otherD), UpdateState: "completed", Desired: 1,
			Tasks: []deploy.Task{{ID: "w1", Image: deploy.Pin(workerRef, otherD), State: "running", Desired: "running"}}}},
	}, nil)
	return otherD
}

func TestGroupMigrationRunsInHookOwnersImage(t *testing.T) {
	w := newHookWorld(t)
	groupOn(w, "127.0.0.1:5000/worker:1")

	w.cycle(t.Context())

	if len(w.ran) != 2 {
		t.Fatalf("jobs %q, want backup and migration", w.jobNames())
	}
	if got := w.ran[1].Image; got != pinned(newD) {
		t.Errorf("migration image %s, want web's new image %s", got, pinned(newD))
	}
	if got := w.ran[0].Image; got != pinned(oldD) {
		t.Errorf("backup image %s, want web's current image %s", got, pinned(oldD))
	}
	var marks []string
	for _, c := range w.calls {
		if s, ok := strings.CutPrefix(c, "migrated "); ok {
			marks = append(marks, s)
		}
	}
	if want := []string{"group:site/g " + newD}; !slices.Equal(marks, want) {
		t.Errorf("migrations recorded %q, want %q: the digest migrated to", marks, want)
	}
	for _, j := range w.ran {
		if !slices.Contains(j.Env, "UPDATER_SERVICE=web") || !slices.Contains(j.Env, "UPDATER_TO_DIGEST="+newD) {
			t.Errorf("job %s env %q: want it to describe web's release", j.Name, j.Env)
		}
	}
}

func TestGroupRollsBackHealthyMemberWhenOtherFails(t *testing.T) {
	w := newHookWorld(t)
	worker, web := group()
	w.targets = []deploy.Target{worker, web}
	w.digests[ref] = newD
	w.perService(map[string][]deploy.Rollout{
		"svc2": {rollout("completed", newD, task(newD, "running"))},
		"svc1": {func() deploy.Rollout {
			r := rollout("rollback_completed", oldD, task(oldD, "running"), gone(newD, "dockerexec: unhealthy container"))
			r.UpdateMessage = "rollback completed"
			return r
		}()},
	}, map[string][]deploy.Rollout{
		"svc2": {
			rollout("rollback_started", oldD, task(newD, "running")),
			rollout("rollback_completed", oldD, task(oldD, "running")),
		},
	})

	w.cycle(t.Context())

	want := map[string][]deploy.Kind{"web": {deploy.Started, deploy.Failed}, "worker": {deploy.Started, deploy.Failed}}
	if got := w.perRelease(); !reflect.DeepEqual(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if !slices.Equal(w.rollbacks, []string{"svc2"}) {
		t.Errorf("Rollback calls %v, want [svc2]: the healthy member, once", w.rollbacks)
	}
	for _, ev := range w.milestones() {
		if ev.Kind != deploy.Failed {
			continue
		}
		if !ev.RolledBack {
			t.Errorf("%s: outcome not rolled back: %+v", ev.Release.ServiceName, ev)
		}
		if ev.Release.ServiceName == "worker" && (ev.Phase != deploy.PhaseRollback || !strings.Contains(ev.Reason, "web failed")) {
			t.Errorf("worker outcome phase %s reason %q, want rolled back with its group because web failed", ev.Phase, ev.Reason)
		}
		if ev.Release.ServiceName == "web" && !strings.Contains(ev.Reason, "unhealthy") {
			t.Errorf("web outcome reason %q lacks the task error", ev.Reason)
		}
	}
	var marked []string
	for _, m := range w.marked {
		if m.digest != newD {
			t.Errorf("MarkFailed %+v, want digest %s", m, newD)
		}
		marked = append(marked, m.service)
	}
	slices.Sort(marked)
	if !slices.Equal(marked, []string{"svc1", "svc2"}) {
		t.Errorf("MarkFailed for %q, want each member once", marked)
	}
	if len(w.ran) != 2 {
		t.Errorf("jobs %q, want one backup and one migration", w.jobNames())
	}
	if len(w.open) != 0 || len(w.ended) != 2 {
		t.Errorf("End %v, open %v: want both closed", ids(w.ended), ids(w.open))
	}
}

func TestGroupHookFailureFailsEveryMember(t *testing.T) {
	w := newHookWorld(t)
	worker, web := group()
	w.targets = []deploy.Target{worker, web}
	w.digests[ref] = newD
	w.results[deploy.PhaseBackup] = jobEnd{res: deploy.JobResult{ExitCode: 2, LogTail: []string{"disk full"}}}
	w.services.UpdateFn = nil
	w.services.RolloutFn = nil

	w.cycle(t.Context())

	want := map[string][]deploy.Kind{"web": {deploy.Started, deploy.Failed}, "worker": {deploy.Started, deploy.Failed}}
	if got := w.perRelease(); !reflect.DeepEqual(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	for _, ev := range w.milestones() {
		if ev.Kind == deploy.Failed && (ev.Phase != deploy.PhaseBackup || !strings.Contains(ev.Reason, "disk full")) {
			t.Errorf("%s outcome phase %s reason %q", ev.Release.ServiceName, ev.Phase, ev.Reason)
		}
	}
	if len(w.marked) != 2 || len(w.ran) != 1 || len(w.updates) != 0 {
		t.Errorf("MarkFailed %+v, jobs %q, updates %+v: want both marked, the backup only, no update", w.marked, w.jobNames(), w.updates)
	}
}

func TestBackupOnSchedule(t *testing.T) {
	w := newHookWorld(t)
	tg := hooked(oldD)
	w.jobs.CleanFn = nil
	w.migrations.MigratedFn = func(context.Context, string, string) (bool, error) {
		t.Error("migration records read for a backup")
		return false, nil
	}

	if err := w.p.Backup(t.Context(), tg); err != nil {
		t.Fatalf("Backup: %v", err)
	}

	if len(w.ran) != 1 {
		t.Fatalf("jobs %q, want one backup", w.jobNames())
	}
	j := w.ran[0]
	if j.Phase != deploy.PhaseBackup || j.Image != pinned(oldD) || j.InheritEnv || j.Service != "svc1" ||
		!strings.HasPrefix(j.Name, "web-backup-") || !slices.Contains(j.Env, "UPDATER_TO_DIGEST=") {
		t.Errorf("job = %+v", j)
	}
	if want := []string{"web backup started", "web backup succeeded"}; !slices.Equal(w.steps(), want) {
		t.Errorf("steps = %q, want %q", w.steps(), want)
	}
	for _, e := range w.events {
		if e.Kind != deploy.Progress || e.Release.To != "" || e.Release.From != oldD || e.Release.ID == "" {
			t.Errorf("event %+v: want progress of a release with no new digest", e)
		}
	}
	if len(w.begun) != 0 || len(w.updates) != 0 || len(w.marked) != 0 {
		t.Errorf("Begin %v, updates %+v, MarkFailed %+v: a backup changes none", ids(w.begun), w.updates, w.marked)
	}
}

func TestBackupOnScheduleFails(t *testing.T) {
	w := newHookWorld(t)
	w.results[deploy.PhaseBackup] = jobEnd{res: deploy.JobResult{ExitCode: 1, LogTail: []string{"no space left on device"}}}

	err := w.p.Backup(t.Context(), hooked(oldD))

	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("Backup = %v, want the job's last line", err)
	}
	if len(w.marked) != 0 {
		t.Errorf("MarkFailed %+v: a backup has no digest to blame", w.marked)
	}
}

func TestBackupOnScheduleRefused(t *testing.T) {
	noBackup := hooked(oldD)
	noBackup.Hooks.Backup = nil
	badLabels := hooked(oldD)
	badLabels.HooksErr = errors.New("invalid hook labels: x")
	for name, tc := range map[string]struct {
		t    deploy.Target
		jobs bool
		want string
	}{
		"no backup hook": {noBackup, true, "no backup hook"},
		"invalid labels": {badLabels, true, "invalid hook labels"},
		"no job runner":  {hooked(oldD), false, "runs no jobs"},
	} {
		t.Run(name, func(t *testing.T) {
			w := newHookWorld(t)
			if !tc.jobs {
				w.p.Jobs = nil
			}
			w.jobs.RunFn = nil
			if err := w.p.Backup(t.Context(), tc.t); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Backup = %v, want an error with %q", err, tc.want)
			}
			if len(w.events) != 0 {
				t.Errorf("events %v", w.kinds())
			}
		})
	}
}

func TestBackupOnScheduleSkipsWhileOneRuns(t *testing.T) {
	w := newHookWorld(t)
	entered, release := make(chan struct{}), make(chan struct{})
	run := w.jobs.RunFn
	w.jobs.RunFn = func(ctx context.Context, j deploy.Job, creds deploy.Credentials) (deploy.JobResult, error) {
		close(entered) // a second call would panic here
		<-release
		return run(ctx, j, creds)
	}
	first := make(chan error, 1)
	go func() { first <- w.p.Backup(t.Context(), hooked(oldD)) }()
	<-entered

	if err := w.p.Backup(t.Context(), hooked(oldD)); err != nil {
		t.Errorf("second Backup = %v, want nil: skipped", err)
	}
	other := hooked(oldD)
	other.ID, other.Name = "svc9", "other"
	w.jobs.RunFn = run
	if err := w.p.Backup(t.Context(), other); err != nil {
		t.Errorf("Backup of another service = %v, want it to run", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Errorf("first Backup: %v", err)
	}

	if names := w.jobNames(); len(names) != 2 || !strings.HasPrefix(names[0], "other-backup-") || !strings.HasPrefix(names[1], "web-backup-") {
		t.Errorf("jobs %q, want other's, then web's once", names)
	}
	if lines := w.logLines("WARN", "scheduled backup skipped"); len(lines) != 1 || lines[0]["service"] != "web" {
		t.Errorf("warnings %v, want one about web", lines)
	}

	// Once the first has ended, the next one runs.
	if err := w.p.Backup(t.Context(), hooked(oldD)); err != nil {
		t.Errorf("Backup after the first ended: %v", err)
	}
	if n := len(w.ran); n != 3 {
		t.Errorf("%d jobs, want 3", n)
	}
}

// A deploy that stopped at its spec write (Docker not answering) after its
// hooks ran carries on from its record: the record says the hooks ran, so
// the next cycle, or a restarted updater, writes the spec without running
// the backup or the migration again.
func TestHooksNotRunAgainAfterStoppingAtTheWrite(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "next cycle", true: "after a restart"}[restart], func(t *testing.T) {
			w := newHookWorld(t)
			// A backup alone: a migration has a record of its own that
			// keeps it from running twice, a backup only the deploy's.
			backupOnly := hooked(oldD)
			backupOnly.Hooks.Migrate = nil
			w.targets = []deploy.Target{backupOnly}
			w.digests[ref] = newD
			write := w.services.UpdateFn
			w.services.UpdateFn = func(context.Context, deploy.Target, string, deploy.Credentials) error {
				return fmt.Errorf("update service: %w: connection refused", deploy.ErrUnavailable)
			}
			w.script = []deploy.Rollout{rollout("completed", oldD, task(oldD, "running"))}

			w.cycle(t.Context())
			if len(w.ran) != 1 || len(w.open) != 1 || w.open[0].Stage != deploy.StagePrepared {
				t.Fatalf("jobs %q, records %+v: want the backup run once and the record saying so", w.jobNames(), w.open)
			}
			if restart {
				// The same swarm and registry, a new process's memory.
				p := w.p
				w.p = &deploy.Pipeline{Lister: p.Lister, Services: p.Services, Registry: p.Registry, Ledger: p.Ledger,
					Journal: p.Journal, Jobs: p.Jobs, Migrations: p.Migrations, Reporter: p.Reporter, Log: p.Log,
					Timeout: p.Timeout, WatchInterval: p.WatchInterval}
			}
			w.services.UpdateFn = func(ctx context.Context, tg deploy.Target, image string, c deploy.Credentials) error {
				w.mu.Lock()
				w.script, w.served = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}, 0
				w.mu.Unlock()
				return write(ctx, tg, image, c)
			}
			w.cycle(t.Context())

			if len(w.ran) != 1 {
				t.Errorf("jobs %q: the backup ran again", w.jobNames())
			}
			if ev := w.outcome(deploy.Succeeded); !ev.Resumed || len(w.updates) != 1 || len(w.open) != 0 {
				t.Errorf("resumed %v, %d writes, records %v: want the deploy carried on, written once, closed", ev.Resumed, len(w.updates), ids(w.open))
			}
		})
	}
}

// Docker not answering during a hook is no verdict on the image: the
// digest is not remembered as failed and nothing is reported; the deploy
// stays in flight, and once Docker answers it is carried on, its hooks
// run again, with one start and one outcome.
func TestHooksDockerGoneDuringAJobWaits(t *testing.T) {
	w := newHookWorld(t)
	w.targets = []deploy.Target{hooked(oldD)}
	w.digests[ref] = newD
	// Swarm's answer follows the spec: old until written.
	w.script = []deploy.Rollout{rollout("completed", oldD, task(oldD, "running"))}
	write := w.services.UpdateFn
	w.services.UpdateFn = func(ctx context.Context, tg deploy.Target, image string, c deploy.Credentials) error {
		w.mu.Lock()
		w.script, w.served = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}, 0
		w.mu.Unlock()
		return write(ctx, tg, image, c)
	}
	run := w.jobs.RunFn
	gone := true
	w.jobs.RunFn = func(ctx context.Context, j deploy.Job, c deploy.Credentials) (deploy.JobResult, error) {
		res, err := run(ctx, j, c)
		if gone && j.Phase == deploy.PhaseMigrate {
			return deploy.JobResult{}, fmt.Errorf("wait for job %s: %w: connection refused", j.Name, deploy.ErrUnavailable)
		}
		return res, err
	}

	w.cycle(t.Context())
	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Started}) || len(w.marked) != 0 || len(w.open) != 1 || len(w.updates) != 0 {
		t.Fatalf("events %v, marked %v, records %v, writes %d: want the deploy in flight, untouched, no digest blamed", got, w.marked, ids(w.open), len(w.updates))
	}
	gone = false
	w.cycle(t.Context())
	if ev := w.outcome(deploy.Succeeded); !ev.Resumed || len(w.updates) != 1 || len(w.open) != 0 {
		t.Errorf("resumed %v, %d writes, records %v: want the deploy carried on once Docker answered", ev.Resumed, len(w.updates), ids(w.open))
	}
	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Started, deploy.Succeeded}) {
		t.Errorf("events %v, want one start and one outcome", got)
	}
}
