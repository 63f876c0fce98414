//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
)

// The metric-gated canary (issue 17, docs/canary.md) on the real path.
// Debian's Prometheus, on 127.0.0.1 with its own data directory, finds
// the swarm's tasks through dockerswarm_sd_configs on the test engine's
// socket and scrapes each task's /metrics (demo/app counts requests by
// status code; ERROR_SHARE in an image's environment answers that share
// with 500). The tasks are on an overlay network, as a stack's are: its
// addresses are what Prometheus' tasks role gives, and the host reaches
// them through a forward proxy on that network (demo/app's proxy mode,
// a service of its own publishing one port on the host), which is
// Prometheus' proxy_url and the load generator's proxy. (Host-mode ports
// on the tasks themselves would not do: Docker 20.10 gives a task's IPv4
// and IPv6 bindings different random ports, and the tasks role makes a
// target of each, so one of them reaches another task's container.)
// The load generator sends requests to every running task. The updater
// asks Prometheus; every outcome is read from Docker (the tasks by
// digest over the whole test, the spec writes as the engine answered
// them) and from Prometheus, beside the updater's report.
//
// Four deploys of one 4-replica service, a canary of 1 task judged for
// 30 s every 15 s (the first evaluation comes an interval in, once
// Prometheus found and scraped the new task: docs/canary.md), in order:
//  1. v5 answers 30 % errors: one task ever runs it; rolled back,
//     quarantined, one failure report quoting the ratio;
//  2. v6 is clean: promoted, 4 tasks on it, the canary's kept;
//  3. v7 is clean but Prometheus stops once its window began: rolled
//     back as inconclusive at the first evaluation (fail closed);
//  4. v8 is clean and the updater is SIGKILLed during its window: the
//     next one judges the rest of the same window and promotes, one
//     report in all.
//
// With the decision delay (window's end, or the failing evaluation, to
// the spec write that carries the decision out) and what deploy 2 cost
// in registry, Docker and Prometheus requests, logged as figures.

const (
	canaryWindow   = 30 * time.Second
	canaryInterval = 15 * time.Second
	// The error ratio of the canary's tasks over the last 10 s.
	canaryQuery = `sum(rate(http_requests_total{code="500",task=~"{tasks}"}[10s])) / sum(rate(http_requests_total{task=~"{tasks}"}[10s]))`
)

// canaryScrape discovers the stack's running tasks on the engine at
// host and labels each series with its service and task ID (what
// {tasks} matches), as docs/canary.md tells a team to.
func canaryScrape(host, network, proxy string) string {
	return fmt.Sprintf(`  - job_name: tasks
    proxy_url: %q
    dockerswarm_sd_configs:
      - host: %q
        role: tasks
        port: 8080
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_dockerswarm_network_name]
        regex: %s
        action: keep
      - source_labels: [__meta_dockerswarm_task_desired_state]
        regex: running
        action: keep
      - source_labels: [__meta_dockerswarm_service_name]
        target_label: service
      - source_labels: [__meta_dockerswarm_task_id]
        target_label: task
`, proxy, host, regexp.QuoteMeta(network))
}

// errorImage is the test app with ERROR_SHARE=share in its environment:
// the version's own behaviour, as a bad build's would be.
func errorImage(t *testing.T, share string) v1.Image {
	t.Helper()
	img := appImage(t, "v1", nil)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	cfg.Env = append(cfg.Env, "ERROR_SHARE="+share)
	if img, err = mutate.Config(img, cfg); err != nil {
		t.Fatal(err)
	}
	return img
}

// census polls a service's tasks every 200 ms for the whole test and
// keeps every task ever seen on each digest: Swarm prunes its task
// history, a poll that saw a task once does not forget it.
type census struct {
	mu  sync.Mutex
	saw map[string]map[string]bool // digest → task IDs
	// addrs are the running tasks' addresses on the network, by task ID.
	addrs map[string]string
}

func startCensus(t *testing.T, serviceID, networkID string) *census {
	c := &census{saw: map[string]map[string]bool{}, addrs: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			res, err := env.docker.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", serviceID)})
			if err == nil {
				c.mu.Lock()
				c.addrs = map[string]string{}
				for _, task := range res.Items {
					if task.Spec.ContainerSpec == nil {
						continue
					}
					_, d := deploy.SplitImage(task.Spec.ContainerSpec.Image)
					if c.saw[d] == nil {
						c.saw[d] = map[string]bool{}
					}
					c.saw[d][task.ID] = true
					if task.DesiredState == swarm.TaskStateRunning && task.Status.State == swarm.TaskStateRunning {
						for _, a := range task.NetworksAttachments {
							if a.Network.ID == networkID && len(a.Addresses) > 0 {
								c.addrs[task.ID] = a.Addresses[0].Addr().String()
							}
						}
					}
				}
				c.mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// ever is how many tasks were ever seen on digest.
func (c *census) ever(digest string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.saw[digest])
}

func (c *census) running() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.addrs)
}

// load sends a request to every running task every 50 ms (20 a second
// each), and counts the answers by task and status.
type load struct {
	mu   sync.Mutex
	sent map[string]map[int]int // task ID → status → count
}

func startLoad(t *testing.T, c *census, proxy *url.URL) *load {
	l := &load{sent: map[string]map[int]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}}
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for id, ip := range c.running() {
				resp, err := hc.Get("http://" + net.JoinHostPort(ip, "8080") + "/")
				if err != nil {
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusInternalServerError {
					continue // the proxy's own (a task stopping): not the app's answer
				}
				l.mu.Lock()
				if l.sent[id] == nil {
					l.sent[id] = map[int]int{}
				}
				l.sent[id][resp.StatusCode]++
				l.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return l
}

// of is what the tasks answered: requests and 500s.
func (l *load) of(tasks map[string]bool) (total, errors int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id := range tasks {
		for code, n := range l.sent[id] {
			total += n
			if code == http.StatusInternalServerError {
				errors += n
			}
		}
	}
	return total, errors
}

// tasksOn are the IDs of the tasks census saw on digest.
func (c *census) tasksOn(digest string) map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]bool{}
	for id := range c.saw[digest] {
		out[id] = true
	}
	return out
}

// queries is how many instant queries Prometheus answered, by its own
// count.
func (p *prometheus) queries(t *testing.T) int {
	t.Helper()
	resp, err := http.Get(p.base + "/metrics")
	if err != nil {
		t.Fatalf("prometheus' own metrics: %v", err)
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "prometheus_http_requests_total{") && strings.Contains(line, `handler="/api/v1/query"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			n += int(v)
		}
	}
	return n
}

// judgedUntil is the end of the canary window the updater logged the
// nth time it began to judge one.
func judgedUntil(t *testing.T, u *updater, n int) time.Time {
	t.Helper()
	u.waitLog(t, deployLimit, n, "canary judged")
	l := u.matching("canary judged")[n-1]
	until, err := time.Parse(time.RFC3339Nano, fmt.Sprint(l["until"]))
	if err != nil {
		t.Fatalf("canary judged: until %v: %v", l["until"], err)
	}
	return until
}

// outcomeOf waits for the report of the deploy to digest, either way.
func outcomeOf(t *testing.T, u *updater, digest string) map[string]any {
	t.Helper()
	waitFor(t, deployLimit+canaryWindow, "the outcome of the deploy to "+digest[:19], func() bool {
		return u.count("deploy failed", "to_digest", digest)+u.count("deploy succeeded", "to_digest", digest) > 0
	})
	if f := u.find("deploy failed", "to_digest", digest); f != nil {
		return f
	}
	return u.find("deploy succeeded", "to_digest", digest)
}

// explain logs what the load generator got from each task and what
// Prometheus holds for the service, for a failure's reader.
func explain(t *testing.T, prom *prometheus, l *load, service string) {
	l.mu.Lock()
	t.Logf("load generator, by task: %v", l.sent)
	l.mu.Unlock()
	for _, s := range prom.query(t, fmt.Sprintf(`http_requests_total{service=%q}`, service)) {
		t.Logf("prometheus: %v = %v", s.Metric, s.Value[1])
	}
}

var gave = regexp.MustCompile(`query gave ([0-9.e+-]+), not ≤ 0\.05`)

func TestCanaryJudgedByPrometheus(t *testing.T) {
	const stack, repo = "e2ecanary", "e2e/canary-app"
	name := stack + "_web"
	netName := stack + "_default"
	netID := overlay(t, netName)
	v4 := pushImage(t, repo, errorImage(t, "0"))
	fwd := forwardProxy(t, stack+"proxy", repo, v4, netName)
	prom := startPrometheusWith(t, canaryScrape(env.docker.DaemonHost(), netName, fwd.String()))

	id := createOn(t, name, repo, v4, netName, svcOpts{stack: stack, optIn: true, replicas: 4, labels: map[string]string{
		deploy.LabelCanary:         "1",
		deploy.LabelCanaryQuery:    canaryQuery,
		deploy.LabelCanaryMax:      "0.05",
		deploy.LabelCanaryWindow:   canaryWindow.String(),
		deploy.LabelCanaryInterval: canaryInterval.String(),
	}})
	c := startCensus(t, id, netID)
	l := startLoad(t, c, fwd)
	// Prometheus scrapes all four before anything is judged.
	prom.waitQuery(t, 60*time.Second, fmt.Sprintf(`http_requests_total{code="200",service=%q} > 0`, name), 4)

	proxy := newDockerProxy(t)
	updaterEnv := httpEnv("DOCKER_HOST="+proxy.host, "UPDATER_PROMETHEUS_URL="+prom.base)
	u := startUpdater(t, stack, updaterEnv...)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })
	writes := func() []time.Time { return proxy.writeTimes(id) }

	var v6 string
	t.Run("1 errors: one task ever on it, rolled back", func(t *testing.T) {
		before := len(writes())
		v5 := pushImage(t, repo, errorImage(t, "0.3"))
		until := judgedUntil(t, u, 1)
		f := outcomeOf(t, u, v5)
		if f["msg"] != "deploy failed" {
			explain(t, prom, l, name)
		}
		why := fmt.Sprint(f["err"])
		m := gave.FindStringSubmatch(why)
		if f["step"] != string(deploy.PhaseCanary) || f["rolled_back"] != true || m == nil {
			t.Fatalf("failure report: step=%v rolled_back=%v err=%q: want canary, rolled back, the ratio and the bound quoted", f["step"], f["rolled_back"], why)
		}
		ratio, _ := strconv.ParseFloat(m[1], 64)
		if ratio < 0.2 || ratio > 0.4 {
			t.Fatalf("the report quotes an error ratio of %v, want about 0.3 (v5 answers 30 %% errors): %s", ratio, why)
		}
		waitFor(t, deployLimit, "all 4 back on v4", func() bool { return allRunning(t, id, v4) })
		if n := c.ever(v5); n != 1 {
			t.Fatalf("%d tasks ever ran v5, want exactly 1 (the canary)", n)
		}
		total, errs := l.of(c.tasksOn(v5))
		if total == 0 || float64(errs)/float64(total) < 0.2 {
			t.Fatalf("the load generator got %d errors of %d requests from the v5 task: want about 30 %%", errs, total)
		}
		if n := records(t, id, "failed-digest"); n != 1 {
			t.Fatalf("%d failed-digest records in Swarm, want 1 (v5 quarantined)", n)
		}
		w := writes()[before:]
		if len(w) != 3 {
			t.Fatalf("%d spec writes for the deploy, want 3 (the canary, the revert, the seal)", len(w))
		}
		// The failing evaluation was the first, an interval into the window.
		delay := w[1].Sub(until.Add(-canaryWindow + canaryInterval))
		t.Logf("figure: v5's canary failed at its first evaluation (ratio %v, the load generator saw %d errors in %d requests); decision delay, evaluation due → revert answered: %s",
			ratio, errs, total, delay.Round(time.Millisecond))
		if delay < 0 || delay > canaryInterval {
			t.Fatalf("decision delay %s: want at most one evaluation interval (%s)", delay, canaryInterval)
		}
		ver, after := inspect(t, id).Version.Index, u.cycles()
		waitFor(t, 30*time.Second, "3 more cycles", func() bool { return u.cycles() >= after+3 })
		if n := u.count("deploy started", "to_digest", v5); n != 1 {
			t.Fatalf("v5 started %d times, want once: it is quarantined", n)
		}
		if n := u.count("deploy failed", "to_digest", v5) + u.count("deploy succeeded", "to_digest", v5); n != 1 {
			t.Fatalf("%d outcome reports for v5, want 1", n)
		}
		if v := inspect(t, id).Version.Index; v != ver || c.ever(v5) != 1 {
			t.Fatalf("spec version %d → %d, %d tasks ever on v5, while the tag stayed on the quarantined digest", ver, v, c.ever(v5))
		}
	})
	if t.Failed() {
		return
	}

	t.Run("2 clean: promoted, the canary kept", func(t *testing.T) {
		before := len(writes())
		_, heads, gets := env.faults.counts()
		calls, queries := proxy.requests(), prom.queries(t)
		pushed := time.Now()
		v6 = pushImage(t, repo, errorImage(t, "0"))
		until := judgedUntil(t, u, 2)
		// Mid-window, the API (and the page, from the same history) says
		// how the canary stands, in the words Slack shows.
		u.waitLog(t, deployLimit, 1, "deploy progress", "step", string(deploy.PhaseCanary), "to_digest", v6)
		r := call(t, http.MethodGet, u.base(t)+"/api/v1/deploys", "Bearer "+apiToken, nil, "")
		var list struct {
			Deploys []struct {
				To     string `json:"to_digest"`
				State  string `json:"state"`
				Phase  string `json:"phase"`
				Canary string `json:"canary"`
			} `json:"deploys"`
		}
		if err := json.Unmarshal([]byte(r.body), &list); err != nil || r.status != http.StatusOK {
			t.Fatalf("GET /api/v1/deploys: %d %s", r.status, r.body)
		}
		want := "canary 1 of 4 on latest (" + deploy.Short(v6) + ") · "
		if len(list.Deploys) == 0 || list.Deploys[0].To != v6 || list.Deploys[0].State != "running" || list.Deploys[0].Phase != "canary" ||
			!strings.HasPrefix(list.Deploys[0].Canary, want) || !strings.Contains(list.Deploys[0].Canary, "≤ 0.05 · ") || !strings.HasSuffix(list.Deploys[0].Canary, "s left") {
			t.Fatalf("the API's newest deploy mid-window: %+v, want v6 running in phase canary, its line %q…≤ 0.05 · …s left", list.Deploys, want)
		}
		t.Logf("figure: mid-window, the API's canary line: %q", list.Deploys[0].Canary)
		if f := outcomeOf(t, u, v6); f["msg"] != "deploy succeeded" {
			explain(t, prom, l, name)
			t.Fatalf("v6 (clean) %v: %v", f["msg"], f["err"])
		}
		done := time.Now()
		_, heads2, gets2 := env.faults.counts()
		calls2, queries2 := proxy.requests(), prom.queries(t)
		waitFor(t, deployLimit, "all 4 on v6", func() bool { return allRunning(t, id, v6) })
		if n := c.ever(v6); n != 4 {
			t.Fatalf("%d tasks ever ran v6, want 4: the canary kept, the 3 others replaced once", n)
		}
		w := writes()[before:]
		if len(w) != 3 {
			t.Fatalf("%d spec writes for the deploy, want 3 (the canary, the promotion, the seal)", len(w))
		}
		if w[1].Before(until) {
			t.Fatalf("promoted at %s, before the window's end %s", w[1].Format(time.StampMilli), until.Format(time.StampMilli))
		}
		delay := w[1].Sub(until)
		f := u.find("deploy succeeded", "to_digest", v6)
		dur, _ := time.ParseDuration(fmt.Sprint(f["duration"]))
		t.Logf("figure: v6 promoted; decision delay, window's end → promotion answered: %s; deploy %s (window %s, rollout of the other 3 after the promotion %s; push → success %s)",
			delay.Round(time.Millisecond), dur.Round(100*time.Millisecond), canaryWindow, w[2].Sub(w[1]).Round(100*time.Millisecond), done.Sub(pushed).Round(100*time.Millisecond))
		t.Logf("figure: one canary deploy's requests: registry %d manifest HEADs (one per cycle, %d cycles' worth) and %d GETs; Docker %v; Prometheus %d instant queries",
			heads2-heads, heads2-heads, gets2-gets, diffCalls(calls, calls2), queries2-queries)
		if delay > canaryInterval {
			t.Fatalf("decision delay %s: want at most one evaluation interval (%s)", delay, canaryInterval)
		}
		if n := queries2 - queries; n < int(canaryWindow/canaryInterval) || n > int(canaryWindow/canaryInterval)+1 {
			t.Fatalf("Prometheus answered %d queries over the deploy, want %d (a %s window evaluated every %s)", n, canaryWindow/canaryInterval, canaryWindow, canaryInterval)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("3 Prometheus stopped: inconclusive, rolled back", func(t *testing.T) {
		before := len(writes())
		v7 := pushImage(t, repo, errorImage(t, "0"))
		judgedUntil(t, u, 3) // the window began; its first evaluation is an interval away
		prom.stop()
		f := outcomeOf(t, u, v7)
		why := fmt.Sprint(f["err"])
		if f["step"] != string(deploy.PhaseCanary) || f["rolled_back"] != true || !strings.Contains(why, "inconclusive") || !strings.Contains(why, "unreachable") {
			t.Fatalf("failure report: step=%v rolled_back=%v err=%q: want canary, rolled back, inconclusive because Prometheus is unreachable", f["step"], f["rolled_back"], why)
		}
		waitFor(t, deployLimit, "all 4 back on v6", func() bool { return allRunning(t, id, v6) })
		if n := c.ever(v7); n != 1 {
			t.Fatalf("%d tasks ever ran v7, want exactly 1", n)
		}
		if n := len(writes()) - before; n != 3 {
			t.Fatalf("%d spec writes for the deploy, want 3 (the canary, the revert, the seal)", n)
		}
		prom.start(t)
		prom.waitQuery(t, 30*time.Second, fmt.Sprintf(`http_requests_total{code="200",service=%q} > 0`, name), 4)
	})
	if t.Failed() {
		return
	}

	t.Run("4 SIGKILL mid-window: the same window judged to its end, one report", func(t *testing.T) {
		before := len(writes())
		v8 := pushImage(t, repo, errorImage(t, "0"))
		until := judgedUntil(t, u, 4)
		u.waitLog(t, deployLimit, 1, "deploy progress", "step", string(deploy.PhaseCanary), "to_digest", v8)
		if err := u.stop(syscall.SIGKILL); err == nil {
			t.Fatal("the updater exited cleanly on SIGKILL")
		}
		killed := time.Now()
		u2 := startUpdater(t, stack, updaterEnv...)
		until2 := judgedUntil(t, u2, 1)
		if f := outcomeOf(t, u2, v8); f["msg"] != "deploy succeeded" {
			explain(t, prom, l, name)
			t.Fatalf("v8 (clean) %v after the restart: %v", f["msg"], f["err"])
		}
		if d := until2.Sub(until); d < -2*time.Second || d > 2*time.Second {
			t.Fatalf("the restarted updater judged until %s, the first until %s: want the same window (its start kept in the record)", until2, until)
		}
		waitFor(t, deployLimit, "all 4 on v8", func() bool { return allRunning(t, id, v8) })
		if n := c.ever(v8); n != 4 {
			t.Fatalf("%d tasks ever ran v8, want 4", n)
		}
		w := writes()[before:]
		if len(w) != 3 || w[1].Before(until2) {
			t.Fatalf("spec writes %v: want 3 (canary, promotion at or after the window's end %s, seal)", w, until2)
		}
		if n := u.count("deploy succeeded", "to_digest", v8) + u.count("deploy failed", "to_digest", v8) +
			u2.count("deploy failed", "to_digest", v8) + u2.count("deploy succeeded", "to_digest", v8); n != 1 {
			t.Fatalf("%d outcome reports for v8 from both updaters, want 1", n)
		}
		if u2.find("deploy succeeded", "to_digest", v8)["resumed"] != true {
			t.Fatal("the outcome is not marked resumed")
		}
		t.Logf("figure: SIGKILL %s before the window's end; the restarted updater promoted %s after it", until.Sub(killed).Round(100*time.Millisecond), w[1].Sub(until2).Round(time.Millisecond))
	})
}

// forwardProxy runs demo/app's proxy mode as a service on netName, with
// its port published on the node (host mode), and returns its URL: the
// IPv4 binding Docker made, read from the container.
func forwardProxy(t *testing.T, name, repo, digest, netName string) *url.URL {
	t.Helper()
	ni, err := env.docker.NetworkInspect(context.Background(), netName, client.NetworkInspectOptions{})
	if err != nil || len(ni.Network.IPAM.Config) == 0 {
		t.Fatalf("inspect %s: %v (%d subnets)", netName, err, len(ni.Network.IPAM.Config))
	}
	subnet := ni.Network.IPAM.Config[0].Subnet
	// Published on every interface, it relays only to the test's network.
	spec := serviceSpec(name, repo, digest, svcOpts{env: []string{"PROXY_ALLOW=" + subnet.String()}})
	spec.TaskTemplate.ContainerSpec.Args = []string{"proxy"}
	spec.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: netName}}
	spec.EndpointSpec = &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR, Ports: []swarm.PortConfig{{
		Protocol: network.TCP, TargetPort: 8080, PublishMode: swarm.PortConfigPublishModeHost,
	}}}
	res, err := env.docker.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		t.Fatalf("create the proxy: %v", err)
	}
	t.Cleanup(func() { removeService(res.ID) })
	var u *url.URL
	waitFor(t, 60*time.Second, name+" running with a port on the host", func() bool {
		for _, task := range tasksOf(t, res.ID, digest) {
			if task.Status.State != swarm.TaskStateRunning || task.Status.ContainerStatus == nil {
				continue
			}
			ci, err := env.docker.ContainerInspect(context.Background(), task.Status.ContainerStatus.ContainerID, client.ContainerInspectOptions{})
			if err != nil || ci.Container.NetworkSettings == nil {
				continue
			}
			for _, bindings := range ci.Container.NetworkSettings.Ports {
				for _, b := range bindings {
					if b.HostIP.Is4() {
						u = &url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", b.HostPort)}
					}
				}
			}
		}
		return u != nil
	})
	// Anything else is refused: the host, say.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(u)}}
	waitFor(t, 10*time.Second, "the proxy to answer", func() bool {
		resp, err := hc.Get("http://" + env.direct + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("the proxy relayed to the host's %s: %d, want 403 (only %s)", env.direct, resp.StatusCode, subnet)
		}
		return true
	})
	return u
}

// diffCalls is after − before, by method.
func diffCalls(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for m, n := range after {
		if d := n - before[m]; d > 0 {
			out[m] = d
		}
	}
	return out
}
