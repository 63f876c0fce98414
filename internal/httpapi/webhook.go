package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// Limits that keep webhooks cheap for whoever sends them without a
// secret, and bounded for whoever sends them with one.
const (
	// maxWebhookBody bounds a webhook's body; GitHub's package events are
	// the largest, tens of kilobytes.
	maxWebhookBody = 1 << 20
	// maxBodiesInFlight is how many webhook bodies are read at once: at
	// most this many MiB are held for bodies, whatever comes in. The rest
	// are answered 503 with Retry-After, which every registry retries.
	maxBodiesInFlight = 4
	// maxEvents is the most events a payload may carry; a payload with
	// more asks for one full check instead of a check per tag.
	maxEvents = 100
	// maxPendingPushes is how many distinct tags the webhooks hand the
	// trigger per pushWindow; past it they ask for one full check, which
	// covers every tag, so the trigger's pending set stays small and a
	// flood costs one cycle.
	maxPendingPushes = 1000
	pushWindow       = time.Minute
	// replayWindow is how long a GitHub delivery is remembered, by its
	// X-GitHub-Delivery ID and by its signature, to make a replay a no-op;
	// at most maxDeliveries of them (the oldest are forgotten first).
	replayWindow  = 10 * time.Minute
	maxDeliveries = 10000
	// retryAfter is what a 503 asks the sender to wait, in seconds.
	retryAfter = "1"
)

// Webhook sources, as counted and logged.
const (
	srcDockerHub    = "dockerhub"
	srcGitHub       = "github"
	srcDistribution = "distribution"
	srcUnknown      = "unknown"
)

// errIgnored marks a payload that is well-formed but asks for nothing: a
// GitHub ping, an npm package, a push by digest without a tag.
type errIgnored struct{ why string }

func (e errIgnored) Error() string { return e.why }

// errTooMany marks a payload with more than maxEvents events.
var errTooMany = fmt.Errorf("more than %d events in one payload", maxEvents)

// hooks is the webhooks' bounded state.
type hooks struct {
	bodies  chan *[]byte // the body slots, each with its buffer, reused
	refused sparse       // the refusal log line, at most once a minute
	replays replays

	mu      sync.Mutex // guards the push budget
	window  time.Time  // when the current pushWindow began
	pending map[deploy.Push]struct{}
}

func newHooks() *hooks {
	h := &hooks{bodies: make(chan *[]byte, maxBodiesInFlight), replays: replays{at: map[string]time.Time{}}}
	for range maxBodiesInFlight {
		h.bodies <- new([]byte)
	}
	return h
}

// readBody reads a body of at most maxWebhookBody bytes into the slot's
// buffer, made once at its full size: bodies take maxBodiesInFlight
// buffers of memory and leave no garbage, whatever comes in.
func readBody(w http.ResponseWriter, r *http.Request, slot *[]byte) ([]byte, error) {
	if *slot == nil {
		*slot = make([]byte, maxWebhookBody+1)
	}
	n, err := io.ReadFull(http.MaxBytesReader(w, r.Body, maxWebhookBody), *slot)
	switch {
	case err == nil: // more than the limit, which MaxBytesReader should have said
		return nil, &http.MaxBytesError{Limit: maxWebhookBody}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return (*slot)[:n], nil
	}
	return nil, err
}

// budget says whether the pushes fit in this window's budget, and takes
// them if they do.
func (h *hooks) budget(pushes []deploy.Push, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(h.window) >= pushWindow || h.pending == nil {
		h.window, h.pending = now, map[deploy.Push]struct{}{}
	}
	fresh := 0
	for _, p := range pushes {
		if _, ok := h.pending[p]; !ok {
			fresh++
		}
	}
	if len(h.pending)+fresh > maxPendingPushes {
		return false
	}
	for _, p := range pushes {
		h.pending[p] = struct{}{}
	}
	return true
}

// credential is what a webhook request says about who sent it, read from
// its headers and URL alone. Each kind belongs to one source: GitHub
// signs (X-Hub-Signature-256), a distribution registry sends a bearer
// token, Docker Hub (which can set no header) the token parameter. So
// whoever learns the Docker Hub URL can send Docker Hub payloads only.
type credential struct {
	source string // srcUnknown: none given
	value  string // the token, or the signature header
}

func credentialOf(r *http.Request) credential {
	if sig := r.Header.Get("X-Hub-Signature-256"); sig != "" {
		return credential{srcGitHub, sig}
	}
	if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return credential{srcDistribution, strings.TrimSpace(t)}
	}
	if t := r.URL.Query().Get("token"); t != "" {
		return credential{srcDockerHub, t}
	}
	// No credential: counted under the source the headers name, if any.
	return credential{sourceOf(r, nil), ""}
}

// webhookSecret is the secret of a source: its own, or the default.
func (s *Server) webhookSecret(source string) string {
	own := map[string]string{srcGitHub: s.cfg.WebhookSecretGitHub, srcDockerHub: s.cfg.WebhookSecretDockerHub,
		srcDistribution: s.cfg.WebhookSecretDistribution}[source]
	if own != "" || source == srcUnknown {
		return own
	}
	return s.cfg.WebhookSecret
}

func (s *Server) webhooksOn() bool {
	return s.cfg.WebhookSecret != "" || s.cfg.WebhookSecretGitHub != "" || s.cfg.WebhookSecretDockerHub != "" || s.cfg.WebhookSecretDistribution != ""
}

// webhook takes a registry's push notification and asks for a check of
// the services that track the pushed tag. The registry is still asked for
// the digest: a webhook is a hint, never the truth, so a forged or stale
// one can at worst cost a registry lookup.
//
// What it costs a sender without the secret is bounded: a token is
// checked before a byte of the body is read; only a GitHub signature,
// which is over the body, has the body read, into one of a few slots
// (503 when all are taken), within maxWebhookBody. Refusals are counted
// and logged at most once a minute.
func (s *Server) webhook(w http.ResponseWriter, r *http.Request) {
	if !s.webhooksOn() {
		writeError(w, http.StatusForbidden, "webhooks are off: set UPDATER_WEBHOOK_SECRET to turn them on")
		return
	}
	cred := credentialOf(r)
	source, key := cred.source, s.webhookSecret(cred.source)
	if cred.value == "" || key == "" || cred.source != srcGitHub && !sameSecret(cred.value, key) {
		s.refuse(w, r, source, "unauthorized", http.StatusUnauthorized,
			"a valid X-Hub-Signature-256 (GitHub), bearer token (distribution) or token parameter (Docker Hub) is required")
		return
	}
	if r.ContentLength > maxWebhookBody {
		// Said up front: refused before a byte of it is read, so a client
		// that announces a huge body and sends it slowly holds nothing.
		s.refuse(w, r, source, "too_large", http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes", maxWebhookBody))
		return
	}
	var slot *[]byte
	select {
	case slot = <-s.hooks.bodies:
		defer func() { s.hooks.bodies <- slot }()
	default:
		w.Header().Set("Retry-After", retryAfter)
		s.refuse(w, r, source, "busy", http.StatusServiceUnavailable, "too many webhooks at once: retry in a second")
		return
	}
	body, err := readBody(w, r, slot)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.refuse(w, r, source, "too_large", http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes", maxWebhookBody))
			return
		}
		s.refuse(w, r, source, "bad_request", http.StatusBadRequest, "read the body: "+err.Error())
		return
	}
	if cred.source == srcGitHub {
		if !validSignature(cred.value, body, key) {
			s.refuse(w, r, source, "unauthorized", http.StatusUnauthorized, "a valid X-Hub-Signature-256 is required")
			return
		}
		// The signature covers the body, not the delivery ID: a replay
		// is known by either.
		if s.hooks.replays.seen(s.cfg.Now(), "delivery "+r.Header.Get("X-GitHub-Delivery"), "signature "+strings.ToLower(cred.value)) {
			s.countWebhook(source, "replayed")
			writeJSON(w, http.StatusOK, map[string]string{"ignored": "this delivery was taken already"})
			return
		}
	} else if shape := sourceOf(r, body); shape != source && shape != srcUnknown {
		s.countWebhook(source, "bad_request")
		writeError(w, http.StatusBadRequest, fmt.Sprintf("a %s payload with a %s credential: each source authenticates only its own payloads", shape, source))
		return
	} else if shape == srcUnknown {
		source = srcUnknown
	}
	pushes, err := parsePushes(source, r.Header.Get("X-GitHub-Event"), body)
	var ignored errIgnored
	switch {
	case errors.As(err, &ignored):
		s.countWebhook(source, "ignored")
		writeJSON(w, http.StatusOK, map[string]string{"ignored": ignored.why})
		return
	case errors.Is(err, errTooMany):
		s.fullCheck(w, source, err.Error())
		return
	case err != nil:
		s.countWebhook(source, "bad_request")
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !s.hooks.budget(pushes, s.cfg.Now()) {
		s.fullCheck(w, source, fmt.Sprintf("more than %d tags pushed within %s", maxPendingPushes, pushWindow))
		return
	}
	s.countWebhook(source, "accepted")
	names := make([]string, len(pushes))
	for i, p := range pushes {
		names[i] = p.String()
		s.cfg.Log.Info("registry push", "source", source, "image", p.String())
	}
	s.cfg.Requests.Push(pushes...)
	writeJSON(w, http.StatusAccepted, map[string]any{"checking": names})
}

// fullCheck answers a payload too big to take tag by tag with one full
// check, which covers whatever it named.
func (s *Server) fullCheck(w http.ResponseWriter, source, why string) {
	s.countWebhook(source, "full_check")
	s.cfg.Log.Info("registry push: a full check instead", "source", source, "reason", why)
	s.cfg.Requests.Check()
	writeJSON(w, http.StatusAccepted, map[string]any{"checking": "every watched service", "reason": why})
}

// refuse answers a refused webhook, counts it, and logs it if no refusal
// was logged within the last minute: a flood is one line a minute.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, source, result string, status int, msg string) {
	s.countWebhook(source, result)
	if ok, since := s.hooks.refused.allow(s.cfg.Now()); ok {
		s.cfg.Log.Warn("webhook refused", "source", source, "reason", result, "remote", clientAddr(r), "refused_unlogged", since)
	}
	writeError(w, status, msg)
}

func (s *Server) countWebhook(source, result string) {
	if s.cfg.Webhooks != nil {
		s.cfg.Webhooks.Webhook(source, result)
	}
}

// sourceOf tells which registry a payload's shape is from: GitHub by its
// event header, the others by the shape of their JSON.
func sourceOf(r *http.Request, body []byte) string {
	if r.Header.Get("X-GitHub-Event") != "" {
		return srcGitHub
	}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/vnd.docker.distribution.events") {
		return srcDistribution
	}
	var shape map[string]json.RawMessage
	if body == nil || json.Unmarshal(body, &shape) != nil {
		return srcUnknown
	}
	switch {
	case shape["events"] != nil:
		return srcDistribution
	case shape["push_data"] != nil:
		return srcDockerHub
	}
	return srcUnknown
}

// parsePushes reads the pushes a payload reports. A payload it can read
// that reports no tag moving is errIgnored.
func parsePushes(source, githubEvent string, body []byte) ([]deploy.Push, error) {
	switch source {
	case srcDockerHub:
		return parseDockerHub(body)
	case srcGitHub:
		return parseGitHub(githubEvent, body)
	case srcDistribution:
		return parseDistribution(body)
	}
	return nil, errors.New("unknown payload: send a Docker Hub webhook, a GitHub package event or a distribution registry notification")
}

func decode(body []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(body))
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return nil
}

// parseDockerHub reads a Docker Hub repository webhook:
// {"push_data": {"tag": "latest"}, "repository": {"repo_name": "acme/web"}}.
// Official images are named "library/…" or by their bare name.
func parseDockerHub(body []byte) ([]deploy.Push, error) {
	var hub struct {
		PushData struct {
			Tag string `json:"tag"`
		} `json:"push_data"`
		Repository struct {
			RepoName  string `json:"repo_name"`
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"repository"`
	}
	if err := decode(body, &hub); err != nil {
		return nil, fmt.Errorf("docker hub webhook: %w", err)
	}
	repo := hub.Repository.RepoName
	if repo == "" && hub.Repository.Name != "" {
		repo = strings.Trim(hub.Repository.Namespace+"/"+hub.Repository.Name, "/")
	}
	switch {
	case repo == "":
		return nil, errors.New("docker hub webhook: no repository.repo_name")
	case hub.PushData.Tag == "":
		return nil, errors.New("docker hub webhook: no push_data.tag")
	}
	return []deploy.Push{{Registry: deploy.DockerHub, Repository: repo, Tag: hub.PushData.Tag}}, nil
}

// parseGitHub reads a GitHub "package" (or older "registry_package")
// event for a container published to GHCR: the owner's namespace and the
// package name make the repository, container_metadata.tag.name the tag.
func parseGitHub(event string, body []byte) ([]deploy.Push, error) {
	type pkg struct {
		Name        string `json:"name"`
		Namespace   string `json:"namespace"`
		PackageType string `json:"package_type"`
		Owner       struct {
			Login string `json:"login"`
		} `json:"owner"`
		Registry *struct {
			URL string `json:"url"`
		} `json:"registry"`
		PackageVersion *struct {
			ContainerMetadata *struct {
				Tag struct {
					Name string `json:"name"`
				} `json:"tag"`
			} `json:"container_metadata"`
		} `json:"package_version"`
	}
	var gh struct {
		Action          string `json:"action"`
		Package         *pkg   `json:"package"`
		RegistryPackage *pkg   `json:"registry_package"`
	}
	switch event {
	case "ping":
		return nil, errIgnored{"ping: webhook reached the updater"}
	case "package", "registry_package":
	default:
		return nil, errIgnored{fmt.Sprintf("GitHub %q events ask for nothing: subscribe to package events", event)}
	}
	if err := decode(body, &gh); err != nil {
		return nil, fmt.Errorf("GitHub %s event: %w", event, err)
	}
	p := gh.Package
	if p == nil {
		p = gh.RegistryPackage
	}
	switch {
	case p == nil:
		return nil, fmt.Errorf("GitHub %s event: no package", event)
	case gh.Action != "published" && gh.Action != "updated":
		return nil, errIgnored{fmt.Sprintf("package %s: nothing was pushed", gh.Action)}
	case !strings.EqualFold(p.PackageType, "container"):
		return nil, errIgnored{fmt.Sprintf("a %s package, not a container image", p.PackageType)}
	case p.PackageVersion == nil || p.PackageVersion.ContainerMetadata == nil:
		return nil, fmt.Errorf("GitHub %s event: no package_version.container_metadata", event)
	}
	owner := p.Namespace
	if owner == "" {
		owner = p.Owner.Login
	}
	if owner == "" || p.Name == "" {
		return nil, fmt.Errorf("GitHub %s event: no package name or namespace", event)
	}
	tag := p.PackageVersion.ContainerMetadata.Tag.Name
	if tag == "" {
		return nil, errIgnored{"an untagged version: no tag moved"}
	}
	host := "ghcr.io"
	if p.Registry != nil && p.Registry.URL != "" {
		if u, err := url.Parse(p.Registry.URL); err == nil && u.Host != "" {
			host = u.Host
		}
	}
	return []deploy.Push{{Registry: host, Repository: strings.ToLower(owner + "/" + p.Name), Tag: tag}}, nil
}

// parseDistribution reads a CNCF distribution (registry:2, Harbor's
// core, zot…) notification envelope. A manifest pushed by tag is a push;
// blob pushes and pulls are not. The request's host is the name the
// pusher used, which need not be the one the services use, so the push
// matches the repository and tag on any registry.
func parseDistribution(body []byte) ([]deploy.Push, error) {
	var env struct {
		Events []struct {
			Action string `json:"action"`
			Target struct {
				Repository string `json:"repository"`
				Tag        string `json:"tag"`
			} `json:"target"`
		} `json:"events"`
	}
	if err := decode(body, &env); err != nil {
		return nil, fmt.Errorf("distribution notification: %w", err)
	}
	if len(env.Events) > maxEvents {
		return nil, errTooMany
	}
	var pushes []deploy.Push
	for i, e := range env.Events {
		if e.Action != "push" || e.Target.Tag == "" {
			continue
		}
		if e.Target.Repository == "" {
			return nil, fmt.Errorf("distribution notification: event %d has no target.repository", i)
		}
		p := deploy.Push{Repository: e.Target.Repository, Tag: e.Target.Tag}
		if !slices.Contains(pushes, p) {
			pushes = append(pushes, p)
		}
	}
	if len(pushes) == 0 {
		return nil, errIgnored{"no tag was pushed"}
	}
	return pushes, nil
}
