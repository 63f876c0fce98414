package soak

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

var (
	soakSeed   = flag.Uint64("soak.seed", 0, "seed of the soak's faults and pushes; 0 picks one (logged)")
	soakCycles = flag.Int("soak.cycles", 2000, "cycles the soak runs (200 with -short)")
)

const (
	warmup   = 30  // cycles before the baseline: pools, sessions, lazy inits
	settle   = 50  // at most this many fault-free cycles after the run reach the stable state
	services = 20  // over 8 repositories, 10 tags
	heapRoom = 8   // MiB the heap may grow over the run: 2,000 cycles leaking 4 KiB each would not fit
	slack    = 2   // goroutines above the baseline still taken as "returned"
	pushOdds = 0.3 // a cycle is preceded by a push to one tag
)

// TestSoak runs the real pipeline with the real registry client for
// thousands of cycles against a registry that fails at random, while tags
// move and deploys succeed or fail as their digests dictate, and Swarm
// now and then fails too (a lost answer to a spec write makes the next
// cycle resume the deploy). It checks that no deploy happens twice, that
// a digest that failed never deploys again, that every deploy reports
// one start and one outcome that matches the service, that a fault delays
// a deploy but never loses one, and that goroutines and heap return to
// where they were.
func TestSoak(t *testing.T) {
	cycles := *soakCycles
	if testing.Short() && cycles > 200 {
		cycles = 200
	}
	seed := *soakSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (rerun with -args -soak.seed=%d), %d cycles", seed, seed, cycles)
	ctx := t.Context()

	specs := make([]serviceSpec, services)
	for i := range specs {
		specs[i] = serviceSpec{tag: i % 10, hooks: i%5 == 0}
	}
	// Deployed together, unwound together.
	specs[2] = serviceSpec{tag: 2, hooks: true, group: "pair"}
	specs[3] = serviceSpec{tag: 3, hooks: true, group: "pair"}
	w := newWorld(t, seed, specs)
	reg, sw, tags, clk, rep, logs, closeIdle := w.reg, w.sw, w.tags, w.clk, w.rep, w.logs, w.closeIdle
	sw.faultFn = randomFaults(rand.New(rand.NewPCG(seed+1, seed^0x5a4a)))
	p := w.pipeline()

	actions := map[deploy.Action]int{}
	cycleErrs := 0
	var inCycle, slowest time.Duration
	gPeak := 0
	cycle := func(faulty bool) []deploy.Plan {
		t.Helper()
		clk.Advance(10 * time.Second)
		reg.armed.Store(faulty)
		sw.setFaulty(faulty)
		cs := time.Now()
		plans, err := p.Cycle(ctx)
		gPeak = max(gPeak, runtime.NumGoroutine())
		// The runs the cycle started go side by side, under the faults of
		// this cycle, until each has ended: what the next cycle finds is
		// what they left.
		p.Wait()
		d := time.Since(cs)
		inCycle, slowest = inCycle+d, max(slowest, d)
		reg.armed.Store(false)
		sw.setFaulty(false)
		if err != nil {
			if !injected(err) {
				t.Fatalf("cycle: %v", err)
			}
			cycleErrs++
		}
		for _, pl := range plans {
			actions[pl.Action]++
		}
		return plans
	}
	move := func() {
		t.Helper()
		switch x := tags.rng.Float64(); {
		case x < 0.03: // a release of several images at once
			for range 3 {
				tags.push(tags.refs[tags.rng.IntN(len(tags.refs))])
			}
		case x < 0.06: // :latest promoted to :stable
			tags.promote(tags.rng.IntN(2))
		case x < pushOdds:
			tags.push(tags.refs[tags.rng.IntN(len(tags.refs))])
		}
	}

	for range warmup {
		move()
		cycle(true)
	}
	closeIdle()
	g0 := steadyGoroutines()
	h0 := heap()
	debug.FreeOSMemory()
	rss0 := procStatus("VmRSS")
	start := time.Now()
	inCycle, slowest, gPeak = 0, 0, 0
	pushes0, started0 := tags.pushes, rep.count(deploy.Started)

	for range cycles {
		move()
		cycle(true)
	}
	wall := time.Since(start)

	// The stable state: without faults every service runs what its tag
	// points to, unless that digest failed. A fault may delay a deploy; it
	// must not lose one.
	quiet := false
	for range settle {
		busy := false
		for _, pl := range cycle(false) {
			busy = busy || pl.Action == deploy.ActDeploy || pl.Action == deploy.ActError
		}
		if !busy {
			quiet = true
			break
		}
	}
	if !quiet {
		t.Errorf("after %d fault-free cycles, cycles still deploy or fail to resolve a tag", settle)
	}
	sw.mu.Lock()
	for _, id := range sw.order {
		s := sw.services[id]
		want := tags.current[s.ref]
		if _, d := deploy.SplitImage(s.image); d != want && !sw.ledger[id][want] {
			t.Errorf("service %s runs %s; its tag points to %s, which is not known to have failed", s.name, deploy.Short(d), deploy.Short(want))
		}
	}
	if len(sw.journal) > 0 {
		t.Errorf("%d deploys still in flight: %v", len(sw.journal), mapValues(sw.journal))
	}
	sw.mu.Unlock()
	w.problems()
	if u := rep.unfinished(); len(u) > 0 {
		t.Errorf("%d deploys started and never reported an outcome: %v", len(u), u)
	}

	// Goroutines: back to the baseline once idle connections are closed.
	closeIdle()
	g1, ok := goroutinesBackTo(g0+slack, 10*time.Second, closeIdle)
	if !ok {
		var b bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Errorf("goroutines: %d after the run, baseline %d (+%d slack)\n%s", g1, g0, slack, b.String())
	}
	h1 := heap()
	debug.FreeOSMemory()
	rss1 := procStatus("VmRSS")
	if h1.HeapAlloc > h0.HeapAlloc+heapRoom<<20 {
		t.Errorf("live heap after GC grew from %s to %s over %d cycles (bound +%d MiB)", mib(h0.HeapAlloc), mib(h1.HeapAlloc), cycles, heapRoom)
	}

	sw.mu.Lock()
	var updates int
	for _, n := range sw.updates {
		updates += n
	}
	byClass := map[string]int{}
	for c, n := range sw.byClass {
		byClass[classNames[c]] = n
	}
	swarmFaults, calls := counts(sw.injected), counts(sw.calls)
	sw.mu.Unlock()
	t.Logf("cycles %d (+%d warm-up, +settle) in %s wall, %s in Cycle (%.2f ms/cycle, slowest %s); cycle errors %d",
		cycles, warmup, wall.Round(time.Millisecond), inCycle.Round(time.Millisecond), float64(inCycle.Microseconds())/1000/float64(cycles), slowest.Round(time.Millisecond), cycleErrs)
	t.Logf("pushes %d; deploys started %d (run) %d (all); spec writes %d by digest class %s", tags.pushes-pushes0, rep.count(deploy.Started)-started0, rep.count(deploy.Started), updates, counts(byClass))
	rep.mu.Lock()
	peak := rep.peak
	rep.mu.Unlock()
	t.Logf("deploys in flight at once: at most %d (UPDATER_DEPLOY_CONCURRENCY %d)", peak, p.DeployConcurrency)
	if peak < 2 {
		t.Errorf("at most %d deploy in flight at once: the soak did not drive runs side by side", peak)
	}
	t.Logf("deploy outcomes: %s", rep)
	t.Logf("plans by action: %s", counts(actions))
	t.Logf("registry: requests %d (manifest HEAD %d, GET %d); faults %s", reg.requests.Load(), reg.heads.Load(), reg.gets.Load(), reg.faults())
	t.Logf("swarm: faults %s; calls %s", swarmFaults, calls)
	t.Logf("goroutines: %d at start (after warm-up), %d at end; peak %d seen between cycles", g0, g1, gPeak)
	t.Logf("heap after GC: alloc %s -> %s (%+d B/cycle), in use %s -> %s", mib(h0.HeapAlloc), mib(h1.HeapAlloc), (int64(h1.HeapAlloc)-int64(h0.HeapAlloc))/int64(cycles), mib(h0.HeapInuse), mib(h1.HeapInuse))
	t.Logf("VmRSS (after FreeOSMemory): %s at start, %s at end; VmHWM %s", rss0, rss1, procStatus("VmHWM"))
	t.Logf("warnings and errors logged: %s", logs)
}

func (t *tally) count(k deploy.Kind) int { t.mu.Lock(); defer t.mu.Unlock(); return t.kinds[k] }

// steadyGoroutines is the goroutine count once it stops changing: closed
// connections take a moment to wind down on both ends.
func steadyGoroutines() int {
	runtime.GC()
	n, same := runtime.NumGoroutine(), 0
	for deadline := time.Now().Add(5 * time.Second); same < 5 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		if m := runtime.NumGoroutine(); m == n {
			same++
		} else {
			n, same = m, 0
		}
	}
	return n
}

// goroutinesBackTo polls until at most want goroutines run, or timeout.
func goroutinesBackTo(want int, timeout time.Duration, closeIdle func()) (int, bool) {
	deadline := time.Now().Add(timeout)
	for {
		closeIdle()
		runtime.GC()
		n := runtime.NumGoroutine()
		if n <= want {
			return n, true
		}
		if time.Now().After(deadline) {
			return n, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func heap() runtime.MemStats {
	runtime.GC()
	runtime.GC() // the second frees what finalizers of the first released
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// procStatus reads one field of /proc/self/status ("VmRSS"), "?" where
// there is none.
func procStatus(field string) string {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return "?"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == field {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "?"
}
