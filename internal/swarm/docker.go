package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
)

// DefaultTimeout bounds one Docker call when Config.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// docker is the Docker client with a deadline on each call. A hung engine
// or socket proxy (a frozen dockerd still accepts connections) would
// otherwise hold whatever waits on it: the pipeline, the lease renewal and
// the rollout deadline, which is only checked between calls. The library's
// only timeout is http.Client.Timeout, which cannot tell the updater which
// call hung; and a transport of our own would have to rebuild what
// client.FromEnv configures (socket, TLS). So the methods the adapter uses
// are here, with the client's signatures: a call not listed does not
// compile, so none goes out unbounded.
//
// A call that gets no answer within its bound fails as
// deploy.ErrUnavailable (it says nothing about whether a write happened)
// and is remembered as hung until Docker answers any call again, for
// /readyz. A caller's own shorter deadline (a log tail's) is the caller's
// business: running into it proves nothing about the engine.
type docker struct {
	api     *client.Client
	timeout time.Duration

	mu   sync.Mutex
	hung map[string]time.Time // call -> when it first got no answer since Docker last answered
}

// errNoAnswer is the cause of a call's context when its own bound ran out.
var errNoAnswer = errors.New("no answer from docker")

func newDocker(api *client.Client, timeout time.Duration) *docker {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &docker{api: api, timeout: timeout, hung: map[string]time.Time{}}
}

// begin bounds one call named call; end takes the call's error and
// returns the one to give back. end does not cancel ctx, so a stream can
// be read on until it is closed; cancel does.
func (d *docker) begin(ctx context.Context, call string) (_ context.Context, end func(error) error, cancel context.CancelFunc) {
	ctx, cancel = context.WithTimeoutCause(ctx, d.timeout, errNoAnswer)
	end = func(err error) error {
		hung := err != nil && errors.Is(context.Cause(ctx), errNoAnswer)
		// An answer is anything from the engine itself, an error status
		// included; a cut connection or the caller giving up is none.
		answered := err == nil || ctx.Err() == nil && !errors.Is(unavailable(err), deploy.ErrUnavailable)
		d.mu.Lock()
		defer d.mu.Unlock()
		switch {
		case hung:
			if _, ok := d.hung[call]; !ok {
				d.hung[call] = time.Now()
			}
			return fmt.Errorf("%w: docker did not answer %s within %s", deploy.ErrUnavailable, call, d.timeout)
		case answered:
			clear(d.hung)
		}
		return err
	}
	return ctx, end, cancel
}

// stuck describes the calls that got no answer within their bound since
// Docker last answered one, oldest first.
func (d *docker) stuck() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	calls := make([]string, 0, len(d.hung))
	for c := range d.hung {
		calls = append(calls, c)
	}
	slices.SortFunc(calls, func(a, b string) int { return d.hung[a].Compare(d.hung[b]) })
	out := make([]string, len(calls))
	for i, c := range calls {
		out[i] = fmt.Sprintf("docker gave %s no answer within %s (since %s)", c, d.timeout, d.hung[c].UTC().Format(time.RFC3339))
	}
	return out
}

// call runs one bounded request that returns a value.
func call[R any](d *docker, ctx context.Context, name string, f func(context.Context) (R, error)) (R, error) {
	ctx, end, cancel := d.begin(ctx, name)
	defer cancel()
	r, err := f(ctx)
	return r, end(err)
}

// stream runs one bounded request whose answer is read after it returns:
// the bound covers the reading too, and ends when the stream is closed.
func stream(d *docker, ctx context.Context, name string, f func(context.Context) (io.ReadCloser, error)) (io.ReadCloser, error) {
	ctx, end, cancel := d.begin(ctx, name)
	rc, err := f(ctx)
	if err = end(err); err != nil {
		cancel()
		return nil, err
	}
	return &cancelOnClose{ReadCloser: rc, cancel: cancel}, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	defer c.cancel()
	return c.ReadCloser.Close()
}

func (d *docker) Close() error { return d.api.Close() }

func (d *docker) Info(ctx context.Context, o client.InfoOptions) (client.SystemInfoResult, error) {
	return call(d, ctx, "Info", func(ctx context.Context) (client.SystemInfoResult, error) { return d.api.Info(ctx, o) })
}

func (d *docker) NodeList(ctx context.Context, o client.NodeListOptions) (client.NodeListResult, error) {
	return call(d, ctx, "NodeList", func(ctx context.Context) (client.NodeListResult, error) { return d.api.NodeList(ctx, o) })
}

func (d *docker) ServiceList(ctx context.Context, o client.ServiceListOptions) (client.ServiceListResult, error) {
	return call(d, ctx, "ServiceList", func(ctx context.Context) (client.ServiceListResult, error) { return d.api.ServiceList(ctx, o) })
}

func (d *docker) ServiceInspect(ctx context.Context, id string, o client.ServiceInspectOptions) (client.ServiceInspectResult, error) {
	return call(d, ctx, "ServiceInspect", func(ctx context.Context) (client.ServiceInspectResult, error) {
		return d.api.ServiceInspect(ctx, id, o)
	})
}

func (d *docker) ServiceCreate(ctx context.Context, o client.ServiceCreateOptions) (client.ServiceCreateResult, error) {
	return call(d, ctx, "ServiceCreate", func(ctx context.Context) (client.ServiceCreateResult, error) { return d.api.ServiceCreate(ctx, o) })
}

func (d *docker) ServiceUpdate(ctx context.Context, id string, o client.ServiceUpdateOptions) (client.ServiceUpdateResult, error) {
	return call(d, ctx, "ServiceUpdate", func(ctx context.Context) (client.ServiceUpdateResult, error) {
		return d.api.ServiceUpdate(ctx, id, o)
	})
}

func (d *docker) ServiceRemove(ctx context.Context, id string, o client.ServiceRemoveOptions) (client.ServiceRemoveResult, error) {
	return call(d, ctx, "ServiceRemove", func(ctx context.Context) (client.ServiceRemoveResult, error) {
		return d.api.ServiceRemove(ctx, id, o)
	})
}

func (d *docker) ServiceLogs(ctx context.Context, id string, o client.ServiceLogsOptions) (io.ReadCloser, error) {
	return stream(d, ctx, "ServiceLogs", func(ctx context.Context) (io.ReadCloser, error) { return d.api.ServiceLogs(ctx, id, o) })
}

func (d *docker) TaskList(ctx context.Context, o client.TaskListOptions) (client.TaskListResult, error) {
	return call(d, ctx, "TaskList", func(ctx context.Context) (client.TaskListResult, error) { return d.api.TaskList(ctx, o) })
}

func (d *docker) TaskLogs(ctx context.Context, id string, o client.TaskLogsOptions) (io.ReadCloser, error) {
	return stream(d, ctx, "TaskLogs", func(ctx context.Context) (io.ReadCloser, error) { return d.api.TaskLogs(ctx, id, o) })
}

func (d *docker) ConfigList(ctx context.Context, o client.ConfigListOptions) (client.ConfigListResult, error) {
	return call(d, ctx, "ConfigList", func(ctx context.Context) (client.ConfigListResult, error) { return d.api.ConfigList(ctx, o) })
}

func (d *docker) ConfigInspect(ctx context.Context, id string, o client.ConfigInspectOptions) (client.ConfigInspectResult, error) {
	return call(d, ctx, "ConfigInspect", func(ctx context.Context) (client.ConfigInspectResult, error) {
		return d.api.ConfigInspect(ctx, id, o)
	})
}

func (d *docker) ConfigCreate(ctx context.Context, o client.ConfigCreateOptions) (client.ConfigCreateResult, error) {
	return call(d, ctx, "ConfigCreate", func(ctx context.Context) (client.ConfigCreateResult, error) { return d.api.ConfigCreate(ctx, o) })
}

func (d *docker) ConfigUpdate(ctx context.Context, id string, o client.ConfigUpdateOptions) (client.ConfigUpdateResult, error) {
	return call(d, ctx, "ConfigUpdate", func(ctx context.Context) (client.ConfigUpdateResult, error) {
		return d.api.ConfigUpdate(ctx, id, o)
	})
}

func (d *docker) ConfigRemove(ctx context.Context, id string, o client.ConfigRemoveOptions) (client.ConfigRemoveResult, error) {
	return call(d, ctx, "ConfigRemove", func(ctx context.Context) (client.ConfigRemoveResult, error) {
		return d.api.ConfigRemove(ctx, id, o)
	})
}

func (d *docker) ContainerList(ctx context.Context, o client.ContainerListOptions) (client.ContainerListResult, error) {
	return call(d, ctx, "ContainerList", func(ctx context.Context) (client.ContainerListResult, error) { return d.api.ContainerList(ctx, o) })
}

func (d *docker) ContainerInspect(ctx context.Context, id string, o client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	return call(d, ctx, "ContainerInspect", func(ctx context.Context) (client.ContainerInspectResult, error) {
		return d.api.ContainerInspect(ctx, id, o)
	})
}

func (d *docker) ContainerRemove(ctx context.Context, id string, o client.ContainerRemoveOptions) (client.ContainerRemoveResult, error) {
	return call(d, ctx, "ContainerRemove", func(ctx context.Context) (client.ContainerRemoveResult, error) {
		return d.api.ContainerRemove(ctx, id, o)
	})
}
