package swarm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/nodeprune"
)

// The updater keeps its own records (failed digests, deploys in flight,
// migrations done, notifier memos, promoted digests, the lease) as Swarm
// config objects: they live in the Raft store, so they survive an updater
// restart and the loss of a node, and they stay out of the user's service
// spec, where any write would become the PreviousSpec that `docker
// service rollback` returns to, and would reset UpdateStatus.
const (
	kindLabel = "io.updater.kind"
	// scopeLabel tells the records and jobs of one updater from another's:
	// two updaters may share a swarm, each watching its own stack.
	scopeLabel   = nodeprune.ScopeLabel
	serviceLabel = "io.updater.service"
	digestLabel  = "io.updater.digest"
	keyLabel     = "io.updater.key"
	// stageLabel is how far a deploy in flight got (deploy.Stage): a
	// label, since a config's data can't change but its labels can.
	stageLabel = "io.updater.stage"

	kindFailed   = "failed-digest"
	kindInFlight = "deploy-in-flight"
	kindMigrated = "migrated"
	kindPromoted = "promoted"
	kindHistory  = "deploy-history"
)

// store is the one door to the records. Swarm configs are created and
// removed, never edited (only their labels can change: the lease's
// holder, a deploy's stage), so a record of a kind is found by its labels and replaced by
// writing the new one before removing the old.
type store struct {
	api *docker
	log *slog.Logger
}

func (s *Swarm) store() store { return store{api: s.api, log: s.log()} }

// recordSpec is a record of kind named name, with labels (kind's added to
// them) and data.
func recordSpec(kind, name string, labels map[string]string, data []byte) swarm.ConfigSpec {
	labels[kindLabel] = kind
	return swarm.ConfigSpec{Annotations: swarm.Annotations{Name: name, Labels: labels}, Data: data}
}

// create writes a record; Docker's error as it is, so that each caller
// decides what a name already taken means.
func (st store) create(ctx context.Context, spec swarm.ConfigSpec) error {
	_, err := st.api.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: spec})
	return err
}

// put writes a record named after what it holds: one already there with
// that name holds the same, so that is no error.
func (st store) put(ctx context.Context, kind, name string, labels map[string]string, data []byte) error {
	if err := st.create(ctx, recordSpec(kind, name, labels, data)); err != nil && !isConflict(err) {
		return err
	}
	return nil
}

// replace puts the record, then removes the others of its kind that carry
// the labels named by same: only the newest counts. A record left by a
// failed removal is harmless (readers take the newest) and goes next time.
func (st store) replace(ctx context.Context, kind, name string, labels map[string]string, data []byte, same ...string) error {
	if err := st.put(ctx, kind, name, labels, data); err != nil {
		return err
	}
	var filter []string
	for _, k := range same {
		filter = append(filter, k+"="+labels[k])
	}
	items, err := st.list(ctx, kind, filter...)
	if err != nil {
		return nil // the record that matters is written
	}
	for _, c := range items {
		if c.Spec.Name != name {
			if err := st.remove(ctx, c.ID); err != nil {
				st.log.Warn("remove replaced record", "record", c.Spec.Name, "err", err)
			}
		}
	}
	return nil
}

// list returns the records of kind with every label of labels
// ("key=value"), in one call.
func (st store) list(ctx context.Context, kind string, labels ...string) ([]swarm.Config, error) {
	f := make(client.Filters).Add("label", kindLabel+"="+kind).Add("label", labels...)
	res, err := st.api.ConfigList(ctx, client.ConfigListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list %s records: %w", kind, err)
	}
	return res.Items, nil
}

// data is a listed record's data. Some engine versions leave Data out of
// config list answers; a record listed without it is inspected, one call
// more, where it is needed only.
func (st store) data(ctx context.Context, c swarm.Config) ([]byte, error) {
	if len(c.Spec.Data) > 0 {
		return c.Spec.Data, nil
	}
	res, err := st.api.ConfigInspect(ctx, c.ID, client.ConfigInspectOptions{})
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", c.Spec.Name, err)
	}
	return res.Config.Spec.Data, nil
}

// get inspects the record named name; false when there is none.
func (st store) get(ctx context.Context, name string) (swarm.Config, bool, error) {
	res, err := st.api.ConfigInspect(ctx, name, client.ConfigInspectOptions{})
	if isNotFound(err) {
		return swarm.Config{}, false, nil
	}
	if err != nil {
		return swarm.Config{}, false, err
	}
	return res.Config, true, nil
}

// relabel writes spec's labels over the version read, a compare-and-set
// (the lease, a deploy's stage). Docker's error as it is.
func (st store) relabel(ctx context.Context, id string, version uint64, spec swarm.ConfigSpec) error {
	_, err := st.api.ConfigUpdate(ctx, id, client.ConfigUpdateOptions{Version: swarm.Version{Index: version}, Spec: spec})
	return err
}

// remove removes the record with ID or name ref; one already gone is no
// error.
func (st store) remove(ctx context.Context, ref string) error {
	if _, err := st.api.ConfigRemove(ctx, ref, client.ConfigRemoveOptions{}); err != nil && !isNotFound(err) {
		return err
	}
	return nil
}

// removeAll removes every record of kind with labels.
func (st store) removeAll(ctx context.Context, kind string, labels ...string) error {
	items, err := st.list(ctx, kind, labels...)
	if err != nil {
		return err
	}
	for _, c := range items {
		if err := st.remove(ctx, c.ID); err != nil {
			return fmt.Errorf("remove record %s: %w", c.Spec.Name, err)
		}
	}
	return nil
}

// Failed returns every service's failed digests, in one call.
func (s *Swarm) Failed(ctx context.Context) (map[string]map[string]bool, error) {
	items, err := s.store().list(ctx, kindFailed)
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
	err := s.store().put(ctx, kindFailed, name, map[string]string{serviceLabel: serviceID, digestLabel: digest},
		[]byte(capReason(reason)+"\n"))
	if err != nil {
		return fmt.Errorf("record failed digest %s: %w", name, err)
	}
	return nil
}

// Forget drops the service's failed-digest records.
func (s *Swarm) Forget(ctx context.Context, serviceID string) error {
	return s.store().removeAll(ctx, kindFailed, serviceLabel+"="+serviceID)
}

// Begin records a deploy in flight.
func (s *Swarm) Begin(ctx context.Context, r deploy.Release) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode deploy record: %w", err)
	}
	name := recordName("deploy", r.ServiceID, r.ID)
	// A name already taken is an error here: a deploy ID is begun once.
	err = s.store().create(ctx, recordSpec(kindInFlight, name, map[string]string{serviceLabel: r.ServiceID, scopeLabel: s.scope()}, data))
	if err != nil {
		return fmt.Errorf("record deploy %s: %w", name, unavailable(err))
	}
	return nil
}

// Reached notes on the record of r that it got to stage, over the
// record's version as inspected now (only this run writes it).
func (s *Swarm) Reached(ctx context.Context, r deploy.Release, stage deploy.Stage) error {
	name := recordName("deploy", r.ServiceID, r.ID)
	st := s.store()
	c, ok, err := st.get(ctx, name)
	if err != nil {
		return fmt.Errorf("read deploy record %s: %w", name, unavailable(err))
	}
	if !ok {
		return fmt.Errorf("deploy record %s: %w", name, deploy.ErrNotFound)
	}
	spec := c.Spec
	spec.Labels = maps.Clone(spec.Labels)
	spec.Labels[stageLabel] = string(stage)
	if err := st.relabel(ctx, c.ID, c.Version.Index, spec); err != nil {
		return fmt.Errorf("note stage %s on deploy record %s: %w", stage, name, unavailable(err))
	}
	return nil
}

// End removes the record of a finished deploy.
func (s *Swarm) End(ctx context.Context, r deploy.Release) error {
	name := recordName("deploy", r.ServiceID, r.ID)
	if err := s.store().remove(ctx, name); err != nil {
		return fmt.Errorf("remove deploy record %s: %w", name, err)
	}
	return nil
}

// capReason cuts reason to maxReason bytes, on a character boundary, and
// says it was cut.
func capReason(reason string) string { return capText(reason, maxReason) }

// capText cuts s to max bytes, on a character boundary, and says it was
// cut.
func capText(s string, max int) string {
	const cut = " … (cut)"
	if len(s) <= max {
		return s
	}
	s = s[:max-len(cut)]
	// Only a character cut in two at the end goes; bytes that were invalid
	// before the cut stay as they were.
	for i := len(s) - 1; i >= 0 && i >= len(s)-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			if !utf8.FullRuneInString(s[i:]) {
				s = s[:i]
			}
			break
		}
	}
	return s + cut
}

// InFlight returns the deploys this updater's scope begun and not ended.
// A record that can't be read as a deploy (edited by hand, written by a
// newer or broken updater) is set aside, not returned and not fatal: one
// bad record must not stop every other service's deploys. It stays in
// Swarm for a person to look at; SetAside names it.
func (s *Swarm) InFlight(ctx context.Context) ([]deploy.Release, error) {
	st := s.store()
	items, err := st.list(ctx, kindInFlight, scopeLabel+"="+s.scope())
	if err != nil {
		return nil, err
	}
	out := make([]deploy.Release, 0, len(items))
	aside := map[string]string{}
	for _, c := range items {
		data, err := st.data(ctx, c)
		if err != nil {
			return nil, err
		}
		r, err := decodeRelease(data, c.Spec.Labels[serviceLabel])
		if err != nil {
			aside[c.Spec.Name] = err.Error()
			continue
		}
		r.Recorded = c.CreatedAt
		r.Stage = deploy.Stage(c.Spec.Labels[stageLabel])
		r.StageAt = c.UpdatedAt // a record changes only when Reached notes a stage
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
	st := s.store()
	items, err := st.list(ctx, kindMemo, deployLabel+"="+deployID, memoLabel+"="+key)
	if err != nil || len(items) == 0 {
		return "", false, err
	}
	data, err := st.data(ctx, items[0])
	if err != nil {
		return "", false, err
	}
	return string(data), true, nil
}

// Remember keeps value for a deploy and key.
func (s *Swarm) Remember(ctx context.Context, deployID, key, value string) error {
	name := recordName("memo", deployID, key)
	err := s.store().put(ctx, kindMemo, name, map[string]string{deployLabel: deployID, memoLabel: key, scopeLabel: s.scope()}, []byte(value))
	if err != nil {
		return fmt.Errorf("record notifier reference %s: %w", name, err)
	}
	return nil
}

// Drop removes what was remembered for a deploy and key.
func (s *Swarm) Drop(ctx context.Context, deployID, key string) error {
	name := recordName("memo", deployID, key)
	if err := s.store().remove(ctx, name); err != nil {
		return fmt.Errorf("remove notifier record %s: %w", name, err)
	}
	return nil
}

// Migrated reports whether the migration for key ran for digest.
func (s *Swarm) Migrated(ctx context.Context, key, digest string) (bool, error) {
	items, err := s.store().list(ctx, kindMigrated, keyLabel+"="+hashKey(key), digestLabel+"="+digest)
	if err != nil {
		return false, err
	}
	return len(items) > 0, nil
}

// MarkMigrated records that the migration for key ran for digest. Only the
// newest record per key matters: a tag moving back to an old digest runs
// that version's migrations again, which they must bear.
func (s *Swarm) MarkMigrated(ctx context.Context, key, digest string) error {
	h := hashKey(key)
	name := recordName("migrated", h, digest)
	err := s.store().replace(ctx, kindMigrated, name, map[string]string{keyLabel: h, digestLabel: digest},
		[]byte(key+" "+digest+"\n"), keyLabel)
	if err != nil {
		return fmt.Errorf("record migration %s: %w", name, err)
	}
	return nil
}

// hashKey turns "group:stack/name" into something a config name and a
// label filter take as is.
func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:8])
}

// Promoted returns the service's promoted digests as last recorded,
// newest first.
func (s *Swarm) Promoted(ctx context.Context, serviceID string) ([]string, error) {
	st := s.store()
	items, err := st.list(ctx, kindPromoted, serviceLabel+"="+serviceID, scopeLabel+"="+s.scope())
	if err != nil || len(items) == 0 {
		return nil, err
	}
	// One record normally; two when an updater died between writing the
	// new one and removing the old.
	newest := slices.MaxFunc(items, func(a, b swarm.Config) int { return a.CreatedAt.Compare(b.CreatedAt) })
	data, err := st.data(ctx, newest)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(data)), nil
}

// SetPromoted replaces the service's record of promoted digests.
func (s *Swarm) SetPromoted(ctx context.Context, serviceID string, digests []string) error {
	data := strings.Join(digests, "\n") + "\n"
	sum := sha256.Sum256([]byte(data))
	name := recordName(kindPromoted, serviceID, hex.EncodeToString(sum[:]))
	err := s.store().replace(ctx, kindPromoted, name, map[string]string{serviceLabel: serviceID, scopeLabel: s.scope()},
		[]byte(data), serviceLabel, scopeLabel)
	if err != nil {
		return fmt.Errorf("record promoted digests %s: %w", name, err)
	}
	return nil
}

// Recorded returns the IDs of the services that failed-digest, promoted,
// first-seen, history and registry-auth records are about: for the sweep
// of services that are gone.
func (s *Swarm) Recorded(ctx context.Context) ([]string, error) {
	st := s.store()
	failed, err := st.list(ctx, kindFailed)
	if err != nil {
		return nil, err
	}
	promoted, err := st.list(ctx, kindPromoted, scopeLabel+"="+s.scope())
	if err != nil {
		return nil, err
	}
	seen, err := st.list(ctx, kindSeen, scopeLabel+"="+s.scope())
	if err != nil {
		return nil, err
	}
	history, err := st.list(ctx, kindHistory, scopeLabel+"="+s.scope())
	if err != nil {
		return nil, err
	}
	auth, err := st.list(ctx, kindAuth, scopeLabel+"="+s.scope())
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, c := range slices.Concat(failed, promoted, seen, history, auth) {
		if id := c.Spec.Labels[serviceLabel]; id != "" && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// ForgetService removes every record about the service: its failed
// digests, its promoted digests, its migration record (a group's stays
// with the group), its first sighting, its history and the registry auth
// last sent.
func (s *Swarm) ForgetService(ctx context.Context, serviceID string) error {
	st := s.store()
	for _, r := range []struct{ kind, label string }{
		{kindFailed, serviceLabel + "=" + serviceID},
		{kindPromoted, serviceLabel + "=" + serviceID},
		{kindMigrated, keyLabel + "=" + hashKey("service:"+serviceID)},
		{kindSeen, serviceLabel + "=" + serviceID},
		{kindHistory, serviceLabel + "=" + serviceID},
		{kindAuth, serviceLabel + "=" + serviceID},
	} {
		if err := st.removeAll(ctx, r.kind, r.label); err != nil {
			return fmt.Errorf("forget service %s: %w", serviceID, err)
		}
	}
	return nil
}
