package soak

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// class is how a digest behaves once deployed. It follows from the digest
// alone, so a digest is good or bad wherever and whenever it is deployed,
// as an image is.
type class int

const (
	good           class = iota
	autoRollback         // Swarm rolls it back by itself (failure_action rollback)
	pauses               // Swarm pauses the update; the updater rolls back
	hangs                // never healthy: the updater's deadline ends it
	rejected             // nodes reject its tasks, Swarm retries for ever
	stuckRollback        // pauses, and the rollback pauses too: a person must look
	migrationFails       // the migration hook exits 1 (good for services without hooks)
	classes
)

var classNames = [classes]string{"good", "auto-rollback", "pauses", "hangs", "rejected", "stuck-rollback", "migration-fails"}

func classOf(digest string) class {
	b, err := strconv.ParseUint(digest[len("sha256:"):len("sha256:")+2], 16, 8)
	if err != nil {
		panic("digest " + digest)
	}
	switch {
	case b < 176:
		return good
	case b < 196:
		return autoRollback
	case b < 214:
		return pauses
	case b < 226:
		return hangs
	case b < 238:
		return rejected
	case b < 244:
		return stuckRollback
	default:
		return migrationFails
	}
}

// swarmFault is one injected failure of a Swarm call. applied means the
// call did its work and then failed: the answer was lost (Docker went away
// after the write, or the updater was stopped while it waited).
type swarmFault struct {
	err     error
	applied bool
}

// errUnavailable is how the swarm adapter fails when Docker does not
// answer: after it, a write may or may not have happened.
var errUnavailable = fmt.Errorf("injected: %w: read unix @->/var/run/docker.sock: connection reset by peer", deploy.ErrUnavailable)

// randomFaults is the soak's Swarm: it fails now and then, in the ways the
// pipeline must survive, lost answers included (see TestLostAnswers).
func randomFaults(rng *rand.Rand) func(method string, s *service) swarmFault {
	return func(method string, s *service) swarmFault {
		x := rng.Float64()
		switch method {
		case "List":
			if x < 0.01 {
				return swarmFault{err: errors.New("injected: cannot connect to the Docker daemon")}
			}
		case "Update":
			switch {
			case x < 0.01:
				return swarmFault{err: errors.New("injected: update out of sequence, gave up")}
			case x < 0.02:
				return swarmFault{err: errUnavailable}
			case x < 0.03:
				return swarmFault{err: errUnavailable, applied: true}
			}
		case "Rollout":
			if x < 0.02 {
				return swarmFault{err: errors.New("injected: Docker daemon restarting")}
			}
		case "Rollback":
			if x < 0.03 {
				return swarmFault{err: errors.New("injected: rollback refused")}
			}
		case "Run":
			if x < 0.01 {
				return swarmFault{err: errors.New("injected: job service could not be created")}
			}
		case "Begin":
			switch {
			case x < 0.01:
				return swarmFault{err: errUnavailable}
			case x < 0.02:
				return swarmFault{err: errUnavailable, applied: true}
			}
		case "End":
			if x < 0.01 {
				return swarmFault{err: errUnavailable}
			}
		case "Reached": // the hooks ran, the note of it is lost (or lands unanswered)
			switch {
			case x < 0.01:
				return swarmFault{err: errUnavailable}
			case x < 0.02:
				return swarmFault{err: errUnavailable, applied: true}
			}
		}
		return swarmFault{}
	}
}

// clock is the pipeline's clock: it moves when the swarm is looked at, so
// rollout deadlines pass without real waiting.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// service is one fake Swarm service with one replica.
type service struct {
	id, name, ref string
	hooks         deploy.Hooks

	image    string // the spec's image, pinned
	from, to string // the images of the last spec write
	state    string // UpdateStatus.State
	mode     string // what the next looks at the rollout show
	polls    int    // looks since the last spec write or rollback
}

type pair struct{ service, digest string }

// fakeSwarm is the whole Swarm side of the pipeline, in memory: every
// port the production swarm adapter fills. It checks the invariants of a
// deploy as the pipeline calls it, and records them in problems.
type fakeSwarm struct {
	clock *clock

	mu       sync.Mutex
	faulty   bool                                       // faults on
	faultFn  func(method string, s *service) swarmFault // called under mu; nil s for List
	services map[string]*service
	order    []string

	pushed     map[string]map[string]bool // ref -> every digest it ever pointed to
	updates    map[pair]int               // successful spec writes
	markedEver map[pair]bool              // MarkFailed, never forgotten
	ledger     map[string]map[string]bool // what Ledger.Failed answers
	journal    map[string]deploy.Release  // in flight, by deploy ID
	unanswered map[string]bool            // deploy IDs whose Begin got an error, written or not
	begun      map[string]bool            // every deploy ID ever begun
	migrated   map[string]map[string]bool // Migrations, by key
	migrations map[pair]int               // migrate jobs run, by service and digest

	calls    map[string]int // by port method
	injected map[string]int // Swarm faults injected, by method
	byClass  [classes]int   // spec writes by the digest's class
	problems []string
}

var (
	_ deploy.Lister     = (*fakeSwarm)(nil)
	_ deploy.Services   = (*fakeSwarm)(nil)
	_ deploy.Ledger     = (*fakeSwarm)(nil)
	_ deploy.Journal    = (*fakeSwarm)(nil)
	_ deploy.Jobs       = (*fakeSwarm)(nil)
	_ deploy.Migrations = (*fakeSwarm)(nil)
)

func newFakeSwarm(c *clock) *fakeSwarm {
	return &fakeSwarm{
		clock:      c,
		services:   map[string]*service{},
		pushed:     map[string]map[string]bool{},
		updates:    map[pair]int{},
		markedEver: map[pair]bool{},
		ledger:     map[string]map[string]bool{},
		journal:    map[string]deploy.Release{},
		unanswered: map[string]bool{},
		begun:      map[string]bool{},
		migrated:   map[string]map[string]bool{},
		migrations: map[pair]int{},
		calls:      map[string]int{},
		injected:   map[string]int{},
	}
}

func (f *fakeSwarm) add(s *service) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.from, s.to, s.state, s.mode = s.image, s.image, "completed", "settled"
	f.services[s.id] = s
	f.order = append(f.order, s.id)
}

// pushedTo records that ref now points to digest.
func (f *fakeSwarm) pushedTo(ref, digest string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pushed[ref] == nil {
		f.pushed[ref] = map[string]bool{}
	}
	f.pushed[ref][digest] = true
}

func (f *fakeSwarm) setFaulty(on bool) { f.mu.Lock(); f.faulty = on; f.mu.Unlock() }

func (f *fakeSwarm) problem(format string, args ...any) {
	if len(f.problems) < 50 {
		f.problems = append(f.problems, fmt.Sprintf(format, args...))
	}
}

// fault decides how this call fails; the caller holds f.mu.
func (f *fakeSwarm) fault(method string, s *service) swarmFault {
	f.calls[method]++
	if !f.faulty || f.faultFn == nil {
		return swarmFault{}
	}
	fl := f.faultFn(method, s)
	if fl.err != nil {
		key := method
		if fl.applied {
			key += "(applied)"
		}
		f.injected[key]++
	}
	return fl
}

func (f *fakeSwarm) List(context.Context) ([]deploy.Target, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl := f.fault("List", nil); fl.err != nil {
		return nil, fl.err
	}
	out := make([]deploy.Target, 0, len(f.order))
	for _, id := range f.order {
		s := f.services[id]
		out = append(out, deploy.Target{ID: s.id, Name: s.name, Stack: "soak", Image: s.image,
			StartFirst: true, RollbackOnFailure: true, Healthcheck: true, Hooks: s.hooks})
	}
	return out, nil
}

func (f *fakeSwarm) Update(_ context.Context, t deploy.Target, image string, _ deploy.Credentials) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.services[t.ID]
	if s == nil {
		f.problem("Update of unknown service %s", t.ID)
		return deploy.ErrNotFound
	}
	fl := f.fault("Update", s)
	if fl.err != nil && !fl.applied {
		return fl.err
	}
	ref, digest := deploy.SplitImage(image)
	k := pair{t.ID, digest}
	switch {
	case ref != s.ref:
		f.problem("Update %s to %s: the service tracks %s", s.name, image, s.ref)
	case !f.pushed[ref][digest]:
		f.problem("Update %s to %s: never pushed to that tag", s.name, image)
	case f.markedEver[k]:
		f.problem("Update %s to %s: that digest failed before", s.name, digest)
	}
	if f.updates[k]++; f.updates[k] > 1 {
		f.problem("Update %s to %s: spec write number %d of that digest", s.name, digest, f.updates[k])
	}
	if !slices.ContainsFunc(mapValues(f.journal), func(r deploy.Release) bool { return r.ServiceID == t.ID && r.To == digest }) {
		f.problem("Update %s to %s with no deploy of it in the journal", s.name, digest)
	}
	f.byClass[classOf(digest)]++
	s.from, s.to, s.image = s.image, image, image
	s.state, s.polls = "updating", 0
	switch classOf(digest) {
	case autoRollback:
		s.mode = "auto-rollback"
	case pauses, stuckRollback:
		s.mode = "pause"
	case hangs:
		s.mode = "hang"
	case rejected:
		s.mode = "reject"
	default:
		s.mode = "good"
	}
	return fl.err
}

func (f *fakeSwarm) Rollout(_ context.Context, id string) (deploy.Rollout, error) {
	f.clock.Advance(5 * time.Second)
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.services[id]
	if s == nil {
		return deploy.Rollout{}, deploy.ErrNotFound
	}
	if fl := f.fault("Rollout", s); fl.err != nil {
		return deploy.Rollout{}, fl.err
	}
	s.polls++
	now := f.clock.Now()
	task := func(n int, image, state, desired, err string) deploy.Task {
		return deploy.Task{ID: fmt.Sprintf("%s-t%d", s.id, n), Node: "node1", Image: image,
			State: state, Desired: desired, Err: err, Since: now}
	}
	msg := ""
	var tasks []deploy.Task
	updating := []deploy.Task{task(1, s.to, "starting", "running", ""), task(0, s.from, "running", "running", "")}
	switch {
	case s.mode == "settled":
		tasks = []deploy.Task{task(0, s.image, "running", "running", "")}
	case s.polls == 1 && s.mode != "rolling-back" && s.mode != "rollback-stuck":
		tasks = updating
	case s.mode == "good":
		s.state, s.mode = "completed", "settled"
		tasks = []deploy.Task{task(1, s.to, "running", "running", ""), task(0, s.from, "shutdown", "shutdown", "")}
	case s.mode == "hang":
		tasks = updating
	case s.mode == "pause":
		s.state = "paused"
		msg = "update paused due to failure or early termination of task " + s.id + "-t1"
		tasks = []deploy.Task{task(1, s.to, "failed", "shutdown", "task: non-zero exit (1): dockerexec: unhealthy container"),
			task(0, s.from, "running", "running", "")}
	case s.mode == "reject":
		// failure_action continue: Swarm calls the update done and retries
		// the rejected task without end.
		s.state = "completed"
		tasks = []deploy.Task{task(1, s.to, "rejected", "shutdown", "No such image: "+s.to),
			task(2, s.to, "rejected", "shutdown", "No such image: "+s.to),
			task(3, s.to, "rejected", "shutdown", "No such image: "+s.to),
			task(4, s.to, "pending", "running", "")}
	case s.mode == "auto-rollback" && s.polls == 2, s.mode == "rolling-back" && s.polls == 1:
		s.state, s.image = "rollback_started", s.from
		tasks = []deploy.Task{task(5, s.from, "starting", "running", ""), task(1, s.to, "failed", "shutdown", "unhealthy")}
	case s.mode == "auto-rollback", s.mode == "rolling-back":
		s.state, s.image, s.mode = "rollback_completed", s.from, "settled"
		tasks = []deploy.Task{task(5, s.from, "running", "running", ""), task(1, s.to, "failed", "shutdown", "unhealthy")}
	case s.mode == "rollback-stuck":
		s.state = "rollback_paused"
		msg = "rollback paused due to failure or early termination of task " + s.id + "-t5"
		tasks = []deploy.Task{task(5, s.from, "failed", "shutdown", "no suitable node"), task(1, s.to, "running", "running", "")}
	default:
		f.problem("rollout of %s in mode %s", s.name, s.mode)
	}
	return deploy.Rollout{Image: s.image, UpdateState: s.state, UpdateMessage: msg, Desired: 1, Tasks: tasks}, nil
}

func (f *fakeSwarm) Rollback(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.services[id]
	if s == nil {
		return deploy.ErrNotFound
	}
	if fl := f.fault("Rollback", s); fl.err != nil {
		return fl.err
	}
	_, d := deploy.SplitImage(s.to)
	s.image, s.state, s.polls, s.mode = s.from, "rollback_started", 0, "rolling-back"
	if classOf(d) == stuckRollback {
		s.mode = "rollback-stuck"
	}
	return nil
}

// outcome checks that a reported outcome matches the service: a success
// runs the new digest; a failure rolled back, or never touched the
// service, does not. Only a failed rollback may leave either.
func (f *fakeSwarm) outcome(e deploy.Event) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.services[e.Release.ServiceID]
	if s == nil {
		return "the service does not exist"
	}
	_, d := deploy.SplitImage(s.image)
	on := d == e.Release.To
	switch {
	case e.Kind == deploy.Succeeded && !on:
		return "the service runs " + deploy.Short(d)
	case e.Kind == deploy.Failed && e.Phase == deploy.PhaseRollout && !e.RolledBack:
		return "it was not rolled back: " + e.Reason
	case e.Kind == deploy.Failed && (e.RolledBack || e.Phase != deploy.PhaseRollback) && on:
		return "the service still runs it: " + e.Reason
	}
	return ""
}

func (f *fakeSwarm) Failed(context.Context) (map[string]map[string]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["Failed"]++
	out := make(map[string]map[string]bool, len(f.ledger))
	for id, ds := range f.ledger {
		out[id] = make(map[string]bool, len(ds))
		for d := range ds {
			out[id][d] = true
		}
	}
	return out, nil
}

func (f *fakeSwarm) MarkFailed(_ context.Context, id, digest, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["MarkFailed"]++
	if f.ledger[id] == nil {
		f.ledger[id] = map[string]bool{}
	}
	f.ledger[id][digest] = true
	f.markedEver[pair{id, digest}] = true
	return nil
}

func (f *fakeSwarm) Forget(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["Forget"]++
	delete(f.ledger, id)
	return nil
}

func (f *fakeSwarm) Begin(_ context.Context, r deploy.Release) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl := f.fault("Begin", f.services[r.ServiceID])
	if fl.err != nil {
		f.unanswered[r.ID] = true // its End may come, written or not
	}
	if fl.err != nil && !fl.applied {
		return fl.err
	}
	if f.begun[r.ID] {
		f.problem("deploy ID %s begun twice", r.ID)
	}
	f.begun[r.ID] = true
	f.journal[r.ID] = r
	return fl.err
}

func (f *fakeSwarm) Reached(_ context.Context, r deploy.Release, stage deploy.Stage) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl := f.fault("Reached", f.services[r.ServiceID])
	if fl.err != nil && !fl.applied {
		return fl.err
	}
	if rec, ok := f.journal[r.ID]; ok {
		rec.Stage = stage
		f.journal[r.ID] = rec
	}
	return fl.err
}

func (f *fakeSwarm) End(_ context.Context, r deploy.Release) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl := f.fault("End", f.services[r.ServiceID])
	if fl.err != nil && !fl.applied {
		return fl.err
	}
	if _, ok := f.journal[r.ID]; !ok && !f.unanswered[r.ID] {
		f.problem("deploy %s (%s to %s) ended but not in flight", r.ID, r.ServiceName, deploy.Short(r.To))
	}
	delete(f.journal, r.ID)
	return fl.err
}

func (f *fakeSwarm) InFlight(context.Context) ([]deploy.Release, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["InFlight"]++
	return mapValues(f.journal), nil
}

func (f *fakeSwarm) Run(_ context.Context, j deploy.Job, _ deploy.Credentials) (deploy.JobResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl := f.fault("Run", f.services[j.Service]); fl.err != nil {
		return deploy.JobResult{}, fl.err
	}
	if j.Phase != deploy.PhaseMigrate {
		// No hook runs again once its deploy's record says they ran.
		for _, kv := range j.Env {
			if id, ok := strings.CutPrefix(kv, "UPDATER_DEPLOY_ID="); ok && f.journal[id].Stage == deploy.StagePrepared {
				f.problem("the backup of deploy %s ran again after its record said its hooks had run", id)
			}
		}
		return deploy.JobResult{LogTail: []string{"backup done"}}, nil
	}
	_, d := deploy.SplitImage(j.Image)
	k := pair{j.Service, d}
	if f.migrations[k]++; f.migrations[k] > 1 {
		f.problem("migration of %s to %s ran %d times", j.Service, deploy.Short(d), f.migrations[k])
	}
	if classOf(d) == migrationFails {
		return deploy.JobResult{ExitCode: 1, LogTail: []string{"ERROR: relation already exists"}}, nil
	}
	return deploy.JobResult{LogTail: []string{"migrated"}}, nil
}

func (f *fakeSwarm) Clean(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["Clean"]++
	return nil
}

func (f *fakeSwarm) Migrated(_ context.Context, key, digest string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.migrated[key][digest], nil
}

func (f *fakeSwarm) MarkMigrated(_ context.Context, key, digest string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.migrated[key] == nil {
		f.migrated[key] = map[string]bool{}
	}
	f.migrated[key][digest] = true
	return nil
}

func mapValues[K comparable, V any](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
