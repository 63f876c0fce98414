package window

import (
	"testing"
	"time"
)

// FuzzPolicy parses anything as windows and freezes without panicking,
// and checks what Eligible promises on what parses: eligible means now;
// held with a next means next is later, eligible, and the moment before
// it is not.
func FuzzPolicy(f *testing.F) {
	f.Add("CRON_TZ=Europe/Paris 0 22 * * 1-5 2h", "2026-12-20..2027-01-04", int64(0))
	f.Add("CRON_TZ=Europe/Paris 30 2 * * * 2h", "", int64(10_000_000))
	f.Add("0 * * * * 90m", "0 12 * * * 1h", int64(3600))
	f.Add("0 9 * * * 1h; 0 17 * * * 30m", "TZ=America/New_York 0 18 * * 5 63h", int64(-86400))
	f.Add("@weekly 3d", "CRON_TZ=Pacific/Auckland 2026-12-25", int64(123456))
	f.Fuzz(func(t *testing.T, windows, freezes string, offset int64) {
		w, err := ParseWindows("UPDATER_WINDOWS", windows)
		if err != nil {
			return
		}
		fr, err := ParseFreezes("UPDATER_FREEZE", freezes)
		if err != nil {
			return
		}
		p := Policy{Windows: w, Freezes: fr}
		// Within about ten years of the tests' dates.
		at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(offset%(5*366*86400)) * time.Second)
		ok, next, why := p.Eligible(at)
		if ok {
			if !next.Equal(at) || why != "" {
				t.Fatalf("eligible at %s with next %s, why %q", at, next, why)
			}
			return
		}
		if why == "" {
			t.Fatalf("held at %s without a why", at)
		}
		if next.IsZero() {
			return
		}
		if !next.After(at) {
			t.Fatalf("held at %s until %s, not later", at, next)
		}
		if ok, n2, why := p.Eligible(next); !ok {
			t.Fatalf("held at %s until %s (%q), but then held until %s: %s", at, next, why, n2, why)
		}
		if before := next.Add(-time.Nanosecond); !before.Before(at) {
			if ok, _, _ := p.Eligible(before); ok {
				t.Fatalf("held at %s until %s, but eligible at %s already", at, next, before)
			}
		}
	})
}

// FuzzCooldown: whatever parses is within bounds (or none).
func FuzzCooldown(f *testing.F) {
	for _, s := range []string{"24h", "7d", "0", "", "1m", "30d", "59s", "99999999999d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseCooldown("updater.cooldown", s)
		if err == nil && d != 0 && (d < MinCooldown || d > MaxCooldown) {
			t.Fatalf("ParseCooldown(%q) = %s, out of bounds", s, d)
		}
	})
}
