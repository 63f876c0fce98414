package deploy_test

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/updater-dev/updater/internal/deploy"
)

// resender is fakeServices that can also re-send credentials, keeping its
// records as Swarm would: what Resend (and Update) sent, by service.
type resender struct {
	*fakeServices
	mu      sync.Mutex
	records map[string]deploy.SentAuth
	reads   []bool // Sent's fresh argument, per call
	resends []resend
	adopted []string
	// ResendFn, when set, answers Resend instead of recording.
	ResendFn func(serviceID string, sent deploy.SentAuth) error
}

type resend struct {
	service string
	creds   deploy.Credentials
	sent    deploy.SentAuth
}

var _ deploy.Resender = (*resender)(nil)

func (r *resender) Sent(_ context.Context, fresh bool) (map[string]deploy.SentAuth, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reads = append(r.reads, fresh)
	return maps.Clone(r.records), nil
}

func (r *resender) Resend(_ context.Context, serviceID string, creds deploy.Credentials, sent deploy.SentAuth) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ResendFn != nil {
		if err := r.ResendFn(serviceID, sent); err != nil {
			return err
		}
	}
	r.resends = append(r.resends, resend{serviceID, creds, sent})
	if r.records == nil {
		r.records = map[string]deploy.SentAuth{}
	}
	r.records[serviceID] = sent
	return nil
}

func (r *resender) Adopt(_ context.Context, serviceID string, sent deploy.SentAuth) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.adopted = append(r.adopted, serviceID)
	if r.records == nil {
		r.records = map[string]deploy.SentAuth{}
	}
	r.records[serviceID] = sent
	return nil
}

func (r *resender) counts() (resends, freshReads int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.reads {
		if f {
			freshReads++
		}
	}
	return len(r.resends), freshReads
}

// resending is a world whose services can re-send credentials, with web
// up to date on oldD and the registry's credentials creds (changeable);
// web's record in Swarm says its spec carries an older password.
func resending(t *testing.T) (*world, *resender, *atomic.Pointer[deploy.Credentials]) {
	w := newWorld(t)
	w.targets = []deploy.Target{web(oldD)}
	w.digests[ref] = oldD
	w.services.UpdateFn = nil // nothing deploys
	creds := &atomic.Pointer[deploy.Credentials]{}
	c := testCreds
	creds.Store(&c)
	w.registry.CredentialsFn = func(context.Context, string) (deploy.Credentials, error) { return *creds.Load(), nil }
	older := testCreds
	older.Password = "older-pass"
	rs := &resender{fakeServices: w.services, records: map[string]deploy.SentAuth{
		"svc1": {Fingerprint: deploy.Fingerprint("svc1", older), Image: pinned(oldD)}}}
	w.p.Services = rs
	return w, rs, creds
}

// A service whose record names other credentials gets them once;
// unchanged credentials cost nothing after that (no write, no look
// at Swarm); changed ones are re-sent once, and what was sent is a
// fingerprint, never the secret.
func TestResendCredentialsWhenTheyChange(t *testing.T) {
	w, rs, creds := resending(t)

	w.cycle(t.Context())
	if n, _ := rs.counts(); n != 1 || rs.resends[0].creds != testCreds ||
		rs.resends[0].sent != (deploy.SentAuth{Fingerprint: deploy.Fingerprint("svc1", testCreds), Image: pinned(oldD)}) {
		t.Fatalf("first cycle re-sent %+v, want once web's credentials with their fingerprint and image", rs.resends)
	}
	_, fresh := rs.counts()
	for range 5 {
		w.cycle(t.Context())
	}
	if n, f := rs.counts(); n != 1 || f != fresh {
		t.Fatalf("5 cycles with the same credentials: %d re-sends in all, %d fresh reads of Swarm (was %d): want 1 and no new read", n, f, fresh)
	}

	rotated := testCreds
	rotated.Password = "rotated-pass"
	creds.Store(&rotated)
	w.cycle(t.Context())
	w.cycle(t.Context())
	if n, _ := rs.counts(); n != 2 || rs.resends[1].creds != rotated {
		t.Fatalf("after the rotation: re-sends %+v, want a second one with the new password", rs.resends)
	}
	if a, b := rs.resends[0].sent.Fingerprint, rs.resends[1].sent.Fingerprint; a == b || strings.Contains(a+b, "hunter2") || strings.Contains(b, "rotated-pass") {
		t.Errorf("fingerprints %q then %q: want them to differ and hold no password", a, b)
	}
	if got := w.logLines("INFO", "registry credentials re-sent"); len(got) != 2 || got[1]["service"] != "web" {
		t.Errorf("re-send log lines %v, want two naming web", got)
	}
	if strings.Contains(w.logs.String(), "hunter2") || strings.Contains(w.logs.String(), "rotated-pass") {
		t.Errorf("a password is in the log:\n%s", w.logs.String())
	}
}

// A record already in Swarm (written by an updater before a restart)
// that matches is not sent again; one made for another image (the spec
// was rolled back or written by someone else since) is.
func TestResendCredentialsTrustsRecordsForTheSpecOnly(t *testing.T) {
	w, rs, _ := resending(t)
	rs.records = map[string]deploy.SentAuth{"svc1": {Fingerprint: deploy.Fingerprint("svc1", testCreds), Image: pinned(oldD)}}
	w.cycle(t.Context())
	w.cycle(t.Context())
	if n, _ := rs.counts(); n != 0 {
		t.Fatalf("%d re-sends with a matching record in Swarm, want none", n)
	}

	rs.records["svc1"] = deploy.SentAuth{Fingerprint: deploy.Fingerprint("svc1", testCreds), Image: pinned(newD)}
	w.cycle(t.Context())
	if n, fresh := rs.counts(); n != 1 || fresh != 1 {
		t.Fatalf("record for another image: %d re-sends after %d fresh reads, want 1 after 1", n, fresh)
	}
}

// Nothing is re-sent beside a deploy (its own write carries the
// credentials), for a service whose registry failed, for anonymous
// registries, in a dry run, or once the lease is lost.
func TestResendCredentialsHoldsBack(t *testing.T) {
	t.Run("deploying", func(t *testing.T) {
		w, rs, _ := resending(t)
		w.digests[ref] = newD
		w.services.UpdateFn = func(context.Context, deploy.Target, string, deploy.Credentials) error { return nil }
		release := make(chan struct{})
		w.services.RolloutFn = func(ctx context.Context, _ string) (deploy.Rollout, error) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return rollout("completed", newD, task(newD, "running")), nil
		}
		// The tag moved: this cycle deploys web, the next finds it deploying.
		if _, err := w.p.Cycle(t.Context()); err != nil {
			t.Fatal(err)
		}
		plans, err := w.p.Cycle(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		close(release)
		w.p.Wait()
		if plans[0].Action != deploy.ActDeploying {
			t.Fatalf("second cycle planned %s, want deploying", plans[0].Action)
		}
		if n, _ := rs.counts(); n != 0 {
			t.Fatalf("%d re-sends beside a deploy, want none", n)
		}
	})
	t.Run("registry error", func(t *testing.T) {
		w, rs, _ := resending(t)
		delete(w.digests, ref)
		w.cycle(t.Context())
		if n, _ := rs.counts(); n != 0 {
			t.Fatalf("%d re-sends for a service whose registry failed", n)
		}
	})
	t.Run("anonymous", func(t *testing.T) {
		w, rs, creds := resending(t)
		creds.Store(&deploy.Credentials{})
		w.cycle(t.Context())
		if n, _ := rs.counts(); n != 0 || len(rs.reads) != 0 {
			t.Fatalf("anonymous registry: %d re-sends, %d reads of the records, want none", n, len(rs.reads))
		}
	})
	t.Run("dry run", func(t *testing.T) {
		w, rs, _ := resending(t)
		w.p.DryRun = true
		w.cycle(t.Context())
		if n, _ := rs.counts(); n != 0 {
			t.Fatalf("%d re-sends in a dry run", n)
		}
	})
	t.Run("lease lost", func(t *testing.T) {
		w, rs, _ := resending(t)
		// The lease goes once the records were read, just before the write.
		w.p.Acting = func() bool {
			rs.mu.Lock()
			defer rs.mu.Unlock()
			return len(rs.reads) == 0
		}
		if _, err := w.p.Cycle(t.Context()); err != nil && !strings.Contains(err.Error(), "standing by") {
			t.Fatal(err)
		}
		w.p.Wait()
		if n, _ := rs.counts(); n != 0 || len(rs.reads) == 0 {
			t.Fatalf("%d re-sends after the lease was lost (records read %d times), want none after a read", n, len(rs.reads))
		}
	})
}

// A service Swarm is updating is left for a later cycle, quietly; the
// write goes once it has settled.
func TestResendCredentialsWaitsForSwarm(t *testing.T) {
	w, rs, _ := resending(t)
	busy := true
	rs.ResendFn = func(string, deploy.SentAuth) error {
		if busy {
			return fmt.Errorf("update service svc1: the update is updating: %w", deploy.ErrUnsettled)
		}
		return nil
	}
	w.cycle(t.Context())
	if n, _ := rs.counts(); n != 0 || len(w.logLines("WARN", "")) != 0 {
		t.Fatalf("while Swarm updates: %d re-sends, warnings %v", n, w.logLines("WARN", ""))
	}
	busy = false
	w.cycle(t.Context())
	if n, _ := rs.counts(); n != 1 {
		t.Fatalf("once settled: %d re-sends, want 1", n)
	}
}

func TestSettled(t *testing.T) {
	for state, want := range map[string]bool{"": true, "completed": true, "rollback_completed": true,
		"updating": false, "paused": false, "rollback_started": false, "rollback_paused": false} {
		if got := deploy.Settled(state); got != want {
			t.Errorf("Settled(%q) = %v, want %v", state, got, want)
		}
	}
}

func TestFingerprint(t *testing.T) {
	a := deploy.Fingerprint("svc1", testCreds)
	if a != deploy.Fingerprint("svc1", testCreds) || !strings.HasPrefix(a, "sha256:") || len(a) != 71 {
		t.Fatalf("Fingerprint = %q: want a stable sha256", a)
	}
	other := testCreds
	other.Username, other.Password = testCreds.Username+"h", strings.TrimPrefix(testCreds.Password, "h")
	for name, b := range map[string]string{
		"another service":    deploy.Fingerprint("svc2", testCreds),
		"the boundary moved": deploy.Fingerprint("svc1", other),
		"an identity token":  deploy.Fingerprint("svc1", deploy.Credentials{ServerAddress: testCreds.ServerAddress, IdentityToken: "t"}),
	} {
		if b == a {
			t.Errorf("%s: same fingerprint %s", name, a)
		}
	}
	id := deploy.Fingerprint("svc1", deploy.Credentials{IdentityToken: "t"})
	if reg := deploy.Fingerprint("svc1", deploy.Credentials{RegistryToken: "t"}); reg == id {
		t.Errorf("one token as identity and as registry token: same fingerprint %s", id)
	}
}

// A service with no record (never written by this updater) is adopted:
// its credentials recorded, its spec not written; a rotation is re-sent.
func TestResendCredentialsAdoptsAServiceWithoutRecord(t *testing.T) {
	w, rs, creds := resending(t)
	rs.records = nil
	for range 3 {
		w.cycle(t.Context())
	}
	if n, _ := rs.counts(); n != 0 || len(rs.adopted) != 1 {
		t.Fatalf("3 cycles of a service without record: %d re-sends, adopted %v: want none and web adopted once", n, rs.adopted)
	}
	rotated := testCreds
	rotated.Password = "rotated-pass"
	creds.Store(&rotated)
	w.cycle(t.Context())
	if n, _ := rs.counts(); n != 1 || rs.resends[0].creds != rotated {
		t.Fatalf("after the rotation: re-sends %+v, want one with the new password", rs.resends)
	}
}

// A re-send the spec refuses for what it is (not a passing state) is
// said once, and not tried every cycle, until the credentials change.
func TestResendRefusedIsNotRetriedEveryCycle(t *testing.T) {
	w, rs, creds := resending(t)
	tries := 0
	rs.ResendFn = func(string, deploy.SentAuth) error {
		tries++
		return fmt.Errorf("the image docker.io/library/app:1 would be sent as app:1, which restarts every task")
	}
	for range 4 {
		w.cycle(t.Context())
	}
	if tries != 1 || len(w.logLines("WARN", "re-send registry credentials")) != 1 {
		t.Fatalf("4 cycles: %d tries, %d warnings; want one of each", tries, len(w.logLines("WARN", "re-send registry credentials")))
	}
	rotated := testCreds
	rotated.Password = "rotated-pass"
	creds.Store(&rotated)
	w.cycle(t.Context())
	if tries != 2 {
		t.Fatalf("after the rotation: %d tries, want a second", tries)
	}
}
