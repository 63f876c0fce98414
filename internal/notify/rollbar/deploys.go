// Package rollbar ties deploys to Rollbar: each deploy is recorded with
// Rollbar's deploy API (started, then succeeded or failed), and the
// updater's own errors and panics are reported as items through
// rollbar-go.
package rollbar

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
)

// DefaultEndpoint is Rollbar's API base.
const DefaultEndpoint = "https://api.rollbar.com/api/1/"

// Config is what both halves of this package need.
type Config struct {
	Token       string
	Environment string
	// Endpoint is the API base ending in "/"; "" means DefaultEndpoint.
	Endpoint string
	// CodeVersion is the updater's own version, for its error items.
	CodeVersion string
	// Memo keeps each deploy's Rollbar ID across updater restarts, so a
	// resumed deploy closes the Rollbar deploy it opened; nil: none.
	Memo notify.Memo
}

func (c Config) endpoint() string {
	if c.Endpoint == "" {
		return DefaultEndpoint
	}
	return c.Endpoint
}

// Deploys records each deploy in Rollbar: POST /deploy when it starts,
// PATCH /deploy/{id} with the outcome when it ends.
type Deploys struct {
	cfg    Config
	client *http.Client
	redact notify.Redactor

	// Rollbar's deploy ID by our deploy ID, from start to end. Only the
	// dispatcher's one worker calls Notify: no lock needed.
	ids map[string]int64
}

var _ notify.Notifier = (*Deploys)(nil)

// NewDeploys returns a Deploys; no request is made until Notify.
func NewDeploys(cfg Config) *Deploys {
	return &Deploys{cfg: cfg, client: &http.Client{Timeout: 30 * time.Second},
		redact: notify.NewRedactor(cfg.Token), ids: map[string]int64{}}
}

// Notify records the start or the end of a deploy.
func (d *Deploys) Notify(ctx context.Context, e deploy.Event) (bool, error) {
	r := e.Release
	switch e.Kind {
	case deploy.Started:
		id, retry, err := d.create(ctx, r, "started", startComment(r))
		if err != nil {
			return retry, err
		}
		d.ids[r.ID] = id
		if d.cfg.Memo != nil {
			// Best effort: without it only a restart mid-deploy loses the ID.
			_ = d.cfg.Memo.Remember(ctx, r.ID, memoKey, strconv.FormatInt(id, 10))
		}
		return false, nil
	case deploy.Succeeded, deploy.Failed:
	default:
		return false, notify.ErrSkipped
	}
	status := "succeeded"
	if e.Kind == deploy.Failed {
		status = "failed"
	}
	comment := endComment(e)
	id, ok := d.ids[r.ID]
	if !ok && e.Resumed && d.cfg.Memo != nil {
		if v, found, err := d.cfg.Memo.Recall(ctx, r.ID, memoKey); err == nil && found {
			id, err = strconv.ParseInt(v, 10, 64)
			ok = err == nil
		}
	}
	if !ok {
		// Its start never reached Rollbar (given up, or the updater
		// restarted mid-deploy): record the deploy with its outcome, so
		// Rollbar still learns the version changed.
		_, retry, err := d.create(ctx, r, status, startComment(r)+"; "+comment)
		return retry, err
	}
	body := map[string]string{"status": status, "comment": comment}
	if retry, err := d.call(ctx, http.MethodPatch, "deploy/"+strconv.FormatInt(id, 10), body, nil); err != nil {
		return retry, err
	}
	delete(d.ids, r.ID)
	if d.cfg.Memo != nil {
		_ = d.cfg.Memo.Drop(ctx, r.ID, memoKey)
	}
	return false, nil
}

// memoKey names the Deploys' entries in the memo.
const memoKey = "rollbar"

func (d *Deploys) create(ctx context.Context, r deploy.Release, status, comment string) (int64, bool, error) {
	body := map[string]string{
		"environment":    d.cfg.Environment,
		"revision":       notify.Revision(r),
		"local_username": "updater",
		"status":         status,
		"comment":        comment,
	}
	var answer struct {
		Data struct {
			DeployID json.Number `json:"deploy_id"`
		} `json:"data"`
	}
	if retry, err := d.call(ctx, http.MethodPost, "deploy", body, &answer); err != nil {
		return 0, retry, err
	}
	id, err := answer.Data.DeployID.Int64()
	if err != nil {
		return 0, false, fmt.Errorf("record rollbar deploy: the answer carries no deploy_id")
	}
	return id, false, nil
}

// call sends one request. The token goes in a header, never in the URL,
// where an HTTP client's error would print it.
func (d *Deploys) call(ctx context.Context, method, path string, body map[string]string, out any) (bool, error) {
	what := "record rollbar deploy"
	if method == http.MethodPatch {
		what = "close rollbar deploy"
	}
	b, err := json.Marshal(body)
	if err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.cfg.endpoint()+path, bytes.NewReader(b))
	if err != nil {
		return false, d.redact.Error(fmt.Errorf("%s: %w", what, err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Rollbar-Access-Token", d.cfg.Token)
	resp, err := d.client.Do(req)
	if err != nil {
		return true, d.redact.Error(fmt.Errorf("%s: %w", what, err))
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusOK {
		if out == nil {
			return false, nil
		}
		if err := json.Unmarshal(answer, out); err != nil {
			return true, fmt.Errorf("%s: unreadable answer: %w", what, err)
		}
		return false, nil
	}
	var rb struct {
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(answer))
	if json.Unmarshal(answer, &rb) == nil && rb.Message != "" {
		msg = rb.Message
	}
	err = d.redact.Error(fmt.Errorf("%s: %s: %s", what, resp.Status, truncate(msg, 300)))
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return true, notify.RetryAfter(err, retryAfter(resp.Header))
	case resp.StatusCode >= 500:
		return true, err
	}
	return false, err
}

// retryAfter reads Rollbar's wait: Retry-After, or its own rate-limit
// header, or a second.
func retryAfter(h http.Header) time.Duration {
	for _, k := range []string{"Retry-After", "X-Rate-Limit-Remaining-Seconds"} {
		if s, err := strconv.Atoi(strings.TrimSpace(h.Get(k))); err == nil && s > 0 {
			return time.Duration(s) * time.Second
		}
	}
	return time.Second
}

func startComment(r deploy.Release) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", r.ServiceName)
	if r.Stack != "" {
		fmt.Fprintf(&b, " (stack %s)", r.Stack)
	}
	from := deploy.Short(r.From)
	if from == "" {
		from = "unpinned"
	}
	fmt.Fprintf(&b, ": %s %s → %s", r.Ref, from, deploy.Short(r.To))
	if v := r.Labels[notify.LabelVersion]; v != "" {
		fmt.Fprintf(&b, ", version %s", v)
	}
	fmt.Fprintf(&b, "; updater deploy %s", r.ID)
	return b.String()
}

func endComment(e deploy.Event) string {
	d := e.Duration.Round(time.Second)
	if e.Kind == deploy.Succeeded {
		return fmt.Sprintf("succeeded in %s", d)
	}
	s := fmt.Sprintf("failed in step %s after %s", e.Phase, d)
	if e.RolledBack {
		s += ", rolled back"
	}
	if e.Reason != "" {
		s += ": " + truncate(e.Reason, 4000)
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	r := []rune(s[:n])
	return string(r[:len(r)-1]) + "…"
}
