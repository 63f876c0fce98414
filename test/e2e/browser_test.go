//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/device"
)

// The status page in a real browser: Debian's chromium, headless, driven
// over the DevTools protocol (chromedp: the Go library that needs no
// driver binary, only the browser), on the real updater, swarm and
// registry. A person's session: the basic-auth prompt, the buttons, the
// page following a deploy by itself, a form of another origin, a phone.

// browserWait bounds one browser action; the page is local.
const browserWait = 30 * time.Second

// newBrowser starts a headless chromium of the test's own (a temporary
// profile) and returns its context; the cleanup ends that process only.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is needed for the status page test (Debian's package: apt-get install chromium; .ci/run installs it): %v", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		// Chromium refuses to run as root with its sandbox, and the suite
		// runs as root (CI does): without it, the sandbox stays off. The
		// browser only ever loads the test's own pages on 127.0.0.1.
		chromedp.NoSandbox,
		// Only the test's servers: no proxy from the environment, nothing
		// fetched in the background.
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("disable-gpu", true),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	started := time.Now()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	v, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`navigator.userAgent`))
	t.Logf("chromium started in %s: %s", time.Since(started).Round(time.Millisecond), v)
	return ctx
}

// tab is a browser tab in a browser context of its own (its own
// credential cache), whose basic-auth prompts are answered as a person
// would: user and password once, and when the same request asks again
// (they were wrong), cancel.
type tab struct {
	ctx     context.Context
	mu      sync.Mutex
	prompts []string // each prompt's scheme and realm
	asked   map[fetch.RequestID]bool
}

func openTab(t *testing.T, browser context.Context, user, password string) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	tb := &tab{ctx: ctx, asked: map[fetch.RequestID]bool{}}
	// Subscribed before the Fetch domain pauses anything. Each handler
	// answers on its own goroutine, never on the one reading the browser.
	paused := chromedp.Events(ctx, fetch.RequestPaused)
	auth := chromedp.Events(ctx, fetch.AuthRequired)
	go func() {
		for ev, err := range paused {
			if err != nil {
				return
			}
			_, _ = chromedp.Call(ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: ev.RequestID})
		}
	}()
	go func() {
		for ev, err := range auth {
			if err != nil {
				return
			}
			tb.mu.Lock()
			again := tb.asked[ev.RequestID]
			tb.asked[ev.RequestID] = true
			tb.prompts = append(tb.prompts, ev.AuthChallenge.Scheme+" "+ev.AuthChallenge.Realm)
			tb.mu.Unlock()
			answer := &fetch.AuthChallengeResponse{Response: fetch.AuthChallengeResponseResponseProvideCredentials, Username: user, Password: password}
			if again {
				answer = &fetch.AuthChallengeResponse{Response: fetch.AuthChallengeResponseResponseCancelAuth}
			}
			_, _ = chromedp.Call(ctx, fetch.ContinueWithAuth, fetch.ContinueWithAuthParams{RequestID: ev.RequestID, AuthChallengeResponse: answer})
		}
	}()
	yes := true
	if _, err := chromedp.Call(ctx, fetch.Enable, fetch.EnableParams{HandleAuthRequests: &yes}); err != nil {
		t.Fatalf("enable the tab's credential prompts: %v", err)
	}
	return tb
}

func (tb *tab) promptsSeen() []string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return append([]string(nil), tb.prompts...)
}

// open navigates to url and returns the document's HTTP status.
func (tb *tab) open(t *testing.T, url string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(url))
	if err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	return resp.Status
}

// eval runs a script in the page and decodes its JSON result into out.
func (tb *tab) eval(t *testing.T, script string, out any) {
	t.Helper()
	if err := tb.try(script, out); err != nil {
		t.Fatalf("in the page: %v\n%s", err, script)
	}
}

func (tb *tab) try(script string, out any) error {
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](script))
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, out)
}

// text is the visible text of the page.
func (tb *tab) text(t *testing.T) string {
	t.Helper()
	var s string
	tb.eval(t, `document.body ? document.body.innerText : ""`, &s)
	return s
}

// waitPage polls cond, a script that yields true or false, until it holds;
// it returns when. A script that fails (the page navigating) is a false.
func (tb *tab) waitPage(t *testing.T, limit time.Duration, what, cond string) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		var ok bool
		if err := tb.try(cond, &ok); err == nil && ok {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting in the browser for %s; the page says:\n%s", limit, what, tb.text(t))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// click presses the element sel with the mouse, as a person would, and
// waits for the page it leads to.
func (tb *tab) click(t *testing.T, sel string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.Click(chromedp.CSS(sel))); err != nil {
		t.Fatalf("click %s: %v\n%s", sel, err, tb.text(t))
	}
}

// message is the line the page shows after a button: it waits for the
// page the button led to.
func (tb *tab) message(t *testing.T) string {
	t.Helper()
	tb.waitPage(t, 15*time.Second, "the page after the button, with its message", `!!document.querySelector(".msg")`)
	var msg string
	tb.eval(t, `document.querySelector(".msg").innerText`, &msg)
	return msg
}

// screenshot saves the whole page as a PNG under the test's artifacts.
func (tb *tab) screenshot(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(artifactsDir(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot for a person to look at: %s", path)
}

// artifactsDir is where a test keeps what a person looks at after the run
// (t.TempDir is removed): $E2E_ARTIFACTS/<test>, by default
// test/e2e/artifacts/<test> (ignored by git).
func artifactsDir(t *testing.T) string {
	t.Helper()
	root := os.Getenv("E2E_ARTIFACTS")
	if root == "" {
		root = "artifacts"
	}
	dir, err := filepath.Abs(filepath.Join(root, t.Name()))
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err != nil {
		t.Fatalf("artifacts directory: %v", err)
	}
	return dir
}

// layoutCheck is what the page's layout looks like in the browser: how
// wide the document is against the window, whether tables or cards show,
// and each cell a person looks for that is not wholly on screen.
const layoutCheck = `(() => {
  const vw = window.innerWidth, problems = [];
  const seen = (el, what) => {
    if (!el) { problems.push(what + ": missing"); return; }
    window.scrollTo(0, 0);
    const top = el.getBoundingClientRect().top;
    window.scrollTo(0, Math.max(0, top - window.innerHeight / 2));
    const r = el.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    if (r.width === 0 || r.height === 0 || r.left < 0 || r.right > vw + 0.5 || !el.contains(hit) || el.innerText.trim() === "") {
      problems.push(what + ": at x " + Math.round(r.left) + ".." + Math.round(r.right) + " of " + vw + " px" +
        (el.contains(hit) ? "" : ", covered or clipped") + (el.innerText.trim() === "" ? ", empty" : ""));
    }
  };
  const services = document.querySelectorAll("#services tr[data-service]");
  for (const tr of services) {
    const n = tr.dataset.service;
    seen(tr.querySelector(".name"), n + " name"); seen(tr.querySelector(".state"), n + " state"); seen(tr.querySelector(".last"), n + " last outcome");
  }
  const deploys = document.querySelectorAll("#deploys tr[data-deploy]");
  for (const tr of deploys) {
    const n = "deploy " + tr.dataset.deploy;
    seen(tr.querySelector(".service"), n + " service"); seen(tr.querySelector(".outcome"), n + " outcome"); seen(tr.querySelector(".took"), n + " duration");
  }
  window.scrollTo(0, 0);
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: vw, services: services.length, deploys: deploys.length,
    header: getComputedStyle(document.querySelector("#services thead")).display, problems: problems};
})()`

type layout struct {
	ScrollWidth int      `json:"scrollWidth"`
	InnerWidth  int      `json:"innerWidth"`
	Services    int      `json:"services"`
	Deploys     int      `json:"deploys"`
	Header      string   `json:"header"`
	Problems    []string `json:"problems"`
}

// checkLayout asserts nothing scrolls sideways and every service's name,
// state and last outcome, every deploy's service, outcome and duration is
// on screen; table says whether the tables show as tables (a wide screen)
// or as cards (a phone).
func (tb *tab) checkLayout(t *testing.T, screen string, table bool) layout {
	t.Helper()
	var l layout
	tb.eval(t, layoutCheck, &l)
	t.Logf("%s: document %d px wide in a %d px window, %d services, %d deploys, table header %s", screen, l.ScrollWidth, l.InnerWidth, l.Services, l.Deploys, l.Header)
	if l.ScrollWidth > l.InnerWidth {
		t.Errorf("%s: the page scrolls sideways: %d px wide in a %d px window", screen, l.ScrollWidth, l.InnerWidth)
	}
	for _, p := range l.Problems {
		t.Errorf("%s: not on screen: %s", screen, p)
	}
	if table != (l.Header != "none") {
		t.Errorf("%s: the services' table header is %q; tables on a wide screen, cards on a phone", screen, l.Header)
	}
	return l
}

// pendingID is the ID of the approval waiting for digest, from the API.
func pendingID(t *testing.T, base, digest string) string {
	t.Helper()
	var d struct {
		Approvals []struct {
			ID, State string
			To        string `json:"to_digest"`
		} `json:"approvals"`
	}
	r := call(t, "GET", base+"/api/v1/deploys", "Bearer "+apiToken, nil, "")
	if err := json.Unmarshal([]byte(r.body), &d); err != nil {
		t.Fatalf("/api/v1/deploys: %d %v", r.status, err)
	}
	for _, a := range d.Approvals {
		if a.To == digest && a.State == "pending" {
			return a.ID
		}
	}
	return ""
}

// approvalState is the state the API gives the approval id.
func approvalState(t *testing.T, base, id string) string {
	t.Helper()
	var d struct {
		Approvals []struct{ ID, State string } `json:"approvals"`
	}
	r := call(t, "GET", base+"/api/v1/deploys", "Bearer "+apiToken, nil, "")
	if err := json.Unmarshal([]byte(r.body), &d); err != nil {
		t.Fatalf("/api/v1/deploys: %d %v", r.status, err)
	}
	for _, a := range d.Approvals {
		if a.ID == id {
			return a.State
		}
	}
	return ""
}

// TestStatusPageInBrowser: two watched services of one stack on one tag,
// one deploying by itself, one waiting for approval. In chromium: wrong
// credentials see nothing; the right ones see both services; a broken
// digest rolled back on the first shows as a warning on the second's
// approval without a reload; Reject quarantines it (Swarm's record);
// another origin's form can't approve; the page follows the next deploy by
// itself; Approve deploys (the spec and the tasks, from Docker); on a
// phone nothing scrolls sideways; a stopped updater shows as stale.
func TestStatusPageInBrowser(t *testing.T) {
	began := time.Now()
	const stack, repo = "e2ebrowser", "e2e/browser"
	v1 := push(t, repo, "v1")
	auto := createService(t, "e2ebrowser_auto", repo, v1, svcOpts{stack: stack, optIn: true})
	gated := createService(t, "e2ebrowser_gated", repo, v1, svcOpts{stack: stack, optIn: true,
		labels: map[string]string{"updater.approve": "manual"}})
	u := startUpdater(t, stack, httpEnv("UPDATER_APPROVAL_TIMEOUT=1h")...)
	base := u.base(t)
	waitFor(t, 30*time.Second, "the first cycle", func() bool { return u.cycles() >= 1 })
	browser := newBrowser(t)

	// 1. The page asks for credentials; wrong ones get nothing.
	wrong := openTab(t, browser, "ops", "not-the-token-0123456789")
	if st := wrong.open(t, base+"/"); st != http.StatusUnauthorized {
		t.Fatalf("the page with a wrong token: HTTP %d, want 401", st)
	}
	if p := wrong.promptsSeen(); len(p) != 2 || !strings.HasPrefix(p[0], "basic updater") {
		t.Fatalf("prompts with a wrong token %q: want the basic-auth prompt, then again after the wrong token", p)
	}
	if txt := wrong.text(t); strings.Contains(txt, "e2ebrowser") || !strings.Contains(txt, "The API token is needed") {
		t.Fatalf("the page with a wrong token shows:\n%s", txt)
	}

	// The right ones show every watched service with its state.
	ops := openTab(t, browser, "ops", apiToken)
	if st := ops.open(t, base+"/"); st != http.StatusOK {
		t.Fatalf("the page with the token: HTTP %d\n%s", st, ops.text(t))
	}
	if p := ops.promptsSeen(); len(p) != 1 {
		t.Fatalf("prompts with the token %q, want one", p)
	}
	var states map[string]string
	ops.eval(t, `Object.fromEntries([...document.querySelectorAll("#services tr[data-service]")].map(tr => [tr.dataset.service, tr.querySelector(".state").innerText.trim()]))`, &states)
	if len(states) != 2 || states["e2ebrowser_auto"] != "up-to-date" || states["e2ebrowser_gated"] != "up-to-date" {
		t.Fatalf("services on the page: %v, want both up-to-date", states)
	}

	// 2. A broken digest: the first service rolls it back, the second asks
	// for approval. The page shows it, and why not to approve, by itself.
	ops.eval(t, `window.noReload = "still this page"`, new(string))
	bad := push(t, repo, "broken")
	u.waitLog(t, deployLimit, 1, "deploy failed", "service", "e2ebrowser_auto", "to_digest", bad)
	u.waitLog(t, 30*time.Second, 1, "deploy pending", "service", "e2ebrowser_gated", "to_digest", bad)
	badID := pendingID(t, base, bad)
	if badID == "" {
		t.Fatal("no pending approval for the broken digest")
	}
	card := fmt.Sprintf("#approval-%s", badID)
	ops.waitPage(t, 15*time.Second, "the approval card with its warning", fmt.Sprintf(
		`(() => { const w = document.querySelector(%q); return !!w && /was rolled back on e2ebrowser_auto, another service of stack e2ebrowser, at .*: ./.test(w.innerText); })()`,
		card+" .warn"))
	var warning string
	ops.eval(t, fmt.Sprintf(`document.querySelector(%q).innerText`, card+" .warn"), &warning)
	t.Logf("the approval's warning: %s", warning)
	var noReload string
	ops.eval(t, `window.noReload || "reloaded"`, &noReload)
	if noReload != "still this page" {
		t.Fatal("the page was reloaded to show the approval: it should follow by itself")
	}

	// 3. Layout, while there is a card, a warning and a rolled-back
	// deploy: tables on a desktop, cards on a phone, nothing sideways.
	if err := chromedp.Do(ops.ctx, chromedp.EmulateViewport(1280, 900)); err != nil {
		t.Fatal(err)
	}
	ops.checkLayout(t, "desktop 1280x900", true)
	ops.screenshot(t, "desktop.png")
	phone := openTab(t, browser, "ops", apiToken)
	if err := chromedp.Do(phone.ctx, chromedp.Emulate(device.IPhone12)); err != nil {
		t.Fatal(err)
	}
	phone.open(t, base+"/")
	if l := phone.checkLayout(t, "phone 390x844", false); l.InnerWidth != 390 || l.Services != 2 || l.Deploys < 1 {
		t.Errorf("phone: %d px window, %d services, %d deploys; want 390, 2, at least 1", l.InnerWidth, l.Services, l.Deploys)
	}
	phone.screenshot(t, "phone.png")

	// 4. Reject on the page quarantines the digest: Swarm keeps the record,
	// the service stays where it is.
	gatedVer := inspect(t, gated).Version.Index
	ops.click(t, card+" button.reject")
	if msg, want := ops.message(t), fmt.Sprintf("Rejected deploy %s: its digest is not deployed until the tag moves.", badID); msg != want {
		t.Fatalf("after Reject the page says %q, want %q", msg, want)
	}
	if st := approvalState(t, base, badID); st != "rejected" {
		t.Fatalf("after Reject the approval is %q", st)
	}
	waitFor(t, 30*time.Second, "the rejected digest's failed-digest record in Swarm", func() bool { return records(t, gated, "failed-digest") == 1 })
	if v := inspect(t, gated).Version.Index; v != gatedVer || specDigest(t, gated) != v1 {
		t.Fatalf("the rejected service moved: version %d -> %d, digest %s", gatedVer, v, specDigest(t, gated))
	}

	// 5. A good digest: the first service deploys it, and the page shows
	// the outcome without a reload, within 10 s of its end.
	ops.eval(t, `window.noReload = "still this page"`, new(string))
	v2 := push(t, repo, "v2")
	row := fmt.Sprintf(`#deploys tr[data-to=%q]`, v2)
	shown := ops.waitPage(t, deployLimit, "the deploy of v2 succeeded on the page", fmt.Sprintf(
		`(() => { const tr = document.querySelector(%q); return !!tr && tr.querySelector(".service").innerText.trim() === "e2ebrowser_auto" && tr.querySelector(".outcome").innerText.trim() === "succeeded"; })()`, row))
	u.waitLog(t, 10*time.Second, 1, "deploy succeeded", "service", "e2ebrowser_auto", "to_digest", v2)
	ended, err := time.Parse(time.RFC3339Nano, fmt.Sprint(u.find("deploy succeeded", "service", "e2ebrowser_auto", "to_digest", v2)["time"]))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the page showed the deploy's success %s after the updater logged it", shown.Sub(ended).Round(time.Millisecond))
	if shown.Sub(ended) > 10*time.Second {
		t.Errorf("the page showed the deploy %s after it ended, want within 10 s", shown.Sub(ended).Round(time.Millisecond))
	}
	if !allRunning(t, auto, v2) {
		t.Fatal("the page shows a success Docker does not")
	}
	ops.eval(t, `window.noReload || "reloaded"`, &noReload)
	if noReload != "still this page" {
		t.Fatal("the page was reloaded to follow the deploy")
	}

	// 6. Another origin's form, in the same browser (credentials cached),
	// posts Approve: refused, nothing changes.
	u.waitLog(t, 30*time.Second, 1, "deploy pending", "service", "e2ebrowser_gated", "to_digest", v2)
	goodID := pendingID(t, base, v2)
	if goodID == "" {
		t.Fatal("no pending approval for v2")
	}
	evil := serveEvil(t, base+"/ui/deploys/"+goodID+"/approve")
	if st := ops.open(t, evil); st != http.StatusOK {
		t.Fatalf("the other origin's page: HTTP %d", st)
	}
	ops.click(t, "#win")
	ops.waitPage(t, 15*time.Second, "the answer to the cross-origin post", fmt.Sprintf(`location.href !== %q && document.readyState === "complete"`, evil))
	refusal := ops.text(t)
	t.Logf("the other origin's post got: %q", strings.TrimSpace(refusal))
	if strings.Contains(refusal, "Approved") || strings.Contains(refusal, "e2ebrowser") || !strings.Contains(refusal, "cross-origin request") {
		t.Fatalf("the cross-origin post was taken: the browser shows\n%s", refusal)
	}
	if st := approvalState(t, base, goodID); st != "pending" {
		t.Fatalf("after the cross-origin post the approval is %q, want pending", st)
	}
	if v := inspect(t, gated).Version.Index; v != gatedVer || specDigest(t, gated) != v1 {
		t.Fatalf("the cross-origin post moved the service: version %d -> %d", gatedVer, v)
	}

	// 7. Approve on the page deploys: Docker's spec pinned to v2, every task
	// running it.
	ops.open(t, base+"/")
	ops.click(t, fmt.Sprintf("#approval-%s button.approve", goodID))
	if msg, want := ops.message(t), fmt.Sprintf("Approved deploy %s: it deploys now.", goodID); msg != want {
		t.Fatalf("after Approve the page says %q, want %q", msg, want)
	}
	waitSpec(t, gated, v2, deployLimit)
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "service", "e2ebrowser_gated", "to_digest", v2)
	if !allRunning(t, gated, v2) {
		t.Fatal("approved v2 reported but not running on every task")
	}
	if img := inspect(t, gated).Spec.TaskTemplate.ContainerSpec.Image; img != image(repo)+"@"+v2 {
		t.Fatalf("spec image %q, want %q", img, image(repo)+"@"+v2)
	}

	// 8. The page says when its data is stale: the updater stops, the page
	// stays, and says since when it shows old data.
	ops.waitPage(t, 15*time.Second, "a fresh page", `document.getElementById("stale").hidden === true`)
	if err := u.stop(syscall.SIGTERM); err != nil {
		t.Logf("updater stopped: %v", err)
	}
	ops.waitPage(t, 15*time.Second, "the stale line", `(() => { const s = document.getElementById("stale"); return !s.hidden && s.innerText.startsWith("Stale: not updated since "); })()`)
	var stale string
	ops.eval(t, `document.getElementById("stale").innerText`, &stale)
	t.Logf("with the updater stopped the page says: %s", stale)
	t.Logf("the browser test took %s", time.Since(began).Round(time.Second))
}

// serveEvil serves, on another port of 127.0.0.1 (another origin), a page
// with a form that posts to target, and returns its address.
func serveEvil(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><title>win a prize</title><form method="post" action=%q><button id="win" type="submit">Win a prize</button></form>`, target)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/"
}
