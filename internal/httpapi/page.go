package httpapi

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

//go:embed page.html
var pageHTML string

// pageTemplate is parsed once per server: a func, not a package variable,
// keeps the package free of state.
func pageTemplate() *template.Template {
	return template.Must(template.New("page").Funcs(template.FuncMap{
		"digest": func(d string) string {
			if d == "" {
				return "–"
			}
			return strings.TrimPrefix(deploy.Short(d), "sha256:")
		},
		"dur": func(d time.Duration) string {
			if d == 0 {
				return ""
			}
			return d.Round(time.Second).String()
		},
		"clock": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
	}).Parse(pageHTML))
}

type pageData struct {
	Version   string
	Ready     bool
	ReadyText string
	Checked   string
	Services  []Service
	Pending   []pendingApproval
	Decided   []deploy.Approval
	Deploys   []Deploy
	// Histories are each service's last deploys, from its durable history.
	Histories []serviceHistory
	Message   string
	// CanDecide is false for the read-only token: no buttons.
	CanDecide bool
	// Rendered is when the server rendered the page: the script's
	// staleness line counts from the last page it got.
	Rendered time.Time
	Script   template.JS
}

// pendingApproval is an approval waiting for a person, with what the
// updater saw of its digest elsewhere: the same tag in one stack is often
// on several services, and a digest that one of them just rolled back is
// something to know before pressing Approve on another.
type pendingApproval struct {
	deploy.Approval
	Warning string
}

// approvalWarning says whether the digest a waits for failed or was
// rolled back on another service of its stack since the updater started,
// the newest such deploy first: which service, when it ended, and the
// first line of its reason. "" when none did.
func approvalWarning(a deploy.Approval, deploys []Deploy) string {
	if a.Stack == "" {
		return ""
	}
	for _, d := range deploys { // newest first
		if d.ServiceID == a.ServiceID || d.Stack != a.Stack || d.To != a.To {
			continue
		}
		var what string
		switch d.State {
		case string(deploy.OutcomeRolledBack):
			what = "was rolled back on"
		case string(deploy.OutcomeFailed):
			what = "failed on"
		default:
			continue
		}
		w := fmt.Sprintf("This digest %s %s, another service of stack %s, at %s", what, d.ServiceName, d.Stack,
			d.Started.Add(d.Duration).UTC().Format("2006-01-02 15:04:05Z"))
		line, _, _ := strings.Cut(strings.TrimSpace(d.Reason), "\n")
		// A bound on a reason of any length: Swarm's can name every task.
		if r := []rune(line); len(r) > 300 {
			return w + ": " + string(r[:300]) + "…"
		} else if line != "" {
			w += ": " + strings.TrimSuffix(line, ".")
		}
		return w + "."
	}
	return ""
}

// page wraps a status page handler. A browser is asked for the API token
// with HTTP basic auth (any user name, the token as password), so the page
// needs no cookies, no login form and no JavaScript; its buttons post
// forms under the same credentials, and the cross-origin protection on
// every route keeps other sites from posting them.
func (s *Server) page(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Nobody may frame the page: a framed approve button could be
		// clicked by someone who thinks they click something else.
		// The one script that may run is the page's own refresh (by its
		// hash), and it may only fetch the page again.
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; script-src "+pageScriptSource()+
			"; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("Cache-Control", "no-store")
		if s.cfg.APIToken == "" {
			http.Error(w, "The status page is off: set UPDATER_API_TOKEN to turn it on.", http.StatusForbidden)
			return
		}
		switch s.authenticate(r) {
		case authThrottled:
			w.Header().Set("Retry-After", throttleRetryAfter)
			http.Error(w, "Too many failed logins from this address: wait a minute.", http.StatusTooManyRequests)
			return
		case authNone:
			w.Header().Set("WWW-Authenticate", `Basic realm="updater: the API token is the password", charset="UTF-8"`)
			http.Error(w, "The API token is needed: give it as the password (any user name).", http.StatusUnauthorized)
			return
		case authRead:
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				s.countRefused(r, "read_only")
				http.Error(w, "The read-only token decides nothing: use UPDATER_API_TOKEN.", http.StatusForbidden)
				return
			}
		}
		if r.ContentLength > maxAPIBody {
			http.Error(w, "The request is too large.", http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxAPIBody)
		h(w, r)
	})
}

// statusPageLimit bounds the tables: a phone shows the recent, the API the rest.
const statusPageLimit = 20

func (s *Server) statusPage(w http.ResponseWriter, r *http.Request) {
	ready, why, details := s.ready()
	if details != "" {
		why += ": " + details // the page is for those who hold a token
	}
	services := s.services()
	message := outcomeMessage(r.URL.Query())
	if message == "" {
		message = rollbackMessage(r.URL.Query(), services)
	}
	d := pageData{Version: s.cfg.Version, Ready: ready, ReadyText: why, Services: services,
		Checked: ago(s.cfg.Now(), s.cfg.Pipeline.Status().Checked), Message: message,
		CanDecide: sameSecret(token(r), s.cfg.APIToken), Rendered: s.cfg.Now(), Script: pageScriptJS,
		Histories: s.histories(r.Context(), services)}
	all := s.recent()
	for _, a := range s.cfg.Pipeline.Approvals() {
		switch {
		case a.State == deploy.ApprovalPending:
			d.Pending = append(d.Pending, pendingApproval{Approval: a, Warning: approvalWarning(a, all)})
		case len(d.Decided) < statusPageLimit:
			d.Decided = append(d.Decided, a)
		}
	}
	d.Deploys = all
	if len(d.Deploys) > statusPageLimit {
		d.Deploys = d.Deploys[:statusPageLimit]
	}
	var buf bytes.Buffer
	if err := s.tmpl.Execute(&buf, d); err != nil {
		s.cfg.Log.Error("render the status page", "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = buf.WriteTo(w)
}

// decideForm is an approve or reject button: it decides, then sends the
// browser back to the page (a reload then does not post again). The page
// says what happened from the outcome and the ID alone, so a crafted link
// can't make it show words of someone else's choosing.
func (s *Server) decideForm(approve bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		_, err := s.decision(r, approve)
		outcome := "rejected"
		switch {
		case err != nil:
			outcome = "refused"
			s.cfg.Log.Info("decision from the status page refused", "deploy_id", id, "err", err)
		case approve:
			outcome = "approved"
		}
		http.Redirect(w, r, "/?"+url.Values{"deploy": {id}, "outcome": {outcome}}.Encode(), http.StatusSeeOther)
	}
}

// isID says whether s looks like a deploy ID (hex); nothing else is echoed.
func isID(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// outcomeMessage is the line the page shows after a button.
func outcomeMessage(q url.Values) string {
	id := q.Get("deploy")
	if !isID(id) {
		return ""
	}
	switch q.Get("outcome") {
	case "approved":
		return fmt.Sprintf("Approved deploy %s: it deploys now.", id)
	case "rejected":
		return fmt.Sprintf("Rejected deploy %s: its digest is not deployed until the tag moves.", id)
	case "refused":
		return fmt.Sprintf("Deploy %s was not decided: it is no longer pending (decided, superseded or expired) or unknown.", id)
	}
	return ""
}
