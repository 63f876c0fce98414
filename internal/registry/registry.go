// Package registry asks container registries what a tag points to.
package registry

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/updater-dev/updater/internal/deploy"
)

// Sentinels for the answers a caller acts on differently: a missing tag is
// the user's mistake, a refusal is a credentials problem, and neither gets
// better by asking again.
var (
	ErrNotFound     = errors.New("not found")
	ErrUnauthorized = errors.New("unauthorized")
)

const (
	defaultTimeout    = 30 * time.Second
	defaultRetries    = 3
	defaultMaxBackoff = 10 * time.Second
)

// Config tunes a Client; the zero value is ready for production.
type Config struct {
	Timeout    time.Duration     // deadline for one Digest call including its retries; 0 => 30s
	Keychain   authn.Keychain    // nil => the Docker config file (DOCKER_CONFIG / ~/.docker/config.json), then ECR and Google credentials, all in-process (see defaultKeychain)
	Transport  http.RoundTripper // nil => remote.DefaultTransport
	Retries    int               // retries for 429/5xx/temporary network errors; 0 => 3; negative => none
	MaxBackoff time.Duration     // cap on one wait, including an honoured Retry-After; 0 => 10s
	// Insecure lists the registries (host:port, as in image references)
	// that may be reached over plain HTTP besides loopback ones; nil: none.
	Insecure []string
}

// Client resolves tags to digests. It is safe for concurrent use.
type Client struct {
	timeout   time.Duration
	keychain  authn.Keychain
	transport http.RoundTripper
	insecure  map[string]bool // lower-cased host:port

	// A session per repository keeps the ping result and the bearer token,
	// so a poll that runs every minute costs one HEAD instead of a ping, a
	// token exchange and a HEAD. Only sessions that have answered once are
	// kept: a kept session is known to have worked.
	mu       sync.Mutex
	sessions map[string]*remote.Puller
}

// New returns a Client; zero fields of cfg take the documented defaults.
func New(cfg Config) *Client {
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.Keychain == nil {
		cfg.Keychain = defaultKeychain(nil)
	}
	if cfg.Transport == nil {
		cfg.Transport = remote.DefaultTransport
	}
	switch {
	case cfg.Retries == 0:
		cfg.Retries = defaultRetries
	case cfg.Retries < 0:
		cfg.Retries = 0
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = defaultMaxBackoff
	}
	insecure := map[string]bool{}
	for _, h := range cfg.Insecure {
		insecure[strings.ToLower(h)] = true
	}
	return &Client{
		timeout:  cfg.Timeout,
		keychain: cfg.Keychain,
		insecure: insecure,
		transport: plainHTTP{allowed: insecure, next: digestCheck{next: &retrying{
			next:       cfg.Transport,
			retries:    cfg.Retries,
			maxBackoff: cfg.MaxBackoff,
		}}},
		sessions: map[string]*remote.Puller{},
	}
}

// Digest returns the digest Docker pins for ref ("sha256:…"), with one HEAD
// request (no GET) in the normal case: HEAD does not count against Docker
// Hub's pull limit. For a multi-arch image it is the index digest, which is
// what a service spec pins.
func (c *Client) Digest(ctx context.Context, ref string) (string, error) {
	r, err := c.parseRef(ref)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	repo := r.Context()
	p, kept, err := c.session(repo)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", ref, err)
	}
	desc, err := p.Head(ctx, r)
	if err != nil && kept && refused(err) {
		// A session holds the credentials it was opened with. The keychain
		// may have rotated since (ECR tokens last 12 hours), so a refusal
		// earns one fresh look before we call it a credentials problem.
		c.forget(repo, p)
		if p, _, err = c.session(repo); err != nil {
			return "", fmt.Errorf("resolve %s: %w", ref, err)
		}
		desc, err = p.Head(ctx, r)
	}
	if err != nil {
		if refused(err) {
			c.forget(repo, p)
		}
		return "", describe(ctx, ref, err)
	}
	c.keep(repo, p)
	return desc.Digest.String(), nil
}

// Labels returns the labels of the image ref names. It costs GETs (the
// manifest, an index's child manifest, the config blob), so it is for a
// deploy, never for a poll. For a multi-arch index it reads linux/amd64,
// or the first image when there is none.
func (c *Client) Labels(ctx context.Context, ref string) (map[string]string, error) {
	r, err := c.parseRef(ref)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	p, _, err := c.session(r.Context())
	if err != nil {
		return nil, fmt.Errorf("read labels of %s: %w", ref, err)
	}
	desc, err := p.Get(ctx, r)
	if err != nil {
		return nil, describe(ctx, ref, err)
	}
	var img v1.Image
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, describe(ctx, ref, err)
		}
		img, err = pick(idx)
		if err != nil {
			return nil, describe(ctx, ref, err)
		}
	} else if img, err = desc.Image(); err != nil {
		return nil, describe(ctx, ref, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, describe(ctx, ref, err)
	}
	return cfg.Config.Labels, nil
}

// pick chooses the image of an index whose labels stand for all of it.
func pick(idx v1.ImageIndex) (v1.Image, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(m.Manifests) == 0 {
		return nil, errors.New("the index lists no images")
	}
	chosen := m.Manifests[0]
	for _, d := range m.Manifests {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == "amd64" {
			chosen = d
			break
		}
	}
	return idx.Image(chosen.Digest)
}

// Credentials returns what a Docker node needs to pull ref (for
// X-Registry-Auth), read afresh from the keychain on every call so a
// rotated password reaches the nodes; the zero value means anonymous.
func (c *Client) Credentials(ctx context.Context, ref string) (deploy.Credentials, error) {
	r, err := c.parseRef(ref)
	if err != nil {
		return deploy.Credentials{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	host := r.Context().RegistryStr()
	auth, err := authn.Resolve(ctx, c.keychain, r.Context())
	if err != nil {
		return deploy.Credentials{}, fmt.Errorf("look up credentials for %s: %w", host, err)
	}
	if auth == authn.Anonymous {
		return deploy.Credentials{}, nil
	}
	cfg, err := authn.Authorization(ctx, auth)
	if err != nil {
		return deploy.Credentials{}, fmt.Errorf("look up credentials for %s: %w", host, err)
	}
	user, pass := cfg.Username, cfg.Password
	if user == "" && pass == "" && cfg.Auth != "" {
		// deploy.Credentials has no field for the config file's combined
		// "auth" form, and the Engine API wants the parts anyway.
		if user, pass, err = splitAuth(cfg.Auth); err != nil {
			return deploy.Credentials{}, fmt.Errorf("look up credentials for %s: %w", host, err)
		}
	}
	creds := deploy.Credentials{
		Username:      user,
		Password:      pass,
		IdentityToken: cfg.IdentityToken,
		RegistryToken: cfg.RegistryToken,
	}
	if creds == (deploy.Credentials{}) {
		return deploy.Credentials{}, nil
	}
	creds.ServerAddress = host
	return creds, nil
}

func (c *Client) session(repo name.Repository) (p *remote.Puller, kept bool, err error) {
	c.mu.Lock()
	p, kept = c.sessions[repo.String()]
	c.mu.Unlock()
	if kept {
		return p, true, nil
	}
	p, err = remote.NewPuller(
		remote.WithAuthFromKeychain(c.keychain),
		remote.WithTransport(c.transport),
		remote.WithUserAgent("updater"),
		// The library's own retries know neither Retry-After nor our
		// deadline, and stacked under ours they would multiply the attempts.
		remote.WithRetryStatusCodes(),
		remote.WithRetryPredicate(func(error) bool { return false }),
		remote.WithRetryBackoff(remote.Backoff{Steps: 1}),
	)
	return p, false, err
}

func (c *Client) keep(repo name.Repository, p *remote.Puller) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.sessions[repo.String()]; !ok {
		c.sessions[repo.String()] = p
	}
}

func (c *Client) forget(repo name.Repository, p *remote.Puller) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sessions[repo.String()] == p {
		delete(c.sessions, repo.String())
	}
}

// parseRef accepts what `docker pull` accepts. Loopback registries are
// marked insecure because Docker trusts them over plain HTTP by default and
// go-containerregistry only knows "localhost:port", "*.localhost",
// "127.0.0.1" and "::1", not the rest of 127.0.0.0/8 or a bare "localhost";
// so are the registries Config.Insecure lists. Insecure means HTTPS is
// tried first, then plain HTTP.
func (c *Client) parseRef(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("parse image reference %q: want [registry[:port]/]repository[:tag] or [registry[:port]/]repository@sha256:<64 hex>, for example 127.0.0.1:5000/app:latest or ghcr.io/org/app:1.2: %w", ref, err)
	}
	host := r.Context().RegistryStr()
	if loopback(host) || c.insecure[strings.ToLower(host)] {
		return name.ParseReference(ref, name.Insecure)
	}
	return r, nil
}

func loopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func splitAuth(auth string) (user, pass string, err error) {
	b, err := base64.StdEncoding.DecodeString(auth)
	if err != nil {
		// The decoder's message quotes the offending input, which is a secret.
		return "", "", errors.New("malformed auth field: not base64")
	}
	user, pass, ok := strings.Cut(string(b), ":")
	if !ok {
		return "", "", errors.New("malformed auth field: want user:password")
	}
	return user, pass, nil
}
