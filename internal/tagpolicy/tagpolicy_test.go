package tagpolicy

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

func mustParse(t *testing.T, labels ...string) Policy {
	t.Helper()
	m := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		m[labels[i]] = labels[i+1]
	}
	p, err := Parse(m)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPick(t *testing.T) {
	for _, c := range []struct {
		name   string
		labels []string
		tags   []string
		want   string // "" for none
	}{
		{"tilde: the e2e's tags", []string{LabelPolicy, "semver:~1.2"},
			[]string{"1.2.3", "1.2.4", "1.3.0-rc.1", "2.0.0", "latest"}, "1.2.4"},
		{"tilde compares numbers, not text", []string{LabelPolicy, "semver:~1.2"},
			[]string{"1.2.9", "1.2.10", "1.2"}, "1.2.10"},
		{"caret", []string{LabelPolicy, "semver:^1"},
			[]string{"1.2.4", "1.9.0", "2.0.0", "1.10.0-rc.1", "0.9.0"}, "1.9.0"},
		{"caret with pre-releases", []string{LabelPolicy, "semver:^1", LabelPrerelease, "true"},
			[]string{"1.2.4", "1.9.0", "2.0.0", "1.10.0-rc.1"}, "1.10.0-rc.1"},
		{"pre-releases off said so", []string{LabelPolicy, "semver:^1", LabelPrerelease, "false"},
			[]string{"1.9.0", "1.10.0-rc.1"}, "1.9.0"},
		{"and-range with a space", []string{LabelPolicy, "semver:>=1.4 <2"},
			[]string{"1.3.9", "1.4.0", "1.8.2", "2.0.0", "2.0.0-rc.1"}, "1.8.2"},
		{"or-range", []string{LabelPolicy, "semver:~1.2 || ~2.0"},
			[]string{"1.2.4", "1.3.0", "2.0.7", "2.1.0"}, "2.0.7"},
		{"comma and-range", []string{LabelPolicy, "semver:>=1.4, <2"},
			[]string{"1.3.9", "1.8.2", "2.0.0"}, "1.8.2"},
		{"hyphen range", []string{LabelPolicy, "semver:1.2 - 1.4"},
			[]string{"1.1.0", "1.4.9", "1.5.0"}, "1.4.9"},
		{"a range that names a pre-release takes them", []string{LabelPolicy, "semver:>=1.3.0-rc.0 <1.4"},
			[]string{"1.2.9", "1.3.0-rc.1", "1.3.0-rc.2"}, "1.3.0-rc.2"},
		{"and the release over its pre-releases", []string{LabelPolicy, "semver:>=1.3.0-rc.0 <1.4"},
			[]string{"1.3.0-rc.2", "1.3.0", "1.3.0-rc.1"}, "1.3.0"},
		{"v prefix counts, and wins a tie", []string{LabelPolicy, "semver:~1.2"},
			[]string{"v1.2.3", "1.2.3", "1.2.2"}, "v1.2.3"},
		{"aliases and junk are no versions", []string{LabelPolicy, "semver:*"},
			[]string{"1", "1.2", "latest", "v", "01.2.3", "1.2.3.4", "1.2.3-"}, ""},
		{"nothing in range", []string{LabelPolicy, "semver:~3"}, []string{"1.2.3", "2.0.0"}, ""},
		{"regex numeric", []string{LabelPolicy, `regex:^main-(?P<n>\d+)$`, LabelOrder, "numeric:n"},
			[]string{"main-9", "main-10", "main-x", "feature-99", "main-2-debug", "main-"}, "main-10"},
		{"regex numeric: leading zeros, any length", []string{LabelPolicy, `regex:^b(\d+)$`, LabelOrder, "numeric:1"},
			[]string{"b0099", "b100", "b99999999999999999999999", "b000000000000000000000000001"}, "b99999999999999999999999"},
		{"regex numeric skips a group that is no number", []string{LabelPolicy, `regex:^main-(?P<n>\w+)$`, LabelOrder, "numeric:n"},
			[]string{"main-7", "main-abc"}, "main-7"},
		{"regex alpha", []string{LabelPolicy, `regex:^release-(?P<d>\d{8})-`, LabelOrder, "alpha:d"},
			[]string{"release-20261130-a1", "release-20261201-ff", "release-2026-x"}, "release-20261201-ff"},
		{"alpha is text order", []string{LabelPolicy, `regex:^r(?P<n>\d+)$`, LabelOrder, "alpha:n"},
			[]string{"r10", "r9"}, "r9"},
		{"group 0 is the whole match", []string{LabelPolicy, `regex:^20\d\d\.\d\d$`, LabelOrder, "alpha:0"},
			[]string{"2026.11", "2026.12", "2027.1x"}, "2026.12"},
		{"tag picks nothing", nil, []string{"1.2.3"}, ""},
	} {
		p := mustParse(t, c.labels...)
		got, ok := p.Pick(c.tags)
		if ok != (c.want != "") || got != c.want {
			t.Errorf("%s: Pick(%q) = %q, %v; want %q", c.name, c.tags, got, ok, c.want)
		}
		rev := slices.Clone(c.tags)
		slices.Reverse(rev)
		if again, _ := p.Pick(rev); again != got {
			t.Errorf("%s: Pick of the reversed list = %q, of the list %q", c.name, again, got)
		}
		if ok && !p.Allows(got) {
			t.Errorf("%s: picked %q, which Allows refuses", c.name, got)
		}
	}
}

func TestKindAndString(t *testing.T) {
	for _, c := range []struct {
		labels []string
		kind   Kind
		str    string
	}{
		{nil, Tag, "tag"},
		{[]string{LabelPolicy, " tag "}, Tag, "tag"},
		{[]string{LabelPolicy, "semver: ~1.2 "}, Semver, "semver:~1.2"},
		{[]string{LabelPolicy, "semver:^1", LabelPrerelease, "true"}, Semver, "semver:^1 updater.policy.prerelease=true"},
		{[]string{LabelPolicy, `regex:^main-(?P<n>\d+)$`, LabelOrder, "numeric:n"}, Regex, `regex:^main-(?P<n>\d+)$ updater.policy.order=numeric:n`},
	} {
		p := mustParse(t, c.labels...)
		if p.Kind() != c.kind || p.String() != c.str {
			t.Errorf("Parse(%q) = %s %q; want %s %q", c.labels, p.Kind(), p.String(), c.kind, c.str)
		}
	}
	if (Policy{}).Kind() != Tag {
		t.Error("the zero Policy is not Tag")
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		labels     map[string]string
		name, want string // the label blamed and what the message says
	}{
		{map[string]string{LabelPolicy: "semvr:~1.2"}, LabelPolicy, "unknown policy"},
		{map[string]string{LabelPolicy: "semver:"}, LabelPolicy, "no range after semver:"},
		{map[string]string{LabelPolicy: "semver:~1.2.x.y"}, LabelPolicy, "not a version range"},
		{map[string]string{LabelPolicy: "semver:~1.2", LabelPrerelease: "yes please"}, LabelPrerelease, "want true or false"},
		{map[string]string{LabelPolicy: "semver:~1.2", LabelOrder: "numeric:n"}, LabelOrder, "semver orders by version"},
		{map[string]string{LabelPolicy: "regex:"}, LabelPolicy, "no pattern after regex:"},
		{map[string]string{LabelPolicy: "regex:^main-(\\d+$"}, LabelPolicy, "not a regular expression"},
		{map[string]string{LabelPolicy: `regex:^main-(\d+)$`}, LabelPolicy, "needs updater.policy.order"},
		{map[string]string{LabelPolicy: `regex:^main-(\d+)$`, LabelOrder: "newest:1"}, LabelOrder, "want numeric:GROUP or alpha:GROUP"},
		{map[string]string{LabelPolicy: `regex:^main-(\d+)$`, LabelOrder: "numeric:n"}, LabelOrder, `has no group "n"`},
		{map[string]string{LabelPolicy: `regex:^main-(\d+)$`, LabelOrder: "numeric:2"}, LabelOrder, `has no group "2"`},
		{map[string]string{LabelPolicy: `regex:^main-(\d+)$`, LabelOrder: "numeric:1", LabelPrerelease: "true"}, LabelPrerelease, "a semver: notion"},
		{map[string]string{LabelOrder: "numeric:1"}, LabelPolicy, "apply to semver: and regex: policies"},
	} {
		_, err := Parse(c.labels)
		if err == nil {
			t.Errorf("Parse(%q) accepted", c.labels)
			continue
		}
		msg := err.Error()
		for _, part := range []string{c.name, strconv.Quote(c.labels[c.name]), c.want} {
			if !strings.Contains(msg, part) {
				t.Errorf("Parse(%q): error %q lacks %q", c.labels, msg, part)
			}
		}
	}
}
