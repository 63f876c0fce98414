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
