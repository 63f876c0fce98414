package deploy_test

import (
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

const canaryQ = `sum(rate(http_requests_total{code=~"5..",task=~"{tasks}"}[1m])) / sum(rate(http_requests_total{task=~"{tasks}"}[1m]))`

// canaryLabels is a valid canary with extra labels over it (an empty
// value deletes a label).
func canaryLabels(kv ...string) map[string]string {
	m := map[string]string{deploy.LabelCanary: "1", deploy.LabelCanaryQuery: canaryQ, deploy.LabelCanaryMax: "0.05"}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			delete(m, kv[i])
			continue
		}
		m[kv[i]] = kv[i+1]
	}
	return m
}

func TestParseCanary(t *testing.T) {
	c, err := deploy.ParseCanary(canaryLabels(), 4)
	if err != nil {
		t.Fatal(err)
	}
	want := deploy.Canary{Tasks: 1, Window: time.Minute, Query: canaryQ, Bound: deploy.CanaryBound{Max: 0.05, HasMax: true},
		Interval: 10 * time.Second, Failures: 1, OnError: deploy.OnErrorRollback}
	if c != want {
		t.Errorf("defaults: %+v, want %+v", c, want)
	}
	c, err = deploy.ParseCanary(canaryLabels(deploy.LabelCanary, "25%", deploy.LabelCanaryWindow, "5m", deploy.LabelCanaryInterval, "30s",
		deploy.LabelCanaryFailures, "3", deploy.LabelCanaryOnError, "Promote", deploy.LabelCanaryMin, "-1.5e-3"), 10)
	if err != nil {
		t.Fatal(err)
	}
	want = deploy.Canary{Tasks: 3, Window: 5 * time.Minute, Query: canaryQ, Bound: deploy.CanaryBound{Min: -0.0015, Max: 0.05, HasMin: true, HasMax: true},
		Interval: 30 * time.Second, Failures: 3, OnError: deploy.OnErrorPromote}
	if c != want {
		t.Errorf("all set: %+v, want %+v", c, want)
	}
	if c, err := deploy.ParseCanary(map[string]string{"updater.enable": "true", "updater.canaryish": "x"}, 1); err != nil || c != (deploy.Canary{}) {
		t.Errorf("no canary: %+v, %v", c, err)
	}
}

// A share rounds up, is at least one task and leaves at least one.
func TestCanaryShare(t *testing.T) {
	for _, c := range []struct {
		v        string
		replicas int
		want     int // 0: an error
	}{
		{"25%", 4, 1}, {"30%", 4, 2}, {"1%", 2, 1}, {"50%", 2, 1}, {"51%", 2, 0}, {"99%", 100, 99}, {"75%", 4, 3}, {"76%", 4, 0},
		{"3", 4, 3}, {"4", 4, 0}, {" 2 ", 3, 2}, {"1", 2, 1},
	} {
		got, err := deploy.ParseCanary(canaryLabels(deploy.LabelCanary, c.v), c.replicas)
		if c.want == 0 {
			if err == nil {
				t.Errorf("%q of %d: %d tasks, want an error", c.v, c.replicas, got.Tasks)
			}
			continue
		}
		if err != nil || got.Tasks != c.want {
			t.Errorf("%q of %d: %d tasks, %v; want %d", c.v, c.replicas, got.Tasks, err, c.want)
		}
	}
}

// Every error names the label, the value as labelled and the valid form.
func TestCanaryLabelErrors(t *testing.T) {
	for _, c := range []struct {
		labels   map[string]string
		replicas int
		want     []string
	}{
		{canaryLabels(), 1, []string{`updater.canary="1"`, "2 replicas or more", "has 1"}},
		{canaryLabels(), 0, []string{`updater.canary="1"`, "2 replicas or more"}},
		{canaryLabels(deploy.LabelCanary, "4"), 4, []string{`updater.canary="4"`, "from 1 to 3", "1 or 25%"}},
		{canaryLabels(deploy.LabelCanary, "0"), 4, []string{`updater.canary="0"`, "from 1 to 3"}},
		{canaryLabels(deploy.LabelCanary, "-1"), 4, []string{`updater.canary="-1"`}},
		{canaryLabels(deploy.LabelCanary, "one"), 4, []string{`updater.canary="one"`, "from 1 to 3"}},
		{canaryLabels(deploy.LabelCanary, "100%"), 4, []string{`updater.canary="100%"`, "1% to 99%"}},
		{canaryLabels(deploy.LabelCanary, "12.5%"), 8, []string{`updater.canary="12.5%"`, "1% to 99%"}},
		{canaryLabels(deploy.LabelCanary, "90%"), 4, []string{`updater.canary="90%"`, "is 4 tasks, all of them"}},
		{canaryLabels(deploy.LabelCanaryWindow, "9s"), 4, []string{`updater.canary.window="9s"`, "from 10s to 1h0m0s", "e.g. 5m"}},
		{canaryLabels(deploy.LabelCanaryWindow, "2h"), 4, []string{`updater.canary.window="2h"`, "10s to 1h0m0s"}},
		{canaryLabels(deploy.LabelCanaryWindow, "60"), 4, []string{`updater.canary.window="60"`}},
		{canaryLabels(deploy.LabelCanaryInterval, "500ms"), 4, []string{`updater.canary.interval="500ms"`, "from 1s"}},
		{canaryLabels(deploy.LabelCanaryInterval, "2m"), 4, []string{`updater.canary.interval="2m"`, "no longer than the window (updater.canary.window=1m0s)"}},
		{canaryLabels(deploy.LabelCanaryQuery, ""), 4, []string{"updater.canary.query is required with updater.canary", "e.g. sum(rate("}},
		{canaryLabels(deploy.LabelCanaryQuery, "  "), 4, []string{"updater.canary.query is required"}},
		{canaryLabels(deploy.LabelCanaryQuery, `up{task=~"{task}"}`), 4, []string{`updater.canary.query="up{task=~\"{task}\"}"`, "unknown placeholder {task}", "{service}, {digest}, {tasks}, {baseline_tasks}"}},
		{canaryLabels(deploy.LabelCanaryQuery, `sum(rate(errors_total[1m]))`), 4, []string{`updater.canary.query="sum(rate(errors_total[1m]))"`, "names none of {tasks}, {digest} or {service}"}},
		{canaryLabels(deploy.LabelCanaryQuery, `sum(rate(x{task=~"{tasks}"}[1m])`), 4, []string{"updater.canary.query=", "( is not closed"}},
		{canaryLabels(deploy.LabelCanaryQuery, `x{task=~"{tasks}}`), 4, []string{"updater.canary.query=", `the string opened by " at character 9 is not closed`}},
		{canaryLabels(deploy.LabelCanaryQuery, `x{task=~"{tasks}"}[1m]]`), 4, []string{"] at character 23 closes nothing open"}},
		{canaryLabels(deploy.LabelCanaryMax, ""), 4, []string{"updater.canary.max or updater.canary.min is required", "e.g. updater.canary.max=0.05"}},
		{canaryLabels(deploy.LabelCanaryMax, "5%"), 4, []string{`updater.canary.max="5%"`, "want a number, e.g. 0.05"}},
		{canaryLabels(deploy.LabelCanaryMax, "NaN"), 4, []string{`updater.canary.max="NaN"`, "want a number"}},
		{canaryLabels(deploy.LabelCanaryMin, "+Inf"), 4, []string{`updater.canary.min="+Inf"`, "want a number"}},
		{canaryLabels(deploy.LabelCanaryMin, "0.5", deploy.LabelCanaryMax, "0.1"), 4, []string{`updater.canary.min="0.5" is above updater.canary.max="0.1"`}},
		{canaryLabels(deploy.LabelCanaryFailures, "0"), 4, []string{`updater.canary.failures="0"`, "from 1 to 6 (a 1m0s window evaluated every 10s)", "default 1"}},
		{canaryLabels(deploy.LabelCanaryFailures, "7"), 4, []string{`updater.canary.failures="7"`, "from 1 to 6"}},
		{canaryLabels(deploy.LabelCanaryFailures, "2", deploy.LabelCanaryWindow, "10s"), 4, []string{`updater.canary.failures="2"`, "from 1 to 1"}},
		// 25 s every 10 s: evaluated at 10, 20 and 25 s, so 3 failures can abort, 4 can't.
		{canaryLabels(deploy.LabelCanaryFailures, "4", deploy.LabelCanaryWindow, "25s"), 4, []string{`updater.canary.failures="4"`, "from 1 to 3"}},
		{canaryLabels(deploy.LabelCanaryOnError, "ignore"), 4, []string{`updater.canary.on-error="ignore"`, "want rollback (the default", "or promote"}},
		{canaryLabels("updater.canary.maximum", "0.1"), 4, []string{"unknown label updater.canary.maximum", "updater.canary.max,"}},
		{map[string]string{deploy.LabelCanaryQuery: canaryQ}, 4, []string{"label updater.canary.query is set without updater.canary", "e.g. updater.canary=1"}},
		{map[string]string{deploy.LabelCanaryOnError: "promote"}, 4, []string{"updater.canary.on-error is set without updater.canary"}},
	} {
		_, err := deploy.ParseCanary(c.labels, c.replicas)
		if err == nil {
			t.Errorf("%v (%d replicas): no error, want one with %q", c.labels, c.replicas, c.want)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v (%d replicas): error %q, want it to say %q", c.labels, c.replicas, err, w)
			}
		}
	}
}

// The query as evaluated: placeholders filled, the task lists regular
// expressions matching exactly those names, with no backslash (which a
// PromQL "…" string would take as its own escape).
func TestCanaryExpr(t *testing.T) {
	c, err := deploy.ParseCanary(canaryLabels(deploy.LabelCanaryQuery,
		`x{service="{service}",digest="{digest}",task=~"{tasks}"} / x{task=~"{baseline_tasks}"}`), 4)
	if err != nil {
		t.Fatal(err)
	}
	got := c.Expr("shop_web", "sha256:ab", []string{"shop_web.1.abc", "shop_web.4.def"}, []string{"shop_web.2.x"})
	want := `x{service="shop_web",digest="sha256:ab",task=~"shop_web[.]1[.]abc|shop_web[.]4[.]def"} / x{task=~"shop_web[.]2[.]x"}`
	if got != want {
		t.Errorf("Expr:\n got %s\nwant %s", got, want)
	}
	// Prometheus anchors a regex matcher: ^(?:re)$.
	re := regexp.MustCompile(`^(?:` + strings.SplitN(strings.SplitN(got, `task=~"`, 2)[1], `"`, 2)[0] + `)$`)
	for name, match := range map[string]bool{"shop_web.1.abc": true, "shop_web.4.def": true, "shop_webX1Xabc": false, "shop_web.1.abcd": false, "shop_web.2.x": false} {
		if re.MatchString(name) != match {
			t.Errorf("%s matched %t by %s", name, !match, re)
		}
	}
	if e := c.Expr("s", "d", nil, nil); !strings.Contains(e, `task=~"-none-"`) {
		t.Errorf("no tasks: %s, want a regex no task name matches", e)
	}
}

func TestCanaryBound(t *testing.T) {
	for _, c := range []struct {
		b    deploy.CanaryBound
		v    float64
		ok   bool
		text string
	}{
		{deploy.CanaryBound{Max: 0.05, HasMax: true}, 0.05, true, "≤ 0.05"},
		{deploy.CanaryBound{Max: 0.05, HasMax: true}, 0.0501, false, "≤ 0.05"},
		{deploy.CanaryBound{Min: 0.9, HasMin: true}, 0.89, false, "≥ 0.9"},
		{deploy.CanaryBound{Min: 0.9, HasMin: true}, 1, true, "≥ 0.9"},
		{deploy.CanaryBound{Min: 1, Max: 2, HasMin: true, HasMax: true}, 2.5, false, "1 ≤ v ≤ 2"},
		{deploy.CanaryBound{Min: 1, Max: 2, HasMin: true, HasMax: true}, 1.5, true, "1 ≤ v ≤ 2"},
		{deploy.CanaryBound{Max: 0.05, HasMax: true}, math.NaN(), false, "≤ 0.05"},
	} {
		if c.b.Holds(c.v) != c.ok || c.b.String() != c.text {
			t.Errorf("%+v: Holds(%v)=%t %q, want %t %q", c.b, c.v, c.b.Holds(c.v), c.b.String(), c.ok, c.text)
		}
	}
}

func FuzzParseCanary(f *testing.F) {
	for _, s := range [][6]string{
		{"1", canaryQ, "0.05", "", "", "4"},
		{"25%", `up{service="{service}"}`, "", "1", "30s", "10"},
		{"99%", `x{task=~"{tasks}"} - x{task=~"{baseline_tasks}"}`, "1e3", "-1e3", "1s", "200"},
		{"0", `"{tasks}`, "x", "", "", "1"},
		{"3", "({digest}]", "", "", "", "4"},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5])
	}
	f.Fuzz(func(t *testing.T, count, query, max, min, interval, replicas string) {
		r, _ := strconv.Atoi(replicas)
		labels := map[string]string{deploy.LabelCanary: count, deploy.LabelCanaryQuery: query}
		for k, v := range map[string]string{deploy.LabelCanaryMax: max, deploy.LabelCanaryMin: min, deploy.LabelCanaryInterval: interval} {
			if v != "" {
				labels[k] = v
			}
		}
		c, err := deploy.ParseCanary(labels, r)
		if err != nil {
			if !strings.Contains(err.Error(), "updater.canary") {
				t.Fatalf("error names no label: %v", err)
			}
			return
		}
		// What parses leaves an old task, evaluates within the window, can
		// abort, and has a bound some value meets.
		if c.Tasks < 1 || c.Tasks >= r || c.Interval < time.Second || c.Interval > c.Window || c.Failures < 1 ||
			c.Failures > int((c.Window+c.Interval-1)/c.Interval) || !(c.Bound.HasMin || c.Bound.HasMax) {
			t.Fatalf("parsed %+v for %d replicas", c, r)
		}
		v := c.Bound.Min
		if !c.Bound.HasMin {
			v = c.Bound.Max
		}
		if !c.Bound.Holds(v) {
			t.Fatalf("bound %s holds for nothing", c.Bound)
		}
		// Every placeholder is filled.
		e := c.Expr("svc", "sha256:0", []string{"svc.1.a"}, []string{"svc.2.b"})
		for _, ph := range []string{"{service}", "{digest}", "{tasks}", "{baseline_tasks}"} {
			if strings.Contains(e, ph) {
				t.Fatalf("%s left in %s", ph, e)
			}
		}
	})
}
