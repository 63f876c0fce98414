package deploy

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A metric-gated canary (issue 17): a few tasks take the new version
// first, a Prometheus query judges them over a window, then the rest
// follow or the release rolls back. This file reads its labels; the run
// that uses them lives with the other stages.

// The labels of a canary.
const (
	LabelCanary         = "updater.canary"
	LabelCanaryWindow   = "updater.canary.window"
	LabelCanaryQuery    = "updater.canary.query"
	LabelCanaryMax      = "updater.canary.max"
	LabelCanaryMin      = "updater.canary.min"
	LabelCanaryInterval = "updater.canary.interval"
	LabelCanaryFailures = "updater.canary.failures"
	LabelCanaryOnError  = "updater.canary.on-error"
)

// canaryLabels are the labels under updater.canary., to catch a typo
// (updater.canary.maximum) that would otherwise silently do nothing.
var canaryLabels = []string{LabelCanaryWindow, LabelCanaryQuery, LabelCanaryMax, LabelCanaryMin,
	LabelCanaryInterval, LabelCanaryFailures, LabelCanaryOnError}

// Bounds and defaults of the labels above.
const (
	DefaultCanaryWindow   = time.Minute
	MinCanaryWindow       = 10 * time.Second
	MaxCanaryWindow       = time.Hour
	DefaultCanaryInterval = 10 * time.Second
	MinCanaryInterval     = time.Second
	DefaultCanaryFailures = 1
)

// The placeholders a canary query may use.
const (
	phService  = "{service}"
	phDigest   = "{digest}"
	phTasks    = "{tasks}"
	phBaseline = "{baseline_tasks}"
)

// OnError is what an inconclusive analysis (Prometheus unreachable, a
// query error, an empty or non-scalar result) does to a canary.
type OnError string

const (
	// OnErrorRollback fails closed: the default.
	OnErrorRollback OnError = "rollback"
	// OnErrorPromote counts an inconclusive evaluation as a pass.
	OnErrorPromote OnError = "promote"
)

// Canary is a service's canary as labelled. The zero Canary (Tasks 0)
// is no canary.
type Canary struct {
	// Tasks is how many tasks take the new version first: at least 1,
	// fewer than the service's replicas.
	Tasks int
	// Window is how long the canary is judged.
	Window time.Duration
	// Query is the PromQL template as labelled, placeholders unfilled
	// (Expr fills them).
	Query    string
	Bound    CanaryBound
	Interval time.Duration
	// Failures is how many failed evaluations abort the canary.
	Failures int
	OnError  OnError
}

// CanaryBound is what a canary query's value must respect: at most Max
// and/or at least Min, as set.
type CanaryBound struct {
	Min, Max       float64
	HasMin, HasMax bool
}

// Holds reports whether v respects the bound. NaN respects none.
func (b CanaryBound) Holds(v float64) bool {
	return !math.IsNaN(v) && (!b.HasMin || v >= b.Min) && (!b.HasMax || v <= b.Max)
}

// String is the bound for a report: "≤ 0.05", "≥ 0.9", "0.9 ≤ v ≤ 1".
func (b CanaryBound) String() string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	switch {
	case b.HasMin && b.HasMax:
		return f(b.Min) + " ≤ v ≤ " + f(b.Max)
	case b.HasMax:
		return "≤ " + f(b.Max)
	case b.HasMin:
		return "≥ " + f(b.Min)
	}
	return "any value"
}

// Expr is the query for one evaluation: {service} and {digest} as given,
// {tasks} and {baseline_tasks} as regular expressions that match exactly
// the names given (for a label matcher such as task=~"{tasks}", which
// Prometheus anchors at both ends).
func (c Canary) Expr(service, digest string, tasks, baseline []string) string {
	return strings.NewReplacer(phService, service, phDigest, digest,
		phTasks, namesRegexp(tasks), phBaseline, namesRegexp(baseline)).Replace(c.Query)
}

// namesRegexp is a regular expression matching exactly names. Special
// characters are escaped as one-character classes ([.]), not with a
// backslash: the expression is pasted into a PromQL string literal, where
// a backslash would need escaping again in "…" and not in `…`. No names
// match nothing (a name no task can have: Swarm names start with a letter
// or digit), never everything.
func namesRegexp(names []string) string {
	if len(names) == 0 {
		return "-none-"
	}
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteByte('|')
		}
		for _, r := range n {
			switch {
			case r == '\\' || r == '^' || r == ']' || r == '[':
				b.WriteString(regexp.QuoteMeta(string(r)))
			case strings.ContainsRune(`.+*?()|{}$`, r):
				b.WriteString("[" + string(r) + "]")
			default:
				b.WriteRune(r)
			}
		}
	}
	return b.String()
}

// canaryPlaceholder is what may be a placeholder in a query: a bare name
// in braces. PromQL's own braces always hold a matcher (job="x") or
// nothing, so they never look like one.
var canaryPlaceholder = regexp.MustCompile(`\{[A-Za-z_][A-Za-z0-9_]*\}`)

// ParseCanary reads a service's canary labels for a service of replicas
// tasks: the zero Canary when it has no updater.canary (the other canary
// labels without it are an error, as they would silently do nothing).
func ParseCanary(labels map[string]string, replicas int) (Canary, error) {
	for k := range labels {
		if strings.HasPrefix(k, LabelCanary+".") && !slices.Contains(canaryLabels, k) {
			return Canary{}, fmt.Errorf("unknown label %s: the canary labels are %s and %s", k, LabelCanary, strings.Join(canaryLabels, ", "))
		}
	}
	raw, ok := labels[LabelCanary]
	if !ok {
		for _, k := range canaryLabels {
			if _, set := labels[k]; set {
				return Canary{}, fmt.Errorf("label %s is set without %s: set how many tasks go first, e.g. %s=1 or %s=25%%", k, LabelCanary, LabelCanary, LabelCanary)
			}
		}
		return Canary{}, nil
	}
	c := Canary{Window: DefaultCanaryWindow, Interval: DefaultCanaryInterval, Failures: DefaultCanaryFailures, OnError: OnErrorRollback}
	n, err := canaryTasks(raw, replicas)
	if err != nil {
		return Canary{}, fmt.Errorf("label %s=%q: %w", LabelCanary, raw, err)
	}
	c.Tasks = n
	for _, d := range []struct {
		label    string
		into     *time.Duration
		min, max time.Duration
		eg       string
	}{
		{LabelCanaryWindow, &c.Window, MinCanaryWindow, MaxCanaryWindow, "5m"},
		// Bounded by the window only once the window is known (below).
		{LabelCanaryInterval, &c.Interval, MinCanaryInterval, MaxCanaryWindow, "10s"},
	} {
		v, ok := labels[d.label]
		if !ok {
			continue
		}
		x, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || x < d.min || x > d.max {
			return Canary{}, fmt.Errorf("label %s=%q: want a duration from %s to %s, e.g. %s", d.label, v, d.min, d.max, d.eg)
		}
		*d.into = x
	}
	if c.Interval > c.Window {
		return Canary{}, fmt.Errorf("label %s=%q: want an interval no longer than the window (%s=%s), or the canary is never evaluated",
			LabelCanaryInterval, labels[LabelCanaryInterval], LabelCanaryWindow, c.Window)
	}
	if c.Query, err = canaryQuery(labels); err != nil {
		return Canary{}, err
	}
	if c.Bound, err = canaryBound(labels); err != nil {
		return Canary{}, err
	}
	// More failures than the window has evaluations could never abort:
	// one every interval from an interval in, and one at the end.
	evals := int((c.Window + c.Interval - 1) / c.Interval)
	if v, ok := labels[LabelCanaryFailures]; ok {
		f, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || f < 1 || f > evals {
			return Canary{}, fmt.Errorf("label %s=%q: want a whole number of failed evaluations from 1 to %d (a %s window evaluated every %s), default %d",
				LabelCanaryFailures, v, evals, c.Window, c.Interval, DefaultCanaryFailures)
		}
		c.Failures = f
	}
	if v, ok := labels[LabelCanaryOnError]; ok {
		switch e := OnError(strings.ToLower(strings.TrimSpace(v))); e {
		case OnErrorRollback, OnErrorPromote:
			c.OnError = e
		default:
			return Canary{}, fmt.Errorf("label %s=%q: want %s (the default: an analysis that cannot tell rolls back) or %s", LabelCanaryOnError, v, OnErrorRollback, OnErrorPromote)
		}
	}
	return c, nil
}

// canaryTasks reads updater.canary: a count (1) or a share (25%, rounded
// up), at least 1 and fewer than replicas.
func canaryTasks(v string, replicas int) (int, error) {
	if replicas < 2 {
		return 0, fmt.Errorf("a canary needs a replicated service of 2 replicas or more (this one has %d): some tasks go first while the others stay on the old version", replicas)
	}
	form := fmt.Sprintf("want a number of tasks from 1 to %d, or a share from 1%% to 99%% (rounded up), e.g. 1 or 25%%", replicas-1)
	s := strings.TrimSpace(v)
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		p, err := strconv.Atoi(strings.TrimSpace(pct))
		if err != nil || p < 1 || p > 99 {
			return 0, errors.New(form)
		}
		n := (replicas*p + 99) / 100
		if n >= replicas {
			return 0, fmt.Errorf("%d%% of %d replicas is %d tasks, all of them: a canary must leave at least one task on the old version; %s", p, replicas, n, form)
		}
		return n, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n >= replicas {
		return 0, errors.New(form)
	}
	return n, nil
}

// canaryQuery reads updater.canary.query: required, its placeholders
// known, naming the canary, its brackets and quotes balanced. PromQL is
// not parsed further here: Prometheus says what else is wrong, at the
// first evaluation, in the run's report.
func canaryQuery(labels map[string]string) (string, error) {
	v, ok := labels[LabelCanaryQuery]
	q := strings.TrimSpace(v)
	const eg = `e.g. sum(rate(http_requests_total{code=~"5..",task=~"{tasks}"}[1m])) / sum(rate(http_requests_total{task=~"{tasks}"}[1m]))`
	if !ok || q == "" {
		return "", fmt.Errorf("label %s is required with %s: a PromQL expression giving one value for the canary tasks, %s", LabelCanaryQuery, LabelCanary, eg)
	}
	known := []string{phService, phDigest, phTasks, phBaseline}
	for _, ph := range canaryPlaceholder.FindAllString(q, -1) {
		if !slices.Contains(known, ph) {
			return "", fmt.Errorf("label %s=%q: unknown placeholder %s: the placeholders are %s", LabelCanaryQuery, v, ph, strings.Join(known, ", "))
		}
	}
	if !strings.Contains(q, phTasks) && !strings.Contains(q, phDigest) && !strings.Contains(q, phService) {
		return "", fmt.Errorf("label %s=%q: the query names none of %s, %s or %s, so it cannot tell the canary from anything else; %s",
			LabelCanaryQuery, v, phTasks, phDigest, phService, eg)
	}
	// Placeholders stand in as letters of their own length, so positions
	// in an error are those of the label's value.
	neutral := canaryPlaceholder.ReplaceAllStringFunc(q, func(ph string) string { return strings.Repeat("x", len(ph)) })
	if err := balanced(neutral); err != nil {
		return "", fmt.Errorf("label %s=%q: %w", LabelCanaryQuery, v, err)
	}
	return q, nil
}

// balanced finds an unclosed string or a bracket without its pair in a
// PromQL expression: the typos a label most often has.
func balanced(q string) error {
	var open []rune
	pair := map[rune]rune{')': '(', ']': '[', '}': '{'}
	for i := 0; i < len(q); i++ {
		switch c := rune(q[i]); c {
		case '"', '\'', '`':
			end := i + 1
			for ; end < len(q) && rune(q[end]) != c; end++ {
				if q[end] == '\\' && c != '`' {
					end++ // an escaped character, the quote too
				}
			}
			if end >= len(q) {
				return fmt.Errorf("the string opened by %c at character %d is not closed", c, i+1)
			}
			i = end
		case '(', '[', '{':
			open = append(open, c)
		case ')', ']', '}':
			if len(open) == 0 || open[len(open)-1] != pair[c] {
				return fmt.Errorf("%c at character %d closes nothing open", c, i+1)
			}
			open = open[:len(open)-1]
		}
	}
	if len(open) > 0 {
		return fmt.Errorf("%c is not closed", open[len(open)-1])
	}
	return nil
}

// canaryBound reads updater.canary.max and .min: at least one, finite,
// min no greater than max.
func canaryBound(labels map[string]string) (CanaryBound, error) {
	var b CanaryBound
	for _, x := range []struct {
		label string
		into  *float64
		set   *bool
	}{{LabelCanaryMax, &b.Max, &b.HasMax}, {LabelCanaryMin, &b.Min, &b.HasMin}} {
		v, ok := labels[x.label]
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return CanaryBound{}, fmt.Errorf("label %s=%q: want a number, e.g. 0.05 (a ratio) or 250 (milliseconds, say: the query's own unit)", x.label, v)
		}
		*x.into, *x.set = f, true
	}
	if !b.HasMax && !b.HasMin {
		return CanaryBound{}, fmt.Errorf("label %s or %s is required with %s: the bound the query's value must respect, e.g. %s=0.05",
			LabelCanaryMax, LabelCanaryMin, LabelCanary, LabelCanaryMax)
	}
	if b.HasMax && b.HasMin && b.Min > b.Max {
		return CanaryBound{}, fmt.Errorf("label %s=%q is above %s=%q: no value could pass", LabelCanaryMin, labels[LabelCanaryMin], LabelCanaryMax, labels[LabelCanaryMax])
	}
	return b, nil
}
