package swarm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
)

// The updater keeps its own records (failed digests, deploys in flight) as
// Swarm config objects: they live in the Raft store, so they survive an
// updater restart and the loss of a node, and they stay out of the user's
// service spec, where any write would become the PreviousSpec that `docker
// service rollback` returns to, and would reset UpdateStatus.
const (
	kindLabel = "io.updater.kind"
	// scopeLabel tells the records and jobs of one updater from another's:
	// two updaters may share a swarm, each watching its own stack.
	scopeLabel   = "io.updater.scope"
	serviceLabel = "io.updater.service"
	digestLabel  = "io.updater.digest"

	kindFailed   = "failed-digest"
	kindInFlight = "deploy-in-flight"
)

// Failed returns every service's failed digests, in one call.
func (s *Swarm) Failed(ctx context.Context) (map[string]map[string]bool, error) {
	items, err := s.records(ctx, kindFailed, "")
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]bool{}
	for _, c := range items {
		svc, d := c.Spec.Labels[serviceLabel], c.Spec.Labels[digestLabel]
		if out[svc] == nil {
			out[svc] = map[string]bool{}
		}
		out[svc][d] = true
	}
	return out, nil
}

// maxReason bounds the reason a failed-digest record keeps: a hook's log
// tail or a registry's error page can be long, and every record is read
// back on every cycle and replicated to every manager.
const maxReason = 4 << 10

// MarkFailed remembers that digest failed on the service.
func (s *Swarm) MarkFailed(ctx context.Context, serviceID, digest, reason string) error {
	name := recordName("failed", serviceID, digest)
	_, err := s.api.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: name, Labels: map[string]string{
			kindLabel: kindFailed, serviceLabel: serviceID, digestLabel: digest,
		}},
		Data: []byte(capReason(reason) + "\n"),
	}})
	if err != nil && !isConflict(err) {
		return fmt.Errorf("record failed digest %s: %w", name, err)
	}
	return nil
}

// Forget drops the service's failed-digest records.
func (s *Swarm) Forget(ctx context.Context, serviceID string) error {
	return s.removeAll(ctx, kindFailed, serviceID)
}

// Begin records a deploy in flight.
func (s *Swarm) Begin(ctx context.Context, r deploy.Release) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode deploy record: %w", err)
	}
	name := recordName("deploy", r.ServiceID, r.ID)
	_, err = s.api.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: name, Labels: map[string]string{
			kindLabel: kindInFlight, serviceLabel: r.ServiceID, scopeLabel: s.scope(),
		}},
		Data: data,
	}})
	if err != nil {
		return fmt.Errorf("record deploy %s: %w", name, unavailable(err))
	}
	return nil
}

// End removes the record of a finished deploy.
func (s *Swarm) End(ctx context.Context, r deploy.Release) error {
	name := recordName("deploy", r.ServiceID, r.ID)
	if _, err := s.api.ConfigRemove(ctx, name, client.ConfigRemoveOptions{}); err != nil && !isNotFound(err) {
		return fmt.Errorf("remove deploy record %s: %w", name, err)
	}
	return nil
}

// capReason cuts reason to maxReason bytes, on a character boundary, and
// says it was cut.
func capReason(reason string) string {
	const cut = " … (cut)"
	if len(reason) <= maxReason {
		return reason
	}
	reason = reason[:maxReason-len(cut)]
	// Only a character cut in two at the end goes; bytes that were invalid
	// before the cut stay as they were.
	for i := len(reason) - 1; i >= 0 && i >= len(reason)-utf8.UTFMax; i-- {
		if utf8.RuneStart(reason[i]) {
			if !utf8.FullRuneInString(reason[i:]) {
				reason = reason[:i]
			}
			break
		}
	}
	return reason + cut
}

// InFlight returns the deploys this updater's scope begun and not ended.
// A record that can't be read as a deploy (edited by hand, written by a
// newer or broken updater) is set aside, not returned and not fatal: one
// bad record must not stop every other service's deploys. It stays in
// Swarm for a person to look at; SetAside names it.
func (s *Swarm) InFlight(ctx context.Context) ([]deploy.Release, error) {
	items, err := s.records(ctx, kindInFlight, "", scopeLabel+"="+s.scope())
	if err != nil {
		return nil, err
	}
	out := make([]deploy.Release, 0, len(items))
	aside := map[string]string{}
	for _, c := range items {
		data := c.Spec.Data
		if len(data) == 0 {
			// Some engine versions leave Data out of list answers.
			res, err := s.api.ConfigInspect(ctx, c.ID, client.ConfigInspectOptions{})
			if err != nil {
				return nil, fmt.Errorf("read deploy record %s: %w", c.Spec.Name, err)
			}
			data = res.Config.Spec.Data
		}
		r, err := decodeRelease(data, c.Spec.Labels[serviceLabel])
		if err != nil {
			aside[c.Spec.Name] = err.Error()
			continue
		}
		r.Recorded = c.CreatedAt
		out = append(out, r)
	}
	s.setAside(aside)
	return out, nil
}

// decodeRelease reads a deploy record, and refuses one that could not have
// been written by Begin for the service its label names: resuming it would
// write whatever image it holds.
func decodeRelease(data []byte, service string) (deploy.Release, error) {
	var r deploy.Release
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("not a deploy record: %w", err)
	}
	switch {
	case r.ID == "":
		return r, errors.New("the record has no deploy id")
	case r.ServiceID == "" || r.ServiceID != service:
		return r, fmt.Errorf("the record is about service %q but labelled for %q", r.ServiceID, service)
	case !strings.HasPrefix(r.To, "sha256:") || len(r.To) != len("sha256:")+64:
		return r, fmt.Errorf("the record's digest %q is not sha256:<64 hex>", r.To)
	}
	return r, nil
}

// setAside keeps the deploy records the last InFlight could not use,
// logging each the first time only (they are read on every cycle); one a
// person removed is no longer named.
func (s *Swarm) setAside(aside map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, why := range aside {
		if _, seen := s.aside[name]; !seen {
			// Not resumed and not removed: a person inspects it (docker
			// config inspect) and removes it; the README says so.
			s.log().Error("deploy record set aside", "record", name, "err", why)
		}
	}
	s.aside = aside
}

// SetAside names the deploy records InFlight could not use, with why, for
// a person to look at (the readiness page lists them).
func (s *Swarm) SetAside() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.aside))
	for name, why := range s.aside {
		out = append(out, "deploy record "+name+" set aside: "+why)
	}
	slices.Sort(out)
	return out
}

func (s *Swarm) records(ctx context.Context, kind, serviceID string, labels ...string) ([]swarm.Config, error) {
	f := make(client.Filters).Add("label", kindLabel+"="+kind).Add("label", labels...)
	if serviceID != "" {
		f.Add("label", serviceLabel+"="+serviceID)
	}
	res, err := s.api.ConfigList(ctx, client.ConfigListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list %s records: %w", kind, err)
	}
	return res.Items, nil
}

func (s *Swarm) removeAll(ctx context.Context, kind, serviceID string) error {
	items, err := s.records(ctx, kind, serviceID)
	if err != nil {
		return err
	}
	for _, c := range items {
		if _, err := s.api.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{}); err != nil && !isNotFound(err) {
			return fmt.Errorf("remove record %s: %w", c.Spec.Name, err)
		}
	}
	return nil
}

// scope names what this updater watches: its opt-in label and stack.
func (s *Swarm) scope() string {
	sum := sha256.Sum256([]byte(s.cfg.Label + "\x00" + s.cfg.Stack))
	return hex.EncodeToString(sum[:8])
}

// recordName fits Swarm's 64-character limit on object names while staying
// unique per service and key.
func recordName(kind, serviceID, key string) string {
	key = strings.TrimPrefix(key, "sha256:")
	return fmt.Sprintf("updater-%s-%.12s-%.16s", kind, serviceID, key)
}

func isConflict(err error) bool {
	return err != nil && (errdefs.IsConflict(err) || strings.Contains(err.Error(), "already exists"))
}

func isNotFound(err error) bool { return notFound(err) != err }

// Notifier references (a Slack message, a Rollbar deploy) are kept per
// deploy as config objects too, so a deploy resumed after a restart
// reports to the message and deploy it opened.
const (
	kindMemo    = "notify-memo"
	deployLabel = "io.updater.deploy"
	memoLabel   = "io.updater.memo"
)

// Recall returns the value remembered for a deploy and key.
func (s *Swarm) Recall(ctx context.Context, deployID, key string) (string, bool, error) {
	items, err := s.records(ctx, kindMemo, "", deployLabel+"="+deployID, memoLabel+"="+key)
	if err != nil || len(items) == 0 {
		return "", false, err
	}
	data := items[0].Spec.Data
	if len(data) == 0 {
		res, err := s.api.ConfigInspect(ctx, items[0].ID, client.ConfigInspectOptions{})
		if err != nil {
			return "", false, fmt.Errorf("read notifier record %s: %w", items[0].Spec.Name, err)
		}
		data = res.Config.Spec.Data
	}
	return string(data), true, nil
}

// Remember keeps value for a deploy and key.
func (s *Swarm) Remember(ctx context.Context, deployID, key, value string) error {
	name := recordName("memo", deployID, key)
	_, err := s.api.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: name, Labels: map[string]string{
			kindLabel: kindMemo, deployLabel: deployID, memoLabel: key, scopeLabel: s.scope(),
		}},
		Data: []byte(value),
	}})
	if err != nil && !isConflict(err) {
		return fmt.Errorf("record notifier reference %s: %w", name, err)
	}
	return nil
}

// Drop removes what was remembered for a deploy and key.
func (s *Swarm) Drop(ctx context.Context, deployID, key string) error {
	name := recordName("memo", deployID, key)
	if _, err := s.api.ConfigRemove(ctx, name, client.ConfigRemoveOptions{}); err != nil && !isNotFound(err) {
		return fmt.Errorf("remove notifier record %s: %w", name, err)
	}
	return nil
}
