package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// Histories reads the services' durable histories (kept in Swarm, so a
// restarted updater still has them).
type Histories interface {
	// ServiceHistory is the deploys of the watched service name (or ID),
	// newest first; deploy.ErrNotFound when it is not watched.
	ServiceHistory(ctx context.Context, name string) ([]deploy.HistoryEntry, error)
	// History is the same for a service the last cycle watched, by its
	// ID, without asking Docker which services are watched: the page
	// reads every service's on each render, and one List per service per
	// render would cost more than the page is worth.
	History(ctx context.Context, serviceID string) ([]deploy.HistoryEntry, error)
}

// Rollbacks starts a person's rollback of a service.
type Rollbacks interface {
	// StartRollback checks req and starts the rollback, and returns
	// (deploy.Pipeline.StartRollback): the outcome lands in the
	// service's history. A refusal changed nothing and is
	// deploy.ErrNotFound, deploy.ErrNoRollbackTarget, deploy.ErrInvalid,
	// deploy.ErrBusy, deploy.ErrStandby, ErrDigestUnknown or another
	// error.
	StartRollback(ctx context.Context, req deploy.RollbackRequest) (deploy.Rolling, error)
}

// ErrDigestUnknown is a rollback to a digest the registry no longer has
// (deleted, garbage-collected, or never of that repository). Who wires
// Rollbacks wraps the registry's own not-found in it, so this package
// needs no registry.
var ErrDigestUnknown = errors.New("the registry does not have the digest")

// digestForm is what a digest must look like, in the words of a refusal.
const digestForm = `a digest is "sha256:" and 64 lowercase hex digits, as the service's history shows them (GET /api/v1/services/{name}/history, updater history SERVICE)`

// HistoryAnswer is the answer of GET /api/v1/services/{name}/history.
type HistoryAnswer struct {
	Service string                `json:"service"`
	History []deploy.HistoryEntry `json:"history"` // newest first, never null
}

func (s *Server) serviceHistory(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.cfg.Histories == nil {
		writeError(w, http.StatusNotImplemented, "this updater keeps no history")
		return
	}
	h, err := s.cfg.Histories.ServiceHistory(r.Context(), name)
	switch {
	case errors.Is(err, deploy.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
		return
	case err != nil:
		s.cfg.Log.Error("history requested through the API", "service", name, "err", err)
		writeError(w, http.StatusInternalServerError, "the history of "+name+" could not be read: the updater's log says why")
		return
	}
	if h == nil {
		h = []deploy.HistoryEntry{}
	}
	writeJSON(w, http.StatusOK, HistoryAnswer{Service: name, History: h})
}

// RollbackAnswer is the answer of POST /api/v1/services/{name}/rollback:
// the rollback began; its outcome lands in the service's history as an
// entry with rollback true and this to_digest.
type RollbackAnswer struct {
	Service string `json:"service"`
	// ID is the rollback's deploy ID, when it was recorded already.
	ID     string `json:"id,omitempty"`
	Ref    string `json:"ref,omitempty"`
	From   string `json:"from_digest,omitempty"`
	To     string `json:"to_digest"`
	Status string `json:"status"`
}

// rollbackBody is the optional body of a rollback: the digest to return
// to; none means the last that succeeded before the running one.
type rollbackBody struct {
	To string `json:"to"`
}

func (s *Server) rollback(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var body rollbackBody
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, `the body is not {"to": "sha256:…"} (or empty, for the last good digest): `+err.Error())
		return
	}
	if body.To != "" && !deploy.IsDigest(body.To) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%q is not a digest: %s", body.To, digestForm))
		return
	}
	rl, err := s.startRollback(r.Context(), deploy.RollbackRequest{Service: name, To: body.To, By: "api"})
	if err != nil {
		ref := refusal(err, name, body.To)
		if ref.status == http.StatusInternalServerError {
			s.cfg.Log.Error("rollback requested through the API refused", "service", name, "to_digest", body.To, "err", err)
		}
		if ref.status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "60")
		}
		writeError(w, ref.status, ref.msg)
		return
	}
	rel := rl.Release
	writeJSON(w, http.StatusAccepted, RollbackAnswer{Service: rel.ServiceName, ID: rel.ID, Ref: rel.Ref, From: rel.From, To: rel.To,
		Status: fmt.Sprintf("the rollback of %s to %s began: its outcome shows in its history", rel.ServiceName, deploy.Short(rel.To))})
}

// startRollback asks for the rollback and logs it once it began.
func (s *Server) startRollback(ctx context.Context, req deploy.RollbackRequest) (deploy.Rolling, error) {
	if s.cfg.Rollbacks == nil {
		return deploy.Rolling{}, errors.New("this updater takes no rollbacks")
	}
	rl, err := s.cfg.Rollbacks.StartRollback(ctx, req)
	if err != nil {
		return rl, err
	}
	if rl.Release.ServiceName == "" {
		rl.Release.ServiceName = req.Service
	}
	s.cfg.Log.Info("rollback requested", "service", rl.Release.ServiceName, "from_digest", rl.Release.From, "to_digest", rl.Release.To,
		"deploy_id", rl.Release.ID, "by", req.By)
	return rl, nil
}

// rollbackRefusal is how a refused rollback is answered: the status, the
// API's message (naming only what the caller sent and fixed words: an
// unexpected error's details go to the log), and the page's outcome word.
type rollbackRefusal struct {
	status  int
	msg     string
	outcome string
}

func refusal(err error, name, to string) rollbackRefusal {
	target := "the digest to roll back to"
	if to != "" {
		target = to
	}
	switch {
	case errors.Is(err, deploy.ErrNotFound):
		return rollbackRefusal{http.StatusNotFound, err.Error(), "unwatched"}
	case errors.Is(err, deploy.ErrNoRollbackTarget):
		return rollbackRefusal{http.StatusConflict, fmt.Sprintf("%s has no earlier successful deploy in its history to roll back to: "+
			`name one with --to (updater rollback %s --to sha256:…, or the body {"to": "sha256:…"}); its history: updater history %s`, name, name, name), "no-target"}
	case errors.Is(err, deploy.ErrBusy):
		return rollbackRefusal{http.StatusConflict, fmt.Sprintf("a deploy of %s is running: nothing was changed; roll back once it has landed (GET /api/v1/deploys)", name), "busy"}
	case errors.Is(err, deploy.ErrInvalid):
		// Its words say what would be right (the digest it runs already,
		// a service pinned without a tag): the pipeline's, for a person.
		return rollbackRefusal{http.StatusConflict, err.Error(), "invalid"}
	case errors.Is(err, ErrDigestUnknown):
		// 422, not 409: nothing about the service's state is in the way,
		// the request names a digest that can't be deployed at all.
		return rollbackRefusal{http.StatusUnprocessableEntity, fmt.Sprintf("the registry does not have %s of %s (deleted or garbage-collected?): "+
			"nothing was changed; name another digest with --to", target, name), "digest-unknown"}
	case errors.Is(err, deploy.ErrStandby):
		return rollbackRefusal{http.StatusServiceUnavailable, "this updater is standing by (another one holds the lease): nothing was changed; ask the updater that holds it", "standby"}
	}
	return rollbackRefusal{http.StatusInternalServerError, fmt.Sprintf("the rollback of %s could not be started: nothing was changed; the updater's log says why", name), "failed"}
}

// rollbackForm is the page's Roll back button (and a history entry's
// "Roll back to this", with the digest in the form's to): it starts the
// rollback, then sends the browser back to the page with what happened.
func (s *Server) rollbackForm(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	to := r.PostFormValue("to")
	q := url.Values{"rollback": {name}}
	switch {
	case to != "" && !deploy.IsDigest(to):
		q.Set("outcome", "bad-digest")
	default:
		rl, err := s.startRollback(r.Context(), deploy.RollbackRequest{Service: name, To: to, By: "page"})
		if err != nil {
			q.Set("outcome", refusal(err, name, to).outcome)
			s.cfg.Log.Info("rollback from the status page refused", "service", name, "to_digest", to, "err", err)
			break
		}
		q.Set("outcome", "started")
		to = rl.Release.To
	}
	if deploy.IsDigest(to) {
		q.Set("to", to)
	}
	http.Redirect(w, r, "/?"+q.Encode(), http.StatusSeeOther)
}

// rollbackMessage is the line the page shows after a Roll back button. It
// names a service only if it is one the page shows and a digest only if
// it has a digest's shape: a crafted link can't put words of its
// author's choosing on the page.
func rollbackMessage(q url.Values, services []Service) string {
	name, outcome, to := q.Get("rollback"), q.Get("outcome"), q.Get("to")
	known := false
	for _, s := range services {
		known = known || s.Name == name
	}
	if !known {
		if name != "" && outcome == "unwatched" {
			return "The service was not rolled back: it is not watched (any more)."
		}
		return ""
	}
	digest := "the last digest that succeeded before the running one"
	if deploy.IsDigest(to) {
		digest = deploy.Short(to)
	}
	switch outcome {
	case "started":
		return fmt.Sprintf("Rolling back %s to %s: it deploys now, without its hooks; its history below shows the outcome.", name, digest)
	case "no-target":
		return fmt.Sprintf("%s was not rolled back: its history has no earlier successful deploy. Pick a digest in its history (Roll back to this).", name)
	case "busy":
		return fmt.Sprintf("%s was not rolled back: a deploy of it is running. Try again once it has landed.", name)
	case "invalid":
		return fmt.Sprintf("%s was not rolled back: not as asked (it runs that digest already, say); the updater's log says why. Nothing was changed.", name)
	case "digest-unknown":
		return fmt.Sprintf("%s was not rolled back: the registry does not have %s any more. Nothing was changed.", name, digest)
	case "standby":
		return fmt.Sprintf("%s was not rolled back: this updater is standing by; the one holding the lease takes rollbacks.", name)
	case "bad-digest":
		return fmt.Sprintf("%s was not rolled back: that is not a digest.", name)
	case "failed":
		return fmt.Sprintf("%s was not rolled back: the rollback could not be started (the updater's log says why). Nothing was changed.", name)
	}
	return ""
}

// A service's recent history, as the page shows it.
type serviceHistory struct {
	Name    string
	Running string // the digest it runs: no "Roll back to this" for it
	Entries []deploy.HistoryEntry
	Err     string
}

// The page shows each service's last few deploys (the API has all
// HistoryMax), for at most statusPageLimit services, read a few at a time
// within historyBudget: the page's own refresh gives up after 4 s.
const (
	pageHistoryEntries = 5
	historyReaders     = 4
	historyBudget      = 2 * time.Second
)

// histories reads the services' histories for the page.
func (s *Server) histories(ctx context.Context, services []Service) []serviceHistory {
	if s.cfg.Histories == nil || len(services) == 0 {
		return nil
	}
	services = services[:min(len(services), statusPageLimit)]
	ctx, cancel := context.WithTimeout(ctx, historyBudget)
	defer cancel()
	out := make([]serviceHistory, len(services))
	sem := make(chan struct{}, historyReaders)
	var wg sync.WaitGroup
	for i, sv := range services {
		out[i] = serviceHistory{Name: sv.Name, Running: sv.Digest}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				out[i].Err = "not read: the updater did not answer in time"
				return
			}
			h, err := s.cfg.Histories.History(ctx, sv.ID)
			if err != nil {
				s.cfg.Log.Warn("read a history for the status page", "service", sv.Name, "err", err)
				out[i].Err = "not read: the updater's log says why"
				return
			}
			out[i].Entries = h[:min(len(h), pageHistoryEntries)]
		}()
	}
	wg.Wait()
	return out
}
