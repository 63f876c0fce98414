package soak

import (
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// fault is one way the registry misbehaves for one request.
type fault int

const (
	faultNone fault = iota
	fault500
	fault429
	fault401
	fault404
	faultStall    // answers after the client's deadline: costs a timeout
	faultReset    // hijacks the connection and resets it
	faultNoDigest // a manifest HEAD answered 200 without Docker-Content-Digest
	faultBadDigest
	faultKinds
)

var faultNames = [faultKinds]string{"none", "500", "429", "401", "404", "stall", "reset", "no-digest", "bad-digest"}

// faultWeights is the mix of faults among faulted requests. A stall costs
// a whole registry timeout, so it is rare; the rest cost next to nothing.
var faultWeights = [faultKinds]int{
	fault500: 50, fault429: 40, fault401: 20, fault404: 20, faultStall: 1,
	faultReset: 30, faultNoDigest: 16, faultBadDigest: 16,
}

// faultRate is the share of the updater's registry requests that fail.
const faultRate = 0.12

// stallFor bounds a stalled answer; the client gives up long before.
const stallFor = 2 * time.Second

// faultyRegistry is go-containerregistry's registry on 127.0.0.1 behind a
// handler that, while armed, fails requests at random.
type faultyRegistry struct {
	host  string
	srv   *httptest.Server
	armed atomic.Bool

	mu  sync.Mutex
	rng *rand.Rand

	injected [faultKinds]atomic.Int64
	requests atomic.Int64 // while armed
	heads    atomic.Int64 // manifest HEADs while armed
	gets     atomic.Int64 // manifest GETs while armed
}

func newFaultyRegistry(t *testing.T, seed uint64) *faultyRegistry {
	t.Helper()
	f := &faultyRegistry{rng: rand.New(rand.NewPCG(seed, seed^0x50a4))}
	// In memory: the images have no layers, so what the registry keeps
	// (a config and a manifest per push, ~1 KiB) hardly moves the heap.
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.armed.Load() {
			f.requests.Add(1)
			if strings.Contains(r.URL.Path, "/manifests/") {
				switch r.Method {
				case http.MethodHead:
					f.heads.Add(1)
				case http.MethodGet:
					f.gets.Add(1)
				}
			}
			if k := f.pick(r); k != faultNone {
				f.injected[k].Add(1)
				f.fail(k, w, r)
				return
			}
		}
		inner.ServeHTTP(w, r)
	}))
	// Reset connections and the https half of the client's ping race make
	// the server log; none of it is news here.
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	f.host = strings.TrimPrefix(f.srv.URL, "http://")
	return f
}

// pick draws the fault for one request; faults that make no sense for it
// (a digest header on a blob GET) leave it alone.
func (f *faultyRegistry) pick(r *http.Request) fault {
	f.mu.Lock()
	x, y := f.rng.Float64(), f.rng.IntN(weightSum())
	f.mu.Unlock()
	if x >= faultRate {
		return faultNone
	}
	k := faultNone
	for i := fault500; i < faultKinds; i++ {
		if y < faultWeights[i] {
			k = i
			break
		}
		y -= faultWeights[i]
	}
	manifestHEAD := r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/manifests/")
	if (k == faultNoDigest || k == faultBadDigest) && !manifestHEAD {
		return faultNone
	}
	return k
}

func weightSum() int {
	n := 0
	for _, w := range faultWeights {
		n += w
	}
	return n
}

func (f *faultyRegistry) fail(k fault, w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	switch k {
	case fault500:
		w.WriteHeader(http.StatusInternalServerError)
	case fault429:
		f.mu.Lock()
		h.Set("Retry-After", []string{"0", "1"}[f.rng.IntN(2)])
		f.mu.Unlock()
		w.WriteHeader(http.StatusTooManyRequests)
	case fault401:
		h.Set("WWW-Authenticate", `Basic realm="soak"`)
		h.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"injected"}]}`)
	case fault404:
		h.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"injected"}]}`)
	case faultStall:
		// Until the client hangs up (its deadline) or stallFor passes.
		t := time.NewTimer(stallFor)
		select {
		case <-r.Context().Done():
		case <-t.C:
		}
		t.Stop()
		w.WriteHeader(http.StatusServiceUnavailable)
	case faultReset:
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not FIN
		}
		_ = conn.Close()
	case faultNoDigest, faultBadDigest:
		if k == faultBadDigest {
			h.Set("Docker-Content-Digest", "sha256:not-a-digest")
		}
		h.Set("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
		h.Set("Content-Length", "512")
		w.WriteHeader(http.StatusOK)
	}
}

// faults is how many of each kind were injected, for the report.
func (f *faultyRegistry) faults() string {
	var parts []string
	total := int64(0)
	for k := fault500; k < faultKinds; k++ {
		n := f.injected[k].Load()
		total += n
		parts = append(parts, fmt.Sprintf("%s=%d", faultNames[k], n))
	}
	return fmt.Sprintf("total=%d %s", total, strings.Join(parts, " "))
}
