//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A group of three in waves 1, 2, 2. A broken image fails wave 1: Swarm
// rolls it back, and neither wave-2 service is touched (spec version read
// from Docker), each reported as stopped by wave 1. A good image then
// deploys all three, wave 2's updates starting after wave 1's completed.
func TestWavesStopAtTheFailedWave(t *testing.T) {
	const stack, repo = "e2ewave", "e2e/wave"
	v1 := push(t, repo, "v1")
	svc := map[string]string{}
	for name, wave := range map[string]string{"api": "1", "web": "2", "worker": "2"} {
		svc[name] = createService(t, stack+"_"+name, repo, v1, svcOpts{stack: stack, optIn: true,
			labels: map[string]string{"updater.group": "shop", "updater.wave": wave}})
	}
	webVer, workerVer := inspect(t, svc["web"]).Version.Index, inspect(t, svc["worker"]).Version.Index
	u := startUpdater(t, stack)

	bad := push(t, repo, "broken")
	u.waitLog(t, deployLimit, 1, "deploy failed", "service", stack+"_api", "to_digest", bad)
	for _, name := range []string{"web", "worker"} {
		u.waitLog(t, 30*time.Second, 1, "deploy failed", "service", stack+"_"+name, "to_digest", bad)
		if why := fmt.Sprint(u.find("deploy failed", "service", stack+"_"+name)["err"]); !strings.Contains(why, "wave 1 stopped the group") {
			t.Errorf("%s: %q, want it to name the wave that stopped it", name, why)
		}
	}
	if v := inspect(t, svc["web"]).Version.Index; v != webVer || specDigest(t, svc["web"]) != v1 {
		t.Fatalf("web (wave 2) was written after wave 1 failed: version %d -> %d", webVer, v)
	}
	if v := inspect(t, svc["worker"]).Version.Index; v != workerVer || specDigest(t, svc["worker"]) != v1 {
		t.Fatalf("worker (wave 2) was written after wave 1 failed: version %d -> %d", workerVer, v)
	}
	waitFor(t, deployLimit, "api back on v1", func() bool { return allRunning(t, svc["api"], v1) })

	good := push(t, repo, "v3")
	for _, name := range []string{"api", "web", "worker"} {
		u.waitLog(t, deployLimit, 1, "deploy succeeded", "service", stack+"_"+name, "to_digest", good)
		if !allRunning(t, svc[name], good) {
			t.Fatalf("%s reported but not running v3", name)
		}
	}
	api := inspect(t, svc["api"]).UpdateStatus
	if api == nil || api.CompletedAt == nil {
		t.Fatal("api's update has no completion time in Docker")
	}
	for _, name := range []string{"web", "worker"} {
		us := inspect(t, svc[name]).UpdateStatus
		if us == nil || us.StartedAt == nil || us.StartedAt.Before(*api.CompletedAt) {
			t.Fatalf("%s's update started %v, before wave 1 (api) completed at %v", name, us, api.CompletedAt)
		}
	}
	t.Logf("wave 1 completed %s; wave 2 started %s and %s", api.CompletedAt.Format(time.TimeOnly+".000"),
		inspect(t, svc["web"]).UpdateStatus.StartedAt.Format(time.TimeOnly+".000"), inspect(t, svc["worker"]).UpdateStatus.StartedAt.Format(time.TimeOnly+".000"))
}
