package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/updater-dev/updater/internal/client"
	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
)

// The commands as clients of the running updater (UPDATER_URL): they ask
// its API and never Docker. Their errors go to stderr as one plain line,
// with the exit code failed gives them.

// checkNowWithin bounds `check --now`: the check it asks for queues behind
// the cycle or deploys running.
const checkNowWithin = 10 * time.Minute

func dial(cfg config.Config, verb string, std streams) (*client.Client, int) {
	c, err := client.New(cfg.URL, cfg.APIToken)
	if err != nil {
		return nil, failed(std, verb, err)
	}
	return c, 0
}

// failed prints err and returns its exit code: 2 for a token the updater
// refused (a setting to fix, like any other), 1 for anything else.
func failed(std streams, verb string, err error) int {
	fmt.Fprintf(std.err, "updater %s: %v\n", verb, err)
	if errors.Is(err, client.ErrAuth) {
		return 2
	}
	return 1
}

func remoteCheck(ctx context.Context, cfg config.Config, format string, now bool, std streams) int {
	c, code := dial(cfg, "check", std)
	if c == nil {
		return code
	}
	s, err := c.Services(ctx)
	if err != nil {
		return failed(std, "check", err)
	}
	if now {
		if err := c.Check(ctx); err != nil {
			return failed(std, "check", err)
		}
		before := s.Checked
		ctx, cancel := context.WithTimeout(ctx, checkNowWithin)
		defer cancel()
		for !s.Checked.After(before) {
			select {
			case <-ctx.Done():
				return failed(std, "check", fmt.Errorf("the updater finished no full check within %s (a deploy may hold it: see GET /api/v1/deploys)", checkNowWithin))
			case <-time.After(pollEvery):
			}
			if s, err = c.Services(ctx); err != nil {
				return failed(std, "check", err)
			}
		}
	}
	r := report{Checked: s.Checked, Services: s.Services}
	return r.print(std.out, format, "the updater at "+cfg.URL+" watches no service",
		"as the updater at "+cfg.URL+" saw it at its last full check: "+when(s.Checked))
}

func when(t time.Time) string {
	if t.IsZero() {
		return "none finished yet"
	}
	return t.UTC().Format(time.RFC3339)
}

// remoteDeploy asks the running updater to deploy service; with wait, it
// follows the deploy that request began to its end. The API answers
// "queued", not a deploy's ID, so the deploy is the first of the service
// that was not in the list before the request.
func remoteDeploy(ctx context.Context, cfg config.Config, service string, wait time.Duration, std streams) int {
	c, code := dial(cfg, "deploy", std)
	if c == nil {
		return code
	}
	seen := map[string]bool{}
	if wait > 0 {
		d, err := c.Deploys(ctx)
		if err != nil {
			return failed(std, "deploy", err)
		}
		for _, x := range d.Deploys {
			seen[x.ID] = true
		}
	}
	if err := c.Deploy(ctx, service); err != nil {
		return failed(std, "deploy", err)
	}
	fmt.Fprintf(std.out, "%s: deploy queued by the updater at %s\n", service, cfg.URL)
	if wait == 0 {
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var mine *client.Deploy
	for {
		d, err := c.Deploys(ctx)
		if err != nil && ctx.Err() == nil {
			return failed(std, "deploy", err)
		}
		for i := len(d.Deploys) - 1; i >= 0; i-- { // oldest first: the first new one is ours
			if x := d.Deploys[i]; !seen[x.ID] && (x.ServiceName == service || x.ServiceID == service) {
				mine = &x
				break
			}
		}
		if mine != nil && mine.Ended() {
			fmt.Fprintf(std.out, "%s %s: %s -> %s %s\n", mine.ServiceName, mine.State, deploy.Short(mine.From), deploy.Short(mine.To), mine.Reason)
			if mine.State != "succeeded" {
				return 1
			}
			return 0
		}
		select {
		case <-ctx.Done():
			if mine != nil {
				return failed(std, "deploy", fmt.Errorf("deploy %s of %s still runs after %s (its outcome: GET /api/v1/deploys)", mine.ID, service, wait))
			}
			return failed(std, "deploy", fmt.Errorf("no deploy of %s began within %s: it may run what its tag points to already, wait behind another deploy or be frozen (see updater check and the updater's log)", service, wait))
		case <-time.After(pollEvery):
		}
	}
}

func remoteDecide(ctx context.Context, cfg config.Config, id string, approve bool, std streams) int {
	verb, decide := "reject", (*client.Client).Reject
	if approve {
		verb, decide = "approve", (*client.Client).Approve
	}
	c, code := dial(cfg, verb, std)
	if c == nil {
		return code
	}
	a, err := decide(c, ctx, id)
	if err != nil {
		return failed(std, verb, err)
	}
	then := "it deploys at the updater's next check that still finds the tag there"
	if !approve {
		then = "the digest is not asked about again until the tag moves"
	}
	fmt.Fprintf(std.out, "deploy %s of %s %s (%s -> %s): %s\n", a.ID, a.ServiceName, a.State, deploy.Short(a.From), deploy.Short(a.To), then)
	return 0
}
