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

// webhookAuthorized says whether a webhook comes from someone who knows
// the secret. A signed request (GitHub) must carry a valid signature; a
// request that cannot be signed (Docker Hub, a distribution registry)
// carries the secret itself, as a bearer token or, for senders that can't
// set headers, the token query parameter.
func webhookAuthorized(r *http.Request, body []byte, secret string) bool {
	if sig := r.Header.Get("X-Hub-Signature-256"); sig != "" {
		return validSignature(sig, body, secret)
	}
	if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return sameSecret(strings.TrimSpace(t), secret)
	}
	if t := r.URL.Query().Get("token"); t != "" {
		return sameSecret(t, secret)
	}
	return false
}
