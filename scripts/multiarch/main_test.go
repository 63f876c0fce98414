package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// want is what each platform's binary must be: the ELF header a node's
// kernel checks, and the GOARCH/GOARM the Go toolchain recorded.
var want = []struct {
	platform v1.Platform
	machine  elf.Machine
	class    elf.Class
	goarm    string
}{
	{v1.Platform{OS: "linux", Architecture: "amd64"}, elf.EM_X86_64, elf.ELFCLASS64, ""},
	{v1.Platform{OS: "linux", Architecture: "arm64"}, elf.EM_AARCH64, elf.ELFCLASS64, ""},
	{v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, elf.EM_ARM, elf.ELFCLASS32, "7"},
}

// TestIndex builds a stand-in binary (the updater itself takes minutes to
// cross-compile with a cold cache) for the three platforms, pushes the
// index to a registry on 127.0.0.1 and reads every part of it back.
func TestIndex(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/updater:test"
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	push := func(ref string) v1.ImageIndex {
		var out bytes.Buffer
		err := run(ctx, []string{"-image", ref, "-pkg", "./testdata/standin",
			"-ldflags", "-s -w -X main.version=1.2.3", "-version", "1.2.3", "-revision", "0123abc",
			"-created", "2026-01-02T03:04:05Z", "-ca-bundle", ca}, &out)
		if err != nil {
			t.Fatalf("run: %v\n%s", err, out.String())
		}
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		idx, err := remote.Index(r)
		if err != nil {
			t.Fatalf("read the index back: %v", err)
		}
		return idx
	}
	idx := push(ref)
	// One commit, one digest: the second build comes from Go's cache.
	again, _ := push(ref + "-again").Digest()
	if first, _ := idx.Digest(); first != again {
		t.Errorf("the same build twice gave indexes %s and %s", first, again)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != types.OCIImageIndex {
		t.Errorf("index media type %s, want %s", im.MediaType, types.OCIImageIndex)
	}
	if got := im.Annotations["org.opencontainers.image.source"]; got != source {
		t.Errorf("index annotation source %q, want %q", got, source)
	}
	if len(im.Manifests) != len(want) {
		t.Fatalf("index has %d manifests, want %d", len(im.Manifests), len(want))
	}
	for i, w := range want {
		d := im.Manifests[i]
		if d.Platform == nil || !d.Platform.Equals(w.platform) {
			t.Errorf("manifest %d platform %v, want %v", i, d.Platform, w.platform)
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		checkImage(t, img, w.platform, ca)
		checkBinary(t, img, w.platform, w.machine, w.class, w.goarm, "1.2.3")

		// What a node does with the index digest: it takes the manifest
		// for its own platform.
		byPlatform, err := remote.Image(r, remote.WithPlatform(w.platform))
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := byPlatform.Digest(); got != d.Digest {
			t.Errorf("a %s node would pull %s, want %s", w.platform, got, d.Digest)
		}
	}
}

func checkImage(t *testing.T, img v1.Image, p v1.Platform, caFile string) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != p.OS || cf.Architecture != p.Architecture || cf.Variant != p.Variant {
		t.Errorf("%s: config says %s/%s/%s", p, cf.OS, cf.Architecture, cf.Variant)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.source":   source,
		"org.opencontainers.image.revision": "0123abc",
		"org.opencontainers.image.created":  "2026-01-02T03:04:05Z",
		"org.opencontainers.image.version":  "1.2.3",
		"org.opencontainers.image.licenses": licenses,
	} {
		if got := cf.Config.Labels[k]; got != v {
			t.Errorf("%s: label %s=%q, want %q", p, k, got, v)
		}
	}
	if !cf.Created.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("%s: created %s", p, cf.Created)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("%s: manifest %s, config %s: want OCI", p, m.MediaType, m.Config.MediaType)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 {
		t.Fatalf("%s: %d layers, want 2 (CA bundle, binary)", p, len(ls))
	}
	got, hdr := fileIn(t, ls[0], caPath)
	want, _ := os.ReadFile(caFile)
	if !bytes.Equal(got, want) || hdr.Mode != 0o644 {
		t.Errorf("%s: /%s is %q mode %o, want the bundle given, 644", p, caPath, got, hdr.Mode)
	}
}

func checkBinary(t *testing.T, img v1.Image, p v1.Platform, machine elf.Machine, class elf.Class, goarm, version string) {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	bin, hdr := fileIn(t, ls[1], binPath)
	if hdr.Mode != 0o755 || hdr.Uid != 0 {
		t.Errorf("%s: /%s mode %o uid %d, want 755 root", p, binPath, hdr.Mode, hdr.Uid)
	}
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("%s: /%s is not ELF: %v", p, binPath, err)
	}
	if f.Machine != machine || f.Class != class || f.ByteOrder.String() != "LittleEndian" {
		t.Errorf("%s: ELF %s %s %s, want %s %s", p, f.Machine, f.Class, f.ByteOrder, machine, class)
	}
	if slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) {
		t.Errorf("%s: the binary asks for a dynamic loader: not static", p)
	}
	bi, err := buildinfo.Read(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("%s: build info: %v", p, err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	for k, v := range map[string]string{"GOOS": p.OS, "GOARCH": p.Architecture, "GOARM": goarm,
		"CGO_ENABLED": "0", "-trimpath": "true"} {
		if settings[k] != v {
			t.Errorf("%s: built with %s=%q, want %q", p, k, settings[k], v)
		}
	}
	// With -trimpath the toolchain does not record -ldflags: their
	// effects are checked instead (-s, -w, -X main.version).
	for _, s := range f.Sections {
		if s.Name == ".symtab" || strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_") {
			t.Errorf("%s: section %s: not built with -s -w", p, s.Name)
		}
	}
	if !bytes.Contains(bin, []byte(version)) {
		t.Errorf("%s: the binary does not hold the version -X main.version set", p)
	}
}

// fileIn returns the content and header of the file at path in layer l.
func fileIn(t *testing.T, l v1.Layer, path string) ([]byte, *tar.Header) {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no %s in the layer: %v", path, err)
		}
		if h.Name == path {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b, h
		}
	}
}

// TestMatchesDockerfile keeps the assembled config and the Dockerfile's
// final stage the same: a change to one without the other fails here.
// It fails too on an instruction it does not know, so that a new one is
// taught to both.
func TestMatchesDockerfile(t *testing.T) {
	df := finalStage(t, "../../Dockerfile")
	o := options{labels: labels("v", "r", time.Unix(0, 0)), created: time.Unix(0, 0)}
	caLayer, err := layer(caPath, 0o644, []byte("ca"), o.created)
	if err != nil {
		t.Fatal(err)
	}
	img, err := platformImage(&v1.Platform{OS: "linux", Architecture: "amd64"}, caLayer, []byte("bin"), o)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	got := cf.Config
	if !slices.Equal(got.Entrypoint, df.Config.Entrypoint) || !slices.Equal(got.Cmd, df.Config.Cmd) {
		t.Errorf("entrypoint %q cmd %q, the Dockerfile's %q %q", got.Entrypoint, got.Cmd, df.Config.Entrypoint, df.Config.Cmd)
	}
	// The PATH is the one Docker's builder gives every image.
	if !slices.Equal(got.Env[1:], df.Config.Env) {
		t.Errorf("env %q, the Dockerfile's %q", got.Env[1:], df.Config.Env)
	}
	if got.User != df.Config.User || len(got.ExposedPorts) != len(df.Config.ExposedPorts) {
		t.Errorf("user %q ports %v, the Dockerfile's %q %v", got.User, got.ExposedPorts, df.Config.User, df.Config.ExposedPorts)
	}
	gh, _ := json.Marshal(got.Healthcheck)
	wh, _ := json.Marshal(df.Config.Healthcheck)
	if !bytes.Equal(gh, wh) {
		t.Errorf("healthcheck %s, the Dockerfile's %s", gh, wh)
	}
	for k, v := range df.Config.Labels {
		if g, ok := got.Labels[k]; !ok || (!strings.HasPrefix(v, "${") && g != v) {
			t.Errorf("label %s=%q, the Dockerfile's %q", k, g, v)
		}
	}
	for k := range got.Labels {
		if _, ok := df.Config.Labels[k]; !ok {
			t.Errorf("label %s is not in the Dockerfile", k)
		}
	}
	if !slices.Equal(df.copies, []string{"/" + caPath, "/" + binPath}) {
		t.Errorf("the Dockerfile copies to %q, the image has /%s and /%s", df.copies, caPath, binPath)
	}
}

type stage struct {
	Config v1.Config
	copies []string // destinations, in order
}

var (
	labelRe = regexp.MustCompile(`([\w.-]+)="([^"]*)"`)
	flagRe  = regexp.MustCompile(`^--(\w[\w-]*)=(\S+)\s+`)
)

// finalStage reads what the Dockerfile's last stage puts in the image's
// config, for the instructions this Dockerfile uses.
func finalStage(t *testing.T, path string) stage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	cont := ""
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		if s, ok := strings.CutSuffix(l, "\\"); ok {
			cont += s + " "
			continue
		}
		if l = strings.TrimSpace(cont + l); l != "" {
			lines = append(lines, l)
		}
		cont = ""
	}
	var st stage
	jsonArgs := func(s string) []string {
		var v []string
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("Dockerfile: %q is not exec form: %v", s, err)
		}
		return v
	}
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			st = stage{}
		case "ARG", "WORKDIR", "RUN":
		case "LABEL":
			if st.Config.Labels == nil {
				st.Config.Labels = map[string]string{}
			}
			for _, m := range labelRe.FindAllStringSubmatch(rest, -1) {
				st.Config.Labels[m[1]] = m[2]
			}
		case "ENV":
			for _, kv := range strings.Fields(rest) {
				st.Config.Env = append(st.Config.Env, kv)
			}
		case "COPY":
			f := strings.Fields(rest)
			st.copies = append(st.copies, f[len(f)-1])
		case "ENTRYPOINT":
			st.Config.Entrypoint = jsonArgs(rest)
		case "CMD":
			st.Config.Cmd = jsonArgs(rest)
		case "USER":
			st.Config.User = rest
		case "EXPOSE":
			st.Config.ExposedPorts = map[string]struct{}{}
			for _, p := range strings.Fields(rest) {
				st.Config.ExposedPorts[p] = struct{}{}
			}
		case "HEALTHCHECK":
			h := &v1.HealthConfig{}
			for m := flagRe.FindStringSubmatch(rest); m != nil; m = flagRe.FindStringSubmatch(rest) {
				rest = rest[len(m[0]):]
				if m[1] == "retries" {
					if h.Retries, err = strconv.Atoi(m[2]); err != nil {
						t.Fatalf("Dockerfile HEALTHCHECK --retries=%s: %v", m[2], err)
					}
					continue
				}
				d, err := time.ParseDuration(m[2])
				if err != nil {
					t.Fatalf("Dockerfile HEALTHCHECK --%s=%s: %v", m[1], m[2], err)
				}
				switch m[1] {
				case "interval":
					h.Interval = d
				case "timeout":
					h.Timeout = d
				case "start-period":
					h.StartPeriod = d
				default:
					t.Fatalf("Dockerfile HEALTHCHECK --%s: the test and the assembler do not know it", m[1])
				}
			}
			cmd, ok := strings.CutPrefix(rest, "CMD ")
			if !ok {
				t.Fatalf("Dockerfile HEALTHCHECK %q: not CMD [exec form]", rest)
			}
			h.Test = append([]string{"CMD"}, jsonArgs(strings.TrimSpace(cmd))...)
			st.Config.Healthcheck = h
		default:
			t.Fatalf("Dockerfile %s: the test and the assembler do not know it; teach both", instr)
		}
	}
	return st
}
