// Package notify tells people and systems about deploys: the log always,
// and each configured notifier (Slack, Rollbar) in the background, so a
// slow or failing one never holds a deploy back.
package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// Notifier delivers deploy events to one destination.
type Notifier interface {
	// Notify delivers e before ctx ends. retry reports whether a failure
	// may succeed if tried again (a timeout, a 5xx, a 429) as opposed to
	// one that will not (a rejected token). When e calls for nothing to be
	// sent, Notify returns ErrSkipped. Notify is called for one event at
	// a time, in the order the pipeline reported them, so a notifier may
	// keep state from one event of a deploy to the next.
	Notify(ctx context.Context, e deploy.Event) (retry bool, err error)
}

// ErrSkipped is a Notifier's answer to an event it sends nothing for.
// It is neither a delivery nor a failure: the one thing it must not do
// is pass for proof that a notifier that was down works again.
var ErrSkipped = errors.New("nothing to send for this event")

// Named is a notifier and the name its log lines carry.
type Named struct {
	Name     string
	Notifier Notifier
}

// Policy bounds the delivery of one event to one notifier.
type Policy struct {
	// Attempts is the most tries per event.
	Attempts int
	// Timeout bounds one attempt.
	Timeout time.Duration
	// Budget bounds all attempts for one event, waits included: an event
	// is given up rather than delivered long after it stopped mattering.
	Budget time.Duration
	// Backoff is the wait before the first retry, doubled for each later
	// one up to MaxBackoff, unless the far side asked for a wait
	// (Retry-After), which is honoured instead.
	Backoff, MaxBackoff time.Duration
	// Queue is how many events may wait per notifier; beyond it new
	// events are dropped, since Report must not block.
	Queue int
}

// DefaultPolicy gives up on an event after 5 attempts or a minute; with a
// destination that refuses connections that is about 15 s (1+2+4+8 s of
// backoff).
func DefaultPolicy() Policy {
	return Policy{Attempts: 5, Timeout: 10 * time.Second, Budget: time.Minute,
		Backoff: time.Second, MaxBackoff: 30 * time.Second, Queue: 128}
}

// Dispatcher hands every event to each notifier, in the background: one
// queue and one goroutine per notifier, so events for a deploy arrive in
// order and a notifier that is down delays only itself.
type Dispatcher struct {
	log     *slog.Logger
	workers []*worker
	// stop ends every attempt and wait; Close calls it when its deadline
	// passes with events still undelivered.
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu     sync.RWMutex // guards closed against Report's sends
	closed bool
}

var _ deploy.Reporter = (*Dispatcher)(nil)

// NewDispatcher starts one worker per notifier. Zero fields of p take
// their DefaultPolicy values.
func NewDispatcher(log *slog.Logger, p Policy, notifiers ...Named) *Dispatcher {
	def := DefaultPolicy()
	p.Attempts = positiveOr(p.Attempts, def.Attempts)
	p.Timeout = positiveOr(p.Timeout, def.Timeout)
	p.Budget = positiveOr(p.Budget, def.Budget)
	p.Backoff = positiveOr(p.Backoff, def.Backoff)
	p.MaxBackoff = positiveOr(p.MaxBackoff, def.MaxBackoff)
	p.Queue = positiveOr(p.Queue, def.Queue)
	ctx, stop := context.WithCancel(context.Background())
	d := &Dispatcher{log: log, stop: stop}
	for _, n := range notifiers {
		w := &worker{n: n.Notifier, policy: p, queue: make(chan deploy.Event, p.Queue),
			log: log.With("notifier", n.Name)}
		d.workers = append(d.workers, w)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			w.run(ctx)
		}()
	}
	return d
}

func positiveOr[T int | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// Report queues e for every notifier and returns at once.
func (d *Dispatcher) Report(e deploy.Event) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		d.log.Debug("notification after shutdown not sent", "deploy_id", e.Release.ID, "kind", string(e.Kind))
		return
	}
	for _, w := range d.workers {
		w.enqueue(e)
	}
}

// Close stops taking events and waits until the queued ones are delivered
// or given up, or until ctx ends: then attempts in flight are cancelled,
// and what is left is counted in one log line per notifier.
func (d *Dispatcher) Close(ctx context.Context) error {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		for _, w := range d.workers {
			close(w.queue)
		}
	}
	d.mu.Unlock()
	done := make(chan struct{})
	go func() {
		d.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		d.stop()
		return nil
	case <-ctx.Done():
		d.stop()
		<-done
		return ctx.Err()
	}
}

// worker delivers one notifier's events, one at a time.
type worker struct {
	n      Notifier
	policy Policy
	log    *slog.Logger
	queue  chan deploy.Event

	dropMu   sync.Mutex // guards dropping; Report may be called from several goroutines
	dropping bool

	// down is set when an event was given up and cleared by the next
	// delivery: while down each event gets one attempt, so a long outage
	// neither logs every event nor backs the queue up behind retries.
	down bool
}

func (w *worker) enqueue(e deploy.Event) {
	w.dropMu.Lock()
	defer w.dropMu.Unlock()
	select {
	case w.queue <- e:
		// Half empty again before the next drop is news: a queue that
		// hovers at full logs once, not on every other event.
		if len(w.queue) < cap(w.queue)/2 {
			w.dropping = false
		}
	default:
		// The queue is full only when the notifier has been stuck for a
		// long while.
		if !w.dropping {
			w.log.Warn("notification queue full; dropping events until it drains",
				"deploy_id", e.Release.ID, "service", e.Release.ServiceName, "kind", string(e.Kind))
		}
		w.dropping = true
	}
}

func (w *worker) run(ctx context.Context) {
	left := 0
	for e := range w.queue {
		if ctx.Err() != nil {
			left++
			continue
		}
		if !w.deliver(ctx, e) {
			left++
		}
	}
	if left > 0 {
		w.log.Warn("notifications left undelivered at shutdown", "count", left)
	}
}

// notify is one attempt; a notifier that panics fails the attempt, with
// an ERROR line (Rollbar's own client reports it), and the worker goes on
// with the next event instead of taking the process down.
func (w *worker) notify(ctx context.Context, e deploy.Event) (retry bool, err error) {
	defer func() {
		if v := recover(); v != nil {
			w.log.Error("panic: a notification stopped", "deploy_id", e.Release.ID, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			retry, err = false, fmt.Errorf("the notifier panicked: %v", v)
		}
	}()
	return w.n.Notify(ctx, e)
}

// deliver tries e until it is delivered or given up. It returns false
// only when shutdown cut it short.
func (w *worker) deliver(ctx context.Context, e deploy.Event) bool {
	attempts := w.policy.Attempts
	if w.down {
		attempts = 1
	}
	start := time.Now()
	for i := 1; ; i++ {
		actx, cancel := context.WithTimeout(ctx, w.policy.Timeout)
		retry, err := w.notify(actx, e)
		cancel()
		if errors.Is(err, ErrSkipped) {
			return true
		}
		if err == nil {
			if w.down {
				w.down = false
				w.log.Info("notifier recovered", "deploy_id", e.Release.ID, "kind", string(e.Kind))
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		wait := w.backoff(i)
		if d, ok := RetryAfterOf(err); ok {
			wait = d
		}
		if !retry || i >= attempts || time.Since(start)+wait > w.policy.Budget {
			w.giveUp(e, i, time.Since(start), err)
			return true
		}
		w.log.Debug("notify failed; retrying", "deploy_id", e.Release.ID, "kind", string(e.Kind),
			"attempt", i, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
}

func (w *worker) giveUp(e deploy.Event, attempts int, took time.Duration, err error) {
	attrs := []any{"deploy_id", e.Release.ID, "service", e.Release.ServiceName, "kind", string(e.Kind),
		"attempts", attempts, "duration", took, "err", err}
	if w.down {
		w.log.Debug("notify still failing", attrs...)
		return
	}
	w.down = true
	w.log.Error("notify failed; giving up on this event, later ones get one attempt each until one gets through", attrs...)
}

// backoff is the wait after attempt i, with ±20% jitter so notifiers
// that failed together do not retry in lockstep.
func (w *worker) backoff(i int) time.Duration {
	d := w.policy.Backoff
	for ; i > 1 && d < w.policy.MaxBackoff; i-- {
		d *= 2
	}
	d = min(d, w.policy.MaxBackoff)
	return d - d/5 + rand.N(d*2/5+1)
}

// retryAfterError carries the wait the far side asked for.
type retryAfterError struct {
	err  error
	wait time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter marks err as answered with a wait (HTTP 429 Retry-After):
// the next attempt comes after d instead of the usual backoff.
func RetryAfter(err error, d time.Duration) error {
	return &retryAfterError{err: err, wait: d}
}

// RetryAfterOf returns the wait RetryAfter put on err, if any.
func RetryAfterOf(err error) (time.Duration, bool) {
	var ra *retryAfterError
	if errors.As(err, &ra) {
		return ra.wait, true
	}
	return 0, false
}

// Reporters reports each event to every reporter in turn; with the log
// first, a person reading it sees the event before any notifier acts.
type Reporters []deploy.Reporter

var _ deploy.Reporter = Reporters(nil)

func (rs Reporters) Report(e deploy.Event) {
	for _, r := range rs {
		r.Report(e)
	}
}
