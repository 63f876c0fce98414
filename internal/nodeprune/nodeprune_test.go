package nodeprune

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/image"
	"github.com/moby/moby/client"
)

const appRepo = "127.0.0.1:5000/app"

// dg is a digest made of one repeated hex digit.
func dg(c string) string { return "sha256:" + strings.Repeat(c, 64) }

// node is a fake of one node's dockerd as a prune sees it. It answers like
// dockerd where the prune depends on it: removing an image by one of its
// references only drops that reference while others remain, the image goes
// with its last one unless a container uses it, and a running container
// is removed only by force. fail answers a call ("ImageRemove ref",
// "ContainerList") with an error in place of the engine.
type node struct {
	images     []image.Summary
	layers     map[string][]string                    // image ID -> RootFS layers
	history    map[string][]image.HistoryResponseItem // image ID -> history, newest first
	containers []container.Summary
	finished   map[string]time.Time // container ID -> when it exited
	fail       map[string]error
}

var _ Engine = (*node)(nil)

func (n *node) ImageList(context.Context, client.ImageListOptions) (client.ImageListResult, error) {
	if err := n.fail["ImageList"]; err != nil {
		return client.ImageListResult{}, err
	}
	return client.ImageListResult{Items: slices.Clone(n.images)}, nil
}

func (n *node) image(ref string) *image.Summary {
	for i := range n.images {
		img := &n.images[i]
		if img.ID == ref || slices.Contains(img.RepoTags, ref) || slices.Contains(img.RepoDigests, ref) {
			return img
		}
	}
	return nil
}

func (n *node) ImageInspect(_ context.Context, id string, _ ...client.ImageInspectOption) (client.ImageInspectResult, error) {
	img := n.image(id)
	if img == nil {
		return client.ImageInspectResult{}, errdefs.ErrNotFound.WithMessage("No such image: " + id)
	}
	return client.ImageInspectResult{InspectResponse: image.InspectResponse{ID: img.ID, RepoTags: img.RepoTags,
		RepoDigests: img.RepoDigests, RootFS: image.RootFS{Type: "layers", Layers: n.layers[img.ID]}}}, nil
}

func (n *node) ImageHistory(_ context.Context, id string, _ ...client.ImageHistoryOption) (client.ImageHistoryResult, error) {
	img := n.image(id)
	if img == nil {
		return client.ImageHistoryResult{}, errdefs.ErrNotFound.WithMessage("No such image: " + id)
	}
	return client.ImageHistoryResult{Items: slices.Clone(n.history[img.ID])}, nil
}

func (n *node) ImageRemove(_ context.Context, ref string, _ client.ImageRemoveOptions) (client.ImageRemoveResult, error) {
	if err := n.fail["ImageRemove "+ref]; err != nil {
		return client.ImageRemoveResult{}, err
	}
	img := n.image(ref)
	if img == nil {
		return client.ImageRemoveResult{}, errdefs.ErrNotFound.WithMessage("No such image: " + ref)
	}
	last := len(img.RepoTags)+len(img.RepoDigests) <= 1
	if last {
		for _, c := range n.containers {
			if c.ImageID == img.ID {
				return client.ImageRemoveResult{}, errdefs.ErrConflict.WithMessage(
					fmt.Sprintf("conflict: unable to delete %s - image is being used by container %s", ref, c.ID))
			}
		}
	}
	img.RepoTags = slices.DeleteFunc(img.RepoTags, func(s string) bool { return s == ref })
	img.RepoDigests = slices.DeleteFunc(img.RepoDigests, func(s string) bool { return s == ref })
	out := []image.DeleteResponse{{Untagged: ref}}
	if last {
		id := img.ID // img points into n.images
		n.images = slices.DeleteFunc(n.images, func(i image.Summary) bool { return i.ID == id })
		out = append(out, image.DeleteResponse{Deleted: id})
	}
	return client.ImageRemoveResult{Items: out}, nil
}

func (n *node) ContainerList(_ context.Context, o client.ContainerListOptions) (client.ContainerListResult, error) {
	if err := n.fail["ContainerList"]; err != nil {
		return client.ContainerListResult{}, err
	}
	var out []container.Summary
	for _, c := range n.containers {
		if o.All || c.State == container.StateRunning {
			out = append(out, c)
		}
	}
	return client.ContainerListResult{Items: out}, nil
}

func (n *node) container(id string) int {
	return slices.IndexFunc(n.containers, func(c container.Summary) bool { return c.ID == id })
}

func (n *node) ContainerInspect(_ context.Context, id string, _ client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	i := n.container(id)
	if i < 0 {
		return client.ContainerInspectResult{}, errdefs.ErrNotFound.WithMessage("No such container: " + id)
	}
	c := n.containers[i]
	st := &container.State{Status: c.State, Running: c.State == container.StateRunning}
	if t, ok := n.finished[c.ID]; ok {
		st.FinishedAt = t.Format(time.RFC3339Nano)
	}
	return client.ContainerInspectResult{Container: container.InspectResponse{ID: c.ID, State: st, Image: c.ImageID}}, nil
}

func (n *node) ContainerRemove(_ context.Context, id string, o client.ContainerRemoveOptions) (client.ContainerRemoveResult, error) {
	i := n.container(id)
	if i < 0 {
		return client.ContainerRemoveResult{}, errdefs.ErrNotFound.WithMessage("No such container: " + id)
	}
	if n.containers[i].State == container.StateRunning && !o.Force {
		return client.ContainerRemoveResult{}, errdefs.ErrConflict.WithMessage("You cannot remove a running container " + id)
	}
	n.containers = slices.Delete(n.containers, i, i+1)
	return client.ContainerRemoveResult{}, nil
}

func (n *node) imageIDs() []string {
	var out []string
	for _, img := range n.images {
		out = append(out, img.ID)
	}
	return out
}

func (n *node) containerIDs() []string {
	var out []string
	for _, c := range n.containers {
		out = append(out, c.ID)
	}
	return out
}

// pruneNode is a node's images and containers as a prune finds them, for
// the service s1 of repo 127.0.0.1:5000/app, keeping digest 1.
func pruneNode() *node {
	app := func(d string) string { return appRepo + "@" + dg(d) }
	n := &node{layers: map[string][]string{}, history: map[string][]image.HistoryResponseItem{},
		finished: map[string]time.Time{}, fail: map[string]error{}}
	n.images = []image.Summary{
		{ID: "sha256:new", RepoDigests: []string{app("1")}},                                             // kept
		{ID: "sha256:old", RepoDigests: []string{app("2")}},                                             // goes
		{ID: "sha256:tagged", RepoDigests: []string{app("3")}, RepoTags: []string{appRepo + ":hotfix"}}, // tagged by hand
		{ID: "sha256:run", RepoDigests: []string{app("4")}},                                             // a `docker run` container runs it
		{ID: "sha256:exited", RepoDigests: []string{app("5")}},                                          // a `docker run` container exited on it
		{ID: "sha256:task", RepoDigests: []string{app("6")}},                                            // s1's old task exited on it: goes
		{ID: "sha256:live", RepoDigests: []string{app("7")}},                                            // s1's task runs it
		{ID: "sha256:elsewhere", RepoDigests: []string{"127.0.0.1:5000/other@" + dg("8")}},              // another repository
		{ID: "sha256:mirrored", RepoDigests: []string{app("9"), "mirror.local/app@" + dg("9")}},         // also known elsewhere
	}
	for id, top := range map[string]string{"sha256:new": "l-new", "sha256:old": "l-old", "sha256:task": "l-task"} {
		n.layers[id] = []string{"l-base", top}
	}
	// History is newest first; the metadata-only step has size 0.
	n.history["sha256:old"] = []image.HistoryResponseItem{{Size: 5}, {Size: 0}, {Size: 80}}
	n.history["sha256:task"] = []image.HistoryResponseItem{{Size: 7}, {Size: 80}}
	n.history["sha256:new"] = []image.HistoryResponseItem{{Size: 9}, {Size: 80}}

	task := map[string]string{taskServiceLabel: "s1"}
	job := map[string]string{JobLabel: "s1", ScopeLabel: "scope1"}
	n.containers = []container.Summary{
		{ID: "c-run", ImageID: "sha256:run", State: container.StateRunning},
		{ID: "c-exited", ImageID: "sha256:exited", State: container.StateExited},
		{ID: "c-task", ImageID: "sha256:task", State: container.StateExited, Labels: task},
		{ID: "c-live", ImageID: "sha256:live", State: container.StateRunning, Labels: task},
		{ID: "c-job-old", ImageID: "sha256:updater", State: container.StateExited, Labels: job},
		{ID: "c-job-just-now", ImageID: "sha256:updater", State: container.StateExited, Labels: job},
		{ID: "c-job-theirs", ImageID: "sha256:updater", State: container.StateExited,
			Labels: map[string]string{JobLabel: "s9", ScopeLabel: "scope2"}},
	}
	n.finished["c-job-old"] = time.Now().Add(-2 * time.Minute)
	n.finished["c-job-just-now"] = time.Now().Add(-5 * time.Second)
	n.finished["c-job-theirs"] = time.Now().Add(-time.Hour)
	return n
}

func TestPrune(t *testing.T) {
	n := pruneNode()
	r, err := Prune(context.Background(), n, appRepo+":latest", []string{dg("1")}, "s1", "scope1")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) > 0 {
		t.Errorf("errors: %q", r.Errors)
	}
	want := []string{"sha256:new", "sha256:tagged", "sha256:run", "sha256:exited", "sha256:live", "sha256:elsewhere", "sha256:mirrored"}
	if got := n.imageIDs(); !slices.Equal(got, want) {
		t.Errorf("images after the prune %v,\nwant %v", got, want)
	}
	// The base layer is the kept image's too: only the top layers count.
	if r.Removed != 2 || r.Bytes != 5+7 {
		t.Errorf("report: removed %d, %d bytes; want 2 and 12", r.Removed, r.Bytes)
	}
	if m := n.image("sha256:mirrored"); m == nil || !slices.Equal(m.RepoDigests, []string{"mirror.local/app@" + dg("9")}) {
		t.Errorf("the image known under another repository: %+v, want it with that name only", m)
	}
	if tagged := n.image("sha256:tagged"); tagged == nil || len(tagged.RepoDigests) != 1 || len(tagged.RepoTags) != 1 {
		t.Errorf("the tagged image lost a reference: %+v", tagged)
	}
	wantC := []string{"c-run", "c-exited", "c-live", "c-job-just-now", "c-job-theirs"}
	if got := n.containerIDs(); !slices.Equal(got, wantC) {
		t.Errorf("containers after the prune %v,\nwant %v (s1's exited task and this scope's old job leftover go)", got, wantC)
	}
}

// Without a service, no container's image is free: the exited tasks of
// which service would go?
func TestPruneWithoutService(t *testing.T) {
	n := pruneNode()
	if _, err := Prune(context.Background(), n, appRepo, []string{dg("1")}, "", ""); err != nil {
		t.Fatal(err)
	}
	if got := n.imageIDs(); slices.Contains(got, "sha256:old") || !slices.Contains(got, "sha256:task") {
		t.Errorf("images %v: want the unused old digest gone and the one an exited task used kept", got)
	}
	if got := n.containerIDs(); len(got) != 7 {
		t.Errorf("containers %v: without a service or scope none goes", got)
	}
}

func TestPruneErrors(t *testing.T) {
	n := pruneNode()
	n.fail["ImageRemove "+appRepo+"@"+dg("2")] = errdefs.ErrUnknown.WithMessage("layer in use")
	r, err := Prune(context.Background(), n, appRepo, []string{dg("1")}, "s1", "scope1")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) != 1 || !strings.Contains(r.Errors[0], "layer in use") || r.Removed != 1 {
		t.Errorf("report %+v: want the refused removal reported and the other one done", r)
	}
	if _, err := Prune(context.Background(), n, "Not A Repo", nil, "s1", ""); err == nil {
		t.Error("no error for a repository that does not parse")
	}
	n.fail["ContainerList"] = errdefs.ErrUnavailable.WithMessage("dockerd stopping")
	if _, err := Prune(context.Background(), n, appRepo, nil, "s1", ""); err == nil {
		t.Error("pruned without knowing which containers use the images")
	}
	n.fail["ImageList"] = errdefs.ErrUnavailable.WithMessage("dockerd stopping")
	if _, err := Prune(context.Background(), n, appRepo, nil, "s1", ""); err == nil {
		t.Error("pruned without knowing the images")
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

// Main's arguments, and its report when Docker is not there: one JSON line
// naming why, exit 0 (Swarm would restart a failed global-job task).
func TestMainCommand(t *testing.T) {
	for _, tt := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"--help"}, 0, "-repo"},
		{nil, 2, "usage: updater prune --repo REPOSITORY"},
		{[]string{"--repo", "r.example/x", "extra"}, 2, "usage: updater prune"},
		{[]string{"--repo", "r.example/x", "--bogus"}, 2, "-bogus"},
	} {
		var stdout, stderr bytes.Buffer
		if code := Main(tt.args, &stdout, &stderr); code != tt.code || !strings.Contains(stderr.String(), tt.stderr) || stdout.Len() > 0 {
			t.Errorf("Main(%q) = %d, stdout %q, stderr %q; want %d and %q", tt.args, code, &stdout, &stderr, tt.code, tt.stderr)
		}
	}

	sock := filepath.Join(t.TempDir(), "absent.sock")
	t.Setenv("DOCKER_HOST", "unix://"+sock)
	t.Setenv("DOCKER_API_VERSION", "1.41") // no negotiation: straight to the missing socket
	var stdout, stderr bytes.Buffer
	if code := Main([]string{"--repo", "registry.example/shop/web", "--keep", dg("1") + ", " + dg("2")}, &stdout, &stderr); code != 0 {
		t.Fatalf("Main = %d, want 0\nstderr: %s", code, &stderr)
	}
	var r Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("stdout is not the JSON report: %v: %s", err, &stdout)
	}
	if r.Removed != 0 || len(r.Errors) != 1 || !strings.Contains(r.Errors[0], sock) {
		t.Fatalf("report %+v, want nothing removed and an error naming %s", r, sock)
	}
}
