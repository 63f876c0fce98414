package tagpolicy

import (
	"slices"
	"strings"
	"testing"
)

// FuzzPolicy parses any labels without panicking, and on what parses,
// Pick keeps its promises: the tag is one of the list, allowed, no other
// allowed tag ranks above it, and the list's order does not matter.
func FuzzPolicy(f *testing.F) {
	f.Add("semver:~1.2", "", false, "", false, "1.2.3,1.2.4,1.3.0-rc.1,2.0.0")
	f.Add("semver:^1", "true", true, "", false, "1.9.0,1.10.0-rc.1,v1.9.0")
	f.Add("semver:>=1.4 <2", "", false, "", false, "1.3.9,1.4.0,1.8.2,2.0.0")
	f.Add(`regex:^main-(?P<n>\d+)$`, "", false, "numeric:n", true, "main-9,main-10,main-0010,main-x")
	f.Add(`regex:^r(\d+)`, "", false, "alpha:1", true, "r10,r9,r9-debug")
	f.Add("tag", "", false, "", false, "latest")
	f.Fuzz(func(t *testing.T, policy, pre string, hasPre bool, order string, hasOrder bool, list string) {
		labels := map[string]string{LabelPolicy: policy}
		if hasPre {
			labels[LabelPrerelease] = pre
		}
		if hasOrder {
			labels[LabelOrder] = order
		}
		p, err := Parse(labels)
		if err != nil {
			if !strings.Contains(err.Error(), "updater.policy") {
				t.Fatalf("error %q names no label", err)
			}
			return
		}
		tags := strings.Split(list, ",")
		got, ok := p.Pick(tags)
		if !ok {
			for _, tag := range tags {
				if p.Allows(tag) && p.Kind() != Tag {
					t.Fatalf("Pick found nothing in %q, yet %q is allowed", tags, tag)
				}
			}
			return
		}
		if !slices.Contains(tags, got) || !p.Allows(got) {
			t.Fatalf("Pick(%q) = %q: not in the list, or not allowed", tags, got)
		}
		best, _ := p.rank(got)
		for _, tag := range tags {
			if r, ok := p.rank(tag); ok && best.less(r) {
				t.Fatalf("Pick(%q) = %q, but %q ranks higher", tags, got, tag)
			}
		}
		rev := slices.Clone(tags)
		slices.Reverse(rev)
		if again, _ := p.Pick(rev); again != got {
			t.Fatalf("Pick(%q) = %q, of the reversed list %q", tags, got, again)
		}
		if p2, err := Parse(labels); err != nil || p2.String() != p.String() {
			t.Fatalf("parsing again gave %q, %v; first %q", p2.String(), err, p.String())
		}
	})
}
