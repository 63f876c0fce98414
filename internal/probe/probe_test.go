package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

func spec(t *testing.T, expect string, count int) deploy.Probe {
	t.Helper()
	e, err := deploy.ParseExpect(expect)
	if err != nil {
		t.Fatal(err)
	}
	return deploy.Probe{Expect: e, Count: count, Interval: 20 * time.Millisecond, Timeout: time.Second}
}

func TestTask(t *testing.T) {
	var calls atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { calls.Add(1); w.Write([]byte("all good")) })
	mux.HandleFunc("/500", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(500)
		w.Write([]byte(strings.Repeat("é", 150))) // 300 bytes: cut at 200 on a rune boundary
	})
	mux.HandleFunc("/204", func(w http.ResponseWriter, r *http.Request) { calls.Add(1); w.WriteHeader(204) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Redirect(w, r, "/ok", http.StatusFound)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/second-fails", func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 2 {
			w.WriteHeader(503)
			w.Write([]byte("draining"))
			return
		}
		w.Write([]byte("ok"))
	})
	mux.HandleFunc("/host", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Host != "shop.example.com" || r.Header.Get("X-Probe") != "" {
			w.WriteHeader(404)
		}
	})
	mux.HandleFunc("/auth", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			w.WriteHeader(401)
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, tc := range []struct {
		name, path, expect, header string
		count                      int
		ok                         bool
		passed, status, calls      int
		err, body                  string
	}{
		{name: "2xx three in a row", path: "/ok", expect: "2xx", count: 3, ok: true, passed: 3, calls: 3},
		{name: "500 fails the first", path: "/500", expect: "2xx", count: 3, status: 500, calls: 1, err: "got 500, want 2xx",
			body: strings.Repeat("é", 100)},
		{name: "500 expected", path: "/500", expect: "500", count: 2, ok: true, passed: 2, calls: 2},
		{name: "204 in a list", path: "/204", expect: "200,204", count: 1, ok: true, passed: 1, calls: 1},
		{name: "204 not in the list", path: "/204", expect: "200", count: 1, status: 204, calls: 1, err: "got 204, want 200"},
		{name: "body matches", path: "/ok", expect: "200 body~=good", count: 2, ok: true, passed: 2, calls: 2},
		{name: "body does not match", path: "/ok", expect: "200 body~=ready", count: 2, status: 200, calls: 1,
			err: "got 200, want 200 body~=ready", body: "all good"},
		{name: "redirect not followed", path: "/redirect", expect: "2xx", count: 1, status: 302, calls: 1, err: "got 302",
			body: "<a href=\"/ok\">Found</a>.\n\n"},
		{name: "timeout", path: "/slow", expect: "2xx", count: 3, calls: 1, err: "no complete answer within 1s"},
		{name: "second probe fails", path: "/second-fails", expect: "2xx", count: 3, passed: 1, status: 503, calls: 2,
			err: "got 503", body: "draining"},
		{name: "host header", path: "/host", expect: "200", header: "Host: shop.example.com", count: 1, ok: true, passed: 1, calls: 1},
		{name: "host header missing", path: "/host", expect: "200", count: 1, status: 404, calls: 1, err: "got 404"},
		{name: "other header", path: "/auth", expect: "200", header: "Authorization: Bearer s3cret", count: 1, ok: true, passed: 1, calls: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls.Store(0)
			s := spec(t, tc.expect, tc.count)
			s.Header = tc.header
			start := time.Now()
			r := Task(t.Context(), client(s.Timeout), s, Target{Task: "t1", Node: "n1", URL: srv.URL + tc.path + "?token=abc"})
			if r.OK != tc.ok || r.Passed != tc.passed || r.Status != tc.status || int(calls.Load()) != tc.calls {
				t.Errorf("ok %v passed %d status %d calls %d, want %v %d %d %d (%+v)", r.OK, r.Passed, r.Status, calls.Load(),
					tc.ok, tc.passed, tc.status, tc.calls, r)
			}
			if !strings.Contains(r.Err, tc.err) || (tc.err == "") != (r.Err == "") {
				t.Errorf("err %q, want it to hold %q", r.Err, tc.err)
			}
			if r.Body != tc.body {
				t.Errorf("body %q (%d bytes), want %q", r.Body, len(r.Body), tc.body)
			}
			if strings.Contains(r.URL, "abc") || strings.Contains(r.Err, "abc") || r.Task != "t1" || r.Node != "n1" {
				t.Errorf("result %+v: want the task and node named and the token masked", r)
			}
			// In a row, Interval apart: N probes take (N-1) intervals at least.
			if min := time.Duration(tc.calls-1) * s.Interval; time.Since(start) < min {
				t.Errorf("%d probes in %s, want them %s apart", tc.calls, time.Since(start), s.Interval)
			}
		})
	}
}

func TestTaskRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	r := Task(t.Context(), client(time.Second), spec(t, "2xx", 3), Target{Task: "t", URL: url})
	if r.OK || r.Status != 0 || !strings.Contains(r.Err, "refused") || strings.Contains(r.Err, url) {
		t.Errorf("%+v: want a refused connection, the URL not in the error", r)
	}
}

// Tasks are probed side by side: three tasks, each 3 probes 100 ms apart,
// take about 200 ms, not 600.
func TestMainPrintsOneLinePerTask(t *testing.T) {
	var bad atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/b" {
			bad.Store(true)
			w.WriteHeader(500)
		}
	}))
	defer srv.Close()
	var out, errs bytes.Buffer
	start := time.Now()
	code := Main(context.Background(), []string{"--count", "3", "--interval", "100ms", "--timeout", "1s", "--expect", "2xx",
		"ta,node-1," + srv.URL + "/a", "tb,node-2," + srv.URL + "/b", "tc,," + srv.URL + "/c,d"}, &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, &errs)
	}
	if took := time.Since(start); took > 550*time.Millisecond {
		t.Errorf("took %s: the tasks were not probed side by side", took)
	}
	got := map[string]deploy.ProbeResult{}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var r deploy.ProbeResult
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		got[r.Task] = r
	}
	if len(got) != 3 || !got["ta"].OK || got["ta"].Passed != 3 || got["ta"].Node != "node-1" ||
		got["tb"].OK || got["tb"].Status != 500 || !got["tc"].OK || !strings.HasSuffix(got["tc"].URL, "/c,d") {
		t.Errorf("results %+v", got)
	}
}

func TestMainUsage(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"--expect", "abc", "t,n,http://x/"},
		{"--count", "0", "t,n,http://x/"},
		{"t,http://x/"},
		{"--header", "nocolon", "t,n,http://x/"},
		{"--bogus"},
	} {
		var out, errs bytes.Buffer
		if code := Main(context.Background(), args, &out, &errs); code != 2 || out.Len() != 0 {
			t.Errorf("%q: exit %d, stdout %q; want 2 and nothing printed", args, code, &out)
		}
	}
}
