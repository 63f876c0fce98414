package swarm

import (
	"testing"
)

func TestContainerIDIn(t *testing.T) {
	const id = "3f2a9c81d0e4b5a6c7d8e9f00112233445566778899aabbccddeeff001122334"
	for name, tt := range map[string]struct{ mountinfo, want string }{
		"data root on the root fs": {
			"1108 1083 8:1 /var/lib/docker/containers/" + id + "/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/sda1 rw\n", id},
		"data root its own mount": {
			"1108 1083 8:17 /containers/" + id + "/hostname /etc/hostname rw,relatime - xfs /dev/sdb1 rw\n", id},
		"another data root": {
			"9 8 0:5 / / rw - overlay overlay rw\n10 9 8:1 /var/lib/docker-updmn/containers/" + id + "/hosts /etc/hosts rw - ext4 /dev/sda1 rw\n", id},
		"not in a container":           {"22 27 0:21 / /proc rw,relatime - proc proc rw\n24 27 0:6 / /dev rw - devtmpfs devtmpfs rw\n", ""},
		"a directory named containers": {"30 27 8:1 /srv/containers/app /app rw - ext4 /dev/sda1 rw\n", ""},
	} {
		if got := containerIDIn(tt.mountinfo); got != tt.want {
			t.Errorf("%s: got %q, want %q", name, got, tt.want)
		}
	}
}

func TestRepository(t *testing.T) {
	const d = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	same := [][]string{
		{"nginx", "nginx:1.27", "docker.io/library/nginx", "index.docker.io/library/nginx:latest" + d, "nginx" + d},
		{"127.0.0.1:5000/e2e/mn", "127.0.0.1:5000/e2e/mn:latest" + d, "127.0.0.1:5000/e2e/mn" + d},
		{"ghcr.io/org/app", "ghcr.io/org/app:v2"},
	}
	for _, group := range same {
		for _, ref := range group {
			if got, want := repository(ref), repository(group[0]); got != want || got == "" {
				t.Errorf("repository(%q) = %q, want %q", ref, got, want)
			}
		}
	}
	if repository("127.0.0.1:5000/e2e/mn") == repository("127.0.0.1:5000/e2e/mn2") {
		t.Error("different repositories compare equal")
	}
	if got := repository("Not A Ref"); got != "" {
		t.Errorf("repository of garbage = %q, want empty", got)
	}
}

// Layers shared with an image that stays give nothing back; layers two
// removed images share count once.
func TestLayersFreed(t *testing.T) {
	l := layers{
		size: map[string]int64{"base": 80, "base,v1": 5, "base,v2": 6},
		of: map[string][]string{
			"img-v1": {"base", "base,v1"},
			"img-v2": {"base", "base,v2"},
		},
		kept:    map[string]bool{"base": true, "base,v3": true},
		unknown: map[string]int64{"img-odd": 7},
	}
	if got := l.freed(map[string]bool{"img-v1": true, "img-v2": true}); got != 11 {
		t.Errorf("freed %d, want 11 (the base layer stays)", got)
	}
	delete(l.kept, "base")
	if got := l.freed(map[string]bool{"img-v1": true, "img-v2": true, "img-odd": true}); got != 98 {
		t.Errorf("freed %d, want 98 (the base once, and the image whose layers are unknown whole)", got)
	}
}

func TestTagged(t *testing.T) {
	if tagged(nil) || tagged([]string{"<none>:<none>"}) || !tagged([]string{"127.0.0.1:5000/app:v1"}) {
		t.Error("tagged: want only real tags to count")
	}
}
