//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	promclient "github.com/updater-dev/updater/internal/prometheus"
)

// The canary's Prometheus client against Debian's Prometheus (2.42): the
// values real queries give, and what it says when a query is wrong, the
// answer is not one number, or Prometheus is gone.
func TestPrometheusQueryClient(t *testing.T) {
	// The scrape target: an error ratio as a canary's query would read it.
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# TYPE e2e_canary_error_ratio gauge\ne2e_canary_error_ratio{task=\"svc.1.abc\"} 0.25\n")
	}))
	defer target.Close()
	p := startPrometheus(t, strings.TrimPrefix(target.URL, "http://"))
	c, err := promclient.New(promclient.Options{URL: p.base, Token: "e2e-T0KEN", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	query := func(expr string) (float64, error) { return c.Query(t.Context(), expr, time.Time{}) }

	var v float64
	waitFor(t, 60*time.Second, "the target scraped", func() bool {
		v, err = query(`e2e_canary_error_ratio{job="updater",task=~"svc[.]1[.]abc|svc[.]2[.]def"}`)
		return err == nil
	})
	if v != 0.25 {
		t.Errorf("the scraped ratio is %v, want 0.25", v)
	}
	for expr, want := range map[string]float64{`up{job="updater"}`: 1, `2 * 21`: 42, `sum(up) / count(up)`: 1} {
		if got, err := query(expr); err != nil || got != want {
			t.Errorf("%s: %v, %v; want %v", expr, got, err, want)
		}
	}
	// At an instant before the scrapes began there is nothing.
	if _, err := c.Query(t.Context(), `up{job="updater"}`, time.Now().Add(-time.Hour)); !errors.Is(err, promclient.ErrResult) || !strings.Contains(err.Error(), "no series") {
		t.Errorf("an hour ago: %v, want no series", err)
	}

	for _, f := range []struct {
		expr string
		kind error
		want string
	}{
		{`sum(rate(e2e_canary_error_ratio[1m]`, promclient.ErrQuery, `bad_data: invalid parameter "query": 1:36: parse error: unclosed left parenthesis`},
		{`up + on() group_left() (up or label_replace(up, "x", "y", "", ""))`, promclient.ErrQuery, "execution: found duplicate series"},
		{`up{job="nope"}`, promclient.ErrResult, "no series: the query matched nothing"},
		{`up or label_replace(up, "copy", "1", "", "")`, promclient.ErrResult, `2 series, want one (aggregate them, with sum() say): the first is up{`},
		{`up[10s]`, promclient.ErrResult, "a range vector of 1 series, want an instant value"},
		{`0 / 0`, promclient.ErrResult, "the value is NaN"},
		{`sum(up) / 0`, promclient.ErrResult, "the value is +Inf"},
		{`"text"`, promclient.ErrResult, "want a number"},
	} {
		_, err := query(f.expr)
		if !errors.Is(err, f.kind) || !strings.Contains(err.Error(), f.want) || !strings.Contains(err.Error(), p.base) {
			t.Errorf("%s: %v; want a %q error saying %q and naming %s", f.expr, err, f.kind, f.want, p.base)
		}
	}

	// Prometheus stopped: unreachable, at once (nothing listens).
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil { // the one this test started
		t.Fatal(err)
	}
	p.cmd.Wait()
	start := time.Now()
	_, err = query(`up{job="updater"}`)
	if !errors.Is(err, promclient.ErrUnreachable) || !strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "T0KEN") {
		t.Errorf("Prometheus stopped: %v, want unreachable (connection refused), no token", err)
	}
	t.Logf("stopped Prometheus: %v (after %s)", err, time.Since(start).Round(time.Millisecond))
}
