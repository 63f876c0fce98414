// Package webhook posts deploy events to an endpoint of the team's own
// (UPDATER_NOTIFY_WEBHOOK_URL) as JSON in a versioned schema,
// updater.event/v1 (docs/notifications.md), signed with HMAC-SHA256 when a
// secret is set, so the receiver can tell the updater's posts from anyone
// else's.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
)

// Schema names the body's layout; a change that is not an added field
// gets a new version.
const Schema = "updater.event/v1"

// Headers of every post. The signature is GitHub's form: "sha256=" and
// the hex HMAC-SHA256 of the body under the secret.
const (
	HeaderSignature = "X-Updater-Signature-256"
	HeaderEvent     = "X-Updater-Event"
	HeaderDelivery  = "X-Updater-Delivery"
)

// Config is where to post and how to sign.
type Config struct {
	// URL is the endpoint; it may carry a token in its path or query, so
	// it is treated as a secret.
	URL string
	// Secret signs each body; "" sends no signature header.
	Secret string
	// Client sends the posts; nil: one with a 30 s timeout. Redirects are
	// never followed: a signed body goes where it was told to, or fails.
	Client *http.Client
	// Now is the clock of the body's time; nil: time.Now.
	Now func() time.Time
}

// Sender posts each event worth telling: a deploy's start, each step of
// its hooks, its end, a pending approval, an outage and its end. Rollout
// counts (one per task turned healthy) are not posted.
type Sender struct {
	cfg    Config
	client *http.Client
	redact notify.Redactor

	// The dispatcher's one worker calls Notify, an event at a time, and
	// again for the same event when it retries: the retry keeps the
	// delivery ID and time, so a receiver can drop a post it already had.
	last     deploy.Event
	lastID   string
	lastTime time.Time
}

var _ notify.Notifier = (*Sender)(nil)

// New returns a Sender for cfg.
func New(cfg Config) *Sender {
	c := cfg.Client
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	cc := *c
	cc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Sender{cfg: cfg, client: &cc, redact: notify.NewRedactor(cfg.URL, cfg.Secret)}
}

// Body is the JSON posted, schema updater.event/v1. Fields are only
// added within a version; omitted ones do not apply to the kind.
type Body struct {
	Schema string `json:"schema"`
	// ID is unique per event, the same in each retry of it.
	ID string `json:"id"`
	// Kind is started, progress, succeeded, failed, pending, outage or
	// recovered.
	Kind string `json:"kind"`
	// Outcome is succeeded, failed or rolled_back on a deploy's end.
	Outcome string    `json:"outcome,omitempty"`
	Time    time.Time `json:"time"`
	Deploy  *Deploy   `json:"deploy,omitempty"`
	// Phase is where a deploy ended or a step is: prepare, backup,
	// migrate, update, rollout, rollback.
	Phase      string `json:"phase,omitempty"`
	Reason     string `json:"reason,omitempty"`
	RolledBack bool   `json:"rolled_back,omitempty"`
	Resumed    bool   `json:"resumed,omitempty"`
	// Duration is a deploy's, or a step's, so far: Go's spelling ("1m30s")
	// and seconds.
	Duration        string   `json:"duration,omitempty"`
	DurationSeconds *float64 `json:"duration_seconds,omitempty"`
	Step            *Step    `json:"step,omitempty"`
	// Part is docker or registry on outage and recovered; Image names the
	// image a registry outage is about.
	Part  string `json:"part,omitempty"`
	Image string `json:"image,omitempty"`
}

// Deploy is the deploy an event is about (for pending: the approval).
type Deploy struct {
	ID         string            `json:"id"`
	Service    string            `json:"service"`
	ServiceID  string            `json:"service_id"`
	Stack      string            `json:"stack,omitempty"`
	Image      string            `json:"image"`
	FromDigest string            `json:"from_digest,omitempty"`
	ToDigest   string            `json:"to_digest"`
	Started    *time.Time        `json:"started,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
}

// Step is a hook step of a deploy.
type Step struct {
	Phase    string   `json:"phase"`
	State    string   `json:"state"`
	ExitCode *int     `json:"exit_code,omitempty"`
	LogTail  []string `json:"log_tail,omitempty"`
}

// Notify posts e, or returns notify.ErrSkipped for a rollout count.
func (s *Sender) Notify(ctx context.Context, e deploy.Event) (bool, error) {
	if e.Kind == deploy.Progress && (e.Step == nil || e.Step.State == deploy.StepProgress) {
		return false, notify.ErrSkipped
	}
	if s.lastID == "" || !reflect.DeepEqual(e, s.last) {
		s.last, s.lastID, s.lastTime = e, newID(), s.cfg.Now().UTC()
	}
	body, err := json.Marshal(s.body(e))
	if err != nil {
		return false, fmt.Errorf("encode webhook event: %w", err)
	}
	return s.post(ctx, string(e.Kind), body)
}

func (s *Sender) body(e deploy.Event) Body {
	b := Body{Schema: Schema, ID: s.lastID, Kind: string(e.Kind), Outcome: string(e.Outcome()), Time: s.lastTime,
		Phase: string(e.Phase), Reason: e.Reason, RolledBack: e.RolledBack, Resumed: e.Resumed}
	if e.Kind == deploy.Outage || e.Kind == deploy.Recovered {
		b.Part, b.Image, b.Phase = e.Part, e.Release.Ref, ""
		return b
	}
	r := e.Release
	b.Deploy = &Deploy{ID: r.ID, Service: r.ServiceName, ServiceID: r.ServiceID, Stack: r.Stack, Image: r.Ref,
		FromDigest: r.From, ToDigest: r.To, Labels: r.Labels}
	if !r.Started.IsZero() {
		started := r.Started.UTC()
		b.Deploy.Started = &started
	}
	if e.Kind != deploy.Started && e.Kind != deploy.Pending {
		secs := e.Duration.Seconds()
		b.Duration, b.DurationSeconds = e.Duration.String(), &secs
	}
	if st := e.Step; st != nil {
		b.Step = &Step{Phase: string(st.Phase), State: string(st.State), LogTail: st.LogTail}
		if st.State == deploy.StepFailed {
			code := st.ExitCode
			b.Step.ExitCode = &code
		}
	}
	return b
}

// post sends body; a network error, a 5xx, a 408 and a 429 are worth
// another try, anything else is not (a 4xx says the receiver will not
// take it however often it is sent).
func (s *Sender) post(ctx context.Context, kind string, body []byte) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return false, s.redact.Error(fmt.Errorf("post webhook: %w", err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "updater")
	req.Header.Set(HeaderEvent, kind)
	req.Header.Set(HeaderDelivery, s.lastID)
	if s.cfg.Secret != "" {
		req.Header.Set(HeaderSignature, Sign(s.cfg.Secret, body))
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return true, s.redact.Error(fmt.Errorf("post webhook: %w", err))
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return false, nil
	}
	err = s.redact.Error(fmt.Errorf("post webhook: %s: %s", resp.Status, strings.TrimSpace(string(answer))))
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		if secs, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && secs > 0 {
			return true, notify.RetryAfter(err, time.Duration(secs)*time.Second)
		}
		return true, err
	case resp.StatusCode >= 500, resp.StatusCode == http.StatusRequestTimeout:
		return true, err
	}
	return false, err
}

// Sign is the signature header's value for body under secret.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether header is body's signature under secret, in
// constant time: what a receiver written in Go does.
func Verify(secret string, body []byte, header string) bool {
	got, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return false
	}
	sum, err := hex.DecodeString(got)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hmac.Equal(sum, m.Sum(nil))
}

func newID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
