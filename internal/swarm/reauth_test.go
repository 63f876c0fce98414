package swarm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
)

var reauthCreds = deploy.Credentials{ServerAddress: "127.0.0.1:5000", Username: "ci", Password: "rotated"}

func sentAuthHeader(t *testing.T, e *engine, id string) registry.AuthConfig {
	t.Helper()
	var raw string
	e.with(func() { raw = e.auth[id] })
	var auth registry.AuthConfig
	b, err := base64.URLEncoding.DecodeString(raw)
	if err != nil || json.Unmarshal(b, &auth) != nil {
		t.Fatalf("X-Registry-Auth %q does not decode: %v", raw, err)
	}
	return auth
}

// The re-send writes the spec back as read, over its version, with the
// credentials in X-Registry-Auth, and records what it sent: read back
// without a Docker call by this process, from Swarm by a restarted one.
func TestResendWritesOnlyTheAuth(t *testing.T) {
	e := newEngine(t)
	img := appRepo + ":v1@" + digest1
	spec := appSpec("shop_web", img)
	spec.TaskTemplate.ContainerSpec.Env = []string{"A=1"}
	e.addService("s1", spec)
	s := e.client(t, Config{})
	before, _ := e.service("s1")
	sent := deploy.SentAuth{Fingerprint: deploy.Fingerprint("s1", reauthCreds), Image: img}
	// The first cycle reads the records (none yet).
	if got, err := s.Sent(context.Background(), false); err != nil || len(got) != 0 {
		t.Fatalf("Sent before any record = %v, %v", got, err)
	}

	if err := s.Resend(context.Background(), "s1", reauthCreds, sent); err != nil {
		t.Fatal(err)
	}
	after, _ := e.service("s1")
	if !reflect.DeepEqual(after.Spec, before.Spec) || after.Version.Index != before.Version.Index+1 {
		t.Errorf("spec after the re-send %+v (version %d), want the one before %+v written once (version %d)",
			after.Spec, after.Version.Index, before.Spec, before.Version.Index+1)
	}
	if a := sentAuthHeader(t, e, "s1"); a.Username != "ci" || a.Password != "rotated" || a.ServerAddress != "127.0.0.1:5000" {
		t.Errorf("registry auth sent: %+v", a)
	}
	lists := e.count("GET /configs")
	got, err := s.Sent(context.Background(), false)
	if err != nil || got["s1"] != sent {
		t.Fatalf("Sent = %v, %v; want s1's record %v", got, err, sent)
	}
	if n := e.count("GET /configs"); n != lists {
		t.Errorf("Sent(false) after this process's write asked Docker %d times", n-lists)
	}
	for _, c := range e.configNames() {
		if cfg, _ := e.config(c); cfg.Spec.Labels[kindLabel] == kindAuth && slices.Contains([]string{cfg.Spec.Labels[authLabel], string(cfg.Spec.Data)}, reauthCreds.Password) {
			t.Errorf("record %s holds the password", c)
		}
	}

	restarted := e.client(t, Config{})
	if got, err := restarted.Sent(context.Background(), false); err != nil || got["s1"] != sent {
		t.Fatalf("a restarted updater's Sent = %v, %v; want s1's record %v", got, err, sent)
	}
	// Sent again: a second record replaces the first.
	again := deploy.SentAuth{Fingerprint: deploy.Fingerprint("s1", deploy.Credentials{Username: "ci", Password: "next"}), Image: img}
	if err := restarted.Resend(context.Background(), "s1", reauthCreds, again); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Sent(context.Background(), true); len(got) != 1 || got["s1"] != again {
		t.Errorf("records after a second re-send: %v, want only %v", got, again)
	}
}

// Nothing is written while Swarm updates or rolls the service back (or
// holds such an update paused), once its image moved from the one the
// decision was made for, or when the client library would rewrite the
// image (every task would restart).
func TestResendRefuses(t *testing.T) {
	img := appRepo + ":v1@" + digest1
	for _, c := range []struct {
		name, image string
		state       swarm.UpdateState
		unsettled   bool
	}{
		{"updating", img, swarm.UpdateStateUpdating, true},
		{"paused", img, swarm.UpdateStatePaused, true},
		{"rolling back", img, swarm.UpdateStateRollbackStarted, true},
		{"rollback paused", img, swarm.UpdateStateRollbackPaused, true},
		{"image moved", appRepo + ":v1@" + digest2, "", true},
		{"no tag", "127.0.0.1:5000/app", "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEngine(t)
			svc := e.addService("s1", appSpec("shop_web", c.image))
			if c.state != "" {
				e.with(func() { svc.UpdateStatus = &swarm.UpdateStatus{State: c.state} })
			}
			s := e.client(t, Config{})
			want := img
			if c.name == "no tag" {
				want = c.image
			}
			err := s.Resend(context.Background(), "s1", reauthCreds, deploy.SentAuth{Fingerprint: "sha256:x", Image: want})
			if err == nil || errors.Is(err, deploy.ErrUnsettled) != c.unsettled {
				t.Fatalf("Resend = %v, want an error (unsettled %v)", err, c.unsettled)
			}
			if n := e.count("POST /services/s1/update"); n != 0 {
				t.Errorf("%d spec writes", n)
			}
			if n := e.count("POST /configs/create"); n != 0 {
				t.Errorf("%d records written", n)
			}
		})
	}
	// Settled states let the write go.
	for _, st := range []swarm.UpdateState{swarm.UpdateStateCompleted, swarm.UpdateStateRollbackCompleted} {
		e := newEngine(t)
		svc := e.addService("s1", appSpec("shop_web", img))
		e.with(func() { svc.UpdateStatus = &swarm.UpdateStatus{State: st} })
		if err := e.client(t, Config{}).Resend(context.Background(), "s1", reauthCreds, deploy.SentAuth{Fingerprint: "sha256:x", Image: img}); err != nil {
			t.Errorf("Resend with update state %s: %v", st, err)
		}
	}
}

// A deploy's spec write records the credentials it sent, once per
// fingerprint and image, so no re-send follows it; one without
// credentials records nothing (Swarm keeps the auth it had). The record
// goes with the service.
func TestUpdateRecordsAuthSent(t *testing.T) {
	e := newEngine(t)
	e.addService("s1", appSpec("shop_web", appRepo+":v1@"+digest1))
	s := e.client(t, Config{})
	ctx := context.Background()
	img := appRepo + ":v1@" + digest2
	if err := s.Update(ctx, deploy.Target{ID: "s1"}, img, reauthCreds); err != nil {
		t.Fatal(err)
	}
	want := deploy.SentAuth{Fingerprint: deploy.Fingerprint("s1", reauthCreds), Image: img}
	if got, err := s.Sent(ctx, true); err != nil || got["s1"] != want {
		t.Fatalf("after a deploy Sent = %v, %v; want %v", got, err, want)
	}
	creates := e.count("POST /configs/create")
	if err := s.Update(ctx, deploy.Target{ID: "s1"}, img, reauthCreds); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, deploy.Target{ID: "s1"}, appRepo+":v1@"+digest1, deploy.Credentials{}); err != nil {
		t.Fatal(err)
	}
	if n := e.count("POST /configs/create"); n != creates {
		t.Errorf("%d records written for a write with the same credentials and one with none", n-creates)
	}

	if ids, err := s.Recorded(ctx); err != nil || !slices.Contains(ids, "s1") {
		t.Fatalf("Recorded = %v, %v: want s1 (its registry-auth record)", ids, err)
	}
	if err := s.ForgetService(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Sent(ctx, true); len(got) != 0 {
		t.Errorf("records left after ForgetService: %v", got)
	}
}

func TestSentImage(t *testing.T) {
	for in, want := range map[string]string{
		appRepo + ":v1@" + digest1: appRepo + ":v1@" + digest1,
		appRepo + "@" + digest1:    appRepo + "@" + digest1,
		appRepo:                    appRepo + ":latest",
		"docker.io/library/nginx:1.27@" + digest1:           "nginx:1.27@" + digest1,
		"registry.example.com/team/app:2.0@" + digest1:      "registry.example.com/team/app:2.0@" + digest1,
		"ghcr.io/owner/app:main":                            "ghcr.io/owner/app:main",
		"not a reference":                                   "not a reference",
		"registry.example.com/team/app:2.0@sha256:tooshort": "registry.example.com/team/app:2.0@sha256:tooshort",
	} {
		if got := sentImage(in); got != want {
			t.Errorf("sentImage(%q) = %q, want %q", in, got, want)
		}
	}
}
