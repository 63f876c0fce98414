// Package client talks to a running updater's API (internal/httpapi), for
// the command line: with UPDATER_URL set, `updater check`, `deploy`,
// `approve`, `reject`, `history` and `rollback` ask the updater that holds the lease instead of
// acting on Docker themselves. Each endpoint is one method; the types are
// the API's JSON as the CLI reads it.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrAuth is a request the updater refused for its token: none, a wrong
// one, or the read-only token for a change. A setting to fix, not an
// outage.
var ErrAuth = errors.New("refused the token")

// ErrNotFound is the API's 404: no such service watched, no such deploy.
var ErrNotFound = errors.New("not found")

// ErrConflict is the API's 409: the deploy was decided already, a
// rollback has nothing to return to or a deploy of the service runs.
var ErrConflict = errors.New("no longer pending")

// maxAnswer bounds what is read of an answer: the API's lists are bounded
// (100 deploys, 50 decided approvals, the watched services).
const maxAnswer = 32 << 20

// Client asks one updater's API.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// New is a client of the updater at base (UPDATER_URL, ending in "/"),
// authenticating with token (UPDATER_API_TOKEN).
func New(base, token string) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("parse updater URL: not an http(s) URL")
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	// Each request is short (the API queues work and answers at once); a
	// hung proxy must not hold a terminal.
	return &Client{base: u, token: token, http: &http.Client{Timeout: 30 * time.Second}}, nil
}

// Service is one watched service as the updater saw it at its last check
// (GET /api/v1/services).
type Service struct {
	Name           string `json:"name"`
	ID             string `json:"id"`
	Stack          string `json:"stack,omitempty"`
	Ref            string `json:"ref"`
	RunningDigest  string `json:"running_digest,omitempty"`
	RegistryDigest string `json:"registry_digest,omitempty"`
	State          string `json:"state"`
	Reason         string `json:"reason,omitempty"`
	// EligibleAt is when a digest held by a release policy may deploy.
	EligibleAt *time.Time `json:"eligible_at,omitempty"`
	Approval   string     `json:"approval"`
	LastDeploy *Deploy    `json:"last_deploy,omitempty"`
}

// Services is the answer of GET /api/v1/services.
type Services struct {
	Services []Service `json:"services"`
	// Checked is when the updater's last full check finished planning;
	// zero before its first.
	Checked time.Time `json:"checked"`
}

// Deploy is one deploy the updater ran or runs (GET /api/v1/deploys).
type Deploy struct {
	ID          string    `json:"id"`
	ServiceID   string    `json:"service_id"`
	ServiceName string    `json:"service"`
	Stack       string    `json:"stack,omitempty"`
	Ref         string    `json:"ref"`
	From        string    `json:"from_digest,omitempty"`
	To          string    `json:"to_digest"`
	Started     time.Time `json:"started"`
	// State is running, succeeded, failed or rolled_back.
	State      string        `json:"state"`
	Phase      string        `json:"phase,omitempty"`
	Duration   time.Duration `json:"duration_ns,omitempty"`
	Reason     string        `json:"reason,omitempty"`
	RolledBack bool          `json:"rolled_back,omitempty"`
}

// Ended reports whether d has an outcome.
func (d Deploy) Ended() bool { return d.State != "" && d.State != "running" }

// Approval is a deploy held for a person's decision.
type Approval struct {
	ID          string    `json:"id"`
	ServiceName string    `json:"service"`
	Ref         string    `json:"ref"`
	From        string    `json:"from_digest,omitempty"`
	To          string    `json:"to_digest"`
	State       string    `json:"state"`
	Requested   time.Time `json:"requested"`
	Expires     time.Time `json:"expires"`
	Reason      string    `json:"reason,omitempty"`
	DeployID    string    `json:"deploy_id,omitempty"`
}

// Deploys is the answer of GET /api/v1/deploys: open approvals, then
// decided ones; the last deploys, newest first.
type Deploys struct {
	Approvals []Approval `json:"approvals"`
	Deploys   []Deploy   `json:"deploys"`
}

// Services asks what the updater saw at its last check.
func (c *Client) Services(ctx context.Context) (Services, error) {
	var out Services
	return out, c.do(ctx, http.MethodGet, nil, &out, "services")
}

// Deploys asks for the pending approvals and the last deploys.
func (c *Client) Deploys(ctx context.Context) (Deploys, error) {
	var out Deploys
	return out, c.do(ctx, http.MethodGet, nil, &out, "deploys")
}

// Check asks for a full check; it runs in the background (a real cycle:
// it deploys what moved, as the schedule's would).
func (c *Client) Check(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, nil, nil, "check")
}

// Deploy asks for service's deploy, like `updater deploy`; it is queued,
// and its outcome shows in Deploys. ErrNotFound: the service is not
// watched.
func (c *Client) Deploy(ctx context.Context, service string) error {
	return c.do(ctx, http.MethodPost, nil, nil, "services", service, "deploy")
}

// Approve lets the pending deploy id go ahead (at the updater's next check).
func (c *Client) Approve(ctx context.Context, id string) (Approval, error) {
	var out Approval
	return out, c.do(ctx, http.MethodPost, nil, &out, "deploys", id, "approve")
}

// Reject turns the pending deploy id down.
func (c *Client) Reject(ctx context.Context, id string) (Approval, error) {
	var out Approval
	return out, c.do(ctx, http.MethodPost, nil, &out, "deploys", id, "reject")
}

// HistoryEntry is one finished deploy in a service's durable history.
type HistoryEntry struct {
	ID      string    `json:"id"`
	Ref     string    `json:"ref"`
	From    string    `json:"from_digest,omitempty"`
	To      string    `json:"to_digest"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended"`
	// Outcome is succeeded, failed or rolled_back.
	Outcome string `json:"outcome"`
	Phase   string `json:"phase,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Rollback is a rollback a person asked for; By names who.
	Rollback bool   `json:"rollback,omitempty"`
	By       string `json:"by,omitempty"`
}

// History is the answer of GET /api/v1/services/{name}/history.
type History struct {
	Service string         `json:"service"`
	History []HistoryEntry `json:"history"` // newest first
}

// Rollback is the answer of POST /api/v1/services/{name}/rollback: the
// rollback began; it lands in the service's history as an entry with
// Rollback set and this To.
type Rollback struct {
	Service string `json:"service"`
	ID      string `json:"id,omitempty"`
	Ref     string `json:"ref,omitempty"`
	From    string `json:"from_digest,omitempty"`
	To      string `json:"to_digest"`
	Status  string `json:"status"`
}

// History asks for service's durable history, newest first.
// ErrNotFound: the service is not watched.
func (c *Client) History(ctx context.Context, service string) (History, error) {
	var out History
	return out, c.do(ctx, http.MethodGet, nil, &out, "services", service, "history")
}

// Rollback asks for service's rollback to the digest to, or, with "",
// to the last that succeeded before the one it runs. It answers once the
// rollback began. ErrNotFound: not watched; ErrConflict: nothing to
// return to, or a deploy of it runs.
func (c *Client) Rollback(ctx context.Context, service, to string) (Rollback, error) {
	var body any
	if to != "" {
		body = map[string]string{"to": to}
	}
	var out Rollback
	return out, c.do(ctx, http.MethodPost, body, &out, "services", service, "rollback")
}

// do sends one request to /api/v1/ and the path's segments, below the
// base (an updater behind a proxy's path prefix is reached there), and
// decodes a 2xx answer into out, when out is not nil. body, when not nil,
// is sent as JSON (a rollback's target).
// Other answers become errors carrying the API's own message.
func (c *Client) do(ctx context.Context, method string, body, out any, segments ...string) error {
	path := strings.Join(segments, "/")
	for _, s := range segments {
		// Each segment is escaped as one; a name that would step to
		// another endpoint is no service's or deploy's.
		if s == "" || s == "." || s == ".." {
			return fmt.Errorf("%s %s: %q is not a name: %w", method, path, s, ErrNotFound)
		}
	}
	escaped := []string{"api", "v1"}
	for _, s := range segments {
		escaped = append(escaped, url.PathEscape(s))
	}
	u := c.base.JoinPath(escaped...)
	var payload io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s %s: encode the body: %w", method, path, err)
		}
		payload = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), payload)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		// url.Error names the URL, never the header the token is in.
		return fmt.Errorf("ask the updater: %w", err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("%s %s: read the answer: %w", method, u.Redacted(), err)
	}
	if resp.StatusCode/100 != 2 {
		return answerError(method, u.Redacted(), resp, answer)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return fmt.Errorf("%s %s: the answer is not the API's JSON (is UPDATER_URL the updater?): %w", method, u.Redacted(), err)
	}
	return nil
}

// answerError turns a refusal into an error: the API's message, and the
// sentinel its status stands for.
func answerError(method, where string, resp *http.Response, body []byte) error {
	var e struct {
		Error string `json:"error"`
	}
	msg := resp.Status
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	err := fmt.Errorf("%s %s answered %s: %s", method, where, resp.Status, msg)
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return fmt.Errorf("%w: the updater %w (UPDATER_API_TOKEN is not its token)", err, ErrAuth)
	case http.StatusForbidden:
		return fmt.Errorf("%w: the updater %w", err, ErrAuth)
	case http.StatusNotFound:
		return fmt.Errorf("%w: %w", err, ErrNotFound)
	case http.StatusConflict:
		return fmt.Errorf("%w: %w", err, ErrConflict)
	}
	return err
}
