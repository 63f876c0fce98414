//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/client"
)

// A real CNCF distribution registry (Debian's docker-registry, 2.8) for
// the behaviour only a real registry has: its own htpasswd and token auth,
// its own notifications. The suite starts it on 127.0.0.1 with a config
// and storage of its own in a temp dir (never the package's service) and
// stops it by pid. A counting reverse proxy in front of it is the address
// everyone uses, so a test can say what each client (the updater, the
// nodes' dockerd, the test's own pushes) asked for.

// dist is one registry process and the proxy in front of it.
type dist struct {
	addr    string // the proxy: services, the updater and every push use it
	proxyL  net.Listener
	proxy   http.Handler // the proxy's handler, for a listener elsewhere (a worker's netns)
	dir     string
	logPath string
	mu      sync.Mutex
	hits    []hit
}

// hit is one request the registry answered.
type hit struct {
	at     time.Time
	who    string // updater, node (a dockerd: the nodes' pulls, the CLI's pushes) or test
	method string
	kind   string // ping, manifest, blob, upload, other
	path   string
	status int
	auth   string // the Authorization header, to tell whose credentials came
}

type distOpts struct {
	htpasswd string      // the htpasswd file: basic auth
	token    *tokenRealm // token auth with this realm
	notify   string      // an endpoint URL for the registry's notifications
	bearer   string      // the Authorization bearer token sent with them
}

// newDist makes the proxy's listener, so its address is known (for a
// DOCKER_CONFIG, say) before the registry starts.
func newDist(t *testing.T) *dist {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &dist{addr: l.Addr().String(), proxyL: l, dir: t.TempDir()}
	d.logPath = filepath.Join(d.dir, "registry.log")
	// The suite's images are removed with the registry: what the nodes
	// pulled and what docker build tagged. Registered first, so it runs
	// after the tests' services (and their containers) are gone.
	t.Cleanup(func() { removeImagesOf(d.addr) })
	return d
}

// start runs the registry with o's config and serves the proxy.
func (d *dist) start(t *testing.T, o distOpts) {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("Debian's docker-registry is required (.ci/run installs it): %v", err)
	}
	backend := freeAddr(t)
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: e2e-http-secret-not-used-for-anything
`, filepath.Join(d.dir, "storage"), backend)
	switch {
	case o.htpasswd != "":
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: e2e-distribution\n    path: %s\n", o.htpasswd)
	case o.token != nil:
		cfg += fmt.Sprintf("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n",
			o.token.url, o.token.service, o.token.issuer, o.token.bundle)
	}
	if o.notify != "" {
		// As a user would set it up for the updater: the secret as a bearer
		// token, pulls not sent (the nodes' pulls are no news).
		cfg += fmt.Sprintf(`notifications:
  endpoints:
    - name: updater
      url: %s
      headers:
        Authorization: [Bearer %s]
      timeout: 5s
      threshold: 3
      backoff: 1s
      ignore:
        actions: [pull]
`, o.notify, o.bearer)
	}
	cfgPath := filepath.Join(d.dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start docker-registry: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		// Only the process this test started, by its pid.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(d.logPath)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			// distribution logs each endpoint's headers at start, the
			// webhook secret among them.
			if o.bearer != "" {
				b = bytes.ReplaceAll(b, []byte(o.bearer), []byte("[redacted]"))
			}
			t.Logf("docker-registry log (tail):\n%s", b)
		}
	})

	target := &url.URL{Scheme: "http", Host: backend}
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		// The registry builds upload URLs from the Host it was asked at:
		// keep the proxy's, so every request of a push comes through here.
		r.Out.Host = r.In.Host
	}}
	d.proxy = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		proxy.ServeHTTP(rec, r)
		if r.Context().Err() != nil {
			// The client went away (an updater stopped mid-request): the
			// proxy's 502 is not the registry's answer.
			rec.status = statusClientGone
		}
		d.mu.Lock()
		d.hits = append(d.hits, hit{at: time.Now(), who: sender(r.UserAgent()), method: r.Method, kind: kindOf(r.URL.Path),
			path: r.URL.Path, status: rec.status, auth: r.Header.Get("Authorization")})
		d.mu.Unlock()
	})
	s := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: d.proxy}
	go s.Serve(d.proxyL)
	t.Cleanup(func() { s.Close() })

	// Up when /v2/ answers at all (401 with auth on).
	c := &http.Client{Timeout: 2 * time.Second}
	waitFor(t, 30*time.Second, "docker-registry answering /v2/", func() bool {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(d.logPath)
			t.Fatalf("docker-registry exited: %v\n%s", err, b)
		default:
		}
		resp, err := c.Get("http://" + d.addr + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized
	})
}

// sender names who sent a request, by its User-Agent.
func sender(ua string) string {
	switch {
	case strings.HasPrefix(ua, "updater "):
		return "updater"
	case strings.HasPrefix(ua, "docker/"):
		return "node"
	}
	return "test"
}

func kindOf(path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "ping"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.Contains(path, "/blobs/uploads/"):
		return "upload"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	}
	return "other"
}

// statusClientGone marks a request its client gave up (nginx's 499).
const statusClientGone = 499

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) { w.status = code; w.ResponseWriter.WriteHeader(code) }
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// since returns the requests of who (all when "") from at on.
func (d *dist) since(at time.Time, who string) []hit {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []hit
	for _, h := range d.hits {
		if !h.at.Before(at) && (who == "" || h.who == who) {
			out = append(out, h)
		}
	}
	return out
}

// tally counts requests as "METHOD kind" (with the status when not 2xx).
func tally(hs []hit) map[string]int {
	m := map[string]int{}
	for _, h := range hs {
		k := h.method + " " + h.kind
		if h.status >= 300 {
			k += fmt.Sprintf(" %d", h.status)
		}
		m[k]++
	}
	return m
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// htpasswdFile writes an htpasswd file (bcrypt, the only hash distribution
// takes) with apache2-utils' htpasswd.
func htpasswdFile(t *testing.T, users map[string]string) string {
	t.Helper()
	var b bytes.Buffer
	for u, p := range users {
		out, err := exec.Command("htpasswd", "-Bbn", u, p).Output()
		if err != nil {
			t.Fatalf("htpasswd (apache2-utils; .ci/run installs it): %v", err)
		}
		b.Write(bytes.TrimSpace(out))
		b.WriteByte('\n')
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// authConfigDir is a DOCKER_CONFIG directory with user's credentials for
// registry, as `docker login` writes them.
func authConfigDir(t *testing.T, registry, user, pass string) string {
	t.Helper()
	dir := t.TempDir()
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{
		registry: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))},
	}})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pushTo pushes the test app at version as repo:latest to d with basic
// credentials (the test's own pusher) and returns its digest.
func (d *dist) pushTo(t *testing.T, repo, version, user, pass string) string {
	t.Helper()
	img := appImage(t, version, nil)
	ref, err := name.ParseReference(d.addr + "/" + repo + ":latest")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: user, Password: pass}), remote.WithUserAgent("e2e-pusher")); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	dg, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return dg.String()
}

// createWithAuth creates a service of repo@digest on d the way
// createService does, sending user's credentials for the first pull.
func (d *dist) createWithAuth(t *testing.T, svcName, repo, digest, user, pass string, o svcOpts) string {
	t.Helper()
	spec := serviceSpec(svcName, repo, digest, o)
	spec.TaskTemplate.ContainerSpec.Image = d.addr + "/" + repo + ":latest@" + digest
	auth, _ := json.Marshal(map[string]string{"username": user, "password": pass, "serveraddress": d.addr})
	res, err := env.docker.ServiceCreate(context.Background(), client.ServiceCreateOptions{
		Spec: spec, EncodedRegistryAuth: base64.URLEncoding.EncodeToString(auth),
	})
	if err != nil {
		t.Fatalf("create service %s: %v", svcName, err)
	}
	t.Cleanup(func() { removeService(res.ID) })
	waitFor(t, 60*time.Second, svcName+" running", func() bool { return allRunning(t, res.ID, digest) })
	return res.ID
}

var pushedDigest = regexp.MustCompile(`digest: (sha256:[0-9a-f]{64})`)

// dockerBuildPush builds the test app at version with the docker CLI
// (FROM scratch, a local context: nothing pulled) as ref and pushes it
// with `docker push`, with the credentials in cfgDir. It returns the
// digest the push reported.
func dockerBuildPush(t *testing.T, cfgDir, ref, version string) string {
	t.Helper()
	ctxDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(ctxDir, "app"), env.apps[version], 0o755); err != nil {
		t.Fatal(err)
	}
	// The same image the harness's push makes: its entrypoint, its health
	// check, and a nonce so every build is a new digest.
	dockerfile := fmt.Sprintf(`FROM scratch
COPY app /app
LABEL e2e.version=%s e2e.nonce=%d
HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["/app", "health"]
ENTRYPOINT ["/app"]
`, version, time.Now().UnixNano())
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		cmd := exec.Command("docker", args...)
		// The classic builder: a FROM scratch build needs no BuildKit, and
		// the CLI here may have no buildx plugin.
		cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+cfgDir, "DOCKER_BUILDKIT=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("build", "-q", "-t", ref, ctxDir)
	m := pushedDigest.FindStringSubmatch(run("push", ref))
	if m == nil {
		t.Fatalf("docker push %s reported no digest", ref)
	}
	return m[1]
}

// tokenRealm is a token service as Docker Hub, GHCR, GitLab and Harbor
// run one: it checks a user's basic credentials and issues a JWT for the
// scopes asked, as far as that user may have them, signed with a key the
// test made; the registry trusts the key's certificate (rootcertbundle).
type tokenRealm struct {
	url, service, issuer, bundle string
	key                          *ecdsa.PrivateKey
	cert                         []byte            // DER
	users                        map[string]string // user: password
	pushers                      map[string]bool   // users who may push
	ttl                          time.Duration
	// backdate moves each token's exp claim this much earlier than ttl
	// (expires_in stays ttl). distribution accepts a token up to 60 s past
	// its exp (token.Leeway, for clock skew), so a 5 s token backdated by
	// that much is refused at the registry 5 s after it was issued, as a
	// registry without that leeway refuses it.
	backdate time.Duration

	mu     sync.Mutex
	issued []tokenReq
}

// tokenReq is one token the realm issued (or refused).
type tokenReq struct {
	at      time.Time
	who     string // by User-Agent, as for the registry
	user    string // "" anonymous
	scopes  []string
	granted []access
	status  int
}

// access is the token's access claim, as distribution reads it.
type access struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

func startTokenRealm(t *testing.T, users map[string]string, pushers ...string) *tokenRealm {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "e2e token signer"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "token-signer.pem")
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &tokenRealm{service: "e2e-distribution", issuer: "e2e-token-issuer", bundle: bundle, key: key, cert: der,
		users: users, pushers: map[string]bool{}, ttl: 10 * time.Minute}
	for _, p := range pushers {
		r.pushers[p] = true
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(r.serve)}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	// By name, as a realm on another host is (auth.docker.io, GitLab's
	// /jwt/auth): go-containerregistry (since 0.22) refuses a realm whose
	// host is a private or loopback IP literal unless it is the registry's
	// own host:port.
	r.url = fmt.Sprintf("http://localhost:%d/token", l.Addr().(*net.TCPAddr).Port)
	return r
}

// serve answers GET /token?service=…&scope=… (the token protocol of
// distribution's docs/spec/auth/token.md).
func (r *tokenRealm) serve(w http.ResponseWriter, req *http.Request) {
	tr := tokenReq{at: time.Now(), who: sender(req.UserAgent()), scopes: req.URL.Query()["scope"]}
	defer func() {
		r.mu.Lock()
		r.issued = append(r.issued, tr)
		r.mu.Unlock()
	}()
	if req.Method != http.MethodGet || req.URL.Path != "/token" || req.URL.Query().Get("service") != r.service {
		tr.status = http.StatusBadRequest
		http.Error(w, "bad token request", tr.status)
		return
	}
	if u, p, ok := req.BasicAuth(); ok {
		if want, known := r.users[u]; !known || want != p {
			tr.status = http.StatusUnauthorized
			http.Error(w, `{"details":"incorrect username or password"}`, tr.status)
			return
		}
		tr.user = u
	}
	// What was asked, as far as this user may: pull for any known user,
	// push only for a pusher, nothing for the anonymous.
	for _, sc := range tr.scopes {
		for _, one := range strings.Fields(sc) {
			typ, rest, _ := strings.Cut(one, ":")
			i := strings.LastIndex(rest, ":")
			if typ != "repository" || i < 0 || tr.user == "" {
				continue
			}
			a := access{Type: typ, Name: rest[:i]}
			for _, act := range strings.Split(rest[i+1:], ",") {
				if act == "pull" || (act == "push" && r.pushers[tr.user]) {
					a.Actions = append(a.Actions, act)
				}
			}
			if len(a.Actions) > 0 {
				tr.granted = append(tr.granted, a)
			}
		}
	}
	tok, err := r.sign(tr.user, tr.granted)
	if err != nil {
		tr.status = http.StatusInternalServerError
		http.Error(w, err.Error(), tr.status)
		return
	}
	tr.status = http.StatusOK
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok,
		"expires_in": int(r.ttl.Seconds()), "issued_at": time.Now().UTC().Format(time.RFC3339)})
}

// sign makes the JWT distribution 2.8's token auth verifies: ES256 over
// header.claims, the signing certificate in x5c (checked against the
// rootcertbundle), iss and aud (a string) its issuer and service, exp and
// nbf in range, and the access claim.
func (r *tokenRealm) sign(sub string, granted []access) (string, error) {
	now := time.Now()
	jti := make([]byte, 8)
	rand.Read(jti)
	if granted == nil {
		granted = []access{}
	}
	header, _ := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": []string{base64.StdEncoding.EncodeToString(r.cert)}})
	claims, _ := json.Marshal(map[string]any{
		"iss": r.issuer, "sub": sub, "aud": r.service,
		"exp": now.Add(r.ttl - r.backdate).Unix(), "nbf": now.Add(-time.Second).Unix(), "iat": now.Unix(),
		"jti": hex.EncodeToString(jti), "access": granted,
	})
	enc := base64.RawURLEncoding
	signed := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signed))
	rr, ss, err := ecdsa.Sign(rand.Reader, r.key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	rr.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	return signed + "." + enc.EncodeToString(sig), nil
}

// tokens returns the tokens issued to who (all when "") from at on.
func (r *tokenRealm) tokens(at time.Time, who string) []tokenReq {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []tokenReq
	for _, tr := range r.issued {
		if !tr.at.Before(at) && (who == "" || tr.who == who) {
			out = append(out, tr)
		}
	}
	return out
}

func (tr tokenReq) String() string {
	g, _ := json.Marshal(tr.granted)
	return fmt.Sprintf("%s user=%q scope=%q -> %d %s", tr.who, tr.user, tr.scopes, tr.status, g)
}

// onlyHEADs fails unless every request in hs is a manifest HEAD answered
// 200: all an idle updater, or one deploying with no notifier, may cost.
func onlyHEADs(t *testing.T, what string, hs []hit) {
	t.Helper()
	for _, h := range hs {
		if h.method != http.MethodHead || h.kind != "manifest" || (h.status != http.StatusOK && h.status != statusClientGone) {
			t.Fatalf("%s: the updater sent %s %s (%d), want nothing but manifest HEADs (all: %v)",
				what, h.method, h.path, h.status, tally(hs))
		}
	}
}

// idleWindow lets the updater run n more cycles and returns the cycles
// counted and its requests at d in that time.
func idleWindow(t *testing.T, u *updater, d *dist, n int) (int, []hit) {
	t.Helper()
	c0 := u.cycles()
	from := time.Now()
	waitFor(t, time.Duration(n)*5*time.Second+30*time.Second, fmt.Sprintf("%d idle cycles", n), func() bool { return u.cycles() >= c0+n })
	return u.cycles() - c0, d.since(from, "updater")
}

// within fails unless got is want, give or take one (a cycle can be on
// either side of a window's edge).
func within(t *testing.T, what string, got, want int) {
	t.Helper()
	if got < want-1 || got > want+1 {
		t.Fatalf("%s: %d, want %d (±1)", what, got, want)
	}
}

func basicOf(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// nodeAuths is the set of Authorization headers the nodes' successful
// manifest GETs carried.
func nodeAuths(hs []hit) []string {
	var out []string
	for _, h := range hs {
		if h.who == "node" && h.kind == "manifest" && h.method == http.MethodGet && h.status == http.StatusOK && !slices.Contains(out, h.auth) {
			out = append(out, h.auth)
		}
	}
	return out
}

// Basic auth (htpasswd) at a real distribution registry: the updater,
// given a docker config.json with one user, watches and deploys a service
// whose first pull used another user's credentials; the nodes pull the
// new version with the updater's. And what that costs, counted at the
// registry: an idle cycle, a deploy with no notifier, a deploy with Slack
// (which shows the image's labels, so the updater reads them: two GETs).
func TestDistributionHtpasswd(t *testing.T) {
	const stack, repo = "e2edistbasic", "e2e/dist-basic"
	const deployer, deployerPass = "e2e-deployer", "e2e-dist-deployer-password-4711"
	const watcher, watcherPass = "e2e-watcher", "e2e-dist-watcher-password-0815"
	addSecret("distribution deployer password", deployerPass)
	addSecret("distribution watcher password", watcherPass)
	whose := func(auths []string) string {
		names := map[string]string{basicOf(deployer, deployerPass): "the deployer's", basicOf(watcher, watcherPass): "the watcher's", "": "none"}
		var out []string
		for _, a := range auths {
			n, ok := names[a]
			if !ok {
				n = "other credentials"
			}
			out = append(out, n)
		}
		return fmt.Sprintf("%v", out)
	}
	d := newDist(t)
	d.start(t, distOpts{htpasswd: htpasswdFile(t, map[string]string{deployer: deployerPass, watcher: watcherPass})})

	v1d := d.pushTo(t, repo, "v1", deployer, deployerPass)
	app := d.createWithAuth(t, stack+"_app", repo, v1d, deployer, deployerPass, svcOpts{stack: stack, optIn: true})
	evs := recordEvents(t)
	cfgDir := authConfigDir(t, d.addr, watcher, watcherPass)

	// Idle: after its first cycle's challenge, one HEAD per cycle.
	u := startUpdater(t, stack, "DOCKER_CONFIG="+cfgDir)
	waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })
	if first := d.since(time.Time{}, "updater"); len(first) == 0 || first[len(first)-1].auth != basicOf(watcher, watcherPass) {
		t.Fatalf("the updater's first cycle did not reach the registry with the watcher's credentials: %v", tally(first))
	}
	cycles, idle := idleWindow(t, u, d, 5)
	onlyHEADs(t, "idle", idle)
	within(t, fmt.Sprintf("manifest HEADs in %d idle cycles", cycles), len(idle), cycles)
	t.Logf("idle: %d cycles, the updater's requests %v", cycles, tally(idle))

	// A deploy with no notifier: the updater's HEADs only, the node's pull.
	deployed := func(u *updater, digest string) {
		t.Helper()
		u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", digest)
		waitFor(t, 30*time.Second, "every task on the new digest", func() bool { return allRunning(t, app, digest) })
		u.stop(syscall.SIGTERM) // no cycle after this: the window is closed
	}
	from := time.Now()
	v2d := d.pushTo(t, repo, "v2", deployer, deployerPass)
	pushed := time.Now()
	deployed(u, v2d)
	upd, node := d.since(pushed, "updater"), d.since(from, "node")
	onlyHEADs(t, "a deploy with no notifier", upd)
	// The node pulled v2 with the credentials the updater sent, never with
	// the deployer's (those went with the service's creation).
	if a := nodeAuths(node); len(a) != 1 || a[0] != basicOf(watcher, watcherPass) {
		t.Fatalf("the node's manifest GETs for v2 carried %s, want only the updater's (the watcher's)", whose(a))
	}
	t.Logf("deploy, no notifier: the updater %v; the node %v", tally(upd), tally(node))

	// The same with Slack: the new image's manifest and config, once each.
	sl := fakeSlack(t)
	u2 := startUpdater(t, stack, append(slackBotEnv(sl), "DOCKER_CONFIG="+cfgDir)...)
	waitFor(t, 30*time.Second, "a first cycle with Slack", func() bool { return u2.cycles() >= 1 })
	from = time.Now()
	v3d := d.pushTo(t, repo, "v3", deployer, deployerPass)
	pushed = time.Now()
	deployed(u2, v3d)
	upd, node = d.since(pushed, "updater"), d.since(from, "node")
	var reads []hit // besides the cycles' HEADs
	for _, h := range upd {
		if h.method != http.MethodHead || h.kind != "manifest" {
			reads = append(reads, h)
		}
	}
	if got := tally(reads); len(reads) != 2 || got["GET manifest"] != 1 || got["GET blob"] != 1 {
		t.Fatalf("a deploy with Slack: the updater's requests %v, want one manifest GET and one config blob GET besides the cycles' HEADs", tally(upd))
	}
	if a := nodeAuths(node); len(a) != 1 || a[0] != basicOf(watcher, watcherPass) {
		t.Fatalf("the node's manifest GETs for v3 carried %s, want only the updater's (the watcher's)", whose(a))
	}
	t.Logf("deploy, Slack: the updater %v; the node %v", tally(upd), tally(node))
	evs.wantImageWrites(t, app, v2d, v3d)
}

// Token auth, as Docker Hub, GHCR, GitLab and Harbor do it: the registry
// (distribution's `auth: token`) answers with a Bearer challenge naming a
// realm served here, which issues JWTs signed by a key this test made. The
// updater gets one token per repository, scoped to pulling it, through
// the challenge; reuses it over idle cycles (nothing at the realm, nothing
// but HEADs at the registry); and a deploy has the nodes fetch their own
// tokens with the credentials the updater sent.
func TestDistributionTokenAuth(t *testing.T) {
	const stack = "e2edisttoken"
	repos := []string{"e2e/dist-token-a", "e2e/dist-token-b"}
	const pusher, pusherPass = "e2e-pusher", "e2e-token-pusher-password-2718"
	const reader, readerPass = "e2e-reader", "e2e-token-reader-password-3141"
	addSecret("token realm pusher password", pusherPass)
	addSecret("token realm reader password", readerPass)
	realm := startTokenRealm(t, map[string]string{pusher: pusherPass, reader: readerPass}, pusher)
	d := newDist(t)
	d.start(t, distOpts{token: realm})

	apps := map[string]string{}
	for i, repo := range repos {
		v1d := d.pushTo(t, repo, "v1", pusher, pusherPass)
		apps[repo] = d.createWithAuth(t, fmt.Sprintf("%s_app%d", stack, i), repo, v1d, pusher, pusherPass, svcOpts{stack: stack, optIn: true})
	}
	evs := recordEvents(t)
	started := time.Now()
	u := startUpdater(t, stack, "DOCKER_CONFIG="+authConfigDir(t, d.addr, reader, readerPass))
	waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })

	// One token per repository, asked with the reader's credentials, for
	// exactly pulling that repository, and granted just that.
	first := realm.tokens(started, "updater")
	if len(first) != len(repos) {
		t.Fatalf("the updater's first cycle fetched %d tokens, want one per repository (%d): %v", len(first), len(repos), first)
	}
	for _, repo := range repos {
		want := "repository:" + repo + ":pull"
		if !slices.ContainsFunc(first, func(tr tokenReq) bool {
			return tr.status == http.StatusOK && tr.user == reader && len(tr.scopes) == 1 && tr.scopes[0] == want &&
				len(tr.granted) == 1 && tr.granted[0].Name == repo && slices.Equal(tr.granted[0].Actions, []string{"pull"})
		}) {
			t.Fatalf("no token for %s asked by the reader and granted only that: %v", want, first)
		}
	}

	// Idle: the tokens are reused; each cycle is one HEAD per repository.
	tokensBefore := len(realm.tokens(time.Time{}, "updater"))
	cycles, idle := idleWindow(t, u, d, 5)
	if n := len(realm.tokens(time.Time{}, "updater")) - tokensBefore; n != 0 {
		t.Fatalf("%d token requests in %d idle cycles, want none: tokens valid for %s are reused", n, cycles, realm.ttl)
	}
	onlyHEADs(t, "idle", idle)
	within(t, fmt.Sprintf("manifest HEADs in %d idle cycles of %d repositories", cycles, len(repos)), len(idle), cycles*len(repos))
	for _, h := range idle {
		if !strings.HasPrefix(h.auth, "Bearer ") {
			t.Fatalf("an idle HEAD without a bearer token (%q…)", h.auth[:min(len(h.auth), 7)])
		}
	}
	t.Logf("idle: %d cycles, the updater's requests %v, no token requests", cycles, tally(idle))

	// A deploy of one repository: the updater still uses its tokens; the
	// node fetches its own, with the reader's credentials the updater sent
	// (the service was created with the pusher's).
	repo, app := repos[0], apps[repos[0]]
	from := time.Now()
	v2d := d.pushTo(t, repo, "v2", pusher, pusherPass)
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2d)
	waitFor(t, 30*time.Second, "every task on v2", func() bool { return allRunning(t, app, v2d) })
	u.stop(syscall.SIGTERM)
	if n := len(realm.tokens(time.Time{}, "updater")) - tokensBefore; n != 0 {
		t.Fatalf("the deploy cost %d token requests by the updater, want none", n)
	}
	onlyHEADs(t, "a deploy with no notifier", d.since(from, "updater"))
	nodeTokens := realm.tokens(from, "node")
	if len(nodeTokens) == 0 {
		t.Fatalf("the node fetched no token for its pull")
	}
	for _, tr := range nodeTokens {
		if tr.user != reader || tr.status != http.StatusOK {
			t.Fatalf("the node's token request was not the reader's (the credentials the updater sent): %v", tr)
		}
	}
	if a := nodeAuths(d.since(from, "node")); len(a) == 0 || !strings.HasPrefix(a[0], "Bearer ") {
		t.Fatalf("the node's manifest GETs carried no bearer token")
	}
	t.Logf("deploy: the updater %v; the node %v and %d token requests %v", tally(d.since(from, "updater")), tally(d.since(from, "node")), len(nodeTokens), nodeTokens)
	evs.wantImageWrites(t, app, v2d)
	if w := evs.imageWrites(t, apps[repos[1]]); len(w) != 0 {
		t.Fatalf("the service whose tag did not move was written: %v", w)
	}
}

// The registry's own notifications, set up as a user would: an endpoint
// in its config POSTing to the updater's /hooks/registry with the webhook
// secret as a bearer token. Images built and pushed by the docker CLI.
// With polling an hour away, the push deploys: Docker's events show the
// write, and the only scheduled cycle is the one at the updater's start.
func TestDistributionNotifications(t *testing.T) {
	const stack, repo = "e2edistnotify", "e2e/dist-notify"
	const deployer, deployerPass = "e2e-deployer", "e2e-dist-deployer-password-4711"
	const watcher, watcherPass = "e2e-watcher", "e2e-dist-watcher-password-0815"
	addSecret("distribution deployer password", deployerPass)
	addSecret("distribution watcher password", watcherPass)
	d := newDist(t)
	// The updater first: the registry's config names its address.
	u := startUpdater(t, stack, httpEnv("UPDATER_SCHEDULE=@every 1h", "DOCKER_CONFIG="+authConfigDir(t, d.addr, watcher, watcherPass))...)
	base := u.base(t)
	waitFor(t, 30*time.Second, "the first cycle", func() bool { return u.cycles() >= 1 })
	d.start(t, distOpts{
		htpasswd: htpasswdFile(t, map[string]string{deployer: deployerPass, watcher: watcherPass}),
		notify:   base + "/hooks/registry", bearer: webhookSecret,
	})

	pushCfg := authConfigDir(t, d.addr, deployer, deployerPass)
	ref := d.addr + "/" + repo + ":latest"
	v1d := dockerBuildPush(t, pushCfg, ref, "v1")
	// The registry told the updater about v1 (no service tracks it yet).
	u.waitLog(t, 30*time.Second, 1, "registry push", "source", "distribution")
	app := d.createWithAuth(t, stack+"_app", repo, v1d, deployer, deployerPass, svcOpts{stack: stack, optIn: true})
	evs := recordEvents(t)

	pushes := u.count("registry push", "source", "distribution")
	v2d := dockerBuildPush(t, pushCfg, ref, "v2")
	u.waitLog(t, 30*time.Second, pushes+1, "registry push", "source", "distribution")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2d)
	evs.wantImageWrites(t, app, v2d)
	waitFor(t, 30*time.Second, "every task on v2", func() bool { return allRunning(t, app, v2d) })

	if n := metric(t, base, `updater_cycles_total{result="ok",scope="all"}`); n != 1 {
		t.Fatalf("%v scheduled cycles, want only the one at start: polling did not do this", n)
	}
	if n := metric(t, base, `updater_webhooks_total{result="accepted",source="distribution"}`); n < 2 {
		t.Fatalf("%v distribution notifications accepted, want one per tag pushed (2)", n)
	}
	if n := metric(t, base, `updater_webhooks_total{result="unauthorized",source="distribution"}`); n > 0 {
		t.Fatalf("%v of the registry's notifications refused", n)
	}
	t.Logf("webhooks from the registry: %v accepted, %v ignored (blob pushes)",
		metric(t, base, `updater_webhooks_total{result="accepted",source="distribution"}`),
		metric(t, base, `updater_webhooks_total{result="ignored",source="distribution"}`))
}

// Token expiry: the realm issues tokens that the registry refuses 5 s
// after they were issued (backdated past distribution's leeway), so one
// expires between cycles again and again. Each time, the updater's HEAD
// is refused once, it fetches one new token through the challenge, the
// HEAD answers, and nothing is logged as a failure: one token request per
// expiry, never one per HEAD, and none while the last token still worked.
func TestDistributionTokenExpiry(t *testing.T) {
	const stack, repo = "e2edisttokexp", "e2e/dist-token-expiry"
	const pusher, pusherPass = "e2e-pusher", "e2e-token-pusher-password-2718"
	const reader, readerPass = "e2e-reader", "e2e-token-reader-password-3141"
	addSecret("token realm pusher password", pusherPass)
	addSecret("token realm reader password", readerPass)
	realm := startTokenRealm(t, map[string]string{pusher: pusherPass, reader: readerPass}, pusher)
	// Set before the registry starts, so before any token is asked for.
	realm.ttl, realm.backdate = 5*time.Second, 60*time.Second
	d := newDist(t)
	d.start(t, distOpts{token: realm})
	v1d := d.pushTo(t, repo, "v1", pusher, pusherPass)
	d.createWithAuth(t, stack+"_app", repo, v1d, pusher, pusherPass, svcOpts{stack: stack, optIn: true})

	u := startUpdater(t, stack, "DOCKER_CONFIG="+authConfigDir(t, d.addr, reader, readerPass))
	waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })
	from, c0 := time.Now(), u.cycles()
	// 25 cycles of 1 s: four or five expiries of a 5 s token.
	const n = 25
	waitFor(t, n*5*time.Second, fmt.Sprintf("%d more cycles", n), func() bool { return u.cycles() >= c0+n })
	u.stop(syscall.SIGTERM)
	elapsed, cycles := time.Since(from), u.cycles()-c0
	hits, all := d.since(from, "updater"), realm.tokens(time.Time{}, "updater")
	toks := realm.tokens(from, "updater")

	for _, tr := range all {
		if tr.status != http.StatusOK || tr.user != reader || len(tr.granted) != 1 || tr.granted[0].Name != repo {
			t.Fatalf("a token request of the updater's was not the reader's, granted pulling %s: %v", repo, tr)
		}
	}
	// Fetched again after each expiry: 25 s over tokens of 4-5 s (exp is in
	// whole seconds) and a cycle's wait at most after each.
	maxTokens := int(elapsed/(realm.ttl-time.Second)) + 1
	if len(toks) < 3 || len(toks) > maxTokens {
		t.Fatalf("%d token requests in %s (%d cycles), want one per expiry of a %s token: 3 to %d (all: %v)",
			len(toks), elapsed.Round(100*time.Millisecond), cycles, realm.ttl, maxTokens, all)
	}
	// Never while the last one still worked (the registry refuses it 4 to
	// 5 s after its issue: exp is in whole seconds).
	for i := 1; i < len(all); i++ {
		if gap := all[i].at.Sub(all[i-1].at); gap < realm.ttl-time.Second-200*time.Millisecond {
			t.Fatalf("token %d came %s after the one before, want at least %s: the one before still worked",
				i, gap.Round(10*time.Millisecond), realm.ttl-time.Second)
		}
	}
	// At the registry: each expiry cost one refused HEAD; the HEAD after the
	// new token answered, once a cycle; no ping, no GET.
	got := tally(hits)
	if got["HEAD manifest 401"] != len(toks) {
		t.Fatalf("%d refused HEADs for %d token requests, want one each (the updater's requests: %v)", got["HEAD manifest 401"], len(toks), got)
	}
	within(t, fmt.Sprintf("answered HEADs in %d cycles", cycles), got["HEAD manifest"], cycles)
	if len(got) != 2 {
		t.Fatalf("the updater's requests %v, want only manifest HEADs, answered or refused for an expired token", got)
	}
	// Nothing the operator would read as a failure.
	u.mu.Lock()
	lines := slices.Clone(u.lines)
	u.mu.Unlock()
	for _, l := range lines {
		msg, lvl := fmt.Sprint(l["msg"]), fmt.Sprint(l["level"])
		// The one warning this service earns: advice about its spec.
		advice := strings.HasPrefix(msg, "no health check in the service spec")
		if (lvl == "WARN" && !advice) || lvl == "ERROR" || strings.Contains(msg, "fail") {
			t.Fatalf("the updater logged %v", l)
		}
	}
	t.Logf("%s, %d cycles: %d token requests (tokens of %s), the updater's requests %v",
		elapsed.Round(100*time.Millisecond), cycles, len(toks), realm.ttl, got)
}
