// Package imageref checks and normalises image references
// ("host/path:tag@sha256:…") the way Docker reads them. Splitting off a
// digest, whether a reference has a tag, and the canonical registry host
// are the domain's (deploy.SplitImage, deploy.Tagged, deploy.CanonicalHost),
// which this package builds on: one reading of references in the updater.
package imageref

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/updater-dev/updater/internal/deploy"
)

// DockerHub is Docker Hub's canonical host (deploy's, the one spelling).
const DockerHub = deploy.DockerHub

// Ref is a reference as Docker reads it, normalised: Host lower-case and
// canonical (DockerHub for the Hub's aliases and for a reference with no
// host), Path with the Hub's "library/" for one-component names.
type Ref struct {
	Host, Path string
	Tag        string // "" when the reference names none
	Digest     string // "" when the reference names none
}

// Name is the repository, normalised: "nginx:1",
// "index.docker.io/library/nginx" and "nginx@sha256:…" all have the name
// "docker.io/library/nginx".
func (r Ref) Name() string { return r.Host + "/" + r.Path }

// The grammar of github.com/distribution/reference, which dockerd uses.
var (
	hostRE   = regexp.MustCompile(`^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?$|^\[[a-fA-F0-9:]+\](?::[0-9]+)?$`)
	pathRE   = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	tagRE    = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)
	digestRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$`)
)

// ErrInvalid is a string that is not an image reference.
var ErrInvalid = errors.New("not an image reference")

// Parse reads ref as Docker does: the first component is a host only when
// it looks like one (a dot, a port, or localhost); otherwise the image is
// on Docker Hub.
func Parse(ref string) (Ref, error) {
	var r Ref
	rest, digest, hasDigest := strings.Cut(ref, "@")
	if hasDigest {
		if !digestRE.MatchString(digest) {
			return r, fmt.Errorf("%w: %q has a malformed digest", ErrInvalid, ref)
		}
		r.Digest = digest
	}
	if i := strings.LastIndex(rest, ":"); i > strings.LastIndex(rest, "/") {
		rest, r.Tag = rest[:i], rest[i+1:]
		if !tagRE.MatchString(r.Tag) {
			return r, fmt.Errorf("%w: %q has a malformed tag", ErrInvalid, ref)
		}
	}
	if len(rest) > 255 {
		return r, fmt.Errorf("%w: %q is longer than 255 characters", ErrInvalid, ref)
	}
	first, path, ok := strings.Cut(rest, "/")
	if ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		if !hostRE.MatchString(first) {
			return r, fmt.Errorf("%w: %q has a malformed host", ErrInvalid, ref)
		}
		r.Host = deploy.CanonicalHost(first)
	} else {
		r.Host, path = DockerHub, rest
	}
	if !pathRE.MatchString(path) {
		return r, fmt.Errorf("%w: %q: a repository is lower-case letters, digits and separators", ErrInvalid, ref)
	}
	if r.Host == DockerHub && !strings.Contains(path, "/") {
		path = "library/" + path
	}
	r.Path = path
	return r, nil
}

// Repository is the normalised repository of ref (Ref.Name), "" when ref
// is not a reference.
func Repository(ref string) string {
	r, err := Parse(ref)
	if err != nil {
		return ""
	}
	return r.Name()
}
