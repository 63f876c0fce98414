//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// prometheus is Debian's Prometheus (2.42), scraping every second on
// 127.0.0.1: the metrics as a team's Prometheus stores and queries them,
// not only as the text a handler prints.
type prometheus struct {
	base, dir string
	cmd       *exec.Cmd
	log       bytes.Buffer
}

// startPrometheus scrapes one target.
func startPrometheus(t *testing.T, target string) *prometheus {
	t.Helper()
	return startPrometheusWith(t, fmt.Sprintf("  - job_name: updater\n    static_configs:\n      - targets: [%q]\n", target))
}

// startPrometheusWith runs Prometheus with scrape as its scrape_configs
// (YAML list entries, indented by two).
func startPrometheusWith(t *testing.T, scrape string) *prometheus {
	t.Helper()
	dir := t.TempDir()
	cfg := "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n" + scrape
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &prometheus{base: "http://" + freeAddr(t), dir: dir}
	p.start(t)
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", p.log.String())
		}
	})
	return p
}

// start starts it, again after stop on the same address and data.
func (p *prometheus) start(t *testing.T) {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("Debian's prometheus is required (.ci/run installs it): %v", err)
	}
	p.cmd = exec.Command(bin, "--config.file="+filepath.Join(p.dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(p.dir, "data"),
		"--web.listen-address="+strings.TrimPrefix(p.base, "http://"))
	p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
}

// stop ends the process this test started, and waits for it.
func (p *prometheus) stop() {
	if p.cmd == nil || p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Wait()
}

// sample is one series of an instant query's answer.
type sample struct {
	Metric map[string]string
	Value  [2]any // [time, "value"]
}

// query runs an instant PromQL query; nil on any error, which the
// polling callers wait out (Prometheus starting, no scrape yet).
func (p *prometheus) query(t *testing.T, q string) []sample {
	t.Helper()
	resp, err := http.Get(p.base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Data   struct{ Result []sample }
	}
	if json.NewDecoder(resp.Body).Decode(&r) != nil || r.Status != "success" {
		return nil
	}
	return r.Data.Result
}

// waitQuery polls q until it returns exactly n series.
func (p *prometheus) waitQuery(t *testing.T, limit time.Duration, q string, n int) []sample {
	t.Helper()
	var got []sample
	waitFor(t, limit, fmt.Sprintf("%d series from %s", n, q), func() bool {
		got = p.query(t, q)
		return len(got) == n
	})
	return got
}

// The metrics an operator alerts on, read from a real Prometheus that
// scrapes the updater: build info and per-service state as labelled
// series, the check's timestamp fresh while the registry answers; in a
// registry outage cycles go on, the check's timestamp stops (the README's
// alert fires) and the service's state says registry-error; after it,
// the check catches up.
func TestMetricsInPrometheus(t *testing.T) {
	const stack, repo = "e2eprom", "e2e/prom"
	v1 := push(t, repo, "v1")
	createService(t, "e2eprom_app", repo, v1, svcOpts{stack: stack, optIn: true})
	u := startUpdater(t, stack, httpEnv()...)
	target := strings.TrimPrefix(u.base(t), "http://")
	waitFor(t, 30*time.Second, "the first cycle", func() bool { return u.cycles() >= 1 })
	p := startPrometheus(t, target)

	info := p.waitQuery(t, 60*time.Second, `updater_build_info{job="updater"}`, 1)[0].Metric
	if info["version"] != "e2e" || info["goversion"] != runtime.Version() {
		t.Errorf("updater_build_info labels %v, want version e2e and goversion %s", info, runtime.Version())
	}
	state := p.waitQuery(t, 30*time.Second, `updater_service_state`, 1)[0].Metric
	if state["service"] != "e2eprom_app" || state["state"] != "up-to-date" {
		t.Errorf("updater_service_state %v, want e2eprom_app up-to-date", state)
	}
	// Fresh: the cycles every second answered.
	p.waitQuery(t, 30*time.Second, `time() - updater_last_check_timestamp_seconds < 5`, 1)
	p.waitQuery(t, 30*time.Second, `sum(updater_registry_requests_total{method="HEAD",code="200"}) > 0`, 1)
	p.waitQuery(t, 30*time.Second, `updater_last_successful_cycle_age_seconds`, 1) // deprecated, kept a release

	// The registry answers 500: cycles go on, the check does not.
	t.Cleanup(func() { env.faults.set(0) })
	env.faults.set(http.StatusInternalServerError)
	u.waitLog(t, 30*time.Second, 1, "registry failing; retrying every cycle, logged again when it recovers")
	p.waitQuery(t, 30*time.Second, `updater_last_cycle_timestamp_seconds - updater_last_check_timestamp_seconds > 3`, 1)
	p.waitQuery(t, 30*time.Second, `time() - updater_last_check_timestamp_seconds > 3`, 1) // the alert, with a 1 s schedule
	p.waitQuery(t, 30*time.Second, `time() - updater_last_cycle_timestamp_seconds < 5`, 1)
	p.waitQuery(t, 30*time.Second, `updater_service_state{service="e2eprom_app",state="registry-error"}`, 1)
	p.waitQuery(t, 30*time.Second, `sum(updater_registry_requests_total{code="500"}) > 0`, 1)

	// It answers again: the check is the cycle's end once more.
	env.faults.set(0)
	u.waitLog(t, 30*time.Second, 1, "registry recovered")
	p.waitQuery(t, 30*time.Second, `updater_last_cycle_timestamp_seconds - updater_last_check_timestamp_seconds == 0`, 1)
	p.waitQuery(t, 30*time.Second, `updater_service_state{service="e2eprom_app",state="up-to-date"}`, 1)
}
