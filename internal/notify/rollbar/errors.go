package rollbar

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	rollbargo "github.com/rollbar/rollbar-go"
)

// itemsPerMinute caps the items sent: the pipeline logs an outage once,
// but a bug that errors in a loop must not spend the Rollbar quota.
const itemsPerMinute = 30

// Errors reports the updater's own errors and panics to Rollbar.
type Errors struct {
	client *rollbargo.Client

	mu     sync.RWMutex // guards closed: rollbar-go panics on a send after Close
	closed bool
}

// NewErrors returns an Errors. log receives rollbar-go's own complaints
// (an item it could not send) at debug level: the error it was sending is
// in the log already, and logging them higher would only repeat it.
func NewErrors(cfg Config, log *slog.Logger) *Errors {
	c := rollbargo.NewAsync(cfg.Token, cfg.Environment, cfg.CodeVersion, "", "github.com/updater-dev/updater")
	c.SetEndpoint(cfg.endpoint() + "item/")
	c.SetHTTPClient(&http.Client{Timeout: 10 * time.Second})
	c.SetLogger(clientLogger{log})
	// The payload may hold anything the log line held; printing it to
	// stderr on failure would also bypass the log format.
	c.SetPrintPayloadOnError(false)
	c.SetItemsPerMinute(itemsPerMinute)
	return &Errors{client: c}
}

// Handler wraps next so that every ERROR record also goes to Rollbar as
// an item titled by its message and error, with its attributes as custom
// data. next still receives every record it is enabled for.
func (x *Errors) Handler(next slog.Handler) slog.Handler {
	return &handler{next: next, errs: x}
}

// Panic reports a recovered panic and waits (at most a few seconds) for
// it to be sent, since the process is about to die.
func (x *Errors) Panic(v any) {
	x.mu.RLock()
	if x.closed {
		x.mu.RUnlock()
		return
	}
	x.client.LogPanic(v, false)
	x.mu.RUnlock()
	done := make(chan struct{})
	go func() { x.client.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

// Close sends what is queued, until ctx ends.
func (x *Errors) Close(ctx context.Context) error {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return nil
	}
	x.closed = true
	x.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- x.client.Close() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("flush rollbar items: %w", ctx.Err())
	}
}

func (x *Errors) send(title string, extras map[string]any) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.closed {
		return
	}
	x.client.MessageWithExtras(rollbargo.ERR, title, extras)
}

// handler is the slog side of Errors. attrs are those added with
// WithAttrs, already qualified by their groups.
type handler struct {
	next   slog.Handler
	errs   *Errors
	attrs  []slog.Attr
	prefix string // the open groups, "a.b."
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || h.next.Enabled(ctx, l)
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		extras := map[string]any{}
		for _, a := range h.attrs {
			flatten(extras, "", a)
		}
		title := r.Message
		r.Attrs(func(a slog.Attr) bool {
			flatten(extras, h.prefix, a)
			return true
		})
		if err, ok := extras[h.prefix+"err"]; ok {
			title += ": " + fmt.Sprint(err)
		}
		if r.PC != 0 {
			f, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
			extras["source"] = fmt.Sprintf("%s:%d", f.Function, f.Line)
		}
		h.errs.send(title, extras)
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	c.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range attrs {
		c.attrs = append(c.attrs, slog.Attr{Key: h.prefix + a.Key, Value: a.Value})
	}
	return &c
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.next = h.next.WithGroup(name)
	c.prefix = h.prefix + name + "."
	return &c
}

// flatten adds a to m as prefix+key = its value as text, groups
// flattened with dots.
func flatten(m map[string]any, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range v.Group() {
			flatten(m, p, g)
		}
		return
	}
	if a.Key == "" {
		return
	}
	m[prefix+a.Key] = v.String()
}

// clientLogger turns rollbar-go's Printf complaints into debug lines.
type clientLogger struct{ log *slog.Logger }

func (l clientLogger) Printf(format string, args ...any) {
	l.log.Debug("rollbar-go: " + strings.TrimSpace(fmt.Sprintf(format, args...)))
}
