package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// childEnv makes the test binary a one-shot resolver (see TestMain): the
// system certificate pool is read once per process, so what SSL_CERT_FILE
// and SSL_CERT_DIR do can only be seen in a process started with them.
const childEnv = "REGISTRY_TEST_RESOLVE_CHILD"

func TestMain(m *testing.M) {
	if ref := os.Getenv(childEnv); ref != "" {
		os.Exit(resolveChild(ref, os.Getenv(childEnv+"_ADDR")))
	}
	os.Exit(m.Run())
}

// resolveChild resolves ref with the production transport's TLS settings
// (no RootCAs: the system pool), the registry's name dialled at addr, and
// prints the digest or the error; with _CHAIN set, through the production
// keychain, printing the credentials the nodes would get as well.
func resolveChild(ref, addr string) int {
	kc := anonymous()
	if os.Getenv(childEnv+"_CHAIN") != "" {
		kc = nil
	}
	c := New(Config{Keychain: kc, Transport: redirect(addr), Retries: -1, Timeout: 10 * time.Second})
	d, err := c.Digest(context.Background(), ref)
	if err != nil {
		fmt.Println("error:", err)
		return 0
	}
	fmt.Println("digest:", d)
	if kc == nil {
		creds, err := c.Credentials(context.Background(), ref)
		fmt.Printf("credentials: %+v %v\n", creds, err)
	}
	return 0
}

// redirect dials addr whatever host a request names, as DNS would for a
// registry's name on a LAN.
func redirect(addr string) *http.Transport {
	return &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
}

// A registry named in Insecure is reached over plain HTTP; one not named
// is not, not even on a private address, where go-containerregistry alone
// would fall back to HTTP.
func TestInsecureRegistries(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	want := f.pushImage(t, "app:1")
	tests := []struct {
		name, host string
		insecure   []string
		wantErr    string
	}{
		{"listed name", "registry.lan:5000", []string{"registry.lan:5000"}, ""},
		{"listed in another case", "Registry.LAN:5000", []string{"registry.lan:5000", "other.lan:5000"}, ""},
		{"listed private address", "10.1.2.3:5000", []string{"10.1.2.3:5000"}, ""},
		{"name not listed", "registry.lan:5000", nil, "server gave HTTP response to HTTPS client"},
		{"other port listed", "registry.lan:5000", []string{"registry.lan:5001"}, "server gave HTTP response to HTTPS client"},
		{"private address not listed", "10.1.2.3:5000", nil, "plain HTTP to 10.1.2.3:5000 refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Config{Keychain: anonymous(), Transport: redirect(f.host), Retries: -1, Insecure: tt.insecure})
			got, err := c.Digest(context.Background(), tt.host+"/app:1")
			if tt.wantErr == "" {
				if err != nil || got != want {
					t.Fatalf("got %q, %v; want %s", got, err, want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %q, %v; want an error containing %q", got, err, tt.wantErr)
			}
		})
	}
}

// A registry whose certificate a private CA signed is trusted when that CA
// is in SSL_CERT_FILE or in a directory of SSL_CERT_DIR, as Go's crypto/x509
// reads them on Linux for the system pool, and only then.
func TestPrivateCA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caPEM, leaf := newCA(t, "private-ca.test")
	otherPEM, _ := newCA(t, "private-ca.test")
	for name, data := range map[string][]byte{"ca.pem": caPEM, "other.pem": otherPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"empty", "cadir"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cadir", "ca.pem"), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewUnstartedServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	// Seed over the test's own client, which trusts the CA directly.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	seed := redirect(srv.Listener.Addr().String())
	seed.TLSClientConfig = &tls.Config{RootCAs: pool}
	want := pushVia(t, seed, "private-ca.test/app:1")

	empty := filepath.Join(dir, "empty")
	tests := []struct {
		name, certFile, certDir string
		want                    string
	}{
		{"SSL_CERT_FILE names the CA", filepath.Join(dir, "ca.pem"), empty, "digest: " + want},
		{"SSL_CERT_DIR holds the CA", filepath.Join(dir, "other.pem"), empty + ":" + filepath.Join(dir, "cadir"), "digest: " + want},
		{"another CA", filepath.Join(dir, "other.pem"), empty, "certificate signed by unknown authority"},
		{"neither", "", empty, "certificate signed by unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"=private-ca.test/app:1", childEnv+"_ADDR="+srv.Listener.Addr().String(),
				"SSL_CERT_FILE="+tt.certFile, "SSL_CERT_DIR="+tt.certDir)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Fatalf("child said %q, want %q", out, tt.want)
			}
		})
	}
}

// pushVia pushes a new image to ref over tr and returns its digest.
func pushVia(t *testing.T, tr http.RoundTripper, ref string) string {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(mustParse(t, ref), img, remote.WithTransport(tr)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// newCA makes a CA and a server certificate it signed for host; it
// returns the CA's certificate in PEM and the server's key pair.
func newCA(t *testing.T, host string) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "updater test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}
