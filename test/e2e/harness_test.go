//go:build e2e

// Package e2e proves the updater against real parts: the dockerd of this
// machine in swarm mode, a real registry (go-containerregistry's, served on
// 127.0.0.1), and the updater binary built from this tree, run as its own
// process so it can be killed like a real one.
package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// env is what every test shares: built once in TestMain.
var env struct {
	docker  *client.Client
	bin     string            // the updater binary
	apps    map[string][]byte // test app binaries by version
	faulty  string            // registry address the services and the updater use (faults injected here)
	faultyH http.Handler      // what serves faulty, to serve it elsewhere too (a netns)
	direct  string            // the same registry without faults, for pushes
	faults  *faults
	workDir string
}

func TestMain(m *testing.M) {
	os.Exit(setup(m))
}

func setup(m *testing.M) int {
	ctx := context.Background()
	docker, err := client.New(client.FromEnv)
	if err == nil {
		_, err = docker.Ping(ctx, client.PingOptions{})
	}
	if err != nil {
		// Skipping is for a developer's laptop without Docker; CI (and make
		// test, which sets E2E_REQUIRED=1) must fail loudly instead.
		if os.Getenv("CI") != "" || os.Getenv("E2E_REQUIRED") == "1" {
			log.Printf("e2e: docker is required but unreachable: %v (.ci/run installs and starts it)", err)
			return 1
		}
		log.Printf("e2e: SKIP: docker unreachable (%v)", err)
		return 0
	}
	info, err := docker.Info(ctx, client.InfoOptions{})
	if err != nil || info.Info.Swarm.LocalNodeState != swarm.LocalNodeStateActive {
		log.Printf("e2e: docker must be a swarm manager (run `docker swarm init --advertise-addr 127.0.0.1`): %v", err)
		return 1
	}
	env.docker = docker
	// The engine column of the engine matrix (test/e2e/matrix.sh) reads this line.
	log.Printf("e2e: docker engine %s (API %s)", info.Info.ServerVersion, docker.ClientVersion())

	dir, err := os.MkdirTemp("", "updater-e2e-")
	if err != nil {
		log.Print(err)
		return 1
	}
	defer os.RemoveAll(dir)
	env.workDir = dir
	if err := buildBinaries(dir); err != nil {
		log.Print(err)
		return 1
	}
	stopRegistry, err := startRegistry()
	if err != nil {
		log.Print(err)
		return 1
	}
	defer stopRegistry()
	stopNetns, err := serveEngineNetns() // an engine in a namespace of its own (engine.sh)
	if err != nil {
		log.Print(err)
		return 1
	}
	defer stopNetns()
	code := m.Run()
	printFaultTable(os.Stdout)
	if !scanSecrets(os.Stdout) {
		code = 1
	}
	stopPostgres()
	removeImages(ctx)
	return code
}

func buildBinaries(dir string) error {
	root, err := filepath.Abs("../..")
	if err != nil {
		return err
	}
	env.bin = filepath.Join(dir, "updater")
	if out, err := goBuild(root, env.bin, "-X main.version=e2e", "./cmd/updater"); err != nil {
		return fmt.Errorf("build updater: %v\n%s", err, out)
	}
	env.apps = map[string][]byte{}
	// Versions and the database schema each one migrates to; badmig's
	// migration fails halfway. v3 has a migration of its own, so a deploy
	// of it after v2's has one to run (and not to run twice).
	// probe500 and crashlate pass their health check and then fail (a
	// route answering 500, an exit after CRASH_AFTER): probe_test.go.
	for v, schema := range map[string]string{"v1": "1", "v2": "2", "v3": "3", "v4": "3", "broken": "3", "badmig": "99",
		"probe500": "1", "crashlate": "1"} {
		out := filepath.Join(dir, "app-"+v)
		if msg, err := goBuild(root, out, "-X main.version="+v+" -X main.schema="+schema, "./demo/app"); err != nil {
			return fmt.Errorf("build test app %s: %v\n%s", v, err, msg)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			return err
		}
		env.apps[v] = b
	}
	return nil
}

func goBuild(root, out, ldflags, pkg string) ([]byte, error) {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w "+ldflags, "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd.CombinedOutput()
}

// faults makes the registry misbehave on demand for everyone who uses the
// faulty address (the updater and dockerd alike).
type faults struct {
	mu     sync.Mutex
	status int           // 0: pass through
	delay  time.Duration // held this long before answering (a slow registry)
	cut    bool          // connections closed without an answer (registry down)
	gone   map[string]bool
	heads  int // manifest HEADs seen
	gets   int // manifest GETs seen
	lists  int // tag lists seen (GET /v2/<name>/tags/list)
}

func (f *faults) set(status int) { f.mu.Lock(); f.status = status; f.mu.Unlock() }

// mode sets every fault at once; the zero values pass through.
func (f *faults) mode(status int, delay time.Duration, cut bool) {
	f.mu.Lock()
	f.status, f.delay, f.cut = status, delay, cut
	f.mu.Unlock()
}

// vanish makes the manifest with digest unknown to GETs, as if deleted
// after the tag's HEAD named it.
func (f *faults) vanish(digest string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gone == nil {
		f.gone = map[string]bool{}
	}
	f.gone[digest] = true
}

func (f *faults) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		status, delay, cut := f.status, f.delay, f.cut
		manifest := strings.Contains(r.URL.Path, "/manifests/")
		if manifest {
			switch r.Method {
			case http.MethodHead:
				f.heads++
			case http.MethodGet:
				f.gets++
			}
		}
		if strings.HasSuffix(r.URL.Path, "/tags/list") {
			f.lists++
		}
		_, ref, _ := strings.Cut(r.URL.Path, "/manifests/")
		gone := manifest && r.Method == http.MethodGet && f.gone[ref]
		f.mu.Unlock()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		switch {
		case cut:
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		case gone:
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`, http.StatusNotFound)
		case status == http.StatusUnauthorized:
			w.Header().Set("WWW-Authenticate", `Basic realm="e2e"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, status)
		case status == http.StatusNotFound && manifest: // the registry is there, the tag is not
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`, status)
		case status != 0 && status != http.StatusNotFound:
			if status == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "1")
			}
			http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}`, status)
		default:
			h.ServeHTTP(w, r)
		}
	})
}

func startRegistry() (func(), error) {
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	env.faults = &faults{}
	var servers []*http.Server
	serve := func(h http.Handler) (string, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		s := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, s)
		go s.Serve(l)
		return l.Addr().String(), nil
	}
	var err error
	if env.direct, err = serve(reg); err != nil {
		return nil, err
	}
	env.faultyH = env.faults.wrap(reg)
	if env.faulty, err = serve(env.faultyH); err != nil {
		return nil, err
	}
	return func() {
		for _, s := range servers {
			s.Close()
		}
	}, nil
}

// push builds a FROM-scratch image of the test app at version and pushes it
// as repo:latest; every push makes a new digest. It returns the digest.
func push(t testing.TB, repo, version string) string {
	t.Helper()
	return pushLabelled(t, repo, version, nil)
}

// pushLabelled is push with extra image labels (OCI annotations, say).
func pushLabelled(t testing.TB, repo, version string, extra map[string]string) string {
	t.Helper()
	return pushImage(t, repo, appImage(t, version, extra))
}

// appImage is the FROM-scratch image of the test app at version (a new
// digest every call), with extra labels.
func appImage(t testing.TB, version string, extra map[string]string) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	bin := env.apps[version]
	if err := tw.WriteHeader(&tar.Header{Name: "app", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(bin); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"e2e.version": version, "e2e.nonce": fmt.Sprint(time.Now().UnixNano())}
	for k, v := range extra {
		labels[k] = v
	}
	return layerImage(t, buf.Bytes(), v1.Config{
		Entrypoint: []string{"/app"},
		Labels:     labels,
		Healthcheck: &v1.HealthConfig{
			Test: []string{"CMD", "/app", "health"}, Interval: time.Second, Timeout: 2 * time.Second, Retries: 2,
		},
	})
}

// pushLayer pushes a one-layer image (the tar in layerTar, with cfg) as
// repo:latest through the fault-free address and returns its digest.
func pushLayer(t testing.TB, repo string, layerTar []byte, cfg v1.Config) string {
	t.Helper()
	return pushImage(t, repo, layerImage(t, layerTar, cfg))
}

func layerImage(t testing.TB, layerTar []byte, cfg v1.Config) v1.Image {
	t.Helper()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.Config(img, cfg); err != nil {
		t.Fatal(err)
	}
	return img
}

func pushImage(t testing.TB, repo string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(env.direct + "/" + repo + ":latest")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push %s: %v", repo, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// image is the reference services use for repo: through the faulty port.
func image(repo string) string { return env.faulty + "/" + repo + ":latest" }

type svcOpts struct {
	stack    string
	optIn    bool
	replicas uint64
	unpinned bool
	// For services that reach the host's PostgreSQL: host networking (the
	// app listens where LISTEN in env says), stop-first since two tasks
	// can't share a port.
	hostNet bool
	env     []string
	labels  map[string]string
}

// createService creates a service the way `docker stack deploy` would,
// with the update_config health-gated promotion needs, and waits until it
// runs.
func createService(t testing.TB, svcName, repo, digest string, o svcOpts) string {
	t.Helper()
	res, err := env.docker.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: serviceSpec(svcName, repo, digest, o)})
	if err != nil {
		t.Fatalf("create service %s: %v", svcName, err)
	}
	t.Cleanup(func() { removeService(res.ID) })
	waitFor(t, 60*time.Second, svcName+" running", func() bool {
		return allRunning(t, res.ID, "")
	})
	return res.ID
}

// serviceSpec is the spec createService gives a service.
func serviceSpec(svcName, repo, digest string, o svcOpts) swarm.ServiceSpec {
	labels := map[string]string{"com.docker.stack.namespace": o.stack}
	for k, v := range o.labels {
		labels[k] = v
	}
	if o.optIn {
		labels["updater.enable"] = "true"
	}
	img := image(repo) + "@" + digest
	if o.unpinned {
		img = image(repo)
	}
	replicas := o.replicas
	if replicas == 0 {
		replicas = 1
	}
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: svcName, Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: img},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure},
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
		UpdateConfig: &swarm.UpdateConfig{
			Parallelism: 1, Order: swarm.UpdateOrderStartFirst, FailureAction: swarm.UpdateFailureActionRollback,
			Monitor: 3 * time.Second,
		},
		RollbackConfig: &swarm.UpdateConfig{Parallelism: 1, Order: swarm.UpdateOrderStartFirst, Monitor: time.Second},
		// No VIP: this kernel has no IPVS.
		EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR},
	}
	spec.TaskTemplate.ContainerSpec.Env = o.env
	if o.hostNet {
		spec.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: "host"}}
		spec.EndpointSpec = nil
		spec.UpdateConfig.Order, spec.RollbackConfig.Order = swarm.UpdateOrderStopFirst, swarm.UpdateOrderStopFirst
	}
	return spec
}

func removeService(id string) {
	ctx := context.Background()
	env.docker.ServiceRemove(ctx, id, client.ServiceRemoveOptions{})
	// Swarm keeps the exited containers of some tasks (a job's, notably).
	if res, err := env.docker.ContainerList(ctx, client.ContainerListOptions{All: true,
		Filters: make(client.Filters).Add("label", "com.docker.swarm.service.id="+id)}); err == nil {
		for _, c := range res.Items {
			env.docker.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
		}
	}
	// The updater's records about the service go with it.
	f := make(client.Filters).Add("label", "io.updater.service="+id)
	if res, err := env.docker.ConfigList(ctx, client.ConfigListOptions{Filters: f}); err == nil {
		for _, c := range res.Items {
			env.docker.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{})
		}
	}
}

// removeImages deletes the images the suite made dockerd pull. Swarm
// removes task containers a little after their service, and an image in
// use can't go, so it retries until none is left or a minute passed.
func removeImages(ctx context.Context) {
	deadline := time.Now().Add(time.Minute)
	for {
		left := 0
		res, err := env.docker.ImageList(ctx, client.ImageListOptions{All: true})
		if err != nil {
			log.Printf("e2e: list images for cleanup: %v", err)
			return
		}
		for _, img := range res.Items {
			for _, ref := range append(img.RepoDigests, img.RepoTags...) {
				if strings.HasPrefix(ref, env.faulty+"/") {
					left++
					env.docker.ImageRemove(ctx, img.ID, client.ImageRemoveOptions{Force: true, PruneChildren: true})
					break
				}
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			log.Printf("e2e: %d test images still in use after a minute; left behind", left)
			break
		}
		time.Sleep(time.Second)
	}
	// The Dockerfiles' build stages stay behind untagged (the build cache of
	// make image and the demo's images): the suite's builds made them.
	f := make(client.Filters).Add("dangling", "true").Add("label", "org.updater.stage=build")
	if _, err := env.docker.ImagePrune(ctx, client.ImagePruneOptions{Filters: f}); err != nil {
		log.Printf("e2e: remove build stage images: %v", err)
	}
}

func inspect(t testing.TB, id string) swarm.Service {
	t.Helper()
	res, err := env.docker.ServiceInspect(context.Background(), id, client.ServiceInspectOptions{})
	if err != nil {
		t.Fatalf("inspect %s: %v", id, err)
	}
	return res.Service
}

// allRunning reports whether every task Swarm wants running is running,
// and, when digest is set, runs that digest.
func allRunning(t testing.TB, id, digest string) bool {
	t.Helper()
	svc := inspect(t, id)
	res, err := env.docker.TaskList(context.Background(), client.TaskListOptions{
		Filters: make(client.Filters).Add("service", id).Add("desired-state", "running"),
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, task := range res.Items {
		if task.Status.State != swarm.TaskStateRunning {
			return false
		}
		if digest != "" && !strings.HasSuffix(task.Spec.ContainerSpec.Image, "@"+digest) {
			return false
		}
		n++
	}
	return n > 0 && uint64(n) == *svc.Spec.Mode.Replicated.Replicas
}

func specDigest(t testing.TB, id string) string {
	_, d, _ := strings.Cut(inspect(t, id).Spec.TaskTemplate.ContainerSpec.Image, "@")
	return d
}

// waitFor polls cond until it holds; the suite waits on conditions, never
// on sleeps.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// updater is one running updater process with its log lines.
type updater struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []map[string]any
	raw   bytes.Buffer
	done  chan struct{}
}

func startUpdater(t testing.TB, stack string, extra ...string) *updater {
	t.Helper()
	cfgDir := t.TempDir() // an empty DOCKER_CONFIG: anonymous registry access
	cmd := exec.Command(env.bin, "run")
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"DOCKER_CONFIG=" + cfgDir,
		"UPDATER_SCHEDULE=@every 1s",
		"UPDATER_STACK=" + stack,
		"UPDATER_LOG_LEVEL=debug",
		"UPDATER_LOG_FORMAT=json",
		"UPDATER_DEPLOY_TIMEOUT=90s",
		"UPDATER_WATCH_INTERVAL=200ms",
		"UPDATER_REGISTRY_TIMEOUT=3s",
		// A killed updater's lease blocks its successor this long.
		"UPDATER_LEASE_TTL=3s",
		// Loopback and a free port: tests never listen on every interface,
		// and updaters of runs side by side never fight over :8080.
		"UPDATER_LISTEN=127.0.0.1:0",
		// What this suite's operator allows hook labels beyond each
		// service's own repository and stack volumes: the backup image
		// with the host's pg_dump, and the backup directories the hook
		// tests make under the temp dir. A test of the allow-list sets its
		// own (later entries win).
		"UPDATER_HOOK_IMAGES=" + env.faulty + "/e2e/pgdump",
		"UPDATER_HOOK_MOUNT_ROOTS=" + os.TempDir(),
	}, dockerHostEnv()...)
	// After the suite's engine: a test's own DOCKER_HOST (a proxy) wins.
	cmd.Env = append(cmd.Env, extra...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	u := &updater{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(u.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			u.mu.Lock()
			u.raw.Write(sc.Bytes())
			u.raw.WriteByte('\n')
			capture("updater log ("+stack+")", sc.Bytes())
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				u.lines = append(u.lines, m)
			}
			u.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		u.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("updater log:\n%s", u.log())
		}
	})
	return u
}

// stop signals the process (only the one this test started), waits, and
// returns how it exited.
func (u *updater) stop(sig syscall.Signal) error {
	if u.cmd.ProcessState != nil {
		return nil
	}
	u.cmd.Process.Signal(sig)
	<-u.done
	return u.cmd.Wait()
}

func (u *updater) log() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.raw.String()
}

// matching returns the log lines with msg and all the given key/values.
func (u *updater) matching(msg string, kv ...string) []map[string]any {
	u.mu.Lock()
	defer u.mu.Unlock()
	return match(u.lines, msg, kv...)
}

// match picks the JSON log lines with msg and all the key/value pairs.
func match(lines []map[string]any, msg string, kv ...string) []map[string]any {
	var out []map[string]any
next:
	for _, l := range lines {
		if l["msg"] != msg {
			continue
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if fmt.Sprint(l[kv[i]]) != kv[i+1] {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

func (u *updater) count(msg string, kv ...string) int { return len(u.matching(msg, kv...)) }

// find returns the first log line with msg and the key/values, or nil.
func (u *updater) find(msg string, kv ...string) map[string]any {
	if m := u.matching(msg, kv...); len(m) > 0 {
		return m[0]
	}
	return nil
}

// waitLog waits until a line with msg and kv has been logged n times.
func (u *updater) waitLog(t testing.TB, limit time.Duration, n int, msg string, kv ...string) {
	t.Helper()
	waitFor(t, limit, fmt.Sprintf("%d× %q %v in the updater log", n, msg, kv), func() bool {
		select {
		case <-u.done:
			t.Fatalf("updater exited while waiting for %q: %v\n%s", msg, u.cmd.Wait(), u.log())
		default:
		}
		return u.count(msg, kv...) >= n
	})
}

// cycles is how many cycles the updater has finished.
func (u *updater) cycles() int { return u.count("cycle done") }
