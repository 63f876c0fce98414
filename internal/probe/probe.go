// Package probe is what the probe job runs: HTTP probes of a service's new
// tasks from inside the service's network (updater.probe.* labels). The
// updater's half (the job, which tasks, reading the results back) is
// package swarm's Probe.
package probe

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// bodyRead bounds how much of an answer is read to look for body~=TEXT.
const bodyRead = 1 << 20

// Target is one task to probe.
type Target struct{ Task, Node, URL string }

// Main is `updater probe [flags] TASK,NODE,URL...`, the probe job's
// command: arguments, not environment, as the updater writes them. It
// prints one JSON line (a deploy.ProbeResult) per task as each is done and
// exits 0 when the arguments made sense, whatever the probes found: the
// results are the answer. It returns the process's exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	expect := fs.String("expect", "2xx", "accepted statuses and optionally body~=TEXT, as updater.probe.expect")
	count := fs.Int("count", deploy.DefaultProbeCount, "probes in a row each task must pass")
	interval := fs.Duration("interval", deploy.DefaultProbeInterval, "time from one probe's start to the next")
	timeout := fs.Duration("timeout", deploy.DefaultProbeTimeout, "bound on each probe, connection to last byte")
	header := fs.String("header", "", `one header sent with each probe, "Name: value"`)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(why string) int {
		fmt.Fprintf(stderr, "updater probe: %s\nusage: updater probe [--expect 2xx] [--count N] [--interval D] [--timeout D] [--header 'Name: value'] TASK,NODE,URL...\n", why)
		return 2
	}
	spec := deploy.Probe{Count: *count, Interval: *interval, Timeout: *timeout, Header: *header}
	var err error
	if spec.Expect, err = deploy.ParseExpect(*expect); err != nil {
		return usage("--expect: " + err.Error())
	}
	if spec.Count < 1 || spec.Interval <= 0 || spec.Timeout <= 0 {
		return usage("--count, --interval and --timeout must be positive")
	}
	if spec.Header != "" && !strings.Contains(spec.Header, ":") {
		return usage(`--header: want "Name: value"`)
	}
	if fs.NArg() == 0 {
		return usage("no task to probe")
	}
	targets := make([]Target, 0, fs.NArg())
	for _, a := range fs.Args() {
		parts := strings.SplitN(a, ",", 3)
		if len(parts) != 3 || parts[0] == "" || parts[2] == "" {
			return usage(fmt.Sprintf("%q is not TASK,NODE,URL", a))
		}
		targets = append(targets, Target{Task: parts[0], Node: parts[1], URL: parts[2]})
	}
	var mu sync.Mutex
	enc := json.NewEncoder(stdout)
	Run(ctx, spec, targets, func(r deploy.ProbeResult) {
		mu.Lock()
		defer mu.Unlock()
		enc.Encode(r)
	})
	return 0
}

// Run probes every target side by side, as spec says, and hands each
// task's result to done as soon as it is known.
func Run(ctx context.Context, spec deploy.Probe, targets []Target, done func(deploy.ProbeResult)) {
	c := client(spec.Timeout)
	var wg sync.WaitGroup
	for _, t := range targets {
		wg.Go(func() { done(Task(ctx, c, spec, t)) })
	}
	wg.Wait()
}

// client makes a fresh connection per probe (a new task's listener is
// what is proven, not a connection kept open), follows no redirect (the
// task's own answer is judged) and uses no proxy from the environment:
// the tasks are on the job's own network.
func client(timeout time.Duration) *http.Client {
	tr := &http.Transport{DisableKeepAlives: true, ResponseHeaderTimeout: timeout, MaxResponseHeaderBytes: 64 << 10}
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// Task probes one task spec.Count times in a row, spec.Interval apart
// (start to start), and stops at the first probe that fails.
func Task(ctx context.Context, c *http.Client, spec deploy.Probe, t Target) deploy.ProbeResult {
	r := deploy.ProbeResult{Task: t.Task, Node: t.Node, URL: deploy.MaskURL(t.URL)}
	start := time.Now()
	for i := range spec.Count {
		if i > 0 {
			next := start.Add(time.Duration(i) * spec.Interval)
			select {
			case <-ctx.Done():
				r.Err = "stopped before probe " + fmt.Sprint(i+1) + ": " + ctx.Err().Error()
				return r
			case <-time.After(time.Until(next)):
			}
		}
		status, body, err := once(ctx, c, spec, t.URL)
		if err != nil || !spec.Expect.Match(status, body) {
			r.Status, r.Body = status, cut(body, deploy.ProbeBodyMax)
			switch {
			case err != nil:
				r.Err = err.Error()
			default:
				r.Err = fmt.Sprintf("got %d, want %s", status, spec.Expect)
			}
			return r
		}
		r.Passed++
	}
	r.OK = true
	return r
}

// once is one probe: its status and the start of its body, or why there is
// none. Its error never carries the URL (it may hold a token): the result
// names the URL masked.
func once(ctx context.Context, c *http.Client, spec deploy.Probe, u string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, errors.New("not a URL to probe")
	}
	req.Header.Set("User-Agent", "updater-probe")
	if spec.Header != "" {
		name, value, _ := strings.Cut(spec.Header, ":")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if strings.EqualFold(name, "Host") {
			req.Host = value
		} else {
			req.Header.Set(name, value)
		}
	}
	res, err := c.Do(req)
	if err != nil {
		return 0, nil, plain(ctx, err, spec.Timeout)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, bodyRead))
	if err != nil {
		return res.StatusCode, body, plain(ctx, err, spec.Timeout)
	}
	return res.StatusCode, body, nil
}

// plain is err without the URL net/http wraps it with.
func plain(ctx context.Context, err error, timeout time.Duration) error {
	// The context's deadline and the transport's header timeout are the
	// same bound: whichever fired first, it is one timeout.
	var ne interface{ Timeout() bool }
	if ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("no complete answer within %s", timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// cut is the first n bytes of b as text, never ending inside a UTF-8
// sequence.
func cut(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return strings.ToValidUTF8(string(b), "")
}
