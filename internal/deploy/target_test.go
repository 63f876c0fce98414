package deploy_test

import (
	"strings"
	"testing"

	"github.com/updater-dev/updater/internal/deploy"
)

func TestSplitImage(t *testing.T) {
	d := "sha256:" + strings.Repeat("0", 64)
	tests := []struct {
		image, ref, digest string
		tagged             bool
	}{
		{"nginx", "nginx:latest", "", true},
		{"nginx:1.27", "nginx:1.27", "", true},
		{"127.0.0.1:5000/app", "127.0.0.1:5000/app:latest", "", true},
		{"127.0.0.1:5000/app:1.2", "127.0.0.1:5000/app:1.2", "", true},
		{"localhost:5000/org/app", "localhost:5000/org/app:latest", "", true},
		{"[::1]:5000/app:v1", "[::1]:5000/app:v1", "", true},
		{"127.0.0.1:5000/app@" + d, "127.0.0.1:5000/app", d, false},
		{"127.0.0.1:5000/app:1.2@" + d, "127.0.0.1:5000/app:1.2", d, true},
		{"ghcr.io/org/app:main@" + d, "ghcr.io/org/app:main", d, true},
	}
	for _, tt := range tests {
		t.Run(tt.image, func(t *testing.T) {
			ref, digest := deploy.SplitImage(tt.image)
			if ref != tt.ref || digest != tt.digest {
				t.Errorf("SplitImage = %q, %q; want %q, %q", ref, digest, tt.ref, tt.digest)
			}
			if got := deploy.Tagged(ref); got != tt.tagged {
				t.Errorf("Tagged(%q) = %v, want %v", ref, got, tt.tagged)
			}
			tg := deploy.Target{Image: tt.image}
			if tg.Ref() != tt.ref || tg.Digest() != tt.digest {
				t.Errorf("Target.Ref, Digest = %q, %q; want %q, %q", tg.Ref(), tg.Digest(), tt.ref, tt.digest)
			}
		})
	}
}

func TestTagged(t *testing.T) {
	tests := map[string]bool{
		"app":                    false,
		"app:1":                  true,
		"127.0.0.1:5000/app":     false, // the port's colon is not a tag
		"127.0.0.1:5000/app:1":   true,
		"registry:5000/org/app":  false,
		"registry/org/app:1.2.3": true,
	}
	for ref, want := range tests {
		if got := deploy.Tagged(ref); got != want {
			t.Errorf("Tagged(%q) = %v, want %v", ref, got, want)
		}
	}
}

func TestPinRoundTrips(t *testing.T) {
	d := "sha256:" + strings.Repeat("f", 64)
	for _, ref := range []string{"127.0.0.1:5000/app:1", "ghcr.io/org/app:latest", "app:edge"} {
		img := deploy.Pin(ref, d)
		if img != ref+"@"+d {
			t.Errorf("Pin(%q) = %q", ref, img)
		}
		if r, got := deploy.SplitImage(img); r != ref || got != d {
			t.Errorf("SplitImage(Pin(%q)) = %q, %q", ref, r, got)
		}
	}
}

func TestShort(t *testing.T) {
	d := "sha256:0123456789abcdef" + strings.Repeat("0", 48)
	if got := deploy.Short(d); got != "sha256:0123456789ab" {
		t.Errorf("Short = %q", got)
	}
	if got := deploy.Short("sha256:01"); got != "sha256:01" {
		t.Errorf("Short of a short string = %q", got)
	}
}
