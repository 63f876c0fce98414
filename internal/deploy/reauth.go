package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Credentials kept fresh for the workers. Swarm keeps the registry auth
// sent with a service's last spec write and gives it to every task it
// creates, on any node, later: a task rescheduled hours after a deploy
// (a node drained or lost, a task failing) pulls with what the deploy
// sent, which a rotated password or a 12-hour ECR token no longer opens
// (moby#36126). So when the credentials the updater would send for a
// service differ from those it last sent, it sends them again with a
// spec write that changes nothing else, as `docker service update
// --with-registry-auth SERVICE` does.
//
// What Swarm does with such a write (swarmkit's controlapi UpdateService
// and orchestrator.IsTaskDirty; checked on Docker 20.10): the spec version
// moves, UpdateStatus is reset to none, and PreviousSpec becomes the spec
// as it was (so `docker service rollback` returns to the same image, with
// the old credentials). No task that has its image (ready, starting or
// running) is restarted: the task comparison leaves the pull options out
// for them. A task still being placed or pulling is replaced by one that
// carries the new credentials.
//
// What was sent is remembered in Swarm (a record per service: the
// credentials' fingerprint, never the secret, and the spec's image then),
// written by this re-send and by every deploy's spec write, so a restarted
// updater does not send again what Swarm has. A record made for another
// image than the spec carries now says nothing about what Swarm holds (a
// rollback restored the previous spec and its credentials, someone else
// wrote the spec): the credentials are sent again then. A service with no
// record at all (one this updater never wrote, or an updater upgraded to
// this version) is adopted: the credentials it would send are recorded,
// nothing is written. Writing every such spec at first sight would cost
// each service a spec write (and its PreviousSpec) for credentials that
// most likely did not change; what changes from then on is re-sent.

// SentAuth is what a spec write of a service last carried: the
// fingerprint of its registry credentials (Fingerprint) and the image the
// spec named then.
type SentAuth struct {
	Fingerprint string
	Image       string
}

// Resender sends a service's registry credentials again without changing
// its spec otherwise. It is an optional port: the Services adapter
// implements it where it can, and the pipeline re-sends nothing without.
type Resender interface {
	// Sent returns what the records in Swarm say the last spec write of
	// each service carried, by service ID. With fresh false it may answer
	// from what this process read and wrote before, without a Docker
	// call; fresh reads Swarm.
	Sent(ctx context.Context, fresh bool) (map[string]SentAuth, error)
	// Resend writes the service's spec back as it is, with creds as its
	// registry auth, over the version it read (retrying Swarm's "update
	// out of sequence" as Update does), then records sent. It writes
	// nothing, and returns an error wrapping ErrUnsettled, when that read
	// shows the spec's image is no longer sent.Image or Swarm updating the
	// service or rolling it back (Settled false): a write then would
	// restart Swarm's update, or resume a paused one.
	Resend(ctx context.Context, serviceID string, creds Credentials, sent SentAuth) error
	// Adopt records sent as what the service's spec carries, writing
	// nothing to the spec: the baseline for a service with no record.
	Adopt(ctx context.Context, serviceID string, sent SentAuth) error
}

// ErrUnsettled means a service is being updated or rolled back, or its
// spec moved since it was listed: its credentials are not re-sent now.
var ErrUnsettled = errors.New("the service is being updated, or its spec moved")

// Settled reports whether a spec write that changes only the registry
// auth may go now, by the service's UpdateStatus.State ("" when it has
// none): not while Swarm updates or rolls back the service, nor while such
// an update is paused, which the write would resume.
func Settled(updateState string) bool {
	switch updateState {
	case "", "completed", "rollback_completed":
		return true
	}
	return false
}

// Fingerprint identifies the registry credentials creds as sent with the
// spec of service serviceID: equal for equal credentials, and a hash, so
// the records can say what was sent without holding the secret. The
// service ID is hashed in, so two services' records do not show that they
// share a password.
func Fingerprint(serviceID string, creds Credentials) string {
	h := sha256.New()
	// Lengths first: no two different inputs hash the same bytes.
	for _, s := range []string{"updater registry auth v1", serviceID, creds.ServerAddress, creds.Username,
		creds.Password, creds.IdentityToken, creds.RegistryToken} {
		fmt.Fprintf(h, "%d:%s;", len(s), s)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// resendable reports whether pl's service may have its credentials
// re-sent in this cycle: not one that deploys or is deploying (its own
// spec write carries them, and no write may go beside it), nor one
// whose registry could not be asked (whatever fails there, the
// credentials included, is reported by the cycle).
func resendable(pl Plan) bool {
	switch pl.Action {
	case ActDeploy, ActDeploying, ActError:
		return false
	}
	return true
}

// resendCredentials sends the registry credentials of the cycle's settled
// services again when they differ from those their spec last carried (a
// rotated password, a refreshed cloud token), or when the spec's image
// is not the one their record names; a service with no record is adopted.
// An idle cycle costs no Docker call and no registry request: the
// credentials come from the keychain (a file read; a cloud keychain keeps
// its token until half its life), and what was sent is read from Swarm
// once, then known from the writes of this process; a fingerprint that
// differs is checked against Swarm before anything is written.
func (p *Pipeline) resendCredentials(ctx context.Context, plans []Plan) {
	rs, ok := p.Services.(Resender)
	if !ok || p.DryRun {
		return
	}
	type due struct {
		t     Target
		creds Credentials
		want  SentAuth
	}
	var todo []due
	byRef := map[string]Credentials{}
	p.mu.Lock()
	refused := maps.Clone(p.refused)
	p.mu.Unlock()
	for _, pl := range plans {
		if !resendable(pl) {
			continue
		}
		ref := pl.Target.Ref()
		c, seen := byRef[ref]
		if !seen {
			var err error
			if c, err = p.Registry.Credentials(ctx, ref); err != nil {
				// A deploy of the service reports it, if it comes to that.
				p.Log.Debug("look up registry credentials to re-send", "service", pl.Target.Name, "err", err)
				continue
			}
			byRef[ref] = c
		}
		if c == (Credentials{}) {
			continue // anonymous: nothing to send, and an empty auth keeps Swarm's
		}
		want := SentAuth{Fingerprint(pl.Target.ID, c), pl.Target.Image}
		if refused[pl.Target.ID] == want {
			continue // its spec refused just this: tried again once it or the credentials change
		}
		todo = append(todo, due{pl.Target, c, want})
	}
	var sent map[string]SentAuth
	for _, fresh := range []bool{false, true} {
		if len(todo) == 0 {
			return
		}
		var err error
		if sent, err = rs.Sent(ctx, fresh); err != nil {
			p.Log.Warn("read the registry credentials last sent", "err", err)
			return
		}
		var differ []due
		for _, d := range todo {
			if sent[d.t.ID] != d.want {
				differ = append(differ, d)
			}
		}
		todo = differ
	}
	// No record at all, even in Swarm: adopted, not written.
	todo = slices.DeleteFunc(todo, func(d due) bool {
		if _, known := sent[d.t.ID]; known {
			return false
		}
		if err := rs.Adopt(ctx, d.t.ID, d.want); err != nil {
			p.Log.Warn("record the registry credentials a service's spec carries", "service", d.t.Name, "err", err)
		} else {
			p.Log.Debug("registry credentials adopted as sent", "service", d.t.Name)
		}
		return true
	})
	// No run starts meanwhile: runs start only under p.running, which the
	// cycle holds; one started before is planned ActDeploying (inFlight).
	for _, d := range todo {
		if !p.confirm(ctx) {
			return
		}
		err := rs.Resend(ctx, d.t.ID, d.creds, d.want)
		switch {
		case errors.Is(err, ErrUnsettled):
			p.Log.Debug("registry credentials not re-sent now", "service", d.t.Name, "err", err)
		case err != nil:
			// Refused for what the spec is (not a passing state): said once,
			// not every cycle.
			p.Log.Warn("re-send registry credentials; not tried again until the spec or the credentials change", "service", d.t.Name, "err", err)
			p.mu.Lock()
			if p.refused == nil {
				p.refused = map[string]SentAuth{}
			}
			p.refused[d.t.ID] = d.want
			p.mu.Unlock()
		default:
			p.Log.Info("registry credentials re-sent", "service", d.t.Name, "image", d.t.Image)
		}
	}
}
