package swarm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
)

const (
	appRepo = "127.0.0.1:5000/app"
	digest1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	digest2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

func appSpec(name, image string) swarm.ServiceSpec {
	return swarm.ServiceSpec{
		Annotations:  swarm.Annotations{Name: name, Labels: map[string]string{"updater.enable": "true", StackLabel: "shop"}},
		TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: image}},
	}
}

// unavailable decides whether an error means "Docker gave no answer" (the
// deploy must look again later: the write may or may not have happened)
// or is an answer, which may blame the digest.
func TestUnavailable(t *testing.T) {
	refused := connectionRefused(t)
	for name, tt := range map[string]struct {
		err  error
		want bool
	}{
		"the client could not connect":  {refused, true},
		"503 from a restarting dockerd": {errdefs.ErrUnavailable.WithMessage("This node is not a swarm manager"), true},
		"a network error":               {&net.OpError{Op: "read", Net: "tcp", Err: errors.New("i/o timeout")}, true},
		"connection cut before answer":  {fmt.Errorf("post: %w", io.EOF), true},
		"connection cut mid-answer":     {fmt.Errorf("read body: %w", io.ErrUnexpectedEOF), true},
		"connection reset":              {&os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}, true},
		"connection refused":            {fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true},
		"socket gone":                   {fmt.Errorf("dial unix /var/run/docker.sock: %w", syscall.ENOENT), true},
		"broken pipe":                   {fmt.Errorf("write: %w", syscall.EPIPE), true},
		// No answer in time says nothing about the write either.
		"deadline passed": {context.DeadlineExceeded, true},

		"a 500 answer":            {errdefs.ErrUnknown.WithMessage("invalid mount config"), false},
		"out of sequence":         {errdefs.ErrUnknown.WithMessage("rpc error: code = Unknown desc = update out of sequence"), false},
		"not found":               {errdefs.ErrNotFound.WithMessage("service x not found"), false},
		"conflict":                {errdefs.ErrConflict.WithMessage("already exists"), false},
		"invalid argument":        {errdefs.ErrInvalidArgument.WithMessage("bad spec"), false},
		"cancelled by the caller": {context.Canceled, false},
		"a plain error":           {errors.New("no such image"), false},
	} {
		got := unavailable(tt.err)
		if is := errors.Is(got, deploy.ErrUnavailable); is != tt.want {
			t.Errorf("%s: unavailable(%v) is ErrUnavailable: %v, want %v", name, tt.err, is, tt.want)
		}
		if !errors.Is(got, tt.err) {
			t.Errorf("%s: unavailable(%v) = %v, lost the original error", name, tt.err, got)
		}
	}
	if unavailable(nil) != nil {
		t.Error("unavailable(nil) is not nil")
	}
}

// connectionRefused is what the client returns for a port nobody listens on.
func connectionRefused(t *testing.T) error {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	s := adapterAt(t, "tcp://"+addr, Config{})
	_, err = s.api.ServiceInspect(context.Background(), "x", client.ServiceInspectOptions{})
	if err == nil {
		t.Fatal("a closed port answered")
	}
	return err
}

func TestPing(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("ping a manager: %v", err)
	}
	e.with(func() { e.info.Swarm.ControlAvailable = false })
	if err := s.Ping(context.Background()); err == nil || !strings.Contains(err.Error(), "worker") {
		t.Errorf("ping a worker: %v, want an error saying it is a worker", err)
	}
	e.with(func() { e.info.Swarm.LocalNodeState = swarm.LocalNodeStateInactive })
	if err := s.Ping(context.Background()); err == nil || !strings.Contains(err.Error(), "not in swarm mode") {
		t.Errorf("ping outside swarm mode: %v", err)
	}
}

func TestList(t *testing.T) {
	e := newEngine(t)
	web := appSpec("shop_web", appRepo+":v1@"+digest1)
	web.Labels["updater.migrate.command"] = "migrate up"
	web.UpdateConfig = &swarm.UpdateConfig{Order: swarm.UpdateOrderStartFirst, FailureAction: swarm.UpdateFailureActionRollback}
	web.TaskTemplate.ContainerSpec.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "true"}}
	e.addService("s1", web)
	other := appSpec("blog_web", appRepo+":v1")
	other.Labels[StackLabel] = "blog"
	e.addService("s2", other)
	off := appSpec("shop_db", "postgres:15")
	off.Labels["updater.enable"] = "false"
	e.addService("s3", off)
	plugin := appSpec("shop_plugin", "")
	plugin.TaskTemplate.ContainerSpec = nil
	e.addService("s4", plugin)

	got, err := e.client(t, Config{Stack: "shop"}).List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("listed %+v, want only shop_web (watched, in stack shop, with a container)", got)
	}
	w := got[0]
	if w.ID != "s1" || w.Name != "shop_web" || w.Stack != "shop" || w.Image != appRepo+":v1@"+digest1 ||
		!w.StartFirst || !w.RollbackOnFailure || !w.Healthcheck || w.Hooks.Migrate == nil || w.HooksErr != nil {
		t.Errorf("target %+v", w)
	}
	all, err := e.client(t, Config{}).List(context.Background())
	if err != nil || len(all) != 2 {
		t.Errorf("without a stack: %d targets (%v), want shop_web and blog_web", len(all), err)
	}
}

func TestUpdateWritesImageAndAuth(t *testing.T) {
	e := newEngine(t)
	e.addService("s1", appSpec("shop_web", appRepo+":v1@"+digest1))
	s := e.client(t, Config{})
	creds := deploy.Credentials{ServerAddress: "127.0.0.1:5000", Username: "ci", Password: "hunter2"}
	img := appRepo + ":v1@" + digest2
	if err := s.Update(context.Background(), deploy.Target{ID: "s1", Name: "shop_web"}, img, creds); err != nil {
		t.Fatal(err)
	}
	svc, _ := e.service("s1")
	if got := svc.Spec.TaskTemplate.ContainerSpec.Image; got != img {
		t.Errorf("image in the spec: %s, want %s", got, img)
	}
	if svc.PreviousSpec == nil || svc.PreviousSpec.TaskTemplate.ContainerSpec.Image != appRepo+":v1@"+digest1 {
		t.Error("the previous spec is not the one before the update")
	}
	if svc.Spec.Labels[StackLabel] != "shop" {
		t.Error("the update lost the service's labels")
	}
	var auth registry.AuthConfig
	var raw string
	e.with(func() { raw = e.auth["s1"] })
	b, err := base64.URLEncoding.DecodeString(raw)
	if err != nil || json.Unmarshal(b, &auth) != nil {
		t.Fatalf("X-Registry-Auth %q does not decode: %v", raw, err)
	}
	if auth.Username != "ci" || auth.Password != "hunter2" || auth.ServerAddress != "127.0.0.1:5000" {
		t.Errorf("registry auth sent: %+v", auth)
	}

	// No credentials: no header, so Swarm keeps what it has.
	if err := s.Update(context.Background(), deploy.Target{ID: "s1"}, img, deploy.Credentials{}); err != nil {
		t.Fatal(err)
	}
	e.with(func() { raw = e.auth["s1"] })
	if raw != "" {
		t.Errorf("auth header without credentials: %q", raw)
	}
}

// Swarm refuses a write based on a stale read with a 500 "update out of
// sequence": the adapter reads again and retries, a bounded number of times.
func TestUpdateRetriesOutOfSequence(t *testing.T) {
	e := newEngine(t)
	e.addService("s1", appSpec("shop_web", appRepo+":v1@"+digest1))
	s := e.client(t, Config{Retries: 3})
	// A rollout step moves the version between every read and write, twice.
	e.before("POST /services/s1/update", 2, func() { e.services["s1"].Version.Index++ })
	img := appRepo + ":v1@" + digest2
	if err := s.Update(context.Background(), deploy.Target{ID: "s1"}, img, deploy.Credentials{}); err != nil {
		t.Fatalf("update after two stale reads: %v", err)
	}
	if n := e.count("POST /services/s1/update"); n != 3 {
		t.Errorf("%d writes, want 3 (two refused, one taken)", n)
	}
	if n := e.count("GET /services/s1"); n != 3 {
		t.Errorf("%d reads, want 3: every retry must read the new version", n)
	}
	if svc, _ := e.service("s1"); svc.Spec.TaskTemplate.ContainerSpec.Image != img {
		t.Errorf("image %s after the retries", svc.Spec.TaskTemplate.ContainerSpec.Image)
	}
}

func TestUpdateOutOfSequenceIsBounded(t *testing.T) {
	e := newEngine(t)
	e.addService("s1", appSpec("shop_web", appRepo+":v1@"+digest1))
	s := e.client(t, Config{Retries: 2})
	e.before("POST /services/s1/update", 0, func() { e.services["s1"].Version.Index++ })
	err := s.Update(context.Background(), deploy.Target{ID: "s1"}, appRepo+":v1@"+digest2, deploy.Credentials{})
	if err == nil || !strings.Contains(err.Error(), "update out of sequence") {
		t.Fatalf("update against a version that always moves: %v, want out of sequence", err)
	}
	if errors.Is(err, deploy.ErrUnavailable) {
		t.Error("out of sequence is an answer, not Docker being unavailable")
	}
	if n := e.count("POST /services/s1/update"); n != 2 {
		t.Errorf("%d writes, want Retries=2", n)
	}
}

// What the deploy learns from a failed write: gone, no answer, or refused.
func TestUpdateErrors(t *testing.T) {
	img := appRepo + ":v1@" + digest2
	for name, tt := range map[string]struct {
		inject          func(e *engine)
		unavail, absent bool
	}{
		"503 on the write":        {inject: func(e *engine) { e.fail("POST /services/s1/update", 503, "This node is not a swarm manager", 0) }, unavail: true},
		"503 on the read":         {inject: func(e *engine) { e.fail("GET /services/s1", 503, "This node is not a swarm manager", 0) }, unavail: true},
		"connection cut on write": {inject: func(e *engine) { e.cut("POST /services/s1/update", 0) }, unavail: true},
		"service gone":            {inject: func(e *engine) { e.with(func() { delete(e.services, "s1") }) }, absent: true},
		"write refused":           {inject: func(e *engine) { e.fail("POST /services/s1/update", 400, "invalid mount target", 0) }},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEngine(t)
			e.addService("s1", appSpec("shop_web", appRepo+":v1@"+digest1))
			tt.inject(e)
			err := e.client(t, Config{}).Update(context.Background(), deploy.Target{ID: "s1"}, img, deploy.Credentials{})
			if err == nil {
				t.Fatal("no error")
			}
			if got := errors.Is(err, deploy.ErrUnavailable); got != tt.unavail {
				t.Errorf("%v: unavailable %v, want %v", err, got, tt.unavail)
			}
			if got := errors.Is(err, deploy.ErrNotFound); got != tt.absent {
				t.Errorf("%v: not found %v, want %v", err, got, tt.absent)
			}
		})
	}

	t.Run("docker down", func(t *testing.T) {
		e := newEngine(t)
		s := e.client(t, Config{})
		e.srv.Close()
		err := s.Update(context.Background(), deploy.Target{ID: "s1"}, img, deploy.Credentials{})
		if !errors.Is(err, deploy.ErrUnavailable) {
			t.Errorf("update with dockerd gone: %v, want ErrUnavailable", err)
		}
	})
}

func TestRollback(t *testing.T) {
	e := newEngine(t)
	e.addService("s1", appSpec("shop_web", appRepo+":v1@"+digest1))
	s := e.client(t, Config{})
	if err := s.Update(context.Background(), deploy.Target{ID: "s1"}, appRepo+":v1@"+digest2, deploy.Credentials{}); err != nil {
		t.Fatal(err)
	}
	e.before("POST /services/s1/update", 1, func() { e.services["s1"].Version.Index++ })
	if err := s.Rollback(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	if n := e.count("POST /services/s1/update?rollback=previous"); n != 2 {
		t.Errorf("%d rollback writes, want 2 (one out of sequence, retried)", n)
	}
	if svc, _ := e.service("s1"); svc.Spec.TaskTemplate.ContainerSpec.Image != appRepo+":v1@"+digest1 {
		t.Errorf("after the rollback the service runs %s", svc.Spec.TaskTemplate.ContainerSpec.Image)
	}
}

// Rollout is what the deploy's follow loop reads every second: the update
// status of the service and its tasks, with node names.
func TestRollout(t *testing.T) {
	e := newEngine(t)
	started := time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
	svc := e.addService("s1", appSpec("shop_web", appRepo+":v1@"+digest2))
	e.addService("s1-and-more", appSpec("shop_web2", appRepo+":v1@"+digest1)) // matched by the id filter's prefix
	e.with(func() {
		svc.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateUpdating, Message: "update in progress", StartedAt: &started}
		svc.ServiceStatus = &swarm.ServiceStatus{DesiredTasks: 2, RunningTasks: 1}
		e.nodes = []swarm.Node{{ID: "n1", Description: swarm.NodeDescription{Hostname: "alpha"}}}
		e.tasks = []swarm.Task{
			{ID: "t-new", ServiceID: "s1", NodeID: "n1", DesiredState: swarm.TaskStateRunning,
				Spec:   swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: appRepo + ":v1@" + digest2}},
				Status: swarm.TaskStatus{State: swarm.TaskStateStarting, Timestamp: started.Add(time.Second)}},
			{ID: "t-old", ServiceID: "s1", NodeID: "n-gone", DesiredState: swarm.TaskStateShutdown,
				Spec:   swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: appRepo + ":v1@" + digest1}},
				Status: swarm.TaskStatus{State: swarm.TaskStateFailed, Err: "task: non-zero exit (1)"}},
			{ID: "t-pending", ServiceID: "s1", DesiredState: swarm.TaskStateRunning, Status: swarm.TaskStatus{State: swarm.TaskStatePending}},
			{ID: "t-other", ServiceID: "s1-and-more", NodeID: "n1", Status: swarm.TaskStatus{State: swarm.TaskStateRunning}},
		}
	})
	s := e.client(t, Config{})
	r, err := s.Rollout(context.Background(), "s1")
	if err != nil {
		t.Fatal(err)
	}
	if r.Image != appRepo+":v1@"+digest2 || r.UpdateState != "updating" || r.UpdateMessage != "update in progress" ||
		!r.UpdateStarted.Equal(started) || r.Desired != 2 {
		t.Errorf("rollout %+v", r)
	}
	want := map[string]deploy.Task{
		"t-new":     {ID: "t-new", Node: "alpha", Image: appRepo + ":v1@" + digest2, State: "starting", Desired: "running", Since: started.Add(time.Second)},
		"t-old":     {ID: "t-old", Node: "n-gone", Image: appRepo + ":v1@" + digest1, State: "failed", Desired: "shutdown", Err: "task: non-zero exit (1)"},
		"t-pending": {ID: "t-pending", State: "pending", Desired: "running"},
	}
	if len(r.Tasks) != len(want) {
		t.Errorf("tasks %+v, want the 3 of s1", r.Tasks)
	}
	for _, got := range r.Tasks {
		w := want[got.ID]
		if got.ID != w.ID || got.Node != w.Node || got.Image != w.Image || got.State != w.State || got.Desired != w.Desired ||
			got.Err != w.Err || !got.Since.Equal(w.Since) {
			t.Errorf("task %+v, want %+v", got, w)
		}
	}

	// The update ends; the next look sees it.
	e.with(func() {
		svc.UpdateStatus.State, svc.UpdateStatus.Message = swarm.UpdateStateCompleted, "update completed"
	})
	if r, err = s.Rollout(context.Background(), "s1"); err != nil || r.UpdateState != "completed" {
		t.Errorf("after the update: %q, %v", r.UpdateState, err)
	}
	// The node list is asked once, not once per look.
	if n := e.count("GET /nodes"); n != 1 {
		t.Errorf("%d node lists for two looks, want 1", n)
	}

	if _, err := s.Rollout(context.Background(), "s-none"); !errors.Is(err, deploy.ErrNotFound) {
		t.Errorf("rollout of a missing service: %v, want ErrNotFound", err)
	}
	e.fail("GET /tasks", http.StatusInternalServerError, "boom", 1)
	if _, err := s.Rollout(context.Background(), "s1"); err == nil {
		t.Error("a failed task list gave no error")
	}
}

// New takes Docker's own environment and negotiates the API version down
// to what the engine speaks (the fake fails any call not made with 1.41).
func TestNewFromEnvironment(t *testing.T) {
	e := newEngine(t)
	t.Setenv("DOCKER_HOST", "tcp://"+e.srv.Listener.Addr().String())
	t.Setenv("DOCKER_API_VERSION", "")
	t.Setenv("DOCKER_TLS_VERIFY", "")
	t.Setenv("DOCKER_CERT_PATH", "")
	s, err := New(Config{Label: "updater.enable"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.cfg.Retries != 5 {
		t.Errorf("default retries %d, want 5", s.cfg.Retries)
	}
	if err := s.Ping(context.Background()); err != nil {
		t.Errorf("ping through DOCKER_HOST: %v", err)
	}
}
