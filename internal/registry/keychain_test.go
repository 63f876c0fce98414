package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/updater-dev/updater/internal/deploy"
)

const (
	ecrAccount = "123456789012"
	ecrRegion  = "us-east-1"
	ecrHost    = ecrAccount + ".dkr.ecr." + ecrRegion + ".amazonaws.com"
	awsKeyID   = "AKIAUPDATERTEST00001"
	awsSecret  = "updater-test-secret-access-key/0000000000"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeECR answers GetAuthorizationToken as ECR does (AWS JSON 1.1 over
// POST /), after checking what ECR checks: the operation's X-Amz-Target,
// the content type, and a SigV4 signature made with the one secret key it
// knows, recomputed here over the headers the request says it signed.
// Each answer is a new token, valid for 12 hours of the clock.
type fakeECR struct {
	t     *testing.T
	clock *fakeClock

	mu     sync.Mutex
	calls  int                  // tokens issued
	denied int                  // requests refused on purpose
	deny   bool                 // refuse every request, as ECR does a principal without ecr:GetAuthorizationToken
	tokens map[string]time.Time // password => expiry
}

func (f *fakeECR) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := f.check(r, body); err != nil {
		f.t.Errorf("ECR request refused: %v", err)
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"__type":"InvalidSignatureException","message":%q}`, err.Error())
		return
	}
	f.mu.Lock()
	if f.deny {
		f.denied++
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"__type":"AccessDeniedException","message":"not authorized to perform: ecr:GetAuthorizationToken"}`)
		return
	}
	f.calls++
	pass := fmt.Sprintf("ecr-token-%d", f.calls)
	expires := f.clock.Now().Add(12 * time.Hour)
	f.tokens[pass] = expires
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(map[string]any{"authorizationData": []map[string]any{{
		"authorizationToken": base64.StdEncoding.EncodeToString([]byte("AWS:" + pass)),
		"expiresAt":          float64(expires.Unix()),
		"proxyEndpoint":      "https://" + ecrHost,
	}}})
}

func (f *fakeECR) check(r *http.Request, body []byte) error {
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		return fmt.Errorf("%s %s, want POST /", r.Method, r.URL.Path)
	}
	if got := r.Header.Get("X-Amz-Target"); got != "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken" {
		return fmt.Errorf("X-Amz-Target %q", got)
	}
	if got := r.Header.Get("Content-Type"); got != "application/x-amz-json-1.1" {
		return fmt.Errorf("Content-Type %q", got)
	}
	var in struct{ RegistryIds []string }
	if err := json.Unmarshal(body, &in); err != nil || len(in.RegistryIds) != 1 || in.RegistryIds[0] != ecrAccount {
		return fmt.Errorf("body %s, want registryIds [%s]", body, ecrAccount)
	}
	authz := r.Header.Get("Authorization")
	scope := fmt.Sprintf("Credential=%s/%s/%s/ecr/aws4_request", awsKeyID, r.Header.Get("X-Amz-Date")[:8], ecrRegion)
	if !strings.HasPrefix(authz, "AWS4-HMAC-SHA256 ") || !strings.Contains(authz, scope) {
		return fmt.Errorf("Authorization %q lacks %q", authz, scope)
	}
	_, signed, _ := strings.Cut(authz, "SignedHeaders=")
	signed, _, _ = strings.Cut(signed, ",")
	again, _ := http.NewRequest(r.Method, "http://"+r.Host+r.URL.RequestURI(), bytes.NewReader(body))
	for _, h := range strings.Split(signed, ";") {
		if h != "host" {
			again.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
		}
	}
	again.ContentLength = r.ContentLength
	at, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil {
		return fmt.Errorf("X-Amz-Date: %v", err)
	}
	sum := sha256.Sum256(body)
	err = v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: awsKeyID, SecretAccessKey: awsSecret},
		again, hex.EncodeToString(sum[:]), "ecr", ecrRegion, at)
	if err != nil {
		return err
	}
	if want := again.Header.Get("Authorization"); want != authz {
		return fmt.Errorf("signature does not match:\n got %s\nwant %s", authz, want)
	}
	return nil
}

func (f *fakeECR) valid(pass string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	exp, ok := f.tokens[pass]
	return ok && f.clock.Now().Before(exp)
}

func (f *fakeECR) callCount() int { f.mu.Lock(); defer f.mu.Unlock(); return f.calls }

func (f *fakeECR) refuse() { f.mu.Lock(); f.deny = true; f.mu.Unlock() }

func (f *fakeECR) deniedCount() int { f.mu.Lock(); defer f.mu.Unlock(); return f.denied }

// ecrRegistry is go-containerregistry's registry behind TLS, answering as
// ECR does: Basic auth, user AWS, a password fakeECR issued and that has
// not expired; anything else gets a 401 with ECR's challenge. Images are
// seeded through a second, unauthenticated door to the same storage.
type ecrRegistry struct {
	client *http.Transport // dials the registry for ecrHost, trusting its certificate

	mu       sync.Mutex
	used     []string // the password of each manifest request let in
	rejected int      // requests with credentials that were refused
}

func newECRRegistry(t *testing.T, issuer *fakeECR) (*ecrRegistry, string) {
	t.Helper()
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	e := &ecrRegistry{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		if !ok || user != "AWS" || !issuer.valid(pass) {
			e.mu.Lock()
			if ok {
				e.rejected++
			}
			e.mu.Unlock()
			w.Header().Set("WWW-Authenticate", `Basic realm="https://`+ecrHost+`/",service="ecr.amazonaws.com"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if strings.Contains(r.URL.Path, "/manifests/") {
			e.mu.Lock()
			e.used = append(e.used, pass)
			e.mu.Unlock()
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	seed := httptest.NewServer(inner)
	t.Cleanup(seed.Close)

	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	addr := srv.Listener.Addr().String()
	e.client = &http.Transport{
		// ecrHost resolves to the test's registry, as DNS would send it to
		// AWS's; httptest's certificate names example.com.
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "example.com"},
	}
	t.Cleanup(e.client.CloseIdleConnections)

	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(mustParse(t, strings.TrimPrefix(seed.URL, "http://")+"/app:latest"), img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return e, d.String()
}

func (e *ecrRegistry) state() ([]string, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.used...), e.rejected
}

// isolate gives the test an environment with no Docker config, no
// credential helper programs, no AWS files or instance metadata: only
// what the test sets.
func isolate(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for k, v := range map[string]string{
		"HOME": dir, "DOCKER_CONFIG": dir, "PATH": filepath.Join(dir, "bin"),
		"REGISTRY_AUTH_FILE": filepath.Join(dir, "none.json"), "XDG_RUNTIME_DIR": dir, "XDG_CONFIG_HOME": dir,
		"AWS_CONFIG_FILE": filepath.Join(dir, "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "aws-credentials"),
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_PROFILE": "", "AWS_REGION": "", "AWS_DEFAULT_REGION": "",
		"AWS_SESSION_TOKEN": "", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
	} {
		t.Setenv(k, v)
	}
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// An ECR registry is reached with a token from ECR's GetAuthorizationToken,
// got in-process with the AWS credentials of the environment, whether
// config.json names ecr-login for it or says nothing; the token is kept
// while it is young and replaced past half its life, before it expires,
// inside the session the client keeps.
func TestECRTokens(t *testing.T) {
	for name, dockerConfig := range map[string]string{
		"no config.json":        ``,
		"credHelpers ecr-login": `{"credHelpers":{"` + ecrHost + `":"ecr-login"}}`,
		"credsStore ecr-login":  `{"credsStore":"ecr-login"}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := isolate(t)
			if dockerConfig != "" {
				if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(dockerConfig), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			clock := &fakeClock{t: time.Now()}
			issuer := &fakeECR{t: t, clock: clock, tokens: map[string]time.Time{}}
			api := httptest.NewServer(issuer)
			t.Cleanup(api.Close)
			reg, want := newECRRegistry(t, issuer)
			t.Setenv("AWS_ACCESS_KEY_ID", awsKeyID)
			t.Setenv("AWS_SECRET_ACCESS_KEY", awsSecret)
			t.Setenv("AWS_ENDPOINT_URL_ECR", api.URL)

			c := New(Config{Keychain: defaultKeychain(clock.Now), Transport: reg.client, Retries: -1})
			ctx := context.Background()
			ref := ecrHost + "/app:latest"
			digest := func(wantToken string, wantCalls int) {
				t.Helper()
				got, err := c.Digest(ctx, ref)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Fatalf("digest %s, want %s", got, want)
				}
				used, rejected := reg.state()
				if last := used[len(used)-1]; last != wantToken || rejected != 0 {
					t.Fatalf("registry let in %q (%d credentialed requests refused), want %q and none refused", last, rejected, wantToken)
				}
				if n := issuer.callCount(); n != wantCalls {
					t.Fatalf("%d GetAuthorizationToken calls, want %d", n, wantCalls)
				}
			}

			digest("ecr-token-1", 1)
			creds, err := c.Credentials(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			if wantCreds := (deploy.Credentials{ServerAddress: ecrHost, Username: "AWS", Password: "ecr-token-1"}); creds != wantCreds {
				t.Fatalf("credentials %+v, want %+v", creds, wantCreds)
			}
			clock.Advance(5 * time.Hour)
			digest("ecr-token-1", 1) // young: kept
			// Past half of its 12 hours token 1 still works at the
			// registry, so only a client that refreshes early sends token 2.
			clock.Advance(90 * time.Minute)
			digest("ecr-token-2", 2)
			clock.Advance(time.Hour)
			digest("ecr-token-2", 2)

			// ECR refusing a new token (the role lost its permission) costs
			// nothing while the one in hand lasts, and is asked again on
			// each lookup; past its expiry, the lookup fails saying why.
			issuer.refuse()
			clock.Advance(5 * time.Hour) // token 2: 6.5 of its 12 hours
			digest("ecr-token-2", 2)
			digest("ecr-token-2", 2)
			if n := issuer.deniedCount(); n != 2 {
				t.Fatalf("%d refused GetAuthorizationToken calls, want 2 (one per lookup)", n)
			}
			clock.Advance(6 * time.Hour)
			_, err = c.Digest(ctx, ref)
			if err == nil || !strings.Contains(err.Error(), "get an ECR authorization token for "+ecrHost+" (account "+ecrAccount+", region "+ecrRegion+")") ||
				!strings.Contains(err.Error(), "AccessDeniedException") {
				t.Fatalf("got %v, want the ECR refusal", err)
			}
		})
	}
}

// Without AWS credentials an ECR lookup fails naming ECR and the SDK's
// reason, before anything is sent to ECR or the registry.
func TestECRWithoutAWSCredentials(t *testing.T) {
	isolate(t)
	issuer := &fakeECR{t: t, clock: &fakeClock{t: time.Now()}, tokens: map[string]time.Time{}}
	api := httptest.NewServer(issuer)
	t.Cleanup(api.Close)
	t.Setenv("AWS_ENDPOINT_URL_ECR", api.URL)
	_, err := New(Config{}).Credentials(context.Background(), ecrHost+"/app:1")
	if err == nil || !strings.Contains(err.Error(), "get an ECR authorization token for "+ecrHost) || !strings.Contains(err.Error(), "credentials") {
		t.Fatalf("got %v, want an error about the missing AWS credentials", err)
	}
	if n := issuer.callCount() + issuer.deniedCount(); n != 0 {
		t.Errorf("%d requests reached ECR", n)
	}
	t.Log(err)
}

// A credential helper config.json names that is neither served in-process
// nor on PATH is an error that says so, for the registries it is named
// for; one on PATH is run as Docker would run it.
func TestDockerConfigHelpers(t *testing.T) {
	const host = "registry.example.com"
	tests := []struct {
		name, config, ref string
		want              deploy.Credentials
		wantErr           []string
	}{
		{name: "credHelpers names a missing helper", config: `{"credHelpers":{"` + host + `":"desktop"}}`, ref: host + "/app:1",
			wantErr: []string{`(credHelpers) names credential helper "desktop" for ` + host, "docker-credential-desktop is not on PATH",
				"ecr-login, gcloud, gcr", `"auths"`}},
		{name: "credHelpers for another registry", config: `{"credHelpers":{"other.example.com":"desktop"},"auths":{"` + host + `":{"auth":"` +
			base64.StdEncoding.EncodeToString([]byte("u:p")) + `"}}}`, ref: host + "/app:1",
			want: deploy.Credentials{ServerAddress: host, Username: "u", Password: "p"}},
		{name: "credsStore holds the registry", config: `{"credsStore":"desktop","auths":{"` + host + `":{}}}`, ref: host + "/app:1",
			wantErr: []string{`(credsStore) names credential helper "desktop"`, "not on PATH"}},
		{name: "credsStore without the registry", config: `{"credsStore":"desktop","auths":{"` + host + `":{}}}`, ref: "other.example.com/app:1"},
		{name: "helper on PATH", config: `{"credHelpers":{"` + host + `":"fake"}}`, ref: host + "/app:1",
			want: deploy.Credentials{ServerAddress: host, Username: "u", Password: "from-helper"}},
		{name: "in-process helper for a registry it does not serve", config: `{"credHelpers":{"` + host + `":"ecr-login"}}`, ref: host + "/app:1",
			wantErr: []string{`names credential helper "ecr-login" for ` + host + `, which found no credentials`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := isolate(t)
			if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(tt.config), 0o600); err != nil {
				t.Fatal(err)
			}
			helper := "#!/bin/sh\nread host\n[ \"$1\" = get ] && [ \"$host\" = " + host + " ] && echo '{\"Username\":\"u\",\"Secret\":\"from-helper\"}'\n"
			if err := os.WriteFile(filepath.Join(dir, "bin", "docker-credential-fake"), []byte(helper), 0o755); err != nil {
				t.Fatal(err)
			}
			c := New(Config{})
			got, err := c.Credentials(context.Background(), tt.ref)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// A Google Artifact Registry (or GCR) host is reached with an access token
// from Google's Application Default Credentials, here a Google Cloud
// machine's metadata server: a local one that, as the real one, answers
// only requests carrying Metadata-Flavor: Google, found through
// GCE_METADATA_HOST. google.Keychain resolves once per process, so this
// runs in a child, whose environment is all the test's.
func TestGoogleTokens(t *testing.T) {
	t.Parallel()
	const host = "europe-docker.pkg.dev"
	var calls atomic.Int32
	meta := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata-Flavor") != "Google" {
			http.Error(w, "missing Metadata-Flavor", http.StatusForbidden)
			return
		}
		if r.URL.Path != "/computeMetadata/v1/instance/service-accounts/default/token" {
			http.NotFound(w, r)
			return
		}
		n := calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"ya29.test-%d","expires_in":3599,"token_type":"Bearer"}`, n)
	}))
	t.Cleanup(meta.Close)

	dir := t.TempDir()
	caPEM, leaf := newCA(t, host)
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"bin", "certs"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	var refused atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if user, pass, ok := r.BasicAuth(); !ok || user != "_token" || pass != fmt.Sprintf("ya29.test-%d", calls.Load()) {
			if ok {
				refused.Add(1)
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="`+host+`"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	seed := httptest.NewServer(inner)
	t.Cleanup(seed.Close)
	want := pushVia(t, http.DefaultTransport, strings.TrimPrefix(seed.URL, "http://")+"/proj/repo/app:1")

	// No config.json, then the one `gcloud auth configure-docker` writes.
	for i, config := range []string{"", `{"credHelpers":{"` + host + `":"gcloud"}}`} {
		if config != "" {
			if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = []string{
			childEnv + "=" + host + "/proj/repo/app:1", childEnv + "_ADDR=" + srv.Listener.Addr().String(), childEnv + "_CHAIN=1",
			"HOME=" + dir, "DOCKER_CONFIG=" + dir, "PATH=" + filepath.Join(dir, "bin"), "XDG_CONFIG_HOME=" + dir,
			"SSL_CERT_FILE=" + filepath.Join(dir, "ca.pem"), "SSL_CERT_DIR=" + filepath.Join(dir, "certs"),
			"GCE_METADATA_HOST=" + strings.TrimPrefix(meta.URL, "http://"), "AWS_EC2_METADATA_DISABLED=true",
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		token := fmt.Sprintf("ya29.test-%d", i+1)
		for _, w := range []string{"digest: " + want, "credentials: {ServerAddress:" + host + " Username:_token Password:" + token + " "} {
			if !strings.Contains(string(out), w) {
				t.Errorf("config %q: child said %q, want %q", config, out, w)
			}
		}
		if n := calls.Load(); n != int32(i+1) {
			t.Errorf("config %q: %d token requests to the metadata server in all, want %d (one per process: the token is reused)", config, n, i+1)
		}
	}
	if n := refused.Load(); n != 0 {
		t.Errorf("%d credentialed requests refused", n)
	}
}
