//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
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

// historyCLI runs the updater binary as a command-line tool: with base,
// as a client of the updater there (UPDATER_URL); without, locally
// against the suite's swarm as an operator would, with the settings of
// startUpdater's updaters. It returns the exit code and the outputs.
func historyCLI(t testing.TB, stack, base string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	environ := append([]string{
		"PATH=" + os.Getenv("PATH"),
		"DOCKER_CONFIG=" + t.TempDir(),
		"UPDATER_STACK=" + stack,
		"UPDATER_LOG_FORMAT=json",
		"UPDATER_DEPLOY_TIMEOUT=90s",
		"UPDATER_WATCH_INTERVAL=200ms",
		"UPDATER_REGISTRY_TIMEOUT=3s",
		"UPDATER_LEASE_TTL=3s",
		"UPDATER_HOOK_IMAGES=" + env.faulty + "/e2e/pgdump",
		"UPDATER_HOOK_MOUNT_ROOTS=" + os.TempDir(),
	}, dockerHostEnv()...)
	if base != "" {
		environ = append(environ, "UPDATER_URL="+base, "UPDATER_API_TOKEN="+apiToken)
	}
	return runCLI(t, environ, args...)
}

// A person's rollback, on a service with a backup hook, read from Docker:
//   - through the running updater's API (`updater rollback` with
//     UPDATER_URL): back to the last success before the running digest;
//     the spec pinned to it and every task on it; the digest rolled away
//     from quarantined: three cycles later the tag still names it and
//     nothing was written; no backup job ran for it;
//   - locally (`updater rollback --to DIGEST`, the updater stopped): back
//     to that digest, no backup job either;
//   - to a digest the registry no longer has (deleted there), locally and
//     through the API: refused, the service's spec untouched (its version
//     too), no image written.
func TestRollbackOnDemand(t *testing.T) {
	const stack, repo = "e2erb", "e2e/rollback"
	svcName := stack + "_app"
	v1 := push(t, repo, "v1")
	labels := map[string]string{
		"updater.backup.image":   backupImage(t),
		"updater.backup.command": `sh -c 'exit 0'`,
		"updater.hooks.timeout":  "60s",
	}
	evs := recordEvents(t)
	app := createService(t, svcName, repo, v1, svcOpts{stack: stack, optIn: true, labels: labels})
	u := startUpdater(t, stack, httpEnv()...)
	base := u.base(t)
	waitFor(t, 30*time.Second, "the first cycle", func() bool { return u.cycles() >= 1 })
	v2 := push(t, repo, "v2")
	waitHistory(t, app, stack, 1)
	waitFor(t, deployLimit, "every task on v2", func() bool { return allRunning(t, app, v2) })
	v3 := push(t, repo, "v3")
	waitHistory(t, app, stack, 2)
	waitFor(t, deployLimit, "every task on v3", func() bool { return allRunning(t, app, v3) })
	backups := func() int { return len(evs.jobs(t, svcName, "backup")) }
	waitFor(t, 15*time.Second, "a backup job for each deploy in Docker's events", func() bool { return backups() >= 2 })
	if n := backups(); n != 2 {
		t.Fatalf("%d backup jobs for two deploys, want 2", n)
	}

	// Through the API, to the last success before v3: v2.
	code, out, errOut := historyCLI(t, stack, base, "rollback", "--wait", "--timeout", "3m", svcName)
	if code != 0 || !strings.Contains(out, "rollback succeeded") {
		t.Fatalf("rollback through the API = %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if d := specDigest(t, app); d != v2 {
		t.Fatalf("after the rollback the spec pins %s, want v2 %s", d, v2)
	}
	waitFor(t, deployLimit, "every task on v2", func() bool { return allRunning(t, app, v2) })
	h, _ := recordedHistory(t, app, stack)
	if len(h) != 3 || !h[0].Rollback || h[0].By != "api" || h[0].From != v3 || h[0].To != v2 || h[0].Outcome != deploy.OutcomeSucceeded {
		t.Fatalf("history record after the rollback: %+v, want a rollback by api v3 → v2 first", h)
	}
	// v3 is still what the tag names: quarantined, not deployed again.
	n := u.cycles()
	waitFor(t, 30*time.Second, "three more cycles", func() bool { return u.cycles() >= n+3 })
	if d := specDigest(t, app); d != v2 {
		t.Fatalf("%d cycles after the rollback the spec pins %s, want v2 %s: v3 is quarantined", u.cycles()-n, d, v2)
	}
	evs.wantImageWrites(t, app, v2, v3, v2)
	if n := backups(); n != 2 {
		t.Errorf("%d backup jobs after the rollback, want still 2: a rollback runs no hook", n)
	}
	if err := u.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop the updater: %v", err)
	}

	// Locally, to a digest named: v1.
	code, out, errOut = historyCLI(t, stack, "", "rollback", "--to", v1, svcName)
	if code != 0 || !strings.Contains(out, svcName+" rollback") {
		t.Fatalf("local rollback --to v1 = %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if d := specDigest(t, app); d != v1 {
		t.Fatalf("after the local rollback the spec pins %s, want v1 %s", d, v1)
	}
	waitFor(t, deployLimit, "every task on v1", func() bool { return allRunning(t, app, v1) })
	evs.wantImageWrites(t, app, v2, v3, v2, v1)
	h, _ = recordedHistory(t, app, stack)
	if len(h) != 4 || !h[0].Rollback || h[0].By != "cli" || h[0].From != v2 || h[0].To != v1 || h[0].Outcome != deploy.OutcomeSucceeded {
		t.Fatalf("history record after the local rollback: %+v, want a rollback by cli v2 → v1 first", h)
	}
	if n := backups(); n != 2 {
		t.Errorf("%d backup jobs after the local rollback, want still 2", n)
	}

	// v2 deleted from the registry: a rollback to it is refused, locally
	// and through the API, and the service is left as it was.
	deleteManifest(t, repo, v2)
	before := inspect(t, app)
	code, out, errOut = historyCLI(t, stack, "", "rollback", "--to", v2, svcName)
	if code != 1 || !strings.Contains(errOut, "the registry does not serve it") {
		t.Errorf("local rollback to a deleted digest = %d, want 1 and why\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	u2 := startUpdater(t, stack, httpEnv()...)
	base = u2.base(t)
	waitFor(t, 30*time.Second, "the new updater's first cycle", func() bool { return u2.cycles() >= 1 })
	r := call(t, "POST", base+"/api/v1/services/"+svcName+"/rollback", "Bearer "+apiToken, nil, `{"to": "`+v2+`"}`)
	if r.status != http.StatusUnprocessableEntity || !strings.Contains(r.body, "the registry does not have") {
		t.Errorf("rollback through the API to a deleted digest: %d %s, want 422 saying the registry does not have it", r.status, r.body)
	}
	code, _, errOut = historyCLI(t, stack, base, "rollback", "--to", v2, svcName)
	if code != 1 || !strings.Contains(errOut, "422") {
		t.Errorf("rollback through the CLI client to a deleted digest = %d, want 1 and the API's 422\nstderr: %s", code, errOut)
	}
	n = u2.cycles()
	waitFor(t, 30*time.Second, "two more cycles", func() bool { return u2.cycles() >= n+2 })
	after := inspect(t, app)
	if after.Version.Index != before.Version.Index || specDigest(t, app) != v1 {
		t.Errorf("after the refused rollbacks the spec is at version %d pinning %s, want version %d pinning v1 %s, untouched",
			after.Version.Index, specDigest(t, app), before.Version.Index, v1)
	}
	evs.wantImageWrites(t, app, v2, v3, v2, v1)
	if !allRunning(t, app, v1) {
		t.Error("the service's tasks are no longer all running v1")
	}
	if h, _ := recordedHistory(t, app, stack); len(h) != 4 {
		t.Errorf("history after the refused rollbacks: %+v, want the four deploys before them (a refusal is no deploy)", h)
	}
}
