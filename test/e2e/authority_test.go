//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// A hook label that asks to bind the Docker socket is refused before any
// job exists: the deploy fails naming the label, the entry and the
// variable that would allow it, no job service is created, the service is
// never written; the stack's other service deploys all the same.
func TestAuthorityDockerSocketRefused(t *testing.T) {
	const stack, repo = "e2eauthsock", "e2e/authsock"
	v1 := push(t, repo, "v1")
	bad := createService(t, stack+"_bad", repo, v1, svcOpts{stack: stack, optIn: true, labels: map[string]string{
		"updater.backup.command": "/app health",
		"updater.backup.mounts":  "/var/run/docker.sock:/var/run/docker.sock",
		"updater.hooks.timeout":  "30s",
	}})
	good := createService(t, stack+"_good", repo, v1, svcOpts{stack: stack, optIn: true})
	evs := recordEvents(t)
	u := startUpdater(t, stack)
	waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })

	v2 := push(t, repo, "v2")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "service", stack+"_good", "to_digest", v2)
	u.waitLog(t, deployLimit, 1, "deploy failed", "service", stack+"_bad", "to_digest", v2)
	reason := fmt.Sprint(u.find("deploy failed", "service", stack+"_bad")["err"])
	for _, want := range []string{"updater.backup.mounts", `"/var/run/docker.sock:/var/run/docker.sock"`, "UPDATER_HOOK_MOUNT_ROOTS"} {
		if !strings.Contains(reason, want) {
			t.Errorf("the refusal %q lacks %q", reason, want)
		}
	}
	// From Docker: no job was ever created for the refused service, and
	// its spec was never written; the other service's was, once.
	if jobs := evs.jobs(t, stack+"_bad", "backup"); len(jobs) != 0 {
		t.Errorf("Docker created backup jobs %+v for a refused hook", jobs)
	}
	if w := evs.imageWrites(t, bad); len(w) != 0 {
		t.Errorf("the refused service was written: %+v", w)
	}
	if d := specDigest(t, bad); d != v1 {
		t.Errorf("the refused service runs %s, want still %s", d, v1)
	}
	evs.wantImageWrites(t, good, v2)
}

// A job of a hardened service runs as hardened: its user, read-only root
// and memory limit, read from Docker (the job's task spec and its running
// container) while it runs. The hook image comes from another repository,
// allowed by UPDATER_HOOK_IMAGES.
func TestAuthorityJobInheritsHardening(t *testing.T) {
	const stack, repo = "e2eauthhard", "e2e/authhard"
	const memory = 96 << 20
	hookImage := backupImage(t) // sh and sleep
	v1 := push(t, repo, "v1")
	spec := serviceSpec(stack+"_app", repo, v1, svcOpts{stack: stack, optIn: true, labels: map[string]string{
		"updater.backup.image":   hookImage,
		"updater.backup.command": "sleep 8",
		"updater.hooks.timeout":  "60s",
	}})
	c := spec.TaskTemplate.ContainerSpec
	c.User, c.ReadOnly = "1000", true
	spec.TaskTemplate.Resources = &swarm.ResourceRequirements{Limits: &swarm.Limit{MemoryBytes: memory}}
	res, err := env.docker.ServiceCreate(t.Context(), client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	app := res.ID
	t.Cleanup(func() { removeService(app) })
	waitFor(t, 60*time.Second, "the app running", func() bool { return allRunning(t, app, v1) })

	evs := recordEvents(t)
	hookRepo, _, _ := strings.Cut(hookImage, ":latest@")
	u := startUpdater(t, stack, "UPDATER_HOOK_IMAGES="+hookRepo)
	waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })
	v2 := push(t, repo, "v2")

	// The job runs for 8 s: read its task and container meanwhile.
	var task swarm.Task
	waitFor(t, time.Minute, "the backup job's task running", func() bool {
		jobs := evs.jobs(t, stack+"_app", "backup")
		if len(jobs) == 0 {
			return false
		}
		ts, err := env.docker.TaskList(t.Context(), client.TaskListOptions{Filters: make(client.Filters).Add("service", jobs[0].ID)})
		if err != nil {
			return false
		}
		for _, tk := range ts.Items {
			if tk.Status.State == swarm.TaskStateRunning && tk.Status.ContainerStatus != nil && tk.Status.ContainerStatus.ContainerID != "" {
				task = tk
				return true
			}
		}
		return false
	})
	ts := task.Spec.ContainerSpec
	if ts.User != "1000" || !ts.ReadOnly {
		t.Errorf("job task spec: user %q read-only %v, want 1000 and true", ts.User, ts.ReadOnly)
	}
	if r := task.Spec.Resources; r == nil || r.Limits == nil || r.Limits.MemoryBytes != memory {
		t.Errorf("job task resources %+v, want a %d-byte memory limit", r, memory)
	}
	ctr, err := env.docker.ContainerInspect(context.Background(), task.Status.ContainerStatus.ContainerID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatalf("inspect the job's container: %v", err)
	}
	if cfg, hc := ctr.Container.Config, ctr.Container.HostConfig; cfg.User != "1000" || !hc.ReadonlyRootfs || hc.Memory != memory {
		t.Errorf("the job's container runs as %q, read-only root %v, memory %d; want 1000, true, %d", cfg.User, hc.ReadonlyRootfs, hc.Memory, memory)
	}
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
}

// With UPDATER_STACK unset every stack on the swarm can opt in: the
// updater says so once, at start (a dry run: it must touch nothing of the
// stacks it then sees).
func TestAuthorityStackUnsetWarns(t *testing.T) {
	u := startUpdater(t, "e2eauthwarn", "UPDATER_STACK=", "UPDATER_DRY_RUN=true")
	const msg = "UPDATER_STACK is not set: every stack on the swarm can opt in with updater.enable=true; set UPDATER_STACK to the one stack this updater serves"
	u.waitLog(t, 30*time.Second, 1, msg, "level", "WARN")
	waitFor(t, 30*time.Second, "three cycles", func() bool { return u.cycles() >= 3 })
	if n := u.count(msg); n != 1 {
		t.Errorf("the warning came %d times, want once", n)
	}
	other := startUpdater(t, "e2eauthwarn2", "UPDATER_DRY_RUN=true")
	waitFor(t, 30*time.Second, "a cycle of an updater with a stack", func() bool { return other.cycles() >= 1 })
	if n := other.count(msg); n != 0 {
		t.Errorf("an updater with UPDATER_STACK set warned %d times", n)
	}
}
