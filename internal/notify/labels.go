package notify

import (
	"net/url"
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
// source label is a GitHub or GitLab repository URL and the revision
// looks like a commit hash; "" otherwise, since a guessed link that 404s
// is worse than none.
func CommitURL(labels map[string]string) string {
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
	switch host := strings.ToLower(u.Hostname()); {
	case host == "github.com" || strings.HasPrefix(host, "github."):
		return base + "/commit/" + rev
	case host == "gitlab.com" || strings.HasPrefix(host, "gitlab."):
		return base + "/-/commit/" + rev
	}
	return ""
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
