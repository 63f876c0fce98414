//go:build e2e

package e2e

// Oracles: what happened, read from Docker instead of from the updater's
// log, so that "not started again" or "ran once" can fail also when the
// updater believes, and logs, the wrong thing.

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	updaterswarm "github.com/updater-dev/updater/internal/swarm"
)

// dockerEvents is Docker's service events from a test's start to its end.
type dockerEvents struct {
	mu   sync.Mutex
	msgs []events.Message
	err  error // the stream broke: what it holds is not the whole story
}

// recordEvents subscribes to Docker's service events until the test ends.
// A live subscription, not a Since/Until query after the fact: the daemon
// keeps only its last 256 events of every kind for such queries, and the
// health checks of a test's tasks log several a second, so the writes a
// test looks for would already be gone.
func recordEvents(t testing.TB) *dockerEvents {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	now := time.Now()
	res := env.docker.Events(ctx, client.EventsListOptions{
		Since:   fmt.Sprintf("%d.%09d", now.Unix(), now.Nanosecond()),
		Filters: make(client.Filters).Add("type", string(events.ServiceEventType)),
	})
	r := &dockerEvents{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case m := <-res.Messages:
				r.mu.Lock()
				r.msgs = append(r.msgs, m)
				r.mu.Unlock()
			case err := <-res.Err:
				if ctx.Err() == nil {
					r.mu.Lock()
					r.err = err
					r.mu.Unlock()
				}
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func (r *dockerEvents) snapshot(t testing.TB) []events.Message {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		t.Fatalf("docker events stream broke: %v", r.err)
	}
	return slices.Clone(r.msgs)
}

func eventTime(m events.Message) time.Time { return time.Unix(0, m.TimeNano) }

// imageWrite is one spec write that changed a service's image.
type imageWrite struct {
	At       time.Time
	Old, New string // digests
}

// imageWrites are the spec writes that changed the image of the service
// with ID id, in order: the updater's deploys, its rollbacks and Swarm's
// own. Docker 20.10 puts image.old/image.new on a service's update event
// only when the image changed.
func (r *dockerEvents) imageWrites(t testing.TB, id string) []imageWrite {
	t.Helper()
	var out []imageWrite
	for _, m := range r.snapshot(t) {
		a := m.Actor.Attributes
		if m.Actor.ID != id || m.Action != events.ActionUpdate || a["image.new"] == "" || a["image.new"] == a["image.old"] {
			continue
		}
		out = append(out, imageWrite{At: eventTime(m), Old: digestOf(a["image.old"]), New: digestOf(a["image.new"])})
	}
	return out
}

func digestOf(ref string) string { _, d, _ := strings.Cut(ref, "@"); return d }

// wantImageWrites waits for the service's image writes to reach the digests
// given (its deploys and rollbacks in order), then checks there are exactly
// those: a deploy started again writes its digest a second time.
func (r *dockerEvents) wantImageWrites(t testing.TB, id string, digests ...string) []imageWrite {
	t.Helper()
	var w []imageWrite
	// Docker reports the write a little after it is made.
	waitFor(t, 15*time.Second, fmt.Sprintf("%d image writes of %s in Docker's events", len(digests), id), func() bool {
		w = r.imageWrites(t, id)
		return len(w) >= len(digests)
	})
	got := make([]string, len(w))
	for i, x := range w {
		got[i] = x.New
	}
	if !slices.Equal(got, digests) {
		t.Fatalf("image writes of %s in Docker's events: %v, want %v", id, got, digests)
	}
	return w
}

// reached reports whether Swarm's update of the service with ID id has
// been in state (rollback_started, say) since the recording began. Polling
// the service's UpdateStatus can miss a state that lasts a second on a
// busy machine; the event of its change is kept.
func (r *dockerEvents) reached(t testing.TB, id, state string) bool {
	t.Helper()
	for _, m := range r.snapshot(t) {
		if m.Actor.ID == id && m.Action == events.ActionUpdate && strings.EqualFold(m.Actor.Attributes["updatestate.new"], state) {
			return true
		}
	}
	return false
}

// jobRun is one hook job service the updater created, from Docker's events.
type jobRun struct {
	ID, Name         string
	Created, Removed time.Time // Removed is zero while it exists
}

// jobs are the hook jobs of phase (backup, migrate, ...) created for the
// service named svcName, in order of creation. The updater names them
// <service>-<phase>-<release> (internal/deploy's jobName) and removes each
// once its task has finished, so Removed is also when it was done.
func (r *dockerEvents) jobs(t testing.TB, svcName, phase string) []jobRun {
	t.Helper()
	if len(svcName) > 40 {
		svcName = svcName[:40]
	}
	prefix := svcName + "-" + phase + "-"
	var out []jobRun
	for _, m := range r.snapshot(t) {
		switch m.Action {
		case events.ActionCreate:
			if strings.HasPrefix(m.Actor.Attributes["name"], prefix) {
				out = append(out, jobRun{ID: m.Actor.ID, Name: m.Actor.Attributes["name"], Created: eventTime(m)})
			}
		case events.ActionRemove:
			for i := range out {
				if out[i].ID == m.Actor.ID {
					out[i].Removed = eventTime(m)
				}
			}
		}
	}
	return out
}

// leaseHolder is who the stack's lease names in Swarm: the config
// internal/swarm/lease.go compares-and-sets, read here with no updater in
// between.
func leaseHolder(t testing.TB, stack string) string {
	t.Helper()
	name := "updater-lease-" + updaterswarm.Scope("updater.enable", stack)
	res, err := env.docker.ConfigInspect(context.Background(), name, client.ConfigInspectOptions{})
	if err != nil {
		t.Fatalf("read the lease %s: %v", name, err)
	}
	return res.Config.Spec.Labels["io.updater.holder"]
}

// holderOf is the name u takes the lease by: internal/app's holder(),
// hostname/pid.
func holderOf(t testing.TB, u *updater) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s/%d", h, u.cmd.Process.Pid)
}

// dockerDial dials the daemon env.docker talks to (DOCKER_HOST's, or the
// default socket), for the tests' proxies in front of it.
func dockerDial(ctx context.Context, _, _ string) (net.Conn, error) {
	return env.docker.Dialer()(ctx)
}
