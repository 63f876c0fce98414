package deploy_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/registry"
)

// BenchmarkCycleUnchanged is the steady state: a cycle over many services
// whose tags have not moved. It runs the real registry client against an
// in-process registry, so it measures what a poll costs the registry too:
// one manifest HEAD per distinct tag and no GET.
func BenchmarkCycleUnchanged(b *testing.B) {
	const (
		services = 1000
		tags     = 200
		repos    = 4
	)
	var heads, gets atomic.Int64
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") {
			switch r.Method {
			case http.MethodHead:
				heads.Add(1)
			case http.MethodGet:
				gets.Add(1)
			}
		}
		inner.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	refs, digests := make([]string, tags), make([]string, tags)
	for i := range tags {
		refs[i] = fmt.Sprintf("%s/bench/app%d:t%d", host, i%repos, i)
		img, err := random.Image(256, 1)
		if err != nil {
			b.Fatal(err)
		}
		r, err := name.ParseReference(refs[i], name.Insecure)
		if err != nil {
			b.Fatal(err)
		}
		if err := remote.Write(r, img); err != nil {
			b.Fatalf("push %s: %v", refs[i], err)
		}
		d, err := img.Digest()
		if err != nil {
			b.Fatal(err)
		}
		digests[i] = d.String()
	}

	targets := make([]deploy.Target, services)
	for i := range targets {
		targets[i] = deploy.Target{
			ID:    fmt.Sprintf("id%04d", i),
			Name:  fmt.Sprintf("svc%04d", i),
			Image: deploy.Pin(refs[i%tags], digests[i%tags]),
			// A fully configured service, so the first cycle warns about nothing.
			StartFirst: true, RollbackOnFailure: true, Healthcheck: true,
		}
	}
	p := &deploy.Pipeline{
		Lister:   &fakeLister{ListFn: func(context.Context) ([]deploy.Target, error) { return targets, nil }},
		Services: &fakeServices{}, // nothing deploys: any call is an error
		Registry: registry.New(registry.Config{
			Keychain: authn.NewMultiKeychain(), // anonymous, whatever ~/.docker holds
			Timeout:  10 * time.Second,
		}),
		Ledger:        &fakeLedger{},
		Journal:       &fakeJournal{},
		Reporter:      &fakeReporter{ReportFn: func(e deploy.Event) { b.Errorf("unexpected event %+v", e) }},
		Log:           slog.New(slog.DiscardHandler),
		Timeout:       time.Minute,
		WatchInterval: time.Second,
		Concurrency:   8,
	}
	ctx := b.Context()
	cycle := func() {
		plans, err := p.Cycle(ctx)
		if err != nil {
			b.Fatalf("Cycle: %v", err)
		}
		if len(plans) != services {
			b.Fatalf("%d plans, want %d", len(plans), services)
		}
		for _, pl := range plans {
			if pl.Action != deploy.ActNone {
				b.Fatalf("plan for %s = %s (%s), want up to date", pl.Target.Name, pl.Action, pl.Reason)
			}
		}
	}

	// The first cycle pings each repository's registry and keeps the
	// session; from then on only manifest HEADs should reach it.
	cycle()
	heads.Store(0)
	gets.Store(0)

	b.ReportAllocs()
	n := 0
	for b.Loop() {
		h0, g0 := heads.Load(), gets.Load()
		cycle()
		if h, g := heads.Load()-h0, gets.Load()-g0; h != tags || g != 0 {
			b.Fatalf("a warm cycle made %d manifest HEADs and %d GETs, want %d and 0", h, g, tags)
		}
		n++
	}
	b.ReportMetric(float64(heads.Load())/float64(n), "HEAD/op")
	b.ReportMetric(float64(gets.Load())/float64(n), "GET/op")
}

// BenchmarkCycleMoving is a release day: a cycle over 1,000 services on
// 200 tags in which 10 tags move, so 50 services deploy, against fakes
// whose every rollout takes 2 s (wall clock). One op is the cycle and the
// runs it starts, to their end: about ceil(50 / DeployConcurrency) × 2 s,
// while the registry is asked once per distinct tag, as when idle.
func BenchmarkCycleMoving(b *testing.B) {
	const (
		services = 1000
		tags     = 200
		moving   = 10 // tags; 5 services each
		rollout  = 2 * time.Second
	)
	for _, conc := range []int{4, 16, 64} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			var (
				mu      sync.Mutex
				targets = make([]deploy.Target, services)
				digest  = map[string]string{} // what each tag points to
				written = map[string]time.Time{}
				lookups atomic.Int64
				writes  atomic.Int64
			)
			digestOf := func(tag, gen int) string { return fmt.Sprintf("sha256:%060d%04d", tag, gen) }
			refOf := func(tag int) string { return fmt.Sprintf("127.0.0.1:5000/bench/app%d:t%d", tag%4, tag) }
			for i := range targets {
				targets[i] = deploy.Target{ID: fmt.Sprintf("id%04d", i), Name: fmt.Sprintf("svc%04d", i),
					Image: deploy.Pin(refOf(i%tags), digestOf(i%tags, 0)), StartFirst: true, RollbackOnFailure: true, Healthcheck: true}
			}
			for t := range tags {
				digest[refOf(t)] = digestOf(t, 0)
			}
			index := func(id string) int { var i int; fmt.Sscanf(id, "id%d", &i); return i }
			p := &deploy.Pipeline{
				Lister: &fakeLister{ListFn: func(context.Context) ([]deploy.Target, error) {
					mu.Lock()
					defer mu.Unlock()
					return slices.Clone(targets), nil
				}},
				Services: &fakeServices{
					UpdateFn: func(_ context.Context, t deploy.Target, image string, _ deploy.Credentials) error {
						writes.Add(1)
						mu.Lock()
						defer mu.Unlock()
						targets[index(t.ID)].Image, written[t.ID] = image, time.Now()
						return nil
					},
					RolloutFn: func(_ context.Context, id string) (deploy.Rollout, error) {
						mu.Lock()
						defer mu.Unlock()
						image := targets[index(id)].Image
						state, task := "updating", "starting"
						if time.Since(written[id]) >= rollout {
							state, task = "completed", "running"
						}
						return deploy.Rollout{Image: image, UpdateState: state, Desired: 1,
							Tasks: []deploy.Task{{ID: id + "-t", Image: image, State: task, Desired: "running"}}}, nil
					},
				},
				Registry: &fakeRegistry{DigestFn: func(_ context.Context, ref string) (string, error) {
					lookups.Add(1)
					mu.Lock()
					defer mu.Unlock()
					return digest[ref], nil
				}},
				Ledger:            &fakeLedger{},
				Journal:           &fakeJournal{},
				Reporter:          &fakeReporter{},
				Log:               slog.New(slog.DiscardHandler),
				Timeout:           time.Minute,
				WatchInterval:     100 * time.Millisecond,
				Concurrency:       8,
				DeployConcurrency: conc,
			}
			ctx := b.Context()
			gen := 0
			for b.Loop() {
				gen++
				mu.Lock()
				for t := range moving {
					digest[refOf(t)] = digestOf(t, gen)
				}
				mu.Unlock()
				l0, w0 := lookups.Load(), writes.Load()
				if _, err := p.Cycle(ctx); err != nil {
					b.Fatalf("Cycle: %v", err)
				}
				p.Wait()
				if l, w := lookups.Load()-l0, writes.Load()-w0; l != tags || w != moving*services/tags {
					b.Fatalf("a cycle made %d lookups and %d spec writes, want %d and %d", l, w, tags, moving*services/tags)
				}
			}
			b.ReportMetric(float64(lookups.Load())/float64(b.N), "lookups/op")
		})
	}
}
