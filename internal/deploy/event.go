package deploy

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

// Release is one deploy: a service moving from one digest to another.
type Release struct {
	ID          string    `json:"id"`
	ServiceID   string    `json:"service_id"`
	ServiceName string    `json:"service"`
	Stack       string    `json:"stack,omitempty"`
	Ref         string    `json:"ref"`
	From        string    `json:"from_digest,omitempty"`
	To          string    `json:"to_digest"`
	Started     time.Time `json:"started"`
	// Rollback is true for a rollback a person asked for
	// (RollbackService): To is the digest returned to, its hooks are not
	// run, and From is quarantined once it lands. By names who asked.
	Rollback bool   `json:"rollback,omitempty"`
	By       string `json:"by,omitempty"`
	// Labels are the new image's labels (org.opencontainers.image.*), for
	// reports that link a deploy to its commit; empty when unknown.
	Labels map[string]string `json:"-"`
	// Recorded is when Swarm wrote the deploy's record, on the managers'
	// clock (the one UpdateStatus uses); zero until the record is read back.
	Recorded time.Time `json:"-"`
	// Stage is how far the deploy got, as its record says: read back with
	// it, noted by Journal.Reached.
	Stage Stage `json:"-"`
	// StageAt is when the record last noted its stage, on the managers'
	// clock; zero when unknown.
	StageAt time.Time `json:"-"`
}

// Stage is how far a deploy in flight got, kept in its record so that a
// restarted updater carries it on from there. Past the spec write, Swarm's
// own spec says more than a record could.
type Stage string

const (
	StageRecorded Stage = ""         // recorded and announced; nothing else done
	StagePrepared Stage = "prepared" // its hooks (backup, migration) ran: not again
	// StageBaking: the rollout was judged healthy (and probed) and the
	// bake began at Release.StageAt: a resumed run bakes what is left.
	StageBaking Stage = "baking"
)

// Kind is what happened to a deploy.
type Kind string

const (
	Started   Kind = "started"
	Progress  Kind = "progress" // a step moved: see Event.Step
	Succeeded Kind = "succeeded"
	Failed    Kind = "failed"
	// Outage and Recovered are about the updater's view of Docker or a
	// registry, not a deploy: reported once when failing starts and once
	// when it ends. Release.Ref names the image for a registry outage.
	Outage    Kind = "outage"
	Recovered Kind = "recovered"
	// Pending is a deploy held for a person's approval (the service is
	// labelled updater.approve=manual): reported once, when the digest is
	// first seen. Release.ID is the approval's ID, Reason says until when
	// it waits.
	Pending Kind = "pending"
)

// Phase is the step of a deploy an event is about. A failure names the
// phase it failed in, so a reader knows what was and was not done.
type Phase string

const (
	PhasePrepare  Phase = "prepare"  // before the service was touched
	PhaseBackup   Phase = "backup"   // the backup hook
	PhaseMigrate  Phase = "migrate"  // the migration hook, in the new image
	PhaseUpdate   Phase = "update"   // the spec write itself
	PhaseRollout  Phase = "rollout"  // Swarm replacing tasks
	PhaseProbe    Phase = "probe"    // the new tasks probed (updater.probe.*)
	PhaseBake     Phase = "bake"     // watched for updater.bake after the rollout
	PhaseRollback Phase = "rollback" // returning to the previous version
)

// Event is one report about a deploy.
type Event struct {
	Kind    Kind
	Release Release
	Phase   Phase
	// Reason says why a deploy failed, in words for people.
	Reason string
	// RolledBack is true when a failed deploy is back on its previous
	// version; false on a failure means the service was never changed,
	// unless Phase is PhaseRollback (the rollback itself did not finish).
	RolledBack bool
	// Resumed is true when the updater found this deploy in flight after
	// a restart and followed it to its end.
	Resumed  bool
	Duration time.Duration
	// Baked is how long a succeeded deploy was baked (updater.bake)
	// before it was called a success; 0 without a bake.
	Baked time.Duration
	// Step is set on Progress events.
	Step *Step
	// Part is "docker" or "registry" on Outage and Recovered events.
	Part string

	// waiting marks a deploy left in flight because Docker went away
	// mid-write: it is not over, and nothing may deploy that service
	// until it is resumed.
	waiting bool
}

// stopping is the unreported outcome of a deploy stopped where it is (the
// updater stopping, or the lease lost): its record stays, and whoever
// holds the lease next resumes it and reports it once.
func stopping(rel Release, phase Phase, resumed bool) Event {
	return Event{Kind: Failed, Release: rel, Phase: phase, Resumed: resumed,
		Reason: "updater stopped; the deploy resumes on restart"}
}

// StepState is how one hook of a deploy stands.
type StepState string

const (
	StepProgress  StepState = "" // a rollout's count of healthy tasks, not a hook
	StepStarted   StepState = "started"
	StepSucceeded StepState = "succeeded"
	StepFailed    StepState = "failed"
	StepSkipped   StepState = "skipped" // a migration already run, a scheduled backup beside a deploy
)

// Outcome is how a deploy ended, in the words every report uses.
type Outcome string

const (
	OutcomeSucceeded  Outcome = "succeeded"
	OutcomeRolledBack Outcome = "rolled_back" // failed, and back on its previous version
	OutcomeFailed     Outcome = "failed"      // failed, and not (or not known to be) rolled back
)

// Outcome is how the deploy e reports ended; "" when e is not an
// outcome (started, progress, an outage…).
func (e Event) Outcome() Outcome {
	switch {
	case e.Kind == Succeeded:
		return OutcomeSucceeded
	case e.Kind == Failed && e.RolledBack:
		return OutcomeRolledBack
	case e.Kind == Failed:
		return OutcomeFailed
	}
	return ""
}

// Step is how one step of a deploy stands.
type Step struct {
	Phase Phase
	// State is how a hook stands; "" (StepProgress) for rollout progress.
	State StepState
	// Done and Total count, during a rollout, the desired tasks that run
	// the new digest and are healthy.
	Done, Total int
	// Until is when a bake under way ends (PhaseBake).
	Until time.Time
	// Detail says, in words, how a canary's evaluation went (PhaseCanary):
	// the value, the bound, the time left.
	Detail string
	// ExitCode and LogTail tell how a hook job ended.
	ExitCode int
	LogTail  []string
}

// CanaryLine is how a canary's analysis stands (a PhaseCanary progress
// step), in the words every report shows, Slack's living message and the
// status page alike: "canary 1 of 4 on v5 (sha256:0123456789ab) ·
// 0.002 ≤ 0.05 · 40s left". "" for any other step.
func (s Step) CanaryLine(rel Release) string {
	if s.Phase != PhaseCanary {
		return ""
	}
	on := Short(rel.To)
	if ref := rel.Ref; Tagged(ref) {
		on = ref[strings.LastIndex(ref, ":")+1:] + " (" + on + ")"
	}
	line := fmt.Sprintf("canary %d of %d on %s", s.Done, s.Total, on)
	if s.Detail != "" {
		line += " · " + s.Detail
	}
	return line
}

// newID names a deploy for logs and reports; uniqueness, not secrecy, is
// what matters.
func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
