package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

type fakeHistories struct {
	ServiceHistoryFn func(ctx context.Context, name string) ([]deploy.HistoryEntry, error)
	HistoryFn        func(ctx context.Context, serviceID string) ([]deploy.HistoryEntry, error)
}

var _ Histories = (*fakeHistories)(nil)

func (f *fakeHistories) ServiceHistory(ctx context.Context, name string) ([]deploy.HistoryEntry, error) {
	return f.ServiceHistoryFn(ctx, name)
}

func (f *fakeHistories) History(ctx context.Context, id string) ([]deploy.HistoryEntry, error) {
	return f.HistoryFn(ctx, id)
}

// fakeRollbacks records the requests and answers with err, or a rollback
// from what the service runs (oldD) to the digest asked for or newD.
type fakeRollbacks struct {
	mu   sync.Mutex
	reqs []deploy.RollbackRequest
	err  error
	// onStart, when set, is called on each request (rig.decided counts).
	onStart func()
}

var _ Rollbacks = (*fakeRollbacks)(nil)

func (f *fakeRollbacks) StartRollback(_ context.Context, req deploy.RollbackRequest) (deploy.Rolling, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	if f.onStart != nil {
		f.onStart()
	}
	if f.err != nil {
		return deploy.Rolling{}, f.err
	}
	to := req.To
	if to == "" {
		to = newD
	}
	done := make(chan deploy.Event, 1)
	return deploy.Rolling{Release: deploy.Release{ID: "r1", ServiceID: "svc1", ServiceName: req.Service, Ref: "r.example/web:1",
		From: oldD, To: to, Rollback: true, By: req.By}, Done: done}, nil
}

func (f *fakeRollbacks) asked() []deploy.RollbackRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]deploy.RollbackRequest(nil), f.reqs...)
}

const readToken = "read-token-0123456789abcdef"

// entries is a history newest first: a rollback, the deploy it undid, the
// deploy before.
func entries(at time.Time) []deploy.HistoryEntry {
	cD := "sha256:" + strings.Repeat("c", 64)
	return []deploy.HistoryEntry{
		{ID: "h3", Ref: "r.example/web:1", From: newD, To: oldD, Started: at.Add(-time.Minute), Ended: at, Outcome: deploy.OutcomeSucceeded, Rollback: true, By: "cli"},
		{ID: "h2", Ref: "r.example/web:1", From: oldD, To: newD, Started: at.Add(-time.Hour), Ended: at.Add(-59 * time.Minute), Outcome: deploy.OutcomeSucceeded},
		{ID: "h1", Ref: "r.example/web:1", From: cD, To: oldD, Started: at.Add(-2 * time.Hour), Ended: at.Add(-119 * time.Minute), Outcome: deploy.OutcomeSucceeded},
		{ID: "h0", Ref: "r.example/web:1", To: cD, Ended: at.Add(-3 * time.Hour), Outcome: deploy.OutcomeRolledBack, Phase: deploy.PhaseRollout,
			Reason: `<script>alert("x")</script> unhealthy`},
	}
}

func historyRig(t *testing.T) (*rig, *fakeRollbacks) {
	fr := &fakeRollbacks{}
	var r *rig
	r = newRig(t, func(c *Config) {
		c.APIReadToken = readToken
		c.Rollbacks = fr
		c.Histories = &fakeHistories{
			ServiceHistoryFn: func(_ context.Context, name string) ([]deploy.HistoryEntry, error) {
				switch name {
				case "web", "svc1":
					return entries(r.now), nil
				case "db":
					return nil, nil
				case "broken":
					return nil, errors.New("read config updater-history-svc9 at 10.0.0.7:2377: connection refused")
				}
				return nil, fmt.Errorf("service %q is not watched: %w", name, deploy.ErrNotFound)
			},
			HistoryFn: func(_ context.Context, id string) ([]deploy.HistoryEntry, error) {
				switch id {
				case "svc1":
					return entries(r.now), nil
				case "svc2":
					return nil, errors.New("swarm at 10.0.0.7 did not answer")
				}
				return nil, nil
			},
		}
	})
	r.pipeline.StatusFn = func() deploy.Status { return deploy.Status{Services: plans(), Listed: r.now, Checked: r.now} }
	return r, fr
}

func withToken(method, target, tok, body string) *http.Request {
	req := authed(method, target, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	return req
}

// GET .../history: the read token is enough; the entries as the store
// keeps them, newest first; an empty history is [], not null; a service
// not watched is 404; a store that fails is a 500 that names nothing of
// it (the log does).
func TestAPIHistory(t *testing.T) {
	r, _ := historyRig(t)
	rec := r.do(withToken("GET", "/api/v1/services/web/history", readToken, ""))
	if rec.Code != http.StatusOK {
		t.Fatalf("history with the read token: %d %s", rec.Code, rec.Body)
	}
	var got HistoryAnswer
	decodeJSON(t, rec, &got)
	if got.Service != "web" || len(got.History) != 4 || got.History[0].ID != "h3" || !got.History[0].Rollback || got.History[0].By != "cli" ||
		got.History[3].Phase != deploy.PhaseRollout || got.History[3].Outcome != deploy.OutcomeRolledBack {
		t.Fatalf("history %+v", got)
	}
	for _, field := range []string{`"to_digest": "` + oldD, `"from_digest": "` + newD, `"rollback": true`, `"outcome": "rolled_back"`, `"ended": "2026-03-01T09:00:00Z"`} {
		if !strings.Contains(rec.Body.String(), field) {
			t.Errorf("the answer lacks %s:\n%s", field, rec.Body)
		}
	}
	if rec := r.do(withToken("GET", "/api/v1/services/db/history", apiToken, "")); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"history": []`) {
		t.Errorf("an empty history: %d %s, want 200 and []", rec.Code, rec.Body)
	}
	if rec := r.do(withToken("GET", "/api/v1/services/nope/history", apiToken, "")); rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "not watched") {
		t.Errorf("a service not watched: %d %s, want 404", rec.Code, rec.Body)
	}
	rec = r.do(withToken("GET", "/api/v1/services/broken/history", apiToken, ""))
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "10.0.0.7") || !strings.Contains(rec.Body.String(), "log says why") {
		t.Errorf("a failing store: %d %s, want 500 naming nothing of it", rec.Code, rec.Body)
	}
	if !strings.Contains(r.logs.String(), "10.0.0.7:2377") {
		t.Error("the store's error is not in the log")
	}
	if rec := r.do(withToken("GET", "/api/v1/services/web/history", "wrong-token-0123456789abcdef", "")); rec.Code != http.StatusUnauthorized {
		t.Errorf("a wrong token: %d, want 401", rec.Code)
	}
	if rec := r.do(withToken("POST", "/api/v1/services/web/history", apiToken, "")); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST history: %d, want 405", rec.Code)
	}
}

// POST .../rollback: the write token only, an optional {"to"} of a
// digest's shape (400 naming the form otherwise, nothing asked), 202 with
// the digests as soon as the rollback began, and each refusal its status
// with a message that leaks nothing of an unexpected error.
func TestAPIRollback(t *testing.T) {
	cD := "sha256:" + strings.Repeat("c", 64)
	for _, tt := range []struct {
		name, path, token, body string
		err                     error
		status                  int
		to                      string // the request's To, when asked
		want, not               []string
	}{
		{name: "no body: the last good digest", path: "/api/v1/services/web/rollback", status: http.StatusAccepted,
			want: []string{`"service": "web"`, `"from_digest": "` + oldD, `"to_digest": "` + newD, `"id": "r1"`, "began"}},
		{name: "to a digest", path: "/api/v1/services/web/rollback", body: `{"to":"` + cD + `"}`, status: http.StatusAccepted, to: cD,
			want: []string{`"to_digest": "` + cD}},
		{name: "an empty body object", path: "/api/v1/services/web/rollback", body: `{}`, status: http.StatusAccepted},
		{name: "a tag is no digest", path: "/api/v1/services/web/rollback", body: `{"to":"latest"}`, status: http.StatusBadRequest,
			want: []string{`\"latest\" is not a digest`, `sha256:\" and 64 lowercase hex digits`}},
		{name: "upper-case hex", path: "/api/v1/services/web/rollback", body: `{"to":"sha256:` + strings.Repeat("A", 64) + `"}`, status: http.StatusBadRequest},
		{name: "short", path: "/api/v1/services/web/rollback", body: `{"to":"sha256:abc"}`, status: http.StatusBadRequest},
		{name: "no sha256 prefix", path: "/api/v1/services/web/rollback", body: `{"to":"` + strings.Repeat("a", 64) + `"}`, status: http.StatusBadRequest},
		{name: "not JSON", path: "/api/v1/services/web/rollback", body: `to=sha256:abc`, status: http.StatusBadRequest, want: []string{`{\"to\": \"sha256:…\"}`}},
		{name: "an unknown field", path: "/api/v1/services/web/rollback", body: `{"digest":"` + cD + `"}`, status: http.StatusBadRequest},
		{name: "the read token", path: "/api/v1/services/web/rollback", token: readToken, status: http.StatusForbidden},
		{name: "a wrong token", path: "/api/v1/services/web/rollback", token: "wrong-token-0123456789abcdef", status: http.StatusUnauthorized},
		{name: "not watched", path: "/api/v1/services/nope/rollback", err: fmt.Errorf(`service "nope" is not watched: %w`, deploy.ErrNotFound),
			status: http.StatusNotFound, want: []string{"not watched"}},
		{name: "no earlier success", path: "/api/v1/services/web/rollback", err: fmt.Errorf("roll back web: %w", deploy.ErrNoRollbackTarget),
			status: http.StatusConflict, want: []string{"no earlier successful deploy", "name one with --to", "updater history web"}},
		{name: "busy", path: "/api/v1/services/web/rollback", err: fmt.Errorf("roll back web: deploy d9 runs: %w", deploy.ErrBusy),
			status: http.StatusConflict, want: []string{"a deploy of web is running: nothing was changed"}},
		{name: "digest gone", path: "/api/v1/services/web/rollback", body: `{"to":"` + cD + `"}`, to: cD,
			err:    fmt.Errorf("roll back web: %w: resolve r.example/web@%s: MANIFEST_UNKNOWN", ErrDigestUnknown, cD),
			status: http.StatusUnprocessableEntity, want: []string{"the registry does not have " + cD + " of web", "nothing was changed"}, not: []string{"MANIFEST_UNKNOWN"}},
		{name: "runs it already", path: "/api/v1/services/web/rollback", body: `{"to":"` + cD + `"}`, to: cD,
			err:    fmt.Errorf("rollback web: it runs %s already: nothing to do: %w", cD, deploy.ErrInvalid),
			status: http.StatusConflict, want: []string{"it runs " + cD + " already: nothing to do"}},
		{name: "standing by", path: "/api/v1/services/web/rollback", err: fmt.Errorf("roll back web: %w", deploy.ErrStandby),
			status: http.StatusServiceUnavailable, want: []string{"standing by"}},
		{name: "anything else", path: "/api/v1/services/web/rollback", err: errors.New("write spec at tcp://10.0.0.7:2376: token s3cr3t expired"),
			status: http.StatusInternalServerError, want: []string{"could not be started", "log says why"}, not: []string{"10.0.0.7", "s3cr3t"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, fr := historyRig(t)
			fr.err = tt.err
			tok := tt.token
			if tok == "" {
				tok = apiToken
			}
			rec := r.do(withToken("POST", tt.path, tok, tt.body))
			if rec.Code != tt.status {
				t.Fatalf("%d %s, want %d", rec.Code, rec.Body, tt.status)
			}
			for _, w := range tt.want {
				if !strings.Contains(rec.Body.String(), w) {
					t.Errorf("the answer lacks %q:\n%s", w, rec.Body)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(rec.Body.String(), n) {
					t.Errorf("the answer leaks %q:\n%s", n, rec.Body)
				}
			}
			asked := fr.asked()
			switch {
			case tt.status == http.StatusBadRequest || tt.status == http.StatusForbidden || tt.status == http.StatusUnauthorized:
				if len(asked) != 0 {
					t.Fatalf("a refused request asked for a rollback: %+v", asked)
				}
			case len(asked) != 1:
				t.Fatalf("asked %+v, want one rollback", asked)
			case asked[0].To != tt.to || asked[0].By != "api" || asked[0].Service != strings.Split(tt.path, "/")[4]:
				t.Fatalf("asked %+v, want to %q by api", asked[0], tt.to)
			}
			if tt.status == http.StatusInternalServerError && !strings.Contains(r.logs.String(), "10.0.0.7") {
				t.Error("an unexpected refusal is not in the log")
			}
		})
	}
}

// The page shows each service's recent history (escaped, cards on a
// phone), a Roll back button per service and "Roll back to this" on an
// earlier success; the read-only token sees neither button.
func TestStatusPageHistory(t *testing.T) {
	r, _ := historyRig(t)
	body := r.do(browser("GET", "/")).Body.String()
	hist, _, _ := strings.Cut(body[strings.Index(body, `<table id="history" class="cards">`):], "</table>")
	for _, want := range []string{
		`<tr data-history="web" data-to="` + oldD + `">`,
		`<strong>web</strong> <span class="muted">(running)</span>`,
		`rollback by cli`, `&lt;script&gt;alert`, `rolled_back</span> <span class="muted">in rollout</span>`,
		`<td data-label="Ended">2026-03-01 09:00:00Z</td>`,
		// The earlier success on newD may be returned to; the running
		// oldD and the rolled-back cD may not.
		`<form method="post" action="/ui/services/web/rollback"><input type="hidden" name="to" value="` + newD + `"><button class="rollback" type="submit">Roll back to this</button></form>`,
		// db's history failed: said, without the store's words.
		`<tr data-history="db"><td class="service first"><strong>db</strong></td><td class="wrap" colspan="5"><span class="muted">History not read: the updater&#39;s log says why</span>`,
	} {
		if !strings.Contains(hist, want) {
			t.Errorf("the history lacks %s\n%s", want, hist)
		}
	}
	if strings.Contains(body, "10.0.0.7") || strings.Contains(body, "<script>alert") {
		t.Error("the page shows the store's error or an unescaped reason")
	}
	if n := strings.Count(hist, "Roll back to this"); n != 1 {
		t.Errorf("%d Roll back to this buttons, want 1 (newD only)", n)
	}
	for _, svc := range []string{"web", "db"} {
		if !strings.Contains(body, `<form method="post" action="/ui/services/`+svc+`/rollback"><button class="rollback" type="submit"`) {
			t.Errorf("no Roll back button for %s", svc)
		}
	}
	req := browser("GET", "/")
	req.SetBasicAuth("ops", readToken)
	if ro := r.do(req).Body.String(); strings.Contains(ro, "/rollback") || !strings.Contains(ro, `data-history="web"`) {
		t.Error("the read-only token sees a rollback button, or no history")
	}
}

// The Roll back button starts the rollback by "page" and sends the
// browser back with what happened; another site can't press it, nor can
// the read-only token; a crafted link shows nothing of its author's
// choosing.
func TestStatusPageRollbackButton(t *testing.T) {
	r, fr := historyRig(t)
	post := func(path, form string) *http.Request {
		req := httptest.NewRequest("POST", path, strings.NewReader(form))
		req.SetBasicAuth("ops", apiToken)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return req
	}
	rec := r.do(post("/ui/services/web/rollback", ""))
	loc, _ := url.Parse(rec.Header().Get("Location"))
	if rec.Code != http.StatusSeeOther || loc.Path != "/" || loc.Query().Get("outcome") != "started" || loc.Query().Get("to") != newD {
		t.Fatalf("Roll back: %d to %s", rec.Code, loc)
	}
	page := r.do(browser("GET", loc.String())).Body.String()
	if !strings.Contains(page, `<p class="msg">Rolling back web to sha256:bbbbbbbbbbbb: it deploys now, without its hooks; its history below shows the outcome.</p>`) {
		t.Error("the page does not say the rollback began")
	}
	rec = r.do(post("/ui/services/web/rollback", "to="+oldD))
	if loc, _ := url.Parse(rec.Header().Get("Location")); loc.Query().Get("to") != oldD || loc.Query().Get("outcome") != "started" {
		t.Fatalf("Roll back to this: to %s", loc)
	}
	if got := fr.asked(); len(got) != 2 || got[0].To != "" || got[1].To != oldD || got[0].By != "page" || got[1].Service != "web" {
		t.Fatalf("asked %+v", got)
	}

	rec = r.do(post("/ui/services/web/rollback", "to=latest"))
	if loc, _ := url.Parse(rec.Header().Get("Location")); loc.Query().Get("outcome") != "bad-digest" {
		t.Fatalf("a bad digest: %s", loc)
	}
	fr.err = fmt.Errorf("roll back web: %w", deploy.ErrNoRollbackTarget)
	rec = r.do(post("/ui/services/web/rollback", ""))
	loc, _ = url.Parse(rec.Header().Get("Location"))
	if page := r.do(browser("GET", loc.String())).Body.String(); !strings.Contains(page, "web was not rolled back: its history has no earlier successful deploy.") {
		t.Errorf("a refusal (%s) is not said", loc)
	}
	fr.err = nil

	cross := post("/ui/services/web/rollback", "")
	cross.Header.Set("Sec-Fetch-Site", "cross-site")
	cross.Header.Set("Origin", "https://evil.example")
	if rec := r.do(cross); rec.Code != http.StatusForbidden {
		t.Fatalf("cross-site post: %d, want 403", rec.Code)
	}
	ro := post("/ui/services/web/rollback", "")
	ro.SetBasicAuth("ops", readToken)
	if rec := r.do(ro); rec.Code != http.StatusForbidden {
		t.Fatalf("the read-only token's post: %d, want 403", rec.Code)
	}
	if n := len(fr.asked()); n != 3 {
		t.Fatalf("%d rollbacks asked for, want 3: a refused post or a bad digest must not reach them", n)
	}
	for _, q := range []string{"?rollback=evil&outcome=started", "?rollback=web&outcome=pwned", "?rollback=<b>web</b>&outcome=started",
		"?rollback=web&outcome=started&to=" + url.QueryEscape("<b>sha256:x</b>")} {
		page := r.do(browser("GET", "/"+q)).Body.String()
		msg, _, _ := strings.Cut(page[max(0, strings.Index(page, `class="msg"`)):], "</p>")
		if strings.Contains(msg, "evil") || strings.Contains(msg, "<b>") || strings.Contains(msg, "&lt;b&gt;") || strings.Contains(q, "pwned") && strings.Contains(page, `class="msg"`) {
			t.Errorf("%s shows %s", q, msg)
		}
	}
}

func TestIsDigest(t *testing.T) {
	for d, want := range map[string]bool{
		"sha256:" + strings.Repeat("0", 64): true, newD: true, "sha256:" + strings.Repeat("a", 63): false, "sha256:" + strings.Repeat("a", 65): false,
		"sha512:" + strings.Repeat("a", 64): false, "sha256:" + strings.Repeat("A", 64): false, "sha256:" + strings.Repeat("g", 64): false, "": false, "r.example/web@" + newD: false,
	} {
		if deploy.IsDigest(d) != want {
			t.Errorf("IsDigest(%q) = %v", d, !want)
		}
	}
}
