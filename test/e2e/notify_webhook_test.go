//go:build e2e

package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/updater-dev/updater/internal/notify/webhook"
)

// teamEndpoint is, on 127.0.0.1, a team's own webhook receiver that
// takes only posts signed with its secret, and an ntfy server's topic:
// what UPDATER_NOTIFY_WEBHOOK_URL and UPDATER_NOTIFY_URLS reach.
type teamEndpoint struct {
	srv *httptest.Server

	mu       sync.Mutex
	posts    []webhook.Body
	unsigned int
	ntfy     []string // titles
}

const teamSecret = "e2e-notify-webhook-s3cret-0123456789"

func newTeamEndpoint(t *testing.T) *teamEndpoint {
	e := &teamEndpoint{}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		defer e.mu.Unlock()
		switch r.URL.Path {
		case "/hook":
			var b webhook.Body
			if !webhook.Verify(teamSecret, body, r.Header.Get(webhook.HeaderSignature)) || json.Unmarshal(body, &b) != nil {
				e.unsigned++
				http.Error(w, "bad signature", http.StatusUnauthorized)
				return
			}
			e.posts = append(e.posts, b)
		case "/deploys":
			e.ntfy = append(e.ntfy, r.Header.Get("Title"))
			io.WriteString(w, `{"id":"1","event":"message","topic":"deploys"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *teamEndpoint) env() []string {
	return []string{
		"UPDATER_NOTIFY_WEBHOOK_URL=" + e.srv.URL + "/hook",
		"UPDATER_NOTIFY_WEBHOOK_SECRET=" + teamSecret,
		"UPDATER_NOTIFY_URLS=ntfy://" + strings.TrimPrefix(e.srv.URL, "http://") + "/deploys?scheme=http",
	}
}

// kinds are the kinds of the signed posts about deploy id, in order, and
// the last one's outcome.
func (e *teamEndpoint) kinds(id string) (kinds []string, outcome, to string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, b := range e.posts {
		if b.Deploy != nil && b.Deploy.ID == id {
			kinds, outcome, to = append(kinds, b.Kind), b.Outcome, b.Deploy.ToDigest
		}
	}
	return kinds, outcome, to
}

func (e *teamEndpoint) titles() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.ntfy...)
}

// refused counts the posts whose signature did not check.
func (e *teamEndpoint) refused() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.unsigned
}
