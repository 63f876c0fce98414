// Package tagpolicy reads a service's tag policy (updater.policy and its
// companions) and picks, from a repository's tags, the one to deploy.
// Listing the tags and resolving the pick are the engine's and the
// registry's; this package only decides.
//
// Semantic versions come from github.com/Masterminds/semver/v3: the
// range syntax users know from Helm and Renovate (~, ^, x-ranges,
// hyphen ranges, ||), a maintained module with no dependencies, and its
// pre-release rule is the one the labels promise (a range admits
// pre-releases when it names one, or when IncludePrerelease is set).
package tagpolicy

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/Masterminds/semver/v3"
)

// The labels a policy is read from.
const (
	LabelPolicy     = "updater.policy"
	LabelPrerelease = "updater.policy.prerelease"
	LabelOrder      = "updater.policy.order"
)

// Kind is what a policy follows.
type Kind string

const (
	// Tag follows the tag the image names, as the updater always has:
	// nothing to list, nothing to pick.
	Tag Kind = "tag"
	// Semver picks the highest semantic version in a range.
	Semver Kind = "semver"
	// Regex picks, among the tags a pattern matches, the highest by one
	// of its groups.
	Regex Kind = "regex"
)

const policyForm = `want semver:RANGE (like semver:~1.2, semver:^1 or semver:>=1.4 <2), ` +
	`regex:PATTERN with ` + LabelOrder + `=numeric:GROUP or alpha:GROUP (like regex:^main-(?P<n>\d+)$ and numeric:n), or tag`

// Policy is a parsed tag policy; the zero value is Tag.
type Policy struct {
	kind       Kind
	spec       string // what follows semver: or regex:
	constraint *semver.Constraints
	re         *regexp.Regexp
	group      int    // the ordering group's index in re
	order      string // "numeric" or "alpha"
	orderSpec  string // as written, for String
}

// Parse reads the policy from a service's labels. No updater.policy, or
// "tag", is Tag; the companion labels are refused where they mean
// nothing, so a typo in the policy does not silently fall back to Tag.
func Parse(labels map[string]string) (Policy, error) {
	value := strings.TrimSpace(labels[LabelPolicy])
	pre, hasPre := labels[LabelPrerelease]
	order, hasOrder := labels[LabelOrder]
	kind, spec, _ := strings.Cut(value, ":")
	switch {
	case value == "" || value == string(Tag):
		if hasPre || hasOrder {
			return Policy{}, fmt.Errorf("%s and %s apply to semver: and regex: policies, and %s is %q; %s",
				LabelPrerelease, LabelOrder, LabelPolicy, value, policyForm)
		}
		return Policy{kind: Tag}, nil
	case kind == string(Semver):
		if hasOrder {
			return Policy{}, fmt.Errorf("%s=%q: semver orders by version; %s is for regex: policies", LabelOrder, order, LabelOrder)
		}
		return parseSemver(value, spec, pre, hasPre)
	case kind == string(Regex):
		if hasPre {
			return Policy{}, fmt.Errorf("%s=%q: pre-releases are a semver: notion; a regex: pattern says itself which tags it takes", LabelPrerelease, pre)
		}
		return parseRegex(value, spec, order, hasOrder)
	}
	return Policy{}, fmt.Errorf("%s=%q: unknown policy; %s", LabelPolicy, value, policyForm)
}

func parseSemver(value, spec, pre string, hasPre bool) (Policy, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return Policy{}, fmt.Errorf("%s=%q: no range after semver:; %s", LabelPolicy, value, policyForm)
	}
	c, err := semver.NewConstraint(spec)
	if err != nil {
		return Policy{}, fmt.Errorf("%s=%q: not a version range (%v); %s", LabelPolicy, value, err, policyForm)
	}
	if hasPre {
		b, err := strconv.ParseBool(strings.TrimSpace(pre))
		if err != nil {
			return Policy{}, fmt.Errorf("%s=%q: want true or false", LabelPrerelease, pre)
		}
		c.IncludePrerelease = b
	}
	return Policy{kind: Semver, spec: spec, constraint: c}, nil
}

func parseRegex(value, spec, order string, hasOrder bool) (Policy, error) {
	if spec == "" {
		return Policy{}, fmt.Errorf("%s=%q: no pattern after regex:; %s", LabelPolicy, value, policyForm)
	}
	re, err := regexp.Compile(spec)
	if err != nil {
		return Policy{}, fmt.Errorf("%s=%q: not a regular expression (%v); %s", LabelPolicy, value, err, policyForm)
	}
	if !hasOrder {
		return Policy{}, fmt.Errorf("%s=%q: a regex: policy needs %s to say which tag is highest; %s", LabelPolicy, value, LabelOrder, policyForm)
	}
	how, group, ok := strings.Cut(strings.TrimSpace(order), ":")
	if !ok || (how != "numeric" && how != "alpha") || group == "" {
		return Policy{}, fmt.Errorf("%s=%q: want numeric:GROUP or alpha:GROUP, GROUP a name or number of a group in the pattern (0: the whole match)", LabelOrder, order)
	}
	idx := re.SubexpIndex(group)
	if n, err := strconv.Atoi(group); err == nil {
		idx = n
	}
	if idx < 0 || idx > re.NumSubexp() {
		return Policy{}, fmt.Errorf("%s=%q: the pattern %q has no group %q", LabelOrder, order, spec, group)
	}
	return Policy{kind: Regex, spec: spec, re: re, group: idx, order: how, orderSpec: how + ":" + group}, nil
}

// Kind says what the policy follows.
func (p Policy) Kind() Kind {
	if p.kind == "" {
		return Tag
	}
	return p.kind
}

// String is the policy in one line, the same for the same policy: the
// engine can key a cycle's one tag list per repository and policy on it.
func (p Policy) String() string {
	switch p.Kind() {
	case Semver:
		if p.constraint.IncludePrerelease {
			return "semver:" + p.spec + " " + LabelPrerelease + "=true"
		}
		return "semver:" + p.spec
	case Regex:
		return "regex:" + p.spec + " " + LabelOrder + "=" + p.orderSpec
	}
	return string(Tag)
}

// Pick returns the highest tag the policy allows; ok is false when none
// is (and always for Tag, which has nothing to pick from). The order of
// tags does not matter: equal ranks go to the tag that sorts last as a
// string ("v1.2.3" over "1.2.3").
func (p Policy) Pick(tags []string) (tag string, ok bool) {
	var best rank
	for _, t := range tags {
		r, allowed := p.rank(t)
		if allowed && (!ok || best.less(r)) {
			tag, best, ok = t, r, true
		}
	}
	return tag, ok
}

// Allows reports whether the policy would pick tag if it were the only
// one: the engine can tell why a service's current tag stopped counting.
func (p Policy) Allows(tag string) bool {
	_, ok := p.rank(tag)
	return ok
}

// rank is where a tag stands: by version, or by the ordering group.
type rank struct {
	version *semver.Version
	key     string // alpha: the group; numeric: the digits without leading zeros
	numeric bool
	tag     string
}

func (a rank) less(b rank) bool {
	switch {
	case a.version != nil:
		if c := a.version.Compare(b.version); c != 0 {
			return c < 0
		}
	case a.numeric && len(a.key) != len(b.key):
		return len(a.key) < len(b.key) // fewer digits, smaller number
	case a.key != b.key:
		return a.key < b.key
	}
	return a.tag < b.tag
}

func (p Policy) rank(tag string) (rank, bool) {
	switch p.Kind() {
	case Semver:
		v, err := version(tag)
		if err != nil || !p.constraint.Check(v) {
			return rank{}, false
		}
		return rank{version: v, tag: tag}, true
	case Regex:
		m := p.re.FindStringSubmatchIndex(tag)
		if m == nil || m[2*p.group] < 0 {
			return rank{}, false
		}
		key := tag[m[2*p.group]:m[2*p.group+1]]
		if p.order == "numeric" {
			if !isDigits(key) {
				return rank{}, false
			}
			// Any number of digits: compared by length, then as text.
			if key = strings.TrimLeft(key, "0"); key == "" {
				key = "0"
			}
		}
		return rank{key: key, numeric: p.order == "numeric", tag: tag}, true
	}
	return rank{}, false
}

var errNotVersion = errors.New("not a version tag")

// version reads a tag as MAJOR.MINOR.PATCH[-PRERELEASE], with or without
// a leading v. Shorter tags ("1.2", "1") are not versions here: they are
// the moving aliases that a policy exists to see past.
func version(tag string) (*semver.Version, error) {
	if len(tag) > 1 && tag[0] == 'v' {
		tag = tag[1:]
	}
	if tag == "" || tag[0] < '0' || tag[0] > '9' {
		return nil, errNotVersion
	}
	return semver.StrictNewVersion(tag)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
