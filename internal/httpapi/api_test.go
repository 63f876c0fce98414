package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

func TestSameSecret(t *testing.T) {
	for _, tt := range []struct {
		given, want string
		ok          bool
	}{
		{apiToken, apiToken, true},
		{apiToken[:len(apiToken)-1] + "X", apiToken, false}, // last byte differs
		{"X" + apiToken[1:], apiToken, false},               // first byte differs
		{apiToken[:len(apiToken)-1], apiToken, false},       // a prefix
		{apiToken + "0", apiToken, false},                   // longer
		{"", apiToken, false},
		{"", "", false}, // no secret set means off, never open
		{strings.ToUpper(apiToken), apiToken, false},
	} {
		if got := sameSecret(tt.given, tt.want); got != tt.ok {
			t.Errorf("sameSecret(%q, %q) = %v, want %v", tt.given, tt.want, got, tt.ok)
		}
	}
}

// FuzzSameSecret: the constant-time comparison agrees with == on every
// input, except that an empty secret never matches.
func FuzzSameSecret(f *testing.F) {
	f.Add(apiToken, apiToken)
	f.Add(apiToken, apiToken+"x")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, given, want string) {
		if got := sameSecret(given, want); got != (given == want && want != "") {
			t.Fatalf("sameSecret(%q, %q) = %v", given, want, got)
		}
	})
}

// Every API route refuses a request without the right token, with 401
// and nothing asked for; with the API off it says how to turn it on.
func TestAPIAuth(t *testing.T) {
	routes := []struct{ method, path string }{
		{"GET", "/api/v1/services"}, {"GET", "/api/v1/deploys"}, {"POST", "/api/v1/check"},
		{"POST", "/api/v1/services/web/deploy"}, {"POST", "/api/v1/deploys/abc/approve"}, {"POST", "/api/v1/deploys/abc/reject"},
		{"GET", "/api/v1/services/web/history"}, {"POST", "/api/v1/services/web/rollback"},
	}
	basic := func(user, pw string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
	}
	for _, rt := range routes {
		for _, tt := range []struct {
			name, auth string
			status     int
		}{
			{"none", "", http.StatusUnauthorized},
			{"wrong", "Bearer wrong-token-0123456789abcdef", http.StatusUnauthorized},
			{"last byte differs", "Bearer " + apiToken[:len(apiToken)-1] + "X", http.StatusUnauthorized},
			{"prefix", "Bearer " + apiToken[:8], http.StatusUnauthorized},
			{"webhook secret", "Bearer " + secret, http.StatusUnauthorized},
			{"token without scheme", apiToken, http.StatusUnauthorized},
			{"basic, wrong password", basic("ops", "nope"), http.StatusUnauthorized},
			{"bearer", "Bearer " + apiToken, 0},
			{"basic with the token as password", basic("anyone", apiToken), 0},
		} {
			t.Run(rt.method+" "+rt.path+" "+tt.name, func(t *testing.T) {
				r := newRig(t)
				req := httptest.NewRequest(rt.method, rt.path, nil)
				if tt.auth != "" {
					req.Header.Set("Authorization", tt.auth)
				}
				rec := r.do(req)
				if tt.status != 0 {
					if rec.Code != tt.status || rec.Header().Get("WWW-Authenticate") == "" {
						t.Fatalf("status %d (WWW-Authenticate %q), want %d", rec.Code, rec.Header().Get("WWW-Authenticate"), tt.status)
					}
					if p, c, d := r.requests.asked(); len(p)+c+len(d) != 0 {
						t.Fatal("a refused request asked for work")
					}
					return
				}
				if rec.Code == http.StatusUnauthorized || rec.Code == http.StatusForbidden {
					t.Fatalf("status %d with the right token: %s", rec.Code, rec.Body)
				}
			})
		}
	}
	r := newRig(t, func(c *Config) { c.APIToken = "" })
	rec := r.do(authed("GET", "/api/v1/services", nil))
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "UPDATER_API_TOKEN") {
		t.Fatalf("API off: %d %s", rec.Code, rec.Body)
	}
}

func decodeJSON(t *testing.T, rec *httptest.ResponseRecorder, v any) {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("decode %s: %v", rec.Body, err)
	}
}

func plans() []deploy.Plan {
	web := deploy.Target{ID: "svc1", Name: "web", Stack: "site", Image: "r.example/web:1@" + oldD}
	web.Hooks.Approve = true
	db := deploy.Target{ID: "svc2", Name: "db", Stack: "site", Image: "r.example/db:15@" + oldD}
	return []deploy.Plan{
		{Target: db, Want: oldD, Action: deploy.ActNone},
		{Target: web, Want: newD, Action: deploy.ActAwait, Reason: "deploy 0a1b waits for approval until 2026-03-02T09:00:00Z"},
	}
}

func TestAPIServicesAndDeploys(t *testing.T) {
	r := newRig(t)
	r.pipeline.StatusFn = func() deploy.Status { return deploy.Status{Services: plans(), Checked: r.now} }
	approval := deploy.Approval{ID: "0a1b", ServiceID: "svc1", ServiceName: "web", Ref: "r.example/web:1", From: oldD, To: newD,
		State: deploy.ApprovalPending, Requested: r.now, Expires: r.now.Add(24 * time.Hour)}
	r.pipeline.ApprovalsFn = func() []deploy.Approval { return []deploy.Approval{approval} }
	rel := deploy.Release{ID: "d1", ServiceID: "svc2", ServiceName: "db", Ref: "r.example/db:15", From: newD, To: oldD, Started: r.now}
	r.history.Report(deploy.Event{Kind: deploy.Started, Release: rel})
	r.history.Report(deploy.Event{Kind: deploy.Succeeded, Release: rel, Phase: deploy.PhaseRollout, Duration: 12 * time.Second})

	var svcs struct {
		Services []Service `json:"services"`
		Checked  time.Time `json:"checked"`
	}
	decodeJSON(t, r.do(authed("GET", "/api/v1/services", nil)), &svcs)
	if len(svcs.Services) != 2 || !svcs.Checked.Equal(r.now) {
		t.Fatalf("services %+v", svcs)
	}
	db, web := svcs.Services[0], svcs.Services[1]
	if db.Name != "db" || db.Ref != "r.example/db:15" || db.Digest != oldD || db.Available != oldD || db.State != deploy.ActNone ||
		db.Approval != "auto" || db.LastDeploy == nil || db.LastDeploy.State != "succeeded" || db.LastDeploy.Duration != 12*time.Second {
		t.Errorf("db %+v", db)
	}
	if web.State != deploy.ActAwait || web.Approval != "manual" || web.Available != newD || web.LastDeploy != nil || !strings.Contains(web.Reason, "0a1b") {
		t.Errorf("web %+v", web)
	}

	var deps struct {
		Approvals []deploy.Approval `json:"approvals"`
		Deploys   []Deploy          `json:"deploys"`
	}
	decodeJSON(t, r.do(authed("GET", "/api/v1/deploys", nil)), &deps)
	if len(deps.Approvals) != 1 || deps.Approvals[0].ID != "0a1b" || deps.Approvals[0].State != deploy.ApprovalPending {
		t.Errorf("approvals %+v", deps.Approvals)
	}
	if len(deps.Deploys) != 1 || deps.Deploys[0].ID != "d1" || deps.Deploys[0].Phase != deploy.PhaseRollout {
		t.Errorf("deploys %+v", deps.Deploys)
	}
}

func TestAPICheckAndDeploy(t *testing.T) {
	r := newRig(t)
	if rec := r.do(authed("POST", "/api/v1/check", nil)); rec.Code != http.StatusAccepted {
		t.Fatalf("check: %d %s", rec.Code, rec.Body)
	}
	r.requests.DeployFn = func(_ context.Context, name string) error {
		if name != "web" {
			return fmt.Errorf("service %q is not watched: %w", name, deploy.ErrNotFound)
		}
		return nil
	}
	if rec := r.do(authed("POST", "/api/v1/services/web/deploy", nil)); rec.Code != http.StatusAccepted {
		t.Fatalf("deploy web: %d %s", rec.Code, rec.Body)
	}
	if rec := r.do(authed("POST", "/api/v1/services/nope/deploy", nil)); rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "not watched") {
		t.Fatalf("deploy nope: %d %s", rec.Code, rec.Body)
	}
	if rec := r.do(authed("GET", "/api/v1/check", nil)); rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET check: %d, want 405", rec.Code)
	}
	_, checks, deploys := r.requests.asked()
	if checks != 1 || strings.Join(deploys, ",") != "web,nope" {
		t.Fatalf("%d checks, deploys %v", checks, deploys)
	}
}

func TestAPIDecisions(t *testing.T) {
	r := newRig(t)
	var approved, rejected []string
	r.decisions.ApproveFn = func(_ context.Context, id string) (deploy.Approval, error) {
		approved = append(approved, id)
		switch id {
		case "p1":
			return deploy.Approval{ID: id, State: deploy.ApprovalApproved}, nil
		case "done":
			return deploy.Approval{}, fmt.Errorf("deploy done is rejected: %w", deploy.ErrDecided)
		}
		return deploy.Approval{}, fmt.Errorf("no deploy %s awaits approval: %w", id, deploy.ErrNotFound)
	}
	r.decisions.RejectFn = func(_ context.Context, id string) (deploy.Approval, error) {
		rejected = append(rejected, id)
		if id == "broken" {
			return deploy.Approval{}, fmt.Errorf("remember rejected digest: swarm down")
		}
		return deploy.Approval{ID: id, State: deploy.ApprovalRejected}, nil
	}
	for _, tt := range []struct {
		path   string
		status int
		state  deploy.ApprovalState
	}{
		{"/api/v1/deploys/p1/approve", http.StatusOK, deploy.ApprovalApproved},
		{"/api/v1/deploys/done/approve", http.StatusConflict, ""},
		{"/api/v1/deploys/nope/approve", http.StatusNotFound, ""},
		{"/api/v1/deploys/p2/reject", http.StatusOK, deploy.ApprovalRejected},
		{"/api/v1/deploys/broken/reject", http.StatusInternalServerError, ""},
	} {
		rec := r.do(authed("POST", tt.path, nil))
		if rec.Code != tt.status {
			t.Fatalf("%s: %d %s, want %d", tt.path, rec.Code, rec.Body, tt.status)
		}
		if tt.state != "" {
			var a deploy.Approval
			decodeJSON(t, rec, &a)
			if a.State != tt.state {
				t.Fatalf("%s: state %s", tt.path, a.State)
			}
		}
	}
	if strings.Join(approved, ",") != "p1,done,nope" || strings.Join(rejected, ",") != "p2,broken" {
		t.Fatalf("approved %v, rejected %v", approved, rejected)
	}
}
