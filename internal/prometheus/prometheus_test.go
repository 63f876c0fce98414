package prometheus_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/prometheus"
)

// Answers as Debian's Prometheus 2.42 gave them to these queries
// (curl --data-urlencode query=… /api/v1/query), byte for byte.
const (
	ansScalar   = `{"status":"success","data":{"resultType":"scalar","result":[1796150946.305,"2"]}}`
	ansOne      = `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","instance":"127.0.0.1:19391","job":"self"},"value":[1796150951.637,"1"]}]}}`
	ansEmpty    = `{"status":"success","data":{"resultType":"vector","result":[]}}`
	ansTwo      = `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","instance":"127.0.0.1:19391","job":"self"},"value":[1796150951.650,"1"]},{"metric":{"__name__":"up","instance":"127.0.0.1:19399","job":"other"},"value":[1796150951.650,"0"]}]}}`
	ansMatrix   = `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"up","instance":"127.0.0.1:19391","job":"self"},"values":[[1796150949.516,"1"],[1796150950.516,"1"],[1796150951.516,"1"]]},{"metric":{"__name__":"up","instance":"127.0.0.1:19399","job":"other"},"values":[[1796150949.009,"0"],[1796150950.009,"0"],[1796150951.009,"0"]]}]}}`
	ansString   = `{"status":"success","data":{"resultType":"string","result":[1796150946.357,"hi"]}}`
	ansNaN      = `{"status":"success","data":{"resultType":"scalar","result":[1796150946.37,"NaN"]}}`
	ansInf      = `{"status":"success","data":{"resultType":"scalar","result":[1796150946.377,"+Inf"]}}`
	ansVecNaN   = `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"self"},"value":[1796150951.637,"NaN"]}]}}`
	ansBadQuery = `{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:15: parse error: unclosed left parenthesis"}`
	ansExec     = `{"status":"error","errorType":"execution","error":"found duplicate series for the match group {} on the right hand-side of the operation: [{__name__=\"up\", instance=\"127.0.0.1:19399\", job=\"other\"}, {__name__=\"up\", instance=\"127.0.0.1:19391\", job=\"self\"}];many-to-many matching not allowed: matching labels must be unique on one side"}`
)

// server answers every query with status and body, and remembers the
// last request's form and Authorization header.
type server struct {
	*httptest.Server
	auth, query, at string
}

func serve(t *testing.T, status int, body string) *server {
	t.Helper()
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/prefix/api/v1/query" {
			http.NotFound(w, r)
			return
		}
		r.ParseForm()
		s.auth, s.query, s.at = r.Header.Get("Authorization"), r.Form.Get("query"), r.Form.Get("time")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(s.Close)
	return s
}

func client(t *testing.T, url, token string) *prometheus.Client {
	t.Helper()
	c, err := prometheus.New(prometheus.Options{URL: url, Token: token, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestQueryValue(t *testing.T) {
	for body, want := range map[string]float64{ansScalar: 2, ansOne: 1} {
		s := serve(t, http.StatusOK, body)
		at := time.Unix(1796150946, 500e6)
		got, err := client(t, s.URL+"/prefix/", "").Query(t.Context(), `up{job="self"}`, at)
		if err != nil || got != want {
			t.Errorf("%s: %v, %v; want %v", body, got, err, want)
		}
		if s.query != `up{job="self"}` || s.at != "1796150946.5" || s.auth != "" {
			t.Errorf("sent query %q time %q auth %q", s.query, s.at, s.auth)
		}
	}
}

func TestQueryBearer(t *testing.T) {
	s := serve(t, http.StatusOK, ansScalar)
	if _, err := client(t, s.URL+"/prefix", "t0ken").Query(t.Context(), "1+1", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if s.auth != "Bearer t0ken" || s.at != "" {
		t.Errorf("Authorization %q, time %q; want the bearer token and no time (the server's now)", s.auth, s.at)
	}
}

// Every way an answer is not one number, each error saying which, of
// which kind, never with the token.
func TestQueryErrors(t *testing.T) {
	const token = "S3CRET-t0ken"
	for _, c := range []struct {
		name   string
		status int
		body   string
		kind   error
		want   []string
	}{
		{"empty", 200, ansEmpty, prometheus.ErrResult, []string{"no series: the query matched nothing"}},
		{"two series", 200, ansTwo, prometheus.ErrResult, []string{"2 series, want one", `the first is up{instance="127.0.0.1:19391", job="self"}`}},
		{"matrix", 200, ansMatrix, prometheus.ErrResult, []string{"a range vector of 2 series, want an instant value"}},
		{"string", 200, ansString, prometheus.ErrResult, []string{`unexpected value type "string", want a number`}},
		{"NaN", 200, ansNaN, prometheus.ErrResult, []string{"the value is NaN"}},
		{"NaN in a vector", 200, ansVecNaN, prometheus.ErrResult, []string{"the value is NaN"}},
		{"Inf", 200, ansInf, prometheus.ErrResult, []string{"the value is +Inf"}},
		{"bad query", 400, ansBadQuery, prometheus.ErrQuery, []string{`bad_data: invalid parameter "query": 1:15: parse error: unclosed left parenthesis`}},
		{"execution", 422, ansExec, prometheus.ErrQuery, []string{"execution: found duplicate series", "many-to-many matching not allowed"}},
		{"unavailable", 503, "Service Unavailable: starting up", prometheus.ErrQuery, []string{"answered HTTP 503 Service Unavailable: Service Unavailable: starting up"}},
		{"proxy 401 echoing the header", 401, "bad credentials: Bearer " + token, prometheus.ErrQuery, []string{"answered HTTP 401 Unauthorized: bad credentials: Bearer xxxxx"}},
		{"not JSON", 200, "<html>a login page</html>", prometheus.ErrQuery, []string{"answered HTTP 200 with something other than the API's JSON"}},
		{"long body", 502, strings.Repeat("x", 1000), prometheus.ErrQuery, []string{"answered HTTP 502 Bad Gateway: xxxx", "x…"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := serve(t, c.status, c.body)
			_, err := client(t, s.URL+"/prefix", token).Query(t.Context(), "q", time.Time{})
			if !errors.Is(err, c.kind) {
				t.Fatalf("error %v, want one of kind %q", err, c.kind)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q, want it to say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), token) || !strings.Contains(err.Error(), s.URL+"/prefix") {
				t.Errorf("error %q: want the server named and the token masked", err)
			}
			if c.name == "long body" && len(err.Error()) > 400 {
				t.Errorf("error of %d bytes quotes the whole body", len(err.Error()))
			}
		})
	}
}

func TestQueryUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	_, err = client(t, "http://"+addr, "tok").Query(t.Context(), "up", time.Time{})
	if !errors.Is(err, prometheus.ErrUnreachable) || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), addr) {
		t.Errorf("refused: %v", err)
	}

	// A server that never answers: the timeout ends the query.
	// (Released at the end: a handler that has not read the request's
	// body does not see the client hang up.)
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer hung.Close()
	defer close(release)
	c, err := prometheus.New(prometheus.Options{URL: hung.URL, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = c.Query(t.Context(), "up", time.Time{})
	if !errors.Is(err, prometheus.ErrUnreachable) || !strings.Contains(err.Error(), "no answer within 200ms") {
		t.Errorf("hung: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the query took %s, want about its 200ms timeout", d)
	}

	// The caller's cancel is its own, not an unreachable server.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := c.Query(ctx, "up", time.Time{}); errors.Is(err, prometheus.ErrUnreachable) || !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
}

func TestNewRefusesBadURLs(t *testing.T) {
	for _, u := range []string{"", "prometheus:9090", "ftp://p/", "http://", "http://user:S3CRET@%zz"} {
		_, err := prometheus.New(prometheus.Options{URL: u})
		if err == nil || strings.Contains(err.Error(), "S3CRET") || !strings.Contains(err.Error(), "http://host:port") {
			t.Errorf("%q: %v, want a form error without the URL's secrets", u, err)
		}
	}
	if _, err := prometheus.New(prometheus.Options{URL: "http://p:9090", Timeout: -time.Second}); err == nil {
		t.Error("a negative timeout was accepted")
	}
	// Credentials in the URL work (basic auth) but are never quoted.
	s := serve(t, 503, "down")
	u := strings.Replace(s.URL, "http://", "http://me:S3CRET@", 1) + "/prefix?x=S3CRET"
	_, err := client(t, u, "").Query(t.Context(), "up", time.Time{})
	if err == nil || strings.Contains(err.Error(), "S3CRET") {
		t.Errorf("error %v shows the URL's secrets", err)
	}
}
