package notify

import (
	"cmp"
	"net/url"
	"slices"
	"strings"
)

// Redactor hides secrets (tokens, webhook URLs) in errors and text before
// they reach a log line or a report.
type Redactor struct {
	r *strings.Replacer
}

const redacted = "<redacted>"

// NewRedactor hides each of secrets. A secret URL is hidden in the
// spellings an HTTP client may print it in, and so is its path (the part
// of a Slack webhook URL that is the secret), while its host stays
// readable in the rest of a message.
func NewRedactor(secrets ...string) Redactor {
	var all []string
	for _, s := range secrets {
		if s == "" {
			continue
		}
		all = append(all, s)
		if u, err := url.Parse(s); err == nil && u.Host != "" {
			all = append(all, u.String(), u.EscapedPath(), u.Path)
			if u.RawQuery != "" {
				all = append(all, u.RawQuery)
			}
		}
	}
	// Longest first: the replacer tries old strings in argument order, and
	// a URL must go whole before its path is matched alone.
	slices.SortFunc(all, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	all = slices.Compact(all)
	var pairs []string
	for _, s := range all {
		if len(s) < 2 || s == "/" {
			continue
		}
		pairs = append(pairs, s, redacted)
	}
	return Redactor{r: strings.NewReplacer(pairs...)}
}

// String returns s with every secret replaced.
func (r Redactor) String(s string) string {
	if r.r == nil {
		return s
	}
	return r.r.Replace(s)
}

// Error returns err with every secret replaced in its message. The result
// still unwraps to err, so errors.As can classify it (a rate limit, a
// timeout); only the message is what anyone prints.
func (r Redactor) Error(err error) error {
	if err == nil {
		return nil
	}
	msg := r.String(err.Error())
	if msg == err.Error() {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
