package swarm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
)

// A hung engine (a frozen dockerd, a socket proxy that never answers)
// fails each call at its bound as Docker being unreachable, whichever
// part of the adapter makes it, and the call is named as stuck until
// Docker answers one again.
func TestHungCallFailsAsUnavailable(t *testing.T) {
	const bound = 300 * time.Millisecond
	for _, tt := range []struct {
		name, call, named string
		op                func(context.Context, *Swarm) error
	}{
		{"ping", "GET /info", "Info", func(ctx context.Context, s *Swarm) error { return s.Ping(ctx) }},
		{"list", "GET /services", "ServiceList", func(ctx context.Context, s *Swarm) error {
			_, err := s.List(ctx)
			return err
		}},
		{"spec write", "POST /services/s1/update", "ServiceUpdate", func(ctx context.Context, s *Swarm) error {
			return s.Update(ctx, deploy.Target{ID: "s1"}, appRepo+":v1@"+digest2, deploy.Credentials{})
		}},
		{"rollout tasks", "GET /tasks", "TaskList", func(ctx context.Context, s *Swarm) error {
			_, err := s.Rollout(ctx, "s1")
			return err
		}},
		{"lease", "GET /configs/updater-lease-" + Scope("updater.enable", ""), "ConfigInspect", func(ctx context.Context, s *Swarm) error {
			_, err := s.ReadLease(ctx)
			return err
		}},
		{"deploy record", "POST /configs/create", "ConfigCreate", func(ctx context.Context, s *Swarm) error {
			return s.Begin(ctx, deploy.Release{ID: "d1", ServiceID: "s1"})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEngine(t)
			e.addService("s1", appSpec("shop_web", appRepo+":v1@"+digest1))
			s := e.client(t, Config{Timeout: bound})
			e.hang(tt.call, 1)

			// The backstop only keeps a broken bound from hanging the test.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			err := tt.op(ctx, s)
			took := time.Since(start)
			if !errors.Is(err, deploy.ErrUnavailable) || !strings.Contains(err.Error(), tt.named) {
				t.Fatalf("hung %s: %v, want ErrUnavailable naming %s", tt.call, err, tt.named)
			}
			// Not before the bound (the hang held), and well within a
			// second after it on a loaded machine.
			if took < bound || took > bound+time.Second {
				t.Errorf("hung %s failed after %s, want at its bound %s", tt.call, took, bound)
			}
			if e.count(tt.call) != 1 {
				t.Errorf("%s asked %d times, want once", tt.call, e.count(tt.call))
			}
			stuck := s.Stuck()
			if len(stuck) != 1 || !strings.Contains(stuck[0], tt.named) || !strings.Contains(stuck[0], bound.String()) {
				t.Fatalf("Stuck() = %q, want the hung %s and its bound", stuck, tt.named)
			}
			if _, err := s.List(context.Background()); err != nil {
				t.Fatalf("list after the hang: %v", err)
			}
			if stuck := s.Stuck(); len(stuck) != 0 {
				t.Errorf("Stuck() after docker answered = %q, want none", stuck)
			}
		})
	}
}

// Only an answer clears a stuck call: an engine whose connection is cut,
// or a caller that gives up first, says nothing about it. And a caller's
// own shorter deadline running out is no sign of a hung engine.
func TestStuckUntilDockerAnswers(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{Timeout: 300 * time.Millisecond})
	e.hang("GET /services", 1)
	if _, err := s.List(context.Background()); !errors.Is(err, deploy.ErrUnavailable) {
		t.Fatalf("hung list: %v", err)
	}
	e.cut("GET /services", 1)
	if _, err := s.List(context.Background()); err == nil {
		t.Fatal("cut list: no error")
	}
	release := e.hang("GET /info", 0)
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err := s.Ping(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, deploy.ErrUnavailable) {
		t.Fatalf("ping past the caller's deadline: %v, want the caller's own deadline", err)
	}
	if stuck := s.Stuck(); len(stuck) != 1 || !strings.Contains(stuck[0], "ServiceList") {
		t.Fatalf("Stuck() = %q, want the hung ServiceList only", stuck)
	}
	e.fail("GET /services", 500, "rpc error: code = Unknown desc = raft unavailable", 1)
	if _, err := s.List(context.Background()); err == nil || errors.Is(err, deploy.ErrUnavailable) {
		t.Fatalf("list answered with a 500: %v", err)
	}
	if stuck := s.Stuck(); len(stuck) != 0 {
		t.Errorf("Stuck() after an answer (a 500 is one) = %q, want none", stuck)
	}
}

// A log stream is bounded while it is read, not only until it starts: a
// job's log tail from an engine that stops mid-stream ends at the bound.
func TestStreamBoundedWhileRead(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{Timeout: 300 * time.Millisecond})
	e.addService("job1", swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "job1"}})
	e.with(func() { e.logs["job1"] = "migrating\n" })
	stall := make(chan struct{})
	defer close(stall)
	e.after("GET /services/job1/logs", 1, func() {
		// The engine has written the frame; it flushes and then stalls,
		// lock released, as a dockerd frozen mid-stream.
		e.mu.Unlock()
		defer e.mu.Lock()
		<-stall
	})
	start := time.Now()
	lines := s.logTail("job1")
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("log tail of a stalled stream took %s, want about its 300ms bound", took)
	}
	// What came before the stall is kept: the stream had started.
	if len(lines) != 1 || lines[0] != "migrating" {
		t.Errorf("log tail = %q, want the line sent before the stall", lines)
	}
	if stuck := s.Stuck(); len(stuck) != 0 {
		t.Errorf("Stuck() = %q: the engine answered the call, the stream only stalled", stuck)
	}
}
