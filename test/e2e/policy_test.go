//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// logTime is when the updater wrote a log line (its "time" field).
func logTime(t testing.TB, line map[string]any) time.Time {
	t.Helper()
	s, _ := line["time"].(string)
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("log line without a time: %v", line)
	}
	return at
}

// A push during a freeze: nothing is written to the spec, the digest is
// held and reported once; a second push is held too; when the freeze
// ends the newest digest deploys, and the one in between never does.
func TestFreezeHoldsThenTheNewestDeploys(t *testing.T) {
	const stack, repo, name = "e2efreeze", "e2e/freeze", "e2efreeze_app"
	v1 := push(t, repo, "v1")
	// A freeze that ends 20 s from now, begun on the minute at least a
	// minute before that end (a window's DURATION is 1m at least): the two
	// pushes are held in its last 20 s, four times what they take. (It
	// began this minute and ended 35 s to 95 s from now before: 39.5 s.)
	now := time.Now().UTC()
	end := now.Add(20 * time.Second).Truncate(time.Second)
	start := end.Add(-time.Minute).Truncate(time.Minute)
	dur := end.Sub(start)
	freeze := fmt.Sprintf("CRON_TZ=UTC %d %d * * * %ds", start.Minute(), start.Hour(), int(dur.Seconds()))
	app := createService(t, name, repo, v1, svcOpts{stack: stack, optIn: true, labels: map[string]string{"updater.freeze": freeze}})
	ver := inspect(t, app).Version.Index
	u := startUpdater(t, stack, "UPDATER_API_TOKEN="+apiToken)

	v2 := push(t, repo, "v2")
	u.waitLog(t, 30*time.Second, 1, "deploy held", "service", name, "to_digest", v2)
	if r := fmt.Sprint(u.find("deploy held", "to_digest", v2)["reason"]); !strings.Contains(r, "held until") || !strings.Contains(r, "freeze") {
		t.Fatalf("held reason %q, want until when and the freeze", r)
	}
	v3 := push(t, repo, "v3")
	u.waitLog(t, 30*time.Second, 1, "deploy held", "service", name, "to_digest", v3)
	if time.Now().After(end) {
		t.Fatalf("the freeze (until %s) ended before the second push was seen held: the machine is too slow for this test's timing", end.Format(time.TimeOnly))
	}
	if v, d := inspect(t, app).Version.Index, specDigest(t, app); v != ver || d != v1 {
		t.Fatalf("during the freeze the spec moved: version %d -> %d, digest %s", ver, v, d[:19])
	}
	// The API says held, and until when.
	r := call(t, "GET", u.base(t)+"/api/v1/services", "Bearer "+apiToken, nil, "")
	var listed struct {
		Services []struct {
			Name, State string
			EligibleAt  *time.Time `json:"eligible_at"`
		}
	}
	if err := json.Unmarshal([]byte(r.body), &listed); err != nil || len(listed.Services) != 1 {
		t.Fatalf("/api/v1/services: %d %s (%v)", r.status, r.body, err)
	}
	if sv := listed.Services[0]; sv.State != "held" || sv.EligibleAt == nil || !sv.EligibleAt.Equal(end) {
		t.Fatalf("API: %s %v, want held, eligible at %s", sv.State, sv.EligibleAt, end)
	}

	u.waitLog(t, time.Until(end)+deployLimit, 1, "deploy succeeded", "service", name, "to_digest", v3)
	if at := logTime(t, u.find("deploy started", "to_digest", v3)); at.Before(end.Add(-time.Second)) {
		t.Fatalf("deploy of v3 started at %s, before the freeze ended at %s", at.Format(time.TimeOnly), end.Format(time.TimeOnly))
	}
	if !allRunning(t, app, v3) {
		t.Fatal("v3 reported but not running")
	}
	if n := u.count("deploy started", "to_digest", v2); n != 0 {
		t.Fatalf("v2, replaced on the tag during the freeze, was deployed %d times", n)
	}
	if n := u.count("deploy held", "service", name); n != 2 {
		t.Fatalf("%d held reports, want one per digest (2)", n)
	}
}

// A cooldown of 12 s: d2 is held; d3, pushed 6 s later, replaces it and
// deploys about 12 s after its own push; d2 never deploys. The first
// sighting is kept in Swarm: an updater restarted mid-cooldown does not
// start the clock again. (20 s, 10 s and 12 s before: 38.0 s the test.)
func TestCooldownDeploysOnlyWhatStayed(t *testing.T) {
	const stack, repo, name = "e2ecool", "e2e/cool", "e2ecool_app"
	const cooldown, next, restart = 12 * time.Second, 6 * time.Second, 8 * time.Second
	v1 := push(t, repo, "v1")
	app := createService(t, name, repo, v1, svcOpts{stack: stack, optIn: true, labels: map[string]string{"updater.cooldown": cooldown.String()}})
	u := startUpdater(t, stack)

	d2 := push(t, repo, "v2")
	pushed2 := time.Now()
	u.waitLog(t, 30*time.Second, 1, "deploy held", "service", name, "to_digest", d2)
	// The scenario's own timing (the next push comes 6 s later, within
	// d2's cooldown), not a wait for a condition.
	time.Sleep(time.Until(pushed2.Add(next)))
	d3 := push(t, repo, "v3")
	pushed3 := time.Now()
	u.waitLog(t, 30*time.Second, 1, "deploy held", "service", name, "to_digest", d3)
	if n := records(t, app, "first-seen"); n != 1 {
		t.Fatalf("%d first-seen records in Swarm, want 1 (d3 replaced d2's)", n)
	}
	// Restarted 8 s into d3's cooldown: a clock started again would
	// deploy it 20 s after its push at the earliest, past the bound below.
	time.Sleep(time.Until(pushed3.Add(restart)))
	if err := u.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if specDigest(t, app) != v1 {
		t.Fatal("the service moved before its cooldown ended")
	}
	u2 := startUpdater(t, stack)
	u2.waitLog(t, deployLimit, 1, "deploy succeeded", "service", name, "to_digest", d3)
	at := logTime(t, u2.find("deploy started", "to_digest", d3))
	if at.Before(pushed3.Add(cooldown-time.Second)) || at.After(pushed3.Add(cooldown+5*time.Second)) {
		t.Fatalf("d3 started deploying %s after its push, want about %s (its cooldown counted from when it was first seen)", at.Sub(pushed3).Round(time.Second), cooldown)
	}
	if n := u.count("deploy started", "to_digest", d2) + u2.count("deploy started", "to_digest", d2); n != 0 {
		t.Fatalf("d2, replaced within its cooldown, was deployed %d times", n)
	}
	if !allRunning(t, app, d3) {
		t.Fatal("d3 reported but not running")
	}
	t.Logf("d3 deployed %s after its push (cooldown %s, the updater restarted %s in)", at.Sub(pushed3).Round(100*time.Millisecond), cooldown, restart)
}
