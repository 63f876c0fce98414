package deploy_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
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
