//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// The registry's credentials in the faults tests: sent by the updater
// when the registry asks for them, and never to come out in any output.
const (
	registryUser     = "e2e-user"
	registryPassword = "e2e-registry-password-0123456789"
)

func registryAuth() string {
	return base64.StdEncoding.EncodeToString([]byte(registryUser + ":" + registryPassword))
}

// dockerConfig is a DOCKER_CONFIG directory holding the registry's
// credentials, as `docker login` would write them.
func dockerConfig(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	b, err := json.Marshal(map[string]any{"auths": map[string]any{env.faulty: map[string]string{"auth": registryAuth()}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

const registryDown = "registry failing; retrying every cycle, logged again when it recovers"

// Each way a registry fails, while the tag has moved: nothing is
// deployed during the fault, the fault is logged once with what went
// wrong, its end once, and then the pending version deploys once.
// (500 and 429 are TestRegistryOutage's.)
func TestRegistryFaults(t *testing.T) {
	const stack, repo = "e2eflt", "e2e/faults"
	v1 := push(t, repo, "v1")
	app := createService(t, "e2eflt_app", repo, v1, svcOpts{stack: stack, optIn: true})
	u := startUpdater(t, stack, "DOCKER_CONFIG="+dockerConfig(t))
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
	t.Cleanup(func() { env.faults.mode(0, 0, false) })

	for i, m := range []struct {
		scenario string
		status   int
		delay    time.Duration
		cut      bool
		says     string // in the logged error
	}{
		{"registry down (every connection cut)", 0, 0, true, "EOF"},
		{"registry slow (answers after 5 s; deadline 3 s)", 0, 5 * time.Second, false, "did not answer in time"},
		{"registry answers 401 (credentials refused)", http.StatusUnauthorized, 0, false, "401"},
		{"registry answers 404 (tag gone)", http.StatusNotFound, 0, false, "404"},
	} {
		row := fault(t, m.scenario)
		ver := inspect(t, app).Version.Index
		env.faults.mode(m.status, m.delay, m.cut)
		want := push(t, repo, []string{"v2", "v3", "v4", "v2"}[i])
		u.waitLog(t, 60*time.Second, i+1, registryDown)
		logged := u.matching(registryDown)[i]["err"]
		if !strings.Contains(fmt.Sprint(logged), m.says) {
			t.Fatalf("%s: logged error %q does not say %q", m.scenario, logged, m.says)
		}
		after := u.cycles()
		waitFor(t, 60*time.Second, "2 cycles during the fault", func() bool { return u.cycles() >= after+2 })
		if n := u.count(registryDown); n != i+1 {
			t.Fatalf("%s: logged %d times in all, want once per fault (%d)", m.scenario, n, i+1)
		}
		if n := u.count("deploy started", "to_digest", want); n != 0 {
			t.Fatalf("%s: a deploy started during the fault", m.scenario)
		}
		if v := inspect(t, app).Version.Index; v != ver {
			t.Fatalf("%s: service touched during the fault (version %d -> %d)", m.scenario, ver, v)
		}

		env.faults.mode(0, 0, false)
		u.waitLog(t, 30*time.Second, i+1, "registry recovered")
		u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", want)
		if n := u.count("deploy started", "to_digest", want); n != 1 {
			t.Fatalf("%s: the pending version started %d times after recovery, want once", m.scenario, n)
		}
		if !allRunning(t, app, want) {
			t.Fatalf("%s: the pending version reported but not running", m.scenario)
		}
		_, said, _ := strings.Cut(fmt.Sprint(logged), ":latest: ")
		row.set("no deploy, spec untouched over 2+ cycles; logged once: %q; recovery logged once; the pending tag then deployed once", said)
	}
	if strings.Contains(u.log(), registryPassword) || strings.Contains(u.log(), registryAuth()) {
		t.Fatal("the registry credentials appear in the updater's log")
	}
}

// The tag's HEAD names a digest whose manifest is gone by the time the
// nodes pull it: the deploy fails once, Swarm's tasks never ran it, the
// service is back on the old version, and the digest is not tried again.
func TestVanishingDigest(t *testing.T) {
	row := fault(t, "registry: the digest the tag named vanishes before the nodes pull it")
	const stack, repo = "e2evan", "e2e/vanish"
	v1 := push(t, repo, "v1")
	app := createService(t, "e2evan_app", repo, v1, svcOpts{stack: stack, optIn: true})
	u := startUpdater(t, stack, "UPDATER_DEPLOY_TIMEOUT=45s")
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	// Held from the updater while it is pushed and made to vanish, so no
	// pull can come before the vanishing.
	t.Cleanup(func() { env.faults.mode(0, 0, false) })
	env.faults.set(http.StatusServiceUnavailable)
	gone := push(t, repo, "v2")
	env.faults.vanish(gone)
	env.faults.set(0)

	u.waitLog(t, deployLimit, 1, "deploy failed", "to_digest", gone)
	ev := u.find("deploy failed", "to_digest", gone)
	waitFor(t, deployLimit, "the service back on v1 and healthy", func() bool { return allRunning(t, app, v1) })
	if d := specDigest(t, app); d != v1 {
		t.Fatalf("spec on %s after the failed deploy, want v1", d)
	}
	after := u.cycles()
	waitFor(t, 30*time.Second, "3 more cycles", func() bool { return u.cycles() >= after+3 })
	if n := u.count("deploy started", "to_digest", gone); n != 1 {
		t.Fatalf("the vanished digest was started %d times, want once", n)
	}
	if n := u.count("deploy failed"); n != 1 {
		t.Fatalf("%d failure reports, want 1", n)
	}
	if n := records(t, app, "failed-digest"); n != 1 {
		t.Fatalf("%d failed-digest records, want 1", n)
	}
	v3 := push(t, repo, "v3")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v3)
	row.set("failed once (step=%v, rolled_back=%v), back on v1 healthy, digest remembered and not retried over 3 cycles; the next good tag deployed",
		ev["step"], ev["rolled_back"])
}

// An updater SIGKILLed at each phase of a deploy with hooks, and started
// again: the deploy is carried on or judged, its outcome reported once,
// the migration never run twice, no job left behind.
func TestKilledAtEveryPhase(t *testing.T) {
	const stack, repo = "e2ekall", "e2e/kall"
	t.Cleanup(removeMigrationRecords)
	dbURL := createDB(t, "e2ekall")
	dir := backupDir(t)
	v1 := push(t, repo, "v1")
	migrateTo(t, "v1", dbURL)
	// The backup waits for a go-ahead file, so a kill can land while it
	// runs; it leaves a marker when it starts.
	gate := filepath.Join(dir, "go")
	app := hookService(t, stack, "e2ekall_app", repo, v1, dbURL, dir, map[string]string{
		"updater.backup.command": `sh -c ': > /backup/started-$UPDATER_DEPLOY_ID; while [ ! -e /backup/go ]; do sleep 0.2; done; exec pg_dump -Fc -f /backup/$UPDATER_DEPLOY_ID.dump "$DATABASE_URL"'`,
	})
	gateOpen := func() {
		if err := os.WriteFile(gate, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gateOpen()

	// resumed checks what every phase promises of the restarted updater;
	// writes are the image writes Docker is to have seen in the subtest:
	// the deploy's one, and Swarm's rollback if any.
	resumed := func(t *testing.T, ev *dockerEvents, first, second *updater, digest string, kind string, writes ...string) map[string]any {
		t.Helper()
		second.waitLog(t, deployLimit, 1, "deploy "+kind, "to_digest", digest, "resumed", "true")
		if n := second.count("deploy started"); n != 0 {
			t.Fatalf("the restarted updater started %d deploys, want 0", n)
		}
		after := second.cycles()
		waitFor(t, 30*time.Second, "2 more cycles", func() bool { return second.cycles() >= after+2 })
		outcomes := 0
		for _, u := range []*updater{first, second} {
			outcomes += u.count("deploy succeeded", "to_digest", digest) + u.count("deploy failed", "to_digest", digest)
		}
		if outcomes != 1 {
			t.Fatalf("%d outcomes reported for the deploy across both updaters, want 1", outcomes)
		}
		// Not started again, by Docker's account: one spec write of the
		// digest, one migration job.
		ev.wantImageWrites(t, app, writes...)
		if j := ev.jobs(t, "e2ekall_app", "migrate"); len(j) != 1 {
			t.Fatalf("%d migration jobs created in Docker for %s, want 1: %+v", len(j), digest[:19], j)
		}
		if n := records(t, app, "deploy-in-flight"); n != 0 {
			t.Fatalf("%d in-flight records left", n)
		}
		noJobsLeft(t)
		return second.find("deploy "+kind, "to_digest", digest)
	}

	t.Run("before the backup", func(t *testing.T) {
		row := fault(t, "updater SIGKILLed before the backup (journal written, no job yet)")
		ev := recordEvents(t)
		proxy := newDockerProxy(t)
		proxy.holdCreates()
		first := startUpdater(t, stack, "DOCKER_HOST="+proxy.host)
		v2 := push(t, repo, "v2")
		first.waitLog(t, deployLimit, 1, "deploy started", "to_digest", v2)
		waitFor(t, deployLimit, "the backup job's creation", func() bool { return proxy.held() > 0 })
		first.stop(syscall.SIGKILL)
		waitFor(t, 10*time.Second, "the killed updater's request to end", func() bool { return proxy.abandoned() > 0 })
		proxy.release()
		noJobsLeft(t)

		second := startUpdater(t, stack)
		out := resumed(t, ev, first, second, v2, "succeeded", v2)
		if runs := migrateRuns(t, dbURL, "v2"); runs != 1 {
			t.Fatalf("v2's migrate ran %d times, want once", runs)
		}
		if !allRunning(t, app, v2) {
			t.Fatal("v2 not running")
		}
		row.set("carried on by the restart (backup, migration, update): one outcome (succeeded, resumed=%v); one image write and one migration job in Docker's events; migration ran once (1 run in the database); no job left", out["resumed"])
		second.stop(syscall.SIGTERM)
	})

	t.Run("during the backup", func(t *testing.T) {
		row := fault(t, "updater SIGKILLed during the backup (job running)")
		ev := recordEvents(t)
		os.Remove(gate)
		markers, _ := filepath.Glob(filepath.Join(dir, "started-*"))
		first := startUpdater(t, stack)
		v3 := push(t, repo, "v3")
		waitFor(t, deployLimit, "the backup job to run", func() bool {
			m, _ := filepath.Glob(filepath.Join(dir, "started-*"))
			return len(m) > len(markers)
		})
		first.stop(syscall.SIGKILL)
		jobs, err := env.docker.ServiceList(context.Background(), client.ServiceListOptions{
			Filters: make(client.Filters).Add("label", "io.updater.job")})
		if err != nil || len(jobs.Items) != 1 {
			t.Fatalf("%d job services after the kill (%v), want the running backup", len(jobs.Items), err)
		}

		second := startUpdater(t, stack)
		// The gate opens once the killed run's job is gone, so only the
		// restarted backup can write a dump.
		second.waitLog(t, 30*time.Second, 1, "resuming deploy left in flight", "to_digest", v3)
		gateOpen()
		out := resumed(t, ev, first, second, v3, "succeeded", v3)
		// The backup ran again, after the killed run's job was gone.
		if b := ev.jobs(t, "e2ekall_app", "backup"); len(b) != 2 || b[0].Removed.IsZero() || b[1].Created.Before(b[0].Removed) {
			t.Fatalf("backup jobs in Docker's events %+v: want the killed run's, removed before the restart's was created", b)
		}
		if !allRunning(t, app, v3) {
			t.Fatal("v3 not running")
		}
		if runs := migrateRuns(t, dbURL, "v3"); runs != 1 {
			t.Fatalf("v3's migrate ran %d times, want once", runs)
		}
		if v := query(t, dbURL, `SELECT max(version)::text FROM schema_migrations`); v != "3" {
			t.Fatalf("schema at %s, want v3's 3", v)
		}
		row.set("the killed run's job removed, the deploy carried on from the backup: one outcome (succeeded, resumed=%v); one image write and one migration job in Docker's events; migration ran once (1 run in the database); no job left", out["resumed"])
		second.stop(syscall.SIGTERM)
	})

	t.Run("during the rollback", func(t *testing.T) {
		row := fault(t, "updater SIGKILLed during Swarm's rollback of a broken version, before it saw the rollback end")
		ev := recordEvents(t)
		v3 := specDigest(t, app)
		// The first updater reaches Docker through a proxy that holds every
		// request once its spec write of the broken version has passed: it
		// cannot see the rollback begin or end, however fast Swarm is (on
		// loaded 2-core runs Swarm's rollback of a task that never turned
		// healthy sometimes ended within a second, monitor or not, and the
		// updater reported it before the kill; a longer rollback monitor
		// did not slow it down on Docker 20.10). What Swarm does is read
		// from the test's own connection.
		proxy := newDockerProxy(t)
		proxy.blindAfterWrite(app)
		first := startUpdater(t, stack, "DOCKER_HOST="+proxy.host)
		bad := push(t, repo, "broken")
		first.waitLog(t, deployLimit, 1, "deploy started", "to_digest", bad)
		// Docker's event for rollback_started was missed on loaded runs:
		// the spec's UpdateStatus and a failed task of the broken version
		// are read too. Any of them means the rollback began.
		waitFor(t, deployLimit, "Swarm to start rolling back", func() bool {
			if ev.reached(t, app, "rollback_started") {
				return true
			}
			if s := inspect(t, app); s.UpdateStatus != nil && s.UpdateStatus.State == swarm.UpdateStateRollbackStarted {
				return true
			}
			tasks, err := env.docker.TaskList(context.Background(), client.TaskListOptions{Filters: make(client.Filters).Add("service", app)})
			if err != nil {
				t.Fatal(err)
			}
			return slices.ContainsFunc(tasks.Items, func(tk swarm.Task) bool {
				return strings.HasSuffix(tk.Spec.ContainerSpec.Image, "@"+bad) && tk.Status.State == swarm.TaskStateFailed
			})
		})
		first.stop(syscall.SIGKILL)
		state := "unknown"
		if s := inspect(t, app); s.UpdateStatus != nil {
			state = string(s.UpdateStatus.State)
		}
		if n := proxy.specWrites(app); n != 1 {
			t.Fatalf("the first updater wrote the spec %d times through its proxy, want its one write of the broken version", n)
		}
		if n := first.count("deploy failed") + first.count("deploy succeeded", "to_digest", bad); n != 0 {
			t.Fatalf("the first updater reported %d outcomes of the broken deploy, blind since its write", n)
		}
		proxy.release()

		second := startUpdater(t, stack)
		out := resumed(t, ev, first, second, bad, "failed", bad, v3)
		if out["rolled_back"] != true {
			t.Fatalf("resumed outcome %v, want rolled_back=true", out)
		}
		waitFor(t, deployLimit, "the service on v3 and healthy", func() bool { return allRunning(t, app, v3) })
		if n := records(t, app, "failed-digest"); n != 1 {
			t.Fatalf("%d failed-digest records, want the broken digest remembered", n)
		}
		if n := second.count("deploy started", "to_digest", bad); n != 0 {
			t.Fatal("the broken digest was started again")
		}
		// The broken version's migrate ran before its update; going back
		// to v3 runs no migration.
		if b, v := migrateRuns(t, dbURL, "broken"), migrateRuns(t, dbURL, "v3"); b != 1 || v != 1 {
			t.Fatalf("migrate ran %d times for broken and %d for v3, want once each", b, v)
		}
		row.set("the restart followed the rollback to its end: one outcome (failed, rolled_back=true, resumed=%v); back on the previous version, healthy; digest remembered; Docker's events: the broken write and Swarm's rollback, one migration job; no migration rerun (1 run each in the database); Swarm's update state at the kill: %s", out["resumed"], state)
	})
}
