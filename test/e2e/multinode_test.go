//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"
)

// The multi-node suite runs on a real 2-node swarm made on this machine
// by multinode.sh: the host dockerd is the manager, a second dockerd in a
// network namespace the worker. Setting it up re-initialises the host's
// swarm, which removes every service, so it runs on its own, after the
// single-node suite: make e2e-multinode (part of make test).

const (
	mnStack   = "e2emn"
	mnUser    = "mn"
	mnPass    = "mn-e2e-pass"
	mnTimeout = 90 * time.Second // UPDATER_DEPLOY_TIMEOUT in these tests
)

// multiNode is one 2-node swarm with a registry both nodes reach as
// 127.0.0.1:PORT: an open port and a basic-auth port serve one store.
type multiNode struct {
	worker     *client.Client
	workerNode string // swarm node ID
	workerName string // its hostname, as reports name it
	netns      string // the worker's network namespace (a path)
	manager    string // the manager's hostname
	open, auth string // registry addresses
	reg        *mnRegistry
	pruneImage string // the updater's own image, pinned, pushed to the open port
	creds      string // a DOCKER_CONFIG with the credentials for the auth port
}

func multiNodeRequired(tb testing.TB) {
	tb.Helper()
	if os.Getenv("E2E_MULTINODE") != "1" {
		tb.Skip("the multi-node suite re-initialises the swarm: run it on its own with make e2e-multinode (E2E_MULTINODE=1)")
	}
}

// setupMultiNode makes the 2-node swarm and the registry, and undoes both
// when tb ends: services first, then the worker, the netns, and the host
// swarm back on 127.0.0.1.
func setupMultiNode(tb testing.TB) *multiNode {
	tb.Helper()
	multiNodeRequired(tb)
	script, err := filepath.Abs("multinode.sh")
	if err != nil {
		tb.Fatal(err)
	}
	run := func(args ...string) string {
		cmd := exec.Command(script, args...)
		cmd.Env = append(os.Environ(), "MN_RESTORE_ADVERTISE=127.0.0.1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			tb.Fatalf("multinode.sh %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return string(out)
	}
	tb.Cleanup(func() {
		cmd := exec.Command(script, "teardown")
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Errorf("multinode.sh teardown: %v\n%s", err, out)
		}
	})
	// Making the swarm re-initialises the host's, which would pull it from
	// under another suite (or make demo) running on this dockerd, between
	// its tests too: wait for those to end.
	waitForIdleHost(tb)
	start := time.Now()
	run("setup")
	vars := map[string]string{}
	for _, line := range strings.Split(run("env"), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vars[k] = v
		}
	}
	mn := &multiNode{workerNode: vars["MN_WORKER_NODE"], workerName: vars["MN_WORKER_NAME"], manager: vars["MN_MANAGER_NAME"],
		netns: vars["MN_NETNS"]}
	if mn.workerNode == "" || mn.workerName == "" || mn.manager == "" {
		tb.Fatalf("multinode.sh env: %v", vars)
	}
	mn.worker, err = client.New(client.WithHost(vars["MN_WORKER_HOST"]))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { mn.worker.Close() })

	mn.reg = &mnRegistry{store: ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))), gets: map[string]int{}}
	open, auth := mn.reg.handler(false), mn.reg.handler(true)
	mn.open = serveMN(tb, "", "127.0.0.1:0", open)
	mn.auth = serveMN(tb, "", "127.0.0.1:0", auth)
	// The same ports on the worker's own loopback, so one image reference
	// means the same registry on both nodes.
	serveMN(tb, mn.netns, mn.open, open)
	serveMN(tb, mn.netns, mn.auth, auth)

	mn.creds = tb.TempDir()
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, mn.auth, base64.StdEncoding.EncodeToString([]byte(mnUser+":"+mnPass)))
	if err := os.WriteFile(filepath.Join(mn.creds, "config.json"), []byte(cfg), 0o600); err != nil {
		tb.Fatal(err)
	}
	mn.pruneImage = mn.pushUpdater(tb)
	tb.Cleanup(func() { mn.removeHostImages() })
	tb.Logf("2-node swarm (manager %s, worker %s) and registry ready in %s", mn.manager, mn.workerName, time.Since(start).Round(100*time.Millisecond))
	return mn
}

// idleHostWait bounds the wait for the host's swarm to be free. It must end
// well inside the test binary's -timeout (15m in make e2e-multinode) so a
// busy host fails with what is in its way, not with the timeout's panic,
// and leaves the suite itself (several minutes) its time.
const idleHostWait = 5 * time.Minute

// waitForIdleHost waits until no service runs on the host's swarm and no
// other e2e run or demo uses it, for idleHostWait or a third of the time
// the test binary has left, whichever is shorter.
func waitForIdleHost(tb testing.TB) {
	tb.Helper()
	limit := idleHostWait
	if t, ok := tb.(interface{ Deadline() (time.Time, bool) }); ok {
		if d, ok := t.Deadline(); ok {
			limit = min(limit, time.Until(d)/3)
		}
	}
	deadline := time.Now().Add(limit)
	for {
		res, err := env.docker.ServiceList(context.Background(), client.ServiceListOptions{})
		others := othersOnDocker()
		if err == nil && len(res.Items) == 0 && len(others) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var names []string
			for _, svc := range res.Items {
				names = append(names, svc.Spec.Name)
			}
			tb.Fatalf("the host's swarm is still in use after %s: services %q, processes %q (list error: %v); "+
				"multinode.sh setup re-initialises the swarm, which would remove them: run the multi-node suite when they have ended",
				limit.Round(time.Second), names, others, err)
		}
		time.Sleep(time.Second)
	}
}

// othersOnDocker lists the other processes of this machine that use the
// swarm and would break if it were re-initialised under them: e2e test
// binaries other than this one, and make demo.
func othersOnDocker() []string {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []string
	for _, f := range dirs {
		if f == fmt.Sprintf("/proc/%d/cmdline", os.Getpid()) {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if strings.HasSuffix(args[0], "/e2e.test") || slices.ContainsFunc(args, func(a string) bool { return strings.HasSuffix(a, "demo/demo.sh") }) {
			out = append(out, strings.Join(args, " "))
		}
	}
	return out
}

// serveMN serves h on addr, inside the network namespace nsPath when it
// is set, and returns the address it listens on.
func serveMN(tb testing.TB, nsPath, addr string, h http.Handler) string {
	tb.Helper()
	l, err := listenIn(nsPath, addr)
	if err != nil {
		tb.Fatalf("listen on %s (netns %q): %v", addr, nsPath, err)
	}
	s := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go s.Serve(l)
	tb.Cleanup(func() { s.Close() })
	return l.Addr().String()
}

// listenIn creates a TCP listener in the network namespace at nsPath (""
// for this one). The socket stays in that namespace; only the thread
// that creates it switches, and switches back.
func listenIn(nsPath, addr string) (net.Listener, error) {
	if nsPath == "" {
		return net.Listen("tcp", addr)
	}
	runtime.LockOSThread()
	own, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer own.Close()
	target, err := os.Open(nsPath)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("setns %s: %w", nsPath, err)
	}
	l, lerr := net.Listen("tcp", addr)
	if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked, so Go ends it rather than reuse it in
		// the wrong namespace.
		return nil, fmt.Errorf("return from netns %s: %w", nsPath, err)
	}
	runtime.UnlockOSThread()
	return l, lerr
}

// mnRegistry is one in-memory registry behind an open and a basic-auth
// handler, counting the manifest and blob GETs (pulls) per repository.
type mnRegistry struct {
	store  http.Handler
	mu     sync.Mutex
	gets   map[string]int
	denied map[string]bool // repositories whose blobs are gone
}

// denyBlobs makes repo's blobs unavailable (404), as if deleted, while
// its manifests and tags still answer.
func (r *mnRegistry) denyBlobs(repo string, deny bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.denied == nil {
		r.denied = map[string]bool{}
	}
	r.denied[repo] = deny
}

func (r *mnRegistry) handler(auth bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if auth {
			u, p, ok := req.BasicAuth()
			if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(mnUser)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(mnPass)) != 1 {
				w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
				w.Header().Set("WWW-Authenticate", `Basic realm="e2e"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				fmt.Fprintln(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}`)
				return
			}
		}
		if req.Method == http.MethodGet {
			for _, kind := range []string{"/manifests/", "/blobs/"} {
				repo, _, ok := strings.Cut(strings.TrimPrefix(req.URL.Path, "/v2/"), kind)
				if !ok {
					continue
				}
				r.mu.Lock()
				r.gets[repo]++
				denied := r.denied[repo] && kind == "/blobs/"
				r.mu.Unlock()
				if denied {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusNotFound)
					fmt.Fprintln(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`)
					return
				}
			}
		}
		r.store.ServeHTTP(w, req)
	})
}

// pulls is how many manifest and blob GETs repo has had.
func (r *mnRegistry) pulls(repo string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gets[repo]
}

// pushApp pushes the test app at version as repo:latest, with a layer of
// pad random bytes so every push is a new version with its own layer, as a
// real build is. It returns the digest.
func (mn *multiNode) pushApp(tb testing.TB, repo, version string, pad int) string {
	tb.Helper()
	app := tarLayer(tb, map[string][]byte{"app": env.apps[version]})
	img, err := mutate.AppendLayers(empty.Image, app)
	if err != nil {
		tb.Fatal(err)
	}
	if pad > 0 {
		b := make([]byte, pad)
		rand.Read(b)
		if img, err = mutate.AppendLayers(img, tarLayer(tb, map[string][]byte{"pad": b})); err != nil {
			tb.Fatal(err)
		}
	}
	img, err = mutate.Config(img, v1.Config{
		Entrypoint: []string{"/app"},
		Labels:     map[string]string{"e2e.version": version, "e2e.nonce": fmt.Sprint(time.Now().UnixNano())},
		Healthcheck: &v1.HealthConfig{
			Test: []string{"CMD", "/app", "health"}, Interval: time.Second, Timeout: 2 * time.Second, Retries: 2,
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return mn.write(tb, repo+":latest", img)
}

// pushUpdater pushes the updater binary under test as an image whose
// entrypoint is the updater, as the shipped Dockerfile makes it: the
// image the prune job runs. It returns the pinned reference.
func (mn *multiNode) pushUpdater(tb testing.TB) string {
	tb.Helper()
	bin, err := os.ReadFile(env.bin)
	if err != nil {
		tb.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, tarLayer(tb, map[string][]byte{"updater": bin}))
	if err != nil {
		tb.Fatal(err)
	}
	if img, err = mutate.Config(img, v1.Config{Entrypoint: []string{"/updater"}, Cmd: []string{"run"}}); err != nil {
		tb.Fatal(err)
	}
	d := mn.write(tb, "e2e/updater:e2e", img)
	return mn.open + "/e2e/updater:e2e@" + d
}

func (mn *multiNode) write(tb testing.TB, repoTag string, img v1.Image) string {
	tb.Helper()
	ref, err := name.ParseReference(mn.open+"/"+repoTag, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(authn.Anonymous)); err != nil {
		tb.Fatalf("push %s: %v", repoTag, err)
	}
	d, err := img.Digest()
	if err != nil {
		tb.Fatal(err)
	}
	return d.String()
}

func tarLayer(tb testing.TB, files map[string][]byte) v1.Layer {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o755, Size: int64(len(files[n])), Typeflag: tar.TypeReg}); err != nil {
			tb.Fatal(err)
		}
		if _, err := tw.Write(files[n]); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// startUpdaterService runs the updater as the README deploys it: a
// service constrained to a manager, with the Docker socket, pruning on and
// no UPDATER_PRUNE_IMAGE. Host networking, since the registry listens on
// the host's loopback. When tb ends the service goes, and the test waits
// for its container to stop: it releases the lease on SIGTERM.
func (mn *multiNode) startUpdaterService(tb testing.TB) string {
	tb.Helper()
	svcName := mnStack + "_updater"
	one := uint64(1)
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: svcName, Labels: map[string]string{"com.docker.stack.namespace": mnStack}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image: mn.pruneImage,
				Env: []string{"UPDATER_STACK=" + mnStack, "UPDATER_SCHEDULE=@every 1s", "UPDATER_LOG_LEVEL=debug",
					"UPDATER_WATCH_INTERVAL=200ms", "UPDATER_DEPLOY_TIMEOUT=" + mnTimeout.String(),
					"UPDATER_LISTEN=127.0.0.1:0", "UPDATER_PRUNE=after-deploy"},
				Mounts: []mount.Mount{{Type: mount.TypeBind, Source: "/var/run/docker.sock", Target: "/var/run/docker.sock"}},
			},
			Placement:     &swarm.Placement{Constraints: []string{"node.role==manager"}},
			Networks:      []swarm.NetworkAttachmentConfig{{Target: "host"}},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &one}},
	}
	res, err := env.docker.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		tb.Fatalf("create the updater service: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			out, _ := exec.Command("docker", "service", "logs", "--raw", svcName).CombinedOutput()
			capture("updater command output and service logs", out)
			tb.Logf("updater service log:\n%s", out)
		}
		// Swarm stops the task with SIGTERM: the updater releases its lease
		// for the next test's updater. Then what Swarm leaves goes.
		env.docker.ServiceRemove(context.Background(), res.ID, client.ServiceRemoveOptions{})
		waitFor(tb, time.Minute, "the updater container stopped", func() bool {
			cs, err := env.docker.ContainerList(context.Background(), client.ContainerListOptions{
				Filters: make(client.Filters).Add("label", "com.docker.swarm.service.id="+res.ID)})
			return err == nil && len(cs.Items) == 0
		})
		removeService(res.ID)
	})
	return svcName
}

type mnService struct {
	constraint string // a placement constraint; "" with global
	global     bool
	auth       bool   // the image is in the auth registry: create with its credentials
	replicas   uint64 // 0: one
	failure    swarm.FailureAction
	// Another registry (host:port, as both nodes reach it) and the
	// credentials to create with there, instead of open or auth.
	reg, user, pass string
}

// createOn creates a watched service of the test stack running image
// (repo in the open or auth registry, pinned to digest) and waits until
// each of its tasks runs.
func (mn *multiNode) createOn(tb testing.TB, svcName, repo, digest string, o mnService) string {
	tb.Helper()
	reg := mn.open
	if o.auth {
		reg = mn.auth
	}
	if o.reg != "" {
		reg = o.reg
	}
	one := max(o.replicas, 1)
	failure := o.failure
	if failure == "" {
		failure = swarm.UpdateFailureActionRollback
	}
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: svcName, Labels: map[string]string{
			"com.docker.stack.namespace": mnStack, "updater.enable": "true"}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: reg + "/" + repo + ":latest@" + digest},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny},
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &one}},
		UpdateConfig: &swarm.UpdateConfig{Parallelism: 1, Order: swarm.UpdateOrderStartFirst, FailureAction: failure,
			Monitor: 3 * time.Second},
		RollbackConfig: &swarm.UpdateConfig{Parallelism: 1, Order: swarm.UpdateOrderStartFirst, Monitor: time.Second},
		EndpointSpec:   &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR},
	}
	if o.global {
		spec.Mode = swarm.ServiceMode{Global: &swarm.GlobalService{}}
	}
	if o.constraint != "" {
		spec.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{o.constraint}}
	}
	opts := client.ServiceCreateOptions{Spec: spec}
	if o.auth {
		b, _ := json.Marshal(map[string]string{"username": mnUser, "password": mnPass, "serveraddress": mn.auth})
		opts.EncodedRegistryAuth = base64.URLEncoding.EncodeToString(b)
	}
	if o.user != "" {
		b, _ := json.Marshal(map[string]string{"username": o.user, "password": o.pass, "serveraddress": reg})
		opts.EncodedRegistryAuth = base64.URLEncoding.EncodeToString(b)
	}
	res, err := env.docker.ServiceCreate(context.Background(), opts)
	if err != nil {
		tb.Fatalf("create service %s: %v", svcName, err)
	}
	tb.Cleanup(func() { removeService(res.ID) })
	want := 1
	if o.global {
		want = 2
	}
	waitFor(tb, 90*time.Second, svcName+" running", func() bool { return len(mn.running(tb, res.ID, digest)) == want })
	return res.ID
}

// running maps the node IDs to the tasks of the service that run digest
// and are wanted running.
func (mn *multiNode) running(tb testing.TB, id, digest string) map[string]swarm.Task {
	tb.Helper()
	res, err := env.docker.TaskList(context.Background(), client.TaskListOptions{
		Filters: make(client.Filters).Add("service", id).Add("desired-state", "running"),
	})
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]swarm.Task{}
	for _, t := range res.Items {
		if t.Status.State == swarm.TaskStateRunning && strings.HasSuffix(t.Spec.ContainerSpec.Image, "@"+digest) {
			out[t.NodeID] = t
		}
	}
	return out
}

// repoDigests lists the digests of repo's images on a node's dockerd.
func repoDigests(tb testing.TB, c *client.Client, repoPrefix string) []string {
	tb.Helper()
	res, err := c.ImageList(context.Background(), client.ImageListOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, img := range res.Items {
		for _, rd := range img.RepoDigests {
			if r, d, ok := strings.Cut(rd, "@"); ok && r == repoPrefix {
				out = append(out, d)
			}
		}
	}
	sort.Strings(out)
	return out
}

// removeHostImages removes what the suite made the manager pull from its
// registry; the worker's images go with its data root.
func (mn *multiNode) removeHostImages() {
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := env.docker.ImageList(ctx, client.ImageListOptions{})
		if err != nil {
			return
		}
		left := 0
		for _, img := range res.Items {
			for _, ref := range append(img.RepoDigests, img.RepoTags...) {
				if strings.HasPrefix(ref, mn.open+"/") || strings.HasPrefix(ref, mn.auth+"/") {
					left++
					env.docker.ImageRemove(ctx, img.ID, client.ImageRemoveOptions{Force: true, PruneChildren: true})
					break
				}
			}
		}
		if left == 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Second)
	}
}

// startMN starts an updater on the manager (a host process talking to the
// manager's dockerd) for the multi-node stack.
func (mn *multiNode) startMN(tb testing.TB, extra ...string) *updater {
	tb.Helper()
	return startUpdater(tb, mnStack, append([]string{"UPDATER_DEPLOY_TIMEOUT=" + mnTimeout.String()}, extra...)...)
}

func TestMultiNode(t *testing.T) {
	mn := setupMultiNode(t)

	// 1. A service that runs only on the worker, its image behind basic
	// auth: the updater on the manager, with the credentials in its
	// DOCKER_CONFIG, deploys a new digest and the worker pulls it with the
	// credentials the update carried.
	t.Run("PrivateImageOnWorker", func(t *testing.T) {
		const repo = "e2e/mnpriv"
		v1 := mn.pushApp(t, repo, "v1", 0)
		app := mn.createOn(t, mnStack+"_priv", repo, v1, mnService{constraint: "node.role==worker", auth: true})
		u := mn.startMN(t, "DOCKER_CONFIG="+mn.creds)
		waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

		v2 := mn.pushApp(t, repo, "v2", 0)
		u.waitLog(t, deployLimit, 1, "deploy succeeded", "service", mnStack+"_priv", "to_digest", v2)
		tasks := mn.running(t, app, v2)
		if _, ok := tasks[mn.workerNode]; !ok || len(tasks) != 1 {
			t.Fatalf("v2 runs on nodes %v, want only the worker %s", keys(tasks), mn.workerNode)
		}
		// The container is the worker dockerd's, which pulled the image.
		res, err := mn.worker.ContainerList(t.Context(), client.ContainerListOptions{
			Filters: make(client.Filters).Add("label", "com.docker.swarm.service.id="+app)})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(slices.DeleteFunc(res.Items, func(c container.Summary) bool { return c.State != "running" })); n != 1 {
			t.Fatalf("%d running containers of the service on the worker dockerd, want 1", n)
		}
		if got := repoDigests(t, mn.worker, mn.auth+"/"+repo); !slices.Contains(got, v2) {
			t.Fatalf("the worker holds %v of %s, want %s among them", got, repo, v2)
		}
		if n := u.count("deploy failed"); n != 0 {
			t.Fatalf("%d failed deploys", n)
		}
	})

	// 1b. The registry password rotated between two deploys, at a real
	// distribution registry (htpasswd, which it re-reads when the file
	// changes) and in the updater's config.json: the second deploy sends
	// the new password with its spec write, and the worker, which must pull
	// the new digest, can. The service was created with the old password,
	// now refused, so only what the updater sent can have let it pull.
	t.Run("RotatedCredentialsOnWorker", func(t *testing.T) {
		const repo = "e2e/mnrotate"
		const pusher, pusherPass = "mn-pusher", "mn-rotate-pusher-pass-1618"
		const watcher, oldPass, newPass = "mn-watcher", "mn-rotate-old-pass-2236", "mn-rotate-new-pass-2645"
		addSecret("multi-node pusher password", pusherPass)
		addSecret("multi-node old password", oldPass)
		addSecret("multi-node new password", newPass)
		d := newDist(t)
		htpasswd := htpasswdFile(t, map[string]string{pusher: pusherPass, watcher: oldPass})
		d.start(t, distOpts{htpasswd: htpasswd})
		// The worker reaches the registry at the same address.
		serveMN(t, mn.netns, d.addr, d.proxy)
		cfgDir := authConfigDir(t, d.addr, watcher, oldPass)

		v1 := d.pushTo(t, repo, "v1", pusher, pusherPass)
		app := mn.createOn(t, mnStack+"_rotate", repo, v1, mnService{constraint: "node.role==worker", reg: d.addr, user: watcher, pass: oldPass})
		u := mn.startMN(t, "DOCKER_CONFIG="+cfgDir)
		waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
		onWorker := func(digest string) {
			t.Helper()
			waitFor(t, deployLimit, "the deploy of "+digest[:19]+"'s outcome", func() bool {
				return u.count("deploy succeeded", "to_digest", digest)+u.count("deploy failed", "to_digest", digest) > 0
			})
			if ev := u.find("deploy failed", "to_digest", digest); ev != nil {
				t.Fatalf("the deploy of %s failed: %v", digest[:19], ev["err"])
			}
			waitFor(t, 30*time.Second, "the worker's task on "+digest[:19], func() bool {
				tasks := mn.running(t, app, digest)
				_, ok := tasks[mn.workerNode]
				return ok && len(tasks) == 1
			})
			if got := repoDigests(t, mn.worker, d.addr+"/"+repo); !slices.Contains(got, digest) {
				t.Fatalf("the worker's dockerd holds %v of %s, want %s among them", got, repo, digest)
			}
		}
		// The nodes' successful manifest GETs, by whose password they carried.
		whose := func(from time.Time) []string {
			names := map[string]string{basicOf(watcher, oldPass): "old", basicOf(watcher, newPass): "new"}
			var out []string
			for _, a := range nodeAuths(d.since(from, "node")) {
				n, ok := names[a]
				if !ok {
					n = "other"
				}
				out = append(out, n)
			}
			return out
		}

		from := time.Now()
		v2 := d.pushTo(t, repo, "v2", pusher, pusherPass)
		onWorker(v2)
		if got := whose(from); !slices.Equal(got, []string{"old"}) {
			t.Fatalf("the worker pulled v2 with the %v password, want the old one only", got)
		}

		// Rotate: the registry first (the file replaced whole, so it never
		// reads half of one), then the updater's config.json.
		replace := func(path string, b []byte) {
			t.Helper()
			tmp := path + ".new"
			if err := os.WriteFile(tmp, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}
		b, err := os.ReadFile(htpasswdFile(t, map[string]string{pusher: pusherPass, watcher: newPass}))
		if err != nil {
			t.Fatal(err)
		}
		replace(htpasswd, b)
		status := func(user, pass string) int {
			req, _ := http.NewRequest(http.MethodGet, "http://"+d.addr+"/v2/", nil)
			req.SetBasicAuth(user, pass)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return 0
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		waitFor(t, 30*time.Second, "the registry refusing the old password", func() bool {
			return status(watcher, oldPass) == http.StatusUnauthorized && status(watcher, newPass) == http.StatusOK
		})
		b, err = os.ReadFile(filepath.Join(authConfigDir(t, d.addr, watcher, newPass), "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		replace(filepath.Join(cfgDir, "config.json"), b)

		from = time.Now()
		v3 := d.pushTo(t, repo, "v3", pusher, pusherPass)
		onWorker(v3)
		if got := whose(from); !slices.Equal(got, []string{"new"}) {
			t.Fatalf("the worker pulled v3 with the %v password, want the new one only", got)
		}
		res, err := mn.worker.ContainerList(t.Context(), client.ContainerListOptions{
			Filters: make(client.Filters).Add("label", "com.docker.swarm.service.id="+app)})
		if err != nil {
			t.Fatal(err)
		}
		img, err := mn.worker.ImageInspect(t.Context(), d.addr+"/"+repo+"@"+v3)
		if err != nil {
			t.Fatalf("v3 on the worker's dockerd: %v", err)
		}
		running := slices.DeleteFunc(res.Items, func(c container.Summary) bool { return c.State != "running" })
		if len(running) != 1 || running[0].ImageID != img.ID {
			t.Fatalf("the worker dockerd's running containers of the service: %v, want one of v3's image %s", running, img.ID)
		}
		if n := u.count("deploy failed"); n != 0 {
			t.Fatalf("%d failed deploys", n)
		}
		t.Logf("the worker pulled v2 with the old password, v3 with the new one (the nodes' requests since the rotation: %v)", tally(d.since(from, "node")))
	})

	// 1c. The registry password rotated and no deploy follows: the updater
	// re-sends the new credentials with a spec write that changes nothing
	// else, the running tasks keep their containers, and a task Swarm
	// moves to the worker later (the manager drained) pulls with the new
	// password, the old one refused. The worker has never pulled the image,
	// and the service was created with the old password: only what the
	// re-send gave Swarm can let it pull. Unchanged credentials, and an
	// updater restarted, cost no spec write.
	t.Run("ResentCredentialsOnReschedule", func(t *testing.T) {
		const repo = "e2e/mnresend"
		const pusher, pusherPass = "mn-resend-pusher", "mn-resend-pusher-pass-3301"
		const watcher, oldPass, newPass = "mn-resend-watcher", "mn-resend-old-pass-4417", "mn-resend-new-pass-5923"
		const idle = 5 // cycles that must write nothing
		addSecret("multi-node resend pusher password", pusherPass)
		addSecret("multi-node resend old password", oldPass)
		addSecret("multi-node resend new password", newPass)
		ctx := t.Context()
		d := newDist(t)
		htpasswd := htpasswdFile(t, map[string]string{pusher: pusherPass, watcher: oldPass})
		d.start(t, distOpts{htpasswd: htpasswd})
		serveMN(t, mn.netns, d.addr, d.proxy)
		cfgDir := authConfigDir(t, d.addr, watcher, oldPass)
		v1 := d.pushTo(t, repo, "v1", pusher, pusherPass)

		info, err := env.docker.Info(ctx, client.InfoOptions{})
		if err != nil {
			t.Fatal(err)
		}
		managerNode := info.Info.Swarm.NodeID
		availability := func(node string, a swarm.NodeAvailability) {
			t.Helper()
			res, err := env.docker.NodeInspect(context.Background(), node, client.NodeInspectOptions{})
			if err == nil {
				spec := res.Node.Spec
				spec.Availability = a
				_, err = env.docker.NodeUpdate(context.Background(), node, client.NodeUpdateOptions{Version: res.Node.Version, Spec: spec})
			}
			if err != nil {
				t.Fatalf("set node %s %s: %v", node, a, err)
			}
		}
		// Both tasks start on the manager: the worker is drained meanwhile.
		t.Cleanup(func() {
			availability(mn.workerNode, swarm.NodeAvailabilityActive)
			availability(managerNode, swarm.NodeAvailabilityActive)
		})
		availability(mn.workerNode, swarm.NodeAvailabilityDrain)
		app := mn.createOn(t, mnStack+"_resend", repo, v1, mnService{replicas: 2, reg: d.addr, user: watcher, pass: oldPass})
		availability(mn.workerNode, swarm.NodeAvailabilityActive)
		// The running tasks, from Docker: task ID to container ID, by node.
		running := func() map[string]string {
			t.Helper()
			res, err := env.docker.TaskList(ctx, client.TaskListOptions{
				Filters: make(client.Filters).Add("service", app).Add("desired-state", "running")})
			if err != nil {
				t.Fatal(err)
			}
			out := map[string]string{}
			for _, tk := range res.Items {
				if tk.Status.State == swarm.TaskStateRunning && tk.Status.ContainerStatus != nil {
					out[tk.ID] = tk.NodeID + "/" + tk.Status.ContainerStatus.ContainerID
				}
			}
			return out
		}
		var tasks map[string]string
		waitFor(t, 90*time.Second, "both tasks running on the manager", func() bool {
			tasks = running()
			return len(tasks) == 2 && !slices.ContainsFunc(slices.Collect(maps.Values(tasks)), func(v string) bool {
				return !strings.HasPrefix(v, managerNode+"/")
			})
		})
		if got := repoDigests(t, mn.worker, d.addr+"/"+repo); len(got) != 0 {
			t.Fatalf("the worker holds %v of %s before anything moved there", got, repo)
		}

		// The service's spec writes, from Docker's events.
		evs := recordEvents(t)
		writes := func() int {
			n := 0
			for _, m := range evs.snapshot(t) {
				if m.Actor.ID == app && m.Action == events.ActionUpdate {
					n++
				}
			}
			return n
		}
		version := func() uint64 { return inspect(t, app).Version.Index }
		// idleCycles waits for n more cycles of u and checks they wrote
		// nothing: the spec version and Docker's events say so.
		idleCycles := func(u *updater, n int, what string) {
			t.Helper()
			v, w, after := version(), writes(), u.cycles()
			waitFor(t, 30*time.Second, fmt.Sprintf("%d more cycles", n), func() bool { return u.cycles() >= after+n })
			if got := version(); got != v || writes() != w {
				t.Fatalf("%s: %d cycles wrote the spec (version %d -> %d, %d update events)", what, n, v, got, writes()-w)
			}
		}

		// No record of what the spec carries yet: adopted (recorded), not
		// written, then nothing.
		u := mn.startMN(t, "DOCKER_CONFIG="+cfgDir)
		waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })
		idleCycles(u, idle, "unchanged credentials")
		if n, r := writes(), u.count("registry credentials re-sent"); n != 0 || r != 0 {
			t.Fatalf("a service without record: %d spec writes, %d re-sends: want it adopted, not written", n, r)
		}
		if n := records(t, app, "registry-auth"); n != 1 {
			t.Fatalf("%d registry-auth records of the adopted service, want 1", n)
		}
		// Restarted, the updater finds what was sent in Swarm.
		if err := u.stop(syscall.SIGTERM); err != nil {
			t.Fatalf("stop the updater: %v", err)
		}
		u = mn.startMN(t, "DOCKER_CONFIG="+cfgDir)
		waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })
		idleCycles(u, idle, "a restarted updater")
		if n := u.count("registry credentials re-sent"); n != 0 {
			t.Fatalf("the restarted updater re-sent unchanged credentials %d times", n)
		}

		// Rotate: the registry first (old password refused), then the
		// updater's config.json, each file replaced whole.
		replace := func(path string, b []byte) {
			t.Helper()
			if err := os.WriteFile(path+".new", b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(path+".new", path); err != nil {
				t.Fatal(err)
			}
		}
		before := inspect(t, app)
		b, err := os.ReadFile(htpasswdFile(t, map[string]string{pusher: pusherPass, watcher: newPass}))
		if err != nil {
			t.Fatal(err)
		}
		replace(htpasswd, b)
		status := func(pass string) int {
			req, _ := http.NewRequest(http.MethodGet, "http://"+d.addr+"/v2/", nil)
			req.SetBasicAuth(watcher, pass)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return 0
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		waitFor(t, 30*time.Second, "the registry refusing the old password", func() bool {
			return status(oldPass) == http.StatusUnauthorized && status(newPass) == http.StatusOK
		})
		if b, err = os.ReadFile(filepath.Join(authConfigDir(t, d.addr, watcher, newPass), "config.json")); err != nil {
			t.Fatal(err)
		}
		w0, rotated := writes(), time.Now()
		replace(filepath.Join(cfgDir, "config.json"), b)

		// One auth-only write: the version moved, the spec is as it was,
		// the same tasks run in the same containers.
		waitFor(t, 30*time.Second, "a spec write after the rotation", func() bool { return writes() > w0 })
		u.waitLog(t, 15*time.Second, 1, "registry credentials re-sent", "service", mnStack+"_resend")
		after := inspect(t, app)
		if after.Version.Index == before.Version.Index || !reflect.DeepEqual(after.Spec, before.Spec) {
			t.Fatalf("after the re-send: version %d -> %d, spec changed %v: want the version moved and the spec as it was",
				before.Version.Index, after.Version.Index, !reflect.DeepEqual(after.Spec, before.Spec))
		}
		// Swarm keeps the spec written over as PreviousSpec: `docker service
		// rollback` now returns to this same spec (docs/registries.md).
		if after.PreviousSpec == nil || !reflect.DeepEqual(*after.PreviousSpec, before.Spec) {
			t.Errorf("PreviousSpec after the re-send is not the spec before it")
		}
		idleCycles(u, idle, "after the re-send")
		if n := writes() - w0; n != 1 {
			t.Fatalf("%d spec writes after the rotation, want one", n)
		}
		if got := running(); !maps.Equal(got, tasks) {
			t.Fatalf("running tasks after the re-send %v, want the same tasks in the same containers %v", got, tasks)
		}
		if n := u.count("deploy started"); n != 0 {
			t.Fatalf("%d deploys started: nothing moved", n)
		}

		// The manager drained: Swarm moves both tasks to the worker, which
		// pulls with what the re-send gave Swarm.
		availability(managerNode, swarm.NodeAvailabilityDrain)
		waitFor(t, 90*time.Second, "both tasks running on the worker", func() bool {
			got := running()
			return len(got) == 2 && !slices.ContainsFunc(slices.Collect(maps.Values(got)), func(v string) bool {
				return !strings.HasPrefix(v, mn.workerNode+"/")
			})
		})
		if got := repoDigests(t, mn.worker, d.addr+"/"+repo); !slices.Equal(got, []string{v1}) {
			t.Fatalf("the worker's dockerd holds %v of %s, want %s", got, repo, v1)
		}
		names := map[string]string{basicOf(watcher, oldPass): "old", basicOf(watcher, newPass): "new"}
		var whose []string
		for _, a := range nodeAuths(d.since(rotated, "node")) {
			whose = append(whose, cmp.Or(names[a], "other"))
		}
		if !slices.Equal(whose, []string{"new"}) {
			t.Fatalf("the worker pulled with the %v password, want the new one only (requests since the rotation: %v)", whose, tally(d.since(rotated, "node")))
		}
		t.Logf("re-sent once after the rotation (spec version %d -> %d), tasks kept; the worker pulled with the new password (the nodes' requests since the rotation: %v)",
			before.Version.Index, after.Version.Index, tally(d.since(rotated, "node")))
	})

	// 2. The same without credentials: the registry refuses the updater's
	// HEAD, so it never learns a digest and touches nothing; the refusal is
	// logged and reported once, naming the registry.
	t.Run("MissingCredentials", func(t *testing.T) {
		const repo = "e2e/mnnocreds"
		v1 := mn.pushApp(t, repo, "v1", 0)
		app := mn.createOn(t, mnStack+"_nocreds", repo, v1, mnService{constraint: "node.role==worker", auth: true})
		ver := inspect(t, app).Version.Index
		mn.pushApp(t, repo, "v2", 0)
		u := mn.startMN(t) // an empty DOCKER_CONFIG
		const down = "registry failing; retrying every cycle, logged again when it recovers"
		u.waitLog(t, 30*time.Second, 1, down)
		after := u.cycles()
		waitFor(t, 30*time.Second, "3 more cycles", func() bool { return u.cycles() >= after+3 })
		line := u.find(down)
		if e := fmt.Sprint(line["err"]); !strings.Contains(e, mn.auth) || !strings.Contains(e, "401") {
			t.Errorf("outage line %v: want the error to name the registry %s and the 401", line, mn.auth)
		}
		if n := u.count(down); n != 1 {
			t.Errorf("refusal logged %d times, want once", n)
		}
		if n := u.count("deploy started"); n != 0 {
			t.Errorf("%d deploys started without credentials", n)
		}
		if v := inspect(t, app).Version.Index; v != ver {
			t.Errorf("service spec touched: version %d -> %d", ver, v)
		}
		// `updater deploy` says the same and exits 1; it acts only once the
		// running updater has stopped and released its lease.
		if err := u.stop(syscall.SIGTERM); err != nil {
			t.Fatalf("stop the updater: %v", err)
		}
		cmd := exec.Command(env.bin, "deploy", mnStack+"_nocreds")
		cmd.Env = []string{"UPDATER_STACK=" + mnStack, "DOCKER_CONFIG=" + t.TempDir(), "UPDATER_LISTEN=127.0.0.1:0"}
		out, err := cmd.CombinedOutput()
		capture("updater command output and service logs", out)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), mn.auth) || !strings.Contains(string(out), "401") {
			t.Errorf("updater deploy without credentials: %v, want exit 1 naming %s and the 401\n%s", err, mn.auth, out)
		}
		if v := inspect(t, app).Version.Index; v != ver {
			t.Errorf("updater deploy touched the service: version %d -> %d", ver, v)
		}
	})

	// 3. A broken version on the worker fails its health check: rolled
	// back, and the failure names the worker and the task error.
	t.Run("BrokenImageOnWorker", func(t *testing.T) {
		const repo = "e2e/mnbroken"
		v1 := mn.pushApp(t, repo, "v1", 0)
		app := mn.createOn(t, mnStack+"_broken", repo, v1, mnService{constraint: "node.role==worker"})
		u := mn.startMN(t)
		waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
		bad := mn.pushApp(t, repo, "broken", 0)
		u.waitLog(t, deployLimit, 1, "deploy failed", "to_digest", bad)
		ev := u.find("deploy failed", "to_digest", bad)
		reason := fmt.Sprint(ev["err"])
		if ev["step"] != "rollout" || ev["rolled_back"] != true || !strings.Contains(reason, "on node "+mn.workerName+": ") ||
			!strings.Contains(reason, "unhealthy") {
			t.Fatalf("failure event %v: want step rollout, rolled back, the reason naming node %s and the unhealthy task", ev, mn.workerName)
		}
		waitFor(t, deployLimit, "v1 back on the worker", func() bool { _, ok := mn.running(t, app, v1)[mn.workerNode]; return ok })
	})

	// 3b. A node that can't pull the new version rejects its task. With
	// failure_action continue Swarm calls the update completed, has shut
	// v1 down, and retries without end: the updater ends the deploy at the
	// third rejection, rolls back, and names the worker and the error.
	t.Run("RejectedOnWorker", func(t *testing.T) {
		const repo = "e2e/mnreject"
		v1 := mn.pushApp(t, repo, "v1", 0)
		app := mn.createOn(t, mnStack+"_reject", repo, v1, mnService{constraint: "node.role==worker",
			failure: swarm.UpdateFailureActionContinue})
		u := mn.startMN(t)
		waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
		// The registry still answers for the tag, so the updater sees v2,
		// but its layers are gone: the worker can't pull it.
		mn.reg.denyBlobs(repo, true)
		t.Cleanup(func() { mn.reg.denyBlobs(repo, false) })
		v2 := mn.pushApp(t, repo, "v2", 1<<10)
		start := time.Now()
		u.waitLog(t, deployLimit, 1, "deploy failed", "to_digest", v2)
		ev := u.find("deploy failed", "to_digest", v2)
		reason := fmt.Sprint(ev["err"])
		if ev["step"] != "rollout" || ev["rolled_back"] != true || !strings.Contains(reason, "rejected 3 times") ||
			!strings.Contains(reason, "on node "+mn.workerName+": ") {
			t.Fatalf("failure event %v: want step rollout, rolled back, three rejections on node %s", ev, mn.workerName)
		}
		if took := time.Since(start); took > mnTimeout/2 {
			t.Errorf("the rejected deploy took %s to end: it waited for the deadline", took)
		}
		waitFor(t, deployLimit, "v1 back on the worker", func() bool { _, ok := mn.running(t, app, v1)[mn.workerNode]; return ok })
		t.Logf("rejected deploy ended in %s: %s", time.Since(start).Round(time.Second), reason)
	})

	// 4. Three deploys with pruning on, keeping one previous version: on
	// both nodes only the current and the previous image of the repository
	// remain, and a rollback right after a deploy starts without a pull.
	t.Run("PruneKeepsCurrentAndPrevious", func(t *testing.T) {
		const repo = "e2e/mnprune"
		v1 := mn.pushApp(t, repo, "v1", 64<<10)
		app := mn.createOn(t, mnStack+"_prune", repo, v1, mnService{global: true})
		u := mn.startMN(t, "UPDATER_PRUNE=after-deploy", "UPDATER_PRUNE_KEEP=1", "UPDATER_PRUNE_IMAGE="+mn.pruneImage)
		waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
		digests := []string{v1}
		for i, v := range []string{"v2", "v3", "v4"} {
			d := mn.pushApp(t, repo, v, 64<<10)
			digests = append(digests, d)
			u.waitLog(t, deployLimit, i+1, "deploy succeeded", "service", mnStack+"_prune")
			u.waitLog(t, time.Minute, 2*(i+1), "images pruned", "service", mnStack+"_prune")
			if len(mn.running(t, app, d)) != 2 {
				t.Fatalf("%s not running on both nodes after its deploy", v)
			}
		}
		if n := u.count("prune failed on a node") + u.count("prune failed; the images stay until a later deploy prunes them"); n != 0 {
			t.Fatalf("%d prune failures:\n%s", n, u.log())
		}
		want := []string{digests[2], digests[3]}
		sort.Strings(want)
		for node, c := range map[string]*client.Client{mn.manager: env.docker, mn.workerName: mn.worker} {
			if got := repoDigests(t, c, mn.open+"/"+repo); !slices.Equal(got, want) {
				t.Errorf("images of %s on %s: %v, want only v3 and v4 %v", repo, node, got, want)
			}
		}
		for _, node := range []string{mn.manager, mn.workerName} {
			if u.count("images pruned", "service", mnStack+"_prune", "node", node) != 3 {
				t.Errorf("node %s pruned %d times, want 3", node, u.count("images pruned", "node", node))
			}
		}
		var freed float64
		for _, l := range u.matching("images pruned") {
			freed += l["bytes"].(float64)
		}
		t.Logf("3 deploys pruned %.0f bytes over both nodes", freed)

		// Stop the updater first: the tag is on v4, so it would deploy v4
		// again right after the rollback.
		u.stop(syscall.SIGTERM)
		pulls := mn.reg.pulls(repo)
		if _, err := env.docker.ServiceUpdate(t.Context(), app, client.ServiceUpdateOptions{
			Version: inspect(t, app).Version, Spec: inspect(t, app).Spec, Rollback: "previous"}); err != nil {
			t.Fatalf("roll back: %v", err)
		}
		start := time.Now()
		waitFor(t, deployLimit, "v3 back on both nodes", func() bool { return len(mn.running(t, app, digests[2])) == 2 })
		if n := mn.reg.pulls(repo) - pulls; n != 0 {
			t.Errorf("the rollback pulled: %d manifest/blob GETs of %s", n, repo)
		}
		t.Logf("rollback to v3 on both nodes took %s, without a pull", time.Since(start).Round(100*time.Millisecond))
	})

	// The updater as it is deployed: a service on the manager, from its own
	// image, with the Docker socket, while the app runs on the worker. It
	// finds its own image for the prune job by inspecting its container.
	t.Run("UpdaterServiceOnManager", func(t *testing.T) {
		const repo = "e2e/mnplaced"
		// An old version on both nodes, untagged as a deploy leaves it and
		// used by nothing: the prune must remove it on each, the manager
		// included, where the updater itself runs.
		v0 := mn.pushApp(t, repo, "v1", 0)
		nodes := map[string]*client.Client{mn.manager: env.docker, mn.workerName: mn.worker}
		for node, c := range nodes {
			res, err := c.ImagePull(t.Context(), mn.open+"/"+repo+"@"+v0, client.ImagePullOptions{})
			if err == nil {
				err = res.Wait(t.Context())
			}
			if err != nil {
				t.Fatalf("pull v0 on %s: %v", node, err)
			}
		}
		v1 := mn.pushApp(t, repo, "v1", 0)
		app := mn.createOn(t, mnStack+"_placed", repo, v1, mnService{constraint: "node.role==worker"})
		name := mn.startUpdaterService(t)
		logs := stackLogs{service: name}
		logs.wait(t, "updater started")
		v2 := mn.pushApp(t, repo, "v2", 0)
		logs.wait(t, "deploy succeeded", "to_digest", v2)
		if _, ok := mn.running(t, app, v2)[mn.workerNode]; !ok {
			t.Fatal("v2 reported but not running on the worker")
		}
		for _, node := range []string{mn.manager, mn.workerName} {
			logs.wait(t, "images pruned", "node", node)
		}
		if l := logs.find("images pruned", "node", mn.workerName); l["image"] != mn.open+"/"+repo {
			t.Errorf("prune line %v: want it about %s", l, mn.open+"/"+repo)
		}
		// What each node's dockerd holds now: the manager kept nothing of
		// the repository (the app never ran there), the worker the current
		// version and the previous one (UPDATER_PRUNE_KEEP defaults to 1).
		for node, want := range map[string][]string{mn.manager: nil, mn.workerName: {v1, v2}} {
			got := repoDigests(t, nodes[node], mn.open+"/"+repo)
			sort.Strings(want)
			if slices.Contains(got, v0) || !slices.Equal(got, want) {
				t.Errorf("images of %s on %s after the prune: %v, want %v (v0 %s gone)", repo, node, got, want, v0[:19])
			}
		}
	})

	// 5. The worker's dockerd dies mid-rollout and comes back: the deploy
	// ends in a defined state (promoted once the task is rescheduled, or
	// failed and rolled back) within the deadline, reported once.
	t.Run("WorkerDiesMidRollout", func(t *testing.T) {
		const repo = "e2e/mnkill"
		v1 := mn.pushApp(t, repo, "v1", 0)
		app := mn.createOn(t, mnStack+"_kill", repo, v1, mnService{constraint: "node.role==worker"})
		u := mn.startMN(t)
		waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
		v2 := mn.pushApp(t, repo, "v2", 0)
		u.waitLog(t, 30*time.Second, 1, "deploy started", "to_digest", v2)
		started := time.Now()
		waitFor(t, 30*time.Second, "the rollout to begin", func() bool { return specDigest(t, app) == v2 })
		mn.script(t, "kill-worker")
		waitFor(t, time.Minute, "the manager to see the worker down", func() bool { return mn.nodeState(t) == swarm.NodeStateDown })
		mn.script(t, "start-worker")
		waitFor(t, time.Minute, "the worker back", func() bool { return mn.nodeState(t) == swarm.NodeStateReady })

		waitFor(t, mnTimeout+deployLimit, "the deploy's outcome", func() bool {
			return u.count("deploy succeeded")+u.count("deploy failed") > 0
		})
		took := time.Since(started)
		after := u.cycles()
		waitFor(t, 30*time.Second, "2 more cycles", func() bool { return u.cycles() >= after+2 })
		succeeded, failed := u.find("deploy succeeded", "to_digest", v2), u.find("deploy failed", "to_digest", v2)
		switch {
		case u.count("deploy succeeded")+u.count("deploy failed") != 1:
			t.Fatalf("%d outcomes reported, want exactly 1", u.count("deploy succeeded")+u.count("deploy failed"))
		case succeeded != nil:
			waitFor(t, time.Minute, "v2 on the worker", func() bool { _, ok := mn.running(t, app, v2)[mn.workerNode]; return ok })
			t.Logf("outcome after %s: promoted once the task was rescheduled", took.Round(time.Second))
		case failed != nil:
			if failed["rolled_back"] != true || !strings.Contains(fmt.Sprint(failed["err"]), mn.workerName) {
				t.Fatalf("failure %v: want it rolled back, naming the worker %s", failed, mn.workerName)
			}
			waitFor(t, time.Minute, "v1 on the worker", func() bool { _, ok := mn.running(t, app, v1)[mn.workerNode]; return ok })
			t.Logf("outcome after %s: failed and rolled back: %v", took.Round(time.Second), failed["err"])
		}
		// The deadline is the rollout's; a rollback after it has its own.
		if took > 2*mnTimeout+30*time.Second {
			t.Errorf("the outcome came after %s, past the deadline", took)
		}
		if n := u.count("deploy started"); n != 1 {
			t.Errorf("%d deploys started, want 1", n)
		}
	})
}

func keys(m map[string]swarm.Task) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (mn *multiNode) script(tb testing.TB, arg string) {
	tb.Helper()
	out, err := exec.Command("./multinode.sh", arg).CombinedOutput()
	if err != nil {
		tb.Fatalf("multinode.sh %s: %v\n%s", arg, err, out)
	}
}

func (mn *multiNode) nodeState(tb testing.TB) swarm.NodeState {
	tb.Helper()
	res, err := env.docker.NodeInspect(context.Background(), mn.workerNode, client.NodeInspectOptions{})
	if err != nil {
		return ""
	}
	return res.Node.Status.State
}

// deployNow runs `updater deploy SERVICE` (no updater runs meanwhile, so
// it holds the lease) and returns how long it took.
func (mn *multiNode) deployNow(tb testing.TB, svc string, extra ...string) (time.Duration, string) {
	tb.Helper()
	cmd := exec.Command(env.bin, "deploy", svc)
	cmd.Env = append([]string{"UPDATER_STACK=" + mnStack, "DOCKER_CONFIG=" + mn.creds, "UPDATER_LISTEN=127.0.0.1:0",
		"UPDATER_WATCH_INTERVAL=200ms", "UPDATER_DEPLOY_TIMEOUT=" + mnTimeout.String(), "UPDATER_LOG_FORMAT=json"}, extra...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	capture("updater command output and service logs", out)
	took := time.Since(start)
	if err != nil {
		tb.Fatalf("updater deploy %s: %v\n%s", svc, err, out)
	}
	return took, string(out)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkMultiNodeDeploy is the time of one deploy (`updater deploy`:
// registry HEAD, spec update, the new task pulled, started and healthy,
// the old one gone) of a service on the worker and of one on the manager.
// Each op is one deploy of a new version; the median is reported too.
// Run: make bench-e2e-multinode.
func BenchmarkMultiNodeDeploy(b *testing.B) {
	mn := setupMultiNode(b)
	for _, where := range []string{"worker", "manager"} {
		b.Run(where, func(b *testing.B) {
			repo := "e2e/mnbench-" + where
			v1 := mn.pushApp(b, repo, "v1", 0)
			svc := mnStack + "_bench_" + where
			app := mn.createOn(b, svc, repo, v1, mnService{constraint: "node.role==" + where})
			var took []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				d := mn.pushApp(b, repo, []string{"v2", "v3", "v4", "v1"}[i%4], 1<<20)
				b.StartTimer()
				t, _ := mn.deployNow(b, svc)
				b.StopTimer()
				took = append(took, t)
				if _, ok := mn.running(b, app, d)[map[string]string{"worker": mn.workerNode}[where]]; where == "worker" && !ok {
					b.Fatalf("deploy %d did not land on the worker", i)
				}
				b.StartTimer()
			}
			b.StopTimer()
			b.ReportMetric(median(took).Seconds(), "s-median/deploy")
			b.Logf("%s: %d deploys, each %v, median %s", where, len(took), took, median(took).Round(10*time.Millisecond))
		})
	}
}

// BenchmarkMultiNodePrune deploys a service that runs on both nodes b.N
// times with pruning on (UPDATER_PRUNE_KEEP=1), each version with its own
// 4 MiB layer besides the app's, and reports the bytes pruning gave back
// over both nodes, as the updater counted them and as the nodes' disk
// usage shows. Run: make bench-e2e-multinode (10 deploys).
func BenchmarkMultiNodePrune(b *testing.B) {
	mn := setupMultiNode(b)
	const repo = "e2e/mnbenchprune"
	v1 := mn.pushApp(b, repo, "v1", 4<<20)
	svc := mnStack + "_benchprune"
	mn.createOn(b, svc, repo, v1, mnService{global: true})
	nodes := map[string]*client.Client{mn.manager: env.docker, mn.workerName: mn.worker}
	before := map[string]int64{}
	for n, c := range nodes {
		before[n] = layersSize(b, c)
	}
	var reported float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		mn.pushApp(b, repo, []string{"v2", "v3", "v4", "v1"}[i%4], 4<<20)
		b.StartTimer()
		_, out := mn.deployNow(b, svc, "UPDATER_PRUNE=after-deploy", "UPDATER_PRUNE_KEEP=1", "UPDATER_PRUNE_IMAGE="+mn.pruneImage)
		b.StopTimer()
		for _, line := range strings.Split(out, "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "images pruned" {
				reported += m["bytes"].(float64)
			}
		}
		b.StartTimer()
	}
	b.StopTimer()
	var disk int64
	for n, c := range nodes {
		after := layersSize(b, c)
		disk += after - before[n]
		b.Logf("%s: %d images of %s left, layers %d -> %d bytes", n, len(repoDigests(b, c, mn.open+"/"+repo)), repo, before[n], after)
	}
	b.ReportMetric(reported, "bytes-pruned")
	b.ReportMetric(float64(disk), "bytes-grown")
	b.Logf("%d deploys: the updater pruned %.0f bytes over both nodes; their image layers grew by %d bytes in all (the versions kept, the prune image)", b.N, reported, disk)
}

// layersSize is the disk a node's image layers take (docker system df).
func layersSize(tb testing.TB, c *client.Client) int64 {
	tb.Helper()
	du, err := c.DiskUsage(context.Background(), client.DiskUsageOptions{Images: true})
	if err != nil {
		tb.Fatal(err)
	}
	return du.Images.TotalSize
}
