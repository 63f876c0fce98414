package swarm

import (
	"context"
	"fmt"
	"maps"
	"sync"

	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
)

// The registry auth a service's spec last carried, as the updater sent
// it (deploy.Resender): one record per service and scope, labelled with
// the credentials' fingerprint and the spec's image then. Swarm itself
// does not say: the Engine API leaves a spec's registry auth out.
const (
	kindAuth   = "registry-auth"
	authLabel  = "io.updater.auth"
	imageLabel = "io.updater.image"
)

var _ deploy.Resender = (*Swarm)(nil)

// authBook is what this process read and wrote of the registry-auth
// records, so that an idle cycle needs no Docker call to know them.
type authBook struct {
	mu   sync.Mutex
	read bool
	sent map[string]deploy.SentAuth // service ID → what its spec last carried
}

func (b *authBook) set(serviceID string, a deploy.SentAuth) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sent == nil {
		b.sent = map[string]deploy.SentAuth{}
	}
	b.sent[serviceID] = a
}

// Sent returns the registry-auth records by service ID: read from Swarm
// the first time and when fresh, else as known from then and from this
// process's writes since.
func (s *Swarm) Sent(ctx context.Context, fresh bool) (map[string]deploy.SentAuth, error) {
	b := &s.auth
	b.mu.Lock()
	if b.read && !fresh {
		defer b.mu.Unlock()
		return maps.Clone(b.sent), nil
	}
	b.mu.Unlock()
	items, err := s.store().list(ctx, kindAuth, scopeLabel+"="+s.scope())
	if err != nil {
		return nil, err
	}
	// One record per service normally; two when an updater died between
	// writing the new one and removing the old: the newest counts.
	newest := map[string]swarm.Config{}
	for _, c := range items {
		id := c.Spec.Labels[serviceLabel]
		if old, ok := newest[id]; id != "" && (!ok || c.CreatedAt.After(old.CreatedAt)) {
			newest[id] = c
		}
	}
	out := make(map[string]deploy.SentAuth, len(newest))
	for id, c := range newest {
		out[id] = deploy.SentAuth{Fingerprint: c.Spec.Labels[authLabel], Image: c.Spec.Labels[imageLabel]}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.read, b.sent = true, out
	return maps.Clone(out), nil
}

// Resend writes the service's spec back unchanged with creds as its
// registry auth (deploy.Resender). The spec goes as read, so the
// TaskTemplate Swarm compares tasks against is the one they run; only an
// image the client library would rewrite on the way (a name without a
// tag gets ":latest") is refused, since that write would restart every
// task.
func (s *Swarm) Resend(ctx context.Context, serviceID string, creds deploy.Credentials, sent deploy.SentAuth) error {
	auth, err := encodeAuth(creds)
	if err != nil {
		return err
	}
	if auth == "" {
		// An empty X-Registry-Auth keeps the auth Swarm has: nothing to send.
		return fmt.Errorf("re-send registry auth of %s: no credentials", serviceID)
	}
	err = s.retry(ctx, serviceID, func(svc swarm.Service) error {
		c := svc.Spec.TaskTemplate.ContainerSpec
		switch {
		case c == nil || c.Image != sent.Image:
			return fmt.Errorf("the spec's image moved: %w", deploy.ErrUnsettled)
		case svc.UpdateStatus != nil && !deploy.Settled(string(svc.UpdateStatus.State)):
			return fmt.Errorf("the update is %s: %w", svc.UpdateStatus.State, deploy.ErrUnsettled)
		case sentImage(c.Image) != c.Image:
			return fmt.Errorf("the image %s would be sent as %s, which restarts every task: it is re-sent with the next deploy", c.Image, sentImage(c.Image))
		}
		_, err := s.api.ServiceUpdate(ctx, svc.ID, client.ServiceUpdateOptions{
			Version:             svc.Version,
			Spec:                svc.Spec,
			EncodedRegistryAuth: auth,
		})
		return err
	})
	if err != nil {
		return err
	}
	return s.noteAuth(ctx, serviceID, sent)
}

// Adopt records a as what the service's spec carries, writing nothing to
// the spec (deploy.Resender): the baseline of a service with no record.
func (s *Swarm) Adopt(ctx context.Context, serviceID string, a deploy.SentAuth) error {
	return s.noteAuth(ctx, serviceID, a)
}

// sentAuth records, after a deploy's spec write, the credentials it
// carried (deploy.Services.Update): a re-send would otherwise follow
// every deploy whose credentials changed since the last record, and make
// the deploy's spec the PreviousSpec that `docker service rollback`
// returns to. A record that fails is logged: the spec is written, and the
// worst it costs is one re-send.
func (s *Swarm) sentAuth(ctx context.Context, serviceID, image string, creds deploy.Credentials) {
	if creds == (deploy.Credentials{}) {
		return // nothing sent: Swarm keeps the auth it had
	}
	a := deploy.SentAuth{Fingerprint: deploy.Fingerprint(serviceID, creds), Image: sentImage(image)}
	s.auth.mu.Lock()
	known := s.auth.read && s.auth.sent[serviceID] == a
	s.auth.mu.Unlock()
	if known {
		return
	}
	if err := s.noteAuth(ctx, serviceID, a); err != nil {
		s.log().Warn("record the registry credentials sent", "service", serviceID, "err", err)
	}
}

// noteAuth replaces the service's registry-auth record with a.
func (s *Swarm) noteAuth(ctx context.Context, serviceID string, a deploy.SentAuth) error {
	scope := s.scope()
	name := recordName("auth", serviceID, hashKey(scope+"\x00"+a.Fingerprint+"\x00"+a.Image))
	labels := map[string]string{serviceLabel: serviceID, scopeLabel: scope, authLabel: a.Fingerprint, imageLabel: a.Image}
	if err := s.store().replace(ctx, kindAuth, name, labels, []byte("registry auth sent with "+a.Image+"\n"), serviceLabel, scopeLabel); err != nil {
		return fmt.Errorf("record the registry auth sent to %s: %w", serviceID, err)
	}
	s.auth.set(serviceID, a)
	return nil
}

// sentImage is image as the client library sends it in a spec
// (ServiceUpdate's imageWithTagString): a name without tag or digest gets
// ":latest", and a name is shortened to its familiar form.
func sentImage(image string) string {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return image
	}
	return reference.FamiliarString(reference.TagNameOnly(named))
}
