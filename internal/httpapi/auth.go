package httpapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
)

// sameSecret compares a secret someone sent with ours in constant time.
// Both are hashed first, so neither the length nor the first differing
// byte of the secret shows in how long the comparison takes.
func sameSecret(given, want string) bool {
	if want == "" {
		return false // a feature without a secret is off, not open
	}
	g, w := sha256.Sum256([]byte(given)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// token is the API token a request carries: a bearer token (API clients)
// or the password of HTTP basic auth (a browser on the status page, which
// prompts for it; the user name is ignored).
func token(r *http.Request) string {
	if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	if _, pw, ok := r.BasicAuth(); ok {
		return pw
	}
	return ""
}

// validSignature checks GitHub's X-Hub-Signature-256: "sha256=" and the
// hex HMAC-SHA256 of the body under the secret.
func validSignature(header string, body []byte, secret string) bool {
	sig, ok := strings.CutPrefix(header, "sha256=")
	if !ok || secret == "" {
		return false
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}

// access is what a request's credentials open.
type access int

const (
	authNone      access = iota // no valid token
	authThrottled               // not looked at: too many failures from this address
	authRead                    // the read-only token
	authAll                     // the API token
)

// throttleRetryAfter is what a throttled client is asked to wait, in
// seconds: about one bucket refill.
const throttleRetryAfter = "6"

// authenticate tells what r's token opens. A failure costs the client's
// address a token of its bucket; an address with none left is not asked
// for its token at all. Refusals are counted and logged once a minute.
func (s *Server) authenticate(r *http.Request) access {
	addr, now := clientAddr(r), s.cfg.Now()
	if !s.throttle.allowed(addr, now) {
		s.countRefused(r, "throttled")
		return authThrottled
	}
	t := token(r)
	switch {
	case sameSecret(t, s.cfg.APIToken):
		return authAll
	case sameSecret(t, s.cfg.APIReadToken):
		return authRead
	}
	s.throttle.failed(addr, now)
	s.countRefused(r, "unauthorized")
	return authNone
}

func (s *Server) countRefused(r *http.Request, reason string) {
	if s.cfg.Refusals != nil {
		s.cfg.Refusals.APIRefused(reason)
	}
	if ok, held := s.refusedAPI.allow(s.cfg.Now()); ok {
		s.cfg.Log.Warn("api request refused", "reason", reason, "remote", clientAddr(r), "path", r.URL.Path, "refused_unlogged", held)
	}
}
