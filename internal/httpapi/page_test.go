package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

func browser(method, target string) *http.Request {
	req := httptest.NewRequest(method, target, nil)
	req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("ops:"+apiToken)))
	return req
}

// The page shows the services, what waits for approval with its buttons,
// and the last deploys; what it shows is escaped.
func TestStatusPageRenders(t *testing.T) {
	r := newRig(t)
	r.pipeline.StatusFn = func() deploy.Status {
		return deploy.Status{Services: plans(), Listed: r.now, Checked: r.now.Add(-10 * time.Second)}
	}
	r.pipeline.ApprovalsFn = func() []deploy.Approval {
		return []deploy.Approval{
			{ID: "0a1b2c", ServiceID: "svc1", ServiceName: "web", Ref: "r.example/web:1", From: oldD, To: newD,
				State: deploy.ApprovalPending, Requested: r.now, Expires: r.now.Add(24 * time.Hour)},
			{ID: "99ff", ServiceName: "web", To: oldD, State: deploy.ApprovalSuperseded, Reason: "superseded by sha256:bbbb", Decided: r.now},
		}
	}
	rel := deploy.Release{ID: "d1", ServiceID: "svc2", ServiceName: "db", Ref: "r.example/db:15", From: newD, To: oldD, Started: r.now}
	r.history.Report(deploy.Event{Kind: deploy.Started, Release: rel})
	r.history.Report(deploy.Event{Kind: deploy.Failed, Release: rel, Phase: deploy.PhaseRollout, RolledBack: true,
		Reason: `<script>alert("x")</script> unhealthy`, Duration: 42 * time.Second})

	rec := r.do(browser("GET", "/"))
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("status %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	body := rec.Body.String()
	for _, want := range []string{
		`<meta name="viewport" content="width=device-width, initial-scale=1">`,
		"<title>updater (1 waiting)</title>",
		"ready", "last full check 10s ago", "version test",
		`<form method="post" action="/ui/deploys/0a1b2c/approve">`,
		`<form method="post" action="/ui/deploys/0a1b2c/reject">`,
		"<strong>web</strong> <span class=\"muted\">(approval)</span>",
		"<code>r.example/db:15</code>", "<code>aaaaaaaaaaaa</code>", "<code>bbbbbbbbbbbb</code>",
		"awaiting-approval", "up-to-date",
		"rolled_back", "42s", "&lt;script&gt;",
		"superseded by sha256:bbbb",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>alert") || strings.Count(body, "<script") != 1 {
		t.Error("the page shows a reason unescaped")
	}
	for _, h := range []string{"Content-Security-Policy", "X-Frame-Options"} {
		if rec.Header().Get(h) == "" {
			t.Errorf("no %s header: the approve buttons could be framed", h)
		}
	}
}

func TestStatusPageEmpty(t *testing.T) {
	r := newRig(t)
	rec := r.do(browser("GET", "/"))
	body := rec.Body.String()
	for _, want := range []string{"Nothing waits for approval.", "No watched service seen yet.", "No deploy since the updater started.", "not ready"} {
		if !strings.Contains(body, want) {
			t.Errorf("empty page lacks %q", want)
		}
	}
}

// A browser without the token gets a basic-auth prompt and nothing else.
func TestStatusPageAuth(t *testing.T) {
	r := newRig(t)
	r.pipeline.StatusFn = func() deploy.Status { return deploy.Status{Services: plans()} }
	for _, req := range []*http.Request{
		httptest.NewRequest("GET", "/", nil),
		func() *http.Request {
			q := httptest.NewRequest("GET", "/", nil)
			q.SetBasicAuth("ops", "wrong")
			return q
		}(),
		httptest.NewRequest("POST", "/ui/deploys/0a1b2c/approve", nil),
	} {
		rec := r.do(req)
		if rec.Code != http.StatusUnauthorized || !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Basic ") {
			t.Fatalf("%s %s: %d %q, want 401 with a basic-auth prompt", req.Method, req.URL, rec.Code, rec.Header().Get("WWW-Authenticate"))
		}
		if strings.Contains(rec.Body.String(), "web") {
			t.Fatal("the refusal shows a service")
		}
	}
	if rec := r.do(authed("GET", "/", nil)); rec.Code != http.StatusOK {
		t.Fatalf("bearer token on the page: %d", rec.Code)
	}
	off := newRig(t, func(c *Config) { c.APIToken = "" })
	if rec := off.do(browser("GET", "/")); rec.Code != http.StatusForbidden {
		t.Fatalf("page with the API off: %d", rec.Code)
	}
}

// The buttons decide and send the browser back to the page with what
// happened; another site can't press them for the browser.
func TestStatusPageButtons(t *testing.T) {
	r := newRig(t)
	var got []string
	r.decisions.ApproveFn = func(_ context.Context, id string) (deploy.Approval, error) {
		got = append(got, "approve "+id)
		return deploy.Approval{ID: id, ServiceName: "web", To: newD, State: deploy.ApprovalApproved}, nil
	}
	r.decisions.RejectFn = func(_ context.Context, id string) (deploy.Approval, error) {
		got = append(got, "reject "+id)
		return deploy.Approval{}, deploy.ErrDecided
	}
	rec := r.do(browser("POST", "/ui/deploys/0a1b2c/approve"))
	if rec.Code != http.StatusSeeOther {
		t.Fatalf("approve: %d", rec.Code)
	}
	loc, _ := url.Parse(rec.Header().Get("Location"))
	if loc.Path != "/" || loc.Query().Get("deploy") != "0a1b2c" || loc.Query().Get("outcome") != "approved" {
		t.Fatalf("redirect to %s", loc)
	}
	page := r.do(browser("GET", loc.String())).Body.String()
	if !strings.Contains(page, `<p class="msg">Approved deploy 0a1b2c: it deploys now.</p>`) {
		t.Error("the page does not say what the button did")
	}
	rec = r.do(browser("POST", "/ui/deploys/0a1b2c/reject"))
	if loc, _ := url.Parse(rec.Header().Get("Location")); loc.Query().Get("outcome") != "refused" {
		t.Fatalf("a refused rejection redirects to %s", loc)
	}
	// A crafted link shows nothing of its author's choosing.
	for _, q := range []string{"?deploy=<b>x</b>&outcome=approved", "?deploy=0a1b&outcome=pwned", "?msg=Approved+by+the+CEO"} {
		if page := r.do(browser("GET", "/"+q)).Body.String(); strings.Contains(page, `class="msg"`) {
			t.Errorf("%s shows a message", q)
		}
	}

	cross := browser("POST", "/ui/deploys/0a1b2c/approve")
	cross.Header.Set("Sec-Fetch-Site", "cross-site")
	cross.Header.Set("Origin", "https://evil.example")
	if rec := r.do(cross); rec.Code != http.StatusForbidden {
		t.Fatalf("cross-site post: %d, want 403", rec.Code)
	}
	api := authed("POST", "/api/v1/deploys/0a1b2c/approve", nil)
	api.Header.Set("Origin", "https://evil.example")
	api.Header.Set("Sec-Fetch-Site", "cross-site")
	if rec := r.do(api); rec.Code != http.StatusForbidden {
		t.Fatalf("cross-site API post: %d, want 403", rec.Code)
	}
	if strings.Join(got, ",") != "approve 0a1b2c,reject 0a1b2c" {
		t.Fatalf("decisions %v: the cross-site posts must not reach them", got)
	}
}

// The page's one script, its refresh, is allowed by its hash: the browser
// runs it (the hash matches what the page carries byte for byte) and would
// run no other. The refreshed part and the staleness line are there.
func TestStatusPageScriptAllowedByHash(t *testing.T) {
	r := newRig(t)
	rec := r.do(browser("GET", "/"))
	body := rec.Body.String()
	_, script, ok := strings.Cut(body, "<script>")
	script, _, ok2 := strings.Cut(script, "</script>")
	if !ok || !ok2 || script == "" {
		t.Fatal("the page has no script")
	}
	sum := sha256.Sum256([]byte(script))
	src := "script-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "';"
	if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, src) || strings.Contains(csp, "unsafe-inline'; connect") ||
		!strings.Contains(csp, "connect-src 'self'") {
		t.Fatalf("CSP %q does not allow the page's script by its hash (%s) alone", csp, src)
	}
	for _, want := range []string{`<p id="stale" role="status" hidden></p>`, `<div id="live">`, `<noscript><meta http-equiv="refresh"`} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// A pending approval of a digest that failed or was rolled back on another
// service of the same stack says so next to its buttons: which service,
// when, the reason's first line, escaped. A success, another stack, another
// digest or the service itself say nothing.
func TestStatusPageApprovalWarning(t *testing.T) {
	r := newRig(t)
	pending := deploy.Approval{ID: "0a1b2c", ServiceID: "svc1", ServiceName: "web", Stack: "site", Ref: "r.example/web:1",
		From: oldD, To: newD, State: deploy.ApprovalPending, Requested: r.now, Expires: r.now.Add(time.Hour)}
	quiet := deploy.Approval{ID: "3d4e5f", ServiceID: "svc3", ServiceName: "api", Stack: "other", Ref: "r.example/web:1",
		From: oldD, To: newD, State: deploy.ApprovalPending, Requested: r.now, Expires: r.now.Add(time.Hour)}
	r.pipeline.ApprovalsFn = func() []deploy.Approval { return []deploy.Approval{pending, quiet} }
	report := func(id, svcID, name, stack, to string, ev deploy.Event) {
		rel := deploy.Release{ID: id, ServiceID: svcID, ServiceName: name, Stack: stack, To: to, Started: r.now.Add(-time.Minute)}
		r.history.Report(deploy.Event{Kind: deploy.Started, Release: rel})
		ev.Release = rel
		r.history.Report(ev)
	}
	// What must not warn: the other stack's failure, another digest's,
	// the service's own, a success on a sibling.
	report("e1", "svc9", "worker", "elsewhere", newD, deploy.Event{Kind: deploy.Failed, RolledBack: true, Reason: "other stack"})
	report("e2", "svc2", "worker", "site", oldD, deploy.Event{Kind: deploy.Failed, Reason: "other digest"})
	report("e3", "svc1", "web", "site", newD, deploy.Event{Kind: deploy.Failed, Reason: "its own"})
	report("e4", "svc4", "cron", "site", newD, deploy.Event{Kind: deploy.Succeeded})
	body := r.do(browser("GET", "/")).Body.String()
	if strings.Contains(body, `class="warn"`) {
		t.Fatalf("a warning without a sibling's failure:\n%s", body)
	}

	report("e5", "svc2", "worker<b>", "site", newD, deploy.Event{Kind: deploy.Failed, RolledBack: true, Duration: 30 * time.Second,
		Reason: "task failed its health check: <exit 1>\nsecond line stays out"})
	body = r.do(browser("GET", "/")).Body.String()
	card, _, _ := strings.Cut(body[strings.Index(body, `id="approval-0a1b2c"`):], "</div>")
	want := `<p class="warn" role="alert">This digest was rolled back on worker&lt;b&gt;, another service of stack site, at ` +
		r.now.Add(-30*time.Second).UTC().Format("2006-01-02 15:04:05Z") + `: task failed its health check: &lt;exit 1&gt;.</p>`
	if !strings.Contains(card, want) {
		t.Fatalf("the approval card lacks\n%s\n%s", want, card)
	}
	if strings.Index(card, want) > strings.Index(card, `action="/ui/deploys/0a1b2c/approve"`) {
		t.Error("the warning comes after the Approve button")
	}
	if strings.Contains(card, "second line") {
		t.Error("the warning shows more than the reason's first line")
	}
	other, _, _ := strings.Cut(body[strings.Index(body, `id="approval-3d4e5f"`):], "</div>")
	if strings.Contains(other, `class="warn"`) {
		t.Error("another stack's approval warns of this stack's rollback")
	}
}

// A reason of any length is cut: Swarm's can name every task it tried.
func TestApprovalWarningBounded(t *testing.T) {
	a := deploy.Approval{ServiceID: "svc1", Stack: "site", To: newD}
	d := Deploy{Release: deploy.Release{ServiceID: "svc2", ServiceName: "worker", Stack: "site", To: newD},
		State: string(deploy.OutcomeFailed), Reason: strings.Repeat("task failed; ", 100)}
	w := approvalWarning(a, []Deploy{d})
	if !strings.HasPrefix(w, "This digest failed on worker, another service of stack site, at ") || !strings.HasSuffix(w, "…") ||
		len([]rune(w)) > 400 {
		t.Fatalf("warning of %d runes: %q", len([]rune(w)), w)
	}
}

// A deploy whose canary is judged shows its canary line; promoted, the
// rollout count instead.
func TestStatusPageCanary(t *testing.T) {
	r := newRig(t)
	rel := deploy.Release{ID: "d1", ServiceID: "svc1", ServiceName: "web", Ref: "r.example/web:v5", From: oldD, To: newD, Started: r.now}
	r.history.Report(deploy.Event{Kind: deploy.Started, Release: rel})
	r.history.Report(canaryEval(rel, "0.3, not ≤ 0.05 (1 of 2 failures allowed) · 40s left"))
	line := `<span class="canary">canary 1 of 4 on v5 (sha256:bbbbbbbbbbbb) · 0.3, not ≤ 0.05 (1 of 2 failures allowed) · 40s left</span>`
	if body := r.do(browser("GET", "/")).Body.String(); !strings.Contains(body, line) {
		t.Errorf("page lacks the canary line %q:\n%s", line, body)
	}
	r.history.Report(deploy.Event{Kind: deploy.Progress, Release: rel, Phase: deploy.PhaseRollout, Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 2, Total: 4}})
	body := r.do(browser("GET", "/")).Body.String()
	if strings.Contains(body, `class="canary"`) || !strings.Contains(body, "rollout 2/4") {
		t.Errorf("promoted: the canary's line, or no rollout count:\n%s", body)
	}
}
