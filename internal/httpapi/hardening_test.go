package httpapi

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// serve starts the rig's server on 127.0.0.1:0, as production builds it,
// after edit (for shorter timeouts), and returns its address.
func (r *rig) serve(edit func(*http.Server)) string {
	r.t.Helper()
	if edit != nil {
		edit(r.s.srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr, err := r.s.Start(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { cancel(); r.s.Wait() })
	return addr.String()
}

// decided counts the decisions that reached the fakes.
func (r *rig) decided() *atomic.Int32 {
	var n atomic.Int32
	r.decisions.ApproveFn = func(_ context.Context, id string) (deploy.Approval, error) {
		n.Add(1)
		return deploy.Approval{ID: id, State: deploy.ApprovalApproved}, nil
	}
	r.decisions.RejectFn = func(_ context.Context, id string) (deploy.Approval, error) {
		n.Add(1)
		return deploy.Approval{ID: id, State: deploy.ApprovalRejected}, nil
	}
	r.rollbacks.onStart = func() { n.Add(1) }
	return &n
}

// The production values, so that loosening one is a visible change.
func TestServerSettings(t *testing.T) {
	srv := newRig(t).s.srv
	for _, tt := range []struct {
		name      string
		got, want time.Duration
	}{
		{"ReadHeaderTimeout", srv.ReadHeaderTimeout, 5 * time.Second},
		{"ReadTimeout", srv.ReadTimeout, 15 * time.Second},
		{"WriteTimeout", srv.WriteTimeout, 30 * time.Second},
		{"IdleTimeout", srv.IdleTimeout, 60 * time.Second},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %s, want %s", tt.name, tt.got, tt.want)
		}
	}
	if srv.MaxHeaderBytes != 16<<10 {
		t.Errorf("MaxHeaderBytes = %d, want 16 KiB", srv.MaxHeaderBytes)
	}
	if maxWebhookBody != 1<<20 || maxAPIBody != 64<<10 {
		t.Errorf("body limits %d (webhook), %d (API)", maxWebhookBody, maxAPIBody)
	}
}

// Every route that changes something refuses a request without the API
// token, or with a wrong one, over a real connection: 401, and nothing
// is asked of the pipeline. Methods the routes don't take change nothing
// either.
func TestMutatingRoutesNeedTheToken(t *testing.T) {
	r := newRig(t)
	decided := r.decided()
	base := "http://" + r.serve(nil)
	basic := func(user, pw string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
	}
	paths := []string{"/api/v1/check", "/api/v1/services/web/deploy", "/api/v1/deploys/0a1b/approve", "/api/v1/deploys/0a1b/reject",
		"/ui/deploys/0a1b/approve", "/ui/deploys/0a1b/reject", "/api/v1/services/web/rollback", "/ui/services/web/rollback"}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path, auth string) int {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	nothing := func(what string) {
		t.Helper()
		if p, c, d := r.requests.asked(); len(p)+c+len(d) != 0 || decided.Load() != 0 {
			t.Fatalf("%s: asked for pushes %v, %d checks, deploys %v, %d decisions", what, p, c, d, decided.Load())
		}
	}
	for _, path := range paths {
		for _, auth := range []string{
			"",
			"Bearer ",
			"Bearer wrong-token-0123456789abcdef",
			"Bearer " + apiToken[:len(apiToken)-1],
			"Bearer " + apiToken + "x",
			"Bearer " + strings.ToUpper(apiToken),
			"Bearer " + secret, // the webhook secret is not the API token
			"bearer " + apiToken,
			"Token " + apiToken,
			apiToken,
			basic("ops", "wrong"),
			basic(apiToken, ""),
			basic("", apiToken+"\x00"),
		} {
			if got := do("POST", path, auth); got != http.StatusUnauthorized {
				t.Errorf("POST %s with %q: %d, want 401", path, auth, got)
			}
			r.advance(failRefill) // one failure's worth: never throttled here
			nothing(fmt.Sprintf("POST %s with %q", path, auth))
		}
		for _, method := range []string{"PUT", "DELETE", "PATCH", "GET"} {
			if got := do(method, path, "Bearer "+apiToken); got != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %d, want 405", method, path, got)
			}
		}
		nothing(path + " with other methods")
	}
	// The refusals above are not for want of a route: the token opens each.
	for _, path := range paths {
		if got := do("POST", path, "Bearer "+apiToken); got == http.StatusUnauthorized || got >= 400 {
			t.Errorf("POST %s with the token: %d", path, got)
		}
	}
	if _, c, d := r.requests.asked(); c != 1 || len(d) != 1 || decided.Load() != 6 {
		t.Fatalf("with the token: %d checks, deploys %v, %d decisions and rollbacks, want 4 and 2", c, d, decided.Load())
	}
}

// The webhook over a real connection refuses a missing or bad signature
// or token with 401 and asks for nothing.
func TestWebhookRefusesBadSignatures(t *testing.T) {
	r := newRig(t)
	base := "http://" + r.serve(nil)
	post := func(query, body string, header map[string]string) int {
		t.Helper()
		req, err := http.NewRequest("POST", base+"/hooks/registry"+query, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	good := sign(githubPackage, secret)
	offByOne := good[:len(good)-1] + "0"
	if strings.HasSuffix(good, "0") {
		offByOne = good[:len(good)-1] + "1"
	}
	for _, tt := range []struct {
		name   string
		query  string
		header map[string]string
	}{
		{"nothing", "", map[string]string{"X-GitHub-Event": "package"}},
		{"empty signature", "", map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": "sha256="}},
		{"signature by another key", "", map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": sign(githubPackage, apiToken)}},
		{"signature of another body", "", map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": sign(githubPackage+"\n", secret)}},
		{"signature one digit off", "", map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": offByOne}},
		{"signature doubled", "", map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": good + strings.TrimPrefix(good, "sha256=")}},
		{"signature as sha1", "", map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature": "sha1=" + strings.Repeat("0", 40)}},
		{"secret as signature", "", map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": "sha256=" + secret}},
		{"bad signature, good token", "?token=" + secret, map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": "sha256=00"}},
		{"wrong bearer", "", map[string]string{"Authorization": "Bearer " + apiToken}},
		{"wrong token parameter", "?token=" + secret[:len(secret)-1], nil},
		{"empty token parameter", "?token=", nil},
		{"secret in basic auth", "", map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("x:"+secret))}},
	} {
		body := githubPackage
		if tt.header["X-GitHub-Event"] == "" {
			body = dockerHubPush
		}
		if got := post(tt.query, body, tt.header); got != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", tt.name, got)
		}
	}
	if p, c, d := r.requests.asked(); len(p)+c+len(d) != 0 {
		t.Fatalf("refused webhooks asked for pushes %v, %d checks, deploys %v", p, c, d)
	}
	if got := post("", githubPackage, map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": good}); got != http.StatusAccepted {
		t.Fatalf("signed webhook: %d", got)
	}
	if p, _, _ := r.requests.asked(); len(p) != 1 {
		t.Fatalf("the signed webhook asked for %v", p)
	}
}

// hungUp waits for the server to close conn and says how long it took;
// it fails the test if the server keeps the connection past limit.
func hungUp(t *testing.T, conn net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	conn.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, conn)
	took := time.Since(start)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the server kept the connection %s", took.Round(time.Millisecond))
	}
	return took // EOF (nil) or a reset: the server hung up
}

// A slowloris client that keeps sending its headers, a byte at a time,
// is cut off once ReadHeaderTimeout has passed since it connected, not
// kept as long as it keeps trickling; nothing it sent is answered.
func TestSlowlorisHeaders(t *testing.T) {
	r := newRig(t)
	const timeout = 400 * time.Millisecond
	addr := r.serve(func(s *http.Server) { s.ReadHeaderTimeout = timeout })
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		io.WriteString(conn, "POST /api/v1/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+apiToken+"\r\nX-Slow: ")
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := io.WriteString(conn, "a"); err != nil {
				return // the server hung up
			}
		}
	}()
	hungUp(t, conn, 5*time.Second)
	took := time.Since(start)
	if took < timeout-50*time.Millisecond || took > timeout+time.Second {
		t.Fatalf("cut off after %s, want about %s", took.Round(time.Millisecond), timeout)
	}
	if _, c, _ := r.requests.asked(); c != 0 {
		t.Fatal("the slow request was served")
	}
	t.Logf("trickling client cut off after %s", took.Round(time.Millisecond))
}

// A client that sends its headers, then its body slowly, is cut off at
// ReadTimeout, and the webhook asks for nothing.
func TestSlowBody(t *testing.T) {
	r := newRig(t)
	const timeout = 500 * time.Millisecond
	addr := r.serve(func(s *http.Server) { s.ReadTimeout = timeout })
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST /hooks/registry?token=%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", secret, len(dockerHubPush))
	go func() {
		for i := range len(dockerHubPush) - 1 { // never the last byte
			if _, err := conn.Write([]byte{dockerHubPush[i]}); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	hungUp(t, conn, 5*time.Second)
	if took := time.Since(start); took > timeout+time.Second {
		t.Fatalf("cut off after %s, want about %s", took.Round(time.Millisecond), timeout)
	}
	if p, _, _ := r.requests.asked(); len(p) != 0 {
		t.Fatalf("the slow webhook asked for %v", p)
	}
}

// A connection left idle after a request is closed at IdleTimeout.
func TestIdleConnectionClosed(t *testing.T) {
	r := newRig(t)
	const timeout = 300 * time.Millisecond
	addr := r.serve(func(s *http.Server) { s.IdleTimeout = timeout })
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("healthz: %d, close %v", resp.StatusCode, resp.Close)
	}
	start := time.Now()
	conn.SetReadDeadline(start.Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, br); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the idle connection was kept")
	}
	if took := time.Since(start); took > timeout+time.Second {
		t.Fatalf("idle connection closed after %s, want about %s", took.Round(time.Millisecond), timeout)
	}
}

// Bodies over the limits are refused with 413 and ask for nothing:
// sent in full, sent chunked, or only announced (refused before it is
// read, so announcing a huge body holds nothing).
func TestOversizedBodies(t *testing.T) {
	r := newRig(t)
	decided := r.decided()
	base := "http://" + r.serve(nil)
	post := func(path string, body io.Reader, header map[string]string) (int, string) {
		t.Helper()
		req, err := http.NewRequest("POST", base+path, body)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	big := `{"events":[` + strings.Repeat(" ", maxWebhookBody) + `]}`
	bearer := map[string]string{"Authorization": "Bearer " + secret}
	chunked := struct{ io.Reader }{strings.NewReader(big)} // no length: sent chunked
	for _, tt := range []struct {
		name, path string
		body       io.Reader
		header     map[string]string
	}{
		{"webhook", "/hooks/registry", strings.NewReader(big), bearer},
		{"webhook, chunked", "/hooks/registry", chunked, bearer},
		{"webhook, signed", "/hooks/registry", strings.NewReader(big), map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": sign(big, secret)}},
		{"API", "/api/v1/check", strings.NewReader(strings.Repeat("x", maxAPIBody+1)), map[string]string{"Authorization": "Bearer " + apiToken}},
		{"page button", "/ui/deploys/0a1b/approve", strings.NewReader(strings.Repeat("x", maxAPIBody+1)), map[string]string{"Authorization": "Bearer " + apiToken}},
	} {
		if got, body := post(tt.path, tt.body, tt.header); got != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: %d %s, want 413", tt.name, got, body)
		}
	}

	// Only announced: the server answers before the body comes.
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST /hooks/registry?token=%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{", secret, 1<<40)
	conn.SetReadDeadline(start.Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to an announced huge body: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || time.Since(start) > time.Second {
		t.Fatalf("announced huge body: %d after %s", resp.StatusCode, time.Since(start))
	}

	if p, c, d := r.requests.asked(); len(p)+c+len(d) != 0 || decided.Load() != 0 {
		t.Fatalf("oversized requests asked for pushes %v, %d checks, deploys %v, %d decisions", p, c, d, decided.Load())
	}
	// Just under the limit is fine.
	if got, body := post("/hooks/registry", strings.NewReader(distributionPush), bearer); got != http.StatusAccepted {
		t.Fatalf("a webhook of normal size: %d %s", got, body)
	}
}

// Headers over MaxHeaderBytes are refused (431) before any handler runs.
func TestOversizedHeaders(t *testing.T) {
	r := newRig(t)
	base := "http://" + r.serve(nil)
	req, _ := http.NewRequest("POST", base+"/api/v1/check", nil)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	req.Header.Set("X-Big", strings.Repeat("x", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("64 KiB of headers: %d, want 431", resp.StatusCode)
	}
	if _, c, _ := r.requests.asked(); c != 0 {
		t.Fatal("a request with oversized headers was served")
	}
}
