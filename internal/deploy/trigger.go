package deploy

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Push is a registry's notice that a tag moved. It is a hint, not the
// truth: the cycle it triggers still asks the registry for the digest.
type Push struct {
	// Registry is the registry's host ("ghcr.io", "docker.io"); "" when
	// the notice cannot say which name the services use for it, and then
	// the repository and tag match on any registry.
	Registry string `json:"registry,omitempty"`
	// Repository is the path in the registry: "owner/app", "library/nginx".
	Repository string `json:"repository"`
	Tag        string `json:"tag"`
}

func (p Push) String() string {
	if p.Registry == "" {
		return p.Repository + ":" + p.Tag
	}
	return p.Registry + "/" + p.Repository + ":" + p.Tag
}

// DockerHub is Docker Hub's canonical host; its other names are aliases.
const DockerHub = "docker.io"

// Matches reports whether a service tracking ref (a tag, as Target.Ref
// gives it) follows the pushed tag. Docker Hub's short forms count as the
// long ones: "nginx:1" is "docker.io/library/nginx:1".
func (p Push) Matches(ref string) bool {
	host, path, tag := splitRef(ref)
	if tag != p.Tag || tag == "" {
		return false
	}
	repo := strings.ToLower(p.Repository)
	if p.Registry == "" {
		return path == repo || host == DockerHub && path == "library/"+repo
	}
	want := CanonicalHost(p.Registry)
	if want == DockerHub && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	return host == want && path == repo
}

// PushOf is the push that matches ref: what a check of that one tag asks for.
func PushOf(ref string) Push {
	host, path, tag := splitRef(ref)
	return Push{Registry: host, Repository: path, Tag: tag}
}

// splitRef splits "host/path:tag" the way Docker reads it: the first
// component is a host only when it looks like one (a dot, a port or
// localhost); otherwise the image is on Docker Hub, where a one-component
// name lives under library/. host and path come back lower-cased.
func splitRef(ref string) (host, path, tag string) {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref, tag = ref[:i], ref[i+1:]
	}
	ref = strings.ToLower(ref)
	first, rest, ok := strings.Cut(ref, "/")
	if ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		host, path = CanonicalHost(first), rest
	} else {
		host, path = DockerHub, ref
	}
	if host == DockerHub && !strings.Contains(path, "/") {
		path = "library/" + path
	}
	return host, path, tag
}

// CanonicalHost is a registry host as references name it: lower-case,
// and DockerHub for each of the Hub's names (a webhook names its registry).
func CanonicalHost(h string) string {
	h = strings.ToLower(h)
	switch h {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "hub.docker.com":
		return DockerHub
	}
	return h
}

// Trigger runs the checks and deploys that webhooks and people ask for, in
// the background. Checks go through the pipeline's one-planning-at-a-time
// guard: requests that arrive while one plans are merged and run once
// after it, so a push during a cycle is never lost and a burst of pushes
// is one cycle, not a queue of them. Neither waits on a deploy running.
type Trigger struct {
	p    *Pipeline
	log  *slog.Logger
	wake chan struct{}
	done chan struct{}
	reqs sync.WaitGroup // requested deploys waiting for their outcome

	mu      sync.Mutex // guards what is asked for
	all     bool
	pushes  []Push        // in the order asked
	pending map[Push]bool // the same, to find one at once
	deploys []string
}

// NewTrigger starts a trigger working on p until ctx ends; Stop waits for
// it.
func NewTrigger(ctx context.Context, p *Pipeline) *Trigger {
	t := &Trigger{p: p, log: p.Log, wake: make(chan struct{}, 1), done: make(chan struct{})}
	// A run that ends after its tag moved on asks for that tag's check.
	p.mu.Lock()
	p.again = t.Push
	p.mu.Unlock()
	go t.run(ctx)
	return t
}

// Stop waits for the trigger to finish what it runs; it returns once the
// context given to NewTrigger has ended and the work in hand is done.
func (t *Trigger) Stop() { <-t.done; t.reqs.Wait() }

// maxPending bounds the pushes waiting for a check: past it, they are
// dropped for one full check, which covers every one of them.
const maxPending = 1000

// Push asks for a check of the services that track the pushed tags.
func (t *Trigger) Push(pushes ...Push) {
	t.mu.Lock()
	for _, ps := range pushes {
		if t.all {
			break // a full check is asked for: it covers every push
		}
		if t.pending[ps] {
			continue
		}
		if len(t.pushes) >= maxPending {
			t.all, t.pushes, t.pending = true, nil, nil
			break
		}
		if t.pending == nil {
			t.pending = map[Push]bool{}
		}
		t.pending[ps] = true
		t.pushes = append(t.pushes, ps)
	}
	t.mu.Unlock()
	t.poke()
}

// Check asks for a full cycle.
func (t *Trigger) Check() {
	t.mu.Lock()
	t.all = true
	t.mu.Unlock()
	t.poke()
}

// Deploy asks for the named watched service to be deployed like `updater
// deploy` does: a person asked, so it needs no approval and a digest that
// failed before is tried again. It answers ErrNotFound at once for a
// service that is not watched, with one List call.
func (t *Trigger) Deploy(ctx context.Context, name string) error {
	targets, err := t.p.Lister.List(ctx)
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	found := false
	for _, tg := range targets {
		found = found || tg.Name == name || tg.ID == name
	}
	if !found {
		return fmt.Errorf("service %q is not watched: %w", name, ErrNotFound)
	}
	t.mu.Lock()
	if !slices.Contains(t.deploys, name) {
		t.deploys = append(t.deploys, name)
	}
	t.mu.Unlock()
	t.poke()
	return nil
}

// Approve approves a pending deploy and asks for the check that deploys it.
func (t *Trigger) Approve(_ context.Context, id string) (Approval, error) {
	a, err := t.p.Approve(id)
	if err != nil {
		return Approval{}, err
	}
	t.Push(PushOf(a.Ref))
	return a, nil
}

// Reject rejects a pending deploy.
func (t *Trigger) Reject(ctx context.Context, id string) (Approval, error) {
	return t.p.Reject(ctx, id)
}

func (t *Trigger) poke() {
	select {
	case t.wake <- struct{}{}:
	default: // already poked: the worker takes everything asked for so far
	}
}

func (t *Trigger) take() (all bool, pushes []Push, deploys []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	all, pushes, deploys = t.all, t.pushes, t.deploys
	t.all, t.pushes, t.pending, t.deploys = false, nil, nil, nil
	return all, pushes, deploys
}

func (t *Trigger) run(ctx context.Context) {
	defer close(t.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
		}
		all, pushes, deploys := t.take()
		// Each requested deploy waits for its outcome on its own: checks
		// and other requests go on meanwhile.
		for _, name := range deploys {
			if ctx.Err() != nil {
				return
			}
			t.reqs.Add(1)
			go func() {
				defer t.reqs.Done()
				defer recovered(t.log, "the requested deploy of "+name)
				ev, err := t.p.DeployService(ctx, name)
				if err != nil {
					t.log.Error("requested deploy", "service", name, "err", err)
					return
				}
				t.log.Info("requested deploy done", "service", name, "deploy_id", ev.Release.ID, "state", string(ev.Kind))
			}()
		}
		if !all && len(pushes) == 0 || ctx.Err() != nil {
			continue
		}
		if all {
			pushes = nil // every service
		}
		t.check(ctx, all, pushes)
	}
}

// retryAfter is how long a requested check that failed (Docker gone, the
// lease not held for a moment) waits before it is tried again.
const retryAfter = 5 * time.Second

// check runs one requested check; a panic in it is logged, and the
// trigger goes on taking requests. One that fails is asked for again
// after retryAfter, merged with what was asked meanwhile: a push is not
// lost to a moment without Docker or without the lease.
func (t *Trigger) check(ctx context.Context, all bool, pushes []Push) {
	defer recovered(t.log, "a requested check")
	plans, err := t.p.CycleFor(ctx, pushes)
	if err != nil {
		// The pipeline logs outages once; a failing check is only worth a
		// debug line, like a failing tick.
		t.log.Debug("requested check failed; asked again shortly", "err", err, "retry_in", retryAfter.String())
		if ctx.Err() == nil {
			time.AfterFunc(retryAfter, func() {
				if all {
					t.Check()
				} else {
					t.Push(pushes...)
				}
			})
		}
		return
	}
	t.log.Debug("requested check done", "services", len(plans), "full", all)
}
