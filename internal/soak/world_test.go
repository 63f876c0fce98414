package soak

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/registry"
)

// world is everything a pipeline runs against: the faulty registry with
// its tags, the fake swarm, the clock, and what watches the reports.
type world struct {
	t    *testing.T
	reg  *faultyRegistry
	sw   *fakeSwarm
	tags *tags
	clk  *clock
	rep  *tally
	logs logCount
	// clientTransport carries the updater's registry requests,
	// pushTransport the pushes; both are closed for the goroutine count.
	clientTransport, pushTransport *http.Transport
}

// serviceSpec places one service: on which tag, with hooks or not, in
// which group ("" for none).
type serviceSpec struct {
	tag   int
	hooks bool
	group string
}

func newWorld(t *testing.T, seed uint64, specs []serviceSpec) *world {
	t.Helper()
	w := &world{
		t:               t,
		reg:             newFaultyRegistry(t, seed),
		clk:             &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		clientTransport: remote.DefaultTransport.(*http.Transport).Clone(),
		pushTransport:   remote.DefaultTransport.(*http.Transport).Clone(),
		logs:            newLogCount(),
	}
	t.Cleanup(w.closeIdle)
	w.sw = newFakeSwarm(w.clk)
	w.rep = newTally(w.sw.outcome)
	w.tags = newTags(t, w.reg.host, w.sw, w.pushTransport, seed+2)
	for i, sp := range specs {
		ref := w.tags.refs[sp.tag]
		s := &service{id: fmt.Sprintf("sv%02d", i), name: fmt.Sprintf("svc%02d", i), ref: ref, image: deploy.Pin(ref, w.tags.current[ref])}
		if sp.hooks {
			s.hooks = deploy.Hooks{
				Backup:  &deploy.Hook{Command: []string{"backup"}},
				Migrate: &deploy.Hook{Command: []string{"migrate"}},
				Timeout: time.Minute,
				Group:   sp.group,
			}
		}
		w.sw.add(s)
	}
	return w
}

func (w *world) closeIdle() {
	w.clientTransport.CloseIdleConnections()
	w.pushTransport.CloseIdleConnections()
}

// pipeline is an updater as cmd/updater wires it (with the fakes for
// Swarm), with a registry client of its own: a new one is a restart.
func (w *world) pipeline() *deploy.Pipeline {
	return &deploy.Pipeline{
		Lister:     w.sw,
		Services:   w.sw,
		Ledger:     w.sw,
		Journal:    w.sw,
		Jobs:       w.sw,
		Migrations: w.sw,
		Registry: registry.New(registry.Config{
			Keychain:   authn.NewMultiKeychain(), // anonymous, whatever ~/.docker holds
			Transport:  w.clientTransport,
			Timeout:    200 * time.Millisecond,
			MaxBackoff: 5 * time.Millisecond, // caps Retry-After too
		}),
		Reporter:      w.rep,
		Log:           slog.New(w.logs),
		Timeout:       2 * time.Minute, // on the fake clock: 24 looks at a rollout
		WatchInterval: 0,
		Concurrency:   8, // the default
		// The default: runs go side by side, four at a time.
		DeployConcurrency: deploy.DefaultDeployConcurrency,
		Now:               w.clk.Now,
	}
}

// problems fails t with what the fakes and the reporter found wrong.
func (w *world) problems() {
	w.t.Helper()
	w.sw.mu.Lock()
	for _, pr := range w.sw.problems {
		w.t.Error(pr)
	}
	w.sw.mu.Unlock()
	w.rep.mu.Lock()
	for _, pr := range w.rep.problems {
		w.t.Error(pr)
	}
	w.rep.mu.Unlock()
}

// tags is the registry's side of the story: what each tag points to, and
// new images pushed to them between cycles.
type tags struct {
	t         *testing.T
	host      string
	sw        *fakeSwarm
	transport http.RoundTripper
	rng       *rand.Rand
	refs      []string            // 8 repositories' :latest, then :stable of the first two
	current   map[string]string   // ref -> digest
	images    map[string]v1.Image // ref -> the image it points to
	seen      map[string]bool     // every digest pushed
	pushes    int
}

func newTags(t *testing.T, host string, sw *fakeSwarm, tr http.RoundTripper, seed uint64) *tags {
	g := &tags{t: t, host: host, sw: sw, transport: tr, rng: rand.New(rand.NewPCG(seed, seed^0x7a65)),
		current: map[string]string{}, images: map[string]v1.Image{}, seen: map[string]bool{}}
	for r := range 8 {
		g.refs = append(g.refs, fmt.Sprintf("%s/soak/app%d:latest", host, r))
	}
	for r := range 2 {
		g.refs = append(g.refs, fmt.Sprintf("%s/soak/app%d:stable", host, r))
	}
	for _, ref := range g.refs {
		g.push(ref)
	}
	return g
}

// push points ref at a new image and returns its digest.
func (g *tags) push(ref string) string {
	g.t.Helper()
	// No layers: a new config is a new digest, and costs neither gzip nor
	// layer uploads, which under -race would cost more than the cycles.
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "amd64",
		Config: v1.Config{Labels: map[string]string{"org.opencontainers.image.revision": fmt.Sprintf("%016x", g.rng.Uint64())}}})
	if err != nil {
		g.t.Fatal(err)
	}
	return g.write(ref, img, false)
}

// pushClass pushes new images to ref until one of class c.
func (g *tags) pushClass(ref string, c class) string {
	g.t.Helper()
	for {
		if d := g.push(ref); classOf(d) == c {
			return d
		}
	}
}

// promote points repository r's :stable at what its :latest points to,
// unless :stable pointed there before (tags only move forward here).
func (g *tags) promote(r int) {
	g.t.Helper()
	latest, stable := fmt.Sprintf("%s/soak/app%d:latest", g.host, r), fmt.Sprintf("%s/soak/app%d:stable", g.host, r)
	g.sw.mu.Lock()
	before := g.sw.pushed[stable][g.current[latest]]
	g.sw.mu.Unlock()
	if !before {
		g.write(stable, g.images[latest], true)
	}
}

func (g *tags) write(ref string, img v1.Image, promoted bool) string {
	g.t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		g.t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithTransport(g.transport)); err != nil {
		g.t.Fatalf("push %s: %v", ref, err)
	}
	h, err := img.Digest()
	if err != nil {
		g.t.Fatal(err)
	}
	d := h.String()
	if g.seen[d] && !promoted {
		g.t.Fatalf("push %s: digest %s pushed before", ref, d)
	}
	g.seen[d] = true
	g.current[ref], g.images[ref] = d, img
	g.sw.pushedTo(ref, d)
	g.pushes++
	return d
}

// injected says whether err is one of the faults the test injected.
func injected(err error) bool { return err != nil && strings.Contains(err.Error(), "injected") }
