// Command multiarch builds the updater image for several platforms without
// QEMU or buildx, the way ko does: the binary is cross-compiled per
// platform (static, -trimpath, the ldflags `make build` uses), laid on an
// empty image beside a CA bundle, and the images are pushed as one OCI
// image index. Its config repeats the Dockerfile's final stage (entrypoint,
// command, env, healthcheck, labels); the test checks the two agree.
//
//	go run ./scripts/multiarch -image registry.example.com/updater:1.2.0 \
//	    -ldflags '-s -w -X main.version=1.2.0' -version 1.2.0 -revision "$(git rev-parse HEAD)"
//
// `make image-multiarch MULTIARCH_IMAGE=…` fills the flags in.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The Dockerfile's fixed labels; version, revision and created come from
// the command line, as they come from build args there.
const (
	title       = "updater"
	description = "Continuous deployment for Docker Swarm stacks: digest watch, health-gated promotion, rollback"
	licenses    = "Apache-2.0"
	source      = "https://github.com/updater-dev/updater"
)

// Paths inside the image, as the Dockerfile's COPY lines put them.
const (
	binPath = "updater"
	caPath  = "etc/ssl/certs/ca-certificates.crt"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		slog.Error("multiarch", "err", err)
		os.Exit(1)
	}
}

type options struct {
	image, pkg, ldflags, caBundle string
	platforms                     []*v1.Platform
	insecure                      bool
	labels                        map[string]string
	created                       time.Time
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("multiarch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	image := fs.String("image", "", "where the index is pushed, like registry.example.com/updater:1.2.0 (required)")
	platforms := fs.String("platforms", "linux/amd64,linux/arm64,linux/arm/v7", "comma-separated os/arch[/variant] list")
	pkg := fs.String("pkg", "./cmd/updater", "the main package to build")
	ldflags := fs.String("ldflags", "-s -w -X main.version=dev", "go build -ldflags (make passes the ones `make build` uses)")
	version := fs.String("version", "dev", "the org.opencontainers.image.version label")
	revision := fs.String("revision", "", "the org.opencontainers.image.revision label: the commit built")
	created := fs.String("created", "", "the org.opencontainers.image.created label and the config's creation time, RFC 3339 (default now)")
	caBundle := fs.String("ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "the CA bundle shipped at /"+caPath)
	insecure := fs.Bool("insecure", false, "allow a plain-HTTP registry (loopback registries are reached over HTTP anyway)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *image == "" || fs.NArg() > 0 {
		fs.Usage()
		return errors.New("-image is required and there are no positional arguments")
	}
	o := options{image: *image, pkg: *pkg, ldflags: *ldflags, caBundle: *caBundle, insecure: *insecure, created: time.Now().UTC().Truncate(time.Second)}
	if *created != "" {
		t, err := time.Parse(time.RFC3339, *created)
		if err != nil {
			return fmt.Errorf("-created: %w", err)
		}
		o.created = t.UTC()
	}
	for _, s := range strings.Split(*platforms, ",") {
		p, err := v1.ParsePlatform(s)
		if err != nil {
			return fmt.Errorf("-platforms: %w", err)
		}
		if p.OS == "" || p.Architecture == "" {
			return fmt.Errorf("-platforms: %q is not os/arch[/variant]", s)
		}
		o.platforms = append(o.platforms, p)
	}
	o.labels = labels(*version, *revision, o.created)

	ref, err := name.ParseReference(o.image, refOptions(o.insecure)...)
	if err != nil {
		return fmt.Errorf("-image: %w", err)
	}
	idx, err := buildIndex(ctx, o)
	if err != nil {
		return err
	}
	if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "pushed %s@%s (%s)\n", ref, d, *platforms)
	return nil
}

func refOptions(insecure bool) []name.Option {
	if insecure {
		return []name.Option{name.Insecure}
	}
	return nil
}

func labels(version, revision string, created time.Time) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       title,
		"org.opencontainers.image.description": description,
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.licenses":    licenses,
		"org.opencontainers.image.source":      source,
		"org.opencontainers.image.revision":    revision,
		"org.opencontainers.image.created":     created.Format(time.RFC3339),
	}
}

// buildIndex cross-compiles the binary for each platform and assembles the
// index. The CA layer is the same bytes for every platform, so registries
// store it once.
func buildIndex(ctx context.Context, o options) (v1.ImageIndex, error) {
	ca, err := os.ReadFile(o.caBundle)
	if err != nil {
		return nil, fmt.Errorf("-ca-bundle: %w", err)
	}
	caLayer, err := layer(caPath, 0o644, ca, o.created)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "multiarch-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var adds []mutate.IndexAddendum
	for _, p := range o.platforms {
		out := filepath.Join(dir, strings.ReplaceAll(p.String(), "/", "-"))
		if err := goBuild(ctx, p, o.pkg, o.ldflags, out); err != nil {
			return nil, err
		}
		bin, err := os.ReadFile(out)
		if err != nil {
			return nil, err
		}
		img, err := platformImage(p, caLayer, bin, o)
		if err != nil {
			return nil, fmt.Errorf("image for %s: %w", p, err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p}})
	}
	idx = mutate.AppendManifests(idx, adds...)
	// Registries that show an index (GHCR links the source repository)
	// read its annotations, not a platform image's labels.
	return mutate.Annotations(idx, o.labels).(v1.ImageIndex), nil
}

// goBuild is `make build` for another platform: CGO_ENABLED=0 makes the
// binary static, which a FROM-scratch image needs.
func goBuild(ctx context.Context, p *v1.Platform, pkg, ldflags, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture, "GOARM=")
	if p.Architecture == "arm" {
		v := strings.TrimPrefix(p.Variant, "v")
		if v == "" {
			return fmt.Errorf("platform %s: arm needs a variant (v6 or v7)", p)
		}
		cmd.Env = append(cmd.Env, "GOARM="+v)
	}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s for %s: %w: %s", pkg, p, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// platformImage is the Dockerfile's final stage for one platform.
func platformImage(p *v1.Platform, caLayer v1.Layer, bin []byte, o options) (v1.Image, error) {
	binLayer, err := layer(binPath, 0o755, bin, o.created)
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	cf, err := base.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Config = v1.Config{
		Entrypoint: []string{"/updater"},
		Cmd:        []string{"run"},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "DOCKER_CONFIG=/config"},
		Labels:     o.labels,
		Healthcheck: &v1.HealthConfig{
			Test:     []string{"CMD", "/updater", "healthcheck"},
			Interval: 10 * time.Second, Timeout: 5 * time.Second, StartPeriod: 10 * time.Second, Retries: 3,
		},
	}
	img, err := mutate.ConfigFile(base, cf)
	if err != nil {
		return nil, err
	}
	at := v1.Time{Time: o.created}
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: caLayer, MediaType: types.OCILayer, History: v1.History{Created: at, CreatedBy: "COPY ca-certificates.crt /" + caPath}},
		mutate.Addendum{Layer: binLayer, MediaType: types.OCILayer, History: v1.History{Created: at, CreatedBy: "COPY updater /" + binPath}},
	)
	if err != nil {
		return nil, err
	}
	return mutate.CreatedAt(img, at)
}

// layer is a gzipped tar holding one file owned by root, with its parent
// directories, stamped with created so that one commit gives one digest.
func layer(path string, mode int64, data []byte, created time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	parts := strings.Split(path, "/")
	for i := 1; i < len(parts); i++ {
		dir := strings.Join(parts[:i], "/") + "/"
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: created, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path, Mode: mode, Size: int64(len(data)), ModTime: created, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}
