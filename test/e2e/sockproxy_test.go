//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// endpoint is one row of docs/socket-proxy.md's endpoint table.
type endpoint struct {
	methods []string
	path    string // with {id} and {name} placeholders
	re      *regexp.Regexp
}

func (e endpoint) String() string { return strings.Join(e.methods, ",") + " " + e.path }

// readmeEndpoints reads the allowlist from docs/socket-proxy.md (the
// README links it), so the documented list and the tested one cannot
// drift apart.
func readmeEndpoints(t testing.TB) []endpoint {
	t.Helper()
	f, err := os.Open(repoRoot(t) + "/docs/socket-proxy.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile("^\\| ([A-Z, ]+) \\| `(/[^`]*)` \\|")
	var out []endpoint
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			in = strings.HasPrefix(line, "## The endpoints")
			continue
		}
		m := row.FindStringSubmatch(line)
		if !in || m == nil {
			continue
		}
		e := endpoint{path: m[2]}
		for _, meth := range strings.Split(m[1], ",") {
			e.methods = append(e.methods, strings.TrimSpace(meth))
		}
		pat := regexp.QuoteMeta(e.path)
		pat = strings.NewReplacer(`\{id\}`, `[^/]+`, `\{name\}`, `.+`).Replace(pat)
		e.re = regexp.MustCompile(`^(/v[0-9.]+)?` + pat + `$`)
		out = append(out, e)
	}
	if len(out) < 10 {
		t.Fatalf("found %d endpoint rows in docs/socket-proxy.md's endpoint table: the section or its format changed", len(out))
	}
	return out
}

// allowProxy is a Docker socket proxy on 127.0.0.1 that forwards only
// the allowed endpoints, the way a least-privilege socket proxy in front
// of the updater would, and can cut connections to a service's spec
// writes (Docker going away mid-request).
type allowProxy struct {
	addr    string
	allow   []endpoint
	mu      sync.Mutex
	used    map[string]int // endpoint row → requests
	refused []string
	cut     string // service ID whose spec writes are cut
	cuts    int
}

func newAllowProxy(t testing.TB, allow []endpoint) *allowProxy {
	t.Helper()
	p := &allowProxy{allow: allow, used: map[string]int{}}
	target, _ := url.Parse("http://docker")
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{DialContext: dockerDial}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = l.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := slices.IndexFunc(p.allow, func(e endpoint) bool {
			return slices.Contains(e.methods, r.Method) && e.re.MatchString(r.URL.Path)
		})
		p.mu.Lock()
		if i < 0 {
			p.refused = append(p.refused, r.Method+" "+r.URL.Path)
			p.mu.Unlock()
			http.Error(w, `{"message":"refused by the e2e socket proxy: not in docs/socket-proxy.md's allowlist"}`, http.StatusForbidden)
			return
		}
		p.used[p.allow[i].String()]++
		cut := p.cut != "" && r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/services/"+p.cut+"/update")
		if cut {
			p.cuts++
		}
		p.mu.Unlock()
		if cut {
			if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		rp.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return p
}

func (p *allowProxy) cutWrites(serviceID string) { p.mu.Lock(); p.cut = serviceID; p.mu.Unlock() }

func (p *allowProxy) cutCount() int { p.mu.Lock(); defer p.mu.Unlock(); return p.cuts }

// The updater does all its work through a socket proxy that allows only
// docs/socket-proxy.md's endpoints: a deploy with hooks, a rollback, a restart in
// the middle of a deploy, and a connection cut at the spec write.
func TestSocketProxyAllowlist(t *testing.T) {
	const stack, repo = "e2esock", "e2e/sock"
	allow := readmeEndpoints(t)
	proxy := newAllowProxy(t, allow)
	dockerHost := "DOCKER_HOST=tcp://" + proxy.addr
	ev := recordEvents(t)

	// The proxy does refuse: what the updater must never need.
	for _, probe := range []struct{ method, path string }{
		{http.MethodPost, "/v1.41/containers/create"},
		{http.MethodGet, "/v1.41/secrets"},
		{http.MethodPost, "/v1.41/swarm/leave"},
	} {
		r := call(t, probe.method, "http://"+proxy.addr+probe.path, "", nil, "{}")
		if r.status != http.StatusForbidden {
			t.Fatalf("the proxy let %s %s through (%d)", probe.method, probe.path, r.status)
		}
	}
	proxy.mu.Lock()
	proxy.refused = nil
	proxy.mu.Unlock()

	t.Cleanup(removeMigrationRecords)
	dbURL := createDB(t, "e2esock")
	v1 := push(t, repo, "v1")
	migrateTo(t, "v1", dbURL)
	app := hookService(t, stack, "e2esock_app", repo, v1, dbURL, backupDir(t), nil)

	// A deploy with backup and migration, then a broken version rolled back.
	u := startUpdater(t, stack, dockerHost)
	v2 := push(t, repo, "v2")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
	bad := push(t, repo, "broken")
	u.waitLog(t, deployLimit, 1, "deploy failed", "to_digest", bad)
	waitFor(t, deployLimit, "v2 back and healthy", func() bool { return allRunning(t, app, v2) })

	// Docker's connection cut at the spec write: the deploy waits in
	// flight, nothing is reported failed, and it resumes once Docker
	// answers again.
	row := fault(t, "Docker API connection cut at the spec write (for several cycles)")
	proxy.cutWrites(app)
	v3 := push(t, repo, "v3")
	u.waitLog(t, deployLimit, 1, "docker unreachable at the spec write; the deploy resumes when it answers", "to_digest", v3)
	waitFor(t, 30*time.Second, "the write cut again on later cycles", func() bool { return proxy.cutCount() >= 3 })
	if n := u.count("deploy failed", "to_digest", v3); n != 0 {
		t.Fatal("the deploy was reported failed while Docker was unreachable")
	}
	proxy.cutWrites("")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v3)
	after := u.cycles()
	waitFor(t, 30*time.Second, "2 more cycles", func() bool { return u.cycles() >= after+2 })
	if s, o := u.count("deploy started", "to_digest", v3), u.count("deploy succeeded", "to_digest", v3)+u.count("deploy failed", "to_digest", v3); s != 1 || o != 1 {
		t.Fatalf("%d starts and %d outcomes for the deploy across the cut, want 1 and 1", s, o)
	}
	// v3's migrate ran before the cut write and not again on the cycles
	// that found the deploy waiting for Docker.
	if runs := migrateRuns(t, dbURL, "v3"); runs != 1 {
		t.Fatalf("v3's migrate ran %d times across the cut, want once", runs)
	}
	if !allRunning(t, app, v3) {
		t.Fatal("v3 not running")
	}
	row.set("%d writes cut over several cycles: nothing reported failed, the deploy stayed in flight; then one start, one outcome (succeeded), migration not rerun",
		proxy.cutCount())

	// Killed mid-deploy and restarted: the restart cleans up and resumes,
	// still through the proxy.
	v4 := push(t, repo, "v4")
	u.waitLog(t, deployLimit, 1, "deploy started", "to_digest", v4)
	u.stop(syscall.SIGKILL)
	second := startUpdater(t, stack, dockerHost)
	second.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v4, "resumed", "true")
	// Resumed, by Docker's account: the spec on v4, every task running it,
	// and one write of it; before it, each deploy's write and Swarm's
	// rollback of the broken one, none of the cut writes.
	if d := specDigest(t, app); d != v4 {
		t.Fatalf("spec on %s after the resumed deploy, want v4", d)
	}
	if !allRunning(t, app, v4) {
		t.Fatal("v4 reported but not running on every task")
	}
	ev.wantImageWrites(t, app, v2, bad, v2, v3, v4)
	noJobsLeft(t)
	second.stop(syscall.SIGTERM)

	proxy.mu.Lock()
	defer proxy.mu.Unlock()
	if len(proxy.refused) > 0 {
		t.Errorf("the updater needed endpoints docs/socket-proxy.md does not list: %v", proxy.refused)
	}
	var unused, used []string
	for _, e := range allow {
		if n := proxy.used[e.String()]; n == 0 {
			unused = append(unused, e.String())
		} else {
			used = append(used, fmt.Sprintf("%s ×%d", e, n))
		}
	}
	sort.Strings(used)
	t.Logf("endpoints used: %s", strings.Join(used, "; "))
	if len(unused) > 0 {
		t.Errorf("docs/socket-proxy.md lists endpoints the updater did not use: %v", unused)
	}
}
