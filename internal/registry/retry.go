package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// firstBackoff is the wait before the first retry when the registry gives
// no Retry-After; each later wait doubles it.
const firstBackoff = 500 * time.Millisecond

// retrying sits under go-containerregistry's auth layers, so every request
// it makes (ping, token exchange, manifest HEAD) gets the same policy, and
// a 401 goes up to the bearer transport untouched to refresh its token.
type retrying struct {
	next       http.RoundTripper
	retries    int
	maxBackoff time.Duration
}

func (t *retrying) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.retries <= 0 || (req.Body != nil && req.Body != http.NoBody && req.GetBody == nil) {
		return t.next.RoundTrip(req)
	}
	ctx := req.Context()
	for attempt := 0; ; attempt++ {
		r := req
		if attempt > 0 {
			r = req.Clone(ctx)
			if req.GetBody != nil {
				body, err := req.GetBody()
				if err != nil {
					return nil, err
				}
				r.Body = body
			}
		}
		resp, err := t.next.RoundTrip(r)
		if attempt == t.retries || !worthRetrying(resp, err) {
			return resp, err
		}
		wait := t.wait(attempt, resp)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			// Sleeping into the deadline would turn the registry's real
			// answer (a 429, a 503) into a bare "deadline exceeded".
			return resp, err
		}
		if resp != nil {
			// Drain so the connection goes back to the pool.
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-timer.C:
		}
	}
}

func (t *retrying) wait(attempt int, resp *http.Response) time.Duration {
	if resp != nil {
		if d, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return min(d, t.maxBackoff)
		}
	}
	d := t.maxBackoff
	if attempt < 16 {
		d = min(firstBackoff<<attempt, t.maxBackoff)
	}
	// Jitter keeps many updaters behind one rate limit from retrying in step.
	return d/2 + rand.N(d/2+1)
}

// retryAfter parses Retry-After, either delay-seconds or an HTTP-date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		// Past a day the exact value no longer matters (it is capped), but
		// the multiplication below must not overflow.
		return time.Duration(min(secs, 86400)) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}

func worthRetrying(resp *http.Response, err error) bool {
	if err != nil {
		return temporary(err)
	}
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// temporary recognises network failures a restarting registry or a
// flaky path produces. Our own deadline and cancellation are not among
// them: they mean stop.
func temporary(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF)
}

// digestCheck refuses a 200 to a manifest HEAD that lacks a usable
// Docker-Content-Digest. go-containerregistry already fails then, but with
// an untyped error; this gives Digest something to recognise.
type digestCheck struct{ next http.RoundTripper }

func (t digestCheck) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil || req.Method != http.MethodHead || resp.StatusCode != http.StatusOK ||
		!strings.Contains(req.URL.Path, "/manifests/") {
		return resp, err
	}
	got := resp.Header.Get("Docker-Content-Digest")
	if _, err := v1.NewHash(got); err != nil {
		resp.Body.Close()
		return nil, &badDigestError{got: got}
	}
	return resp, nil
}

// plainHTTP refuses plain-HTTP requests to hosts that are neither loopback
// nor listed as insecure. go-containerregistry falls back to HTTP by itself
// for private addresses (10/8, 172.16/12, 192.168/16), where Docker does
// not: there, anyone on the path could answer in the registry's name, and
// read the credentials sent to it.
type plainHTTP struct {
	allowed map[string]bool
	next    http.RoundTripper
}

func (t plainHTTP) RoundTrip(req *http.Request) (*http.Response, error) {
	if host := req.URL.Host; req.URL.Scheme == "http" && !loopback(host) && !t.allowed[strings.ToLower(host)] {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("plain HTTP to %s refused: it is not listed as an insecure registry, so only HTTPS is used", host)
	}
	return t.next.RoundTrip(req)
}
