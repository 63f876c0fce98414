package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/registry"
)

type fakeSource struct {
	status    deploy.Status
	approvals []deploy.Approval
}

func (f *fakeSource) Status() deploy.Status        { return f.status }
func (f *fakeSource) Approvals() []deploy.Approval { return f.approvals }

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("scrape: %d", rec.Code)
	}
	return rec.Body.String()
}

func has(t *testing.T, body string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(body, "\n"+l+"\n") {
			t.Errorf("metrics lack %q", l)
		}
	}
}

// Every metric the README promises is registered and exported from the
// start, on a registry of our own (not the process-wide default).
func TestRegistered(t *testing.T) {
	m := New(&fakeSource{}, nil)
	m.ObserveCycle(deploy.CycleStats{Full: true})
	m.Report(deploy.Event{Kind: deploy.Succeeded, Phase: deploy.PhaseRollout})
	m.Webhook("github", "accepted")
	m.APIRefused("throttled")
	m.Report(deploy.Event{Kind: deploy.Progress, Step: &deploy.Step{Phase: deploy.PhaseBackup, State: "started"}})
	body := scrape(t, m)
	for _, name := range []string{
		"updater_cycles_total", "updater_cycle_duration_seconds", "updater_deploys_total",
		"updater_deploy_duration_seconds", "updater_webhooks_total", "updater_api_refused_total", "updater_hook_steps_total", "updater_last_successful_cycle_age_seconds",
		"updater_last_check_timestamp_seconds", "updater_last_cycle_timestamp_seconds", "updater_build_info",
		"updater_watched_services", "updater_approvals_pending", "go_goroutines", "process_start_time_seconds",
	} {
		if !strings.Contains(body, "# TYPE "+name+" ") {
			t.Errorf("%s is not exported", name)
		}
	}
	if !strings.Contains(body, `updater_api_refused_total{reason="throttled"} 1`) {
		t.Error("the throttled API request is not counted")
	}
	if New(&fakeSource{}, nil).reg == m.reg {
		t.Fatal("two Metrics share a registry")
	}
}

func TestCyclesAndDeploys(t *testing.T) {
	m := New(&fakeSource{}, nil)
	m.ObserveCycle(deploy.CycleStats{Full: true, Duration: 30 * time.Millisecond})
	m.ObserveCycle(deploy.CycleStats{Full: true, Err: errors.New("docker down")})
	m.ObserveCycle(deploy.CycleStats{Full: true, Err: deploy.ErrBusy})
	m.ObserveCycle(deploy.CycleStats{Full: false, Duration: time.Second})
	for _, e := range []deploy.Event{
		{Kind: deploy.Started},
		{Kind: deploy.Progress, Phase: deploy.PhaseRollout, Step: &deploy.Step{Phase: deploy.PhaseRollout, Done: 1, Total: 2}},
		{Kind: deploy.Progress, Phase: deploy.PhaseBackup, Step: &deploy.Step{Phase: deploy.PhaseBackup, State: "started"}},
		{Kind: deploy.Progress, Phase: deploy.PhaseBackup, Step: &deploy.Step{Phase: deploy.PhaseBackup, State: "skipped"}},
		{Kind: deploy.Progress, Phase: deploy.PhaseBackup, Step: &deploy.Step{Phase: deploy.PhaseBackup, State: "skipped"}},
		{Kind: deploy.Progress, Phase: deploy.PhaseMigrate, Step: &deploy.Step{Phase: deploy.PhaseMigrate, State: "failed"}},
		{Kind: deploy.Pending},
		{Kind: deploy.Succeeded, Phase: deploy.PhaseRollout, Duration: 3 * time.Second},
		{Kind: deploy.Succeeded, Phase: deploy.PhaseRollout, Duration: 5 * time.Second},
		{Kind: deploy.Failed, Phase: deploy.PhaseRollout, RolledBack: true, Duration: time.Minute},
		{Kind: deploy.Failed, Phase: deploy.PhaseMigrate, Duration: 10 * time.Second},
		{Kind: deploy.Progress, Phase: deploy.PhaseProbe, Step: &deploy.Step{Phase: deploy.PhaseProbe, State: deploy.StepSucceeded}},
		{Kind: deploy.Failed, Phase: deploy.PhaseProbe, RolledBack: true},
		{Kind: deploy.Failed, Phase: deploy.PhaseBake, RolledBack: true},
		{Kind: deploy.Outage, Part: "registry"},
	} {
		m.Report(e)
	}
	has(t, scrape(t, m),
		`updater_cycles_total{result="ok",scope="all"} 1`,
		`updater_cycles_total{result="error",scope="all"} 1`,
		`updater_cycles_total{result="busy",scope="all"} 1`,
		`updater_cycles_total{result="ok",scope="push"} 1`,
		`updater_cycle_duration_seconds_count{scope="all"} 2`,
		`updater_cycle_duration_seconds_count{scope="push"} 1`,
		`updater_deploys_total{outcome="succeeded",phase="rollout"} 2`,
		`updater_deploys_total{outcome="rolled_back",phase="rollout"} 1`,
		`updater_deploys_total{outcome="failed",phase="migrate"} 1`,
		`updater_deploy_duration_seconds_count{outcome="succeeded"} 2`,
		`updater_deploy_duration_seconds_sum{outcome="succeeded"} 8`,
		`updater_hook_steps_total{phase="backup",state="started"} 1`,
		`updater_hook_steps_total{phase="backup",state="skipped"} 2`,
		`updater_hook_steps_total{phase="migrate",state="failed"} 1`,
		`updater_hook_steps_total{phase="probe",state="succeeded"} 1`,
		`updater_hook_steps_total{phase="probe",state="failed"} 1`,
		`updater_hook_steps_total{phase="bake",state="failed"} 1`,
		`updater_deploys_total{outcome="rolled_back",phase="bake"} 1`,
	)
	if body := scrape(t, m); strings.Contains(body, `updater_hook_steps_total{phase="rollout"`) {
		t.Error("rollout progress counted as a hook step")
	}
}

// The registry client's transport counts each request by method and
// status, and a request that got no answer as an error.
func TestTransport(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	m := New(&fakeSource{}, nil)
	c := &http.Client{Transport: m.Transport(nil)}
	for _, req := range []struct{ method, path string }{{"HEAD", "/v2/x/manifests/latest"}, {"HEAD", "/v2/x/manifests/latest"}, {"GET", "/missing"}} {
		r, _ := http.NewRequest(req.method, srv.URL+req.path, nil)
		resp, err := c.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	srv.Close()
	if _, err := c.Get(srv.URL); err == nil {
		t.Fatal("want an error from a closed server")
	}
	has(t, scrape(t, m),
		`updater_registry_requests_total{code="200",method="HEAD",result="200"} 2`,
		`updater_registry_requests_total{code="404",method="GET",result="404"} 1`,
		`updater_registry_requests_total{code="error",method="GET",result="error"} 1`,
	)
}

func TestGauges(t *testing.T) {
	clock := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	src := &fakeSource{}
	m := New(src, func() time.Time { return clock })
	clock = clock.Add(42 * time.Second)
	has(t, scrape(t, m), "updater_last_successful_cycle_age_seconds 42", "updater_watched_services 0", "updater_approvals_pending 0")

	src.status = deploy.Status{Checked: clock.Add(-5 * time.Second), Services: make([]deploy.Plan, 3)}
	src.approvals = []deploy.Approval{{State: deploy.ApprovalPending}, {State: deploy.ApprovalRejected}, {State: deploy.ApprovalPending}}
	has(t, scrape(t, m), "updater_last_successful_cycle_age_seconds 5", "updater_watched_services 3", "updater_approvals_pending 2")
}

// A registry that meters pulls (Docker Hub) says how many are left in
// every manifest answer, a 429 included; the gauges keep the last value
// per registry host, and a registry that says nothing has no series.
func TestRegistryRateLimit(t *testing.T) {
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	var remaining atomic.Int64
	remaining.Store(77)
	metered := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") && r.Method == http.MethodHead {
			n := remaining.Add(-1)
			w.Header().Set("RateLimit-Limit", "100;w=21600")
			w.Header().Set("RateLimit-Remaining", fmt.Sprintf("%d;w=21600", n))
			if n == 0 {
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
		}
		inner.ServeHTTP(w, r)
	}))
	defer metered.Close()
	plain := httptest.NewServer(inner)
	defer plain.Close()
	host := strings.TrimPrefix(metered.URL, "http://")
	plainHost := strings.TrimPrefix(plain.URL, "http://")

	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(plainHost + "/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}

	m := New(&fakeSource{}, nil)
	c := registry.New(registry.Config{Transport: m.Transport(nil), Keychain: authn.NewMultiKeychain(), Retries: -1})
	ctx := context.Background()
	for _, ref := range []string{host + "/app:1", host + "/app:1", plainHost + "/app:1"} {
		if _, err := c.Digest(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	body := scrape(t, m)
	has(t, body,
		`updater_registry_ratelimit_remaining{registry="`+host+`"} 75`,
		`updater_registry_ratelimit_limit{registry="`+host+`"} 100`,
	)
	if strings.Contains(body, plainHost) {
		t.Errorf("a registry without rate-limit headers has a series:\n%s", body)
	}

	remaining.Store(1) // the next answer is the last pull's 429
	if _, err := c.Digest(ctx, host+"/app:1"); err == nil {
		t.Fatal("want the 429 as an error")
	}
	has(t, scrape(t, m),
		`updater_registry_ratelimit_remaining{registry="`+host+`"} 0`,
		`updater_registry_requests_total{code="429",method="HEAD",result="429"} 1`,
	)
}

func TestRateValue(t *testing.T) {
	for h, want := range map[string]float64{"76;w=21600": 76, "100": 100, " 0 ;w=60": 0} {
		if got, ok := rateValue(h); !ok || got != want {
			t.Errorf("rateValue(%q) = %v, %v; want %v", h, got, ok, want)
		}
	}
	for _, h := range []string{"", "lots", "-1;w=60", "1.5"} {
		if _, ok := rateValue(h); ok {
			t.Errorf("rateValue(%q) accepted", h)
		}
	}
}

// The check's timestamp moves only with a full cycle in which Docker
// listed the services and every registry lookup got a digest: a cycle
// whose lookups failed (a registry or its credentials down) moves the
// cycle's timestamp and not the check's, so an alert on the check fires.
func TestCheckTimestamps(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	ok := deploy.Plan{Target: deploy.Target{Name: "web"}, Action: deploy.ActNone}
	bad := deploy.Plan{Target: deploy.Target{Name: "api"}, Action: deploy.ActError}
	src := &fakeSource{}
	m := New(src, nil)
	check := func(want float64) {
		t.Helper()
		if got := testutil.ToFloat64(m.lastCheck); got != want {
			t.Errorf("updater_last_check_timestamp_seconds = %v, want %v", got, want)
		}
	}
	cycle := func(want float64) {
		t.Helper()
		if got := testutil.ToFloat64(m.lastCycle); got != want {
			t.Errorf("updater_last_cycle_timestamp_seconds = %v, want %v", got, want)
		}
	}
	check(0)
	cycle(0)

	src.status.Services = []deploy.Plan{ok}
	m.ObserveCycle(deploy.CycleStats{Full: true, Started: t0, Duration: 1500 * time.Millisecond})
	check(unix(t0) + 1.5)
	cycle(unix(t0) + 1.5)

	// Every lookup failed: the cycle ran, the check did not.
	src.status.Services = []deploy.Plan{bad, {Target: deploy.Target{Name: "db"}, Action: deploy.ActError}}
	m.ObserveCycle(deploy.CycleStats{Full: true, Started: t0.Add(time.Minute)})
	check(unix(t0) + 1.5)
	cycle(unix(t0.Add(time.Minute)))

	// One of two failed: not a check either.
	src.status.Services = []deploy.Plan{ok, bad}
	m.ObserveCycle(deploy.CycleStats{Full: true, Started: t0.Add(2 * time.Minute)})
	check(unix(t0) + 1.5)

	// Docker did not list: neither a check nor (being full) unseen.
	src.status.Services = []deploy.Plan{ok}
	m.ObserveCycle(deploy.CycleStats{Full: true, Started: t0.Add(3 * time.Minute), Err: errors.New("list services: docker down")})
	check(unix(t0) + 1.5)
	cycle(unix(t0.Add(3 * time.Minute)))

	// A push's cycle, a busy tick and a standby's move nothing.
	m.ObserveCycle(deploy.CycleStats{Full: false, Started: t0.Add(4 * time.Minute)})
	m.ObserveCycle(deploy.CycleStats{Full: true, Started: t0.Add(5 * time.Minute), Err: deploy.ErrBusy})
	m.ObserveCycle(deploy.CycleStats{Full: true, Started: t0.Add(6 * time.Minute), Err: deploy.ErrStandby})
	check(unix(t0) + 1.5)
	cycle(unix(t0.Add(3 * time.Minute)))

	// Answers again: both move.
	m.ObserveCycle(deploy.CycleStats{Full: true, Started: t0.Add(7 * time.Minute)})
	check(unix(t0.Add(7 * time.Minute)))
	cycle(unix(t0.Add(7 * time.Minute)))
}

// One updater_service_state series per watched service, with the word the
// API uses for its state; a service no longer watched loses its series,
// and one remembered twice under its name (removed and made again) is not
// a duplicate series, which would fail the whole scrape.
func TestServiceState(t *testing.T) {
	src := &fakeSource{}
	m := New(src, nil)
	plan := func(id, name string, a deploy.Action) deploy.Plan {
		return deploy.Plan{Target: deploy.Target{ID: id, Name: name}, Action: a}
	}
	src.status.Services = []deploy.Plan{plan("1", "api", deploy.ActDeploying), plan("2", "web", deploy.ActNone), plan("3", "worker", deploy.ActAwait)}
	want := `
# HELP updater_service_state Always 1, one series per watched service, labelled with its state as the API says it (up-to-date, deploy, deploying, awaiting-approval, skip-failed, skip-untagged, registry-error).
# TYPE updater_service_state gauge
updater_service_state{service="api",state="deploying"} 1
updater_service_state{service="web",state="up-to-date"} 1
updater_service_state{service="worker",state="awaiting-approval"} 1
`
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want), "updater_service_state"); err != nil {
		t.Error(err)
	}
	src.status.Services = []deploy.Plan{plan("2", "web", deploy.ActError), plan("4", "web", deploy.ActNone)}
	if n, err := testutil.GatherAndCount(m.reg, "updater_service_state"); err != nil || n != 1 {
		t.Errorf("after api and worker went, a web made again: %d series (%v), want 1", n, err)
	}
	if got := scrape(t, m); strings.Contains(got, `service="api"`) || strings.Contains(got, `service="worker"`) {
		t.Errorf("services gone still have series:\n%s", got)
	}
}

func TestBuildInfo(t *testing.T) {
	m := New(&fakeSource{}, nil)
	m.SetVersion("v1.2.3")
	want := fmt.Sprintf(`
# HELP updater_build_info Always 1, labelled with the updater's version and the Go version it was built with.
# TYPE updater_build_info gauge
updater_build_info{goversion=%q,version="v1.2.3"} 1
`, runtime.Version())
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want), "updater_build_info"); err != nil {
		t.Error(err)
	}
}
