package fakeapi

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RollbarCall is one request the fake Rollbar received.
type RollbarCall struct {
	// Route is "deploy.create", "deploy.update", "deploy.get" or "item".
	Route    string
	DeployID int
	// Params are the body fields (and for an item, the data object's
	// top-level fields as JSON text).
	Params map[string]string
	At     time.Time
	// Status and Message are the answer: 200 and "" when accepted.
	Status  int
	Message string
}

// RollbarDeploy is one deploy as the fake recorded it.
type RollbarDeploy struct {
	ID            int
	Environment   string
	Revision      string
	LocalUsername string
	// Statuses and Comments are every status and comment the deploy was
	// given, in order: created "started", then patched "succeeded", say.
	Statuses []string
	Comments []string
}

// RollbarItem is one error or message reported through the item API.
type RollbarItem struct {
	Environment string
	Level       string
	Title       string
	CodeVersion string
	// Data is the whole data object, for anything else a test checks.
	Data map[string]any
}

// Rollbar is a fake Rollbar API: deploys (POST /api/1/deploy, PATCH and
// GET /api/1/deploy/{id}) and items (POST /api/1/item/).
type Rollbar struct {
	// APIURL is the API base, "http://127.0.0.1:port/api/1/".
	APIURL string

	token string
	srv   *server
	once  once

	mu      sync.Mutex
	calls   []RollbarCall
	deploys []*RollbarDeploy
	items   []RollbarItem
	faults  faults
}

var deployStatuses = []string{"started", "succeeded", "failed", "timed_out"}

// NewRollbar starts a fake Rollbar that accepts token.
func NewRollbar(token string) (*Rollbar, error) {
	f := &Rollbar{token: token, faults: faults{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/1/deploy", f.createDeploy)
	mux.HandleFunc("/api/1/deploy/", f.createDeploy)
	mux.HandleFunc("/api/1/deploy/{id}", f.deploy)
	mux.HandleFunc("/api/1/item/", f.item)
	mux.HandleFunc("/api/1/item", f.item)
	srv, err := serve(mux)
	if err != nil {
		return nil, err
	}
	f.srv, f.APIURL = srv, srv.url+"/api/1/"
	return f, nil
}

// Close makes the fake unreachable, like Rollbar down.
func (f *Rollbar) Close() { f.once.close(f.srv.close) }

// RateLimit answers the next n requests to route ("deploy.create",
// "deploy.update", "item") with 429 and Retry-After.
func (f *Rollbar) RateLimit(route string, n int, retryAfter time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[route] = &fault{n: n, status: http.StatusTooManyRequests, retryAfter: retryAfter}
}

// Fail answers the next n requests to route with an HTTP status.
func (f *Rollbar) Fail(route string, n, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[route] = &fault{n: n, status: status}
}

// Calls returns every request received, rejected ones included.
func (f *Rollbar) Calls() []RollbarCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Deploys returns the deploys recorded so far, oldest first.
func (f *Rollbar) Deploys() []RollbarDeploy {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]RollbarDeploy, 0, len(f.deploys))
	for _, d := range f.deploys {
		c := *d
		c.Statuses, c.Comments = slices.Clone(d.Statuses), slices.Clone(d.Comments)
		out = append(out, c)
	}
	return out
}

// Items returns the items recorded so far, oldest first.
func (f *Rollbar) Items() []RollbarItem {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.items)
}

// begin records the call and applies auth and injected faults; it returns
// false when it has answered already.
func (f *Rollbar) begin(w http.ResponseWriter, r *http.Request, c *RollbarCall, allowed ...string) bool {
	if !slices.Contains(allowed, r.Method) {
		f.answer(w, c, http.StatusMethodNotAllowed, "method not allowed")
		return false
	}
	f.mu.Lock()
	ft, faulty := f.faults.take(c.Route)
	f.mu.Unlock()
	if faulty {
		c.Status, c.Message = ft.status, http.StatusText(ft.status)
		f.record(*c)
		writeFault(w, ft, map[string]any{"err": 1, "message": c.Message})
		return false
	}
	token := r.Header.Get("X-Rollbar-Access-Token")
	if token == "" {
		token = c.Params["access_token"]
	}
	if token == "" {
		token = r.URL.Query().Get("access_token")
	}
	switch {
	case token == "":
		f.answer(w, c, http.StatusUnauthorized, "access token required")
		return false
	case token != f.token:
		f.answer(w, c, http.StatusUnauthorized, "invalid access token")
		return false
	}
	return true
}

func (f *Rollbar) record(c RollbarCall) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
}

// answer records c with the status and writes Rollbar's error shape, or
// body when the status is 200.
func (f *Rollbar) answer(w http.ResponseWriter, c *RollbarCall, status int, message string, body ...any) {
	c.Status = status
	if status != http.StatusOK {
		c.Message = message
	}
	f.record(*c)
	if status != http.StatusOK {
		writeJSON(w, status, map[string]any{"err": 1, "message": message})
		return
	}
	writeJSON(w, status, body[0])
}

func (f *Rollbar) createDeploy(w http.ResponseWriter, r *http.Request) {
	c := &RollbarCall{Route: "deploy.create", At: time.Now()}
	p, _, err := params(r)
	if err != nil {
		f.answer(w, c, http.StatusBadRequest, "invalid request body")
		return
	}
	c.Params = p
	if !f.begin(w, r, c, http.MethodPost) {
		return
	}
	rev := p["revision"]
	if rev == "" {
		rev = p["head_long"]
	}
	status := p["status"]
	switch {
	case p["environment"] == "":
		f.answer(w, c, http.StatusUnprocessableEntity, "'environment' is required")
		return
	case len(p["environment"]) > 255:
		f.answer(w, c, http.StatusUnprocessableEntity, "'environment' is longer than 255 characters")
		return
	case rev == "":
		f.answer(w, c, http.StatusUnprocessableEntity, "'revision' is required")
		return
	case len(rev) > 255:
		f.answer(w, c, http.StatusUnprocessableEntity, "'revision' is longer than 255 characters")
		return
	case status != "" && !slices.Contains(deployStatuses, status):
		f.answer(w, c, http.StatusUnprocessableEntity, "invalid status: "+status)
		return
	}
	if status == "" {
		status = "succeeded"
	}
	f.mu.Lock()
	d := &RollbarDeploy{ID: 1000 + len(f.deploys), Environment: p["environment"], Revision: rev,
		LocalUsername: p["local_username"], Statuses: []string{status}, Comments: []string{p["comment"]}}
	f.deploys = append(f.deploys, d)
	f.mu.Unlock()
	c.DeployID = d.ID
	f.answer(w, c, http.StatusOK, "", map[string]any{"data": map[string]any{"deploy_id": d.ID}})
}

func (f *Rollbar) deploy(w http.ResponseWriter, r *http.Request) {
	c := &RollbarCall{Route: "deploy.update", At: time.Now()}
	if r.Method == http.MethodGet {
		c.Route = "deploy.get"
	}
	p, _, err := params(r)
	if err != nil {
		f.answer(w, c, http.StatusBadRequest, "invalid request body")
		return
	}
	c.Params = p
	if !f.begin(w, r, c, http.MethodPatch, http.MethodGet) {
		return
	}
	id, err := strconv.Atoi(r.PathValue("id"))
	c.DeployID = id
	f.mu.Lock()
	var d *RollbarDeploy
	for _, x := range f.deploys {
		if err == nil && x.ID == id {
			d = x
		}
	}
	f.mu.Unlock()
	if d == nil {
		f.answer(w, c, http.StatusNotFound, "Deploy not found")
		return
	}
	if r.Method == http.MethodPatch {
		if !slices.Contains(deployStatuses, p["status"]) {
			f.answer(w, c, http.StatusUnprocessableEntity, "'status' must be one of "+strings.Join(deployStatuses, ", "))
			return
		}
		f.mu.Lock()
		d.Statuses = append(d.Statuses, p["status"])
		d.Comments = append(d.Comments, p["comment"])
		f.mu.Unlock()
	}
	f.mu.Lock()
	result := map[string]any{"id": d.ID, "environment": d.Environment, "revision": d.Revision,
		"status": d.Statuses[len(d.Statuses)-1], "comment": d.Comments[len(d.Comments)-1]}
	f.mu.Unlock()
	f.answer(w, c, http.StatusOK, "", map[string]any{"err": 0, "result": result})
}

func (f *Rollbar) item(w http.ResponseWriter, r *http.Request) {
	c := &RollbarCall{Route: "item", At: time.Now()}
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		f.answer(w, c, http.StatusBadRequest, "invalid request body")
		return
	}
	var payload struct {
		AccessToken string         `json:"access_token"`
		Data        map[string]any `json:"data"`
	}
	if err := json.Unmarshal(body, &payload); err != nil {
		f.answer(w, c, http.StatusBadRequest, "invalid JSON")
		return
	}
	c.Params = map[string]string{"access_token": payload.AccessToken}
	for k, v := range payload.Data {
		b, _ := json.Marshal(v)
		c.Params[k] = string(b)
	}
	if !f.begin(w, r, c, http.MethodPost) {
		return
	}
	env, _ := payload.Data["environment"].(string)
	switch {
	case payload.Data == nil:
		f.answer(w, c, http.StatusUnprocessableEntity, "'data' is required")
		return
	case env == "":
		f.answer(w, c, http.StatusUnprocessableEntity, "'data.environment' is required")
		return
	case payload.Data["body"] == nil:
		f.answer(w, c, http.StatusUnprocessableEntity, "'data.body' is required")
		return
	}
	it := RollbarItem{Environment: env, Data: payload.Data}
	it.Level, _ = payload.Data["level"].(string)
	it.Title, _ = payload.Data["title"].(string)
	it.CodeVersion, _ = payload.Data["code_version"].(string)
	f.mu.Lock()
	f.items = append(f.items, it)
	n := len(f.items)
	f.mu.Unlock()
	f.answer(w, c, http.StatusOK, "", map[string]any{"err": 0, "result": map[string]any{"id": nil, "uuid": "fake-" + strconv.Itoa(n)}})
}
