package swarm

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
)

// dbSpec is a service a hook serves: its job must reach what it reaches.
func dbSpec() swarm.ServiceSpec {
	spec := appSpec("shop_web", appRepo+":v1@"+digest1)
	c := spec.TaskTemplate.ContainerSpec
	c.Env = []string{"DATABASE_URL=postgres://db/shop"}
	c.Secrets = []*swarm.SecretReference{{SecretName: "db_password", SecretID: "sec1"}}
	c.Configs = []*swarm.ConfigReference{{ConfigName: "app_conf", ConfigID: "conf1"}}
	spec.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: "shop_backend"}}
	spec.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{"node.labels.db == true"}}
	return spec
}

// jobEnds makes every job the engine creates end with one task in state,
// its container on node, and print logs.
func jobEnds(e *engine, state swarm.TaskState, exit int, taskErr, node, logs string) {
	e.with(func() {
		e.onCreate = func(id string, _ swarm.ServiceSpec) {
			cid := "c-" + id
			e.tasks = append(e.tasks, swarm.Task{ID: "t-" + id, ServiceID: id, NodeID: node, DesiredState: swarm.TaskStateComplete,
				Status: swarm.TaskStatus{State: state, Err: taskErr,
					ContainerStatus: &swarm.ContainerStatus{ContainerID: cid, ExitCode: exit}}})
			st := container.StateExited
			if state == swarm.TaskStateRunning {
				st = container.StateRunning
			}
			e.containers = append(e.containers, container.Summary{ID: cid, State: st, Labels: map[string]string{taskServiceLabel: id}})
			e.logs[id] = logs
		}
	})
}

func migrateJob() deploy.Job {
	return deploy.Job{Name: "shop_web-migrate-1", Phase: deploy.PhaseMigrate, Service: "s1", InheritEnv: true,
		Image: appRepo + ":v1@" + digest2, Command: []string{"migrate", "up"}, Env: []string{"MODE=strict"},
		Mounts:  []deploy.Mount{{Source: "shop_data", Target: "/data"}, {Source: "/srv/backups", Target: "/backup", ReadOnly: true}},
		Timeout: 10 * time.Second}
}

func TestRunJobSpec(t *testing.T) {
	e := newEngine(t)
	e.addService("s1", dbSpec())
	jobEnds(e, swarm.TaskStateComplete, 0, "", selfNode, "applying 0002_users\ndone\n")
	s := e.client(t, Config{})
	res, err := s.Run(context.Background(), migrateJob(), deploy.Credentials{Username: "ci", Password: "hunter2"})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %+v, %v", res, err)
	}
	if !slices.Equal(res.LogTail, []string{"applying 0002_users", "done"}) {
		t.Errorf("log tail %q", res.LogTail)
	}
	var spec swarm.ServiceSpec
	var auth string
	e.with(func() {
		spec = e.created[0]
		for _, a := range e.auth {
			auth = a
		}
	})
	c := spec.TaskTemplate.ContainerSpec
	one := uint64(1)
	if m := spec.Mode.ReplicatedJob; m == nil || !reflect.DeepEqual(m.MaxConcurrent, &one) || !reflect.DeepEqual(m.TotalCompletions, &one) {
		t.Errorf("mode %+v, want a replicated job run once", spec.Mode)
	}
	if rp := spec.TaskTemplate.RestartPolicy; rp == nil || rp.Condition != swarm.RestartPolicyConditionNone {
		t.Errorf("restart policy %+v: a failing migration must not be retried", rp)
	}
	if spec.Name != "shop_web-migrate-1" || c.Image != appRepo+":v1@"+digest2 || !slices.Equal(c.Command, []string{"migrate", "up"}) {
		t.Errorf("job %s runs %s %q", spec.Name, c.Image, c.Command)
	}
	if !slices.Equal(c.Env, []string{"DATABASE_URL=postgres://db/shop", "MODE=strict"}) {
		t.Errorf("env %q, want the service's then the hook's", c.Env)
	}
	wantMounts := []mount.Mount{{Type: mount.TypeVolume, Source: "shop_data", Target: "/data"},
		{Type: mount.TypeBind, Source: "/srv/backups", Target: "/backup", ReadOnly: true}}
	if !reflect.DeepEqual(c.Mounts, wantMounts) {
		t.Errorf("mounts %+v, want %+v", c.Mounts, wantMounts)
	}
	if len(c.Secrets) != 1 || c.Secrets[0].SecretName != "db_password" || len(c.Configs) != 1 || c.Configs[0].ConfigName != "app_conf" {
		t.Errorf("secrets %+v, configs %+v: want the service's", c.Secrets, c.Configs)
	}
	if !reflect.DeepEqual(spec.TaskTemplate.Networks, dbSpec().TaskTemplate.Networks) ||
		!reflect.DeepEqual(spec.TaskTemplate.Placement, dbSpec().TaskTemplate.Placement) {
		t.Errorf("networks %+v, placement %+v: want the service's", spec.TaskTemplate.Networks, spec.TaskTemplate.Placement)
	}
	for k, v := range map[string]string{jobLabel: "s1", jobStepLabel: "migrate", scopeLabel: s.scope(), StackLabel: "shop"} {
		if spec.Labels[k] != v {
			t.Errorf("job label %s=%q, want %q", k, spec.Labels[k], v)
		}
	}
	if c.Labels[jobLabel] != "s1" || c.Labels[scopeLabel] != s.scope() {
		t.Errorf("container labels %v: a job's leftovers must be findable", c.Labels)
	}
	if auth == "" {
		t.Error("the job was created without the registry credentials")
	}

	// Without InheritEnv, the job gets the hook's env only.
	j := migrateJob()
	j.InheritEnv = false
	if _, err := s.Run(context.Background(), j, deploy.Credentials{}); err != nil {
		t.Fatal(err)
	}
	e.with(func() { spec = e.created[1] })
	if env := spec.TaskTemplate.ContainerSpec.Env; !slices.Equal(env, []string{"MODE=strict"}) {
		t.Errorf("env without inheriting %q", env)
	}
}

func TestRunJobOutcome(t *testing.T) {
	for name, tt := range map[string]struct {
		state   swarm.TaskState
		exit    int
		taskErr string
		wantErr string // "" for none
	}{
		"completed":                {state: swarm.TaskStateComplete},
		"failed with an exit code": {state: swarm.TaskStateFailed, exit: 3},
		"rejected":                 {state: swarm.TaskStateRejected, taskErr: "No such image: app:v9", wantErr: "rejected: No such image"},
		"failed before it ran":     {state: swarm.TaskStateFailed, taskErr: "starting container failed: invalid mount", wantErr: "failed: starting container failed"},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEngine(t)
			e.addService("s1", dbSpec())
			jobEnds(e, tt.state, tt.exit, tt.taskErr, selfNode, "last words\n")
			res, err := e.client(t, Config{}).Run(context.Background(), migrateJob(), deploy.Credentials{})
			switch {
			case tt.wantErr == "" && err != nil, tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want %q", err, tt.wantErr)
			}
			if res.ExitCode != tt.exit {
				t.Errorf("exit code %d, want %d", res.ExitCode, tt.exit)
			}
			if !slices.Equal(res.LogTail, []string{"last words"}) {
				t.Errorf("log tail %q", res.LogTail)
			}
			// The job and its container are gone, whatever the outcome.
			e.with(func() {
				for id, svc := range e.services {
					if id != "s1" {
						t.Errorf("job service %s left behind", svc.Spec.Name)
					}
				}
				if len(e.containers) != 0 {
					t.Errorf("job containers left behind: %+v", e.containers)
				}
			})
		})
	}
}

func TestRunJobTimeout(t *testing.T) {
	e := newEngine(t)
	e.addService("s1", dbSpec())
	jobEnds(e, swarm.TaskStateRunning, 0, "", selfNode, "still migrating\n")
	j := migrateJob()
	j.Timeout = 300 * time.Millisecond
	_, err := e.client(t, Config{}).Run(context.Background(), j, deploy.Credentials{})
	if !errors.Is(err, ErrJobTimeout) {
		t.Fatalf("a job that never ends: %v, want ErrJobTimeout", err)
	}
	e.with(func() {
		if len(e.services) != 1 || len(e.containers) != 0 {
			t.Errorf("a timed-out job stays: %d services, containers %+v", len(e.services), e.containers)
		}
	})
	if n := e.count("DELETE /containers/c-svc"); n != 1 {
		t.Errorf("%d forced removals of the running job container, want 1", n)
	}
}

// Docker not answering while a job runs, until the job's time runs out,
// is Docker's absence (ErrUnavailable), not the job's timeout: the deploy
// waits rather than blame the image. So is Docker gone as the job starts.
func TestRunJobDockerGone(t *testing.T) {
	e := newEngine(t)
	e.addService("s1", dbSpec())
	jobEnds(e, swarm.TaskStateRunning, 0, "", selfNode, "still migrating\n")
	e.cut("GET /tasks", 1000)
	j := migrateJob()
	j.Timeout = 300 * time.Millisecond
	_, err := e.client(t, Config{}).Run(context.Background(), j, deploy.Credentials{})
	if !errors.Is(err, deploy.ErrUnavailable) || errors.Is(err, ErrJobTimeout) {
		t.Fatalf("a job Docker never answered about: %v, want ErrUnavailable, not ErrJobTimeout", err)
	}
	e.cut("POST /services/create", 1)
	if _, err := e.client(t, Config{}).Run(context.Background(), j, deploy.Credentials{}); !errors.Is(err, deploy.ErrUnavailable) {
		t.Errorf("a job whose creation got no answer: %v, want ErrUnavailable", err)
	}
}

// A job container on another node can't be removed from here, and the
// service for a missing one is an error.
func TestRunJobOtherNodeAndMissingService(t *testing.T) {
	e := newEngine(t)
	e.addService("s1", dbSpec())
	jobEnds(e, swarm.TaskStateComplete, 0, "", "node-2", "")
	s := e.client(t, Config{})
	if _, err := s.Run(context.Background(), migrateJob(), deploy.Credentials{}); err != nil {
		t.Fatal(err)
	}
	if n := e.count("DELETE /containers/"); n != 0 {
		t.Errorf("%d container removals for a job that ran on another node", n)
	}
	if n := e.count("DELETE /services/"); n != 1 {
		t.Errorf("%d job service removals, want 1", n)
	}
	j := migrateJob()
	j.Service = "s-gone"
	if _, err := s.Run(context.Background(), j, deploy.Credentials{}); !errors.Is(err, deploy.ErrNotFound) {
		t.Errorf("job for a missing service: %v, want ErrNotFound", err)
	}
}

// A task still being prepared has no container yet; removing its job then
// would leave the container running with no service, so removal waits.
func TestRemoveJobWaitsForPreparingTask(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	e.addService("job1", swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "job1"}})
	e.with(func() {
		e.tasks = []swarm.Task{{ID: "t1", ServiceID: "job1", NodeID: selfNode, DesiredState: swarm.TaskStateComplete,
			Status: swarm.TaskStatus{State: swarm.TaskStatePreparing}}}
	})
	lists := 0
	e.before("GET /tasks", 0, func() {
		if lists++; lists == 3 { // the container starts
			e.tasks[0].Status = swarm.TaskStatus{State: swarm.TaskStateRunning, ContainerStatus: &swarm.ContainerStatus{ContainerID: "c1"}}
			e.containers = append(e.containers, container.Summary{ID: "c1", State: container.StateRunning})
		}
	})
	s.removeJob(context.Background(), "job1", "job1")
	if n := e.count("DELETE /containers/c1"); n != 1 {
		t.Errorf("%d removals of the container the task started while the job was being removed, want 1", n)
	}
	e.with(func() {
		if len(e.containers) != 0 || len(e.services) != 0 {
			t.Errorf("after removal: containers %+v, services %d", e.containers, len(e.services))
		}
	})
}

func TestClean(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{Stack: "shop"})
	ctx := context.Background()
	jobLabels := func(scope string) map[string]string {
		return map[string]string{jobLabel: "s1", jobStepLabel: "backup", scopeLabel: scope}
	}
	e.addService("web", appSpec("shop_web", appRepo+":v1"))
	e.addService("job-stale", swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "stale", Labels: jobLabels(s.scope())}})
	e.addService("job-theirs", swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "theirs", Labels: jobLabels("another-scope")}})
	mine, err := s.startJob(ctx, swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "scheduled-backup", Labels: jobLabels(s.scope())}}, "")
	if err != nil {
		t.Fatal(err)
	}
	e.with(func() {
		e.tasks = []swarm.Task{
			{ID: "t1", ServiceID: "job-stale", NodeID: selfNode, Status: swarm.TaskStatus{State: swarm.TaskStateRunning,
				ContainerStatus: &swarm.ContainerStatus{ContainerID: "c-stale-here"}}},
			{ID: "t2", ServiceID: "job-stale", NodeID: "node-2", Status: swarm.TaskStatus{State: swarm.TaskStateRunning,
				ContainerStatus: &swarm.ContainerStatus{ContainerID: "c-stale-there"}}},
		}
		leftover := func(id, service, scope string) container.Summary {
			l := jobLabels(scope)
			l[taskServiceLabel] = service
			return container.Summary{ID: id, State: container.StateExited, Labels: l}
		}
		e.containers = []container.Summary{
			{ID: "c-stale-here", State: container.StateRunning, Labels: map[string]string{taskServiceLabel: "job-stale"}},
			leftover("c-orphan", "job-long-gone", s.scope()),
			leftover("c-mine", mine, s.scope()),
			leftover("c-theirs", "job-theirs", "another-scope"),
			{ID: "c-web", State: container.StateRunning, Labels: map[string]string{taskServiceLabel: "web"}},
		}
	})
	if err := s.Clean(ctx); err != nil {
		t.Fatal(err)
	}
	var services, containers []string
	e.with(func() {
		for id := range e.services {
			services = append(services, id)
		}
		for _, c := range e.containers {
			containers = append(containers, c.ID)
		}
	})
	slices.Sort(services)
	if want := []string{"job-theirs", mine, "web"}; !slices.Equal(services, want) {
		t.Errorf("services after Clean %v, want %v (the stale job of this scope goes)", services, want)
	}
	if want := []string{"c-mine", "c-theirs", "c-web"}; !slices.Equal(containers, want) {
		t.Errorf("containers after Clean %v, want %v", containers, want)
	}
	if n := e.count("DELETE /containers/c-stale-there"); n != 0 {
		t.Error("Clean tried to remove a container on another node")
	}
}

// A job runs as hardened as the service it serves: its user, read-only
// root, dropped capabilities and resource limits, never its reservations
// or added capabilities.
func TestRunJobInheritsHardening(t *testing.T) {
	e := newEngine(t)
	spec := dbSpec()
	c := spec.TaskTemplate.ContainerSpec
	c.User, c.ReadOnly, c.CapabilityDrop, c.CapabilityAdd = "1000:1000", true, []string{"ALL"}, []string{"NET_ADMIN"}
	spec.TaskTemplate.Resources = &swarm.ResourceRequirements{
		Limits:       &swarm.Limit{MemoryBytes: 64 << 20, NanoCPUs: 5e8, Pids: 100},
		Reservations: &swarm.Resources{MemoryBytes: 32 << 20},
	}
	e.addService("s1", spec)
	jobEnds(e, swarm.TaskStateComplete, 0, "", selfNode, "done\n")
	if _, err := e.client(t, Config{}).Run(context.Background(), migrateJob(), deploy.Credentials{}); err != nil {
		t.Fatal(err)
	}
	var job swarm.ServiceSpec
	e.with(func() { job = e.created[0] })
	jc := job.TaskTemplate.ContainerSpec
	if jc.User != "1000:1000" || !jc.ReadOnly || !slices.Equal(jc.CapabilityDrop, []string{"ALL"}) || jc.CapabilityAdd != nil {
		t.Errorf("job user %q read-only %v drop %q add %q, want the service's user, read-only root and drops, no adds",
			jc.User, jc.ReadOnly, jc.CapabilityDrop, jc.CapabilityAdd)
	}
	want := &swarm.ResourceRequirements{Limits: &swarm.Limit{MemoryBytes: 64 << 20, NanoCPUs: 5e8, Pids: 100}}
	if !reflect.DeepEqual(job.TaskTemplate.Resources, want) {
		t.Errorf("job resources %+v, want the service's limits only", job.TaskTemplate.Resources)
	}

	// A service with none of it: the job has none either.
	e2 := newEngine(t)
	e2.addService("s1", dbSpec())
	jobEnds(e2, swarm.TaskStateComplete, 0, "", selfNode, "done\n")
	if _, err := e2.client(t, Config{}).Run(context.Background(), migrateJob(), deploy.Credentials{}); err != nil {
		t.Fatal(err)
	}
	e2.with(func() { job = e2.created[0] })
	if jc := job.TaskTemplate.ContainerSpec; jc.User != "" || jc.ReadOnly || job.TaskTemplate.Resources != nil {
		t.Errorf("job of a plain service: user %q read-only %v resources %+v", jc.User, jc.ReadOnly, job.TaskTemplate.Resources)
	}
}

// The values a job was given (its hook's env and, inheriting, the
// service's) never come back in its log tail, which goes to reports and
// records; the updater's own hook variables and short values stay.
func TestRunJobHidesEnvInLogTail(t *testing.T) {
	e := newEngine(t)
	e.addService("s1", dbSpec()) // DATABASE_URL=postgres://db/shop
	jobEnds(e, swarm.TaskStateFailed, 1, "", selfNode,
		"connecting to postgres://db/shop\nPGPASSWORD=hunter2-long in strict mode\nfor shop_web-migrate-1 on db\n")
	j := migrateJob()
	j.Env = []string{"UPDATER_SERVICE=shop_web-migrate-1", "PGPASSWORD=hunter2-long", "PGHOST=db"}
	res, err := e.client(t, Config{}).Run(context.Background(), j, deploy.Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"connecting to <redacted>", "PGPASSWORD=<redacted> in strict mode", "for shop_web-migrate-1 on db"}
	if !slices.Equal(res.LogTail, want) {
		t.Errorf("log tail %q, want %q", res.LogTail, want)
	}
}
