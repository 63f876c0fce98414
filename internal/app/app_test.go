package app

import (
	"context"
	"io"
	"slices"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
)

// quiet is an App with the default configuration and nothing built.
func quiet(t *testing.T) *App {
	t.Helper()
	cfg, err := config.Load(func(string) (string, bool) { return "", false }, nil)
	if err != nil {
		t.Fatal(err)
	}
	return New(cfg, Options{Stderr: io.Discard})
}

// TestCloseReverse: Close runs the parts' stops last pushed first, each
// once, however often it is called.
func TestCloseReverse(t *testing.T) {
	a := quiet(t)
	var got []string
	for _, part := range []string{"docker client", "lease", "deploys"} {
		a.push(part, func() { got = append(got, part) })
	}
	a.Close()
	a.Close()
	if want := []string{"deploys", "lease", "docker client"}; !slices.Equal(got, want) {
		t.Errorf("stopped %q, want %q", got, want)
	}
}

// lease is a deploy.Lease nobody else holds.
type lease struct {
	mu       sync.Mutex
	holder   string
	version  int
	released int
}

func (l *lease) ReadLease(context.Context) (deploy.LeaseState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holder == "" {
		return deploy.LeaseState{}, nil
	}
	return deploy.LeaseState{Holder: l.holder, Version: strconv.Itoa(l.version)}, nil
}

func (l *lease) WriteLease(_ context.Context, holder string, _ time.Duration, _ string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.holder, l.version = holder, l.version+1
	return true, nil
}

func (l *lease) Release(context.Context, string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.holder, l.released = "", l.released+1
	return nil
}

func (l *lease) releases() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.released
}

// TestLeaseOutlivesSignal: the context a SIGTERM ends does not give the
// lease up: deploys still stopping then keep it until Close reaches the
// keeper, after them.
func TestLeaseOutlivesSignal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := quiet(t)
		a.Pipeline = &deploy.Pipeline{}
		l := &lease{}
		ctx, signal := context.WithCancel(context.Background())
		a.keepLease(ctx, l, "me/1")
		if !a.Pipeline.Acting() {
			t.Fatal("the lease nobody held was not taken")
		}
		signal()
		synctest.Wait() // the keeper has seen the signal, if it looks at it
		if n := l.releases(); n != 0 || !a.Pipeline.Acting() {
			t.Fatalf("after the signal: %d releases, acting %v; want the lease still held", n, a.Pipeline.Acting())
		}
		a.Close()
		if n := l.releases(); n != 1 || a.Pipeline.Acting() {
			t.Errorf("after Close: %d releases, acting %v; want the lease given up once", n, a.Pipeline.Acting())
		}
	})
}
