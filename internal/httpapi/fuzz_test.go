package httpapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/updater-dev/updater/internal/deploy"
)

// FuzzValidSignature: a signature is valid exactly when it is "sha256="
// and the hex HMAC-SHA256 of the body under a non-empty secret.
func FuzzValidSignature(f *testing.F) {
	f.Add(sign(githubPackage, secret), githubPackage, secret)
	f.Add(strings.ToUpper(sign("{}", secret)), "{}", secret)
	f.Add("sha256=", "", "")
	f.Add(sign("", ""), "", "")
	f.Add("sha256="+strings.Repeat("0", 64), "x", secret)
	f.Add("sha1=00", "{}", secret)
	f.Fuzz(func(t *testing.T, header, body, key string) {
		mac := hmac.New(sha256.New, []byte(key))
		mac.Write([]byte(body))
		want := hex.EncodeToString(mac.Sum(nil))
		hexPart, prefixed := strings.CutPrefix(header, "sha256=")
		// hex.DecodeString takes either case; nothing else may pass.
		ok := key != "" && prefixed && strings.EqualFold(hexPart, want)
		if got := validSignature(header, []byte(body), key); got != ok {
			t.Fatalf("validSignature(%q, %q, %q) = %v, want %v", header, body, key, got, ok)
		}
		if got := validSignature(sign(body, key), []byte(body), key); got != (key != "") {
			t.Fatalf("our own signature of %q under %q: %v", body, key, got)
		}
	})
}

// FuzzParseGitHub: whatever the event and body, a GitHub payload gives
// pushes that name a registry, a lower-case repository and a tag, or an
// error; an accepted payload is never empty.
func FuzzParseGitHub(f *testing.F) {
	for _, s := range []string{githubPackage, githubRegistryPackage, githubNPM, githubUntagged, `{"action":"published"}`,
		`{"action":"published","package":{"name":"w","namespace":"a","package_type":"container","package_version":{"container_metadata":{"tag":{"name":"main"}}},"registry":{"url":"http://[::1"}}}`,
		`{"action":"published","package":{"name":"../../x","namespace":"A\u0000","package_type":"CoNtAiNeR","package_version":{"container_metadata":{"tag":{"name":"$(id)"}}}}}`,
		`null`, `{"package":null,"registry_package":{}}`} {
		f.Add("package", s)
	}
	f.Add("registry_package", githubRegistryPackage)
	f.Add("ping", `{"zen":"hi"}`)
	f.Add("", "")
	f.Fuzz(func(t *testing.T, event, body string) {
		pushes, err := parseGitHub(event, []byte(body))
		checkPushes(t, "github", body, pushes, err)
		for _, p := range pushes {
			if p.Registry == "" || p.Repository != strings.ToLower(p.Repository) {
				t.Fatalf("push %+v from %q", p, body)
			}
		}
	})
}

// checkPushes: a parse is pushes or an error, never both and never
// neither; an accepted push names a repository and a tag.
func checkPushes(t *testing.T, src, body string, pushes []deploy.Push, err error) {
	t.Helper()
	if err != nil {
		if pushes != nil {
			t.Fatalf("%s: pushes %v with the error %v", src, pushes, err)
		}
		if err.Error() == "" {
			t.Fatalf("%s: an error that says nothing", src)
		}
		return
	}
	if len(pushes) == 0 {
		t.Fatalf("%s: no pushes and no error from %q", src, body)
	}
	for _, p := range pushes {
		if p.Repository == "" || p.Tag == "" {
			t.Fatalf("%s: push %+v without a repository or tag from %q", src, p, body)
		}
	}
}

// FuzzWebhook drives the webhook endpoint with any body, event, content
// type, authorization, signature and token parameter. A request without
// the secret is refused with 401 before its payload is read, and asks for
// nothing; an accepted one asks for exactly the pushes it answers with.
func FuzzWebhook(f *testing.F) {
	type seed struct {
		body, event, contentType, auth, sig, token string
		signIt                                     bool
	}
	for _, s := range []seed{
		{githubPackage, "package", "application/json", "", "", "", true},
		{githubPackage, "package", "", "", "sha256=00", "", false},
		{githubPackage, "ping", "", "", "", "", true},
		{dockerHubPush, "", "", "Bearer " + secret, "", "", false},
		{dockerHubPush, "", "", "", "", secret, false},
		{dockerHubPush, "", "", "Bearer " + apiToken, "", secret, false},
		{distributionPush, "", "application/vnd.docker.distribution.events.v1+json", "Bearer " + secret, "", "", false},
		{distributionBlobsOnly, "", "", "Bearer  " + secret + " ", "", "", false},
		{`{"hello":"world"}`, "", "", "Bearer " + secret, "", "", false},
		{"\x00\xff", "package", "", "", "", "", true},
	} {
		f.Add(s.body, s.event, s.contentType, s.auth, s.sig, s.token, s.signIt)
	}
	f.Fuzz(func(t *testing.T, body, event, contentType, auth, sig, token string, signIt bool) {
		r := newRig(t)
		req := httptest.NewRequest("POST", "/hooks/registry?"+url.Values{"token": {token}}.Encode(), strings.NewReader(body))
		for k, v := range map[string]string{"X-GitHub-Event": event, "Content-Type": contentType, "Authorization": auth, "X-Hub-Signature-256": sig} {
			if v != "" {
				req.Header.Set(k, v)
			}
		}
		if signIt {
			req.Header.Set("X-Hub-Signature-256", sign(body, secret))
		}
		rec := r.do(req)
		pushes, checks, deploys := r.requests.asked()
		if checks > 1 || len(deploys) != 0 || checks == 1 && (rec.Code != http.StatusAccepted || len(pushes) != 0) {
			t.Fatalf("a webhook (%d) asked for %d checks, pushes %v, deploys %v", rec.Code, checks, pushes, deploys)
		}

		// Who knows the secret, said independently of webhookAuthorized.
		var authorized bool
		switch h := req.Header.Get("X-Hub-Signature-256"); {
		case h != "":
			authorized = strings.HasPrefix(h, "sha256=") && strings.EqualFold(h, sign(body, secret))
		case strings.HasPrefix(auth, "Bearer "):
			authorized = strings.TrimSpace(auth[len("Bearer "):]) == secret
		default:
			authorized = token == secret
		}
		if !authorized {
			if rec.Code != http.StatusUnauthorized || len(pushes) != 0 {
				t.Fatalf("unauthorized webhook: %d, pushes %v", rec.Code, pushes)
			}
			return
		}
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest:
			if len(pushes) != 0 {
				t.Fatalf("status %d, yet pushes %v", rec.Code, pushes)
			}
		case http.StatusAccepted:
			if checks == 1 {
				break // more events than a payload may carry: one full check
			}
			var answer struct {
				Checking []string `json:"checking"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil || len(answer.Checking) != len(pushes) || len(pushes) == 0 {
				t.Fatalf("202 %s, pushes %v", rec.Body, pushes)
			}
			checkPushes(t, "webhook", body, pushes, nil)
			// Each credential opens its own source's payloads only: the
			// token parameter Docker Hub's, a bearer token a distribution
			// registry's (no registry named), a signature GitHub's.
			for _, p := range pushes {
				signed, bearer := req.Header.Get("X-Hub-Signature-256") != "", strings.HasPrefix(auth, "Bearer ")
				if signed && p.Registry == "" || !signed && bearer && p.Registry != "" || !signed && !bearer && p.Registry != deploy.DockerHub {
					t.Fatalf("push %+v taken with signature %v, bearer %v", p, signed, bearer)
				}
			}
		default:
			t.Fatalf("authorized webhook: status %d %s", rec.Code, rec.Body)
		}
		if !utf8.Valid(rec.Body.Bytes()) || !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("the answer is not JSON: %q", rec.Body)
		}
	})
}

// FuzzAPIAuth: whatever Authorization header comes with it, a request
// to a route that changes something gets past the token check only if
// the header carries the API token, and a refused one asks for nothing.
func FuzzAPIAuth(f *testing.F) {
	basic := func(user, pw string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
	}
	for i, a := range []string{"", "Bearer " + apiToken, "Bearer  " + apiToken + "\t", basic("x", apiToken), basic(apiToken, ""),
		"Bearer " + secret, "Basic !!!", "bearer " + apiToken, "Bearer " + apiToken[1:]} {
		f.Add(uint8(i), "0a1b", a)
	}
	routes := []string{"/api/v1/check", "/api/v1/services/{}/deploy", "/api/v1/deploys/{}/approve", "/api/v1/deploys/{}/reject",
		"/ui/deploys/{}/approve", "/ui/deploys/{}/reject", "/api/v1/services/{}/rollback", "/ui/services/{}/rollback"}
	f.Fuzz(func(t *testing.T, route uint8, id, auth string) {
		r := newRig(t)
		decided := r.decided()
		path := strings.Replace(routes[int(route)%len(routes)], "{}", url.PathEscape(id), 1)
		req := httptest.NewRequest("POST", path, nil)
		req.Header.Set("Authorization", auth)
		rec := r.do(req)
		p, c, d := r.requests.asked()
		acted := len(p)+c+len(d) != 0 || decided.Load() != 0
		carries := strings.Contains(auth, apiToken)
		// The scheme is case-insensitive (RFC 7235): "BASIC" is basic auth.
		if len(auth) > 6 && strings.EqualFold(auth[:6], "Basic ") {
			if dec, err := base64.StdEncoding.DecodeString(auth[6:]); err == nil && strings.Contains(string(dec), apiToken) {
				carries = true
			}
		}
		switch {
		case rec.Code == http.StatusUnauthorized && acted:
			t.Fatalf("POST %s with %q: refused, yet it acted", path, auth)
		case !carries && (acted || rec.Code < 300):
			t.Fatalf("POST %s with %q: %d, acted %v, without the token", path, auth, rec.Code, acted)
		}
	})
}

// FuzzParseDistribution: whatever the body, a distribution notification
// gives at most maxEvents pushes, each once, or errTooMany exactly when
// it carries more than maxEvents events.
func FuzzParseDistribution(f *testing.F) {
	for _, s := range []string{distributionPush, distributionBlobsOnly, distributionEvents(maxEvents), distributionEvents(maxEvents + 1),
		`{"events":null}`, `{"events":[{"action":"push","target":{"repository":"a","tag":"b"}},{"action":"push","target":{"repository":"a","tag":"b"}}]}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		pushes, err := parseDistribution([]byte(body))
		checkPushes(t, "distribution", body, pushes, err)
		var env struct {
			Events []json.RawMessage `json:"events"`
		}
		decoded := json.NewDecoder(strings.NewReader(body)).Decode(&env) == nil
		if decoded && errors.Is(err, errTooMany) != (len(env.Events) > maxEvents) {
			t.Fatalf("%d events: %v", len(env.Events), err)
		}
		if len(pushes) > maxEvents {
			t.Fatalf("%d pushes from one payload", len(pushes))
		}
		seen := map[deploy.Push]bool{}
		for _, p := range pushes {
			if seen[p] {
				t.Fatalf("push %v twice", p)
			}
			seen[p] = true
		}
	})
}
