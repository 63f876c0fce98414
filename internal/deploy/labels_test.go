package deploy_test

import (
	"context"
	"testing"

	"github.com/updater-dev/updater/internal/deploy"
)

// An image's labels cost a manifest and a config GET at the registry;
// they are read only when a report shows them.
func TestImageLabelsReadOnlyWhenReported(t *testing.T) {
	for _, want := range []bool{false, true} {
		w := newWorld(t)
		w.p.ImageLabels = want
		asked := 0
		w.registry.LabelsFn = func(context.Context, string) (map[string]string, error) {
			asked++
			return map[string]string{"org.opencontainers.image.version": "2.0"}, nil
		}
		w.targets = []deploy.Target{web(oldD)}
		w.digests[ref] = newD
		w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}

		w.cycle(t.Context())

		ev := w.outcome(deploy.Succeeded)
		if got := ev.Release.Labels["org.opencontainers.image.version"] == "2.0"; asked != map[bool]int{false: 0, true: 1}[want] || got != want {
			t.Errorf("ImageLabels %v: labels asked %d times, on the release %v; want %v", want, asked, got, want)
		}
	}
}
