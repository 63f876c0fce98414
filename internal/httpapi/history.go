package httpapi

import (
	"fmt"
	"sync"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// Deploy is one deploy as the API and the page show it, built from the
// pipeline's events.
type Deploy struct {
	// The deploy's identity, as the pipeline reports it: id, service,
	// stack, ref, digests, started (its labels and record stay out).
	deploy.Release
	// State is running, succeeded, failed or rolled_back.
	State string `json:"state"`
	// Phase is the phase it is in, or ended in.
	Phase      deploy.Phase  `json:"phase,omitempty"`
	Duration   time.Duration `json:"duration_ns,omitempty"`
	Reason     string        `json:"reason,omitempty"`
	RolledBack bool          `json:"rolled_back,omitempty"`
	Resumed    bool          `json:"resumed,omitempty"`
	// Steps are the hook steps seen, in order: "backup succeeded".
	Steps []string `json:"steps,omitempty"`
	// Rollout counts the tasks on the new digest: "1/2".
	Rollout string `json:"rollout,omitempty"`
	// Canary is how its canary's analysis stood at the last evaluation
	// (deploy.Step.CanaryLine): "canary 1 of 4 on v5 (sha256:…) ·
	// 0.002 ≤ 0.05 · 40s left".
	Canary string `json:"canary,omitempty"`
}

// History keeps the last deploys in memory for the API and the page. It
// is a deploy.Reporter; a restarted updater starts it empty.
type History struct {
	max  int
	mu   sync.Mutex
	list []*Deploy // oldest first
}

var _ deploy.Reporter = (*History)(nil)

// NewHistory keeps the last max deploys.
func NewHistory(max int) *History { return &History{max: max} }

// Report records e. It never blocks on anything but its own lock.
func (h *History) Report(e deploy.Event) {
	switch e.Kind {
	case deploy.Started, deploy.Progress, deploy.Succeeded, deploy.Failed:
	default:
		return // approvals and outages are shown elsewhere
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.find(e.Release.ID)
	if d == nil {
		// A deploy resumed after a restart is first seen at its end.
		d = &Deploy{Release: e.Release, State: "running"}
		d.Labels = nil
		h.list = append(h.list, d)
		if n := len(h.list) - h.max; n > 0 {
			h.list = h.list[n:]
		}
	}
	d.Resumed = d.Resumed || e.Resumed
	if e.Phase != "" {
		d.Phase = e.Phase
	}
	switch e.Kind {
	case deploy.Progress:
		switch s := e.Step; {
		case s == nil:
		case s.Phase == deploy.PhaseCanary:
			// Progress too, but the canary's tasks are not the rollout's
			// count.
			d.Canary = s.CanaryLine(e.Release)
		case s.State == deploy.StepProgress:
			d.Rollout = fmt.Sprintf("%d/%d", s.Done, s.Total)
		default:
			d.Steps = append(d.Steps, fmt.Sprintf("%s %s", s.Phase, s.State))
		}
	case deploy.Succeeded, deploy.Failed:
		d.State, d.Duration, d.RolledBack = string(e.Outcome()), e.Duration, e.RolledBack
		if e.Kind == deploy.Failed {
			d.Reason = e.Reason
		}
	}
}

func (h *History) find(id string) *Deploy {
	for i := len(h.list) - 1; i >= 0; i-- {
		if h.list[i].ID == id {
			return h.list[i]
		}
	}
	return nil
}

// Recent returns the deploys kept, newest first.
func (h *History) Recent() []Deploy {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Deploy, 0, len(h.list))
	for i := len(h.list) - 1; i >= 0; i-- {
		d := *h.list[i]
		d.Steps = append([]string(nil), d.Steps...)
		out = append(out, d)
	}
	return out
}

// Last returns the newest deploy of a service.
func (h *History) Last(serviceID string) (Deploy, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.list) - 1; i >= 0; i-- {
		if d := h.list[i]; d.ServiceID == serviceID {
			c := *d
			c.Steps = append([]string(nil), d.Steps...)
			return c, true
		}
	}
	return Deploy{}, false
}
