package notify

import (
	"net/url"
	"slices"
	"strings"

	"github.com/updater-dev/updater/internal/deploy"
)

// The OCI image annotations (as labels) that tie an image to its source.
const (
	LabelRevision = "org.opencontainers.image.revision"
	LabelSource   = "org.opencontainers.image.source"
	LabelVersion  = "org.opencontainers.image.version"
)

// CommitURL links the image's revision label to the commit, when the
// source label is a repository URL on github.com, gitlab.com or one of
// hosts (UPDATER_SOURCE_HOSTS: a GitLab, GitHub Enterprise, Gitea…) and
// the revision looks like a commit hash; "" otherwise. The host must be
// one of those exactly: a label is written by whoever builds the image,
// and a link in a deploy message is trusted by whoever reads it, so
// "github.evil.example" gets none. A listed host whose name begins with
// "gitlab." gets GitLab's /-/commit/ path, the others /commit/ (GitHub,
// Gitea, Forgejo).
func CommitURL(labels map[string]string, hosts []string) string {
	rev, src := labels[LabelRevision], labels[LabelSource]
	if !isHex(rev) || len(rev) < 7 || len(rev) > 64 || src == "" {
		return ""
	}
	u, err := url.Parse(src)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return ""
	}
	path := strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), ".git")
	if strings.Count(strings.Trim(path, "/"), "/") < 1 {
		return "" // not owner/repo
	}
	base := u.Scheme + "://" + u.Host + path
	host := strings.ToLower(u.Host)
	switch {
	case host == "github.com":
		return base + "/commit/" + rev
	case host == "gitlab.com":
		return base + "/-/commit/" + rev
	case !slices.Contains(hosts, host):
		return ""
	case strings.HasPrefix(host, "gitlab."):
		return base + "/-/commit/" + rev
	}
	return base + "/commit/" + rev
}

// Revision is what a deploy is called in an error tracker: the image's
// revision label, or else the digest it runs.
func Revision(r deploy.Release) string {
	if rev := strings.TrimSpace(r.Labels[LabelRevision]); rev != "" {
		return rev
	}
	return r.To
}

func isHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return s != ""
}
