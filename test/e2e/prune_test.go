//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// pushUpdaterImage pushes the updater under test as an image whose
// entrypoint is the updater, as the shipped Dockerfile makes it: what the
// prune and probe jobs run (UPDATER_PRUNE_IMAGE, UPDATER_PROBE_IMAGE). It
// returns the pinned reference.
func pushUpdaterImage(t testing.TB, repo string) string {
	t.Helper()
	bin, err := os.ReadFile(env.bin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "updater", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(bin); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	d := pushLayer(t, repo, buf.Bytes(), v1.Config{Entrypoint: []string{"/updater"}, Cmd: []string{"run"}})
	return image(repo) + "@" + d
}

// pullDigest makes this node's dockerd pull repo at digest, as Swarm does
// for a task: the image has the digest as its name and no tag.
func pullDigest(t *testing.T, repo, digest string) {
	t.Helper()
	ref := env.faulty + "/" + repo + "@" + digest
	res, err := env.docker.ImagePull(t.Context(), ref, client.ImagePullOptions{})
	if err == nil {
		err = res.Wait(t.Context())
	}
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
}

// nodeDigests are the digests of repo this node's dockerd holds, read from
// its image list.
func nodeDigests(t *testing.T, repo string) []string {
	t.Helper()
	return repoDigests(t, env.docker, env.faulty+"/"+repo)
}

// What pruning must leave alone, on the node it runs on: an old version
// someone tagged by hand, and old versions a plain container (not a
// service's task) uses, running or exited. The untagged old version nothing
// uses goes, and so does nothing else: the current version and the one a
// rollback returns to stay. Read from the node's image list.
func TestPruneLeavesTaggedAndUsedImages(t *testing.T) {
	const stack, repo, svcName = "e2eprune", "e2e/prune", "e2eprune_app"
	nonce := fmt.Sprint(time.Now().UnixNano())
	pruner := pushUpdaterImage(t, "e2e/prunejob")

	// Four old versions on this node, as earlier deploys leave them.
	old := map[string]string{}
	for _, role := range []string{"hand-tagged", "running container", "exited container", "unused"} {
		old[role] = push(t, repo, "v1")
		pullDigest(t, repo, old[role])
	}
	handTag := "e2e-prune-hand-tagged:" + nonce
	if _, err := env.docker.ImageTag(t.Context(), client.ImageTagOptions{
		Source: env.faulty + "/" + repo + "@" + old["hand-tagged"], Target: handTag}); err != nil {
		t.Fatalf("tag: %v", err)
	}
	t.Cleanup(func() { env.docker.ImageRemove(context.Background(), handTag, client.ImageRemoveOptions{}) })
	plain := map[string]string{} // role -> container ID
	for _, role := range []string{"running container", "exited container"} {
		res, err := env.docker.ContainerCreate(t.Context(), client.ContainerCreateOptions{
			Name:   "e2eprune-" + strings.ReplaceAll(role, " ", "-") + "-" + nonce,
			Config: &container.Config{Image: env.faulty + "/" + repo + "@" + old[role]},
		})
		if err != nil {
			t.Fatalf("create the %s: %v", role, err)
		}
		id := res.ID
		t.Cleanup(func() {
			env.docker.ContainerRemove(context.Background(), id, client.ContainerRemoveOptions{Force: true})
		})
		if _, err := env.docker.ContainerStart(t.Context(), id, client.ContainerStartOptions{}); err != nil {
			t.Fatalf("start the %s: %v", role, err)
		}
		plain[role] = id
	}
	if _, err := env.docker.ContainerStop(t.Context(), plain["exited container"], client.ContainerStopOptions{}); err != nil {
		t.Fatalf("stop: %v", err)
	}
	waitFor(t, 30*time.Second, "the plain containers running and exited", func() bool {
		return containerState(t, plain["running container"]) == container.StateRunning &&
			containerState(t, plain["exited container"]) == container.StateExited
	})

	cur := push(t, repo, "v1")
	createService(t, svcName, repo, cur, svcOpts{stack: stack, optIn: true})
	u := startUpdater(t, stack, "UPDATER_PRUNE=after-deploy", "UPDATER_PRUNE_KEEP=1", "UPDATER_PRUNE_IMAGE="+pruner)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
	before := nodeDigests(t, repo)
	for role, d := range old {
		if !slices.Contains(before, d) {
			t.Fatalf("the %s version %s is not on the node before the prune: %v", role, d[:19], before)
		}
	}

	next := push(t, repo, "v2")
	// The log line says when the job is over; what it did is read from
	// Docker.
	u.waitLog(t, deployLimit, 1, "images pruned", "service", svcName)
	if n := u.count("prune failed on a node") + u.count("prune failed; the images stay until a later deploy prunes them"); n != 0 {
		t.Fatalf("%d prune failures", n)
	}
	after := nodeDigests(t, repo)
	if slices.Contains(after, old["unused"]) {
		t.Errorf("the unused untagged old version %s is still on the node: the prune removed nothing", old["unused"][:19])
	}
	for role, d := range map[string]string{"hand-tagged": old["hand-tagged"], "running container": old["running container"],
		"exited container": old["exited container"], "previous (kept for a rollback)": cur, "current": next} {
		if !slices.Contains(after, d) {
			t.Errorf("the %s version %s was removed; the node holds %v", role, d[:19], after)
		}
	}
	if _, err := env.docker.ImageInspect(t.Context(), handTag); err != nil {
		t.Errorf("the hand tag %s is gone: %v", handTag, err)
	}
	if s := containerState(t, plain["exited container"]); s != container.StateExited {
		t.Errorf("the exited plain container is %q after the prune, want it left as it was (exited)", s)
	}
	if s := containerState(t, plain["running container"]); s != container.StateRunning {
		t.Errorf("the running plain container is %q after the prune", s)
	}
	t.Logf("node images of %s: %d before the prune, %d after; %v", repo, len(before), len(after), u.find("images pruned", "service", svcName))
}

// containerState is the container's state, "" when it is gone.
func containerState(t *testing.T, id string) container.ContainerState {
	t.Helper()
	res, err := env.docker.ContainerInspect(t.Context(), id, client.ContainerInspectOptions{})
	if err != nil || res.Container.State == nil {
		return ""
	}
	return res.Container.State.Status
}
