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

	"github.com/updater-dev/updater/internal/deploy"
)

// maxWebhookBody bounds a webhook's body; GitHub's package events are the
// largest, tens of kilobytes.
const maxWebhookBody = 1 << 20

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

// webhook takes a registry's push notification and asks for a check of
// the services that track the pushed tag. The registry is still asked for
// the digest: a webhook is a hint, never the truth, so a forged or stale
// one can at worst cost a registry lookup. It answers 401 to a request
// without the secret and 400 to a payload it can't read, before anything
// is asked for.
func (s *Server) webhook(w http.ResponseWriter, r *http.Request) {
	if s.cfg.WebhookSecret == "" {
		writeError(w, http.StatusForbidden, "webhooks are off: set UPDATER_WEBHOOK_SECRET to turn them on")
		return
	}
	if r.ContentLength > maxWebhookBody {
		// Said up front: refused before a byte of it is read, so a client
		// that announces a huge body and sends it slowly holds nothing.
		s.countWebhook(srcUnknown, "bad_request")
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes", maxWebhookBody))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWebhookBody))
	if err != nil {
		s.countWebhook(srcUnknown, "bad_request")
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes", maxWebhookBody))
			return
		}
		writeError(w, http.StatusBadRequest, "read the body: "+err.Error())
		return
	}
	source := sourceOf(r, body)
	// Authenticated before it is parsed: someone without the secret
	// learns nothing about what the parser accepts.
	if !webhookAuthorized(r, body, s.cfg.WebhookSecret) {
		s.countWebhook(source, "unauthorized")
		s.cfg.Log.Warn("webhook refused: no valid signature or token", "source", source, "remote", r.RemoteAddr)
		writeError(w, http.StatusUnauthorized, "a valid X-Hub-Signature-256, bearer token or token parameter is required")
		return
	}
	pushes, err := parsePushes(source, r.Header.Get("X-GitHub-Event"), body)
	var ignored errIgnored
	switch {
	case errors.As(err, &ignored):
		s.countWebhook(source, "ignored")
		writeJSON(w, http.StatusOK, map[string]string{"ignored": ignored.why})
		return
	case err != nil:
		s.countWebhook(source, "bad_request")
		writeError(w, http.StatusBadRequest, err.Error())
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

func (s *Server) countWebhook(source, result string) {
	if s.cfg.Webhooks != nil {
		s.cfg.Webhooks.Webhook(source, result)
	}
}

// sourceOf tells which registry sent a payload: GitHub by its event
// header, the others by the shape of their JSON.
func sourceOf(r *http.Request, body []byte) string {
	if r.Header.Get("X-GitHub-Event") != "" {
		return srcGitHub
	}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/vnd.docker.distribution.events") {
		return srcDistribution
	}
	var shape map[string]json.RawMessage
	if json.Unmarshal(body, &shape) != nil {
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
