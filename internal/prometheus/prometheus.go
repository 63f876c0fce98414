// Package prometheus asks a Prometheus server for one number: the value a
// canary's query has now. It wraps the official client's HTTP API
// (github.com/prometheus/client_golang/api) and turns every way an answer
// can fail to be one finite number into an error that says which.
package prometheus

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// The kinds of failure, for errors.Is. A canary treats all three as
// inconclusive: the value is unknown, not bad.
var (
	// ErrUnreachable is no answer: refused, unresolvable, timed out.
	ErrUnreachable = errors.New("prometheus unreachable")
	// ErrQuery is an answer that is an error: an HTTP status other than
	// 2xx, or the API's own error (a bad query, an evaluation that failed).
	ErrQuery = errors.New("prometheus query failed")
	// ErrResult is a successful answer that is not one finite number: no
	// series, several, a range vector, a string, NaN or an infinity.
	ErrResult = errors.New("prometheus result is not one number")
)

// DefaultTimeout bounds a query when Options.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// bodyMax is how much of an unexpected answer's body an error quotes.
const bodyMax = 200

// Options configure a Client.
type Options struct {
	// URL is the server's base URL, http://prometheus:9090 (a path
	// prefix, as behind a proxy, is kept).
	URL string
	// Token, when set, is sent as "Authorization: Bearer <token>". It
	// never appears in an error.
	Token string
	// Timeout bounds each query, connection to last byte (DefaultTimeout
	// when zero).
	Timeout time.Duration
}

// Client queries one Prometheus server. Safe for concurrent use.
type Client struct {
	api     v1.API
	where   string // the URL as errors quote it: no credentials, no query
	token   string
	timeout time.Duration
}

// New checks o and returns a client; it does not contact the server.
func New(o Options) (*Client, error) {
	u, err := url.Parse(strings.TrimSpace(o.URL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// url.Parse's error would quote the URL, credentials and all.
		return nil, fmt.Errorf("prometheus URL: want http://host:port or https://host:port, e.g. http://prometheus:9090")
	}
	if o.Timeout < 0 {
		return nil, fmt.Errorf("prometheus timeout %s: want a positive duration", o.Timeout)
	}
	where := *u
	where.User, where.RawQuery, where.Fragment = nil, "", ""
	c := &Client{where: where.String(), token: o.Token, timeout: o.Timeout}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	var rt http.RoundTripper = api.DefaultRoundTripper
	if o.Token != "" {
		rt = bearer{token: o.Token, next: rt}
	}
	ac, err := api.NewClient(api.Config{Address: u.String(), RoundTripper: rt})
	if err != nil {
		return nil, fmt.Errorf("prometheus client for %s: %w", c.where, err)
	}
	c.api = v1.NewAPI(statusClient{ac})
	return c, nil
}

// Query evaluates expr at the instant at (the server's now when zero)
// and returns its one value: a scalar, or a vector of exactly one series.
func (c *Client) Query(ctx context.Context, expr string, at time.Time) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var status int
	val, _, _, err := c.api.Query(context.WithValue(ctx, statusKey{}, &status), expr, at)
	if err != nil {
		return 0, c.scrub(c.failed(ctx, status, err))
	}
	v, err := one(val)
	if err != nil {
		return 0, c.scrub(fmt.Errorf("%w: %s: %w", ErrResult, c.where, err))
	}
	return v, nil
}

// failed says why a query got no answer, or an answer that is an error.
func (c *Client) failed(ctx context.Context, status int, err error) error {
	var apiErr *v1.Error
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w: %s: no answer within %s", ErrUnreachable, c.where, c.timeout)
	case ctx.Err() != nil:
		return fmt.Errorf("query %s: %w", c.where, ctx.Err())
	case !errors.As(err, &apiErr):
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, c.where, innermost(err))
	case apiErr.Detail != "" || (status != http.StatusBadRequest && status != http.StatusUnprocessableEntity && status/100 != 2):
		// Not the API's error document: a proxy's page, a 503, a 404 of a
		// wrong path. The status and the start of the body say which.
		return fmt.Errorf("%w: %s answered HTTP %d %s%s", ErrQuery, c.where, status, http.StatusText(status), excerpt(apiErr.Detail))
	case apiErr.Type == v1.ErrBadResponse && strings.Contains(apiErr.Msg, "unexpected value type"):
		// The client decodes no string result (PromQL's "text" literal):
		// a valid answer, just not a number.
		return fmt.Errorf("%w: %s: %s, want a number", ErrResult, c.where, apiErr.Msg)
	case apiErr.Type == v1.ErrBadResponse:
		return fmt.Errorf("%w: %s answered HTTP %d with something other than the API's JSON: %s", ErrQuery, c.where, status, apiErr.Msg)
	}
	// The API's own error: its type (bad_data, execution, timeout…) and
	// message, which for a bad query names the position and the problem.
	return fmt.Errorf("%w: %s: %s: %s", ErrQuery, c.where, apiErr.Type, apiErr.Msg)
}

// one is the single finite number val holds.
func one(val model.Value) (float64, error) {
	var v model.SampleValue
	switch r := val.(type) {
	case *model.Scalar:
		v = r.Value
	case model.Vector:
		switch len(r) {
		case 0:
			return 0, errors.New("no series: the query matched nothing (not scraped yet, or a label that matches no target)")
		case 1:
			v = r[0].Value
		default:
			return 0, fmt.Errorf("%d series, want one (aggregate them, with sum() say): the first is %s", len(r), r[0].Metric)
		}
	case model.Matrix:
		return 0, fmt.Errorf("a range vector of %d series, want an instant value: drop the [range] or wrap it in a function such as rate()", len(r))
	case *model.String:
		return 0, fmt.Errorf("a string (%q), want a number", excerptOf(r.Value))
	case nil:
		return 0, errors.New("no result")
	default:
		return 0, fmt.Errorf("a %s, want a number", val.Type())
	}
	f := float64(v)
	switch {
	case math.IsNaN(f):
		return 0, errors.New("the value is NaN (a division of zero by zero, say: no requests to count)")
	case math.IsInf(f, 0):
		return 0, fmt.Errorf("the value is %v (a division by zero, say)", f)
	}
	return f, nil
}

// scrub masks the token wherever an answer might have echoed it.
func (c *Client) scrub(err error) error {
	if c.token == "" || !strings.Contains(err.Error(), c.token) {
		return err
	}
	return &scrubbed{msg: strings.ReplaceAll(err.Error(), c.token, "xxxxx"), err: err}
}

// scrubbed is an error whose text is masked; errors.Is still sees through
// it to the kind.
type scrubbed struct {
	msg string
	err error
}

func (s *scrubbed) Error() string { return s.msg }
func (s *scrubbed) Unwrap() error { return s.err }

// innermost is the root of a transport error ("dial tcp 127.0.0.1:9090:
// connect: connection refused") without the *url.Error's method and URL
// around it.
func innermost(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func excerpt(body string) string {
	if strings.TrimSpace(body) == "" {
		return ""
	}
	return ": " + excerptOf(body)
}

func excerptOf(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > bodyMax {
		return s[:bodyMax] + "…"
	}
	return s
}

// bearer adds the token to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// statusKey carries, in a query's context, where statusClient writes the
// HTTP status of the answer: the v1 API's errors name it only in text.
type statusKey struct{}

type statusClient struct{ api.Client }

func (s statusClient) Do(ctx context.Context, req *http.Request) (*http.Response, []byte, error) {
	resp, body, err := s.Client.Do(ctx, req)
	if p, ok := ctx.Value(statusKey{}).(*int); ok && resp != nil {
		*p = resp.StatusCode
	}
	return resp, body, err
}
