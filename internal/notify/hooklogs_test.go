package notify

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/updater-dev/updater/internal/deploy"
)

// sent records the events a notifier was given.
type sent struct{ events []deploy.Event }

func (s *sent) Notify(_ context.Context, e deploy.Event) (bool, error) {
	s.events = append(s.events, e)
	return false, nil
}

func failedHook(tail ...string) deploy.Event {
	return deploy.Event{Kind: deploy.Failed, Phase: deploy.PhaseBackup,
		Reason: "backup exited with code 1: " + tail[len(tail)-1],
		Step:   &deploy.Step{Phase: deploy.PhaseBackup, State: deploy.StepFailed, ExitCode: 1, LogTail: tail}}
}

func TestHookLogs(t *testing.T) {
	const token = "xoxb-0123456789-secret"
	tail := []string{"pg_dump: connecting", "pg_dump: error: token " + token + " refused"}
	for _, tt := range []struct {
		name       string
		report     bool
		wantTail   []string
		wantReason string
	}{
		{"kept in the log only", false, nil, "backup exited with code 1"},
		{"reported, redacted", true, []string{"pg_dump: connecting", "pg_dump: error: token <redacted> refused"},
			"backup exited with code 1: pg_dump: error: token <redacted> refused"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var s sent
			e := failedHook(tail...)
			orig := *e.Step
			if _, err := (HookLogs{Notifier: &s, Report: tt.report, Redactor: NewRedactor(token)}).Notify(context.Background(), e); err != nil {
				t.Fatal(err)
			}
			got := s.events[0]
			if got.Reason != tt.wantReason || !reflect.DeepEqual(got.Step.LogTail, tt.wantTail) {
				t.Errorf("sent reason %q tail %q, want %q %q", got.Reason, got.Step.LogTail, tt.wantReason, tt.wantTail)
			}
			if got.Step.ExitCode != 1 || got.Step.State != deploy.StepFailed {
				t.Errorf("sent step %+v: the rest of the step must stay", got.Step)
			}
			if !reflect.DeepEqual(*e.Step, orig) {
				t.Errorf("the pipeline's step changed to %+v: other notifiers (the log) share it", *e.Step)
			}
		})
	}
	// A reason that is not about a tail loses nothing but secrets.
	var s sent
	e := deploy.Event{Kind: deploy.Failed, Reason: "update service web: " + token}
	_, _ = HookLogs{Notifier: &s, Redactor: NewRedactor(token)}.Notify(context.Background(), e)
	if got := s.events[0].Reason; got != "update service web: <redacted>" || strings.Contains(got, token) {
		t.Errorf("reason %q", got)
	}
}
