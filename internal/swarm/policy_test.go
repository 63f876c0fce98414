package swarm

import (
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/window"
)

func TestWithPolicies(t *testing.T) {
	global, err := window.ParseFreezes("UPDATER_FREEZE", "2026-12-20..2027-01-04")
	if err != nil {
		t.Fatal(err)
	}
	g := window.Policy{Freezes: global}
	christmas := time.Date(2026, 12, 25, 12, 0, 0, 0, time.UTC)

	got := withPolicies(deploy.Target{}, map[string]string{labelWindow: "0 22 * * * 2h", labelCooldown: "20s"}, g)
	if got.HooksErr != nil || got.Policy == nil || got.Freeze == nil || got.Cooldown != 20*time.Second {
		t.Fatalf("target %+v", got)
	}
	if ok, _, why := got.Freeze.Eligible(christmas); ok || !strings.Contains(why, "2026-12-20") {
		t.Errorf("the global freeze does not hold the service: %v %q", ok, why)
	}
	if ok, _, _ := got.Policy.Eligible(time.Date(2027, 2, 1, 12, 0, 0, 0, time.UTC)); ok {
		t.Errorf("outside the service's own window, eligible")
	}
	if none := withPolicies(deploy.Target{}, nil, window.Policy{}); none.Policy != nil || none.Freeze != nil || none.Cooldown != 0 {
		t.Errorf("no policy: %+v", none)
	}
	for labels, want := range map[string]string{labelWindow: "0 22 * * 1-5", labelFreeze: "2027-13-01..2027-13-02", labelCooldown: "5s"} {
		bad := withPolicies(deploy.Target{}, map[string]string{labels: want}, g)
		if bad.HooksErr == nil || !strings.Contains(bad.HooksErr.Error(), labels) || bad.Policy != nil {
			t.Errorf("%s=%q: %v, policy %v; want a label error and no policy", labels, want, bad.HooksErr, bad.Policy)
		}
	}
}

func TestWaveLabel(t *testing.T) {
	h, err := hooks(map[string]string{"updater.enable": "true", labelGroup: "shop", labelWave: "2"}, "updater.enable", "st", "127.0.0.1:5000/app:1", Authority{})
	if err != nil || h.Wave != 2 {
		t.Fatalf("wave %d, %v", h.Wave, err)
	}
	for want, labels := range map[string]map[string]string{
		"whole number from 1 to 100": {labelGroup: "shop", labelWave: "first"},
		"no effect without":          {labelWave: "1"},
	} {
		labels["updater.enable"] = "true"
		if _, err := hooks(labels, "updater.enable", "st", "127.0.0.1:5000/app:1", Authority{}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: %v, want an error with %q", labels, err, want)
		}
	}
}

func TestTagPolicyLabel(t *testing.T) {
	got := withPolicies(deploy.Target{Image: "r:5000/shop:1.2.3@sha256:0"}, map[string]string{"updater.policy": "semver:~1.2"}, window.Policy{})
	if got.HooksErr != nil || got.Tags == nil || got.Tags.String() != "semver:~1.2" {
		t.Fatalf("%+v", got)
	}
	if tag, ok := got.Tags.Pick([]string{"1.2.3", "1.2.4", "1.3.0-rc.1", "2.0.0"}); !ok || tag != "1.2.4" {
		t.Errorf("picked %q", tag)
	}
	if plain := withPolicies(deploy.Target{Image: "r:5000/shop:1"}, map[string]string{"updater.policy": "tag"}, window.Policy{}); plain.Tags != nil {
		t.Errorf("tag policy set Tags: %v", plain.Tags)
	}
	for _, c := range []struct{ image, policy, want string }{
		{"r:5000/shop:1", "semver:not a range", "updater.policy"},
		{"r:5000/shop@sha256:0", "semver:~1", "names no tag"},
	} {
		bad := withPolicies(deploy.Target{Image: c.image}, map[string]string{"updater.policy": c.policy}, window.Policy{})
		if bad.HooksErr == nil || !strings.Contains(bad.HooksErr.Error(), c.want) || bad.Tags != nil {
			t.Errorf("%s %s: %v, want an error with %q and no policy", c.image, c.policy, bad.HooksErr, c.want)
		}
	}
}

func TestBackupWindowLabel(t *testing.T) {
	got := withPolicies(deploy.Target{}, map[string]string{labelBackupWindow: "0 1 * * * 1h"}, window.Policy{})
	if got.HooksErr != nil || got.BackupWindow == nil || got.Policy != nil {
		t.Fatalf("%+v: want a backup window and no release policy", got)
	}
	if bad := withPolicies(deploy.Target{}, map[string]string{labelBackupWindow: "nightly"}, window.Policy{}); bad.HooksErr == nil || !strings.Contains(bad.HooksErr.Error(), labelBackupWindow) {
		t.Errorf("bad backup window: %v", bad.HooksErr)
	}
}
