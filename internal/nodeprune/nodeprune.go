// Package nodeprune is the node's half of image pruning: what `updater
// prune` runs inside the prune job on every node, where it talks to that
// node's dockerd through the mounted socket and prints one JSON line (a
// Report) that the updater reads from the task's log. The updater's half
// (the global job, what to keep) is package swarm's Prune.
package nodeprune

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/image"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/imageref"
)

// The labels the updater puts on its job services and their containers
// (package swarm writes them): which service a job serves, and which
// updater scope started it.
const (
	JobLabel   = "io.updater.job"
	ScopeLabel = "io.updater.scope"
)

const (
	// taskServiceLabel is the label dockerd puts on a task's container.
	taskServiceLabel = "com.docker.swarm.service.id"
	// jobLeftoverAge is how long an exited job container stays: the
	// updater reads a job's logs right after it ends.
	jobLeftoverAge = time.Minute
	// callTimeout bounds each Docker call, as the updater bounds its own.
	callTimeout = 30 * time.Second
	// runTimeout bounds the whole prune: the updater stops waiting for a
	// node after its own timeout anyway.
	runTimeout = 5 * time.Minute
)

// Report is what `updater prune` prints, as its last line, about its node.
type Report struct {
	Removed int      `json:"removed"`
	Bytes   int64    `json:"bytes"`
	Errors  []string `json:"errors,omitempty"`
}

// Engine is the part of the node's Docker Engine API a prune uses;
// *client.Client is one.
type Engine interface {
	ImageList(ctx context.Context, o client.ImageListOptions) (client.ImageListResult, error)
	ImageInspect(ctx context.Context, id string, o ...client.ImageInspectOption) (client.ImageInspectResult, error)
	ImageHistory(ctx context.Context, id string, o ...client.ImageHistoryOption) (client.ImageHistoryResult, error)
	ImageRemove(ctx context.Context, id string, o client.ImageRemoveOptions) (client.ImageRemoveResult, error)
	ContainerList(ctx context.Context, o client.ContainerListOptions) (client.ContainerListResult, error)
	ContainerInspect(ctx context.Context, id string, o client.ContainerInspectOptions) (client.ContainerInspectResult, error)
	ContainerRemove(ctx context.Context, id string, o client.ContainerRemoveOptions) (client.ContainerRemoveResult, error)
}

var _ Engine = (*client.Client)(nil)

// Main is `updater prune ARGS`. Arguments, not environment: it is run by
// the updater, not configured by people, and its container gets no other
// configuration. It exits 0 with a report even when the prune failed:
// Swarm would start a failed global-job task again and again.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("prune", flag.ContinueOnError)
	fs.SetOutput(stderr)
	repo := fs.String("repo", "", "the repository whose images go, like registry.example.com/shop/web")
	keep := fs.String("keep", "", "digests that stay, comma-separated")
	service := fs.String("service", "", "the service whose old task containers may go with their image")
	scope := fs.String("scope", "", "the updater scope whose exited job containers go")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0 // the flags' usage is printed; asked for, not an error
		}
		return 2
	}
	if *repo == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: updater prune --repo REPOSITORY [--keep DIGEST,…] [--service ID] [--scope SCOPE]")
		return 2
	}
	var digests []string
	for _, d := range strings.Split(*keep, ",") {
		if d = strings.TrimSpace(d); d != "" {
			digests = append(digests, d)
		}
	}
	// Docker's own environment, as the updater's client; the API version
	// is negotiated on the first call.
	api, err := client.New(client.FromEnv, client.WithTimeout(callTimeout))
	if err != nil {
		fmt.Fprintln(stderr, "updater prune: create docker client:", err)
		return 1
	}
	defer api.Close()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	r, err := Prune(ctx, api, *repo, digests, *service, *scope)
	if err != nil {
		r.Errors = append(r.Errors, err.Error()) // still a report, so the updater shows why
	}
	if err := json.NewEncoder(stdout).Encode(r); err != nil {
		return 1
	}
	return 0
}

// Prune removes, on the node api talks to, the images of repo whose digest
// keep does not list. It leaves alone an image with a tag (someone built
// or pulled it by hand), and one a container uses, except the exited
// containers of service's own old tasks, which go first. It also removes
// the exited job containers of the updater scope, which Swarm leaves
// behind on every node.
func Prune(ctx context.Context, api Engine, repo string, keep []string, service, scope string) (Report, error) {
	var r Report
	want := imageref.Repository(repo)
	if want == "" {
		return r, fmt.Errorf("not a repository: %q", repo)
	}
	il, err := api.ImageList(ctx, client.ImageListOptions{})
	if err != nil {
		return r, fmt.Errorf("list images: %w", err)
	}
	cl, err := api.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return r, fmt.Errorf("list containers: %w", err)
	}
	images, conts := il.Items, cl.Items
	gone := removeJobLeftovers(ctx, api, conts, scope, &r)

	users := map[string][]container.Summary{} // image ID -> containers
	for _, c := range conts {
		if !gone[c.ID] {
			users[c.ImageID] = append(users[c.ImageID], c)
		}
	}
	var doomed []string // image IDs
	refs := map[string][]string{}
	for _, img := range images {
		mine, kept := []string(nil), false
		for _, rd := range img.RepoDigests {
			ref, err := imageref.Parse(rd)
			if err != nil || ref.Digest == "" || ref.Name() != want {
				continue
			}
			mine = append(mine, rd)
			kept = kept || slices.Contains(keep, ref.Digest)
		}
		if len(mine) == 0 || kept || tagged(img.RepoTags) {
			continue
		}
		if !freeOf(ctx, api, users[img.ID], service, &r) {
			continue
		}
		doomed = append(doomed, img.ID)
		refs[img.ID] = mine
	}
	if len(doomed) == 0 {
		return r, nil
	}
	sizes := layerSizes(ctx, api, images, doomed)
	removed := map[string]bool{}
	for _, id := range doomed {
		for _, ref := range refs[id] {
			// By reference, not ID: an image also known under another
			// repository keeps that name and stays.
			res, err := api.ImageRemove(ctx, ref, client.ImageRemoveOptions{PruneChildren: true})
			if err != nil {
				if !errdefs.IsNotFound(err) {
					r.Errors = append(r.Errors, fmt.Sprintf("remove %s: %v", ref, err))
				}
				continue
			}
			for _, d := range res.Items {
				if d.Deleted == id {
					removed[id] = true
				}
			}
		}
	}
	r.Removed = len(removed)
	r.Bytes = sizes.freed(removed)
	return r, nil
}

// freeOf reports whether an image is free to go once the exited containers
// of service's own old tasks are removed, and removes them. Any other
// container, running or not, keeps the image.
func freeOf(ctx context.Context, api Engine, users []container.Summary, service string, r *Report) bool {
	for _, c := range users {
		if c.State != container.StateExited && c.State != container.StateDead || c.Labels[taskServiceLabel] != service || service == "" {
			return false
		}
	}
	for _, c := range users {
		if _, err := api.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{}); err != nil && !errdefs.IsNotFound(err) {
			r.Errors = append(r.Errors, fmt.Sprintf("remove exited task container %.12s: %v", c.ID, err))
			return false
		}
	}
	return true
}

// removeJobLeftovers removes the exited containers of this scope's jobs
// (hooks and earlier prunes) that ended a while ago: Swarm removes a job's
// service but leaves its containers on the nodes.
func removeJobLeftovers(ctx context.Context, api Engine, conts []container.Summary, scope string, r *Report) map[string]bool {
	gone := map[string]bool{}
	if scope == "" {
		return gone
	}
	for _, c := range conts {
		if c.Labels[ScopeLabel] != scope || c.Labels[JobLabel] == "" || c.State != container.StateExited && c.State != container.StateDead {
			continue
		}
		res, err := api.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{})
		if err != nil || res.Container.State == nil {
			continue
		}
		finished, err := time.Parse(time.RFC3339Nano, res.Container.State.FinishedAt)
		if err != nil || time.Since(finished) < jobLeftoverAge {
			continue
		}
		if _, err := api.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{}); err != nil && !errdefs.IsNotFound(err) {
			r.Errors = append(r.Errors, fmt.Sprintf("remove exited job container %.12s: %v", c.ID, err))
			continue
		}
		gone[c.ID] = true
	}
	return gone
}

// layers tells how much disk removing images gives back. An image's Size
// counts layers it shares with others (all versions of an app share the
// base image's), so each layer is counted once, and only when no image that
// stays has it.
type layers struct {
	size    map[string]int64    // layer (its chain of diff IDs) -> size
	of      map[string][]string // image ID -> its layers
	kept    map[string]bool     // layers images that stay have
	unknown map[string]int64    // image ID -> Size, when its layer sizes can't be told
}

func layerSizes(ctx context.Context, api Engine, images []image.Summary, doomed []string) layers {
	l := layers{size: map[string]int64{}, of: map[string][]string{}, kept: map[string]bool{}, unknown: map[string]int64{}}
	for _, img := range images {
		ins, err := api.ImageInspect(ctx, img.ID)
		if err != nil {
			continue
		}
		var chain []string
		for i := range ins.RootFS.Layers {
			chain = append(chain, strings.Join(ins.RootFS.Layers[:i+1], ","))
		}
		if !slices.Contains(doomed, img.ID) {
			for _, c := range chain {
				l.kept[c] = true
			}
			continue
		}
		l.of[img.ID] = chain
		// The history lists layers oldest last, with metadata-only steps
		// at size 0; its non-zero sizes line up with the layers unless a
		// layer is empty, and then the image counts whole.
		hist, err := api.ImageHistory(ctx, img.ID)
		var sizes []int64
		if err == nil {
			for i := len(hist.Items) - 1; i >= 0; i-- {
				if hist.Items[i].Size > 0 {
					sizes = append(sizes, hist.Items[i].Size)
				}
			}
		}
		if len(sizes) != len(chain) {
			l.unknown[img.ID] = img.Size
			continue
		}
		for i, c := range chain {
			l.size[c] = sizes[i]
		}
	}
	return l
}

// freed is the disk the removed images gave back.
func (l layers) freed(removed map[string]bool) int64 {
	var total int64
	counted := map[string]bool{}
	for id := range removed {
		if n, ok := l.unknown[id]; ok {
			total += n
			continue
		}
		for _, c := range l.of[id] {
			if !l.kept[c] && !counted[c] {
				counted[c] = true
				total += l.size[c]
			}
		}
	}
	return total
}

// tagged reports whether an image has a tag of its own, beside <none>.
func tagged(repoTags []string) bool {
	for _, t := range repoTags {
		if t != "" && t != "<none>:<none>" {
			return true
		}
	}
	return false
}
