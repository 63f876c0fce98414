package app

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/notify/slack"
)

// listenSlack takes presses of the Slack buttons over Socket Mode when
// SLACK_APP_TOKEN is set, until Close. Only `updater run` listens (a
// one-off command must not take presses meant for the updater that stays
// up), and not in a dry run, which holds no approvals. An app token Slack
// refuses turns the buttons off with an ERROR line; deploys go on.
func (a *App) listenSlack(ctx context.Context) {
	s, p := a.cfg.Slack, a.Pipeline
	if s.AppToken == "" || s.Token == "" || p == nil || p.DryRun {
		return
	}
	// Deploys and rollbacks a press starts live on ctx, like the API's:
	// stopping the listener must not stop them.
	dec := &slackDecisions{ctx: ctx, p: p}
	ctx, cancel := context.WithCancel(ctx)
	l := slack.NewListener(slack.ListenerConfig{Token: s.Token, AppToken: s.AppToken, APIURL: s.APIURL,
		Approvers: s.Approvers, Decisions: dec, Log: a.Log})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Connected only while this updater holds the lease: Slack spreads
		// the presses over an app's connections, and one reaching an
		// updater standing by (the old one during the updater's own
		// start-first update, say) would find no deploy to decide.
		acting := func() bool { return p.Acting == nil || p.Acting() }
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			for !acting() {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
			held, lost := context.WithCancel(ctx)
			go func() {
				for acting() {
					select {
					case <-held.Done():
						return
					case <-tick.C:
					}
				}
				lost()
			}()
			err := l.Run(held)
			lost()
			switch {
			case ctx.Err() != nil:
				return
			case errors.Is(err, slack.ErrRejected):
				a.Log.Error("slack buttons off: Slack refused SLACK_APP_TOKEN; approve with `updater approve` or the status page", "err", err)
				return
			case err != nil:
				a.Log.Error("slack buttons off", "err", err)
				return
			}
			a.Log.Info("slack socket mode closed: the lease went to another updater")
		}
	}()
	// Pushed after the pipeline's own stop, so it runs first: no press is
	// acted on once the deploys are being stopped.
	a.push("slack buttons", func() { cancel(); <-done; dec.wg.Wait() })
}

// slackDecisions are the pipeline's decisions as the buttons ask for them.
type slackDecisions struct {
	ctx context.Context // Serve's: the checks and rollbacks a press starts live on it
	p   *deploy.Pipeline
	wg  sync.WaitGroup
}

var _ slack.Decisions = (*slackDecisions)(nil)

// Approve approves and asks for a check of the service's tag at once, as
// the API's approve does, rather than leaving the deploy to the next
// scheduled cycle. A check that fails (the lease not held, Docker gone)
// leaves it to that cycle.
func (d *slackDecisions) Approve(_ context.Context, id string) (deploy.Approval, error) {
	a, err := d.p.Approve(id)
	if err != nil {
		return a, err
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if _, err := d.p.CycleFor(d.ctx, []deploy.Push{deploy.PushOf(a.Ref)}); err != nil {
			d.p.Log.Debug("check after a slack approval failed; the next cycle deploys it", "deploy_id", a.ID, "err", err)
		}
	}()
	return a, nil
}

func (d *slackDecisions) Reject(ctx context.Context, id string) (deploy.Approval, error) {
	return d.p.Reject(ctx, id)
}

// StartRollback starts the rollback on Serve's context, not the press's,
// which ends long before the rollback does.
func (d *slackDecisions) StartRollback(_ context.Context, req deploy.RollbackRequest) (deploy.Rolling, error) {
	return d.p.StartRollback(d.ctx, req)
}
