package slack

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	slackgo "github.com/slack-go/slack"

	"github.com/updater-dev/updater/internal/deploy"
)

// The buttons' action IDs: what a press asks for. A press of any other
// action ID is not the updater's and is ignored.
const (
	ActionApprove  = "updater_approve"
	ActionReject   = "updater_reject"
	ActionRollback = "updater_rollback"
)

// rollbackValue is what a Roll back button carries: the deploy it undoes,
// so a press needs no memory of the message it came from.
type rollbackValue struct {
	Deploy  string `json:"d"`
	Service string `json:"s"`
	// To is the digest the deploy replaced, the one a press returns to;
	// "" when the service was unpinned before it, and then the history
	// picks.
	To string `json:"to,omitempty"`
}

// rollbackable reports whether e, a deploy's outcome, leaves the service
// on a version a person may want to undo: a success, or a failure after
// the service was changed that was not rolled back. A rollback a person
// asked for gets no button: undoing it would bring back the digest it
// quarantined. Nor does a deploy that failed its canary (PhaseCanary):
// the updater wrote the old digest back and quarantined the new one, or,
// not rolled back, someone else's write took the service over, which is
// not this deploy's to undo.
func rollbackable(e deploy.Event) bool {
	if e.Release.Rollback {
		return false
	}
	switch e.Kind {
	case deploy.Succeeded:
		return true
	case deploy.Failed:
		switch e.Phase {
		case deploy.PhaseRollout, deploy.PhaseProbe, deploy.PhaseBake, deploy.PhaseRollback:
			return !e.RolledBack
		}
	}
	return false
}

// rollbackActions is the Roll back button of a finished deploy's message.
func rollbackActions(rel deploy.Release) slackgo.Block {
	v, _ := json.Marshal(rollbackValue{Deploy: rel.ID, Service: rel.ServiceName, To: rel.From})
	confirm := slackgo.NewConfirmationBlockObject(plain("Roll back "+rel.ServiceName+"?"),
		plain(fmt.Sprintf("Returns %s to %s and keeps %s from being deployed again until its tag moves.",
			rel.ServiceName, short(rel.From), short(rel.To))), plain("Roll back"), plain("Cancel"))
	btn := slackgo.NewButtonBlockElement(ActionRollback, string(v), plain("Roll back")).WithStyle(slackgo.StyleDanger).WithConfirm(confirm)
	return slackgo.NewActionBlock("updater_rollback_"+rel.ID, btn)
}

// pending renders the message of a deploy waiting for approval. With
// buttons, Approve and Reject carry the approval's ID; without them the
// message says how else to decide.
func pending(e deploy.Event, buttons bool, statusURL string) (string, []slackgo.Block) {
	r := e.Release
	text := fmt.Sprintf("%s: a new version waits for approval (%s → %s)", esc(r.ServiceName), short(r.From), short(r.To))
	head := fmt.Sprintf(":raised_hand: *%s*: a new version waits for approval", esc(r.ServiceName))
	if r.Stack != "" {
		head = fmt.Sprintf(":raised_hand: *%s* (stack %s): a new version waits for approval", esc(r.ServiceName), esc(r.Stack))
	}
	fields := []*slackgo.TextBlockObject{
		mrkdwn("*Image*\n`" + esc(r.Ref) + "`"),
		mrkdwn(fmt.Sprintf("*Digest*\n`%s` → `%s`", short(r.From), short(r.To))),
	}
	blocks := []slackgo.Block{slackgo.NewSectionBlock(mrkdwn(head), fields, nil)}
	ctx := []string{"approval " + esc(r.ID)}
	if e.Reason != "" {
		ctx = append(ctx, esc(e.Reason))
	}
	blocks = append(blocks, slackgo.NewContextBlock("", mrkdwn(strings.Join(ctx, "  ·  "))))
	if buttons {
		approve := slackgo.NewButtonBlockElement(ActionApprove, r.ID, plain("Approve")).WithStyle(slackgo.StylePrimary)
		reject := slackgo.NewButtonBlockElement(ActionReject, r.ID, plain("Reject")).WithStyle(slackgo.StyleDanger)
		blocks = append(blocks, slackgo.NewActionBlock("updater_approval_"+r.ID, approve, reject))
		return text, blocks
	}
	how := fmt.Sprintf("Approve with `updater approve %s` (or reject with `updater reject %s`), or on the status page", esc(r.ID), esc(r.ID))
	if statusURL != "" {
		how += " <" + statusURL + "|" + esc(statusURL) + ">"
	}
	text += ". " + how
	blocks = append(blocks, slackgo.NewSectionBlock(mrkdwn(how+"."), nil, nil))
	return text, blocks
}

// decidedBlocks is a pending message once decided: its blocks without the
// buttons, and a line saying who decided what, so nobody presses again.
func decidedBlocks(blocks []slackgo.Block, line string) []slackgo.Block {
	out := make([]slackgo.Block, 0, len(blocks)+1)
	for _, b := range blocks {
		if b.BlockType() != slackgo.MBTAction {
			out = append(out, b)
		}
	}
	return append(out, slackgo.NewContextBlock("", mrkdwn(line)))
}

func plain(s string) *slackgo.TextBlockObject {
	return slackgo.NewTextBlockObject(slackgo.PlainTextType, s, false, false)
}

func stamp(t time.Time) string {
	return fmt.Sprintf("<!date^%d^{date_short_pretty} {time}|%s>", t.Unix(), t.UTC().Format(time.DateTime+" UTC"))
}
