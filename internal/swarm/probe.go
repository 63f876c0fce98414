package swarm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
)

// Probing runs `updater probe` (package probe) as a short Swarm job
// attached to the probed service's network. The updater itself may share
// none of a service's networks (it runs beside the stack, or as a host
// process), and an overlay network's task addresses are reachable only
// from containers attached to it; a job is, on any node, with no change to
// the user's stack. The operator allows it by allowing the probe image
// (UPDATER_PROBE_IMAGE, or the updater's own) to run on the nodes.
const stepProbe = "probe"

// probeJobMargin is how long a probe job may take beyond its probes: its
// image pulled, its container started, its logs written.
const probeJobMargin = 2 * time.Minute

// ProbeJobs probes services' new tasks with probe jobs of Image. It is a
// deploy.Prober.
type ProbeJobs struct {
	Swarm *Swarm
	// Image is the image the probe job runs, its entrypoint the updater.
	Image string
}

var _ deploy.Prober = ProbeJobs{}

// Probe is s.Probe with p's image.
func (p ProbeJobs) Probe(ctx context.Context, t deploy.Target, digest string, spec deploy.Probe) ([]deploy.ProbeResult, error) {
	return p.Swarm.Probe(ctx, t, digest, spec, p.Image)
}

// ProbeTarget is one task a probe job probes, as `updater probe` takes it
// on its command line (TASK,NODE,URL) and reports it back.
type ProbeTarget struct{ Task, Node, URL string }

// Arg is t as one argument of `updater probe`.
func (t ProbeTarget) Arg() string { return t.Task + "," + t.Node + "," + t.URL }

// Probe probes every running task of t at digest from a probe job of
// image attached to the network spec names (the service's first one when
// it names none), and returns one result per task. An error is the probe
// not run: no task to probe, the job not started or ended without
// reporting.
func (s *Swarm) Probe(ctx context.Context, t deploy.Target, digest string, spec deploy.Probe, image string) ([]deploy.ProbeResult, error) {
	if image == "" {
		return nil, errors.New("no image to run the probe job: set UPDATER_PROBE_IMAGE to the updater's image (the updater does not run in a container here, so its own is unknown)")
	}
	res, err := s.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", t.ID).Add("desired-state", "running")})
	if err != nil {
		return nil, fmt.Errorf("list tasks of %s: %w", t.Name, unavailable(err))
	}
	network, targets, err := probeTargets(res.Items, t, digest, spec)
	if err != nil {
		return nil, err
	}
	for i := range targets {
		targets[i].Node = s.nodeName(ctx, targets[i].Node)
	}
	name := probeJobName(t.Name)
	// No registry auth: the probe image is the updater's, which the nodes
	// pull as they pulled the updater (or UPDATER_PROBE_IMAGE, likewise).
	id, err := s.startJob(ctx, probeSpec(name, t, spec, network, image, targets, s.scope()), "")
	if err != nil {
		return nil, err
	}
	defer s.dropJob(id, name)

	budget := probeBudget(spec)
	wait, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	task, err := s.awaitJob(wait, id)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, deploy.ErrUnavailable) {
			return nil, fmt.Errorf("wait for the probe job of %s: %w", t.Name, err)
		}
		return nil, fmt.Errorf("the probe job of %s did not end within %s", t.Name, budget)
	}
	lines := s.jobLines(id)
	out, got := readProbeResults(lines, targets)
	if got == 0 {
		// Rejected (no such image), or the job failed before it probed:
		// no verdict on the tasks.
		why := fmt.Sprintf("%s: %s", task.Status.State, firstNonEmpty(task.Status.Err, task.Status.Message))
		if len(lines) > 0 {
			why += ": " + lines[len(lines)-1]
		}
		return nil, fmt.Errorf("the probe job of %s (image %s) reported nothing: %s", t.Name, image, why)
	}
	return out, nil
}

// probeBudget bounds a probe job: each probe with its timeout, the waits
// between them, and the job's own start. Tasks are probed side by side.
func probeBudget(spec deploy.Probe) time.Duration {
	return time.Duration(spec.Count)*(spec.Timeout+spec.Interval) + probeJobMargin
}

// probeTargets picks the tasks to probe, those running digest, and the
// network they are probed on (its ID), each with its URL there.
func probeTargets(tasks []swarm.Task, t deploy.Target, digest string, spec deploy.Probe) (string, []ProbeTarget, error) {
	network := ""
	var out []ProbeTarget
	for _, task := range tasks {
		if task.Status.State != swarm.TaskStateRunning || task.Spec.ContainerSpec == nil ||
			!strings.HasSuffix(task.Spec.ContainerSpec.Image, "@"+digest) {
			continue
		}
		att, err := probeAttachment(task, t.Stack, spec.Network)
		if err != nil {
			return "", nil, fmt.Errorf("probe %s: %w", t.Name, err)
		}
		if network == "" {
			network = att.Network.ID
		}
		if len(att.Addresses) == 0 {
			return "", nil, fmt.Errorf("probe %s: task %s has no address on network %s", t.Name, task.ID, att.Network.Spec.Name)
		}
		addr := att.Addresses[0].Addr().String()
		out = append(out, ProbeTarget{Task: task.ID, Node: task.NodeID, URL: spec.For(addr, t.Name, digest)})
	}
	if len(out) == 0 {
		return "", nil, fmt.Errorf("probe %s: no running task of %s to probe", t.Name, deploy.Short(digest))
	}
	slices.SortFunc(out, func(a, b ProbeTarget) int { return strings.Compare(a.Task, b.Task) })
	return network, out, nil
}

// probeAttachment is the task's attachment to the network named (by ID,
// by name, or by its name in the stack file: "backend" for shop_backend),
// or to the task's first network when none is named.
func probeAttachment(task swarm.Task, stack, named string) (swarm.NetworkAttachment, error) {
	want := ""
	if named == "" {
		if len(task.Spec.Networks) == 0 {
			return swarm.NetworkAttachment{}, fmt.Errorf("task %s is attached to no network", task.ID)
		}
		want = task.Spec.Networks[0].Target
	}
	for _, a := range task.NetworksAttachments {
		if named == "" && a.Network.ID == want || named != "" && networkNamed(a.Network, stack, named) {
			return a, nil
		}
	}
	if named == "" {
		return swarm.NetworkAttachment{}, fmt.Errorf("task %s has no address on its first network %s yet", task.ID, want)
	}
	return swarm.NetworkAttachment{}, fmt.Errorf("label %s=%q: the service is not attached to that network (its tasks are on %s): name one of those, as Docker names it or as the stack file does",
		deploy.LabelProbeNetwork, named, attachedNames(task))
}

// networkNamed says whether n is the network a label names.
func networkNamed(n swarm.Network, stack, named string) bool {
	return n.ID == named || n.Spec.Name == named || stack != "" && n.Spec.Name == stack+"_"+named
}

func attachedNames(task swarm.Task) string {
	var names []string
	for _, a := range task.NetworksAttachments {
		if !a.Network.Spec.Ingress {
			names = append(names, a.Network.Spec.Name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// probeNetwork checks, for a service whose probe names its network, that
// its tasks are attached to that network, so a label naming another is
// refused before anything runs. One task list, only for such services: the
// service spec names its networks by ID, the tasks also by name. With no
// task running (or Docker not answering) there is nothing to check against
// yet; the probe itself refuses then.
func (s *Swarm) probeNetwork(ctx context.Context, t deploy.Target) deploy.Target {
	if t.Probe == nil || t.Probe.Network == "" {
		return t
	}
	res, err := s.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", t.ID).Add("desired-state", "running")})
	if err != nil {
		return t
	}
	for _, task := range res.Items {
		if len(task.NetworksAttachments) == 0 {
			continue
		}
		if _, err := probeAttachment(task, t.Stack, t.Probe.Network); err != nil {
			t.Probe, t.Bake = nil, 0
			t.HooksErr = fmt.Errorf("invalid probe or bake labels: %w", err)
		}
		return t
	}
	return t
}

// probeJobName is unique per probe: two runs may probe side by side.
func probeJobName(service string) string {
	if len(service) > 40 {
		service = service[:40]
	}
	b := make([]byte, 4)
	rand.Read(b)
	return service + "-probe-" + hex.EncodeToString(b)
}

func probeSpec(name string, t deploy.Target, p deploy.Probe, network, image string, targets []ProbeTarget, scope string) swarm.ServiceSpec {
	one := uint64(1)
	args := []string{"probe", "--expect", p.Expect.String(), "--count", strconv.Itoa(p.Count),
		"--interval", p.Interval.String(), "--timeout", p.Timeout.String()}
	if p.Header != "" {
		args = append(args, "--header", p.Header)
	}
	for _, tg := range targets {
		args = append(args, tg.Arg())
	}
	labels := map[string]string{jobLabel: t.ID, jobStepLabel: stepProbe, scopeLabel: scope, StackLabel: t.Stack}
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name, Labels: labels},
		Mode:        swarm.ServiceMode{ReplicatedJob: &swarm.ReplicatedJob{MaxConcurrent: &one, TotalCompletions: &one}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image:  image, // its entrypoint is the updater
				Args:   args,
				Labels: map[string]string{jobLabel: t.ID, scopeLabel: scope},
				// It only makes HTTP requests: nobody, nothing writable, no
				// capability, whatever the image says.
				User: "65534:65534", ReadOnly: true, CapabilityDrop: []string{"ALL"},
			},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			Networks:      []swarm.NetworkAttachmentConfig{{Target: network}},
			Placement:     &swarm.Placement{Constraints: []string{"node.platform.os == linux"}},
			Resources: &swarm.ResourceRequirements{Limits: &swarm.Limit{
				NanoCPUs: 500_000_000, MemoryBytes: 64 << 20, Pids: 64}},
		},
	}
}

// jobLines are the lines a one-task job printed, best effort, at most 1
// MiB. Read as the service's logs, which hook jobs need anyway: a socket
// proxy's allow-list needs nothing more for probes.
func (s *Swarm) jobLines(id string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := s.api.ServiceLogs(ctx, id, client.ServiceLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return nil
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, io.LimitReader(rc, 1<<20)); err != nil && buf.Len() == 0 {
		return nil
	}
	var lines []string
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// readProbeResults matches the job's JSON lines to the targets probed, in
// the targets' order, and counts the tasks that got one. A task the job
// did not report on failed its probe: it was not shown to answer.
func readProbeResults(lines []string, targets []ProbeTarget) ([]deploy.ProbeResult, int) {
	byTask := map[string]deploy.ProbeResult{}
	for _, l := range lines {
		var r deploy.ProbeResult
		if !strings.HasPrefix(l, "{") || json.Unmarshal([]byte(l), &r) != nil || r.Task == "" {
			continue
		}
		byTask[r.Task] = r
	}
	out := make([]deploy.ProbeResult, 0, len(targets))
	got := 0
	for _, tg := range targets {
		r, ok := byTask[tg.Task]
		if !ok {
			r = deploy.ProbeResult{Task: tg.Task, URL: deploy.MaskURL(tg.URL), Err: "the probe job reported nothing about this task"}
		} else {
			got++
			// What a job printed is not trusted to be masked or short.
			r.URL = deploy.MaskURL(r.URL)
			r.Body = cut(r.Body, deploy.ProbeBodyMax)
		}
		r.Node = tg.Node
		out = append(out, r)
	}
	return out, got
}

// cut is s shortened to at most n bytes, never inside a UTF-8 sequence.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}
