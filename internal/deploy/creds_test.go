package deploy_test

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/updater-dev/updater/internal/deploy"
)

// otherCreds are what the keychain holds for a second registry.
var otherCreds = deploy.Credentials{ServerAddress: "registry.two:5000", Username: "two", Password: "s3cond"}

// byHost makes the fake keychain answer per registry host, as the real one
// does: the test registry's credentials, the second registry's, and none
// for any other host. It records every reference asked about.
func byHost(w *hookWorld, asked *[]string) {
	w.registry.CredentialsFn = func(_ context.Context, ref string) (deploy.Credentials, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		*asked = append(*asked, ref)
		switch host, _, _ := strings.Cut(ref, "/"); host {
		case "127.0.0.1:5000":
			return testCreds, nil
		case "registry.two:5000":
			return otherCreds, nil
		}
		return deploy.Credentials{}, nil
	}
}

// A hook image named by a label may live on any registry: it gets the
// credentials of its own registry, never the service's.
func TestHookImagesGetTheirOwnRegistrysCredentials(t *testing.T) {
	const backupImage = "attacker.example:443/collect:1"
	w := newHookWorld(t)
	var asked []string
	byHost(w, &asked)
	target := hooked(oldD)
	target.Hooks.Backup.Image = backupImage
	w.targets = []deploy.Target{target}
	w.digests[ref] = newD
	w.script = []deploy.Rollout{rollout("completed", newD, task(newD, "running"))}

	w.cycle(t.Context())

	w.outcome(deploy.Succeeded)
	if len(w.ran) != 2 || w.ran[0].Image != backupImage || w.ran[1].Image != pinned(newD) {
		t.Fatalf("jobs %+v, want the backup in %s, then the migration in the new image", w.ran, backupImage)
	}
	if w.jobCreds[0] != (deploy.Credentials{}) {
		t.Errorf("the backup job on %s was sent credentials %+v; want none (the keychain has none for that host)", backupImage, w.jobCreds[0])
	}
	if w.jobCreds[1] != testCreds {
		t.Errorf("the migration in the service's own image got %+v, want its registry's", w.jobCreds[1])
	}
	if want := []update{{pinned(newD), testCreds}}; !slices.Equal(w.updates, want) {
		t.Errorf("updates = %+v, want %+v", w.updates, want)
	}
	if !slices.Contains(asked, backupImage) {
		t.Errorf("credentials asked for %q, want the backup image's own lookup", asked)
	}
}

// The scheduled backup looks up the credentials of the image it runs in.
func TestScheduledBackupGetsItsImagesCredentials(t *testing.T) {
	const backupImage = "registry.two:5000/pgdump:16"
	w := newHookWorld(t)
	var asked []string
	byHost(w, &asked)
	target := hooked(oldD)
	target.Hooks.Backup.Image = backupImage

	if err := w.p.Backup(t.Context(), target); err != nil {
		t.Fatal(err)
	}

	if len(w.ran) != 1 || w.ran[0].Image != backupImage {
		t.Fatalf("jobs %+v, want one backup in %s", w.ran, backupImage)
	}
	if w.jobCreds[0] != otherCreds {
		t.Errorf("backup job credentials %+v, want the second registry's %+v", w.jobCreds[0], otherCreds)
	}
	if !slices.Equal(asked, []string{backupImage}) {
		t.Errorf("credentials asked for %q, want only %q", asked, backupImage)
	}
}

// A group whose members live on two registries deploys, each member's spec
// write carrying its own registry's credentials.
func TestGroupMembersOnTwoRegistries(t *testing.T) {
	const workerRef = "registry.two:5000/worker:1"
	w := newHookWorld(t)
	var asked []string
	byHost(w, &asked)
	otherD := groupOn(w, workerRef)

	w.cycle(t.Context())

	if got, want := w.perRelease(), map[string][]deploy.Kind{"web": {deploy.Started, deploy.Succeeded}, "worker": {deploy.Started, deploy.Succeeded}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	want := map[string]deploy.Credentials{deploy.Pin(workerRef, otherD): otherCreds, pinned(newD): testCreds}
	if len(w.updates) != 2 {
		t.Fatalf("updates %+v, want one per member", w.updates)
	}
	for _, u := range w.updates {
		if c, ok := want[u.image]; !ok || u.creds != c {
			t.Errorf("update of %s sent %+v, want %+v", u.image, u.creds, c)
		}
	}
	for i, j := range w.ran {
		if w.jobCreds[i] != testCreds {
			t.Errorf("group job %s in %s got %+v, want web's registry's", j.Name, j.Image, w.jobCreds[i])
		}
	}
}
