package swarm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/updater-dev/updater/internal/deploy"
)

func TestFailedDigests(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	ctx := context.Background()
	for _, m := range []struct{ svc, digest string }{{"s1", digest1}, {"s1", digest2}, {"s2", digest1}, {"s1", digest1}} {
		if err := s.MarkFailed(ctx, m.svc, m.digest, "rollout failed"); err != nil {
			t.Fatalf("mark %s failed on %s: %v (twice is no error)", m.digest, m.svc, err)
		}
	}
	got, err := s.Failed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]bool{"s1": {digest1: true, digest2: true}, "s2": {digest1: true}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("failed digests %v, want %v", got, want)
	}
	if c, _ := e.config(recordName("failed", "s1", digest2)); string(c.Spec.Data) != "rollout failed\n" {
		t.Errorf("the record keeps the reason: %q", c.Spec.Data)
	}

	if err := s.Forget(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if got, _ = s.Failed(ctx); !reflect.DeepEqual(got, map[string]map[string]bool{"s2": {digest1: true}}) {
		t.Errorf("after forgetting s1: %v, want only s2's", got)
	}

	e.fail("POST /configs/create", 500, "raft: no leader", 1)
	if err := s.MarkFailed(ctx, "s3", digest1, "x"); err == nil {
		t.Error("a refused record write gave no error")
	}
}

func TestInFlight(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{Stack: "shop"})
	ctx := context.Background()
	r := deploy.Release{ID: "r1", ServiceID: "s1", ServiceName: "shop_web", Stack: "shop", Ref: appRepo + ":v1",
		From: digest1, To: digest2, Started: time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)}
	if err := s.Begin(ctx, r); err != nil {
		t.Fatal(err)
	}
	// Another updater's deploy, on another stack, is not ours to resume.
	if err := e.client(t, Config{Stack: "blog"}).Begin(ctx, deploy.Release{ID: "r2", ServiceID: "s9", To: digest1}); err != nil {
		t.Fatal(err)
	}
	rec, _ := e.config(recordName("deploy", "s1", "r1"))
	for name, omits := range map[string]bool{"list with data": false, "list without data, so inspect": true} {
		e.with(func() { e.listOmitsData = omits })
		got, err := s.InFlight(ctx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) != 1 {
			t.Fatalf("%s: in flight %+v, want r1 only", name, got)
		}
		g := got[0]
		if g.ID != r.ID || g.ServiceID != r.ServiceID || g.ServiceName != r.ServiceName || g.From != r.From || g.To != r.To ||
			!g.Started.Equal(r.Started) || !g.Recorded.Equal(rec.CreatedAt) || g.Recorded.IsZero() {
			t.Errorf("%s: read back %+v, want %+v recorded at %s", name, g, r, rec.CreatedAt)
		}
	}

	// How far it got is read back with it, the record's data unchanged.
	if err := s.Reached(ctx, r, deploy.StagePrepared); err != nil {
		t.Fatalf("Reached: %v", err)
	}
	if got, err := s.InFlight(ctx); err != nil || len(got) != 1 || got[0].Stage != deploy.StagePrepared || got[0].To != r.To {
		t.Errorf("after Reached: %+v, %v; want r1 at %q", got, err, deploy.StagePrepared)
	}
	if err := s.Reached(ctx, deploy.Release{ID: "gone", ServiceID: "s1"}, deploy.StagePrepared); !errors.Is(err, deploy.ErrNotFound) {
		t.Errorf("Reached on no record: %v, want ErrNotFound", err)
	}

	if err := s.End(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got, err := s.InFlight(ctx); err != nil || len(got) != 0 {
		t.Errorf("after End: %+v, %v", got, err)
	}
	if err := s.End(ctx, r); err != nil {
		t.Errorf("End twice: %v", err)
	}
	if _, ok := e.config(recordName("deploy", "s9", "r2")); !ok {
		t.Error("the other stack's record went too")
	}

	// Docker gone while recording: the deploy must know the record may or
	// may not be there.
	e.cut("POST /configs/create", 1)
	if err := s.Begin(ctx, r); !errors.Is(err, deploy.ErrUnavailable) {
		t.Errorf("Begin on a cut connection: %v, want ErrUnavailable", err)
	}
}

func TestMemo(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	ctx := context.Background()
	if _, ok, err := s.Recall(ctx, "r1", "slack"); ok || err != nil {
		t.Errorf("recall before remember: %v, %v", ok, err)
	}
	if err := s.Remember(ctx, "r1", "slack", "C123/1700000000.000100"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remember(ctx, "r1", "rollbar", "deploy-42"); err != nil {
		t.Fatal(err)
	}
	for _, omits := range []bool{false, true} {
		e.with(func() { e.listOmitsData = omits })
		if v, ok, err := s.Recall(ctx, "r1", "slack"); v != "C123/1700000000.000100" || !ok || err != nil {
			t.Errorf("recall (list without data %v): %q, %v, %v", omits, v, ok, err)
		}
	}
	if err := s.Drop(ctx, "r1", "slack"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Recall(ctx, "r1", "slack"); ok {
		t.Error("recalled a dropped memo")
	}
	if v, ok, _ := s.Recall(ctx, "r1", "rollbar"); v != "deploy-42" || !ok {
		t.Errorf("the other key went with the drop: %q, %v", v, ok)
	}
	if err := s.Drop(ctx, "r1", "slack"); err != nil {
		t.Errorf("drop twice: %v", err)
	}
}

func TestMigrated(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	ctx := context.Background()
	const key, other = "g:shop/web", "g:blog/web"
	if ok, err := s.Migrated(ctx, key, digest1); ok || err != nil {
		t.Errorf("migrated before any mark: %v, %v", ok, err)
	}
	for _, m := range []struct{ key, digest string }{{key, digest1}, {other, digest1}, {key, digest1}} {
		if err := s.MarkMigrated(ctx, m.key, m.digest); err != nil {
			t.Fatal(err)
		}
	}
	if ok, _ := s.Migrated(ctx, key, digest1); !ok {
		t.Error("not migrated after the mark")
	}
	if ok, _ := s.Migrated(ctx, key, digest2); ok {
		t.Error("migrated for a digest never marked")
	}
	// Only the newest digest per key is kept: a tag moving back runs the
	// old version's migrations again.
	if err := s.MarkMigrated(ctx, key, digest2); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Migrated(ctx, key, digest1); ok {
		t.Error("the older record stayed")
	}
	if ok, _ := s.Migrated(ctx, key, digest2); !ok {
		t.Error("the new record is missing")
	}
	if ok, _ := s.Migrated(ctx, other, digest1); !ok {
		t.Error("another key's record went")
	}
}

func TestPromoted(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	ctx := context.Background()
	if got, err := s.Promoted(ctx, "s1"); got != nil || err != nil {
		t.Errorf("promoted before any record: %v, %v", got, err)
	}
	if err := s.SetPromoted(ctx, "s1", []string{digest2, digest1}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPromoted(ctx, "s2", []string{digest1}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPromoted(ctx, "s1", []string{digest1, digest2}); err != nil {
		t.Fatal(err)
	}
	for _, omits := range []bool{false, true} {
		e.with(func() { e.listOmitsData = omits })
		if got, err := s.Promoted(ctx, "s1"); !slices.Equal(got, []string{digest1, digest2}) || err != nil {
			t.Errorf("promoted (list without data %v): %v, %v", omits, got, err)
		}
	}
	var records []string
	for _, n := range e.configNames() {
		if strings.HasPrefix(n, "updater-promoted-s1") {
			records = append(records, n)
		}
	}
	if len(records) != 1 {
		t.Errorf("records of s1: %v, want the newest only", records)
	}

	// An updater died between writing a new record and removing the old:
	// the newer one counts, whatever the order of the list.
	e.with(func() {
		id := e.newID("zzz") // listed last: the older record comes first
		e.configs[id] = &swarm.Config{ID: id, Meta: swarm.Meta{CreatedAt: e.tick()}, Spec: swarm.ConfigSpec{
			Annotations: swarm.Annotations{Name: "updater-promoted-s1-new", Labels: map[string]string{
				kindLabel: kindPromoted, serviceLabel: "s1", scopeLabel: s.scope()}},
			Data: []byte(digest2 + "\n")}}
	})
	if got, _ := s.Promoted(ctx, "s1"); !slices.Equal(got, []string{digest2}) {
		t.Errorf("promoted with two records: %v, want the newer record's", got)
	}
}

// One record that can't be used must not stop the others: it is set aside
// (logged once, named for the readiness page), and the good one resumes.
func TestInFlightSetsAsideBadRecords(t *testing.T) {
	e := newEngine(t)
	var logs bytes.Buffer
	s := e.client(t, Config{Stack: "shop"})
	s.cfg.Log = slog.New(slog.NewTextHandler(&logs, nil))
	ctx := context.Background()
	good := deploy.Release{ID: "r1", ServiceID: "s1", ServiceName: "shop_web", Ref: appRepo + ":v1", From: digest1, To: digest2}
	if err := s.Begin(ctx, good); err != nil {
		t.Fatal(err)
	}
	bad := map[string]string{
		"updater-deploy-s2-garbage":  `{"id": "r2", "service_id": `,
		"updater-deploy-s3-noid":     `{"service_id": "s3", "to_digest": "` + digest1 + `"}`,
		"updater-deploy-s4-other":    `{"id": "r4", "service_id": "s1", "to_digest": "` + digest1 + `"}`,
		"updater-deploy-s5-nodigest": `{"id": "r5", "service_id": "s5", "to_digest": "latest"}`,
	}
	for name, data := range bad {
		svc := strings.Split(name, "-")[2]
		if _, err := s.api.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
			Annotations: swarm.Annotations{Name: name, Labels: map[string]string{kindLabel: kindInFlight, serviceLabel: svc, scopeLabel: s.scope()}},
			Data:        []byte(data),
		}}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		got, err := s.InFlight(ctx)
		if err != nil {
			t.Fatalf("InFlight with bad records beside a good one: %v, want the good one", err)
		}
		if len(got) != 1 || got[0].ID != "r1" {
			t.Fatalf("in flight %+v, want r1 only", got)
		}
	}
	aside := s.SetAside()
	if len(aside) != len(bad) {
		t.Fatalf("set aside %q, want the %d bad records", aside, len(bad))
	}
	for name, why := range map[string]string{
		"updater-deploy-s2-garbage": "not a deploy record", "updater-deploy-s3-noid": "no deploy id",
		"updater-deploy-s4-other": `about service "s1" but labelled for "s4"`, "updater-deploy-s5-nodigest": `digest "latest"`,
	} {
		if !slices.ContainsFunc(aside, func(a string) bool { return strings.Contains(a, name) && strings.Contains(a, why) }) {
			t.Errorf("set aside %q lacks %s (%s)", aside, name, why)
		}
	}
	for name := range bad {
		if !slices.ContainsFunc(aside, func(a string) bool { return strings.Contains(a, name) }) {
			t.Errorf("set aside %q lacks %s", aside, name)
		}
		if n := strings.Count(logs.String(), "record="+name); n != 1 {
			t.Errorf("%s logged %d times over two reads, want once", name, n)
		}
		if _, ok := e.config(name); !ok {
			t.Errorf("%s was removed; it stays for a person to look at", name)
		}
	}
	// A person removes one: it is no longer named.
	if _, err := s.api.ConfigRemove(ctx, "updater-deploy-s2-garbage", client.ConfigRemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.InFlight(ctx); err != nil {
		t.Fatal(err)
	}
	if aside := s.SetAside(); len(aside) != len(bad)-1 || slices.ContainsFunc(aside, func(a string) bool { return strings.Contains(a, "s2-garbage") }) {
		t.Errorf("after removing s2-garbage, set aside %q", aside)
	}
}

// A failed digest's reason is capped: a hook's output can be long, and the
// record is read on every cycle.
func TestFailedReasonCapped(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	long := strings.Repeat("é", 5000) // 10,000 bytes, two per character
	if err := s.MarkFailed(context.Background(), "s1", digest1, long); err != nil {
		t.Fatal(err)
	}
	c, _ := e.config(recordName("failed", "s1", digest1))
	if n := len(c.Spec.Data); n > maxReason+1 {
		t.Errorf("reason kept %d bytes, want at most %d", n, maxReason+1)
	}
	if !utf8.Valid(c.Spec.Data) || !strings.HasSuffix(string(c.Spec.Data), "(cut)\n") {
		t.Errorf("reason %q…: want valid UTF-8 that says it was cut", c.Spec.Data[len(c.Spec.Data)-20:])
	}
	// An invalid byte early in a long reason (a hook's log tail) is kept:
	// only a character cut in two at the end goes.
	early := "abc\xffdef" + strings.Repeat("x", 5000)
	if err := s.MarkFailed(context.Background(), "s2", digest1, early); err != nil {
		t.Fatal(err)
	}
	if c, _ := e.config(recordName("failed", "s2", digest1)); len(c.Spec.Data) < maxReason-16 {
		t.Errorf("a reason with an early invalid byte kept %d bytes, want about %d", len(c.Spec.Data), maxReason)
	}
	if err := s.MarkFailed(context.Background(), "s1", digest2, "short"); err != nil {
		t.Fatal(err)
	}
	if c, _ := e.config(recordName("failed", "s1", digest2)); string(c.Spec.Data) != "short\n" {
		t.Errorf("a short reason became %q", c.Spec.Data)
	}
}

// The record store's failures: a refused removal or list is the caller's
// error, except after a replacement is written, when only the newest
// counts and an old record left behind goes next time.
func TestRecordStoreErrors(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{})
	ctx := context.Background()
	const refused = "raft: no leader"
	r := deploy.Release{ID: "r1", ServiceID: "s1", To: digest1}
	if err := s.Begin(ctx, r); err != nil {
		t.Fatal(err)
	}
	e.fail("DELETE /configs/"+recordName("deploy", "s1", "r1"), 500, refused, 1)
	if err := s.End(ctx, r); err == nil || !strings.Contains(err.Error(), refused) {
		t.Errorf("End with the removal refused: %v", err)
	}
	if err := s.Begin(ctx, r); err == nil {
		t.Error("Begin of a deploy already recorded gave no error")
	}
	if err := s.Remember(ctx, "r1", "slack", "ts"); err != nil {
		t.Fatal(err)
	}
	e.fail("DELETE /configs/"+recordName("memo", "r1", "slack"), 500, refused, 1)
	if err := s.Drop(ctx, "r1", "slack"); err == nil {
		t.Error("Drop with the removal refused gave no error")
	}
	if err := s.MarkFailed(ctx, "s1", digest1, "x"); err != nil {
		t.Fatal(err)
	}
	failed, _ := e.config(recordName("failed", "s1", digest1))
	e.fail("DELETE /configs/"+failed.ID, 500, refused, 1) // removed by ID, as listed
	if err := s.Forget(ctx, "s1"); err == nil || !strings.Contains(err.Error(), refused) {
		t.Errorf("Forget with the removal refused: %v", err)
	}

	if err := s.SetPromoted(ctx, "s2", []string{digest1}); err != nil {
		t.Fatal(err)
	}
	old, _ := e.config(recordName(kindPromoted, "s2", promotedKey(digest1)))
	e.fail("DELETE /configs/"+old.ID, 500, refused, 1)
	if err := s.SetPromoted(ctx, "s2", []string{digest2}); err != nil {
		t.Errorf("SetPromoted with the old record's removal refused: %v (the new one is written)", err)
	}
	if got, _ := s.Promoted(ctx, "s2"); !slices.Equal(got, []string{digest2}) {
		t.Errorf("promoted %v, want the new record's", got)
	}
	e.fail("GET /configs", 500, refused, 1)
	if err := s.SetPromoted(ctx, "s2", []string{digest1, digest2}); err != nil {
		t.Errorf("SetPromoted with the list refused after the write: %v", err)
	}
	e.fail("GET /configs", 500, refused, 1)
	if _, err := s.Migrated(ctx, "g:shop/web", digest1); err == nil {
		t.Error("Migrated with the list refused gave no error")
	}
	e.with(func() { e.listOmitsData = true })
	memo, _ := e.config(recordName("memo", "r1", "slack"))
	e.fail("GET /configs/"+memo.ID, 500, refused, 1)
	if _, _, err := s.Recall(ctx, "r1", "slack"); err == nil || !strings.Contains(err.Error(), refused) {
		t.Errorf("Recall with the record's inspect refused: %v", err)
	}
}

// promotedKey is what SetPromoted names a record of digests after.
func promotedKey(digests ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(digests, "\n") + "\n"))
	return hex.EncodeToString(sum[:])
}

// The records of a service that is gone: Recorded names it, ForgetService
// removes its failed digests, promoted digests and migration record, and
// leaves another service's and a group's alone.
func TestForgetService(t *testing.T) {
	e := newEngine(t)
	s := e.client(t, Config{Stack: "shop"})
	ctx := context.Background()
	for _, id := range []string{"gone", "kept"} {
		if err := s.MarkFailed(ctx, id, digest1, "bad"); err != nil {
			t.Fatal(err)
		}
		if err := s.SetPromoted(ctx, id, []string{digest2}); err != nil {
			t.Fatal(err)
		}
		if err := s.MarkMigrated(ctx, "service:"+id, digest2); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.MarkMigrated(ctx, "group:shop/g", digest2); err != nil {
		t.Fatal(err)
	}
	ids, err := s.Recorded(ctx)
	if slices.Sort(ids); err != nil || !slices.Equal(ids, []string{"gone", "kept"}) {
		t.Fatalf("Recorded = %v, %v; want gone and kept", ids, err)
	}
	if err := s.ForgetService(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	failed, _ := s.Failed(ctx)
	promoted, _ := s.Promoted(ctx, "gone")
	migrated, _ := s.Migrated(ctx, "service:gone", digest2)
	if len(failed["gone"]) != 0 || len(promoted) != 0 || migrated {
		t.Errorf("after ForgetService: failed %v, promoted %v, migrated %v; want none", failed["gone"], promoted, migrated)
	}
	keptPromoted, _ := s.Promoted(ctx, "kept")
	keptMigrated, _ := s.Migrated(ctx, "service:kept", digest2)
	groupMigrated, _ := s.Migrated(ctx, "group:shop/g", digest2)
	if !failed["kept"][digest1] || len(keptPromoted) != 1 || !keptMigrated || !groupMigrated {
		t.Errorf("another service's or the group's records went too")
	}
}
