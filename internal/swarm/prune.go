package swarm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/imageref"
	"github.com/updater-dev/updater/internal/nodeprune"
)

// Pruning runs `updater prune` (package nodeprune) on every node as a
// global job: a worker's images can only be removed by its own dockerd,
// which the job reaches through the node's Docker socket.
const (
	stepPrune = "prune"
	// DockerSocket is where the prune job finds its node's dockerd.
	DockerSocket = "/var/run/docker.sock"
)

// Prune runs the prune job on every node that is ready, and reports what
// each did. A node that does not finish within j.Timeout (it went down,
// say) is reported with that as its error.
func (s *Swarm) Prune(ctx context.Context, j deploy.PruneJob, creds deploy.Credentials) ([]deploy.Pruned, error) {
	pinned, err := s.pinned(ctx, j.Repo)
	if err != nil {
		return nil, err
	}
	keep := slices.Clone(j.Keep)
	for _, d := range pinned {
		if !slices.Contains(keep, d) {
			keep = append(keep, d)
		}
	}
	auth, err := encodeAuth(creds)
	if err != nil {
		return nil, err
	}
	s.removeStaleJobs(ctx, stepPrune)
	nodes, err := s.readyNodes(ctx)
	if err != nil {
		return nil, err
	}
	id, err := s.startJob(ctx, pruneSpec(j, keep, s.scope()), auth)
	if err != nil {
		return nil, err
	}
	defer s.dropJob(id, j.Name)

	wait, cancel := context.WithTimeout(ctx, j.Timeout)
	defer cancel()
	ended := s.awaitEach(wait, id, nodes)
	out := make([]deploy.Pruned, 0, len(nodes))
	for _, n := range nodes {
		res := deploy.Pruned{Node: s.nodeName(ctx, n)}
		t, ok := ended[n]
		switch {
		case !ok:
			res.Err = fmt.Sprintf("did not finish within %s", j.Timeout)
		case t.Status.State == swarm.TaskStateComplete:
			res = s.readReport(t, res)
		default:
			res.Err = fmt.Sprintf("job task %s: %s", t.Status.State, firstNonEmpty(t.Status.Err, t.Status.Message))
			if last := s.taskTail(t.ID); last != "" {
				res.Err += ": " + last
			}
		}
		out = append(out, res)
	}
	return out, nil
}

func pruneSpec(j deploy.PruneJob, keep []string, scope string) swarm.ServiceSpec {
	labels := map[string]string{jobLabel: j.Service, jobStepLabel: stepPrune, scopeLabel: scope}
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: j.Name, Labels: labels},
		Mode:        swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image: j.Image,
				// The image's entrypoint is the updater.
				Args: []string{"prune", "--repo", j.Repo, "--keep", strings.Join(keep, ","),
					"--service", j.Service, "--scope", scope},
				Mounts: []mount.Mount{{Type: mount.TypeBind, Source: DockerSocket, Target: DockerSocket}},
				Labels: labels,
			},
			// Swarm 20.10 restarts a failed global-job task whatever the
			// policy says; awaitEach takes the first end per node and the job
			// is removed right after.
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			Placement:     &swarm.Placement{Constraints: []string{"node.platform.os == linux"}},
		},
	}
}

// pinned lists the digests of repo that some service's spec or previous
// spec pins: what is running, and what `docker service rollback` returns
// to, for every service in the swarm, watched or not.
func (s *Swarm) pinned(ctx context.Context, repo string) ([]string, error) {
	want := imageref.Repository(repo)
	res, err := s.api.ServiceList(ctx, client.ServiceListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	var out []string
	for _, svc := range res.Items {
		for _, spec := range []*swarm.ServiceSpec{&svc.Spec, svc.PreviousSpec} {
			if spec == nil || spec.TaskTemplate.ContainerSpec == nil {
				continue
			}
			img := spec.TaskTemplate.ContainerSpec.Image
			if _, d := deploy.SplitImage(img); d != "" && imageref.Repository(img) == want && !slices.Contains(out, d) {
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// readyNodes are the IDs of the nodes a global job runs on now.
func (s *Swarm) readyNodes(ctx context.Context) ([]string, error) {
	res, err := s.api.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var out []string
	for _, n := range res.Items {
		if n.Status.State == swarm.NodeStateReady && n.Spec.Availability == swarm.NodeAvailabilityActive &&
			n.Description.Platform.OS == "linux" {
			out = append(out, n.ID)
		}
	}
	sort.Strings(out)
	return out, nil
}

// awaitEach waits until every node has ended a task of the global job, or
// ctx ends, and returns the first ended task of each node that has one.
func (s *Swarm) awaitEach(ctx context.Context, id string, nodes []string) map[string]swarm.Task {
	ended := map[string]swarm.Task{}
	for {
		res, err := s.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", id)})
		if err == nil {
			for _, t := range res.Items {
				switch t.Status.State {
				case swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateOrphaned:
					if first, ok := ended[t.NodeID]; !ok || t.Status.Timestamp.Before(first.Status.Timestamp) {
						ended[t.NodeID] = t
					}
				}
			}
		}
		done := true
		for _, n := range nodes {
			if _, ok := ended[n]; !ok {
				done = false
			}
		}
		if done {
			return ended
		}
		select {
		case <-ctx.Done():
			return ended
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// readReport reads the prune report the task printed last.
func (s *Swarm) readReport(t swarm.Task, res deploy.Pruned) deploy.Pruned {
	line := s.taskTail(t.ID)
	var r nodeprune.Report
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		res.Err = fmt.Sprintf("unreadable prune report %q", line)
		return res
	}
	res.Removed, res.Bytes = r.Removed, r.Bytes
	res.Err = strings.Join(r.Errors, "; ")
	return res
}

// taskTail is the last line a task printed, best effort.
func (s *Swarm) taskTail(id string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := s.api.TaskLogs(ctx, id, client.TaskLogsOptions{ShowStdout: true, ShowStderr: true, Tail: "5"})
	if err != nil {
		return ""
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, io.LimitReader(rc, 1<<20)); err != nil && buf.Len() == 0 {
		return ""
	}
	last := ""
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	return last
}

// removeStaleJobs removes this scope's jobs of step: one left by an
// updater that died while it ran.
func (s *Swarm) removeStaleJobs(ctx context.Context, step string) {
	res, err := s.api.ServiceList(ctx, client.ServiceListOptions{Filters: make(client.Filters).
		Add("label", jobStepLabel+"="+step).Add("label", scopeLabel+"="+s.scope())})
	if err != nil {
		return
	}
	for _, svc := range res.Items {
		s.removeJob(ctx, svc.ID, svc.Spec.Name)
	}
}

// SelfImage is the image of the container the updater runs in, found
// through its own container ID: the prune job runs it on every node. For a
// Swarm task it is the image as the service spec pins it
// (repo:tag@sha256:…), which every node can pull with the service's
// registry credentials.
func (s *Swarm) SelfImage(ctx context.Context) (string, error) {
	id := ownContainerID()
	if id == "" {
		return "", errors.New("the updater does not run in a container here")
	}
	res, err := s.api.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return "", fmt.Errorf("inspect the updater's own container %.12s: %w", id, err)
	}
	if res.Container.Config == nil || res.Container.Config.Image == "" {
		return "", fmt.Errorf("the updater's own container %.12s names no image", id)
	}
	return res.Container.Config.Image, nil
}

// ownContainerID finds the ID of the container this process runs in: the
// files Docker bind-mounts into every container (/etc/hostname,
// /etc/hosts, /etc/resolv.conf) come from /var/lib/docker/containers/<ID>/,
// and mountinfo shows that path on cgroup v1 and v2 alike. "" outside a
// container.
func ownContainerID() string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	return containerIDIn(string(b))
}

func containerIDIn(mountinfo string) string {
	for _, line := range strings.Split(mountinfo, "\n") {
		_, rest, ok := strings.Cut(line, "/containers/")
		if !ok {
			continue
		}
		id, _, ok := strings.Cut(rest, "/")
		if ok && len(id) == 64 && strings.Trim(id, "0123456789abcdef") == "" {
			return id
		}
	}
	return ""
}
