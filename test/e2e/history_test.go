//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
)

// historyRecords are the service's history records in Swarm, as the
// updater of stack keeps them (internal/swarm/history.go), read from
// Docker with no updater in between.
func historyRecords(t testing.TB, serviceID, stack string) []swarm.Config {
	t.Helper()
	f := make(client.Filters).Add("label", "io.updater.kind=deploy-history", "io.updater.service="+serviceID,
		"io.updater.scope="+scopeOf(stack))
	res, err := env.docker.ConfigList(context.Background(), client.ConfigListOptions{Filters: f})
	if err != nil {
		t.Fatalf("list history records: %v", err)
	}
	return res.Items
}

// recordedHistory is the service's history as its record in Swarm holds
// it, and the record's size; nil when there is no record. More than one
// record fails the test: a replaced record is removed once the new one is
// written, and nothing here races.
func recordedHistory(t testing.TB, serviceID, stack string) ([]deploy.HistoryEntry, int) {
	t.Helper()
	items := historyRecords(t, serviceID, stack)
	switch len(items) {
	case 0:
		return nil, 0
	case 1:
	default:
		names := make([]string, len(items))
		for i, c := range items {
			names[i] = c.Spec.Name
		}
		t.Fatalf("%d history records of %s: %v, want one", len(items), serviceID, names)
	}
	res, err := env.docker.ConfigInspect(context.Background(), items[0].ID, client.ConfigInspectOptions{})
	if err != nil {
		t.Fatalf("read history record %s: %v", items[0].Spec.Name, err)
	}
	var r struct {
		Entries []deploy.HistoryEntry `json:"entries"`
	}
	if err := json.Unmarshal(res.Config.Spec.Data, &r); err != nil {
		t.Fatalf("history record %s: %v\n%s", items[0].Spec.Name, err, res.Config.Spec.Data)
	}
	return r.Entries, len(res.Config.Spec.Data)
}

// waitHistory waits until the service's record holds n entries and
// returns them.
func waitHistory(t testing.TB, serviceID, stack string, n int) []deploy.HistoryEntry {
	t.Helper()
	var h []deploy.HistoryEntry
	waitFor(t, deployLimit, strconv.Itoa(n)+" entries in the history record of "+serviceID, func() bool {
		h, _ = recordedHistory(t, serviceID, stack)
		return len(h) >= n
	})
	return h
}

// apiHistory is GET /api/v1/services/{name}/history.
func apiHistory(t testing.TB, base, svcName string) []deploy.HistoryEntry {
	t.Helper()
	r := call(t, "GET", base+"/api/v1/services/"+svcName+"/history", "Bearer "+apiToken, nil, "")
	var a struct {
		Service string                `json:"service"`
		History []deploy.HistoryEntry `json:"history"`
	}
	if err := json.Unmarshal([]byte(r.body), &a); r.status != http.StatusOK || err != nil || a.Service != svcName {
		t.Fatalf("GET history of %s: %d %v %s", svcName, r.status, err, r.body)
	}
	return a.History
}

// sameEntries compares what two reads of a history say about each deploy.
func sameEntries(a, b []deploy.HistoryEntry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.ID != y.ID || x.Ref != y.Ref || x.From != y.From || x.To != y.To || x.Outcome != y.Outcome ||
			x.Rollback != y.Rollback || x.By != y.By || !x.Started.Equal(y.Started) || !x.Ended.Equal(y.Ended) {
			return false
		}
	}
	return true
}

// deleteManifest deletes repo@digest from the test registry, as a
// registry's garbage collection or a person would.
func deleteManifest(t testing.TB, repo, digest string) {
	t.Helper()
	ref, err := name.ParseReference(env.direct + "/" + repo + "@" + digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Delete(ref); err != nil {
		t.Fatalf("delete %s@%s from the registry: %v", repo, digest, err)
	}
	if _, err := remote.Head(ref); err == nil {
		t.Fatalf("%s@%s is still in the registry after its delete", repo, digest)
	}
}

// A service's history is kept in Swarm: two deploys, the updater killed
// (SIGKILL: nothing flushed on the way out), a new one started: its API
// shows both deploys, newest first, as the record in Swarm holds them.
// The record goes once the service does.
func TestHistorySurvivesKill(t *testing.T) {
	const stack, repo = "e2ehist", "e2e/history"
	svcName := stack + "_app"
	v1 := push(t, repo, "v1")
	app := createService(t, svcName, repo, v1, svcOpts{stack: stack, optIn: true})
	u := startUpdater(t, stack, httpEnv()...)
	waitFor(t, 30*time.Second, "the first cycle", func() bool { return u.cycles() >= 1 })
	v2 := push(t, repo, "v2")
	waitHistory(t, app, stack, 1)
	waitFor(t, deployLimit, "every task on v2", func() bool { return allRunning(t, app, v2) })
	v3 := push(t, repo, "v3")
	h := waitHistory(t, app, stack, 2)
	waitFor(t, deployLimit, "every task on v3", func() bool { return allRunning(t, app, v3) })
	if err := u.stop(syscall.SIGKILL); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("the updater's exit after SIGKILL: %v", err)
	}

	// What Swarm holds, read from Docker.
	h, size := recordedHistory(t, app, stack)
	if len(h) != 2 {
		t.Fatalf("history record after the kill: %+v, want two deploys", h)
	}
	for i, want := range []struct{ from, to string }{{v2, v3}, {v1, v2}} {
		e := h[i]
		if e.From != want.from || e.To != want.to || e.Outcome != deploy.OutcomeSucceeded || e.Ref != image(repo) || e.ID == "" ||
			e.Rollback || e.Started.IsZero() || e.Ended.Before(e.Started) {
			t.Errorf("history[%d] = %+v, want %s → %s succeeded on %s", i, e, deploy.Short(want.from), deploy.Short(want.to), image(repo))
		}
	}
	if h[0].ID == h[1].ID || h[0].Started.Before(h[1].Ended) {
		t.Errorf("history %+v: want two deploys, the newest first", h)
	}
	t.Logf("history record of %s with %d entries: %d bytes", svcName, len(h), size)

	// A new updater answers from it.
	u2 := startUpdater(t, stack, httpEnv()...)
	base := u2.base(t)
	waitFor(t, 30*time.Second, "the new updater's first cycle", func() bool { return u2.cycles() >= 1 })
	if got := apiHistory(t, base, svcName); !sameEntries(got, h) {
		t.Errorf("the new updater's history of %s:\n%+v\nwant what Swarm holds:\n%+v", svcName, got, h)
	}
	if r := call(t, "GET", base+"/api/v1/services/e2ehist_nosuch/history", "Bearer "+apiToken, nil, ""); r.status != http.StatusNotFound {
		t.Errorf("history of an unwatched service: %d %s, want 404", r.status, r.body)
	}
	if err := u2.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop the second updater: %v", err)
	}

	// The service goes (removed in Docker alone, not by the test's cleanup,
	// which removes records too); the next updater's first cycle sweeps
	// the records of services that are gone.
	if _, err := env.docker.ServiceRemove(context.Background(), app, client.ServiceRemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(historyRecords(t, app, stack)) != 1 {
		t.Fatal("the history record went with the service before any updater swept it: the sweep is not what is tested")
	}
	u3 := startUpdater(t, stack)
	waitFor(t, 60*time.Second, "the history record of the removed service gone", func() bool {
		return len(historyRecords(t, app, stack)) == 0
	})
	u3.waitLog(t, 10*time.Second, 1, "removed the records of a service that no longer exists", "service_id", app)
}
