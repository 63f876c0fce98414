package imageref

import (
	"errors"
	"strings"
	"testing"
)

const dgst = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParse(t *testing.T) {
	for ref, want := range map[string]Ref{
		"nginx":                          {Host: DockerHub, Path: "library/nginx"},
		"nginx:1.27":                     {Host: DockerHub, Path: "library/nginx", Tag: "1.27"},
		"Index.Docker.IO/library/nginx":  {Host: DockerHub, Path: "library/nginx"},
		"bitnami/redis:7@" + dgst:        {Host: DockerHub, Path: "bitnami/redis", Tag: "7", Digest: dgst},
		"127.0.0.1:5000/e2e/mn":          {Host: "127.0.0.1:5000", Path: "e2e/mn"},
		"127.0.0.1:5000/e2e/mn@" + dgst:  {Host: "127.0.0.1:5000", Path: "e2e/mn", Digest: dgst},
		"localhost/app:v1":               {Host: "localhost", Path: "app", Tag: "v1"},
		"GHCR.io/org/my_app__x-y.z:v2.0": {Host: "ghcr.io", Path: "org/my_app__x-y.z", Tag: "v2.0"},
		"[::1]:5000/app":                 {Host: "[::1]:5000", Path: "app"},
	} {
		got, err := Parse(ref)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", ref, got, err, want)
		}
	}
	for _, ref := range []string{"", "Not A Ref", "Nginx", "app:", "app:-x", "app@sha256:abc", "app@" + dgst + "x",
		"a..b/app", "ho st.io/app", "app/", "/app", "app//x", "app:" + strings.Repeat("t", 129),
		strings.Repeat("a", 256), "bad_host.io:x/app"} {
		if got, err := Parse(ref); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %+v, %v; want ErrInvalid", ref, got, err)
		}
	}
}

func TestRepository(t *testing.T) {
	same := [][]string{
		{"nginx", "nginx:1.27", "docker.io/library/nginx", "index.docker.io/library/nginx:latest@" + dgst, "nginx@" + dgst},
		{"127.0.0.1:5000/e2e/mn", "127.0.0.1:5000/e2e/mn:latest@" + dgst, "127.0.0.1:5000/e2e/mn@" + dgst},
		{"ghcr.io/org/app", "ghcr.io/org/app:v2"},
	}
	for _, group := range same {
		for _, ref := range group {
			if got, want := Repository(ref), Repository(group[0]); got != want || got == "" {
				t.Errorf("Repository(%q) = %q, want %q", ref, got, want)
			}
		}
	}
	if Repository("127.0.0.1:5000/e2e/mn") == Repository("127.0.0.1:5000/e2e/mn2") {
		t.Error("different repositories compare equal")
	}
	if got := Repository("Not A Ref"); got != "" {
		t.Errorf("Repository of garbage = %q, want empty", got)
	}
}
