package notify

import (
	"context"
	"strings"

	"github.com/updater-dev/updater/internal/deploy"
)

// HookLogs is what a notifier that leaves the host (Slack, Rollbar) may
// say of a hook's output. A job prints what it likes, a connection string
// with its password included, and the people who read a channel are not
// those who may read the updater's log, which keeps every tail. So tails
// (and their last line, which the pipeline puts in a failure's reason) go
// out only when the operator asks for them, and whatever goes out has the
// updater's own secrets hidden: a hook can reach them no more than any job
// can, but one redactor that knows all of them costs nothing. The env
// values a job was given are hidden where they are known, in the tail the
// swarm adapter returns.
type HookLogs struct {
	Notifier Notifier
	// Report sends tails (UPDATER_REPORT_HOOK_LOGS=true); false drops them.
	Report bool
	// Redactor hides the updater's secrets: every token and URL it holds.
	Redactor Redactor
}

var _ Notifier = HookLogs{}

// Notify passes e on without the hook's output unless Report is set.
func (h HookLogs) Notify(ctx context.Context, e deploy.Event) (bool, error) {
	return h.Notifier.Notify(ctx, h.event(e))
}

func (h HookLogs) event(e deploy.Event) deploy.Event {
	if e.Step != nil && len(e.Step.LogTail) > 0 {
		s := *e.Step // the pipeline's, shared with the other notifiers
		if h.Report {
			s.LogTail = make([]string, len(e.Step.LogTail))
			for i, l := range e.Step.LogTail {
				s.LogTail[i] = h.Redactor.String(l)
			}
		} else {
			e.Reason = strings.TrimSuffix(e.Reason, ": "+s.LogTail[len(s.LogTail)-1])
			s.LogTail = nil
		}
		e.Step = &s
	}
	e.Reason = h.Redactor.String(e.Reason)
	return e
}
