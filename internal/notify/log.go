// Package notify tells people and systems about deploys.
package notify

import (
	"context"
	"log/slog"
	"strings"

	"github.com/updater-dev/updater/internal/deploy"
)

// Log writes each deploy event as one structured log line. It is the
// notifier that is always there, whatever else is configured.
type Log struct {
	Logger *slog.Logger
}

var _ deploy.Reporter = Log{}

// Report logs e with the fixed vocabulary of keys. Outages are logged by
// the pipeline where they are detected, so they are not repeated here.
func (l Log) Report(e deploy.Event) {
	if e.Kind == deploy.Outage || e.Kind == deploy.Recovered {
		return
	}
	r := e.Release
	attrs := []slog.Attr{
		slog.String("deploy_id", r.ID),
		slog.String("service", r.ServiceName),
		slog.String("image", r.Ref),
		slog.String("from_digest", r.From),
		slog.String("to_digest", r.To),
	}
	if r.Stack != "" {
		attrs = append(attrs, slog.String("stack", r.Stack))
	}
	if r.Rollback {
		// A person's rollback, not a new version: the same messages, so
		// that whatever follows deploys follows this too.
		attrs = append(attrs, slog.Bool("rollback", true), slog.String("by", r.By))
	}
	level := slog.LevelInfo
	if e.Kind == deploy.Progress {
		// A hook's start and end are worth reading; rollout counts are not.
		if s := e.Step; s == nil || s.State == deploy.StepProgress {
			level = slog.LevelDebug
		}
		if s := e.Step; s != nil && s.State != deploy.StepProgress {
			attrs = append(attrs, slog.String("state", string(s.State)))
			if !s.Until.IsZero() {
				attrs = append(attrs, slog.Time("until", s.Until))
			}
			if s.State == deploy.StepFailed {
				attrs = append(attrs, slog.Int("exit_code", s.ExitCode))
				if len(s.LogTail) > 0 {
					// Always here, whatever goes to Slack and Rollbar
					// (HookLogs): the log is the operator's.
					attrs = append(attrs, slog.String("log_tail", strings.Join(s.LogTail, "\n")))
				}
			}
		} else if s != nil {
			attrs = append(attrs, slog.Int("done", s.Done), slog.Int("total", s.Total))
			if line := s.CanaryLine(r); line != "" {
				// An evaluation every interval is as dull as a rollout's
				// counts (debug), but its value and bound are what a debug
				// log is read for.
				attrs = append(attrs, slog.String("canary", line))
			}
		}
	}
	if e.Kind != deploy.Started && e.Kind != deploy.Pending && e.Kind != deploy.Held {
		attrs = append(attrs, slog.String("step", string(e.Phase)), slog.Duration("duration", e.Duration))
		if e.Baked > 0 {
			attrs = append(attrs, slog.Duration("baked", e.Baked))
		}
	}
	if e.Kind == deploy.Pending || e.Kind == deploy.Held { // held for a person's approval, or by a policy: until when
		attrs = append(attrs, slog.String("reason", e.Reason))
	}
	if e.Kind == deploy.Failed {
		level = slog.LevelError
		attrs = append(attrs, slog.String("err", e.Reason), slog.Bool("rolled_back", e.RolledBack))
	}
	if e.Resumed {
		attrs = append(attrs, slog.Bool("resumed", true))
	}
	l.Logger.LogAttrs(context.Background(), level, "deploy "+string(e.Kind), attrs...)
}
