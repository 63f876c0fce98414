package deploy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// begin records and announces m's deploy (a person's rollback as one).
// ok is false when it could not be recorded; ev then is the reported
// failure.
func (p *Pipeline) begin(ctx context.Context, m *member) (rel Release, ev Event, ok bool) {
	t, want := m.t, m.want
	rel = t.release(newID(), want, p.now())
	if m.rollback != nil {
		rel.Rollback, rel.By, rel.Ref, rel.From = true, m.rollback.By, m.ref, m.from
	}
	// Labels only make reports richer: a registry that won't give them is
	// no reason to hold a deploy back, and none is asked when no report
	// shows them (a manifest and a config GET a metering registry counts).
	if p.ImageLabels {
		if labels, err := p.Registry.Labels(ctx, Pin(rel.Ref, want)); err != nil {
			p.Log.Warn("read image labels", "service", t.Name, "image", rel.Ref, "to_digest", want, "err", err)
		} else {
			rel.Labels = labels
		}
	}
	// The journal entry comes first: from here on, a crash is found and
	// carried on or reported on restart rather than forgotten. The run
	// owns it before it exists, so no cycle takes it for one left behind.
	p.begun(ctx, rel.ID)
	if err := p.Journal.Begin(ctx, rel); err != nil {
		ev := Event{Kind: Failed, Release: rel, Phase: PhasePrepare, Reason: "record the deploy in Swarm: " + err.Error()}
		if errors.Is(err, ErrUnavailable) || ctx.Err() != nil {
			// Nothing started and nothing was announced: Docker being down
			// (or the updater stopping) is no deploy outcome, and a later
			// cycle tries again. The record may have been written with only
			// its answer lost: it goes, so nothing resumes a deploy never
			// announced.
			p.end(rel)
			ev.waiting = true
			return rel, ev, false
		}
		return rel, p.finish(rel, ev, false), false
	}
	p.report(Event{Kind: Started, Release: rel})
	return rel, Event{}, true
}

// unanswered logs a spec write that got no answer from Docker: the deploy
// stays in flight and resumes from what the spec says.
func (p *Pipeline) unanswered(rel Release, err error) {
	p.Log.Warn("docker unreachable at the spec write; the deploy resumes when it answers",
		"deploy_id", rel.ID, "service", rel.ServiceName, "to_digest", rel.To, "err", err)
}

// fail ends a deploy that failed before the service was touched. A hook
// that failed fails again next cycle, so the digest is remembered: the
// failure is reported once, not every cycle, until the tag moves or a
// person runs `updater deploy`. A stopping updater reports nothing.
func (p *Pipeline) fail(ctx context.Context, rel Release, ev Event) Event {
	if ctx.Err() != nil {
		return stopping(rel, ev.Phase, ev.Resumed)
	}
	if err := p.Ledger.MarkFailed(ctx, rel.ServiceID, rel.To, ev.Reason); err != nil {
		p.Log.Error("remember failed digest", "service", rel.ServiceName, "to_digest", rel.To, "err", err)
	}
	return p.finish(rel, ev, true)
}

// hookImages are the images t's backup and migration run in for rel ("" for
// a hook t does not have): the backup in the version that wrote the data,
// the migration in the new one, unless a label names another image.
func hookImages(t Target, rel Release) (backup, migrate string) {
	if h := t.Hooks.Backup; h != nil {
		backup = cmp.Or(h.Image, t.Image)
	}
	if h := t.Hooks.Migrate; h != nil {
		migrate = cmp.Or(h.Image, Pin(rel.Ref, rel.To))
	}
	return backup, migrate
}

// jobCredentials are the pull credentials of each of t's hook images, each
// looked up for that image's own registry: a hook image may live anywhere
// a stack file names, and must not be sent the credentials of the
// service's registry (whoever wrote the label would collect them).
func (p *Pipeline) jobCredentials(ctx context.Context, t Target, rel Release) (map[string]Credentials, error) {
	creds := map[string]Credentials{}
	backup, migrate := hookImages(t, rel)
	for _, image := range []string{backup, migrate} {
		if _, done := creds[image]; image == "" || done {
			continue
		}
		c, err := p.Registry.Credentials(ctx, image)
		if err != nil {
			return nil, fmt.Errorf("get registry credentials for %s: %w", image, err)
		}
		creds[image] = c
	}
	return creds, nil
}

// prepare runs the hooks of t for the releases deployed together with it:
// the backup, then the migration in the new image, once per digest. ok is
// false when one failed or could not run; ev then is the failure. creds
// holds the pull credentials of each hook image (jobCredentials).
func (p *Pipeline) prepare(ctx context.Context, t Target, rels []Release, creds map[string]Credentials, resumed bool) (ev Event, ok bool) {
	if t.HooksErr != nil {
		return Event{Kind: Failed, Phase: PhasePrepare, Reason: t.HooksErr.Error(), Resumed: resumed}, false
	}
	h, rel := t.Hooks, own(t, rels)
	if (h.Backup != nil || h.Migrate != nil) && (p.Jobs == nil || p.Migrations == nil) {
		return Event{Kind: Failed, Phase: PhasePrepare, Reason: "the service has hooks but this updater runs none", Resumed: resumed}, false
	}
	key := migrationKey(t)
	if h.Migrate != nil {
		done, err := p.Migrations.Migrated(ctx, key, rel.To)
		if err != nil {
			// Docker not answering is no verdict on the image: waiting.
			return Event{Kind: Failed, Phase: PhaseMigrate, Reason: "read migration records: " + err.Error(), Resumed: resumed,
				waiting: errors.Is(err, ErrUnavailable)}, false
		}
		if done {
			// The backup went before this migration already; the data has
			// moved on since, so a second backup would not be the one that
			// matters, and the migration must not run twice.
			p.step(rels, Step{Phase: PhaseMigrate, State: StepSkipped}, resumed)
			return Event{}, true
		}
	}
	backup, migrate := hookImages(t, rel)
	if h.Backup != nil {
		if ev, ok := p.hook(ctx, t, rels, PhaseBackup, *h.Backup, backup, false, creds[backup], resumed); !ok {
			return ev, false
		}
	}
	if h.Migrate != nil {
		if ev, ok := p.hook(ctx, t, rels, PhaseMigrate, *h.Migrate, migrate, true, creds[migrate], resumed); !ok {
			return ev, false
		}
		// Recorded even when the updater is stopping or lost the lease
		// as the job ended: it ran, and must not run again on resume.
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := p.Migrations.MarkMigrated(mctx, key, rel.To); err != nil {
			// The migration ran; carrying on is right. Only a restart before
			// the update would run it again, and migrations must bear that.
			p.Log.Error("record migration", "service", t.Name, "to_digest", rel.To, "err", err)
		}
	}
	return Event{}, true
}

// hook runs one hook job and reports its start and end.
func (p *Pipeline) hook(ctx context.Context, t Target, rels []Release, phase Phase, h Hook, image string, inheritEnv bool, creds Credentials, resumed bool) (Event, bool) {
	rel := own(t, rels)
	owner := t.Name
	if t.Hooks.Group != "" {
		owner = t.Hooks.Group
	}
	if !p.confirm(ctx) {
		return stopping(Release{}, phase, resumed), false
	}
	p.step(rels, Step{Phase: phase, State: StepStarted}, resumed)
	res, err := p.Jobs.Run(ctx, Job{
		Name:       jobName(owner, phase, rel.ID),
		Phase:      phase,
		Service:    t.ID,
		InheritEnv: inheritEnv,
		Image:      image,
		Command:    h.Command,
		Env:        append(hookEnv(rel), h.Env...),
		Mounts:     h.Mounts,
		Timeout:    t.Hooks.Timeout,
	}, creds)
	s := Step{Phase: phase, State: StepSucceeded, ExitCode: res.ExitCode, LogTail: res.LogTail}
	switch {
	case err != nil && ctx.Err() != nil:
		// The updater is stopping: the job was removed and the deploy
		// resumes on restart, so this is no failure to report.
		return stopping(Release{}, phase, resumed), false
	case errors.Is(err, ErrUnavailable):
		// Docker did not answer about the job: not the image's fault, and
		// no outcome. The deploy stays in flight and resumes, its hooks
		// run again, when Docker answers (a migration that finished meanwhile
		// has no record yet, so it runs again: migrations must bear that, as
		// after a crash).
		p.Log.Warn("docker unreachable during the "+string(phase)+" hook; the deploy resumes when it answers",
			"deploy_id", rel.ID, "service", t.Name, "err", err)
		return Event{Kind: Failed, Phase: phase, Reason: fmt.Sprintf("%s: %v", phase, err), Resumed: resumed, waiting: true}, false
	case err != nil:
		s.State = StepFailed
		p.step(rels, s, resumed)
		return Event{Kind: Failed, Phase: phase, Reason: fmt.Sprintf("%s: %v", phase, err), Step: &s, Resumed: resumed}, false
	case res.ExitCode != 0:
		s.State = StepFailed
		p.step(rels, s, resumed)
		reason := fmt.Sprintf("%s exited with code %d", phase, res.ExitCode)
		if n := len(res.LogTail); n > 0 {
			reason += ": " + res.LogTail[n-1]
		}
		return Event{Kind: Failed, Phase: phase, Reason: reason, Step: &s, Resumed: resumed}, false
	}
	p.step(rels, s, resumed)
	return Event{}, true
}

// own is the release of t among the releases deployed with it. The hooks
// come from t's labels, so they run in t's images and are about t's
// release, wherever t sorts in its group; the first release stands in
// should t have none (a group goes ahead only when every member's began).
func own(t Target, rels []Release) Release {
	for _, r := range rels {
		if r.ServiceID == t.ID {
			return r
		}
	}
	return rels[0]
}

// step reports a hook's progress on every release it serves.
func (p *Pipeline) step(rels []Release, s Step, resumed bool) {
	for _, rel := range rels {
		p.report(Event{Kind: Progress, Release: rel, Phase: s.Phase, Step: &s, Resumed: resumed})
	}
}

// migrationKey names what a migration belongs to: the group when the
// service is in one (one migration for all of it), else the service.
func migrationKey(t Target) string {
	if t.Hooks.Group != "" {
		return "group:" + t.Stack + "/" + t.Hooks.Group
	}
	return "service:" + t.ID
}

// unwind rolls back a promoted release of a group that failed elsewhere.
// Its digest is remembered as failed too: deploying it alone next cycle
// would leave the group half old, half new.
// revert, when set, is how it goes back (see settle).
func (p *Pipeline) unwind(ctx context.Context, rel Release, reason string, revert func(context.Context) error) Event {
	ev := Event{Kind: Failed, Phase: PhaseRollback, Reason: reason}
	if !p.confirm(ctx) {
		return ev // not rolled back, and not for this updater to remember
	}
	defer func() {
		if err := p.Ledger.MarkFailed(ctx, rel.ServiceID, rel.To, reason); err != nil {
			p.Log.Error("remember failed digest", "service", rel.ServiceName, "to_digest", rel.To, "err", err)
		}
	}()
	back := func(ctx context.Context) error { return p.Services.Rollback(ctx, rel.ServiceID) }
	if revert != nil {
		back = revert
	}
	if err := back(ctx); err != nil {
		ev.Reason += "; roll back: " + err.Error()
	} else if _, _, err := p.watch(ctx, rel.ServiceID, p.now().Add(p.Timeout), func(r Rollout) (bool, verdict, string) {
		return restored(r, rel.To), rolledBack, ""
	}); err != nil {
		ev.Reason += "; roll back: " + err.Error()
	} else {
		ev.RolledBack = true
	}
	return ev
}

// hookOwner is the member of a group whose labels define the group's
// hooks: the first, by name, that has any.
func hookOwner(plans []Plan) Target {
	lead := plans[0].Target
	for _, pl := range plans {
		h := pl.Target.Hooks
		if (h.Backup != nil || h.Migrate != nil) && (lead.Hooks.Backup == nil && lead.Hooks.Migrate == nil || strings.Compare(pl.Target.Name, lead.Name) < 0) {
			lead = pl.Target
		}
	}
	return lead
}

// Backup runs the service's backup hook on its own, as its schedule
// says: the same job a deploy runs first, reported as progress of a
// release with no new digest. It runs only while this updater holds the
// lease (ErrStandby otherwise: the holder's schedule covers it), and never
// beside a deploy of the service or its group, nor beside its own previous
// run.
//
// A backup due while one of those runs is skipped, not delayed: a WARN
// line names the service and why, and a "backup skipped" step is reported
// (the status page's history and Slack show it). Waiting could last as
// long as the deploy (its rollout and rollback, hooks up to 24 h each),
// holding a cron job that shutdown waits for; a deploy of the service runs
// its own backup before it touches anything, when it has one; and the
// next scheduled run is the next backup.
func (p *Pipeline) Backup(ctx context.Context, t Target) error {
	if t.HooksErr != nil {
		return t.HooksErr
	}
	if t.Hooks.Backup == nil {
		return fmt.Errorf("service %s has no backup hook", t.Name)
	}
	if p.Jobs == nil {
		return fmt.Errorf("service %s has a backup hook but this updater runs no jobs", t.Name)
	}
	ctx, unfence := p.fenced(ctx)
	defer unfence()
	if !p.confirm(ctx) {
		return ErrStandby
	}
	rel := t.release(newID(), "", p.now())
	if t.BackupWindow != nil {
		if ok, _, why := t.BackupWindow.Eligible(p.now()); !ok {
			p.Log.Info("scheduled backup skipped: outside updater.backup.window: "+why, "service", t.Name)
			s := Step{Phase: PhaseBackup, State: StepSkipped}
			p.report(Event{Kind: Progress, Release: rel, Phase: PhaseBackup, Step: &s, Reason: "outside updater.backup.window: " + why})
			return nil
		}
	}
	done, why := p.startBackup(t)
	if done == nil {
		p.Log.Warn("scheduled backup skipped: "+why, "service", t.Name)
		s := Step{Phase: PhaseBackup, State: StepSkipped}
		p.report(Event{Kind: Progress, Release: rel, Phase: PhaseBackup, Step: &s, Reason: why})
		return nil
	}
	defer done()
	image, _ := hookImages(t, rel)
	creds, err := p.Registry.Credentials(ctx, image)
	if err != nil {
		return fmt.Errorf("get registry credentials for %s: %w", image, err)
	}
	if ev, ok := p.hook(ctx, t, []Release{rel}, PhaseBackup, *t.Hooks.Backup, image, false, creds, false); !ok {
		if lost(ctx) {
			return ErrStandby
		}
		return errors.New(ev.Reason)
	}
	return nil
}

// Scheduled backups and deploys of the same service never run side by
// side: a dump must not read data a migration is changing, nor race the
// deploy's own backup. A run claims its services and group for as long
// as it runs (runs.go); a scheduled backup that finds them claimed is skipped
// (Backup), and a deploy that finds a scheduled backup already running
// waits for it before any hook or spec write (awaitBackups).

// backupRun is a scheduled backup in progress.
type backupRun struct {
	name    string        // the service's, for the log
	group   string        // groupKey of the service
	timeout time.Duration // what bounds its job: updater.hooks.timeout
	done    chan struct{} // closed when it has ended
}

// startBackup records a scheduled backup of t as running and returns the
// func that ends it, or nil and why it must not run now.
func (p *Pipeline) startBackup(t Target) (done func(), why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch f := p.claimedBy(deployKeys(t)); {
	case f != nil && slices.Contains(f.keys, "service:"+t.ID):
		return nil, "a deploy of the service is running"
	case f != nil:
		return nil, "a deploy of its group " + t.Hooks.Group + " is running"
	case p.backingUp[t.ID] != nil:
		return nil, "the previous one is still running"
	}
	if p.backingUp == nil {
		p.backingUp = map[string]*backupRun{}
	}
	run := &backupRun{name: t.Name, group: groupKey(t), timeout: t.Hooks.Timeout, done: make(chan struct{})}
	p.backingUp[t.ID] = run
	return func() {
		p.mu.Lock()
		delete(p.backingUp, t.ID)
		p.mu.Unlock()
		close(run.done)
	}, ""
}

// deployKeys name what a deploy of t claims: the service, and its group.
func deployKeys(t Target) []string {
	keys := []string{"service:" + t.ID}
	if k := groupKey(t); k != keys[0] {
		keys = append(keys, k)
	}
	return keys
}

// awaitBackups waits, before a deploy runs any hook or writes a spec, for
// the scheduled backups running now of the services in rels or of t's
// group. The deploy's claim keeps new ones from starting, so each wait is
// bounded by that backup's hook timeout, which bounds its job too. It
// waits rather than fails: the backup ends soon enough, and a deploy that
// failed for it would be remembered as a bad digest. Past the bound it
// fails, having run nothing.
func (p *Pipeline) awaitBackups(ctx context.Context, t Target, rels []Release) error {
	p.mu.Lock()
	var runs []*backupRun
	for id, run := range p.backingUp {
		if run.group == groupKey(t) || slices.ContainsFunc(rels, func(r Release) bool { return r.ServiceID == id }) {
			runs = append(runs, run)
		}
	}
	p.mu.Unlock()
	for _, run := range runs {
		p.Log.Info("deploy waits for the scheduled backup of a service it deploys", "service", run.name, "deploy_id", rels[0].ID)
		timer := time.NewTimer(run.timeout)
		select {
		case <-run.done:
			timer.Stop()
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
			return fmt.Errorf("the scheduled backup of %s still runs after %s (its hook timeout); nothing of the deploy ran", run.name, run.timeout)
		}
	}
	return nil
}
