package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
)

// pager answers GET /v2/app/tags/list itself, size tags a page, as
// Distribution does: n and last in the query, the next page in a Link
// header (relative, or absolute on linkHost when set). Requests the
// fakeRegistry counts as "GET other".
type pager struct {
	tags     []string // sorted
	size     int
	linkHost string // "": a relative Link
	forever  bool   // every page links to itself
	lasts    atomic.Pointer[[]string]
}

func (p *pager) fault(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet || r.URL.Path != "/v2/app/tags/list" {
		return false
	}
	last := r.URL.Query().Get("last")
	seen := append(slices.Clone(derefOr(p.lasts.Load())), last)
	p.lasts.Store(&seen)
	i := sort.SearchStrings(p.tags, last)
	if last != "" && i < len(p.tags) && p.tags[i] == last {
		i++
	}
	end := min(i+p.size, len(p.tags))
	if end < len(p.tags) || p.forever {
		next := fmt.Sprintf("/v2/app/tags/list?last=%s&n=%d", url.QueryEscape(p.tags[max(end-1, 0)]), p.size)
		if p.linkHost != "" {
			next = "http://" + p.linkHost + next
		}
		w.Header().Set("Link", fmt.Sprintf(`<%s>; rel="next"`, next))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"name": "app", "tags": p.tags[i:end]})
	return true
}

func derefOr(p *[]string) []string {
	if p == nil {
		return nil
	}
	return *p
}

// chain answers with the first fault that answers.
func chain(faults ...func(http.ResponseWriter, *http.Request) bool) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		for _, f := range faults {
			if f(w, r) {
				return true
			}
		}
		return false
	}
}

// Seven tags three a page: three GETs following the Link header, behind
// token auth; the token is fetched once and serves every page, and the
// HEAD that resolves the pick after it costs no ping or token either.
func TestTagsFollowsLinkPages(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	want := f.pushImage(t, "app:1.2.4")
	a := &tokenAuth{host: f.host, user: "deployer", pass: "s3cret"}
	a.token.Store(ptr("token-1"))
	p := &pager{tags: []string{"1.2.3", "1.2.4", "1.3.0-rc.1", "2.0.0", "latest", "main-10", "main-9"}, size: 3}
	f.inject(chain(a.fault, p.fault))
	kc := &testKeychain{host: f.host, cfg: authn.AuthConfig{Username: a.user, Password: a.pass}}
	c := New(Config{Keychain: kc})

	got, err := c.Tags(context.Background(), f.host+"/app")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, p.tags) {
		t.Errorf("Tags = %q, want %q", got, p.tags)
	}
	counts := f.snapshot()
	t.Logf("first listing: requests %v, last= per page %q", counts, derefOr(p.lasts.Load()))
	if counts["GET other"] != 3 || counts["GET token"] != 1 || counts["GET ping"] != 1 {
		t.Errorf("requests %v, want 3 list pages, 1 token, 1 ping", counts)
	}
	if lasts := derefOr(p.lasts.Load()); !slices.Equal(lasts, []string{"", "1.3.0-rc.1", "main-10"}) {
		t.Errorf("pages asked after %q, want after \"\", \"1.3.0-rc.1\", \"main-10\" (the Link header's)", lasts)
	}

	f.reset()
	if d, err := c.Digest(context.Background(), f.ref("app:1.2.4")); err != nil || d != want {
		t.Fatalf("Digest after Tags = %s, %v; want %s", d, err, want)
	}
	if _, err := c.Tags(context.Background(), f.ref("app:ignored-tag")); err != nil {
		t.Fatal(err)
	}
	if counts := f.snapshot(); counts["HEAD manifest"] != 1 || counts["GET other"] != 3 || len(counts) != 2 {
		t.Errorf("a HEAD and a listing on the kept session: requests %v, want 1 HEAD and 3 list pages only", counts)
	}
}

// An absolute Link on the registry's own host is followed too.
func TestTagsAbsoluteLink(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	p := &pager{tags: []string{"a", "b", "c"}, size: 2, linkHost: f.host}
	f.inject(p.fault)
	got, err := New(Config{Keychain: anonymous()}).Tags(context.Background(), f.host+"/app")
	if err != nil || !slices.Equal(got, p.tags) {
		t.Fatalf("Tags = %q, %v; want %q", got, err, p.tags)
	}
	if n := f.count("GET other"); n != 2 {
		t.Errorf("%d list requests, want 2", n)
	}
}

// A Link to another host is not followed: the credentials would go there.
func TestTagsRefusesLinkToAnotherHost(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	other := newFakeRegistry(t)
	p := &pager{tags: []string{"a", "b", "c"}, size: 2, linkHost: other.host}
	f.inject(p.fault)
	_, err := New(Config{Keychain: anonymous()}).Tags(context.Background(), f.host+"/app")
	if err == nil || !strings.Contains(err.Error(), "list tags of "+f.host+"/app") || !strings.Contains(err.Error(), "host does not match") {
		t.Fatalf("Tags with a Link to %s: err %v, want a refusal naming the repository", other.host, err)
	}
	if n := other.count("GET other"); n != 0 {
		t.Errorf("the other host got %d list requests", n)
	}
}

// A registry that links each page to itself ends the listing at
// maxTagPages, with an error, not at the deadline.
func TestTagsStopsAtPageLimit(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	p := &pager{tags: []string{"a"}, size: 1, forever: true}
	f.inject(p.fault)
	_, err := New(Config{Keychain: anonymous()}).Tags(context.Background(), f.host+"/app")
	if err == nil || !strings.Contains(err.Error(), "more than 1000 pages") {
		t.Fatalf("Tags of an endless listing: err %v, want the page limit", err)
	}
	if n := f.count("GET other"); n != maxTagPages {
		t.Errorf("%d list requests, want %d", n, maxTagPages)
	}
}

// go-containerregistry's in-memory registry: what was pushed is listed,
// in one GET; a repository never pushed is ErrNotFound.
func TestTagsOfInMemoryRegistry(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	d := f.pushImage(t, "app:1.2.3")
	f.pushImage(t, "app:2.0.0")
	c := New(Config{Keychain: anonymous()})
	// A service spec's image, pinned, names the repository as well.
	for _, repo := range []string{f.host + "/app", f.ref("app:1.2.3@" + d)} {
		f.reset()
		got, err := c.Tags(context.Background(), repo)
		if err != nil || !slices.Equal(got, []string{"1.2.3", "2.0.0"}) {
			t.Fatalf("Tags(%s) = %q, %v; want [1.2.3 2.0.0]", repo, got, err)
		}
		if n := f.count("GET other"); n != 1 {
			t.Errorf("Tags(%s): %d list requests, want 1", repo, n)
		}
	}
	_, err := c.Tags(context.Background(), f.host+"/nothing-here")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "list tags of "+f.host+"/nothing-here") {
		t.Errorf("Tags of a missing repository: %v, want ErrNotFound naming it", err)
	}
}

// A 404 without a body is a missing repository too.
func TestTagsBare404IsNotFound(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	f.inject(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/tags/list") {
			w.WriteHeader(http.StatusNotFound)
			return true
		}
		return false
	})
	_, err := New(Config{Keychain: anonymous()}).Tags(context.Background(), f.host+"/app")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("Tags on a bare 404: %v, want ErrNotFound", err)
	}
}

// Wrong credentials are ErrUnauthorized, and the error carries no token
// or password.
func TestTagsUnauthorized(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	a := &tokenAuth{host: f.host, user: "deployer", pass: "s3cret"}
	a.token.Store(ptr("token-1"))
	f.inject(chain(a.fault, (&pager{tags: []string{"a"}, size: 5}).fault))
	kc := &testKeychain{host: f.host, cfg: authn.AuthConfig{Username: a.user, Password: "wrong-pass"}}
	_, err := New(Config{Keychain: kc}).Tags(context.Background(), f.host+"/app")
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong password: %v, want ErrUnauthorized", err)
	}
	if s := err.Error(); strings.Contains(s, "token-") || strings.Contains(s, "wrong-pass") {
		t.Errorf("error %q leaks a secret", s)
	}
}

// A kept session whose token the registry stops taking gets one fresh
// look, as Digest does: rotated credentials do not fail a listing.
func TestTagsRetriesOnceWithFreshCredentials(t *testing.T) {
	t.Parallel()
	f := newFakeRegistry(t)
	pass := atomic.Pointer[string]{}
	pass.Store(ptr("old"))
	f.inject(chain(requireBasic("deployer", &pass), (&pager{tags: []string{"a", "b"}, size: 5}).fault))
	kc := &testKeychain{host: f.host, cfg: authn.AuthConfig{Username: "deployer", Password: "old"}}
	c := New(Config{Keychain: kc})
	if _, err := c.Tags(context.Background(), f.host+"/app"); err != nil {
		t.Fatal(err)
	}
	pass.Store(ptr("new"))
	f.reset()
	defer func() { t.Logf("after rotation: %v", f.snapshot()) }()
	kc.set(authn.AuthConfig{Username: "deployer", Password: "new"})
	got, err := c.Tags(context.Background(), f.host+"/app")
	if err != nil || !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("Tags after rotation = %q, %v; want [a b]", got, err)
	}
}
