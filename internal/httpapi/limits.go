package httpapi

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// sparse lets a line through at most once per sparseEvery and counts
// what it held back meanwhile: a flood of refusals is one log line a
// minute, with how many there were.
type sparse struct {
	mu   sync.Mutex
	next time.Time
	held int
}

const sparseEvery = time.Minute

// allow says whether to log now and how many were held back before.
func (l *sparse) allow(now time.Time) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.held++
		return false, 0
	}
	held, l.held, l.next = l.held, 0, now.Add(sparseEvery)
	return true, held
}

// replays remembers keys for replayWindow, at most maxDeliveries of them,
// oldest first out.
type replays struct {
	mu    sync.Mutex
	at    map[string]time.Time
	order []remembered // by time: the front is the oldest
}

type remembered struct {
	key string
	at  time.Time
}

// seen says whether any of keys was seen within the window, and
// remembers them all. Empty-valued keys ("delivery ") are skipped.
func (r *replays) seen(now time.Time, keys ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.order) > 0 && (now.Sub(r.order[0].at) > replayWindow || len(r.order) >= maxDeliveries) {
		old := r.order[0]
		r.order = r.order[1:]
		if r.at[old.key].Equal(old.at) {
			delete(r.at, old.key)
		}
	}
	found := false
	for _, k := range keys {
		if k[len(k)-1] == ' ' {
			continue
		}
		if at, ok := r.at[k]; ok && now.Sub(at) <= replayWindow {
			found = true
		}
	}
	if found {
		return true // a replay changes nothing: the window runs from the first
	}
	for _, k := range keys {
		if k[len(k)-1] == ' ' {
			continue
		}
		r.at[k] = now
		r.order = append(r.order, remembered{k, now})
	}
	return false
}

// throttle is a token bucket of failed authentications per client
// address: failBurst failures at once, then one per failRefill. A client
// with an empty bucket is answered 429 before its token is looked at, so
// guessing costs time. At most maxClients addresses are kept: full
// buckets carry no memory and go first, then the least recently failed.
type throttle struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time // of the last refill
	last   time.Time // of the last failure
}

const (
	failBurst  = 10
	failRefill = 6 * time.Second
	maxClients = 4096
)

func (b *bucket) refill(now time.Time) {
	b.tokens = min(failBurst, b.tokens+now.Sub(b.at).Seconds()/failRefill.Seconds())
	b.at = now
}

// allowed says whether addr may try a credential now.
func (t *throttle) allowed(addr string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.buckets[addr]
	if !ok {
		return true
	}
	b.refill(now)
	return b.tokens >= 1
}

// failed takes a token from addr's bucket.
func (t *throttle) failed(addr string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.buckets == nil {
		t.buckets = map[string]*bucket{}
	}
	b, ok := t.buckets[addr]
	if !ok {
		if len(t.buckets) >= maxClients {
			t.evict(now)
		}
		b = &bucket{tokens: failBurst, at: now}
		t.buckets[addr] = b
	}
	b.refill(now)
	b.tokens, b.last = max(0, b.tokens-1), now
}

// evict makes room: refilled buckets first, else the stalest one.
func (t *throttle) evict(now time.Time) {
	var stalest string
	for a, b := range t.buckets {
		b.refill(now)
		if b.tokens >= failBurst {
			delete(t.buckets, a)
		} else if stalest == "" || b.last.Before(t.buckets[stalest].last) {
			stalest = a
		}
	}
	if len(t.buckets) >= maxClients {
		delete(t.buckets, stalest)
	}
}

// clientAddr is the address a request came from: the peer's IP, never a
// header a client could set (behind a reverse proxy, that is the proxy).
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
