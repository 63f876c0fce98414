package swarm

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
)

// ownConfig is a service's own update config with every field set, so a
// field the canary loses or keeps by mistake shows.
func ownConfig() *swarm.UpdateConfig {
	return &swarm.UpdateConfig{Parallelism: 2, Delay: 5 * time.Second, FailureAction: swarm.UpdateFailureActionRollback,
		Monitor: 7 * time.Second, MaxFailureRatio: 0.25, Order: swarm.UpdateOrderStartFirst}
}

func replicatedSpec(name, image string, replicas uint64, uc *swarm.UpdateConfig) swarm.ServiceSpec {
	spec := appSpec(name, image)
	spec.Mode.Replicated = &swarm.ReplicatedService{Replicas: &replicas}
	spec.UpdateConfig = uc
	return spec
}

// noted is the update config canaryLabel holds on the service's spec;
// ok is false when the label is absent.
func noted(t *testing.T, spec swarm.ServiceSpec) (uc *swarm.UpdateConfig, ok bool) {
	t.Helper()
	raw, ok := spec.Labels[canaryLabel]
	if !ok {
		return nil, false
	}
	var n canaryNote
	if err := json.Unmarshal([]byte(raw), &n); err != nil {
		t.Fatalf("label %s=%q: %v", canaryLabel, raw, err)
	}
	return n.Update, true
}

func sameUpdate(a, b *swarm.UpdateConfig) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

// The canary write and the promotion: one write each, the service's own
// update config kept in the label meanwhile and put back after.
func TestCanaryThenPromote(t *testing.T) {
	e := newEngine(t)
	oldImg, newImg := appRepo+":v1@"+digest1, appRepo+":v1@"+digest2
	e.addService("s1", replicatedSpec("shop_web", oldImg, 4, ownConfig()))
	s := e.client(t, Config{})
	target := deploy.Target{ID: "s1", Name: "shop_web"}
	creds := deploy.Credentials{ServerAddress: "127.0.0.1:5000", Username: "ci", Password: "hunter2"}
	ctx := context.Background()

	if err := s.Canary(ctx, target, newImg, creds, 1); err != nil {
		t.Fatal(err)
	}
	svc, _ := e.service("s1")
	if n := e.count("POST /services/s1/update"); n != 1 {
		t.Errorf("%d writes for the canary, want 1", n)
	}
	if got := svc.Spec.TaskTemplate.ContainerSpec.Image; got != newImg {
		t.Errorf("image %s, want %s", got, newImg)
	}
	want := *ownConfig()
	want.Parallelism, want.Delay = 1, canaryDelay
	if uc := svc.Spec.UpdateConfig; uc == nil || *uc != want {
		t.Errorf("canary update config %+v, want %+v (the service's own, first batch 1, then a year's wait)", uc, want)
	}
	if uc, ok := noted(t, svc.Spec); !ok || !sameUpdate(uc, ownConfig()) {
		t.Errorf("label %s holds %+v (present: %t), want the service's own %+v", canaryLabel, uc, ok, ownConfig())
	}
	if svc.Spec.Labels[StackLabel] != "shop" || svc.Spec.Labels["updater.enable"] != "true" {
		t.Errorf("the canary lost the service's labels: %v", svc.Spec.Labels)
	}
	if a := sentAuthHeader(t, e, "s1"); a.Username != "ci" || a.Password != "hunter2" {
		t.Errorf("registry auth sent with the canary: %+v", a)
	}
	if ro, err := s.Rollout(ctx, "s1"); err != nil || !ro.Canary {
		t.Errorf("Rollout after the canary write: Canary %t (%v), want true", ro.Canary, err)
	}
	// A target as listed: its canary labels don't matter to the adapter.
	if ts, err := s.List(ctx); err != nil || len(ts) != 1 || ts[0].HooksErr != nil {
		t.Errorf("the canary's own label is a label error: %+v (%v)", ts, err)
	}

	if err := s.Promote(ctx, target, newImg, creds); err != nil {
		t.Fatal(err)
	}
	svc, _ = e.service("s1")
	if n := e.count("POST /services/s1/update"); n != 2 {
		t.Errorf("%d writes after the promotion, want 2", n)
	}
	if got := svc.Spec.TaskTemplate.ContainerSpec.Image; got != newImg {
		t.Errorf("image after the promotion %s, want %s", got, newImg)
	}
	if !sameUpdate(svc.Spec.UpdateConfig, ownConfig()) {
		t.Errorf("update config after the promotion %+v, want the service's own %+v", svc.Spec.UpdateConfig, ownConfig())
	}
	if _, ok := noted(t, svc.Spec); ok {
		t.Errorf("label %s kept after the promotion", canaryLabel)
	}
	if ro, err := s.Rollout(ctx, "s1"); err != nil || ro.Canary {
		t.Errorf("Rollout after the promotion: Canary %t (%v), want false", ro.Canary, err)
	}

	// A failure after the promotion: Revert writes the old image with the
	// service's own config, read from the promoted spec.
	if err := s.Revert(ctx, target, oldImg, creds); err != nil {
		t.Fatal(err)
	}
	svc, _ = e.service("s1")
	if svc.Spec.TaskTemplate.ContainerSpec.Image != oldImg || !sameUpdate(svc.Spec.UpdateConfig, ownConfig()) {
		t.Errorf("after a revert past the promotion: %s with %+v, want %s with the service's own", svc.Spec.TaskTemplate.ContainerSpec.Image, svc.Spec.UpdateConfig, oldImg)
	}
}

// Swarm's rollback after the promotion returns to the canary's spec, its
// label with it: Revert still finds the service's own config there.
func TestRevertAfterSwarmRolledBackThePromotion(t *testing.T) {
	e := newEngine(t)
	oldImg, newImg := appRepo+":v1@"+digest1, appRepo+":v1@"+digest2
	e.addService("s1", replicatedSpec("shop_web", oldImg, 4, ownConfig()))
	s := e.client(t, Config{})
	target, ctx := deploy.Target{ID: "s1", Name: "shop_web"}, context.Background()
	for _, step := range []func() error{
		func() error { return s.Canary(ctx, target, newImg, deploy.Credentials{}, 2) },
		func() error { return s.Promote(ctx, target, newImg, deploy.Credentials{}) },
		func() error { return s.Rollback(ctx, "s1") }, // what Swarm's failure action does
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	svc, _ := e.service("s1")
	if svc.Spec.UpdateConfig.Delay != canaryDelay {
		t.Fatalf("the rollback did not return to the canary's spec: %+v", svc.Spec.UpdateConfig)
	}
	if err := s.Revert(ctx, target, oldImg, deploy.Credentials{}); err != nil {
		t.Fatal(err)
	}
	svc, _ = e.service("s1")
	if svc.Spec.TaskTemplate.ContainerSpec.Image != oldImg || !sameUpdate(svc.Spec.UpdateConfig, ownConfig()) || canaryForm(svc.Spec) {
		t.Errorf("after the revert: %s with %+v, labels %v; want %s with the service's own config and no %s",
			svc.Spec.TaskTemplate.ContainerSpec.Image, svc.Spec.UpdateConfig, svc.Spec.Labels, oldImg, canaryLabel)
	}
}

func TestCanaryThenRevert(t *testing.T) {
	for name, own := range map[string]*swarm.UpdateConfig{"own config": ownConfig(), "no config (Swarm's defaults)": nil} {
		t.Run(name, func(t *testing.T) {
			e := newEngine(t)
			oldImg, newImg := appRepo+":v1@"+digest1, appRepo+":v1@"+digest2
			e.addService("s1", replicatedSpec("shop_web", oldImg, 4, own))
			s := e.client(t, Config{})
			target, ctx := deploy.Target{ID: "s1", Name: "shop_web"}, context.Background()
			if err := s.Canary(ctx, target, newImg, deploy.Credentials{}, 3); err != nil {
				t.Fatal(err)
			}
			svc, _ := e.service("s1")
			if uc := svc.Spec.UpdateConfig; uc == nil || uc.Parallelism != 3 || uc.Delay != canaryDelay {
				t.Errorf("canary config %+v, want parallelism 3 and delay %s", uc, canaryDelay)
			}
			if err := s.Revert(ctx, target, oldImg, deploy.Credentials{}); err != nil {
				t.Fatal(err)
			}
			svc, _ = e.service("s1")
			if got := svc.Spec.TaskTemplate.ContainerSpec.Image; got != oldImg {
				t.Errorf("image after the revert %s, want %s", got, oldImg)
			}
			if !sameUpdate(svc.Spec.UpdateConfig, own) {
				t.Errorf("update config after the revert %+v, want the service's own %+v", svc.Spec.UpdateConfig, own)
			}
			if canaryForm(svc.Spec) {
				t.Errorf("label %s kept after the revert", canaryLabel)
			}
			if ro, err := s.Rollout(ctx, "s1"); err != nil || ro.Canary {
				t.Errorf("Rollout after the revert: Canary %t (%v), want false", ro.Canary, err)
			}
		})
	}
}

// A canary written over a spec still in a canary's form (an earlier one
// never decided) keeps the service's own config, not the earlier canary's;
// a normal deploy over one puts it back.
func TestStaleCanaryForm(t *testing.T) {
	e := newEngine(t)
	img1, img2, img3 := appRepo+":v1@"+digest1, appRepo+":v1@"+digest2, appRepo+":v1@sha256:"+strings.Repeat("3", 64)
	e.addService("s1", replicatedSpec("shop_web", img1, 4, ownConfig()))
	s := e.client(t, Config{})
	target, ctx := deploy.Target{ID: "s1", Name: "shop_web"}, context.Background()
	if err := s.Canary(ctx, target, img2, deploy.Credentials{}, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Canary(ctx, target, img3, deploy.Credentials{}, 2); err != nil {
		t.Fatal(err)
	}
	svc, _ := e.service("s1")
	if uc, _ := noted(t, svc.Spec); !sameUpdate(uc, ownConfig()) {
		t.Errorf("a second canary keeps %+v, want the service's own %+v", uc, ownConfig())
	}
	if svc.Spec.UpdateConfig.Parallelism != 2 {
		t.Errorf("second canary's parallelism %d, want 2", svc.Spec.UpdateConfig.Parallelism)
	}
	if err := s.Update(ctx, target, img1, deploy.Credentials{}); err != nil {
		t.Fatal(err)
	}
	svc, _ = e.service("s1")
	if !sameUpdate(svc.Spec.UpdateConfig, ownConfig()) || canaryForm(svc.Spec) {
		t.Errorf("a normal deploy over a canary's spec left %+v, labels %v; want the service's own config, no %s", svc.Spec.UpdateConfig, svc.Spec.Labels, canaryLabel)
	}
	// And a normal deploy of a spec that never was a canary's changes
	// nothing but the image.
	if err := s.Update(ctx, target, img2, deploy.Credentials{}); err != nil {
		t.Fatal(err)
	}
	if svc, _ = e.service("s1"); !sameUpdate(svc.Spec.UpdateConfig, ownConfig()) {
		t.Errorf("a plain update changed the update config to %+v", svc.Spec.UpdateConfig)
	}
}

// Promote refuses a spec that is no longer the canary's: written as asked
// it would start a full update nobody judged, or undo a person's write.
func TestPromoteRefusesWhatIsNotTheCanary(t *testing.T) {
	oldImg, newImg := appRepo+":v1@"+digest1, appRepo+":v1@"+digest2
	for name, tt := range map[string]struct {
		after func(t *testing.T, s *Swarm)
		want  string
	}{
		"Swarm rolled the canary back": {func(t *testing.T, s *Swarm) {
			if err := s.Rollback(context.Background(), "s1"); err != nil {
				t.Fatal(err)
			}
		}, "no longer a canary's"},
		"a person wrote another image": {func(t *testing.T, s *Swarm) {
			// docker service update --image keeps the labels and the
			// update config: the canary's form, not its image.
			raw := appRepo + ":v1@sha256:" + strings.Repeat("4", 64)
			if err := s.write(context.Background(), deploy.Target{ID: "s1"}, raw, deploy.Credentials{}, func(*swarm.ServiceSpec) error { return nil }); err != nil {
				t.Fatal(err)
			}
		}, "not the canary's"},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEngine(t)
			e.addService("s1", replicatedSpec("shop_web", oldImg, 4, ownConfig()))
			s := e.client(t, Config{})
			target := deploy.Target{ID: "s1", Name: "shop_web"}
			if err := s.Canary(context.Background(), target, newImg, deploy.Credentials{}, 1); err != nil {
				t.Fatal(err)
			}
			tt.after(t, s)
			before := e.count("POST /services/s1/update")
			err := s.Promote(context.Background(), target, newImg, deploy.Credentials{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("promote: %v, want an error saying %q", err, tt.want)
			}
			if n := e.count("POST /services/s1/update"); n != before {
				t.Errorf("the refused promotion wrote the spec (%d writes, %d before)", n, before)
			}
		})
	}
}

// A label that no longer parses: the promotion refuses (the service's own
// config is unknown), a revert or deploy still ends the canary's batching.
func TestUnreadableCanaryLabel(t *testing.T) {
	e := newEngine(t)
	oldImg, newImg := appRepo+":v1@"+digest1, appRepo+":v1@"+digest2
	e.addService("s1", replicatedSpec("shop_web", oldImg, 4, ownConfig()))
	s := e.client(t, Config{})
	target, ctx := deploy.Target{ID: "s1", Name: "shop_web"}, context.Background()
	if err := s.Canary(ctx, target, newImg, deploy.Credentials{}, 1); err != nil {
		t.Fatal(err)
	}
	e.with(func() { e.services["s1"].Spec.Labels[canaryLabel] = "{not json" })
	if err := s.Promote(ctx, target, newImg, deploy.Credentials{}); err == nil || !strings.Contains(err.Error(), canaryLabel) {
		t.Errorf("promote with an unreadable label: %v, want an error naming %s", err, canaryLabel)
	}
	if err := s.Revert(ctx, target, oldImg, deploy.Credentials{}); err != nil {
		t.Fatal(err)
	}
	svc, _ := e.service("s1")
	want := *ownConfig()
	want.Parallelism, want.Delay = 1, 0
	if uc := svc.Spec.UpdateConfig; uc == nil || *uc != want || canaryForm(svc.Spec) {
		t.Errorf("revert with an unreadable label: %+v, labels %v; want %+v and no label", uc, svc.Spec.Labels, want)
	}
}

// The canary's write retries "update out of sequence" like Update, and
// keeps what it read last: the label is built from the fresh spec.
func TestCanaryRetriesOutOfSequence(t *testing.T) {
	e := newEngine(t)
	e.addService("s1", replicatedSpec("shop_web", appRepo+":v1@"+digest1, 4, ownConfig()))
	s := e.client(t, Config{Retries: 3})
	changed := ownConfig()
	changed.Monitor = 9 * time.Second
	// A person's write lands between the read and the write.
	e.before("POST /services/s1/update", 1, func() {
		e.services["s1"].Version.Index++
		e.services["s1"].Spec.UpdateConfig = changed
	})
	if err := s.Canary(context.Background(), deploy.Target{ID: "s1"}, appRepo+":v1@"+digest2, deploy.Credentials{}, 1); err != nil {
		t.Fatal(err)
	}
	if n := e.count("POST /services/s1/update"); n != 2 {
		t.Errorf("%d writes, want 2 (one refused, one taken)", n)
	}
	svc, _ := e.service("s1")
	if uc, _ := noted(t, svc.Spec); !sameUpdate(uc, changed) {
		t.Errorf("label keeps %+v, want the config read on the retry %+v", uc, changed)
	}
}

// A service's canary labels, read into Target.Canary as it is listed.
func TestListReadsCanaryLabels(t *testing.T) {
	canary := map[string]string{deploy.LabelCanary: "25%", deploy.LabelCanaryQuery: `sum(up{task=~"{tasks}"})`, deploy.LabelCanaryMin: "1", deploy.LabelCanaryWindow: "30s"}
	for name, tt := range map[string]struct {
		labels   map[string]string
		replicas uint64 // 0: global
		tasks    int
		err      string
	}{
		"a share of 4 replicas": {labels: canary, replicas: 4, tasks: 1},
		"a share of 8 replicas": {labels: canary, replicas: 8, tasks: 2},
		"no canary":             {labels: map[string]string{}, replicas: 4},
		"a global service":      {labels: canary, err: "a canary needs a replicated service"},
		"one replica":           {labels: canary, replicas: 1, err: "2 replicas or more"},
		"a label typo":          {labels: map[string]string{deploy.LabelCanary: "1", "updater.canary.maximum": "1"}, replicas: 4, err: "unknown label updater.canary.maximum"},
		"a bad window":          {labels: map[string]string{deploy.LabelCanary: "1", deploy.LabelCanaryQuery: "up{service=\"{service}\"}", deploy.LabelCanaryMax: "1", deploy.LabelCanaryWindow: "2s"}, replicas: 4, err: "updater.canary.window"},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEngine(t)
			spec := appSpec("shop_web", appRepo+":v1@"+digest1)
			for k, v := range tt.labels {
				spec.Labels[k] = v
			}
			if tt.replicas > 0 {
				spec.Mode.Replicated = &swarm.ReplicatedService{Replicas: &tt.replicas}
			} else {
				spec.Mode.Global = &swarm.GlobalService{}
			}
			e.addService("s1", spec)
			ts, err := e.client(t, Config{}).List(context.Background())
			if err != nil || len(ts) != 1 {
				t.Fatalf("list: %+v, %v", ts, err)
			}
			got := ts[0]
			if tt.err != "" {
				if got.HooksErr == nil || !strings.Contains(got.HooksErr.Error(), tt.err) {
					t.Errorf("label error %v, want one saying %q", got.HooksErr, tt.err)
				} else if strings.Contains(got.HooksErr.Error(), "not an updater label") {
					t.Errorf("a canary label is also called not an updater label: %v", got.HooksErr)
				}
				if got.Canary.Tasks != 0 {
					t.Errorf("a service with a label error has a canary: %+v", got.Canary)
				}
				return
			}
			if got.HooksErr != nil {
				t.Fatalf("label error %v", got.HooksErr)
			}
			if got.Canary.Tasks != tt.tasks {
				t.Errorf("canary of %d tasks, want %d", got.Canary.Tasks, tt.tasks)
			}
			if tt.tasks > 0 && (got.Canary.Window != 30*time.Second || !got.Canary.Bound.HasMin) {
				t.Errorf("canary %+v, want the labels' window and bound", got.Canary)
			}
		})
	}
}
