// Package swarm is the updater's only door to the Docker Engine API: it
// lists watched services, updates them pinned to a digest, reports how a
// rollout goes, rolls back, and keeps the updater's own records in Swarm
// config objects.
package swarm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/window"
)

// StackLabel is the label `docker stack deploy` puts on every service.
const StackLabel = "com.docker.stack.namespace"

// Config selects the services to watch.
type Config struct {
	// Label is the opt-in label; a service is watched when it is "true".
	Label string
	// Stack restricts watching to one stack namespace; "" watches all.
	Stack string
	// Retries bounds re-tries of a spec write that Swarm refused as out of
	// sequence (the version moved between our read and write).
	Retries int
	// Timeout bounds each Docker call; 0: DefaultTimeout.
	Timeout time.Duration
	// Holder names this updater process in the lease and on the jobs it
	// starts, whose owner Clean asks the lease about.
	Holder string
	// Log is for what the adapter cleans up on its own; nil: slog.Default.
	Log *slog.Logger
	// Authority is what hook labels may ask for beyond the service's own
	// repository and stack volumes; the zero value allows nothing more.
	Authority Authority
	// Policy is the operator's release policy for every service
	// (UPDATER_WINDOWS, UPDATER_FREEZE), merged with each one's labels.
	Policy window.Policy
}

// Swarm talks to one Docker Engine that is a swarm manager.
type Swarm struct {
	api *docker
	cfg Config

	mu    sync.Mutex
	node  string            // this node's swarm ID, read once
	jobs  map[string]bool   // IDs of the job services this process runs now: Clean leaves them
	aside map[string]string // deploy records InFlight could not use, by name: why

	nodes nodeNames // node IDs to hostnames, for reports
	auth  authBook  // the registry auth each spec last carried (reauth.go)
}

// New connects with Docker's own environment (DOCKER_HOST, DOCKER_TLS_*,
// DOCKER_API_VERSION). The API version is negotiated on the first call, so
// one binary works with Engine API 1.41 (Docker 20.10) up to the newest.
func New(cfg Config) (*Swarm, error) {
	api, err := client.New(client.FromEnv)
	if err != nil {
		return nil, fmt.Errorf("create docker client: %w", err)
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	return &Swarm{api: newDocker(api, cfg.Timeout), cfg: cfg}, nil
}

// Stuck names the Docker calls that got no answer within their bound
// since Docker last answered one; empty while Docker answers.
func (s *Swarm) Stuck() []string { return s.api.stuck() }

func (s *Swarm) log() *slog.Logger {
	if s.cfg.Log != nil {
		return s.cfg.Log
	}
	return slog.Default()
}

// Close releases the client's connections.
func (s *Swarm) Close() error { return s.api.Close() }

// Ping checks that the engine answers and is an active swarm manager, so a
// misplaced updater says so at start instead of failing every cycle.
func (s *Swarm) Ping(ctx context.Context) error {
	info, err := s.api.Info(ctx, client.InfoOptions{})
	if err != nil {
		return fmt.Errorf("reach docker: %w", err)
	}
	sw := info.Info.Swarm
	if sw.LocalNodeState != swarm.LocalNodeStateActive {
		return fmt.Errorf("docker is not in swarm mode (node state %q): run `docker swarm init` or deploy the updater on a swarm manager", sw.LocalNodeState)
	}
	if !sw.ControlAvailable {
		return errors.New("this docker node is a swarm worker: place the updater on a manager (deploy.placement.constraints: [node.role == manager])")
	}
	return nil
}

// List returns the watched services with one API call.
func (s *Swarm) List(ctx context.Context) ([]deploy.Target, error) {
	f := make(client.Filters).Add("label", s.cfg.Label+"=true")
	if s.cfg.Stack != "" {
		f.Add("label", StackLabel+"="+s.cfg.Stack)
	}
	res, err := s.api.ServiceList(ctx, client.ServiceListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	out := make([]deploy.Target, 0, len(res.Items))
	for _, svc := range res.Items {
		if svc.Spec.TaskTemplate.ContainerSpec == nil {
			continue // plugin services have no image to follow
		}
		out = append(out, s.probeNetwork(ctx, withPolicies(target(svc, s.cfg.Label, s.cfg.Authority), svc.Spec.Labels, s.cfg.Policy)))
	}
	return out, nil
}

func target(svc swarm.Service, label string, a Authority) deploy.Target {
	t := deploy.Target{
		ID:          svc.ID,
		Name:        svc.Spec.Name,
		Stack:       svc.Spec.Labels[StackLabel],
		Image:       svc.Spec.TaskTemplate.ContainerSpec.Image,
		Healthcheck: hasHealthcheck(svc.Spec.TaskTemplate.ContainerSpec),
	}
	t.Hooks, t.HooksErr = hooks(svc.Spec.Labels, label, t.Stack, t.Image, a)
	t = withCanary(withVerification(t, svc.Spec), svc.Spec)
	if uc := svc.Spec.UpdateConfig; uc != nil {
		t.StartFirst = uc.Order == swarm.UpdateOrderStartFirst
		t.RollbackOnFailure = uc.FailureAction == swarm.UpdateFailureActionRollback
	}
	return t
}

func hasHealthcheck(c *swarm.ContainerSpec) bool {
	h := c.Healthcheck
	return h != nil && len(h.Test) > 0 && h.Test[0] != "NONE"
}

// Update writes the pinned image into the service spec, re-reading the spec
// and trying again when Swarm answers "update out of sequence" (a 500, not
// a conflict), which happens whenever the version moved, a rollout included.
//
// A spec left in a canary's form (canary.go: a canary whose run ended
// with neither its promotion nor its revert) gets the service's own update
// settings back: else every later update would stop after its first tasks.
func (s *Swarm) Update(ctx context.Context, t deploy.Target, image string, creds deploy.Credentials) error {
	return s.write(ctx, t, image, creds, func(spec *swarm.ServiceSpec) error {
		uncanary(spec, s.log())
		return nil
	})
}

// write is Update's spec write with edit's changes besides the image.
func (s *Swarm) write(ctx context.Context, t deploy.Target, image string, creds deploy.Credentials, edit func(*swarm.ServiceSpec) error) error {
	auth, err := encodeAuth(creds)
	if err != nil {
		return err
	}
	err = s.retry(ctx, t.ID, func(svc swarm.Service) error {
		spec := svc.Spec
		if spec.TaskTemplate.ContainerSpec == nil {
			return fmt.Errorf("service %s has no container spec", t.Name)
		}
		if err := edit(&spec); err != nil { // it sees the image as read
			return err
		}
		spec.TaskTemplate.ContainerSpec.Image = image
		// Sent every time, like --with-registry-auth: without it Swarm keeps
		// the auth stored at creation, which may be stale or absent, and
		// workers fail with "No such image".
		_, err := s.api.ServiceUpdate(ctx, svc.ID, client.ServiceUpdateOptions{
			Version:             svc.Version,
			Spec:                spec,
			EncodedRegistryAuth: auth,
		})
		return err
	})
	if err == nil {
		s.sentAuth(ctx, t.ID, image, creds)
	}
	return err
}

// Rollback asks Swarm to put the previous spec back.
func (s *Swarm) Rollback(ctx context.Context, serviceID string) error {
	return s.retry(ctx, serviceID, func(svc swarm.Service) error {
		_, err := s.api.ServiceUpdate(ctx, svc.ID, client.ServiceUpdateOptions{
			Version:  svc.Version,
			Spec:     svc.Spec,
			Rollback: "previous",
		})
		return err
	})
}

// retry inspects the service and runs write with what it read, again while
// Swarm says the version moved.
func (s *Swarm) retry(ctx context.Context, serviceID string, write func(swarm.Service) error) error {
	var err error
	for attempt := 0; attempt < s.cfg.Retries; attempt++ {
		res, ierr := s.api.ServiceInspect(ctx, serviceID, client.ServiceInspectOptions{})
		if ierr != nil {
			return fmt.Errorf("inspect service %s: %w", serviceID, unavailable(notFound(ierr)))
		}
		err = write(res.Service)
		if err == nil || !isOutOfSequence(err) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 100 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("update service %s: %w", serviceID, unavailable(err))
	}
	return nil
}

// Rollout reads the service and its tasks: two calls per look.
func (s *Swarm) Rollout(ctx context.Context, serviceID string) (deploy.Rollout, error) {
	// The list endpoint, unlike inspect, carries ServiceStatus (desired task
	// count) on API 1.41.
	res, err := s.api.ServiceList(ctx, client.ServiceListOptions{
		Filters: make(client.Filters).Add("id", serviceID),
		Status:  true,
	})
	if err != nil {
		return deploy.Rollout{}, fmt.Errorf("inspect service %s: %w", serviceID, err)
	}
	var svc *swarm.Service
	for i := range res.Items {
		if res.Items[i].ID == serviceID { // the id filter matches prefixes
			svc = &res.Items[i]
		}
	}
	if svc == nil || svc.Spec.TaskTemplate.ContainerSpec == nil {
		return deploy.Rollout{}, fmt.Errorf("service %s: %w", serviceID, deploy.ErrNotFound)
	}
	r := deploy.Rollout{Image: svc.Spec.TaskTemplate.ContainerSpec.Image, Canary: canaryForm(svc.Spec)}
	if svc.UpdateStatus != nil {
		r.UpdateState, r.UpdateMessage = string(svc.UpdateStatus.State), svc.UpdateStatus.Message
		if svc.UpdateStatus.StartedAt != nil {
			r.UpdateStarted = *svc.UpdateStatus.StartedAt
		}
	}
	if svc.ServiceStatus != nil {
		r.Desired = int(svc.ServiceStatus.DesiredTasks)
	}
	tasks, err := s.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", serviceID)})
	if err != nil {
		return deploy.Rollout{}, fmt.Errorf("list tasks of %s: %w", serviceID, err)
	}
	for _, t := range tasks.Items {
		dt := deploy.Task{ID: t.ID, Node: s.nodeName(ctx, t.NodeID), State: string(t.Status.State), Desired: string(t.DesiredState),
			Err: t.Status.Err, Since: t.Status.Timestamp}
		if t.Spec.ContainerSpec != nil {
			dt.Image = t.Spec.ContainerSpec.Image
		}
		r.Tasks = append(r.Tasks, dt)
	}
	return r, nil
}

// isOutOfSequence is Swarm refusing a write based on a stale read; it
// comes as a 500 with this text, not as a conflict code.
func isOutOfSequence(err error) bool {
	return err != nil && strings.Contains(err.Error(), "update out of sequence")
}

// unavailable marks err with deploy.ErrUnavailable when Docker could not
// be reached or did not answer (dockerd restarting, its socket gone, the
// connection cut mid-request): unlike an answer, it says nothing about
// whether a write happened, so the caller must look again later.
func unavailable(err error) error {
	if err == nil {
		return nil
	}
	var netErr net.Error
	// A 503 is dockerd on its way down or up ("This node is not a swarm
	// manager" for a second or two): no answer about the write either.
	if client.IsErrConnectionFailed(err) || errdefs.IsUnavailable(err) || errors.As(err, &netErr) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("%w: %w", deploy.ErrUnavailable, err)
	}
	return err
}

func notFound(err error) error {
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("%w: %w", deploy.ErrNotFound, err)
	}
	return err
}

// encodeAuth builds the X-Registry-Auth header value Docker expects.
func encodeAuth(c deploy.Credentials) (string, error) {
	if c == (deploy.Credentials{}) {
		return "", nil
	}
	b, err := json.Marshal(registry.AuthConfig{
		Username: c.Username, Password: c.Password, ServerAddress: c.ServerAddress,
		IdentityToken: c.IdentityToken, RegistryToken: c.RegistryToken,
	})
	if err != nil {
		return "", fmt.Errorf("encode registry auth: %w", err)
	}
	return base64.URLEncoding.EncodeToString(b), nil
}
