package registry

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/updater-dev/updater/internal/deploy"
)

// fakeRegistry is go-containerregistry's in-memory registry behind a
// wrapper that counts requests by method and kind and can inject faults.
type fakeRegistry struct {
	host string

	mu     sync.Mutex
	counts map[string]int
	fault  func(w http.ResponseWriter, r *http.Request) bool // true: answered
}

func newFakeRegistry(t *testing.T) *fakeRegistry {
	t.Helper()
	f := &fakeRegistry{counts: map[string]int{}}
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.counts[r.Method+" "+kind(r.URL.Path)]++
		fault := f.fault
		f.mu.Unlock()
		if fault != nil && fault(w, r) {
			return
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.host = strings.TrimPrefix(srv.URL, "http://")
	return f
}

func kind(path string) string {
	switch {
	case path == "/v2/":
		return "ping"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case path == "/token":
		return "token"
	}
	return "other"
}

// inject installs fault and zeroes the counters, so pushes made before do
// not count.
func (f *fakeRegistry) inject(fault func(w http.ResponseWriter, r *http.Request) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault = fault
	f.counts = map[string]int{}
}

func (f *fakeRegistry) reset() { f.mu.Lock(); f.counts = map[string]int{}; f.mu.Unlock() }

func (f *fakeRegistry) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[key]
}

func (f *fakeRegistry) snapshot() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for k, v := range f.counts {
		out[k] = v
	}
	return out
}

func (f *fakeRegistry) ref(repoTag string) string { return f.host + "/" + repoTag }

func (f *fakeRegistry) pushImage(t *testing.T, repoTag string) string {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(mustParse(t, f.ref(repoTag)), img); err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	f.reset()
	return d.String()
}

// onManifestHEAD applies fn to manifest HEADs only; the n-th one (from 1)
// is passed so faults can stop after a few.
func onManifestHEAD(fn func(n int, w http.ResponseWriter, r *http.Request) bool) func(http.ResponseWriter, *http.Request) bool {
	var n atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodHead || kind(r.URL.Path) != "manifest" {
			return false
		}
		return fn(int(n.Add(1)), w, r)
	}
}

func failFirst(times, code int, header ...string) func(http.ResponseWriter, *http.Request) bool {
	return onManifestHEAD(func(n int, w http.ResponseWriter, _ *http.Request) bool {
		if times >= 0 && n > times {
			return false
		}
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(code)
		return true
	})
}

// requireBasic answers 401 unless the request carries user and the
// current *pass.
func requireBasic(user string, pass *atomic.Pointer[string]) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if u, p, ok := r.BasicAuth(); ok && u == user && p == *pass.Load() {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		return true
	}
}

// testKeychain hands out cfg for host, anonymous for anything else.
type testKeychain struct {
	host string
	mu   sync.Mutex
	cfg  authn.AuthConfig
}

var _ authn.Keychain = (*testKeychain)(nil)

func (k *testKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if r.RegistryStr() != k.host || k.cfg == (authn.AuthConfig{}) {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(k.cfg), nil
}

func (k *testKeychain) set(cfg authn.AuthConfig) { k.mu.Lock(); k.cfg = cfg; k.mu.Unlock() }

func anonymous() authn.Keychain { return authn.NewMultiKeychain() }

func TestDigestIsOneHeadAndNoGet(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	want := f.pushImage(t, "app:latest")
	c := New(Config{Keychain: anonymous()})

	for call := 1; call <= 3; call++ {
		f.reset()
		got, err := c.Digest(context.Background(), f.ref("app:latest"))
		if err != nil {
			t.Fatalf("call %d: %v", call, err)
		}
		if got != want {
			t.Fatalf("call %d: digest %s, want %s", call, got, want)
		}
		counts := f.snapshot()
		t.Logf("call %d: requests %v", call, counts)
		if counts["HEAD manifest"] != 1 || counts["GET manifest"] != 0 {
			t.Errorf("call %d: %d HEAD and %d GET manifest requests, want 1 and 0", call, counts["HEAD manifest"], counts["GET manifest"])
		}
		wantPings := 0
		if call == 1 {
			wantPings = 1
		}
		if counts["GET ping"] != wantPings {
			t.Errorf("call %d: %d pings, want %d (the session should be reused)", call, counts["GET ping"], wantPings)
		}
		if len(counts) != 1+wantPings {
			t.Errorf("call %d: unexpected requests %v", call, counts)
		}
	}
}

func TestDigestOfMultiArchIsIndexDigest(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	idx, err := random.Index(256, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(mustParse(t, f.ref("multi:1")), idx); err != nil {
		t.Fatal(err)
	}
	want, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	f.reset()

	got, err := New(Config{Keychain: anonymous()}).Digest(context.Background(), f.ref("multi:1"))
	if err != nil {
		t.Fatal(err)
	}
	if got != want.String() {
		t.Errorf("digest %s, want index digest %s", got, want)
	}
	if n := f.count("GET manifest"); n != 0 {
		t.Errorf("%d manifest GETs, want 0", n)
	}
}

func TestDigestNotFound(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	f.pushImage(t, "app:latest")
	c := New(Config{Keychain: anonymous(), MaxBackoff: time.Millisecond})

	for _, ref := range []string{f.ref("app:missing"), f.ref("nope:latest")} {
		f.reset()
		_, err := c.Digest(context.Background(), ref)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: got %v, want ErrNotFound", ref, err)
		}
		if errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s: not found is also unauthorized: %v", ref, err)
		}
		if want := "resolve " + ref + ": 404 not found"; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("error %q, want prefix %q", err, want)
		}
		if n := f.count("HEAD manifest"); n != 1 {
			t.Errorf("%s: %d HEADs, want 1 (404 is not retried)", ref, n)
		}
	}
}

func TestDigestWithBasicAuth(t *testing.T) {
	t.Parallel()
	const user, secret = "deployer", "s3cret-pa55word"
	f := newFakeRegistry(t)
	want := f.pushImage(t, "private:1")
	var pass atomic.Pointer[string]
	pass.Store(ptr(secret))
	f.inject(requireBasic(user, &pass))
	basic := base64.StdEncoding.EncodeToString([]byte(user + ":" + secret))

	t.Run("anonymous", func(t *testing.T) {
		f.reset()
		_, err := New(Config{Keychain: anonymous()}).Digest(context.Background(), f.ref("private:1"))
		if !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("got %v, want ErrUnauthorized", err)
		}
		if !strings.Contains(err.Error(), "401 unauthorized") || !strings.Contains(err.Error(), f.ref("private:1")) {
			t.Errorf("error %q should name the ref and the status", err)
		}
		if n := f.count("HEAD manifest"); n != 1 {
			t.Errorf("%d HEADs, want 1 (401 is not retried)", n)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		kc := &testKeychain{host: f.host, cfg: authn.AuthConfig{Username: user, Password: "wrong-" + secret}}
		_, err := New(Config{Keychain: kc}).Digest(context.Background(), f.ref("private:1"))
		if !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("got %v, want ErrUnauthorized", err)
		}
		for _, s := range []string{secret, basic, "Authorization"} {
			if strings.Contains(err.Error(), s) || strings.Contains(fmt.Sprintf("%+v", err), s) {
				t.Errorf("error %q leaks %q", err, s)
			}
		}
	})
	t.Run("right password", func(t *testing.T) {
		kc := &testKeychain{host: f.host, cfg: authn.AuthConfig{Username: user, Password: secret}}
		got, err := New(Config{Keychain: kc}).Digest(context.Background(), f.ref("private:1"))
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("digest %s, want %s", got, want)
		}
	})
}

func TestDigestPicksUpRotatedCredentials(t *testing.T) {
	t.Parallel()
	const user = "deployer"
	f := newFakeRegistry(t)
	want := f.pushImage(t, "private:1")
	var pass atomic.Pointer[string]
	pass.Store(ptr("old"))
	f.inject(requireBasic(user, &pass))
	kc := &testKeychain{host: f.host, cfg: authn.AuthConfig{Username: user, Password: "old"}}
	c := New(Config{Keychain: kc})

	if _, err := c.Digest(context.Background(), f.ref("private:1")); err != nil {
		t.Fatal(err)
	}
	pass.Store(ptr("new"))
	kc.set(authn.AuthConfig{Username: user, Password: "new"})
	got, err := c.Digest(context.Background(), f.ref("private:1"))
	if err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if got != want {
		t.Errorf("digest %s, want %s", got, want)
	}
}

// tokenAuth is a Docker token-auth registry in miniature: /token swaps
// basic credentials for the current token, everything under /v2/ wants it.
type tokenAuth struct {
	host, user, pass string
	token            atomic.Pointer[string]
	tokens429        atomic.Int64 // answer this many token requests with 429 first
}

func (a *tokenAuth) fault(w http.ResponseWriter, r *http.Request) bool {
	if r.URL.Path == "/token" {
		if a.tokens429.Add(-1) >= 0 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		if u, p, ok := r.BasicAuth(); !ok || u != a.user || p != a.pass {
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"token":%q}`, *a.token.Load())
		return true
	}
	if r.Header.Get("Authorization") == "Bearer "+*a.token.Load() {
		return false
	}
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="fake",scope="repository:app:pull"`, a.host))
	w.WriteHeader(http.StatusUnauthorized)
	return true
}

func TestDigestWithTokenAuth(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	want := f.pushImage(t, "app:latest")
	a := &tokenAuth{host: f.host, user: "deployer", pass: "s3cret"}
	a.token.Store(ptr("token-1"))
	a.tokens429.Store(1)
	f.inject(a.fault)
	kc := &testKeychain{host: f.host, cfg: authn.AuthConfig{Username: a.user, Password: a.pass}}
	c := New(Config{Keychain: kc, MaxBackoff: 10 * time.Millisecond})

	for call := 1; call <= 2; call++ {
		f.reset()
		got, err := c.Digest(context.Background(), f.ref("app:latest"))
		if err != nil {
			t.Fatalf("call %d: %v", call, err)
		}
		if got != want {
			t.Errorf("call %d: digest %s, want %s", call, got, want)
		}
		t.Logf("call %d: requests %v", call, f.snapshot())
	}
	if counts := f.snapshot(); counts["HEAD manifest"] != 1 || len(counts) != 1 {
		t.Errorf("second call: requests %v, want one HEAD (token reused)", counts)
	}

	a.token.Store(ptr("token-2")) // the old token expired
	f.reset()
	if _, err := c.Digest(context.Background(), f.ref("app:latest")); err != nil {
		t.Fatalf("after token expiry: %v", err)
	}
	t.Logf("after expiry: requests %v", f.snapshot())

	kc.set(authn.AuthConfig{Username: a.user, Password: "wrong"})
	_, err := New(Config{Keychain: kc}).Digest(context.Background(), f.ref("app:latest"))
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong password: got %v, want ErrUnauthorized", err)
	}
	if strings.Contains(err.Error(), "token-") {
		t.Errorf("error %q leaks a token", err)
	}
	t.Logf("wrong password: %v", err)
}

func TestDigestHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	want := f.pushImage(t, "app:latest")
	f.inject(failFirst(1, http.StatusTooManyRequests, "Retry-After", "1"))

	start := time.Now()
	got, err := New(Config{Keychain: anonymous()}).Digest(context.Background(), f.ref("app:latest"))
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("digest %s, want %s", got, want)
	}
	if elapsed < time.Second {
		t.Errorf("retried after %v, want at least the 1s Retry-After", elapsed)
	}
	if n := f.count("HEAD manifest"); n != 2 {
		t.Errorf("%d HEADs, want 2", n)
	}
}

func TestDigestRetryAfterIsCapped(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	f.pushImage(t, "app:latest")

	t.Run("by MaxBackoff", func(t *testing.T) {
		f.inject(failFirst(1, http.StatusTooManyRequests, "Retry-After", "30"))
		start := time.Now()
		_, err := New(Config{Keychain: anonymous(), MaxBackoff: 50 * time.Millisecond}).Digest(context.Background(), f.ref("app:latest"))
		if err != nil {
			t.Fatal(err)
		}
		if elapsed := time.Since(start); elapsed > time.Second {
			t.Errorf("took %v, want the wait capped at 50ms", elapsed)
		}
	})
	t.Run("by the deadline", func(t *testing.T) {
		f.inject(failFirst(-1, http.StatusTooManyRequests, "Retry-After", "5"))
		start := time.Now()
		_, err := New(Config{Keychain: anonymous(), Timeout: time.Second}).Digest(context.Background(), f.ref("app:latest"))
		if elapsed := time.Since(start); elapsed > 500*time.Millisecond {
			t.Errorf("took %v; a wait past the deadline should give up at once", elapsed)
		}
		if err == nil || !strings.Contains(err.Error(), "429 too many requests") {
			t.Errorf("got %v, want the registry's 429", err)
		}
		if n := f.count("HEAD manifest"); n != 1 {
			t.Errorf("%d HEADs, want 1", n)
		}
	})
}

func TestDigestRetriesServerErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		code      int
		failures  int // -1: forever
		retries   int
		wantHEADs int
		wantErr   bool
	}{
		{"500 twice then ok", http.StatusInternalServerError, 2, 0, 3, false},
		{"502 once then ok", http.StatusBadGateway, 1, 0, 2, false},
		{"503 once then ok", http.StatusServiceUnavailable, 1, 0, 2, false},
		{"504 once then ok", http.StatusGatewayTimeout, 1, 0, 2, false},
		{"500 forever, default retries", http.StatusInternalServerError, -1, 0, 4, true},
		{"500 forever, 2 retries", http.StatusInternalServerError, -1, 2, 3, true},
		{"500 forever, no retries", http.StatusInternalServerError, -1, -1, 1, true},
		{"403 is not retried", http.StatusForbidden, -1, 0, 1, true},
		{"400 is not retried", http.StatusBadRequest, -1, 0, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeRegistry(t)
			want := f.pushImage(t, "app:latest")
			f.inject(failFirst(tt.failures, tt.code))
			c := New(Config{Keychain: anonymous(), Retries: tt.retries, MaxBackoff: 10 * time.Millisecond})

			got, err := c.Digest(context.Background(), f.ref("app:latest"))
			if n := f.count("HEAD manifest"); n != tt.wantHEADs {
				t.Errorf("%d HEADs, want %d", n, tt.wantHEADs)
			}
			if tt.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				wantMsg := fmt.Sprintf("resolve %s: %d %s", f.ref("app:latest"), tt.code, strings.ToLower(http.StatusText(tt.code)))
				if !strings.HasPrefix(err.Error(), wantMsg) {
					t.Errorf("error %q, want prefix %q", err, wantMsg)
				}
				if errors.Is(err, ErrNotFound) {
					t.Errorf("%v is ErrNotFound", err)
				}
				if got := errors.Is(err, ErrUnauthorized); got != (tt.code == http.StatusForbidden) {
					t.Errorf("errors.Is(%v, ErrUnauthorized) = %v", err, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("digest %s, want %s", got, want)
			}
		})
	}
}

func TestDigestGivesUpAtTimeout(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	f.pushImage(t, "app:latest")
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the server's Close, which waits for handlers
	f.inject(onManifestHEAD(func(_ int, _ http.ResponseWriter, r *http.Request) bool {
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return true
	}))

	const timeout = 300 * time.Millisecond
	start := time.Now()
	_, err := New(Config{Keychain: anonymous(), Timeout: timeout}).Digest(context.Background(), f.ref("app:latest"))
	elapsed := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "did not answer in time") || !strings.Contains(err.Error(), f.ref("app:latest")) {
		t.Errorf("error %q should name the ref and say it timed out", err)
	}
	if elapsed < timeout || elapsed > timeout+700*time.Millisecond {
		t.Errorf("gave up after %v, want about %v", elapsed, timeout)
	}
}

func TestDigestWithoutDigestHeader(t *testing.T) {
	t.Parallel()
	for _, header := range []string{"", "sha256:not-hex", "sha256:abc"} {
		t.Run(fmt.Sprintf("%q", header), func(t *testing.T) {
			t.Parallel()
			f := newFakeRegistry(t)
			f.pushImage(t, "app:latest")
			f.inject(onManifestHEAD(func(_ int, w http.ResponseWriter, _ *http.Request) bool {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Header().Set("Content-Length", "100")
				if header != "" {
					w.Header().Set("Docker-Content-Digest", header)
				}
				w.WriteHeader(http.StatusOK)
				return true
			}))
			d, err := New(Config{Keychain: anonymous()}).Digest(context.Background(), f.ref("app:latest"))
			if err == nil {
				t.Fatalf("got digest %q, want an error", d)
			}
			if !strings.Contains(err.Error(), "Docker-Content-Digest") || !strings.HasPrefix(err.Error(), "resolve "+f.ref("app:latest")) {
				t.Errorf("unclear error %q", err)
			}
			if n := f.count("GET manifest"); n != 0 {
				t.Errorf("%d manifest GETs, want 0", n)
			}
		})
	}
}

func TestDigestRejectsMalformedRef(t *testing.T) {
	t.Parallel()
	c := New(Config{Keychain: anonymous()})
	for _, ref := range []string{"", "Upper/Case:1", "app:tag:extra", "app@sha256:short", "127.0.0.1:5000/app:tag@sha256:0"} {
		_, err := c.Digest(context.Background(), ref)
		if err == nil {
			t.Errorf("%q: no error", ref)
			continue
		}
		if !strings.Contains(err.Error(), "for example 127.0.0.1:5000/app:latest") || !strings.Contains(err.Error(), fmt.Sprintf("%q", ref)) {
			t.Errorf("%q: error %q should quote the ref and show a valid one", ref, err)
		}
		if _, err := c.Credentials(context.Background(), ref); err == nil {
			t.Errorf("Credentials(%q): no error", ref)
		}
	}
}

func TestDigestConcurrent(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	want := f.pushImage(t, "app:latest")
	c := New(Config{Keychain: anonymous()})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			got, err := c.Digest(context.Background(), f.ref("app:latest"))
			if err != nil || got != want {
				t.Errorf("got %q, %v; want %s", got, err, want)
			}
		})
	}
	wg.Wait()
}

func TestCredentials(t *testing.T) {
	t.Parallel()
	const host = "registry.example.com:5000"
	ref := host + "/team/app:latest"
	tests := []struct {
		name string
		cfg  authn.AuthConfig
		want deploy.Credentials
	}{
		{"anonymous", authn.AuthConfig{}, deploy.Credentials{}},
		{"basic", authn.AuthConfig{Username: "u", Password: "p"},
			deploy.Credentials{ServerAddress: host, Username: "u", Password: "p"}},
		{"auth field only", authn.AuthConfig{Auth: base64.StdEncoding.EncodeToString([]byte("u:p:with:colons"))},
			deploy.Credentials{ServerAddress: host, Username: "u", Password: "p:with:colons"}},
		{"identity token", authn.AuthConfig{Username: "<token>", IdentityToken: "idt"},
			deploy.Credentials{ServerAddress: host, Username: "<token>", IdentityToken: "idt"}},
		{"registry token", authn.AuthConfig{RegistryToken: "rt"},
			deploy.Credentials{ServerAddress: host, RegistryToken: "rt"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := New(Config{Keychain: &testKeychain{host: host, cfg: tt.cfg}})
			got, err := c.Credentials(context.Background(), ref)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}

	t.Run("other registry is anonymous", func(t *testing.T) {
		t.Parallel()
		c := New(Config{Keychain: &testKeychain{host: host, cfg: authn.AuthConfig{Username: "u", Password: "p"}}})
		got, err := c.Credentials(context.Background(), "ghcr.io/team/app:latest")
		if err != nil || got != (deploy.Credentials{}) {
			t.Errorf("got %+v, %v; want zero value", got, err)
		}
	})
	t.Run("malformed auth field", func(t *testing.T) {
		t.Parallel()
		const secret = "!!not-base64-secret!!"
		c := New(Config{Keychain: &testKeychain{host: host, cfg: authn.AuthConfig{Auth: secret}}})
		_, err := c.Credentials(context.Background(), ref)
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("got %v; want an error that does not quote the secret", err)
		}
	})
}

// The zero Config reads the Docker config file, as `docker login` writes it.
func TestZeroConfigUsesDockerConfig(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("DOCKER_CONFIG", dir)
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(dir, "none.json"))
	t.Setenv("XDG_RUNTIME_DIR", dir)
	t.Setenv("XDG_CONFIG_HOME", dir)

	const user, secret = "deployer", "from-config-file"
	f := newFakeRegistry(t)
	want := f.pushImage(t, "private:1")
	var pass atomic.Pointer[string]
	pass.Store(ptr(secret))
	f.inject(requireBasic(user, &pass))
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + secret))
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, f.host, auth)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	c := New(Config{})
	got, err := c.Digest(context.Background(), f.ref("private:1"))
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("digest %s, want %s", got, want)
	}
	creds, err := c.Credentials(context.Background(), f.ref("private:1"))
	if err != nil {
		t.Fatal(err)
	}
	if wantCreds := (deploy.Credentials{ServerAddress: f.host, Username: user, Password: secret}); creds != wantCreds {
		t.Errorf("credentials %+v, want %+v", creds, wantCreds)
	}
	anon, err := c.Credentials(context.Background(), "127.0.0.1:1/other:latest")
	if err != nil || anon != (deploy.Credentials{}) {
		t.Errorf("unknown registry: got %+v, %v; want zero value", anon, err)
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"", 0, false},
		{"1", time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"0", 0, true},
		{"-1", 0, false},
		{"99999999999999999", 24 * time.Hour, true},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second, true},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, true},
		{"soon", 0, false},
	}
	for _, tt := range tests {
		got, ok := retryAfter(tt.in, now)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestRetryingNetworkErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		err       error
		wantCalls int
	}{
		{"connection reset", fmt.Errorf("read: %w", syscall.ECONNRESET), 3},
		{"connection refused", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), 3},
		{"unexpected eof", io.ErrUnexpectedEOF, 3},
		{"deadline is final", context.DeadlineExceeded, 1},
		{"tls mismatch is final", errors.New("http: server gave HTTP response to HTTPS client"), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var calls int
			var bodies []string
			rt := &retrying{retries: 5, maxBackoff: time.Millisecond, next: roundTripFunc(func(r *http.Request) (*http.Response, error) {
				calls++
				b, _ := io.ReadAll(r.Body)
				bodies = append(bodies, string(b))
				if calls < 3 {
					return nil, tt.err
				}
				return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
			})}
			req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/token", strings.NewReader("scope=x"))
			resp, err := rt.RoundTrip(req)
			if calls != tt.wantCalls {
				t.Errorf("%d calls, want %d", calls, tt.wantCalls)
			}
			if tt.wantCalls == 1 {
				if !errors.Is(err, tt.err) {
					t.Errorf("got %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			for i, b := range bodies {
				if b != "scope=x" {
					t.Errorf("attempt %d sent body %q; the body must be replayed", i+1, b)
				}
			}
		})
	}
}

func TestLoopbackRegistriesUsePlainHTTP(t *testing.T) {
	t.Parallel()
	for ref, want := range map[string]string{
		"127.0.0.1:5000/app":   "http",
		"127.0.0.2:5000/app":   "http",
		"localhost:5000/app":   "http",
		"[::1]:5000/app":       "http",
		"ghcr.io/org/app":      "https",
		"registry.example/app": "https",
	} {
		r, err := New(Config{}).parseRef(ref)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if got := r.Context().Scheme(); got != want {
			t.Errorf("%s: scheme %s, want %s", ref, got, want)
		}
	}
}

func mustParse(t *testing.T, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ptr[T any](v T) *T { return &v }

func TestLabelsOfImageAndIndex(t *testing.T) {
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Labels: map[string]string{"org.opencontainers.image.revision": "abc123"}})
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/labels/app:1"
	if err := remote.Write(mustParse(t, ref), img); err != nil {
		t.Fatal(err)
	}
	c := New(Config{Keychain: authn.NewMultiKeychain()})
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Labels(t.Context(), ref+"@"+d.String())
	if err != nil || got["org.opencontainers.image.revision"] != "abc123" {
		t.Fatalf("Labels = %v, %v; want the revision label", got, err)
	}

	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
		Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	iref := host + "/labels/multi:1"
	if err := remote.WriteIndex(mustParse(t, iref), idx); err != nil {
		t.Fatal(err)
	}
	got, err = c.Labels(t.Context(), iref)
	if err != nil || got["org.opencontainers.image.revision"] != "abc123" {
		t.Fatalf("Labels(index) = %v, %v; want the linux/amd64 image's labels", got, err)
	}
}
