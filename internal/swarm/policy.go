package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/tagpolicy"
	"github.com/updater-dev/updater/internal/window"
)

// The release-policy labels of a service (internal/window reads them).
const (
	labelWindow   = "updater.window"
	labelFreeze   = "updater.freeze"
	labelCooldown = "updater.cooldown"
	// labelBackupWindow holds scheduled backups (not a deploy's own)
	// outside its windows: release windows do not apply to them.
	labelBackupWindow = "updater.backup.window"
)

// withPolicies is t with its release policies: the operator's (global,
// UPDATER_WINDOWS and UPDATER_FREEZE) merged with its labels' (its own
// windows replace the global ones; freezes add up). A bad label joins
// t's label errors: the service is then not deployed.
func withPolicies(t deploy.Target, labels map[string]string, global window.Policy) deploy.Target {
	var errs []error
	own := window.Policy{}
	if v, ok := labels[labelWindow]; ok {
		ws, err := window.ParseWindows("label "+labelWindow, v)
		errs = append(errs, err)
		own.Windows = ws
	}
	if v, ok := labels[labelFreeze]; ok {
		fs, err := window.ParseFreezes("label "+labelFreeze, v)
		errs = append(errs, err)
		own.Freezes = fs
	}
	var backupWindow window.Policy
	if v, ok := labels[labelBackupWindow]; ok {
		ws, err := window.ParseWindows("label "+labelBackupWindow, v)
		errs = append(errs, err)
		backupWindow.Windows = ws
	}
	cooldown, err := window.ParseCooldown("label "+labelCooldown, labels[labelCooldown])
	errs = append(errs, err)
	tags, err := tagpolicy.Parse(labels)
	if err != nil {
		errs = append(errs, fmt.Errorf("label %s: %w", tagpolicy.LabelPolicy, err))
	} else if tags.Kind() != tagpolicy.Tag {
		if ref, d, _ := strings.Cut(t.Image, "@"); d != "" && !deploy.Tagged(ref) {
			errs = append(errs, fmt.Errorf("label %s=%q: the service's image %s names no tag: a policy picks among the tags of repo:tag", tagpolicy.LabelPolicy, labels[tagpolicy.LabelPolicy], t.Image))
		}
		t.Tags = tags
	}
	if err := errors.Join(errs...); err != nil {
		t.HooksErr = errors.Join(t.HooksErr, fmt.Errorf("invalid release policy labels: %w", err))
		t.Tags = nil
		return t
	}
	p := window.Merge(global, own)
	if len(p.Windows) > 0 || len(p.Freezes) > 0 {
		t.Policy = p
	}
	if len(p.Freezes) > 0 {
		t.Freeze = window.Policy{Freezes: p.Freezes}
	}
	t.Cooldown = cooldown
	if len(backupWindow.Windows) > 0 {
		t.BackupWindow = backupWindow
	}
	return t
}

// kindSeen records when a service's tag was first seen on a digest (one
// record per service: the digest its tag points to now).
const kindSeen = "first-seen"

// Sightings remembers in Swarm when each service's tag was first seen on
// the digest it points to, for cooldowns (a restart does not reset the
// clock). It reads Swarm once per service and digest, then answers from
// memory. It is a deploy.Sightings.
type Sightings struct {
	Swarm *Swarm

	mu   sync.Mutex
	seen map[string]sighting // service ID → the digest last seen and when
}

var _ deploy.Sightings = (*Sightings)(nil)

type sighting struct {
	Digest string    `json:"digest"`
	First  time.Time `json:"first_seen"`
}

// Seen is when digest was first seen on t's tag, noted now when it was
// not (and note is true), replacing the record of the digest before it.
func (s *Sightings) Seen(ctx context.Context, t deploy.Target, digest string, now time.Time, note bool) (time.Time, error) {
	s.mu.Lock()
	got, ok := s.seen[t.ID]
	s.mu.Unlock()
	if ok && got.Digest == digest {
		return got.First, nil
	}
	st := s.Swarm.store()
	items, err := st.list(ctx, kindSeen, serviceLabel+"="+t.ID, digestLabel+"="+digest)
	if err != nil {
		return time.Time{}, unavailable(err)
	}
	for _, c := range items {
		data, err := st.data(ctx, c)
		if err != nil {
			return time.Time{}, unavailable(err)
		}
		var r sighting
		if json.Unmarshal(data, &r) == nil && r.Digest == digest && !r.First.IsZero() {
			s.remember(t.ID, r)
			return r.First, nil
		}
	}
	if !note {
		return time.Time{}, nil
	}
	r := sighting{Digest: digest, First: now.UTC()}
	data, _ := json.Marshal(r)
	name := recordName("seen", t.ID, digest)
	labels := map[string]string{serviceLabel: t.ID, digestLabel: digest, scopeLabel: s.Swarm.scope()}
	if err := st.replace(ctx, kindSeen, name, labels, data, serviceLabel); err != nil {
		return time.Time{}, fmt.Errorf("note when %s was first seen on %s: %w", deploy.Short(digest), t.Ref(), unavailable(err))
	}
	s.remember(t.ID, r)
	return r.First, nil
}

func (s *Sightings) remember(id string, r sighting) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]sighting{}
	}
	s.seen[id] = r
}
