package deploy

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Beyond the health check: a release's rollout that Swarm judged healthy
// is then probed (every new task answers the service's own routes) and
// baked (watched for a while longer), as the service's labels ask. Either
// failing rolls the release back and quarantines its digest, as a failed
// rollout does.

// The labels of a probe and a bake.
const (
	LabelProbeURL      = "updater.probe.url"
	LabelProbeNetwork  = "updater.probe.network"
	LabelProbeExpect   = "updater.probe.expect"
	LabelProbeCount    = "updater.probe.count"
	LabelProbeInterval = "updater.probe.interval"
	LabelProbeTimeout  = "updater.probe.timeout"
	LabelProbeHeader   = "updater.probe.header"
	LabelBake          = "updater.bake"
)

// Bounds and defaults of the labels above.
const (
	DefaultProbeCount    = 3
	DefaultProbeInterval = 2 * time.Second
	DefaultProbeTimeout  = 5 * time.Second
	MaxProbeCount        = 100
	MinBake              = 10 * time.Second
	MaxBake              = 24 * time.Hour
	// ProbeBodyMax is how much of a failed probe's body a report quotes.
	ProbeBodyMax = 200
)

// Probe is a service's smoke probe: every new task must answer URL (a
// template) as Expect says, Count times in a row, Interval apart.
type Probe struct {
	// URL is the template as labelled: {task} is the task's address on
	// Network, {service} the service's name, {digest} the new digest.
	URL string
	// Network is the network the tasks are probed on: "" for the first
	// network the service is attached to.
	Network  string
	Expect   Expect
	Count    int
	Interval time.Duration
	// Timeout bounds each probe, connection to last byte.
	Timeout time.Duration
	// Header is one "Name: value" header sent with each probe ("" none):
	// a Host for virtual hosting, say.
	Header string
}

// For is the URL that probes the task at addr (an IP address, IPv6 ones
// bare) of service at digest.
func (p Probe) For(addr, service, digest string) string {
	if strings.Contains(addr, ":") {
		addr = "[" + addr + "]"
	}
	return strings.NewReplacer("{task}", addr, "{service}", url.PathEscape(service), "{digest}", digest).Replace(p.URL)
}

// Expect is what a probe's answer must be: a status among Statuses and,
// when Body is set, a body that contains it.
type Expect struct {
	Statuses []StatusRange
	Body     string
}

// StatusRange is an inclusive range of HTTP statuses: 200-200, 200-299.
type StatusRange struct{ Lo, Hi int }

// Match reports whether a probe that got status and body passed.
func (e Expect) Match(status int, body []byte) bool {
	ok := slices.ContainsFunc(e.Statuses, func(r StatusRange) bool { return status >= r.Lo && status <= r.Hi })
	return ok && (e.Body == "" || strings.Contains(string(body), e.Body))
}

// String is e in its label's form.
func (e Expect) String() string {
	parts := make([]string, len(e.Statuses))
	for i, r := range e.Statuses {
		switch {
		case r.Lo == r.Hi:
			parts[i] = strconv.Itoa(r.Lo)
		default:
			parts[i] = strconv.Itoa(r.Lo/100) + "xx"
		}
	}
	s := strings.Join(parts, ",")
	if e.Body != "" {
		s += " body~=" + e.Body
	}
	return s
}

// ProbeResult is how one task's probes went.
type ProbeResult struct {
	Task string // the task's ID
	Node string // where it runs, for the report
	// URL is the last URL probed, its secrets masked (MaskURL).
	URL string
	OK  bool
	// Passed is how many probes in a row passed before the first that
	// failed (Count when OK).
	Passed int
	// Status is the failing probe's HTTP status, 0 when it got none; Err
	// what went wrong instead (a refused connection, a timeout).
	Status int
	Err    string
	// Body is the first ProbeBodyMax bytes of the failing answer's body.
	Body string
}

// Prober probes a service's tasks from where they can be reached.
type Prober interface {
	// Probe probes every task of t that runs digest and is desired
	// running, as spec says, and returns one result per task. An error is
	// the probe not run at all (no task to probe, the probe job not
	// started): ErrUnavailable when Docker did not answer.
	Probe(ctx context.Context, t Target, digest string, spec Probe) ([]ProbeResult, error)
}

var placeholder = regexp.MustCompile(`\{[^{}]*\}`)

// ParseProbe reads a service's probe labels: nil when it has no
// updater.probe.url (the other probe labels without it are an error, as
// they would silently do nothing).
func ParseProbe(labels map[string]string) (*Probe, error) {
	raw, ok := labels[LabelProbeURL]
	if !ok {
		for _, k := range []string{LabelProbeNetwork, LabelProbeExpect, LabelProbeCount, LabelProbeInterval, LabelProbeTimeout, LabelProbeHeader} {
			if _, set := labels[k]; set {
				return nil, fmt.Errorf("label %s is set without %s: set the URL to probe, e.g. %s=http://{task}:8080/", k, LabelProbeURL, LabelProbeURL)
			}
		}
		return nil, nil
	}
	p := &Probe{URL: strings.TrimSpace(raw), Network: strings.TrimSpace(labels[LabelProbeNetwork]),
		Count: DefaultProbeCount, Interval: DefaultProbeInterval, Timeout: DefaultProbeTimeout}
	if err := checkProbeURL(p.URL); err != nil {
		// The URL may carry a token: it is quoted masked.
		return nil, fmt.Errorf("label %s=%q: %w", LabelProbeURL, MaskTemplate(raw), err)
	}
	expect := "2xx"
	if v, ok := labels[LabelProbeExpect]; ok {
		expect = v
	}
	e, err := ParseExpect(expect)
	if err != nil {
		return nil, fmt.Errorf("label %s=%q: %w", LabelProbeExpect, expect, err)
	}
	p.Expect = e
	if v, ok := labels[LabelProbeCount]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > MaxProbeCount {
			return nil, fmt.Errorf("label %s=%q: want a whole number of probes in a row, 1 to %d (default %d)", LabelProbeCount, v, MaxProbeCount, DefaultProbeCount)
		}
		p.Count = n
	}
	for _, d := range []struct {
		label    string
		into     *time.Duration
		min, max time.Duration
	}{
		{LabelProbeInterval, &p.Interval, 100 * time.Millisecond, time.Minute},
		{LabelProbeTimeout, &p.Timeout, 100 * time.Millisecond, time.Minute},
	} {
		v, ok := labels[d.label]
		if !ok {
			continue
		}
		n, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || n < d.min || n > d.max {
			return nil, fmt.Errorf("label %s=%q: want a duration from %s to %s, e.g. 2s", d.label, v, d.min, d.max)
		}
		*d.into = n
	}
	if v, ok := labels[LabelProbeHeader]; ok {
		name, value, found := strings.Cut(v, ":")
		name = strings.TrimSpace(name)
		if !found || name == "" || strings.ContainsAny(name, " \t\r\n") || strings.ContainsAny(value, "\r\n") {
			return nil, fmt.Errorf("label %s=%q: want one header as Name: value, e.g. Host: shop.example.com", LabelProbeHeader, v)
		}
		p.Header = name + ": " + strings.TrimSpace(value)
	}
	return p, nil
}

// checkProbeURL refuses a template that could not make a URL to probe.
func checkProbeURL(tmpl string) error {
	for _, ph := range placeholder.FindAllString(tmpl, -1) {
		if ph != "{task}" && ph != "{service}" && ph != "{digest}" {
			return fmt.Errorf("unknown placeholder %s: the placeholders are {task}, {service} and {digest}, e.g. http://{task}:8080/health", ph)
		}
	}
	if !strings.Contains(tmpl, "{task}") {
		return fmt.Errorf("the URL names no {task}: every new task is probed at its own address, e.g. http://{task}:8080/")
	}
	u, err := url.Parse(Probe{URL: tmpl}.For("10.0.0.2", "svc", "sha256:0"))
	if err != nil {
		return errors.New("not a URL") // url.Parse's error would quote it, token and all
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("want an http:// or https:// URL, e.g. http://{task}:8080/")
	}
	if u.Hostname() != "10.0.0.2" {
		return fmt.Errorf("the host must be {task}, e.g. http://{task}:8080/: a probe reaches each new task, not another host")
	}
	return nil
}

// ParseExpect reads updater.probe.expect: statuses separated by commas,
// each a status (200) or a class (2xx), then optionally " body~=TEXT".
func ParseExpect(v string) (Expect, error) {
	const form = "want statuses such as 200, 2xx or 200,204, optionally followed by body~=TEXT"
	var e Expect
	codes, body, hasBody := strings.Cut(strings.TrimSpace(v), "body~=")
	if hasBody {
		if e.Body = body; body == "" {
			return Expect{}, fmt.Errorf("body~= names no text: %s", form)
		}
	}
	for _, c := range strings.Split(codes, ",") {
		c = strings.TrimSpace(c)
		switch {
		case c == "":
			continue
		case len(c) == 3 && strings.HasSuffix(strings.ToLower(c), "xx") && c[0] >= '1' && c[0] <= '5':
			lo := int(c[0]-'0') * 100
			e.Statuses = append(e.Statuses, StatusRange{lo, lo + 99})
		default:
			n, err := strconv.Atoi(c)
			if err != nil || n < 100 || n > 599 {
				return Expect{}, fmt.Errorf("%q is not an HTTP status (100 to 599) or class (1xx to 5xx): %s", c, form)
			}
			e.Statuses = append(e.Statuses, StatusRange{n, n})
		}
	}
	if len(e.Statuses) == 0 {
		return Expect{}, fmt.Errorf("no status: %s", form)
	}
	return e, nil
}

// ParseBake reads updater.bake: "" is no bake.
func ParseBake(v string) (time.Duration, error) {
	if strings.TrimSpace(v) == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < MinBake || d > MaxBake {
		return 0, fmt.Errorf("label %s=%q: want a duration from %s to %s, e.g. 5m", LabelBake, v, MinBake, MaxBake)
	}
	return d, nil
}

// MaskURL is u with the secrets a URL can carry masked: a password, and
// the value of every query parameter (a token in ?key=… is common).
func MaskURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(a URL that does not parse)"
	}
	if _, ok := p.User.Password(); ok {
		p.User = url.UserPassword(p.User.Username(), "xxxxx")
	} else if p.User != nil {
		p.User = url.User("xxxxx") // a user alone is often a token
	}
	if p.RawQuery != "" {
		q := p.Query()
		for k := range q {
			q[k] = []string{"xxxxx"}
		}
		p.RawQuery = q.Encode()
	}
	return p.String()
}

// unprobed refuses, as a label error, the deploys of services labelled
// with a probe when this updater cannot run probes: found before
// anything runs, not after a rollout a probe could not judge.
func (p *Pipeline) unprobed(targets []Target) {
	if p.Prober != nil {
		return
	}
	for i := range targets {
		if t := &targets[i]; t.Probe != nil {
			t.HooksErr = errors.Join(t.HooksErr, fmt.Errorf("label %s is set, but this updater cannot run probes: "+
				"it does not run in a container whose image the nodes can pull; set UPDATER_PROBE_IMAGE to the updater's image", LabelProbeURL))
			t.Probe = nil
		}
	}
}

// MaskTemplate is MaskURL for a probe URL template as labelled: its
// placeholders ({task} as the host) do not parse, so they stand in as
// plain names while it is masked.
func MaskTemplate(tmpl string) string {
	named := placeholder.ReplaceAllStringFunc(tmpl, func(ph string) string { return "ph-" + ph[1:len(ph)-1] + "-ph" })
	m := MaskURL(named)
	return regexp.MustCompile(`ph-([^{}]*?)-ph`).ReplaceAllString(m, "{$1}")
}
