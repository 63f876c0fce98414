//go:build e2e

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestRealImage is TestIndex for the updater itself (minutes of
// cross-compiling with a cold cache), then pulled and run by the real
// dockerd: the index digest, the way the prune job's image is pinned,
// gives this node its own platform's image and it starts.
func TestRealImage(t *testing.T) {
	if _, err := exec.LookPath("docker"); err != nil {
		t.Fatalf("docker: %v", err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	repo := fmt.Sprintf("%s/updater-multiarch-e2e-%d", strings.TrimPrefix(srv.URL, "http://"), time.Now().UnixNano())
	version := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	var out bytes.Buffer
	err := run(ctx, []string{"-image", repo + ":test", "-pkg", "../../cmd/updater",
		"-ldflags", "-s -w -X main.version=" + version, "-version", version, "-revision", "e2e"}, &out)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	t.Logf("built and pushed 3 platforms in %s: %s", time.Since(start).Round(time.Second), strings.TrimSpace(out.String()))

	r, err := name.ParseReference(repo + ":test")
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(r)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != len(want) {
		t.Fatalf("index has %d manifests, want %d", len(im.Manifests), len(want))
	}
	for i, w := range want {
		d := im.Manifests[i]
		if d.Platform == nil || !d.Platform.Equals(w.platform) {
			t.Fatalf("manifest %d platform %v, want %v", i, d.Platform, w.platform)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		checkBinary(t, img, w.platform, w.machine, w.class, w.goarm, version)
	}

	digest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	pinned := repo + ":test@" + digest.String()
	var cfg struct {
		ID, Os, Architecture string
		Config               v1.Config
	}
	pulled := pull(t, pinned, "linux/amd64")
	if err := json.Unmarshal([]byte(pulled), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Os != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("this amd64 node pulled %s/%s from the index", cfg.Os, cfg.Architecture)
	}
	df := finalStage(t, "../../Dockerfile")
	if !slices.Equal(cfg.Config.Entrypoint, df.Config.Entrypoint) || !slices.Equal(cfg.Config.Cmd, df.Config.Cmd) ||
		cfg.Config.Healthcheck == nil || !slices.Equal(cfg.Config.Healthcheck.Test, df.Config.Healthcheck.Test) ||
		!slices.Contains(cfg.Config.Env, "DOCKER_CONFIG=/config") || cfg.Config.User != df.Config.User {
		t.Errorf("docker sees config %+v, the Dockerfile says %+v", cfg.Config, df.Config)
	}
	if got := cfg.Config.Labels["org.opencontainers.image.version"]; got != version {
		t.Errorf("docker sees version label %q, want %q", got, version)
	}
	if got := strings.TrimSpace(docker(t, "run", "--rm", "--network", "none", pinned, "version")); got != "updater "+version {
		t.Errorf("docker run %s version: %q, want %q", pinned, got, "updater "+version)
	}

	// An arm64 node's engine, asked for the same reference, gets the
	// arm64 image (it can't run here: no QEMU). Docker 20.10 keeps one
	// image per repo@digest, so the amd64 one goes first.
	rm(t, cfg.ID)
	var arm struct{ ID, Os, Architecture string }
	if err := json.Unmarshal([]byte(pull(t, pinned, "linux/arm64")), &arm); err != nil {
		t.Fatal(err)
	}
	if arm.Os != "linux" || arm.Architecture != "arm64" || arm.ID == cfg.ID {
		t.Errorf("docker pull --platform linux/arm64 %s gave %s/%s (%s), the amd64 image is %s", pinned, arm.Os, arm.Architecture, arm.ID, cfg.ID)
	}
}

// pull has this engine pull ref for platform and returns what docker
// image inspect says of it; the image is removed when the test ends.
func pull(t *testing.T, ref, platform string) string {
	t.Helper()
	docker(t, "pull", "-q", "--platform", platform, ref)
	out := docker(t, "image", "inspect", "--format", "{{json .}}", ref)
	var img struct{ ID string }
	if err := json.Unmarshal([]byte(out), &img); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rm(t, img.ID) })
	return out
}

func rm(t *testing.T, id string) {
	out, err := exec.Command("docker", "image", "rm", "-f", id).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such image") {
		t.Errorf("remove the pulled image %s: %v: %s", id, err, out)
	}
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("docker", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}
