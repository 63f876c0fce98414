//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/client"
)

// pushTag pushes a new image of the test app at version as repo:tag and
// returns its digest.
func pushTag(t testing.TB, repo, tag, version string) string {
	t.Helper()
	img := appImage(t, version, nil)
	ref, err := name.ParseReference(env.direct + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push %s:%s: %v", repo, tag, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func (f *faults) counts() (lists, heads, gets int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lists, f.heads, f.gets
}

// semver:~1.2 over 1.2.3, 1.2.4, 1.3.0-rc.1 and 2.0.0: the service moves
// from 1.2.3 to 1.2.4 (spec read from Docker), then to a pushed 1.2.5; a
// re-pushed 2.0.0 is ignored. Each cycle costs one tag list and one HEAD.
func TestSemverPolicy(t *testing.T) {
	const stack, repo, svcName = "e2esemver", "e2e/semver", "e2esemver_app"
	d123 := pushTag(t, repo, "1.2.3", "v1")
	d124 := pushTag(t, repo, "1.2.4", "v2")
	pushTag(t, repo, "1.3.0-rc.1", "v3")
	pushTag(t, repo, "2.0.0", "v4")
	spec := serviceSpec(svcName, repo, d123, svcOpts{stack: stack, optIn: true, labels: map[string]string{"updater.policy": "semver:~1.2"}})
	spec.TaskTemplate.ContainerSpec.Image = env.faulty + "/" + repo + ":1.2.3@" + d123
	res, err := env.docker.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeService(res.ID) })
	app := res.ID
	waitFor(t, 60*time.Second, svcName+" running", func() bool { return allRunning(t, app, "") })
	u := startUpdater(t, stack)

	u.waitLog(t, deployLimit, 1, "deploy succeeded", "service", svcName, "to_digest", d124)
	if img := inspect(t, app).Spec.TaskTemplate.ContainerSpec.Image; img != env.faulty+"/"+repo+":1.2.4@"+d124 {
		t.Fatalf("spec image %s, want 1.2.4 pinned to its digest", img)
	}

	// Idle: one tag list and one HEAD per cycle, no GET.
	c0 := u.cycles()
	l0, h0, g0 := env.faults.counts()
	waitFor(t, 30*time.Second, "5 idle cycles", func() bool { return u.cycles() >= c0+5 })
	l1, h1, g1 := env.faults.counts()
	n := u.cycles() - c0
	if dl, dh := l1-l0, h1-h0; dl < n-1 || dl > n+1 || dh < n-1 || dh > n+1 || g1 != g0 {
		t.Fatalf("over %d idle cycles: %d tag lists, %d HEADs, %d GETs; want one list and one HEAD per cycle, no GET", n, dl, dh, g1-g0)
	}
	t.Logf("idle: %d cycles, %d tag lists, %d manifest HEADs, %d GETs", n, l1-l0, h1-h0, g1-g0)

	d125 := pushTag(t, repo, "1.2.5", "v1")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "service", svcName, "to_digest", d125)
	if !allRunning(t, app, d125) {
		t.Fatal("1.2.5 reported but not running")
	}

	d200 := pushTag(t, repo, "2.0.0", "v2") // outside ~1.2
	c := u.cycles()
	waitFor(t, 30*time.Second, "3 more cycles", func() bool { return u.cycles() >= c+3 })
	if n := u.count("deploy started", "to_digest", d200); n != 0 {
		t.Fatalf("2.0.0, outside semver:~1.2, was deployed %d times", n)
	}
	if img := inspect(t, app).Spec.TaskTemplate.ContainerSpec.Image; img != env.faulty+"/"+repo+":1.2.5@"+d125 {
		t.Fatalf("spec image %s after 2.0.0 was pushed, want 1.2.5", img)
	}
}
