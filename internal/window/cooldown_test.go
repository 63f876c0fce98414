package window

import (
	"strings"
	"testing"
	"time"
)

func TestParseCooldown(t *testing.T) {
	for _, c := range []struct {
		value string
		want  time.Duration
	}{
		{"", 0}, {"0", 0}, {" 24h ", 24 * time.Hour}, {"1m", time.Minute}, {"20s", 20 * time.Second}, {"90m", 90 * time.Minute},
		{"7d", 7 * 24 * time.Hour}, {"30d", MaxCooldown}, {"720h", MaxCooldown},
	} {
		got, err := ParseCooldown("updater.cooldown", c.value)
		if err != nil || got != c.want {
			t.Errorf("ParseCooldown(%q) = %s, %v; want %s", c.value, got, err, c.want)
		}
	}
	for _, bad := range []string{"9s", "31d", "721h", "-1h", "1 day", "d", "24"} {
		_, err := ParseCooldown("updater.cooldown", bad)
		if err == nil {
			t.Errorf("ParseCooldown(%q) accepted", bad)
			continue
		}
		for _, part := range []string{"updater.cooldown=", bad, "want a duration from 10s to 30d"} {
			if !strings.Contains(err.Error(), part) {
				t.Errorf("ParseCooldown(%q): error %q lacks %q", bad, err, part)
			}
		}
	}
}

// On a fake clock: a digest first seen at 10:00 with a 24h cooldown goes
// at 10:00 the next day, not a second before.
func TestCooldownEligible(t *testing.T) {
	seen := utc("2026-11-30T10:00:00Z")
	for _, c := range []struct {
		at   string
		ok   bool
		next string
	}{
		{"2026-11-30T10:00:00Z", false, "2026-12-01T10:00:00Z"},
		{"2026-12-01T09:59:59Z", false, "2026-12-01T10:00:00Z"},
		{"2026-12-01T10:00:00Z", true, "2026-12-01T10:00:00Z"},
		{"2026-12-05T00:00:00Z", true, "2026-12-05T00:00:00Z"},
	} {
		ok, next, why := CooldownEligible(seen, 24*time.Hour, utc(c.at))
		if ok != c.ok || !next.Equal(utc(c.next)) {
			t.Errorf("CooldownEligible(at %s) = %v, %s; want %v, %s", c.at, ok, next, c.ok, c.next)
		}
		if wantWhy := "held until Tue 10:00 UTC: cooldown 24h since the digest was first seen on the tag (Mon 10:00 UTC)"; !ok && why != wantWhy {
			t.Errorf("why = %q, want %q", why, wantWhy)
		} else if ok && why != "" {
			t.Errorf("eligible, yet why = %q", why)
		}
	}
	if _, _, why := CooldownEligible(seen, 90*time.Minute, seen); !strings.Contains(why, "cooldown 1h30m since") {
		t.Errorf("why = %q, want the cooldown written 1h30m", why)
	}
	if ok, _, _ := CooldownEligible(seen, 0, seen); !ok {
		t.Error("no cooldown held a digest")
	}
}
