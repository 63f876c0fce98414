// Package fakeapi serves local stand-ins for the Slack Web API, Slack
// incoming webhooks and the Rollbar API. They check requests the way the
// real services do (token, HTTP method, required fields) and record every
// request they accept, so tests can assert on exactly what was sent. They
// are for tests only; nothing in the updater binary imports this package.
package fakeapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// server is one HTTP server on a free port of 127.0.0.1.
type server struct {
	url string
	srv *http.Server
}

func serve(h http.Handler) (*server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	s := &server{url: "http://" + l.Addr().String(), srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}}
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

// close stops the server at once; later requests find the port closed,
// as when the real service is unreachable.
func (s *server) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if s.srv.Shutdown(ctx) != nil {
		_ = s.srv.Close()
	}
}

// fault is an injected answer for the next requests to one route.
type fault struct {
	n          int
	status     int
	retryAfter time.Duration
}

// faults holds injected answers by route; safe for concurrent use through
// the owner's mutex.
type faults map[string]*fault

func (f faults) take(route string) (fault, bool) {
	ft := f[route]
	if ft == nil || ft.n <= 0 {
		return fault{}, false
	}
	ft.n--
	return *ft, true
}

func writeFault(w http.ResponseWriter, ft fault, body any) {
	if ft.retryAfter > 0 {
		// Whole seconds, as Slack and most APIs send it; at least 1.
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int((ft.retryAfter+time.Second-1)/time.Second))))
	}
	writeJSON(w, ft.status, body)
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// params reads a request body the way these APIs do: a JSON object or a
// URL-encoded form. Values come back as strings, except JSON arrays and
// objects, which come back as their raw JSON text.
func params(r *http.Request) (map[string]string, bool, error) {
	out := map[string]string{}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		return nil, false, err
	}
	if ct == "application/json" {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			return nil, true, fmt.Errorf("invalid JSON: %w", err)
		}
		for k, raw := range m {
			var s string
			if json.Unmarshal(raw, &s) == nil {
				out[k] = s
				continue
			}
			if string(raw) != "null" {
				out[k] = string(raw)
			}
		}
		return out, true, nil
	}
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, false, fmt.Errorf("invalid form: %w", err)
	}
	for k, v := range vals {
		out[k] = v[0]
	}
	return out, false, nil
}

func bearer(r *http.Request) string {
	if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(v)
	}
	return ""
}

// once makes Close safe to call twice (a test's explicit Close and its
// cleanup).
type once struct {
	mu     sync.Mutex
	closed bool
}

func (o *once) close(f func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.closed {
		o.closed = true
		f()
	}
}
