package swarm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
	"github.com/moby/moby/client"
)

// engine is a fake Docker Engine API served by httptest, with the little
// in-memory state the adapter's calls need. It answers like Engine API
// 1.41 (Docker 20.10) where the adapter depends on it: a write with a
// stale version is a 500 "update out of sequence" (not a conflict), object
// names are unique (a 409 "already exists"), and a label filter needs
// every label it names. A node's images, as the node-side prune sees
// them, are package nodeprune's fake.
//
// Tests set up and read its state through with(), which holds the lock
// the handlers hold, and inject answers with fail(), cut() and hang(), or
// changes made just before or after the engine answers a call with
// before() and after().
type engine struct {
	t   *testing.T
	srv *httptest.Server

	mu    sync.Mutex
	seq   int
	clock time.Time // CreatedAt of the next object: one second per object

	info       system.Info
	services   map[string]*swarm.Service // by ID
	created    []swarm.ServiceSpec       // every spec a create was asked for, jobs included
	auth       map[string]string         // service ID -> the X-Registry-Auth of its last create or update
	tasks      []swarm.Task
	configs    map[string]*swarm.Config // by ID
	nodes      []swarm.Node
	containers []container.Summary
	logs       map[string]string // service or task ID -> what it printed

	// onCreate runs, with the lock held, when a service is created: a test
	// gives a job its tasks there.
	onCreate func(id string, spec swarm.ServiceSpec)
	// listOmitsData leaves Data out of config list answers, as some
	// engine versions do.
	listOmitsData bool

	faults []*fault
	calls  []string // "METHOD /path?query" of every request but _ping
}

// fault answers a call ("METHOD /path", without the API version) in place
// of the engine, or runs something just before the engine answers it.
type fault struct {
	call   string
	status int    // the answer; 0: the connection is cut, no answer at all
	msg    string // the answer's message
	times  int    // how many calls it answers; 0: every one
	before func() // if set, runs (lock held) and the engine answers as usual
	after  func() // if set, runs (lock held) once the engine answered
	// hang, if set, leaves the call unanswered, as a frozen dockerd does,
	// until the client gives up or hang is closed; then it is answered.
	hang  chan struct{}
	spent bool
}

const selfNode = "node-self" // the node the fake engine runs on

func newEngine(t *testing.T) *engine {
	e := &engine{
		t:        t,
		clock:    time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		services: map[string]*swarm.Service{},
		auth:     map[string]string{},
		configs:  map[string]*swarm.Config{},
		logs:     map[string]string{},
	}
	e.info.Swarm = swarm.Info{NodeID: selfNode, LocalNodeState: swarm.LocalNodeStateActive, ControlAvailable: true}
	e.srv = httptest.NewServer(e)
	t.Cleanup(e.srv.Close)
	return e
}

// client is a Swarm adapter talking to this engine.
func (e *engine) client(t *testing.T, cfg Config) *Swarm {
	t.Helper()
	return adapterAt(t, "tcp://"+e.srv.Listener.Addr().String(), cfg)
}

func adapterAt(t *testing.T, host string, cfg Config) *Swarm {
	t.Helper()
	api, err := client.New(client.WithHost(host))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = api.Close() })
	if cfg.Label == "" {
		cfg.Label = "updater.enable"
	}
	if cfg.Retries == 0 {
		cfg.Retries = 3
	}
	cfg.Log = slog.New(slog.DiscardHandler)
	return &Swarm{api: newDocker(api, cfg.Timeout), cfg: cfg}
}

// with runs f with the engine's state locked.
func (e *engine) with(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f()
}

func (e *engine) fail(call string, status int, msg string, times int) {
	e.with(func() { e.faults = append(e.faults, &fault{call: call, status: status, msg: msg, times: times}) })
}

func (e *engine) cut(call string, times int) { e.fail(call, 0, "", times) }

// hang leaves calls unanswered until the client gives up on them; calling
// release answers those still waiting, and the rest of the times at once.
func (e *engine) hang(call string, times int) (release func()) {
	ch := make(chan struct{})
	e.with(func() { e.faults = append(e.faults, &fault{call: call, times: times, hang: ch}) })
	return sync.OnceFunc(func() { close(ch) })
}

func (e *engine) before(call string, times int, f func()) {
	e.with(func() { e.faults = append(e.faults, &fault{call: call, times: times, before: f}) })
}

func (e *engine) after(call string, times int, f func()) {
	e.with(func() { e.faults = append(e.faults, &fault{call: call, times: times, after: f}) })
}

// count is how many calls began with prefix ("POST /services/s1/update").
func (e *engine) count(prefix string) int {
	n := 0
	e.with(func() {
		for _, c := range e.calls {
			if strings.HasPrefix(c, prefix) {
				n++
			}
		}
	})
	return n
}

func (e *engine) newID(kind string) string {
	e.seq++
	return fmt.Sprintf("%s%d", kind, e.seq)
}

func (e *engine) tick() time.Time {
	e.clock = e.clock.Add(time.Second)
	return e.clock
}

func (e *engine) addService(id string, spec swarm.ServiceSpec) *swarm.Service {
	var svc *swarm.Service
	e.with(func() {
		svc = &swarm.Service{ID: id, Spec: spec}
		svc.Version.Index = 10
		svc.CreatedAt = e.tick()
		e.services[id] = svc
	})
	return svc
}

func (e *engine) service(id string) (swarm.Service, bool) {
	var svc swarm.Service
	var ok bool
	e.with(func() {
		if p := e.services[id]; p != nil {
			svc, ok = *p, true
		}
	})
	return svc, ok
}

// config finds a config by name.
func (e *engine) config(name string) (swarm.Config, bool) {
	var c swarm.Config
	var ok bool
	e.with(func() {
		if p := e.configByRef(name); p != nil {
			c, ok = *p, true
		}
	})
	return c, ok
}

func (e *engine) configNames() []string {
	var out []string
	e.with(func() {
		for _, c := range e.configs {
			out = append(out, c.Spec.Name)
		}
	})
	sort.Strings(out)
	return out
}

func (e *engine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/_ping" {
		w.Header().Set("Api-Version", "1.41")
		return
	}
	p, ok := strings.CutPrefix(r.URL.Path, "/v1.41")
	if !ok {
		e.t.Errorf("fake engine: %s %s does not use the negotiated API version 1.41", r.Method, r.URL.Path)
		e.answerErr(w, http.StatusBadRequest, "no API version")
		return
	}
	call := r.Method + " " + p
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, strings.TrimSuffix(call+"?"+r.URL.RawQuery, "?"))
	for _, f := range e.faults {
		if f.call != call || f.spent {
			continue
		}
		if f.times > 0 {
			f.times--
			f.spent = f.times == 0
		}
		switch {
		case f.after != nil:
			defer f.after() // before the unlock deferred above
		case f.before != nil:
			f.before()
		case f.hang != nil:
			// Unlocked meanwhile: the engine is frozen for this call only.
			// The body is read first: the server notices the client giving
			// up only once it has.
			hang := f.hang
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			e.mu.Unlock()
			select {
			case <-hang:
				e.mu.Lock()
			case <-r.Context().Done():
				e.mu.Lock()
				return
			}
		case f.status == 0:
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				e.t.Errorf("fake engine: hijack: %v", err)
				return
			}
			_ = conn.Close()
			return
		default:
			e.answerErr(w, f.status, f.msg)
			return
		}
		break
	}
	e.route(w, r, p)
}

func (e *engine) route(w http.ResponseWriter, r *http.Request, p string) {
	var id string
	// at matches p against prefix*suffix, * being an object's ID or name
	// (an image reference may hold slashes).
	at := func(method, prefix, suffix string) bool {
		rest, ok := strings.CutPrefix(p, prefix)
		if !ok || r.Method != method {
			return false
		}
		if rest, ok = strings.CutSuffix(rest, suffix); !ok || rest == "" {
			return false
		}
		id = rest
		return true
	}
	get := func(path string) bool { return r.Method == http.MethodGet && p == path }
	switch {
	case get("/info"):
		e.answer(w, e.info)
	case get("/services"):
		e.listServices(w, r)
	case r.Method == http.MethodPost && p == "/services/create":
		e.createService(w, r)
	case at(http.MethodPost, "/services/", "/update"):
		e.updateService(w, r, id)
	case at(http.MethodGet, "/services/", "/logs"), at(http.MethodGet, "/tasks/", "/logs"):
		e.answerLogs(w, id)
	case at(http.MethodGet, "/services/", ""):
		svc := e.serviceByRef(id)
		if svc == nil {
			e.answerErr(w, http.StatusNotFound, "service "+id+" not found")
			return
		}
		out := *svc
		out.ServiceStatus = nil // inspect has none on 1.41
		e.answer(w, out)
	case at(http.MethodDelete, "/services/", ""):
		svc := e.serviceByRef(id)
		if svc == nil {
			e.answerErr(w, http.StatusNotFound, "service "+id+" not found")
			return
		}
		delete(e.services, svc.ID)
		e.tasks = slices.DeleteFunc(e.tasks, func(t swarm.Task) bool { return t.ServiceID == svc.ID })
	case get("/tasks"):
		f := filters(r)
		out := []swarm.Task{}
		for _, t := range e.tasks {
			if len(f["service"]) == 0 || f["service"][t.ServiceID] {
				out = append(out, t)
			}
		}
		e.answer(w, out)
	case get("/nodes"):
		e.answer(w, append([]swarm.Node{}, e.nodes...))
	case get("/configs"):
		f := filters(r)
		out := []swarm.Config{}
		for _, c := range e.configs {
			if labelsMatch(c.Spec.Labels, f["label"]) {
				c := *c
				if e.listOmitsData {
					c.Spec.Data = nil
				}
				out = append(out, c)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
		e.answer(w, out)
	case r.Method == http.MethodPost && p == "/configs/create":
		e.createConfig(w, r)
	case at(http.MethodPost, "/configs/", "/update"):
		e.updateConfig(w, r, id)
	case at(http.MethodGet, "/configs/", ""):
		if c := e.configByRef(id); c != nil {
			e.answer(w, c)
			return
		}
		e.answerErr(w, http.StatusNotFound, "config "+id+" not found")
	case at(http.MethodDelete, "/configs/", ""):
		c := e.configByRef(id)
		if c == nil {
			e.answerErr(w, http.StatusNotFound, "config "+id+" not found")
			return
		}
		delete(e.configs, c.ID)
		w.WriteHeader(http.StatusNoContent)
	case get("/containers/json"):
		f := filters(r)
		out := []container.Summary{}
		for _, c := range e.containers {
			if labelsMatch(c.Labels, f["label"]) && (r.URL.Query().Get("all") == "1" || c.State == container.StateRunning) {
				out = append(out, c)
			}
		}
		e.answer(w, out)
	case at(http.MethodGet, "/containers/", "/json"):
		i := e.containerIndex(id)
		if i < 0 {
			e.answerErr(w, http.StatusNotFound, "No such container: "+id)
			return
		}
		c := e.containers[i]
		st := &container.State{Status: c.State, Running: c.State == container.StateRunning}
		e.answer(w, container.InspectResponse{ID: c.ID, State: st, Image: c.ImageID,
			Config: &container.Config{Image: c.Image, Labels: c.Labels}})
	case at(http.MethodDelete, "/containers/", ""):
		i := e.containerIndex(id)
		if i < 0 {
			e.answerErr(w, http.StatusNotFound, "No such container: "+id)
			return
		}
		if e.containers[i].State == container.StateRunning && r.URL.Query().Get("force") != "1" {
			e.answerErr(w, http.StatusConflict, "You cannot remove a running container "+id+". Stop the container before attempting removal or force remove")
			return
		}
		e.containers = slices.Delete(e.containers, i, i+1)
		w.WriteHeader(http.StatusNoContent)
	default:
		e.t.Errorf("fake engine: unexpected call %s %s", r.Method, p)
		e.answerErr(w, http.StatusNotFound, "page not found")
	}
}

func (e *engine) listServices(w http.ResponseWriter, r *http.Request) {
	f := filters(r)
	out := []swarm.Service{}
	for _, svc := range e.services {
		if !labelsMatch(svc.Spec.Labels, f["label"]) {
			continue
		}
		if ids := f["id"]; len(ids) > 0 && !slices.ContainsFunc(slices.Collect(maps.Keys(ids)), func(p string) bool { return strings.HasPrefix(svc.ID, p) }) {
			continue // the id filter matches prefixes
		}
		s := *svc
		if r.URL.Query().Get("status") != "true" {
			s.ServiceStatus = nil
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	e.answer(w, out)
}

func (e *engine) createService(w http.ResponseWriter, r *http.Request) {
	var spec swarm.ServiceSpec
	if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
		e.answerErr(w, http.StatusBadRequest, err.Error())
		return
	}
	e.created = append(e.created, spec)
	if e.serviceByRef(spec.Name) != nil {
		e.answerErr(w, http.StatusConflict, "rpc error: code = AlreadyExists desc = name conflicts with an existing object")
		return
	}
	id := e.newID("svc")
	svc := &swarm.Service{ID: id, Spec: spec}
	svc.Version.Index = uint64(e.seq)
	svc.CreatedAt = e.tick()
	e.services[id] = svc
	e.auth[id] = r.Header.Get("X-Registry-Auth")
	if e.onCreate != nil {
		e.onCreate(id, spec)
	}
	e.answer(w, swarm.ServiceCreateResponse{ID: id})
}

func (e *engine) updateService(w http.ResponseWriter, r *http.Request, ref string) {
	svc := e.serviceByRef(ref)
	if svc == nil {
		e.answerErr(w, http.StatusNotFound, "service "+ref+" not found")
		return
	}
	var spec swarm.ServiceSpec
	if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
		e.answerErr(w, http.StatusBadRequest, err.Error())
		return
	}
	if v, _ := strconv.ParseUint(r.URL.Query().Get("version"), 10, 64); v != svc.Version.Index {
		e.answerErr(w, http.StatusInternalServerError, "rpc error: code = Unknown desc = update out of sequence")
		return
	}
	if r.URL.Query().Get("rollback") == "previous" {
		if svc.PreviousSpec == nil {
			e.answerErr(w, http.StatusInternalServerError, "rpc error: code = FailedPrecondition desc = service "+ref+" does not have a previous spec")
			return
		}
		spec = *svc.PreviousSpec
	}
	prev := svc.Spec
	svc.PreviousSpec, svc.Spec = &prev, spec
	svc.Version.Index++
	svc.UpdatedAt = e.tick()
	e.auth[svc.ID] = r.Header.Get("X-Registry-Auth")
	e.answer(w, swarm.ServiceUpdateResponse{})
}

func (e *engine) createConfig(w http.ResponseWriter, r *http.Request) {
	var spec swarm.ConfigSpec
	if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
		e.answerErr(w, http.StatusBadRequest, err.Error())
		return
	}
	if e.configByRef(spec.Name) != nil {
		e.answerErr(w, http.StatusConflict, "rpc error: code = AlreadyExists desc = config "+spec.Name+" already exists")
		return
	}
	id := e.newID("cfg")
	c := &swarm.Config{ID: id, Spec: spec}
	c.Version.Index = uint64(e.seq)
	c.CreatedAt = e.tick()
	c.UpdatedAt = c.CreatedAt
	e.configs[id] = c
	e.answer(w, swarm.ConfigCreateResponse{ID: id})
}

func (e *engine) updateConfig(w http.ResponseWriter, r *http.Request, ref string) {
	c := e.configByRef(ref)
	if c == nil {
		e.answerErr(w, http.StatusNotFound, "config "+ref+" not found")
		return
	}
	var spec swarm.ConfigSpec
	if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
		e.answerErr(w, http.StatusBadRequest, err.Error())
		return
	}
	if v, _ := strconv.ParseUint(r.URL.Query().Get("version"), 10, 64); v != c.Version.Index {
		e.answerErr(w, http.StatusInternalServerError, "rpc error: code = Unknown desc = update out of sequence")
		return
	}
	if string(spec.Data) != string(c.Spec.Data) || spec.Name != c.Spec.Name {
		e.answerErr(w, http.StatusBadRequest, "rpc error: code = InvalidArgument desc = only updates to Labels are allowed")
		return
	}
	c.Spec.Labels = spec.Labels
	c.Version.Index++
	c.UpdatedAt = e.tick()
	w.WriteHeader(http.StatusOK)
}

func (e *engine) serviceByRef(ref string) *swarm.Service {
	for _, svc := range e.services {
		if svc.ID == ref || svc.Spec.Name == ref {
			return svc
		}
	}
	return nil
}

func (e *engine) configByRef(ref string) *swarm.Config {
	for _, c := range e.configs {
		if c.ID == ref || c.Spec.Name == ref {
			return c
		}
	}
	return nil
}

func (e *engine) containerIndex(id string) int {
	return slices.IndexFunc(e.containers, func(c container.Summary) bool { return c.ID == id })
}

// answerLogs writes what id printed, framed as a non-TTY container's
// log stream is (stdcopy), one frame per line on stdout.
func (e *engine) answerLogs(w http.ResponseWriter, id string) {
	for _, line := range strings.SplitAfter(e.logs[id], "\n") {
		if line == "" {
			continue
		}
		hdr := make([]byte, 8)
		hdr[0] = 1 // stdout
		binary.BigEndian.PutUint32(hdr[4:], uint32(len(line)))
		_, _ = w.Write(append(hdr, line...))
	}
	// Sent as written, as dockerd streams logs.
	w.(http.Flusher).Flush()
}

func (e *engine) answer(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		e.t.Errorf("fake engine: encode answer: %v", err)
	}
}

func (e *engine) answerErr(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

func filters(r *http.Request) map[string]map[string]bool {
	f := map[string]map[string]bool{}
	if v := r.URL.Query().Get("filters"); v != "" {
		_ = json.Unmarshal([]byte(v), &f)
	}
	return f
}

// labelsMatch: every "key" or "key=value" of want is on labels.
func labelsMatch(labels map[string]string, want map[string]bool) bool {
	for w := range want {
		k, v, hasValue := strings.Cut(w, "=")
		got, ok := labels[k]
		if !ok || hasValue && got != v {
			return false
		}
	}
	return true
}
