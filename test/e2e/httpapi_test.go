//go:build e2e

package e2e

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The updater's HTTP surface on the real swarm: webhooks, the API, the
// status page, approvals, metrics. Every updater listens on 127.0.0.1 on
// a free port (the harness's UPDATER_LISTEN) and logs where.

const (
	apiToken      = "e2e-api-token-0123456789abcdef"
	webhookSecret = "e2e-webhook-secret-0123456789abcdef"
)

func httpEnv(extra ...string) []string {
	return append([]string{"UPDATER_API_TOKEN=" + apiToken, "UPDATER_WEBHOOK_SECRET=" + webhookSecret}, extra...)
}

// base is the updater's HTTP address, from its "http listening" line.
func (u *updater) base(t testing.TB) string {
	t.Helper()
	u.waitLog(t, 30*time.Second, 1, "http listening")
	return "http://" + fmt.Sprint(u.find("http listening")["addr"])
}

type reply struct {
	status int
	body   string
	header http.Header
}

// call makes one request; auth is "Bearer …", "Basic …" or "".
func call(t testing.TB, method, target, auth string, header map[string]string, body string) reply {
	t.Helper()
	req, err := http.NewRequest(method, target, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	// The answer only: the request is the test's own, a secret in its
	// query included.
	capture("HTTP API answers", fmt.Appendf(nil, "%s %s: %d %v %s", method, req.URL.Path, resp.StatusCode, resp.Header, b))
	return reply{resp.StatusCode, string(b), resp.Header}
}

// distributionPush is the notification a distribution registry sends
// for a manifest pushed by tag.
func distributionPush(repo string) string {
	return fmt.Sprintf(`{"events":[{"id":"%d","action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json",`+
		`"repository":%q,"tag":"latest"},"request":{"host":%q,"method":"PUT"}}]}`, time.Now().UnixNano(), repo, env.faulty)
}

// githubPush is GitHub's package event for repo ("owner/name") published
// on the registry at host.
func githubPush(host, repo string) string {
	owner, name, _ := strings.Cut(repo, "/")
	return fmt.Sprintf(`{"action":"published","package":{"name":%q,"namespace":%q,"package_type":"CONTAINER","owner":{"login":%q},`+
		`"package_version":{"container_metadata":{"tag":{"name":"latest"}}},"registry":{"url":"http://%s"}}}`, name, owner, owner, host)
}

func hubSignature(body, key string) string {
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write([]byte(body))
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// metric reads one sample from /metrics; -1 when absent.
func metric(t testing.TB, base, sample string) float64 {
	t.Helper()
	r := call(t, "GET", base+"/metrics", "", nil, "")
	if r.status != http.StatusOK {
		t.Fatalf("/metrics: %d", r.status)
	}
	for _, l := range strings.Split(r.body, "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %q", sample, v)
			}
			return f
		}
	}
	return -1
}

// waitSpec polls the service spec every 10 ms (a 200 ms poll would blur a
// latency measured in tenths of a second) until it pins digest.
func waitSpec(t testing.TB, id, digest string, limit time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for specDigest(t, id) != digest {
		if time.Now().After(deadline) {
			t.Fatalf("the spec did not move to %s within %s", digest[:19], limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Now()
}

// A push webhook deploys at once, with polling an hour away: five pushes
// are five spec writes in Docker's events, each after its POST and before
// the next one (the latency from POST to write is logged, not asserted: on
// a loaded machine it says more about the machine). Bad signatures and
// tokens before them are refused and change nothing.
func TestWebhookTriggersDeploy(t *testing.T) {
	const stack, repo = "e2ewebhook", "e2e/webhook"
	ev := recordEvents(t)
	v1 := push(t, repo, "v1")
	app := createService(t, "e2ewebhook_app", repo, v1, svcOpts{stack: stack, optIn: true})
	begin := time.Now()
	u := startUpdater(t, stack, httpEnv("UPDATER_SCHEDULE=@every 1h")...)
	base := u.base(t)
	waitFor(t, 30*time.Second, "the first cycle", func() bool { return u.cycles() >= 1 })
	if r := call(t, "GET", base+"/readyz", "", nil, ""); r.status != http.StatusOK {
		t.Fatalf("/readyz after the first cycle: %d %s", r.status, r.body)
	}

	// A new digest is there, but the webhooks that announce it are forged.
	v2 := push(t, repo, "v2")
	ver := inspect(t, app).Version.Index
	body := distributionPush(repo)
	gh := githubPush(env.faulty, repo)
	for _, bad := range []struct {
		name   string
		target string
		auth   string
		header map[string]string
		body   string
	}{
		{"wrong bearer", "/hooks/registry", "Bearer not-the-secret-0123456789", nil, body},
		{"the API token", "/hooks/registry", "Bearer " + apiToken, nil, body},
		{"wrong token parameter", "/hooks/registry?token=not-the-secret-0123456789", "", nil, body},
		{"signed with another key", "/hooks/registry", "", map[string]string{"X-GitHub-Event": "package",
			"X-Hub-Signature-256": hubSignature(gh, "not-the-secret-0123456789")}, gh},
		{"signature of another body", "/hooks/registry", "", map[string]string{"X-GitHub-Event": "package",
			"X-Hub-Signature-256": hubSignature(gh+" ", webhookSecret)}, gh},
		{"unsigned", "/hooks/registry", "", map[string]string{"X-GitHub-Event": "package"}, gh},
	} {
		if r := call(t, "POST", base+bad.target, bad.auth, bad.header, bad.body); r.status != http.StatusUnauthorized {
			t.Fatalf("%s: %d %s, want 401", bad.name, r.status, r.body)
		}
	}
	if r := call(t, "POST", base+"/hooks/registry", "Bearer "+webhookSecret, nil, `{"hello":"world"}`); r.status != http.StatusBadRequest {
		t.Fatalf("a payload of no known registry: %d %s, want 400", r.status, r.body)
	}
	// Each refusal was answered after deciding: had one been taken, its
	// check would be queued by now and counted.
	// A credential names its source: the token parameter Docker Hub.
	if n := metric(t, base, `updater_webhooks_total{result="unauthorized",source="distribution"}`) +
		metric(t, base, `updater_webhooks_total{result="unauthorized",source="github"}`) +
		metric(t, base, `updater_webhooks_total{result="unauthorized",source="dockerhub"}`); n != 6 {
		t.Fatalf("%v webhooks counted unauthorized, want 6", n)
	}
	if n := u.count("registry push"); n != 0 {
		t.Fatalf("%d pushes taken from forged webhooks", n)
	}
	if n := metric(t, base, `updater_cycles_total{result="ok",scope="push"}`); n > 0 {
		t.Fatalf("%v push cycles ran after forged webhooks", n)
	}
	if v := inspect(t, app).Version.Index; v != ver || specDigest(t, app) != v1 || u.count("deploy started") != 0 {
		t.Fatalf("forged webhooks changed the service: version %d -> %d, digest %s", ver, v, specDigest(t, app))
	}

	// The real thing, five times, alternating a distribution registry's
	// notification (bearer token) and a GitHub package event (HMAC).
	var toSpec, toStart, toDone []time.Duration
	var posts []time.Time
	var wants []string
	want := v2
	for i := range 5 {
		if i > 0 {
			want = push(t, repo, "v2")
		}
		wants = append(wants, want)
		hdr, auth, payload := map[string]string(nil), "Bearer "+webhookSecret, distributionPush(repo)
		if i%2 == 1 {
			// Each delivery its own body, as GitHub's are (its version's
			// ID differs): the same signed body again is a replay.
			payload = strings.Replace(githubPush(env.faulty, repo), `"package_version":{`, fmt.Sprintf(`"package_version":{"id":%d,`, i), 1)
			hdr, auth = map[string]string{"X-GitHub-Event": "package", "X-Hub-Signature-256": hubSignature(payload, webhookSecret)}, ""
		}
		posted := time.Now()
		posts = append(posts, posted)
		r := call(t, "POST", base+"/hooks/registry", auth, hdr, payload)
		if r.status != http.StatusAccepted {
			t.Fatalf("push %d: %d %s", i, r.status, r.body)
		}
		specAt := waitSpec(t, app, want, 30*time.Second)
		u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", want)
		started, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(u.find("deploy started", "to_digest", want)["time"]))
		done, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(u.find("deploy succeeded", "to_digest", want)["time"]))
		toSpec, toStart, toDone = append(toSpec, specAt.Sub(posted)), append(toStart, started.Sub(posted)), append(toDone, done.Sub(posted))
	}
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	round := func(ds []time.Duration) []string {
		out := make([]string, len(ds))
		for i, d := range ds {
			out[i] = d.Round(time.Millisecond).String()
		}
		return out
	}
	t.Logf("webhook POST -> deploy started: %v, median %s", round(toStart), med(toStart).Round(time.Millisecond))
	t.Logf("webhook POST -> spec pinned to the new digest: %v, median %s", round(toSpec), med(toSpec).Round(time.Millisecond))
	t.Logf("webhook POST -> deploy succeeded (healthy on every task): %v, median %s", round(toDone), med(toDone).Round(time.Millisecond))
	// One image write per push, read from Docker: not one more (a deploy
	// started twice), none before its POST (polling, not the webhook), and
	// each before the next POST.
	writes := ev.wantImageWrites(t, app, wants...)
	for i, w := range writes {
		if w.At.Before(posts[i]) {
			t.Errorf("push %d: Docker saw the write %s before the POST", i, posts[i].Sub(w.At))
		}
		if i+1 < len(posts) && !w.At.Before(posts[i+1]) {
			t.Errorf("push %d: Docker saw the write only after the next POST", i)
		}
	}
	if c := u.cycles(); c != 1 {
		t.Fatalf("%d scheduled cycles ran: polling, not the webhooks, may have deployed", c)
	}

	// The counts that happened, as Prometheus would scrape them.
	for sample, want := range map[string]float64{
		`updater_deploys_total{outcome="succeeded",phase="rollout"}`:      5,
		`updater_deploy_duration_seconds_count{outcome="succeeded"}`:      5,
		`updater_webhooks_total{result="accepted",source="distribution"}`: 3,
		`updater_webhooks_total{result="accepted",source="github"}`:       2,
		`updater_webhooks_total{result="bad_request",source="unknown"}`:   1,
		`updater_cycles_total{result="ok",scope="all"}`:                   1,
		`updater_watched_services`:                                        1,
	} {
		if got := metric(t, base, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	if n := metric(t, base, `updater_cycles_total{result="ok",scope="push"}`); n < 5 {
		t.Errorf("%v push cycles, want at least 5", n)
	}
	if n := metric(t, base, `updater_registry_requests_total{code="200",method="HEAD",result="200"}`); n < 6 {
		t.Errorf("%v registry HEADs counted, want one per cycle at least (6)", n)
	}
	if age := metric(t, base, "updater_last_successful_cycle_age_seconds"); age < 0 || age > 3600 {
		t.Errorf("last successful cycle age %v", age)
	}
	// The one scheduled cycle answered every lookup: both timestamps are
	// its end, between the updater's start and now.
	now := float64(time.Now().UnixNano()) / 1e9
	for _, name := range []string{"updater_last_check_timestamp_seconds", "updater_last_cycle_timestamp_seconds"} {
		if ts := metric(t, base, name); ts < float64(begin.UnixNano())/1e9 || ts > now {
			t.Errorf("%s = %v, want between the start (%v) and now (%v)", name, ts, float64(begin.UnixNano())/1e9, now)
		}
	}
	if n := metric(t, base, `updater_build_info{goversion="`+runtime.Version()+`",version="e2e"}`); n != 1 {
		t.Errorf("updater_build_info for version e2e and %s = %v, want 1", runtime.Version(), n)
	}
	// The service's one state series says what the API says.
	r := call(t, "GET", base+"/api/v1/services", "Bearer "+apiToken, nil, "")
	var listed struct {
		Services []struct{ Name, State string }
	}
	if err := json.Unmarshal([]byte(r.body), &listed); err != nil || len(listed.Services) != 1 || listed.Services[0].Name != "e2ewebhook_app" {
		t.Fatalf("/api/v1/services: %d %s (%v)", r.status, r.body, err)
	}
	if state := listed.Services[0].State; metric(t, base, `updater_service_state{service="e2ewebhook_app",state="`+state+`"}`) != 1 {
		t.Errorf("updater_service_state of e2ewebhook_app is not 1 with the API's state %q", state)
	}
	if body := call(t, "GET", base+"/metrics", "", nil, "").body; strings.Count(body, "\nupdater_service_state{") != 1 {
		t.Errorf("updater_service_state series: %d, want one for the one watched service", strings.Count(body, "\nupdater_service_state{"))
	}
}

// A service labelled updater.approve=manual waits, reported once, however
// many cycles pass; approved on the status page it deploys; a newer digest
// supersedes the pending one; rejected through the API it never deploys.
// The API and the page refuse requests without the token.
func TestApprovalGate(t *testing.T) {
	const stack, repo = "e2eappr", "e2e/appr"
	v1 := push(t, repo, "v1")
	app := createService(t, "e2eappr_app", repo, v1, svcOpts{stack: stack, optIn: true,
		labels: map[string]string{"updater.approve": "manual"}})
	u := startUpdater(t, stack, httpEnv("UPDATER_APPROVAL_TIMEOUT=1h")...)
	base := u.base(t)
	waitFor(t, 30*time.Second, "the first cycle", func() bool { return u.cycles() >= 1 })
	bearer := "Bearer " + apiToken
	basic := "Basic " + basicAuth("ops", apiToken)

	for _, r := range []struct{ method, path, auth string }{
		{"GET", "/api/v1/services", ""}, {"GET", "/api/v1/deploys", "Bearer wrong-token-0123456789"},
		{"POST", "/api/v1/check", ""}, {"POST", "/api/v1/services/e2eappr_app/deploy", ""},
		{"GET", "/", ""}, {"GET", "/", "Basic " + basicAuth("ops", "wrong")},
	} {
		if got := call(t, r.method, base+r.path, r.auth, nil, ""); got.status != http.StatusUnauthorized || got.header.Get("WWW-Authenticate") == "" {
			t.Fatalf("%s %s with %q: %d, want 401 with a challenge", r.method, r.path, r.auth, got.status)
		}
	}

	// v2 waits: one "deploy pending", no spec write across cycles.
	ver := inspect(t, app).Version.Index
	v2 := push(t, repo, "v2")
	u.waitLog(t, 30*time.Second, 1, "deploy pending", "to_digest", v2)
	id := fmt.Sprint(u.find("deploy pending", "to_digest", v2)["deploy_id"])
	after := u.cycles()
	waitFor(t, 30*time.Second, "4 more cycles", func() bool { return u.cycles() >= after+4 })
	if n := u.count("deploy pending"); n != 1 {
		t.Fatalf("pending reported %d times, want once", n)
	}
	if v := inspect(t, app).Version.Index; v != ver || u.count("deploy started") != 0 {
		t.Fatalf("the service moved while waiting for approval: version %d -> %d", ver, v)
	}
	var deploys struct {
		Approvals []struct {
			ID, State string
			To        string `json:"to_digest"`
		} `json:"approvals"`
	}
	r := call(t, "GET", base+"/api/v1/deploys", bearer, nil, "")
	if err := json.Unmarshal([]byte(r.body), &deploys); err != nil || r.status != http.StatusOK {
		t.Fatalf("/api/v1/deploys: %d %v %s", r.status, err, r.body)
	}
	if len(deploys.Approvals) != 1 || deploys.Approvals[0].ID != id || deploys.Approvals[0].State != "pending" || deploys.Approvals[0].To != v2 {
		t.Fatalf("approvals %+v, want %s pending", deploys.Approvals, id)
	}
	var services struct {
		Services []struct {
			Name, State, Approval string
			RunningDigest         string `json:"running_digest"`
			RegistryDigest        string `json:"registry_digest"`
		} `json:"services"`
	}
	r = call(t, "GET", base+"/api/v1/services", bearer, nil, "")
	if err := json.Unmarshal([]byte(r.body), &services); err != nil {
		t.Fatal(err)
	}
	if s := services.Services; len(s) != 1 || s[0].State != "awaiting-approval" || s[0].Approval != "manual" || s[0].RunningDigest != v1 || s[0].RegistryDigest != v2 {
		t.Fatalf("services %+v", s)
	}

	// The status page shows it with its buttons; the approve button deploys.
	page := call(t, "GET", base+"/", basic, nil, "")
	for _, want := range []string{"e2eappr_app", `action="/ui/deploys/` + id + `/approve"`, "awaiting-approval", strings.TrimPrefix(v2, "sha256:")[:12]} {
		if !strings.Contains(page.body, want) {
			t.Fatalf("status page lacks %q:\n%s", want, page.body)
		}
	}
	approved := call(t, "POST", base+"/ui/deploys/"+id+"/approve", basic, map[string]string{"Origin": base, "Sec-Fetch-Site": "same-origin"}, "")
	if approved.status != http.StatusSeeOther || !strings.Contains(approved.header.Get("Location"), "outcome=approved") {
		t.Fatalf("approve button: %d %s", approved.status, approved.header.Get("Location"))
	}
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
	if !allRunning(t, app, v2) {
		t.Fatal("approved v2 reported but not running")
	}
	if again := call(t, "POST", base+"/api/v1/deploys/"+id+"/approve", bearer, nil, ""); again.status != http.StatusConflict {
		t.Fatalf("approving twice: %d %s, want 409", again.status, again.body)
	}

	// v3 waits, v4 supersedes it, v4 is rejected: neither ever deploys.
	v3 := push(t, repo, "v3")
	u.waitLog(t, 30*time.Second, 1, "deploy pending", "to_digest", v3)
	old := fmt.Sprint(u.find("deploy pending", "to_digest", v3)["deploy_id"])
	v4 := push(t, repo, "v4")
	u.waitLog(t, 30*time.Second, 1, "deploy pending", "to_digest", v4)
	newer := fmt.Sprint(u.find("deploy pending", "to_digest", v4)["deploy_id"])
	if r := call(t, "POST", base+"/api/v1/deploys/"+old+"/approve", bearer, nil, ""); r.status != http.StatusConflict || !strings.Contains(r.body, "superseded") {
		t.Fatalf("approving the superseded one: %d %s, want 409 superseded", r.status, r.body)
	}
	if r := call(t, "POST", base+"/api/v1/deploys/"+newer+"/reject", "", nil, ""); r.status != http.StatusUnauthorized {
		t.Fatalf("reject without the token: %d", r.status)
	}
	if r := call(t, "POST", base+"/api/v1/deploys/"+newer+"/reject", bearer, nil, ""); r.status != http.StatusOK || !strings.Contains(r.body, `"rejected"`) {
		t.Fatalf("reject: %d %s", r.status, r.body)
	}
	ver = inspect(t, app).Version.Index
	after = u.cycles()
	waitFor(t, 30*time.Second, "4 more cycles", func() bool { return u.cycles() >= after+4 })
	if v := inspect(t, app).Version.Index; v != ver || specDigest(t, app) != v2 {
		t.Fatalf("the service moved after the rejection: version %d -> %d, digest %s", ver, v, specDigest(t, app))
	}
	if n := u.count("deploy started"); n != 1 {
		t.Fatalf("%d deploys started, want only the approved one", n)
	}
	if n := u.count("deploy pending", "to_digest", v4); n != 1 {
		t.Fatalf("the rejected digest was asked about %d times, want once", n)
	}
	if n := records(t, app, "failed-digest"); n != 1 {
		t.Fatalf("%d failed-digest records, want the rejected digest remembered in Swarm", n)
	}
	if n := metric(t, base, "updater_approvals_pending"); n != 0 {
		t.Fatalf("%v approvals pending after the rejection", n)
	}
}

// `updater healthcheck`, the image's HEALTHCHECK, says 0 for a running
// updater and 1 when nothing answers.
func TestHealthcheckCommand(t *testing.T) {
	const stack = "e2ehealth"
	u := startUpdater(t, stack)
	base := u.base(t)
	m := regexp.MustCompile(`:(\d+)$`).FindStringSubmatch(base)
	for _, tt := range []struct {
		listen string
		code   int
	}{
		{"127.0.0.1:" + m[1], 0},
		{":" + m[1], 0}, // every interface: checked on loopback
		{"127.0.0.1:1", 1},
	} {
		cmd := exec.Command(env.bin, "healthcheck")
		cmd.Env = []string{"UPDATER_LISTEN=" + tt.listen}
		out, err := cmd.CombinedOutput()
		capture("updater command output and service logs", out)
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tt.code {
			t.Fatalf("healthcheck with UPDATER_LISTEN=%s: exit %d, want %d\n%s", tt.listen, code, tt.code, out)
		}
	}
	if r := call(t, "GET", base+"/healthz", "", nil, ""); r.status != http.StatusOK {
		t.Fatalf("/healthz: %d", r.status)
	}
	if r := call(t, "GET", base+"/api/v1/services", "Bearer "+apiToken, nil, ""); r.status != http.StatusForbidden {
		t.Fatalf("the API without UPDATER_API_TOKEN set: %d, want 403", r.status)
	}
	if r := call(t, "POST", base+"/hooks/registry?"+url.Values{"token": {webhookSecret}}.Encode(), "", nil, distributionPush("x")); r.status != http.StatusForbidden {
		t.Fatalf("a webhook without UPDATER_WEBHOOK_SECRET set: %d, want 403", r.status)
	}
}

func basicAuth(user, pw string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pw))
}
