package deploy_test

import (
	"context"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// A panic in a run stops that run where it is (logged at ERROR, which
// reaches Rollbar), not the updater: its claim goes, so the service is
// planned again, and the pipeline goes on.
func TestPanicInARunStopsOnlyThatRun(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = newD
	panicked := false
	w.services.UpdateFn = func(context.Context, deploy.Target, string, deploy.Credentials) error {
		if !panicked {
			panicked = true
			panic("injected")
		}
		return nil
	}
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}

	w.cycle(t.Context())
	if lines := w.logLines("ERROR", "panic: the deploy of service:svc1 stopped where it was"); len(lines) != 1 || lines[0]["panic"] != "injected" {
		t.Fatalf("ERROR lines %v, want the panic named", lines)
	}
	if r := w.p.Status().Running; len(r) != 0 {
		t.Fatalf("runs %+v after the panic, want none: its claim must go", r)
	}
	// Its record stays: the next cycle carries the deploy on.
	w.cycle(t.Context())
	if ev := w.outcome(deploy.Succeeded); !ev.Resumed {
		t.Errorf("outcome %+v, want the deploy carried on from its record", ev)
	}
}

// A panic in a requested check is logged, and the trigger goes on taking
// requests.
func TestPanicInARequestedCheckKeepsTheTrigger(t *testing.T) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = oldD
	calls := make(chan int, 4)
	n := 0
	w.lister.ListFn = func(context.Context) ([]deploy.Target, error) {
		n++
		calls <- n
		if n == 1 {
			panic("injected")
		}
		return w.targets, nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	tr := deploy.NewTrigger(ctx, w.p)
	defer func() { cancel(); tr.Stop() }()
	for want := 1; want <= 2; want++ {
		tr.Check()
		select {
		case got := <-calls:
			if got != want {
				t.Fatalf("list call %d, want %d", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("check %d never listed the services: the trigger died with the panic", want)
		}
	}
	cancel()
	tr.Stop() // the log is read once nothing writes it
	if lines := w.logLines("ERROR", "panic: a requested check stopped where it was"); len(lines) != 1 {
		t.Errorf("ERROR lines %v, want one naming the check", lines)
	}
}
