//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
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
)

// authRegistry is a second registry on 127.0.0.1 that lets in only one
// user and remembers every Authorization header it was sent, so a test can
// tell whose credentials reached it.
type authRegistry struct {
	addr string
	want string // the Authorization header it accepts
	mu   sync.Mutex
	seen []string
}

func startAuthRegistry(t testing.TB, user, pass string) *authRegistry {
	t.Helper()
	r := &authRegistry{want: "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		a := req.Header.Get("Authorization")
		r.mu.Lock()
		r.seen = append(r.seen, a)
		r.mu.Unlock()
		if a != r.want {
			w.Header().Set("WWW-Authenticate", `Basic realm="e2e-two"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, req)
	})}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	r.addr = l.Addr().String()
	return r
}

func (r *authRegistry) headers() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

// A hook image on another registry is pulled with that registry's
// credentials: the updater's credentials for the service's registry never
// reach it (before, every hook job carried the service's, so whoever wrote
// the label collected them).
func TestHookImageGetsItsOwnRegistrysCredentials(t *testing.T) {
	const stack, repo = "e2ecred", "e2e/cred"
	const user2, pass2 = "e2e-two", "e2e-second-registry-password-987"
	addSecret("second registry password", pass2)
	two := startAuthRegistry(t, user2, pass2)

	// The backup runs the updater binary's `version` (it exits 0) in an
	// image that lives only on the second registry.
	bin, err := os.ReadFile(env.bin)
	if err != nil {
		t.Fatal(err)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	if err := tw.WriteHeader(&tar.Header{Name: "updater", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(bin)
	tw.Close()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layer.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err == nil {
		img, err = mutate.Config(img, v1.Config{Entrypoint: []string{"/updater"}})
	}
	if err != nil {
		t.Fatal(err)
	}
	hookRef := two.addr + "/e2e/backup:1"
	ref, err := name.ParseReference(hookRef, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: user2, Password: pass2})); err != nil {
		t.Fatalf("push the hook image to the second registry: %v", err)
	}

	// Credentials for both registries, as `docker login` to each writes them.
	cfgDir := t.TempDir()
	cfg, _ := json.Marshal(map[string]any{"auths": map[string]any{
		env.faulty: map[string]string{"auth": registryAuth()},
		two.addr:   map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user2 + ":" + pass2))},
	}})
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}

	v1d := push(t, repo, "v1")
	app := createService(t, stack+"_app", repo, v1d, svcOpts{stack: stack, optIn: true, labels: map[string]string{
		"updater.backup.image":   hookRef,
		"updater.backup.command": "/updater version",
		"updater.hooks.timeout":  "60s",
	}})
	evs := recordEvents(t)
	// The operator allows hook images from the second registry.
	u := startUpdater(t, stack, "DOCKER_CONFIG="+cfgDir, "UPDATER_HOOK_IMAGES="+two.addr)
	waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })

	v2d := push(t, repo, "v2")
	waitFor(t, 90*time.Second, "the deploy's outcome", func() bool {
		return u.count("deploy succeeded", "service", stack+"_app")+u.count("deploy failed", "service", stack+"_app") > 0
	})

	// The second registry saw its own user's credentials (the node's pull
	// of the hook image) and never the first registry's.
	first := "Basic " + registryAuth()
	authorized := 0
	for _, h := range two.headers() {
		switch h {
		case first:
			t.Fatalf("the second registry was sent the first registry's credentials")
		case two.want:
			authorized++
		case "":
		default:
			t.Errorf("the second registry was sent unexpected credentials (%d bytes)", len(h))
		}
	}
	if authorized == 0 {
		t.Fatalf("the second registry saw no authorized request (%d requests): the hook image was not pulled with its credentials", len(two.headers()))
	}
	t.Logf("second registry: %d requests, %d with its own credentials, none with the first's", len(two.headers()), authorized)

	// From Docker: the backup job ran, then the service moved to v2.
	if u.count("deploy succeeded", "service", stack+"_app") != 1 {
		t.Fatalf("the deploy did not succeed once")
	}
	if jobs := evs.jobs(t, stack+"_app", "backup"); len(jobs) != 1 {
		t.Fatalf("backup jobs in Docker's events: %+v, want one", jobs)
	}
	evs.wantImageWrites(t, app, v2d)
	waitFor(t, 30*time.Second, "every task on v2", func() bool { return allRunning(t, app, v2d) })
}
