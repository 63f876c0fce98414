// Package imageref reads image references ("host/path:tag@sha256:…") the
// way Docker does, with the standard library only, so that every part of
// the updater (the domain too) reads them one way.
package imageref

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// DockerHub is Docker Hub's canonical host; its other names are aliases.
const DockerHub = "docker.io"

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
		r.Host = CanonicalHost(first)
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

// CanonicalHost is a registry host as Parse gives it: lower-case, and
// DockerHub for each of the Hub's names (a webhook names its registry).
func CanonicalHost(h string) string {
	h = strings.ToLower(h)
	switch h {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "hub.docker.com":
		return DockerHub
	}
	return h
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

// Split splits "repo:tag@sha256:…" into "repo:tag" and "sha256:…". An
// image with neither tag nor digest tracks "latest", as Docker does; one
// pinned to a digest without a tag tracks nothing, and ref comes back
// without a tag (see Tagged).
func Split(image string) (ref, digest string) {
	ref, digest, _ = strings.Cut(image, "@")
	if !Tagged(ref) && digest == "" {
		ref += ":latest"
	}
	return ref, digest
}

// Tagged reports whether ref names a tag ("repo:tag"), as opposed to a bare
// repository; the colon of a registry port does not count.
func Tagged(ref string) bool {
	name := ref
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	return strings.Contains(name, ":")
}
