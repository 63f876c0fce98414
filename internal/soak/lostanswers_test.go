package soak

import (
	"context"
	"fmt"
	"testing"

	"github.com/updater-dev/updater/internal/deploy"
)

// TestLostAnswers replays, one at a time and without randomness, the lost
// answers from Docker the soak found mishandled (the write happened and the
// updater was told it failed, or the other way round); each was a bug, now
// fixed in internal/deploy. Each comment tells what used to happen.
func TestLostAnswers(t *testing.T) {

	// Journal.End fails once (dockerd restarting as the record is
	// removed). It was: finish logs it and moves on, the record stays, and the
	// next cycle's resume follows the finished deploy again and reports a
	// second outcome for it.
	t.Run("record not removed: the outcome was reported twice", func(t *testing.T) {
		w := newWorld(t, 1, []serviceSpec{{tag: 0}})
		p := w.pipeline()
		w.tags.pushClass(w.tags.refs[0], good)
		w.failOnce("End", swarmFault{err: errUnavailable})
		for range 2 {
			if _, err := p.Cycle(t.Context()); err != nil {
				t.Fatal(err)
			}
			p.Wait()
		}
		w.fired("End")
		w.problems()
	})

	// In a group, the spec write of one member is applied but its answer is
	// lost (ErrUnavailable). It was: deployGroup treats every Update error as "not
	// written": it reports the member failed in the update phase and closes
	// its record, so nothing watches its rollout and nothing rolls it back.
	// A bad image then stays deployed: its digest is what the tag points
	// to, so later cycles see the service up to date.
	t.Run("group member written, answer lost: a bad image is never rolled back", func(t *testing.T) {
		w := newWorld(t, 2, []serviceSpec{{tag: 0, hooks: true, group: "pair"}, {tag: 1, hooks: true, group: "pair"}})
		p := w.pipeline()
		w.tags.pushClass(w.tags.refs[0], good)
		bad := w.tags.pushClass(w.tags.refs[1], pauses)
		w.failOnce("Update sv01", swarmFault{err: errUnavailable, applied: true})
		for range 3 {
			if _, err := p.Cycle(t.Context()); err != nil {
				t.Fatal(err)
			}
			p.Wait()
		}
		w.fired("Update(applied)")
		w.problems()
		w.stillOn("sv01", bad)
	})

	// The updater is stopped (SIGTERM) while the spec write is in flight:
	// Docker applied it, the client returns context.Canceled. It was: update only
	// keeps the record for ErrUnavailable with a live context; with a
	// cancelled one it reports "failed (update): context canceled" and
	// closes the record. The restarted updater finds nothing in flight and
	// the service runs the new image unwatched; a bad one stays.
	t.Run("stopped during the spec write: the restart does not resume", func(t *testing.T) {
		w := newWorld(t, 3, []serviceSpec{{tag: 0}})
		bad := w.tags.pushClass(w.tags.refs[0], pauses)
		ctx, stop := context.WithCancel(t.Context())
		w.sw.faulty = true
		w.sw.faultFn = func(method string, s *service) swarmFault {
			if method != "Update" {
				return swarmFault{}
			}
			stop() // SIGTERM arrives while the write is in flight
			return swarmFault{err: fmt.Errorf("injected: update service %s: %w", s.id, context.Canceled), applied: true}
		}
		first := w.pipeline()
		_, _ = first.Cycle(ctx)
		first.Wait()
		w.sw.faulty = false
		restarted := w.pipeline()
		for range 3 {
			if _, err := restarted.Cycle(t.Context()); err != nil {
				t.Fatal(err)
			}
			restarted.Wait()
		}
		w.fired("Update(applied)")
		w.problems()
		w.stillOn("sv00", bad)
	})

	// Journal.Begin writes the record but its answer is lost. It was: begin
	// returns without announcing the deploy, and the next cycle resumes
	// the record and reports an outcome of a deploy that never started.
	t.Run("record written, answer lost: an outcome without a start", func(t *testing.T) {
		w := newWorld(t, 4, []serviceSpec{{tag: 0}})
		p := w.pipeline()
		w.tags.pushClass(w.tags.refs[0], good)
		w.failOnce("Begin", swarmFault{err: errUnavailable, applied: true})
		for range 2 {
			if _, err := p.Cycle(t.Context()); err != nil {
				t.Fatal(err)
			}
			p.Wait()
		}
		w.fired("Begin(applied)")
		w.problems()
	})
}

// failOnce makes the first call of method (or "method serviceID") fail
// with fl, and every other call succeed.
func (w *world) failOnce(call string, fl swarmFault) {
	fired := false
	w.sw.faulty = true
	w.sw.faultFn = func(method string, s *service) swarmFault {
		if fired || (call != method && (s == nil || call != method+" "+s.id)) {
			return swarmFault{}
		}
		fired = true
		return fl
	}
}

// fired fails the test unless the fake Swarm injected exactly one fault,
// and of kind ("method", or "method(applied)" for a lost answer): a
// subtest whose fault never fired proves nothing.
func (w *world) fired(kind string) {
	w.t.Helper()
	w.sw.mu.Lock()
	defer w.sw.mu.Unlock()
	if n := w.sw.injected[kind]; n != 1 || len(w.sw.injected) != 1 {
		w.t.Errorf("faults injected %v, want one %s: the fault under test did not fire as meant", w.sw.injected, kind)
	}
}

// stillOn fails the test when service id runs the digest bad.
func (w *world) stillOn(id, bad string) {
	w.t.Helper()
	w.sw.mu.Lock()
	defer w.sw.mu.Unlock()
	s := w.sw.services[id]
	if _, d := deploy.SplitImage(s.image); d == bad {
		w.t.Errorf("%s runs %s, a digest whose rollout Swarm %s, and nothing rolls it back (rollout state %q)",
			s.name, deploy.Short(bad), classNames[classOf(bad)], s.state)
	}
}
