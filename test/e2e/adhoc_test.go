//go:build e2e

package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
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
		"UPDATER_WATCH_INTERVAL=200ms", "UPDATER_DEPLOY_TIMEOUT=90s", "UPDATER_LOG_FORMAT=json"}
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
