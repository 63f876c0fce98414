//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// A deploy record that can't be used (here: cut short, as a hand edit or a
// broken writer might leave it) is set aside: the updater neither resumes
// it nor stops over it, the watched service still deploys, /readyz names
// the record for a person, and the record stays in Swarm.
func TestCorruptRecordSetAside(t *testing.T) {
	const stack, repo = "e2erec", "e2e/records"
	v1 := push(t, repo, "v1")
	app := createService(t, stack+"_app", repo, v1, svcOpts{stack: stack, optIn: true})
	ctx := context.Background()
	const name = "updater-deploy-e2erec-corrupt"
	res, err := env.docker.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: name, Labels: map[string]string{
			"io.updater.kind": "deploy-in-flight", "io.updater.service": app, "io.updater.scope": scopeOf(stack),
		}},
		Data: []byte(`{"id": "r1", "service_id": "` + app + `", "to_digest": "sha256:`),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.docker.ConfigRemove(ctx, res.ID, client.ConfigRemoveOptions{}) })
	evs := recordEvents(t)

	u := startUpdater(t, stack)
	waitFor(t, 30*time.Second, "two cycles", func() bool { return u.cycles() >= 2 })
	v2 := push(t, repo, "v2")
	u.waitLog(t, 60*time.Second, 1, "deploy succeeded", "service", stack+"_app")

	evs.wantImageWrites(t, app, v2)
	waitFor(t, 30*time.Second, "every task on v2", func() bool { return allRunning(t, app, v2) })
	if n := u.count("deploy record set aside", "record", name); n != 1 {
		t.Errorf("%q logged %d times over %d cycles, want once", "deploy record set aside", n, u.cycles())
	}
	resp, err := http.Get(u.base(t) + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// /readyz counts it in fixed words; the log names it.
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "records set aside for a person to look at: 1") || strings.Contains(string(body), name) {
		t.Errorf("/readyz: %d %q, want ready, counting one record set aside without naming it", resp.StatusCode, body)
	}
	// Written as /readyz answers, read from stderr on the suite's own
	// goroutine a moment later: wait for it.
	u.waitLog(t, 5*time.Second, 1, "readiness")
	if l := u.find("readiness"); l == nil || !strings.Contains(fmt.Sprint(l["err"]), name) {
		t.Errorf("the readiness log line %v, want it naming %s", l, name)
	}
	if _, err := env.docker.ConfigInspect(ctx, res.ID, client.ConfigInspectOptions{}); err != nil {
		t.Errorf("the record set aside is gone (%v); it stays for a person", err)
	}
}
