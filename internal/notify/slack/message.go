// Package slack reports deploys to Slack: with a bot token, one message
// per deploy that is edited in place as the deploy moves, with failure
// details in its thread; with an incoming webhook, which can neither edit
// nor thread, a message when a deploy starts and one when it ends.
package slack

import (
	"fmt"
	"slices"
	"strings"
	"time"

	slackgo "github.com/slack-go/slack"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify"
)

// Slack's limits: a section's text is at most 3,000 characters, a field
// 2,000; a message's top-level text is truncated past 40,000.
const (
	maxSection = 2900
	maxReply   = 3900
)

// step is one line item of a deploy's progress: "backup ✓", "rolling 1/3".
type step struct {
	key    string // the phase, or "healthy"/"rolled back" for the outcome
	detail string // "1/3" for a rollout
	state  stepState
}

type stepState int

const (
	running stepState = iota
	done
	failed
	skipped // a migration that ran for this digest before
)

// story is what a deploy's message shows, built up event by event.
// Applying the same event twice changes nothing, so a retried delivery
// renders the same message.
type story struct {
	hosts []string // UPDATER_SOURCE_HOSTS, for commit links
	rel   deploy.Release
	steps []step
	last  deploy.Event // the latest event applied
	// canary is the canary's last evaluation (a PhaseCanary progress
	// step), shown as its own line (deploy.Step.CanaryLine); nil before
	// the first one.
	canary *deploy.Step
}

func (s *story) upsert(key, detail string, st stepState) {
	for i := range s.steps {
		if s.steps[i].key == key {
			s.steps[i].detail, s.steps[i].state = detail, st
			return
		}
	}
	s.steps = append(s.steps, step{key: key, detail: detail, state: st})
}

// finishRunning marks every running step except key as done: a phase
// that another follows has finished.
func (s *story) finishRunning(except string) {
	for i := range s.steps {
		if s.steps[i].state == running && s.steps[i].key != except {
			s.steps[i].state = done
		}
	}
}

func (s *story) apply(e deploy.Event) {
	if e.Release.ID != "" {
		s.rel = e.Release
	}
	s.last = e
	switch e.Kind {
	case deploy.Progress:
		if e.Step == nil {
			return
		}
		key := string(e.Step.Phase)
		switch e.Step.State {
		case deploy.StepProgress, deploy.StepStarted:
			if e.Step.Phase == deploy.PhaseCanary {
				// An evaluation: its words are the canary's own line, not
				// a rollout's count or a bake's end.
				c := *e.Step
				c.LogTail = nil
				s.canary = &c
				s.finishRunning(key)
				s.upsert(key, "", running)
				return
			}
			// A rollout reports its count of healthy tasks; a hook, that it began.
			detail := ""
			if e.Step.Total > 0 {
				detail = fmt.Sprintf("%d/%d", e.Step.Done, e.Step.Total)
			}
			if !e.Step.Until.IsZero() {
				detail = "until " + e.Step.Until.UTC().Format("15:04 MST")
			}
			s.finishRunning(key)
			s.upsert(key, detail, running)
		case deploy.StepSucceeded:
			s.upsert(key, "", done)
		case deploy.StepSkipped:
			s.upsert(key, "", skipped)
		case deploy.StepFailed:
			s.upsert(key, fmt.Sprintf("exit %d", e.Step.ExitCode), failed)
		default:
			s.upsert(key, string(e.Step.State), running)
		}
	case deploy.Succeeded:
		s.finishRunning("")
		s.upsert("healthy", "", done)
	case deploy.Failed:
		key := string(e.Phase)
		if key == "" {
			key = "deploy"
		}
		if i := slices.IndexFunc(s.steps, func(st step) bool { return st.key == string(deploy.PhaseCanary) }); i >= 0 &&
			s.steps[i].state == running && !promoted(e.Phase) {
			// A canary still judged when the deploy failed elsewhere (its
			// rollback, Docker gone) did not pass: not a ✓.
			s.steps[i].state = failed
		}
		s.finishRunning(key)
		detail := ""
		if i := slices.IndexFunc(s.steps, func(st step) bool { return st.key == key }); i >= 0 {
			detail = s.steps[i].detail
		}
		s.upsert(key, detail, failed)
		if e.RolledBack {
			s.upsert("rolled back", "", done)
		}
	}
}

// promoted reports whether a deploy that failed in phase had its canary
// (if any) promoted: only a promoted canary's deploy rolls out, probes
// and bakes the rest.
func promoted(phase deploy.Phase) bool {
	switch phase {
	case deploy.PhaseRollout, deploy.PhaseProbe, deploy.PhaseBake:
		return true
	}
	return false
}

// canaryLine is the canary's line as the message shows it: while judged,
// its last evaluation; once promoted the same, marked ✓; failed, who and
// what was judged, marked ✗ (the reason is the message's Why). "" when
// no evaluation was reported.
func (s *story) canaryLine() string {
	if s.canary == nil {
		return ""
	}
	c, mark := *s.canary, ""
	if i := slices.IndexFunc(s.steps, func(st step) bool { return st.key == string(deploy.PhaseCanary) }); i >= 0 {
		switch s.steps[i].state {
		case done:
			mark = " ✓"
		case failed:
			c.Detail, mark = "", " ✗"
		}
	}
	return truncate(esc(c.CanaryLine(s.rel)), maxSection) + mark
}

// label names a step for people; phases this package does not know yet
// (new hooks) show under their own name.
func (st step) label() string {
	name := st.key
	switch st.key {
	case string(deploy.PhaseRollout):
		switch st.state {
		case running:
			name = "rolling"
		case done:
			name = "rolled out"
		}
	case string(deploy.PhaseBake):
		switch st.state {
		case running:
			name = "baking"
		case done:
			name, st.detail = "baked", ""
		}
	case "migrate":
		name = "migration"
	}
	if st.detail != "" {
		name += " " + st.detail
	}
	switch st.state {
	case done:
		return name + " ✓"
	case failed:
		return name + " ✗"
	case skipped:
		return name + " skipped (done before)"
	}
	return name + " …"
}

// headline is the outcome in a few words: the fallback text and the
// first line of the message both start with it.
func (s *story) headline() (emoji, words string) {
	e := s.last
	switch e.Kind {
	case deploy.Succeeded:
		return ":white_check_mark:", "deploy succeeded"
	case deploy.Failed:
		switch {
		case e.RolledBack:
			return ":leftwards_arrow_with_hook:", "deploy failed and was rolled back"
		case e.Phase == deploy.PhaseRollback:
			return ":rotating_light:", "deploy failed and the rollback did not finish: needs a person"
		case e.Phase == deploy.PhaseRollout, e.Phase == deploy.PhaseCanary:
			// Not rolled back and the new version ran: on a canary,
			// someone else's write took the service over.
			return ":x:", "deploy failed"
		}
		return ":x:", "deploy failed; the service was not changed"
	}
	return ":arrows_counterclockwise:", "deploying"
}

// render builds the message: a fallback text (notifications, clients
// without blocks) and Block Kit blocks.
func (s *story) render() (string, []slackgo.Block) {
	r := s.rel
	emoji, words := s.headline()
	final := s.last.Kind == deploy.Succeeded || s.last.Kind == deploy.Failed

	// The fallback text is mrkdwn as well: escaped like the blocks.
	text := fmt.Sprintf("%s: %s (%s → %s", esc(r.ServiceName), words, short(r.From), short(r.To))
	if final {
		text += ", " + duration(s.last.Duration)
	}
	text += ")"
	if s.last.Kind == deploy.Failed && s.last.Reason != "" {
		text += ": " + esc(s.last.Reason)
	}

	head := fmt.Sprintf("%s *%s*: %s", emoji, esc(r.ServiceName), words)
	if r.Stack != "" {
		head = fmt.Sprintf("%s *%s* (stack %s): %s", emoji, esc(r.ServiceName), esc(r.Stack), words)
	}
	fields := []*slackgo.TextBlockObject{
		mrkdwn("*Image*\n`" + esc(r.Ref) + "`"),
		mrkdwn(fmt.Sprintf("*Digest*\n`%s` → `%s`", short(r.From), short(r.To))),
	}
	if v := r.Labels[notify.LabelVersion]; v != "" {
		fields = append(fields, mrkdwn("*Version*\n"+esc(v)))
	}
	if rev := r.Labels[notify.LabelRevision]; rev != "" {
		commit := "`" + esc(rev) + "`"
		if u := notify.CommitURL(r.Labels, s.hosts); u != "" {
			commit = fmt.Sprintf("<%s|%s>", u, esc(rev[:min(len(rev), 7)]))
		}
		fields = append(fields, mrkdwn("*Commit*\n"+commit))
	}
	if final {
		fields = append(fields, mrkdwn("*Duration*\n"+duration(s.last.Duration)))
	} else if !r.Started.IsZero() {
		fields = append(fields, mrkdwn(fmt.Sprintf("*Started*\n<!date^%d^{time_secs}|%s>",
			r.Started.Unix(), r.Started.UTC().Format(time.TimeOnly+" UTC"))))
	}
	blocks := []slackgo.Block{slackgo.NewSectionBlock(mrkdwn(head), fields, nil)}
	if s.last.Kind == deploy.Failed && s.last.Reason != "" {
		blocks = append(blocks, slackgo.NewSectionBlock(
			mrkdwn("*Why*\n```"+truncate(esc(s.last.Reason), maxSection-12)+"```"), nil, nil))
	}
	if line := s.canaryLine(); line != "" {
		// Its own line: the canary's words have their own " · ".
		blocks = append(blocks, slackgo.NewContextBlock("", mrkdwn(line)))
	}
	var ctx []string
	for _, st := range s.steps {
		ctx = append(ctx, st.label())
	}
	if s.last.Resumed {
		ctx = append(ctx, "followed to its end after an updater restart")
	}
	ctx = append(ctx, "deploy "+esc(r.ID))
	blocks = append(blocks, slackgo.NewContextBlock("", mrkdwn(strings.Join(ctx, "  ·  "))))
	return text, blocks
}

// details is the thread reply of a failed deploy: everything a person
// needs to fix the image, which the message itself only summarises.
func (s *story) details() string {
	e := s.last
	var b strings.Builder
	fmt.Fprintf(&b, "Deploy %s of *%s* failed in step `%s`", esc(s.rel.ID), esc(s.rel.ServiceName), e.Phase)
	switch {
	case e.RolledBack:
		b.WriteString("; the service is back on its previous version.")
	case e.Phase == deploy.PhaseRollback:
		b.WriteString("; the rollback did not finish, so the service may run either version.")
	case e.Phase == deploy.PhaseRollout:
		b.WriteString(".")
	case e.Phase == deploy.PhaseCanary:
		b.WriteString("; its canary tasks ran the new version, and the updater did not roll it back.")
	default:
		// Every other step (preparation, hooks, the spec write) comes
		// before the service runs the new image.
		b.WriteString("; the service was not changed.")
	}
	fmt.Fprintf(&b, "\nImage `%s`, digest `%s`.", esc(s.rel.Ref), s.rel.To)
	if e.Reason != "" {
		b.WriteString("\n```" + truncate(esc(e.Reason), maxReply/2) + "```")
	}
	if e.Step != nil && len(e.Step.LogTail) > 0 {
		// The end of the log is what explains a failed job, so the cut is
		// made at the front.
		tail := esc(strings.Join(e.Step.LogTail, "\n"))
		if room := maxReply - b.Len() - 64; len(tail) > room && room > 0 {
			tail = "…" + strings.ToValidUTF8(tail[len(tail)-room:], "")
		}
		fmt.Fprintf(&b, "\nLast lines of the %s job (exit code %d):\n```%s```", e.Step.Phase, e.Step.ExitCode, tail)
	}
	return b.String()
}

// outageText is the one message for the start or end of an outage.
func outageText(e deploy.Event, lasted time.Duration) string {
	what := "Docker"
	if e.Part == "registry" {
		what = "the registry"
		if e.Release.Ref != "" {
			what += " for `" + esc(e.Release.Ref) + "`"
		}
	}
	if e.Kind == deploy.Recovered {
		s := ":white_check_mark: " + what + " recovered"
		if lasted > 0 {
			s += " after " + duration(lasted)
		}
		return s + "; watching again."
	}
	return fmt.Sprintf(":rotating_light: %s failing: %s\nNothing is deployed while it fails; retrying every cycle, with one message when it recovers.",
		what, truncate(esc(e.Reason), maxSection))
}

func mrkdwn(s string) *slackgo.TextBlockObject {
	return slackgo.NewTextBlockObject(slackgo.MarkdownType, s, false, false)
}

// esc escapes the three characters Slack's mrkdwn treats as control
// characters, so names and error text never turn into links or mentions.
func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

func short(d string) string {
	if d == "" {
		return "unpinned"
	}
	return deploy.Short(d)
}

func duration(d time.Duration) string {
	if d < time.Second {
		return "under 1s"
	}
	return d.Round(time.Second).String()
}

func truncate(s string, n int) string {
	if n < 1 {
		return ""
	}
	if len(s) <= n {
		return s
	}
	r := []rune(s[:n])
	return string(r[:len(r)-1]) + "…"
}
