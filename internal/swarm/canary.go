package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
)

// A canary on Swarm's own rolling update (deploy.Canaries, issue 17;
// the Swarm behaviour it rests on is proven in docs/canary-swarm.md).
// One spec write starts the canary: the new image, and an update config
// whose first batch is the canary's tasks (Parallelism) followed by a wait
// longer than any analysis (Delay), so Swarm moves those tasks and then
// waits. A second write decides: the same image with the service's own
// update config (Promote: Swarm moves the others, the canary tasks keep
// running), or the old image with it (Revert: only the canary tasks are
// replaced).
//
// The service's own update config is kept meanwhile in a spec label,
// canaryLabel, as JSON: a service label is not part of the task spec, so
// writing it restarts no task, and it lives where the canary does: in the
// spec, replicated by Raft, read in the same inspect as the image. Its
// presence is what makes a spec a canary's (Rollout.Canary).
//
// Promote removes the label. Revert after a promotion (a rollout, probe
// or bake failing afterwards, a group's unwind) still finds the service's
// own settings, in either place it can look:
//   - the spec as Promote wrote it carries them as its update config;
//   - Swarm's own rollback (or `docker service rollback`) after the
//     promotion returns to the previous spec, which is the canary's: its
//     label comes back with it, and with the label the settings.
//
// A label kept past the promotion would only go stale: a person's
// `docker service update --update-delay …` afterwards changes the config
// and not the label, and the next canary would put the old one back.

// canaryLabel holds, on a spec in a canary's form, the service's own
// update config (canaryNote as JSON). Not "updater.": that namespace is
// the user's labels, checked for typos.
const canaryLabel = "io.updater.canary.update"

// canaryDelay is how long Swarm waits after the canary's tasks: far past
// any analysis (a window is 1h at most) and any updater restart. Were the
// updater gone for good, the canary stays a canary (`updating`, visible)
// rather than Swarm promoting it unjudged when the delay runs out. Swarm
// takes any non-negative delay; a year is checked on the real engine
// (test/e2e/canary_swarm_test.go).
const canaryDelay = 365 * 24 * time.Hour

// canaryNote is canaryLabel's value.
type canaryNote struct {
	// Update is the service's own update config before the canary; nil
	// when its spec had none (Swarm's defaults).
	Update *swarm.UpdateConfig `json:"update"`
}

var _ deploy.Canaries = (*Swarm)(nil)

// Canary writes image with Swarm's update set to move tasks tasks and
// then wait, the service's own update config kept in canaryLabel. A spec
// already in a canary's form (an earlier one never decided) keeps the
// config its label holds: the current one is that canary's.
func (s *Swarm) Canary(ctx context.Context, t deploy.Target, image string, creds deploy.Credentials, tasks int) error {
	if tasks < 1 {
		return fmt.Errorf("canary of service %s: %d tasks, want at least 1", t.Name, tasks)
	}
	return s.write(ctx, t, image, creds, func(spec *swarm.ServiceSpec) error {
		own, err := ownUpdate(*spec)
		if err != nil {
			return err
		}
		note, err := json.Marshal(canaryNote{Update: own})
		if err != nil {
			return fmt.Errorf("encode the update config of service %s: %w", t.Name, err)
		}
		// The service's own failure action and monitor judge the canary's
		// tasks as they would any: pause or rollback ends the canary
		// (the run sees it), continue would only reach the next batch
		// after canaryDelay.
		c := swarm.UpdateConfig{}
		if own != nil {
			c = *own
		}
		c.Parallelism, c.Delay = uint64(tasks), canaryDelay
		spec.UpdateConfig = &c
		spec.Labels = maps.Clone(spec.Labels)
		if spec.Labels == nil {
			spec.Labels = map[string]string{}
		}
		spec.Labels[canaryLabel] = string(note)
		return nil
	})
}

// Promote writes image, the canary's, again with the service's own
// update config and without canaryLabel. It refuses a spec no longer the
// canary's (Swarm rolled it back, or a person wrote another image): that
// write would start a full update of a version nobody judged, or undo
// the person's.
func (s *Swarm) Promote(ctx context.Context, t deploy.Target, image string, creds deploy.Credentials) error {
	return s.write(ctx, t, image, creds, func(spec *swarm.ServiceSpec) error {
		if _, ok := spec.Labels[canaryLabel]; !ok {
			return fmt.Errorf("promote the canary of service %s: its spec is no longer a canary's (no %s label: rolled back or written since)", t.Name, canaryLabel)
		}
		if was := spec.TaskTemplate.ContainerSpec.Image; was != image {
			return fmt.Errorf("promote the canary of service %s: its spec runs %s now, not the canary's %s (written since)", t.Name, was, image)
		}
		own, err := ownUpdate(*spec)
		if err != nil {
			return fmt.Errorf("promote the canary of service %s: %w", t.Name, err)
		}
		spec.UpdateConfig = own
		spec.Labels = withoutCanary(spec.Labels)
		return nil
	})
}

// Revert writes image, the digest the service ran before, with the
// service's own update config (canaryLabel's, else the spec's) and
// without the label: Swarm replaces the tasks of the new digest only.
func (s *Swarm) Revert(ctx context.Context, t deploy.Target, image string, creds deploy.Credentials) error {
	return s.write(ctx, t, image, creds, func(spec *swarm.ServiceSpec) error {
		uncanary(spec, s.log())
		return nil
	})
}

// canaryForm says whether spec is in a canary's form: written by Canary,
// neither promoted nor reverted since.
func canaryForm(spec swarm.ServiceSpec) bool {
	_, ok := spec.Labels[canaryLabel]
	return ok
}

// ownUpdate is the service's own update config: canaryLabel's on a spec
// in a canary's form, else the spec's. An unreadable label is an error:
// the config it kept is lost.
func ownUpdate(spec swarm.ServiceSpec) (*swarm.UpdateConfig, error) {
	raw, ok := spec.Labels[canaryLabel]
	if !ok {
		return spec.UpdateConfig, nil
	}
	var n canaryNote
	if err := json.Unmarshal([]byte(raw), &n); err != nil {
		return nil, fmt.Errorf("label %s does not hold the service's own update config (%v): set the update config by hand and remove the label", canaryLabel, err)
	}
	return n.Update, nil
}

// uncanary takes spec out of a canary's form, if it is in one: the
// service's own update config back, canaryLabel gone. With the label
// unreadable, Swarm's defaults replace the canary's batch and delay, so
// the update does not stop after the first tasks; the rest of the
// canary's config stays (it was the service's own).
func uncanary(spec *swarm.ServiceSpec, log *slog.Logger) {
	if !canaryForm(*spec) {
		return
	}
	own, err := ownUpdate(*spec)
	if err != nil {
		log.Warn("take a service out of its canary's form", "service", spec.Name, "err", err)
		if own = spec.UpdateConfig; own != nil {
			c := *own
			c.Parallelism, c.Delay = 1, 0
			own = &c
		}
	}
	spec.UpdateConfig = own
	spec.Labels = withoutCanary(spec.Labels)
}

// withoutCanary is labels without canaryLabel, a copy: the spec read is
// not changed under a retry.
func withoutCanary(labels map[string]string) map[string]string {
	out := maps.Clone(labels)
	delete(out, canaryLabel)
	return out
}

// withCanary is t with its canary read from spec's labels
// (deploy.ParseCanary, for the replicas the spec asks for); a bad one
// joins t's label errors, and a service with any gets none.
func withCanary(t deploy.Target, spec swarm.ServiceSpec) deploy.Target {
	var c deploy.Canary
	var err error
	if v, set := spec.Labels[deploy.LabelCanary]; set && spec.Mode.Replicated == nil {
		// A global service runs one task per node: no count of them is
		// "a few first" that the spec could hold steady.
		err = fmt.Errorf("label %s=%q: a canary needs a replicated service (this one is not): remove the canary labels or use mode: replicated", deploy.LabelCanary, v)
	} else {
		replicas := 0
		if r := spec.Mode.Replicated; r != nil && r.Replicas != nil {
			replicas = int(*r.Replicas)
		}
		c, err = deploy.ParseCanary(spec.Labels, replicas)
	}
	if err != nil {
		t.HooksErr = errors.Join(t.HooksErr, fmt.Errorf("invalid canary labels: %w", err))
	}
	if t.HooksErr == nil {
		t.Canary = c
	}
	return t
}
