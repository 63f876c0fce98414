package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// maxAPIBody bounds what the API reads: a rollback's digest is the largest
// body an endpoint takes.
const maxAPIBody = 64 << 10

// api wraps an API handler: the bearer token (or basic auth password) must
// match UPDATER_API_TOKEN, or UPDATER_API_READ_TOKEN for a GET, compared in
// constant time, from an address not throttled for failing too often.
func (s *Server) api(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.APIToken == "" {
			writeError(w, http.StatusForbidden, "the API is off: set UPDATER_API_TOKEN to turn it on")
			return
		}
		switch s.authenticate(r) {
		case authThrottled:
			w.Header().Set("Retry-After", throttleRetryAfter)
			writeError(w, http.StatusTooManyRequests, "too many failed authentications from this address: wait a minute")
			return
		case authNone:
			w.Header().Set("WWW-Authenticate", `Bearer realm="updater"`)
			writeError(w, http.StatusUnauthorized, "a valid bearer token is required")
			return
		case authRead:
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				s.countRefused(r, "read_only")
				writeError(w, http.StatusForbidden, "the read-only token changes nothing: use UPDATER_API_TOKEN")
				return
			}
		}
		if r.ContentLength > maxAPIBody {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes: no endpoint takes one that large", maxAPIBody))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxAPIBody)
		h(w, r)
	})
}

// Service is one watched service as the API shows it.
type Service struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	Stack  string `json:"stack,omitempty"`
	Ref    string `json:"ref"`
	Digest string `json:"running_digest,omitempty"`
	// Available is the digest the tag pointed to at the last check.
	Available string        `json:"registry_digest,omitempty"`
	State     deploy.Action `json:"state"`
	Reason    string        `json:"reason,omitempty"`
	// EligibleAt is when a digest held by a release policy (state held)
	// may deploy; absent when not held or not known.
	EligibleAt *time.Time `json:"eligible_at,omitempty"`
	// Approval is "manual" for a service whose deploys wait for a person.
	Approval   string  `json:"approval"`
	LastDeploy *Deploy `json:"last_deploy,omitempty"`
}

func (s *Server) services() []Service {
	st := s.cfg.Pipeline.Status()
	out := make([]Service, 0, len(st.Services))
	for _, pl := range st.Services {
		t := pl.Target
		v := Service{Name: t.Name, ID: t.ID, Stack: t.Stack, Ref: t.Ref(), Digest: t.Digest(),
			Available: pl.Want, State: pl.Action, Reason: pl.Reason, Approval: "auto"}
		if !pl.EligibleAt.IsZero() {
			at := pl.EligibleAt.UTC()
			v.EligibleAt = &at
		}
		if t.Hooks.Approve {
			v.Approval = "manual"
		}
		if s.cfg.History != nil {
			if d, ok := s.cfg.History.Last(t.ID); ok {
				v.LastDeploy = &d
			}
		}
		out = append(out, v)
	}
	return out
}

func (s *Server) listServices(w http.ResponseWriter, _ *http.Request) {
	st := s.cfg.Pipeline.Status()
	writeJSON(w, http.StatusOK, map[string]any{"services": s.services(), "checked": st.Checked})
}

func (s *Server) recent() []Deploy {
	if s.cfg.History == nil {
		return []Deploy{}
	}
	return s.cfg.History.Recent()
}

func (s *Server) listDeploys(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"approvals": s.cfg.Pipeline.Approvals(), "deploys": s.recent()})
}

// check asks for a full cycle. It runs in the background, after the cycle
// or deploy running now, if any: the answer can't wait for deploys.
func (s *Server) check(w http.ResponseWriter, _ *http.Request) {
	s.cfg.Requests.Check()
	s.cfg.Log.Info("check requested through the API")
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "a check of every watched service is queued"})
}

// deployService asks for a service's deploy, like `updater deploy`: no
// approval needed, a digest that failed before tried again. The outcome
// shows in /api/v1/deploys.
func (s *Server) deployService(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := s.cfg.Requests.Deploy(r.Context(), name); err != nil {
		s.fail(w, err)
		return
	}
	s.cfg.Log.Info("deploy requested through the API", "service", name)
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "the deploy of " + name + " is queued"})
}

func (s *Server) decide(approve bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a, err := s.decision(r, approve)
		if err != nil {
			s.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, a)
	}
}

func (s *Server) decision(r *http.Request, approve bool) (deploy.Approval, error) {
	if approve {
		return s.cfg.Decisions.Approve(r.Context(), r.PathValue("id"))
	}
	return s.cfg.Decisions.Reject(r.Context(), r.PathValue("id"))
}

// fail answers an error with the status it calls for.
func (s *Server) fail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, deploy.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, deploy.ErrDecided):
		writeError(w, http.StatusConflict, err.Error())
	default:
		s.cfg.Log.Error("api", "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away: nothing to tell it
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// ago says how long ago t was, for people.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String() + " ago"
	case d < time.Hour:
		return d.Round(time.Minute).String() + " ago"
	}
	return d.Round(time.Hour).String() + " ago"
}
