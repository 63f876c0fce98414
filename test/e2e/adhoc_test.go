//go:build e2e

package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// `updater deploy` of the group member that has no hooks deploys its
// whole group, as a cycle would: the other member's backup and migration
// run once, and both members end on the new version, read from Docker.
// The line printed is the named member's own outcome.
func TestAdhocDeployOfGroupMember(t *testing.T) {
	const stack, repo = "e2eadhoc", "e2e/adhoc"
	t.Cleanup(removeMigrationRecords)
	dbURL := createDB(t, "e2eadhoc")
	dir := backupDir(t)
	v1 := push(t, repo, "v1")
	migrateTo(t, "v1", dbURL)
	web := hookService(t, stack, stack+"_web", repo, v1, dbURL, dir, map[string]string{"updater.group": "app"})
	worker := hookService(t, stack, stack+"_worker", repo, v1, dbURL, dir, map[string]string{
		"updater.group": "app", "updater.backup.command": "", "updater.backup.image": "", "updater.backup.mounts": "",
		"updater.backup.env": "", "updater.migrate.command": "",
	})
	waitFor(t, deployLimit, "both members running v1", func() bool { return allRunning(t, web, v1) && allRunning(t, worker, v1) })
	v2 := push(t, repo, "v2")

	cmd := exec.Command(env.bin, "deploy", stack+"_worker")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "UPDATER_STACK=" + stack, "DOCKER_CONFIG=" + t.TempDir(),
		"UPDATER_WATCH_INTERVAL=200ms", "UPDATER_DEPLOY_TIMEOUT=90s", "UPDATER_LOG_FORMAT=json",
		// The hooks' image and backup directory, as startUpdater allows them.
		"UPDATER_HOOK_IMAGES=" + env.faulty + "/e2e/pgdump", "UPDATER_HOOK_MOUNT_ROOTS=" + os.TempDir()}
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		cmd.Env = append(cmd.Env, "DOCKER_HOST="+h)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	capture("updater command output and service logs", append(stdout.Bytes(), stderr.Bytes()...))
	if err != nil {
		t.Fatalf("updater deploy %s_worker: %v\nstdout: %s\nstderr: %s", stack, err, stdout.String(), stderr.String())
	}
	if out := stdout.String(); !strings.HasPrefix(out, stack+"_worker succeeded") {
		t.Fatalf("updater deploy printed %q, want worker's own success", out)
	}

	if n := len(dumps(t, dir)); n != 1 {
		t.Fatalf("%d backups, want the group's one", n)
	}
	if runs := migrateRuns(t, dbURL, "v2"); runs != 1 {
		t.Fatalf("v2's migrate ran %d times, want once for the group", runs)
	}
	for _, id := range []string{web, worker} {
		svc := inspect(t, id)
		if img := svc.Spec.TaskTemplate.ContainerSpec.Image; !strings.HasSuffix(img, "@"+v2) {
			t.Errorf("%s's spec is %s, want it pinned to v2 %s", svc.Spec.Name, img, v2)
		}
		if !allRunning(t, id, v2) {
			t.Errorf("%s's tasks are not all running v2", svc.Spec.Name)
		}
	}
	noJobsLeft(t)
}

// A scheduled backup due while a deploy of its service runs is skipped,
// said in one WARN line each; the deploy's own backup, its migration and
// every scheduled backup run one after another, never side by side (their
// jobs' lifetimes, from Docker's events, do not overlap); once the deploy
// is over, scheduled backups run again.
func TestScheduledBackupSkippedDuringDeploy(t *testing.T) {
	const stack, repo = "e2eschdep", "e2e/schdep"
	const skipped = "scheduled backup skipped: a deploy of the service is running"
	ev := recordEvents(t)
	t.Cleanup(removeMigrationRecords)
	dbURL := createDB(t, "e2eschdep")
	dir := backupDir(t)
	v1 := push(t, repo, "v1")
	migrateTo(t, "v1", dbURL)
	app := hookService(t, stack, stack+"_app", repo, v1, dbURL, dir, map[string]string{"updater.backup.schedule": "@every 1s"})
	proxy := newDockerProxy(t)
	proxy.hold(app) // the deploy waits at its spec write, after its hooks
	u := startUpdater(t, stack, "DOCKER_HOST="+proxy.host)
	u.waitLog(t, deployLimit, 1, "deploy progress", "step", "backup", "state", "succeeded")

	v2 := push(t, repo, "v2")
	waitFor(t, deployLimit, "the deploy to reach its spec write", func() bool { return proxy.held() > 0 })
	held := time.Now()
	// Two more backups fall due while the deploy holds its write: either
	// skipped, as they must be, or a job of theirs in Docker's events.
	skips := func() int { return u.count(skipped, "service", stack+"_app", "level", "WARN") }
	before := skips()
	waitFor(t, 30*time.Second, "two scheduled backups due during the held write", func() bool {
		return skips() >= before+2 || slices.ContainsFunc(ev.jobs(t, stack+"_app", "backup"), func(j jobRun) bool { return j.Created.After(held) })
	})
	if n := skips() - before; n < 2 {
		t.Errorf("%d WARN lines %q while the deploy held its write, want one per backup due", n, skipped)
	}
	released := time.Now()
	proxy.release()
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
	done := time.Now()
	waitFor(t, 30*time.Second, "a scheduled backup after the deploy", func() bool {
		for _, j := range ev.jobs(t, stack+"_app", "backup") {
			if j.Created.After(done) && !j.Removed.IsZero() {
				return true
			}
		}
		return false
	})

	// Stopped first, so no backup is still running when the jobs are read:
	// every job then has its end in Docker's events.
	if err := u.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	waitFor(t, 30*time.Second, "every hook job's removal in Docker's events", func() bool {
		for _, j := range append(ev.jobs(t, stack+"_app", "backup"), ev.jobs(t, stack+"_app", "migrate")...) {
			if j.Removed.IsZero() {
				return false
			}
		}
		return true
	})
	backups, migrations := ev.jobs(t, stack+"_app", "backup"), ev.jobs(t, stack+"_app", "migrate")
	if len(migrations) != 1 {
		t.Fatalf("%d migration jobs, want the deploy's one", len(migrations))
	}
	for _, j := range backups {
		if j.Created.After(held) && j.Created.Before(released) {
			t.Errorf("backup job %s created at %s, while the deploy held its spec write (%s to %s)", j.Name,
				j.Created.Format(time.RFC3339Nano), held.Format(time.RFC3339Nano), released.Format(time.RFC3339Nano))
		}
	}
	jobs := append(backups, migrations...)
	for i, a := range jobs {
		for _, b := range jobs[i+1:] {
			if a.Removed.IsZero() || b.Removed.IsZero() || a.Created.Before(b.Removed) && b.Created.Before(a.Removed) {
				t.Errorf("jobs %s (%s to %s) and %s (%s to %s) ran side by side", a.Name, a.Created.Format(time.RFC3339Nano),
					a.Removed.Format(time.RFC3339Nano), b.Name, b.Created.Format(time.RFC3339Nano), b.Removed.Format(time.RFC3339Nano))
			}
		}
	}
	if n := u.count("deploy started"); n != 1 {
		t.Errorf("%d deploys started, want 1", n)
	}
	t.Logf("%d backup jobs, %d skipped while the deploy held its write for %s", len(backups),
		u.count(skipped, "level", "WARN"), released.Sub(held).Round(100*time.Millisecond))
	noJobsLeft(t)
}
