package schedule

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// A panicking cycle is logged and the schedule goes on; Run returns once
// ctx ends and the running cycle has returned.
func TestRunRecoversPanicsAndStops(t *testing.T) {
	var (
		mu    sync.Mutex
		buf   bytes.Buffer
		calls atomic.Int32
	)
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil))
	ctx, cancel := context.WithCancel(t.Context())
	second := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, "@every 1s", log, func(context.Context) {
			switch calls.Add(1) {
			case 1:
				panic("boom")
			case 2:
				close(second)
			}
		})
	}()
	select {
	case <-second:
	case <-time.After(10 * time.Second):
		t.Fatal("no second tick after a panicking first one")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after ctx ended")
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(buf.String(), "boom") || !strings.Contains(buf.String(), "level=ERROR") {
		t.Fatalf("panic not logged as an error:\n%s", buf.String())
	}
}

func TestRunRefusesBadSpec(t *testing.T) {
	err := Run(t.Context(), "every minute", slog.Default(), func(context.Context) {})
	if err == nil || !strings.Contains(err.Error(), "every minute") {
		t.Fatalf("err = %v, want one naming the spec", err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// Backups follows the labels: a scheduled service gets runs, a service
// whose schedule is gone gets none.
func TestBackupsFollowLabels(t *testing.T) {
	ran := make(chan string, 16)
	b := NewBackups(t.Context(), slog.New(slog.NewTextHandler(io.Discard, nil)), func(_ context.Context, tg deploy.Target) {
		ran <- tg.Name
	})
	defer b.Stop()
	withSchedule := func(name, spec string) deploy.Target {
		return deploy.Target{ID: name, Name: name, Hooks: deploy.Hooks{Backup: &deploy.Hook{Command: []string{"true"}}, BackupSchedule: spec}}
	}
	b.Sync([]deploy.Target{withSchedule("db", "@every 1s"), {ID: "web", Name: "web"}})
	select {
	case name := <-ran:
		if name != "db" {
			t.Fatalf("backup ran for %s, want db", name)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no scheduled backup ran")
	}
	if len(b.entries) != 1 {
		t.Fatalf("%d entries, want 1", len(b.entries))
	}
	b.Sync([]deploy.Target{withSchedule("db", "")})
	if len(b.entries) != 0 || len(b.cron.Entries()) != 0 {
		t.Fatalf("entries %v / cron %d after the schedule was removed, want none", b.entries, len(b.cron.Entries()))
	}
}

// Parse takes what robfig/cron runs as written, and refuses, with why,
// what it would run otherwise, never, or by panicking.
func TestParse(t *testing.T) {
	for _, spec := range []string{"*/5 * * * *", "0 3 * * mon-fri", "@hourly", "@every 1s", "@every 1h30m",
		"CRON_TZ=UTC 0 3 * * *", "TZ=UTC @every 10s", "0 3 29 2 *"} {
		if _, err := Parse(spec); err != nil {
			t.Errorf("Parse(%q): %v", spec, err)
		}
	}
	for spec, want := range map[string]string{
		"* * * *":                            "not a schedule",
		"0 * * * * *":                        "not a schedule", // seconds are not a field here
		"@hourlyy":                           "not a schedule",
		"@every 1 minute":                    "not a schedule",
		"CRON_TZ=Nowhere/Atlantis 0 * * * *": "not a schedule",
		"TZ=UTC":                             "time zone without a schedule",
		"CRON_TZ=Europe/Berlin":              "time zone without a schedule",
		"@every 500ms":                       `"@every 1s" or longer`,
		"@every -1m":                         `"@every 1s" or longer`,
		"TZ=UTC @every 500ms":                `"@every 1s" or longer`,
		"TZ=UTC @every 1.5s":                 "whole number of seconds",
		"0 0 30 2 *":                         "never run",
	} {
		if _, err := Parse(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error saying %q", spec, err, want)
		}
	}
}

// Run refuses a schedule Parse refuses, at once.
func TestRunRefusesBadSchedule(t *testing.T) {
	err := Run(t.Context(), "@every 500ms", slog.New(slog.DiscardHandler), func(context.Context) { t.Error("a cycle ran") })
	if err == nil || !strings.Contains(err.Error(), "1s") {
		t.Errorf("Run with @every 500ms: %v, want it refused", err)
	}
}
