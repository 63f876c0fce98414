package httpapi

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// post sends one webhook to base and returns the status and body.
func post(t *testing.T, c *http.Client, base, query string, body io.Reader, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", base+"/hooks/registry"+query, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// heapInUse is the bytes of live and not yet swept heap objects, read
// without stopping the world.
func heapInUse() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// 200 parallel 1 MiB webhooks without the secret, over real connections:
// each is refused (401, or 503 for a signed one past the body slots),
// none asks for anything, the heap stays bounded because an unsigned
// body is never read and a signed one only into one of a few slots, and
// the log has one line for all of them.
func TestWebhookFlood(t *testing.T) {
	r := newRig(t)
	base := "http://" + r.serve(nil)
	payload := bytes.Repeat([]byte("x"), maxWebhookBody) // shared by every request: the client holds one copy
	credentials := []struct {
		query  string
		header map[string]string
	}{
		{"", nil},
		{"?token=wrong-token-0123456789abcdef", nil},
		{"", map[string]string{"Authorization": "Bearer wrong-token-0123456789abcdef"}},
		{"", map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": "sha256=" + strings.Repeat("0", 64)}},
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: -1}}
	defer client.CloseIdleConnections()

	runtime.GC()
	base0 := heapInUse()
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if h := heapInUse(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()

	const n, closedEarly = 200, -1
	statuses, errs := make([]int, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := credentials[i%len(credentials)]
			req, err := http.NewRequest("POST", base+"/hooks/registry"+c.query, bytes.NewReader(payload))
			if err != nil {
				panic(err)
			}
			for k, v := range c.header {
				req.Header.Set(k, v)
			}
			resp, err := client.Do(req)
			switch {
			case errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET):
				// Refused before its body was read, the connection closed
				// while the client still wrote it: the server's count below
				// says it was a refusal.
				statuses[i] = closedEarly
			case err != nil:
				errs[i] = err
			default:
				statuses[i] = resp.StatusCode
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled

	byStatus := map[int]int{}
	for i, s := range statuses {
		if errs[i] != nil {
			t.Errorf("post %d: %v", i, errs[i])
		}
		byStatus[s]++
	}
	if byStatus[http.StatusUnauthorized]+byStatus[http.StatusServiceUnavailable]+byStatus[closedEarly] != n {
		t.Fatalf("statuses %v, want all %d refused with 401 or 503 (or closed unread: %d)", byStatus, n, closedEarly)
	}
	if p, c, d := r.requests.asked(); len(p)+c+len(d) != 0 {
		t.Fatalf("refused webhooks asked for pushes %v, %d checks, deploys %v", p, c, d)
	}
	refused := 0
	for k, v := range r.counter.snapshot() {
		if strings.HasSuffix(k, " unauthorized") || strings.HasSuffix(k, " busy") {
			refused += v
		}
	}
	if refused != n {
		t.Errorf("counted %d refusals (%v), want %d", refused, r.counter.snapshot(), n)
	}
	if lines := strings.Count(r.logs.String(), `"msg":"webhook refused"`); lines != 1 {
		t.Errorf("%d log lines for %d refusals, want 1", lines, n)
	}
	// Measured (go test -race -count=5 -run TestWebhookFlood -v, with
	// and without -race): 7-15 MiB over the baseline: the 4 body slots'
	// buffers (1 MiB each, made once) and 400 connections' buffers. With
	// every body read before the credential check, as it was, it was
	// 58 MiB.
	grew := int64(peak.Load()) - int64(base0)
	t.Logf("statuses %v; heap peak %.1f MiB over a baseline of %.1f MiB", byStatus, float64(grew)/(1<<20), float64(base0)/(1<<20))
	const limit = 24 << 20
	if grew > limit {
		t.Fatalf("the heap grew by %.1f MiB during the flood, want under %d MiB", float64(grew)/(1<<20), limit>>20)
	}
}

// A request whose token is wrong is answered before its body is read:
// the body it announces never comes, and the answer does anyway.
func TestWebhookTokenCheckedBeforeBody(t *testing.T) {
	r := newRig(t)
	addr := r.serve(nil)
	for _, head := range []string{
		"POST /hooks/registry?token=wrong-token-0123456789abcdef HTTP/1.1\r\n",
		"POST /hooks/registry HTTP/1.1\r\nAuthorization: Bearer wrong-token-0123456789abcdef\r\n",
		"POST /hooks/registry HTTP/1.1\r\n",
	} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "%sHost: x\r\nContent-Length: %d\r\n\r\n{", head, maxWebhookBody)
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		status := make([]byte, 12)
		_, err = io.ReadFull(conn, status)
		conn.Close()
		if err != nil || string(status) != "HTTP/1.1 401" {
			t.Fatalf("%q with its body unsent: %q, %v; want a 401 at once", head, status, err)
		}
	}
}

// Signed bodies past the slots are answered 503 with Retry-After, and
// taken again once a slot is free.
func TestWebhookBodySlots(t *testing.T) {
	r := newRig(t)
	addr := r.serve(nil)
	var conns []net.Conn
	for range maxBodiesInFlight {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		// Headers and a first byte: the handler holds a slot, reading.
		fmt.Fprintf(conn, "POST /hooks/registry HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: package\r\nX-Hub-Signature-256: %s\r\nContent-Length: %d\r\n\r\n{",
			sign(githubPackage, secret), len(githubPackage))
	}
	taken := func() int { return cap(r.s.hooks.bodies) - len(r.s.hooks.bodies) }
	for deadline := time.Now().Add(5 * time.Second); taken() < maxBodiesInFlight; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d slots taken", taken(), maxBodiesInFlight)
		}
	}
	signed := map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": sign(githubPackage, secret)}
	req, _ := http.NewRequest("POST", "http://"+addr+"/hooks/registry", strings.NewReader(githubPackage))
	for k, v := range signed {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != retryAfter {
		t.Fatalf("a fifth body: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if r.counter.get("github busy") != 1 {
		t.Errorf("counts %v, want one github busy", r.counter.snapshot())
	}
	io.WriteString(conns[0], githubPackage[1:]) // the first sender finishes: its slot frees
	conns[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(io.LimitReader(conns[0], 12)); err != nil || string(got) != "HTTP/1.1 202" {
		t.Fatalf("the finished body: %q, %v", got, err)
	}
	for _, c := range conns {
		c.Close()
	}
	for deadline := time.Now().Add(5 * time.Second); taken() > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d slots still taken after their senders left", taken())
		}
	}
	if got, body := post(t, http.DefaultClient, "http://"+addr, "", strings.NewReader(strings.Replace(githubPackage, `"main"`, `"v2"`, 1)),
		map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": sign(strings.Replace(githubPackage, `"main"`, `"v2"`, 1), secret)}); got != http.StatusAccepted {
		t.Fatalf("a body once the slots are free: %d %s", got, body)
	}
}

// distributionEvents is a notification with n manifest pushes, each of
// its own tag.
func distributionEvents(n int) string {
	var b strings.Builder
	b.WriteString(`{"events": [`)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"action":"push","target":{"repository":"team/app","tag":"t%d"}}`, i)
	}
	b.WriteString("]}")
	return b.String()
}

// A payload with 10,000 events, over a real connection, is cut at 100:
// it asks for one full check and no push; 100 events are 100 pushes.
func TestWebhookEventsCut(t *testing.T) {
	r := newRig(t)
	base := "http://" + r.serve(nil)
	bearer := map[string]string{"Authorization": "Bearer " + secret}
	big := distributionEvents(10000)
	if len(big) > maxWebhookBody {
		t.Fatalf("the payload is %d bytes, over the body limit", len(big))
	}
	got, body := post(t, http.DefaultClient, base, "", strings.NewReader(big), bearer)
	if got != http.StatusAccepted || !strings.Contains(body, "every watched service") || !strings.Contains(body, "more than 100 events in one payload") {
		t.Fatalf("10,000 events: %d %s, want a full check for more than 100 events", got, body)
	}
	if _, err := parseDistribution([]byte(distributionEvents(maxEvents + 1))); !errors.Is(err, errTooMany) {
		t.Fatalf("101 events: %v, want errTooMany", err)
	}
	if p, c, _ := r.requests.asked(); len(p) != 0 || c != 1 {
		t.Fatalf("10,000 events asked for %d pushes and %d checks, want one check", len(p), c)
	}
	if r.counter.get("distribution full_check") != 1 {
		t.Errorf("counts %v", r.counter.snapshot())
	}
	if got, body := post(t, http.DefaultClient, base, "", strings.NewReader(distributionEvents(maxEvents)), bearer); got != http.StatusAccepted {
		t.Fatalf("100 events: %d %s", got, body)
	}
	if p, c, _ := r.requests.asked(); len(p) != maxEvents || c != 1 {
		t.Fatalf("100 events asked for %d pushes (and %d checks in all), want 100", len(p), c)
	}
}

// The tags handed to the trigger are bounded per window: past
// maxPendingPushes, a payload is one full check; a window later, pushes
// again.
func TestWebhookPushBudget(t *testing.T) {
	r := newRig(t)
	bearer := func(body string) *http.Request {
		req := httptest.NewRequest("POST", "/hooks/registry", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+secret)
		return req
	}
	batch := func(k int) string { // 100 tags of their own
		return strings.ReplaceAll(distributionEvents(maxEvents), `"tag":"t`, fmt.Sprintf(`"tag":"b%d-`, k))
	}
	for k := range maxPendingPushes / maxEvents {
		if rec := r.do(bearer(batch(k))); rec.Code != http.StatusAccepted {
			t.Fatalf("batch %d: %d %s", k, rec.Code, rec.Body)
		}
	}
	// The same tags again cost nothing: they are pending already.
	if rec := r.do(bearer(batch(0))); rec.Code != http.StatusAccepted {
		t.Fatalf("a batch again: %d", rec.Code)
	}
	if p, c, _ := r.requests.asked(); len(p) != maxPendingPushes+maxEvents || c != 0 {
		t.Fatalf("within the budget: %d pushes, %d checks", len(p), c)
	}
	if rec := r.do(bearer(batch(99))); rec.Code != http.StatusAccepted || !strings.Contains(rec.Body.String(), "every watched service") {
		t.Fatalf("past the budget: %d %s, want a full check", rec.Code, rec.Body)
	}
	if p, c, _ := r.requests.asked(); len(p) != maxPendingPushes+maxEvents || c != 1 {
		t.Fatalf("past the budget: %d pushes, %d checks; want no more pushes and one check", len(p), c)
	}
	r.advance(pushWindow)
	if rec := r.do(bearer(batch(99))); rec.Code != http.StatusAccepted || strings.Contains(rec.Body.String(), "every watched service") {
		t.Fatalf("a window later: %d %s, want pushes", rec.Code, rec.Body)
	}
}

// A replayed GitHub delivery, over a real connection, is a no-op: the
// same delivery ID, or the same signed body under a new ID, within ten
// minutes asks for nothing more; after them, it is a delivery again.
func TestWebhookGitHubReplay(t *testing.T) {
	r := newRig(t)
	base := "http://" + r.serve(nil)
	deliver := func(id, body string) (int, string) {
		return post(t, http.DefaultClient, base, "", strings.NewReader(body),
			map[string]string{"X-GitHub-Event": "package", "X-GitHub-Delivery": id, "X-Hub-Signature-256": sign(body, secret)})
	}
	other := strings.Replace(githubPackage, `"main"`, `"v2"`, 1)
	if got, body := deliver("72d3162e-cc78-11e3-81ab-4c9367dc0958", githubPackage); got != http.StatusAccepted {
		t.Fatalf("first delivery: %d %s", got, body)
	}
	for _, tt := range []struct{ name, id, body string }{
		{"the same delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958", githubPackage},
		{"the same body under a new ID", "0b1c2d3e-0000-11e3-81ab-4c9367dc0958", githubPackage},
		{"a new body under the same ID", "72d3162e-cc78-11e3-81ab-4c9367dc0958", other},
	} {
		if got, body := deliver(tt.id, tt.body); got != http.StatusOK || !strings.Contains(body, "taken already") {
			t.Errorf("%s: %d %s, want 200 ignored", tt.name, got, body)
		}
	}
	if p, _, _ := r.requests.asked(); len(p) != 1 {
		t.Fatalf("replays asked for pushes: %v", p)
	}
	if r.counter.get("github replayed") != 3 {
		t.Errorf("counts %v, want 3 replays", r.counter.snapshot())
	}
	r.advance(replayWindow + time.Second)
	if got, body := deliver("72d3162e-cc78-11e3-81ab-4c9367dc0958", githubPackage); got != http.StatusAccepted {
		t.Fatalf("after the window: %d %s", got, body)
	}
}

// The replay memory is bounded: the oldest go first.
func TestReplaysBounded(t *testing.T) {
	rp := replays{at: map[string]time.Time{}}
	now := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	for i := range maxDeliveries + 500 {
		if rp.seen(now, fmt.Sprintf("delivery %d", i)) {
			t.Fatalf("delivery %d seen before", i)
		}
	}
	if len(rp.at) > maxDeliveries || len(rp.order) > maxDeliveries {
		t.Fatalf("%d keys, %d in order; want at most %d", len(rp.at), len(rp.order), maxDeliveries)
	}
	if !rp.seen(now, fmt.Sprintf("delivery %d", maxDeliveries+499)) || rp.seen(now, "delivery 0") {
		t.Fatal("the newest should be remembered, the oldest forgotten")
	}
}

// Each source has its own secret when one is set: the default then opens
// only the sources without one, and no source's secret opens another.
func TestWebhookSecretsPerSource(t *testing.T) {
	const (
		ghKey   = "github-secret-0123456789abcdef"
		hubKey  = "hub-secret-0123456789abcdef"
		distKey = "dist-secret-0123456789abcdef"
	)
	github := func(key string) *http.Request {
		req := httptest.NewRequest("POST", "/hooks/registry", strings.NewReader(githubPackage))
		req.Header.Set("X-GitHub-Event", "package")
		req.Header.Set("X-Hub-Signature-256", sign(githubPackage, key))
		return req
	}
	hub := func(key string) *http.Request {
		return httptest.NewRequest("POST", "/hooks/registry?token="+key, strings.NewReader(dockerHubPush))
	}
	dist := func(key string) *http.Request {
		req := httptest.NewRequest("POST", "/hooks/registry", strings.NewReader(distributionPush))
		req.Header.Set("Authorization", "Bearer "+key)
		return req
	}
	for _, tt := range []struct {
		name string
		edit func(*Config)
		req  *http.Request
		want int
	}{
		{"github, own secret", func(c *Config) { c.WebhookSecretGitHub = ghKey }, github(ghKey), http.StatusAccepted},
		{"github, the default under its own", func(c *Config) { c.WebhookSecretGitHub = ghKey }, github(secret), http.StatusUnauthorized},
		{"github, docker hub's secret", func(c *Config) { c.WebhookSecretDockerHub = hubKey }, github(hubKey), http.StatusUnauthorized},
		{"github, the default beside another's", func(c *Config) { c.WebhookSecretDockerHub = hubKey }, github(secret), http.StatusAccepted},
		{"docker hub, own secret", func(c *Config) { c.WebhookSecretDockerHub = hubKey }, hub(hubKey), http.StatusAccepted},
		{"docker hub, the default under its own", func(c *Config) { c.WebhookSecretDockerHub = hubKey }, hub(secret), http.StatusUnauthorized},
		{"distribution, own secret", func(c *Config) { c.WebhookSecretDistribution = distKey }, dist(distKey), http.StatusAccepted},
		{"distribution, docker hub's secret", func(c *Config) { c.WebhookSecretDockerHub = hubKey; c.WebhookSecretDistribution = distKey }, dist(hubKey), http.StatusUnauthorized},
		{"only docker hub on: github", func(c *Config) { c.WebhookSecret = ""; c.WebhookSecretDockerHub = hubKey }, github(hubKey), http.StatusUnauthorized},
		{"only docker hub on: distribution", func(c *Config) { c.WebhookSecret = ""; c.WebhookSecretDockerHub = hubKey }, dist(hubKey), http.StatusUnauthorized},
		{"only docker hub on: docker hub", func(c *Config) { c.WebhookSecret = ""; c.WebhookSecretDockerHub = hubKey }, hub(hubKey), http.StatusAccepted},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, tt.edit)
			rec := r.do(tt.req)
			if rec.Code != tt.want {
				t.Fatalf("%d %s, want %d", rec.Code, rec.Body, tt.want)
			}
			if p, _, _ := r.requests.asked(); (len(p) == 1) != (tt.want == http.StatusAccepted) {
				t.Fatalf("asked for %v", p)
			}
		})
	}
}

// The read-only token reads the API and the page, changes nothing, and
// sees no buttons.
func TestReadToken(t *testing.T) {
	const readToken = "read-token-0123456789abcdef"
	r := newRig(t, func(c *Config) { c.APIReadToken = readToken })
	decided := r.decided()
	r.pipeline.ApprovalsFn = func() []deploy.Approval {
		return []deploy.Approval{{ID: "0a1b", ServiceName: "web", State: deploy.ApprovalPending}}
	}
	as := func(method, path, tok string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		return r.do(req)
	}
	for _, path := range []string{"/api/v1/services", "/api/v1/deploys", "/"} {
		if rec := as("GET", path, readToken); rec.Code != http.StatusOK {
			t.Errorf("GET %s with the read token: %d", path, rec.Code)
		}
	}
	if page := as("GET", "/", readToken).Body.String(); strings.Contains(page, "/approve") {
		t.Error("the page shows the read token an approve button")
	}
	if page := as("GET", "/", apiToken).Body.String(); !strings.Contains(page, "/ui/deploys/0a1b/approve") {
		t.Error("the page shows the API token no approve button")
	}
	for _, path := range []string{"/api/v1/check", "/api/v1/services/web/deploy", "/api/v1/deploys/0a1b/approve", "/ui/deploys/0a1b/reject",
		"/api/v1/services/web/rollback", "/ui/services/web/rollback"} {
		if rec := as("POST", path, readToken); rec.Code != http.StatusForbidden {
			t.Errorf("POST %s with the read token: %d, want 403", path, rec.Code)
		}
	}
	if p, c, d := r.requests.asked(); len(p)+c+len(d) != 0 || decided.Load() != 0 {
		t.Fatalf("the read token asked for pushes %v, %d checks, deploys %v, %d decisions", p, c, d, decided.Load())
	}
}

// Failed authentications are throttled per client address: after
// failBurst failures an address is answered 429, even with the right
// token, until its bucket refills; other addresses are not affected.
func TestFailedLoginsThrottled(t *testing.T) {
	r := newRig(t)
	from := func(addr, tok string) int {
		req := httptest.NewRequest("GET", "/api/v1/services", nil)
		req.RemoteAddr = addr + ":40000"
		req.Header.Set("Authorization", "Bearer "+tok)
		return r.do(req).Code
	}
	for i := range failBurst {
		if got := from("192.0.2.1", "guess-"+fmt.Sprint(i)); got != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d, want 401", i, got)
		}
	}
	if got := from("192.0.2.1", "guess-x"); got != http.StatusTooManyRequests {
		t.Fatalf("guess %d: %d, want 429", failBurst, got)
	}
	if got := from("192.0.2.1", apiToken); got != http.StatusTooManyRequests {
		t.Fatalf("the right token from a throttled address: %d, want 429 (not looked at)", got)
	}
	if got := from("192.0.2.2", apiToken); got != http.StatusOK {
		t.Fatalf("another address: %d, want 200", got)
	}
	r.advance(failRefill)
	if got := from("192.0.2.1", apiToken); got != http.StatusOK {
		t.Fatalf("a refill later: %d, want 200", got)
	}
	if lines := strings.Count(r.logs.String(), `"msg":"api request refused"`); lines != 1 {
		t.Errorf("%d log lines for %d refusals, want 1", lines, failBurst+2)
	}
}

// The throttle's memory is bounded.
func TestThrottleBounded(t *testing.T) {
	var th throttle
	now := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	for i := range maxClients + 100 {
		th.failed(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now.Add(time.Duration(i)*time.Millisecond))
	}
	if len(th.buckets) > maxClients {
		t.Fatalf("%d addresses kept, want at most %d", len(th.buckets), maxClients)
	}
	if _, ok := th.buckets["10.0.0.0"]; ok {
		t.Fatal("the stalest address was kept")
	}
}
