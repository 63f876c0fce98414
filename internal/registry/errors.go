package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// statusError replaces go-containerregistry's *transport.Error in what we
// return: that one carries the *http.Request, Authorization header
// included, and anything that prints errors deeply would print the secret.
type statusError struct {
	kind   error // ErrNotFound, ErrUnauthorized or nil
	code   int
	detail string
}

func (e *statusError) Error() string {
	text := strings.ToLower(http.StatusText(e.code))
	if text == "" {
		text = "unexpected status"
	}
	s := fmt.Sprintf("%d %s", e.code, text)
	if e.detail != "" {
		s += ": " + e.detail
	}
	return s
}

func (e *statusError) Unwrap() error { return e.kind }

// badDigestError is a registry answering HEAD without the digest; an empty
// digest would pin nothing, and guessing it from a GET would cost a pull.
type badDigestError struct{ got string }

func (e *badDigestError) Error() string {
	return fmt.Sprintf("registry answered the manifest HEAD without a valid Docker-Content-Digest header (got %q)", clip(e.got, 80))
}

// refused reports whether the registry turned our credentials down.
func refused(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && errors.Is(classify(te), ErrUnauthorized)
}

// describe turns what go-containerregistry returned into an error that
// names ref and can be matched with errors.Is.
func describe(ctx context.Context, ref string, err error) error {
	var bad *badDigestError
	var te *transport.Error
	switch {
	case errors.As(err, &bad):
		return fmt.Errorf("resolve %s: %w", ref, bad)
	case errors.As(err, &te):
		return fmt.Errorf("resolve %s: %w", ref, classify(te))
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("resolve %s: registry did not answer in time: %w", ref, err)
	case ctx.Err() != nil && !errors.Is(err, ctx.Err()):
		// Some failures (a ping racing http against https) lose the
		// context error on the way up; keep it matchable.
		return fmt.Errorf("resolve %s: %w: %v", ref, ctx.Err(), err)
	default:
		return fmt.Errorf("resolve %s: %w", ref, err)
	}
}

func classify(te *transport.Error) *statusError {
	e := &statusError{code: te.StatusCode}
	var diags []string
	for _, d := range te.Errors {
		switch d.Code {
		case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
			e.kind = ErrUnauthorized
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode:
			if e.kind == nil {
				e.kind = ErrNotFound
			}
		}
		diags = append(diags, clip(fmt.Sprintf("%s: %s", d.Code, d.Message), 200))
	}
	var path, where string
	if req := te.Request; req != nil && req.URL != nil {
		path = req.URL.Path
		// Only the manifest request is implied by "resolve <ref>"; a failed
		// ping or token exchange must say where it happened. No query: it
		// may carry a token.
		if !strings.Contains(path, "/manifests/") {
			where = fmt.Sprintf("%s %s%s", req.Method, req.URL.Host, path)
		}
	}
	if e.kind == nil {
		switch {
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
			e.kind = ErrUnauthorized
		case te.StatusCode == http.StatusNotFound && strings.Contains(path, "/manifests/"):
			// A 404 on /v2/ means "not a registry", not "no such tag".
			e.kind = ErrNotFound
		}
	}
	var parts []string
	if where != "" {
		parts = append(parts, where)
	}
	parts = append(parts, diags...)
	if len(diags) == 0 {
		// A HEAD answer has no body to explain itself.
		switch {
		case e.kind == ErrNotFound:
			parts = append(parts, "no such repository or tag")
		case e.kind == ErrUnauthorized && te.Request != nil && te.Request.URL != nil:
			parts = append(parts, "check the credentials for "+te.Request.URL.Host)
		}
	}
	e.detail = strings.Join(parts, ": ")
	return e
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
