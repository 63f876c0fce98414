package deploy_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// A record is input: one whose image is not the repository and tag the
// service tracks (edited by hand, or the service retargeted since) is
// closed with a failure and never written to the spec; the service is
// then planned from its own tag.
func TestResumeRefusesRecordOfAnotherImage(t *testing.T) {
	w := newWorld(t)
	rel := journaled(time.Now())
	rel.Ref = "attacker.example/evil:latest"
	w.open = []deploy.Release{rel}
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = oldD // the service's own tag has not moved
	w.script = []deploy.Rollout{rollout("completed", oldD, task(oldD, "running"))}

	w.cycle(t.Context())

	if len(w.updates) != 0 {
		t.Fatalf("spec writes %+v from a record of another image", w.updates)
	}
	if got := w.kinds(); !slices.Equal(got, []deploy.Kind{deploy.Failed}) {
		t.Fatalf("events %v, want the record closed with one failure", got)
	}
	if ev := w.milestones()[0]; !strings.Contains(ev.Reason, "attacker.example/evil:latest") || !strings.Contains(ev.Reason, ref) {
		t.Errorf("reason %q, want both images named", ev.Reason)
	}
	if len(w.open) != 0 || len(w.marked) != 0 {
		t.Errorf("open %v, MarkFailed %v: want the record closed and no digest remembered", ids(w.open), w.marked)
	}
}
