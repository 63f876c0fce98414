package swarm

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/nodeprune"
)

const (
	jobLabel     = nodeprune.JobLabel // on job services and their containers: the ID of the service the job serves
	jobStepLabel = "io.updater.step"
	// taskServiceLabel is the label dockerd puts on a task's container.
	taskServiceLabel = "com.docker.swarm.service.id"

	logTailLines = 20
)

// ErrJobTimeout means a job did not finish within its timeout.
var ErrJobTimeout = errors.New("job timed out")

// Run runs a hook as a one-off Swarm job (replicated-job mode, no
// restarts: the default restart policy would retry a failing migration
// forever), waits for it, keeps the tail of its logs and removes it.
func (s *Swarm) Run(ctx context.Context, j deploy.Job, creds deploy.Credentials) (deploy.JobResult, error) {
	src, err := s.api.ServiceInspect(ctx, j.Service, client.ServiceInspectOptions{})
	if err != nil {
		return deploy.JobResult{}, fmt.Errorf("inspect service %s: %w", j.Service, unavailable(notFound(err)))
	}
	auth, err := encodeAuth(creds)
	if err != nil {
		return deploy.JobResult{}, err
	}
	spec := jobSpec(j, src.Service.Spec, s.scope())
	id, err := s.startJob(ctx, spec, auth)
	if err != nil {
		return deploy.JobResult{}, err
	}
	defer s.dropJob(id, j.Name)

	ctx, cancel := context.WithTimeout(ctx, j.Timeout)
	defer cancel()
	task, err := s.awaitJob(ctx, id)
	// The tail leaves in reports and records: a job that prints its
	// connection string must not hand its password to Slack.
	out := deploy.JobResult{LogTail: hideEnv(s.logTail(id), spec.TaskTemplate.ContainerSpec.Env)}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, deploy.ErrUnavailable) {
			return out, fmt.Errorf("%w after %s", ErrJobTimeout, j.Timeout)
		}
		return out, fmt.Errorf("wait for job %s: %w", j.Name, err)
	}
	switch task.Status.State {
	case swarm.TaskStateComplete:
		return out, nil
	case swarm.TaskStateFailed:
		if cs := task.Status.ContainerStatus; cs != nil && cs.ExitCode != 0 {
			out.ExitCode = cs.ExitCode
			return out, nil
		}
	}
	// Rejected (no such image, a mount Swarm refuses) or failed before the
	// container ran: the job never did its work.
	return out, fmt.Errorf("job %s %s: %s", j.Name, task.Status.State, firstNonEmpty(task.Status.Err, task.Status.Message))
}

// startJob creates a job service: the hooks' replicated jobs and the
// prune's global one. Whoever starts one drops it when done.
func (s *Swarm) startJob(ctx context.Context, spec swarm.ServiceSpec, auth string) (string, error) {
	// Whose job it is, on the service and its containers: the scope is
	// shared by every updater of it, and Clean spares a live holder's.
	spec.Labels = withHolder(spec.Labels, s.cfg.Holder)
	if c := spec.TaskTemplate.ContainerSpec; c != nil {
		cs := *c
		cs.Labels = withHolder(c.Labels, s.cfg.Holder)
		spec.TaskTemplate.ContainerSpec = &cs
	}
	res, err := s.api.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec, EncodedRegistryAuth: auth})
	if err != nil {
		return "", fmt.Errorf("create job %s: %w", spec.Name, unavailable(err))
	}
	s.mu.Lock()
	if s.jobs == nil {
		s.jobs = map[string]bool{}
	}
	s.jobs[res.ID] = true
	s.mu.Unlock()
	return res.ID, nil
}

// ours reports whether the job service id is one this process runs now.
func (s *Swarm) ours(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.jobs[id]
}

// dropJob removes a job with a fresh context: the job must go also when
// the caller's context has ended (timeout, updater shutdown), or it would
// run on unobserved.
func (s *Swarm) dropJob(id, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.removeJob(ctx, id, name)
	s.mu.Lock()
	delete(s.jobs, id)
	s.mu.Unlock()
}

func jobSpec(j deploy.Job, src swarm.ServiceSpec, scope string) swarm.ServiceSpec {
	one := uint64(1)
	c := &swarm.ContainerSpec{Image: j.Image, Command: j.Command,
		// On the container too, so what a job leaves on a node is findable.
		Labels: map[string]string{jobLabel: j.Service, scopeLabel: scope}}
	if sc := src.TaskTemplate.ContainerSpec; sc != nil {
		c.Secrets, c.Configs = sc.Secrets, sc.Configs
		// A hardened service's job is as hardened: a migration of a service
		// running as 1000 on a read-only root must not run as the image's
		// root with every capability. No label loosens this.
		c.User, c.ReadOnly, c.CapabilityDrop = sc.User, sc.ReadOnly, sc.CapabilityDrop
		if j.InheritEnv {
			c.Env = append(c.Env, sc.Env...)
		}
	}
	c.Env = append(c.Env, j.Env...)
	for _, m := range j.Mounts {
		mt := mount.TypeVolume
		if strings.HasPrefix(m.Source, "/") {
			mt = mount.TypeBind
		}
		c.Mounts = append(c.Mounts, mount.Mount{Type: mt, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	var res *swarm.ResourceRequirements
	if r := src.TaskTemplate.Resources; r != nil && r.Limits != nil {
		// Limits only: a reservation would hold a node's capacity for a
		// job the service's own tasks already hold it for.
		lim := *r.Limits
		res = &swarm.ResourceRequirements{Limits: &lim}
	}
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: j.Name, Labels: map[string]string{
			jobLabel: j.Service, jobStepLabel: string(j.Phase), scopeLabel: scope,
			// A job belongs to the stack it serves, for `docker stack ps`.
			StackLabel: src.Labels[StackLabel],
		}},
		Mode: swarm.ServiceMode{ReplicatedJob: &swarm.ReplicatedJob{MaxConcurrent: &one, TotalCompletions: &one}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: c,
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			// Where the service runs and what it is attached to: the job
			// reaches the database the way the service does.
			Networks:  src.TaskTemplate.Networks,
			Placement: src.TaskTemplate.Placement,
			Resources: res,
		},
	}
}

// hideEnv replaces in lines every value of env, the job's environment:
// the hook's labels and, for a migration, the service's own, where the
// passwords are. The updater's own hook variables (names, digests) are no
// secret, and values shorter than 4 characters ("db", "1") would blank out
// ordinary words.
func hideEnv(lines, env []string) []string {
	var pairs []string
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		if len(v) < 4 || hookVar(k) {
			continue
		}
		pairs = append(pairs, v)
	}
	if len(pairs) == 0 || len(lines) == 0 {
		return lines
	}
	// Longest first: a value that holds another must go whole.
	slices.SortFunc(pairs, func(a, b string) int { return cmp.Or(len(b)-len(a), strings.Compare(a, b)) })
	var old []string
	for _, v := range slices.Compact(pairs) {
		old = append(old, v, "<redacted>")
	}
	r := strings.NewReplacer(old...)
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = r.Replace(l)
	}
	return out
}

// hookVar is one of the variables deploy gives every hook (hookEnv).
func hookVar(k string) bool {
	switch k {
	case "UPDATER_DEPLOY_ID", "UPDATER_SERVICE", "UPDATER_IMAGE", "UPDATER_FROM_DIGEST", "UPDATER_TO_DIGEST":
		return true
	}
	return false
}

// awaitJob waits for the job's task to reach a final state.
func (s *Swarm) awaitJob(ctx context.Context, id string) (swarm.Task, error) {
	var lastErr error // Docker's, while it does not answer
	for {
		res, err := s.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", id)})
		if err != nil && ctx.Err() != nil {
			return swarm.Task{}, ctx.Err()
		}
		lastErr = unavailable(err)
		if err == nil {
			for _, t := range res.Items {
				switch t.Status.State {
				case swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateOrphaned:
					return t, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			// The job's time ran out while Docker did not answer: that is
			// Docker's absence, not the job's fault.
			if errors.Is(lastErr, deploy.ErrUnavailable) && errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return swarm.Task{}, fmt.Errorf("docker did not answer until the job's time ran out: %w", lastErr)
			}
			return swarm.Task{}, ctx.Err()
		case <-time.After(100 * time.Millisecond): // a task list is cheap; hooks are on the deploy path
		}
	}
}

// logTail returns the job's last lines of output, best effort: logs make
// a report useful but are no reason to fail it.
func (s *Swarm) logTail(id string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := s.api.ServiceLogs(ctx, id, client.ServiceLogsOptions{ShowStdout: true, ShowStderr: true, Tail: fmt.Sprint(logTailLines)})
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
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return lines
}

// removeJob removes a job service and its containers. Swarm (20.10 at
// least) leaves the exited container of a job's task behind when the
// service goes, one per hook run, so the updater removes those it can
// reach: the ones on its own node. Force also stops a job still running
// (a timeout, a shutdown) at once; RemoveVolumes takes the anonymous
// volumes an image's VOLUME made for the job (postgres images declare
// one), never named ones.
//
// A task still being prepared has no container yet, and one removed in
// that state gets its container anyway, left running with no service
// (seen on 20.10 when a restarted updater removed the job a killed one had
// just created). So removal waits, a bounded while, for every task to have
// its container or to be done.
func (s *Swarm) removeJob(ctx context.Context, id, name string) {
	tasks, err := s.settledTasks(ctx, id, 20*time.Second)
	if err == nil {
		node := s.nodeID(ctx)
		for _, t := range tasks.Items {
			cs := t.Status.ContainerStatus
			if cs == nil || cs.ContainerID == "" {
				continue
			}
			if t.NodeID != node {
				s.log().Debug("job container on another node stays", "service", name, "node", t.NodeID)
				continue
			}
			if _, err := s.api.ContainerRemove(ctx, cs.ContainerID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !isNotFound(err) {
				s.log().Warn("remove job container", "service", name, "err", err)
			}
		}
	}
	if _, err := s.api.ServiceRemove(ctx, id, client.ServiceRemoveOptions{}); err != nil && !isNotFound(err) {
		s.log().Error("remove job", "service", name, "err", err)
	}
}

// settledTasks lists the job's tasks once none is between scheduling and
// its container's start, or when wait has passed.
func (s *Swarm) settledTasks(ctx context.Context, id string, wait time.Duration) (client.TaskListResult, error) {
	deadline := time.Now().Add(wait)
	for {
		tasks, err := s.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", id)})
		if err != nil || time.Now().After(deadline) || !slices.ContainsFunc(tasks.Items, preparing) {
			return tasks, err
		}
		select {
		case <-ctx.Done():
			return tasks, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// preparing is a task meant to run that has no container yet.
func preparing(t swarm.Task) bool {
	if t.DesiredState != swarm.TaskStateRunning && t.DesiredState != swarm.TaskStateComplete {
		return false
	}
	switch t.Status.State {
	case swarm.TaskStateNew, swarm.TaskStatePending, swarm.TaskStateAssigned, swarm.TaskStateAccepted,
		swarm.TaskStatePreparing, swarm.TaskStateReady:
		return true
	}
	return false
}

// nodeID is the swarm ID of the node the updater talks to.
func (s *Swarm) nodeID(ctx context.Context) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.node == "" {
		if info, err := s.api.Info(ctx, client.InfoOptions{}); err == nil {
			s.node = info.Info.Swarm.NodeID
		}
	}
	return s.node
}

// Clean removes the jobs of this updater's scope left by runs that
// ended, but the ones this process runs now (a scheduled backup goes on
// beside cycles). The scope is shared by every updater of it, so each job
// names the holder that started it, and the jobs of the lease's holder,
// when that is another updater, are its own and stay: only one whose
// owner's lease is gone, or that this holder's earlier run left, goes.
// Other scopes' jobs are theirs.
func (s *Swarm) Clean(ctx context.Context) error {
	lease, err := s.ReadLease(ctx)
	if err != nil {
		return fmt.Errorf("read whose jobs run: %w", err)
	}
	live := func(labels map[string]string) bool {
		return lease.Holder != "" && lease.Holder != s.cfg.Holder && labels[leaseHolderLabel] == lease.Holder
	}
	res, err := s.api.ServiceList(ctx, client.ServiceListOptions{Filters: make(client.Filters).Add("label", jobLabel).Add("label", scopeLabel+"="+s.scope())})
	if err != nil {
		return fmt.Errorf("list jobs: %w", err)
	}
	for _, svc := range res.Items {
		if s.ours(svc.ID) || live(svc.Spec.Labels) {
			continue
		}
		s.removeJob(ctx, svc.ID, svc.Spec.Name)
		s.log().Warn("removed a job left by an earlier run", "service", svc.Spec.Name, "step", svc.Spec.Labels[jobStepLabel],
			"holder", svc.Spec.Labels[leaseHolderLabel])
	}
	// Containers whose job service is gone (see removeJob), on this node.
	cs, err := s.api.ContainerList(ctx, client.ContainerListOptions{All: true,
		Filters: make(client.Filters).Add("label", jobLabel).Add("label", scopeLabel+"="+s.scope())})
	if err != nil {
		return fmt.Errorf("list job containers: %w", err)
	}
	for _, c := range cs.Items {
		if s.ours(c.Labels[taskServiceLabel]) || live(c.Labels) {
			continue
		}
		if _, err := s.api.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !isNotFound(err) {
			s.log().Warn("remove job container", "container", c.ID, "err", err)
			continue
		}
		s.log().Warn("removed a job container left by an earlier run", "container", c.ID, "service", c.Labels["com.docker.swarm.service.name"])
	}
	return nil
}

// withHolder is labels with the holder's name added, a copy: a caller's
// map may be shared between a service and its containers.
func withHolder(labels map[string]string, holder string) map[string]string {
	out := make(map[string]string, len(labels)+1)
	maps.Copy(out, labels)
	out[leaseHolderLabel] = holder
	return out
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return "no reason given"
}
