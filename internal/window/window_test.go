package window

import (
	"strings"
	"testing"
	"time"
)

// The tests run on a fake clock: Eligible takes the time, so each case
// names the instant it asks about.

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func policy(t *testing.T, windows, freezes string) Policy {
	t.Helper()
	w, err := ParseWindows("UPDATER_WINDOWS", windows)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ParseFreezes("UPDATER_FREEZE", freezes)
	if err != nil {
		t.Fatal(err)
	}
	return Policy{Windows: w, Freezes: f}
}

type check struct {
	at   string // RFC 3339
	ok   bool
	next string // RFC 3339, when !ok; "" for none found
	why  string // substring of why, when !ok
}

func run(t *testing.T, p Policy, checks []check) {
	t.Helper()
	for _, c := range checks {
		at := utc(c.at)
		ok, next, why := p.Eligible(at)
		if ok != c.ok {
			t.Errorf("Eligible(%s) ok = %v, want %v (next %s, why %q)", c.at, ok, c.ok, next.UTC().Format(time.RFC3339), why)
			continue
		}
		if ok {
			if !next.Equal(at) || why != "" {
				t.Errorf("Eligible(%s) = ok, next %s, why %q; want next = at, no why", c.at, next, why)
			}
			continue
		}
		var want time.Time
		if c.next != "" {
			want = utc(c.next)
		}
		if !next.Equal(want) {
			t.Errorf("Eligible(%s) next = %s, want %s (why %q)", c.at, next.UTC().Format(time.RFC3339), c.next, why)
		}
		if !strings.Contains(why, c.why) {
			t.Errorf("Eligible(%s) why = %q, want it to contain %q", c.at, why, c.why)
		}
	}
}

func TestNothingSetIsAlwaysEligible(t *testing.T) {
	run(t, policy(t, "", " ; "), []check{
		{at: "2026-12-01T15:00:00Z", ok: true},
		{at: "2027-03-28T01:30:00Z", ok: true},
	})
}

// 2026-11-30 is a Monday; Paris is on CET (UTC+1).
func TestWindowWeekdayEveningParis(t *testing.T) {
	p := policy(t, "CRON_TZ=Europe/Paris 0 22 * * 1-5 2h", "")
	run(t, p, []check{
		{at: "2026-11-30T15:00:00Z", next: "2026-11-30T21:00:00Z",
			why: "held until Mon 22:00 CET: outside the window CRON_TZ=Europe/Paris 0 22 * * 1-5 2h"},
		{at: "2026-11-30T21:00:00Z", ok: true},                                                      // the start is inside
		{at: "2026-11-30T22:59:59Z", ok: true},                                                      // the last second
		{at: "2026-11-30T23:00:00Z", next: "2026-12-01T21:00:00Z", why: "held until Tue 22:00 CET"}, // the end is outside
		{at: "2026-12-04T22:30:00Z", ok: true},                                                      // Friday's window runs into Saturday
		{at: "2026-12-04T23:30:00Z", next: "2026-12-07T21:00:00Z", why: "held until Mon 22:00 CET"},
	})
}

func TestSeveralWindows(t *testing.T) {
	p := policy(t, "0 9 * * * 1h; 0 17 * * * 30m", "")
	run(t, p, []check{
		{at: "2026-12-01T09:30:00Z", ok: true},
		{at: "2026-12-01T17:10:00Z", ok: true},
		{at: "2026-12-01T12:00:00Z", next: "2026-12-01T17:00:00Z",
			why: "held until Tue 17:00 UTC: outside every window (0 9 * * * 1h; 0 17 * * * 30m)"},
		{at: "2026-12-01T17:30:00Z", next: "2026-12-02T09:00:00Z"},
	})
}

func TestFreezeDateRange(t *testing.T) {
	p := policy(t, "", "2026-12-20..2027-01-04")
	run(t, p, []check{
		{at: "2026-12-19T23:59:59Z", ok: true},
		{at: "2026-12-20T00:00:00Z", next: "2027-01-05T00:00:00Z",
			why: "held until Tue 5 Jan 2027 00:00 UTC: inside the freeze 2026-12-20..2027-01-04"},
		{at: "2027-01-04T23:59:59Z", next: "2027-01-05T00:00:00Z", why: "held until Tue 00:00 UTC"},
		{at: "2027-01-05T00:00:00Z", ok: true},
	})
}

// A zone moves the days: Christmas in Auckland (NZDT, UTC+13) starts on
// the 24th in UTC.
func TestFreezeDateRangeInZone(t *testing.T) {
	p := policy(t, "", "CRON_TZ=Pacific/Auckland 2026-12-25")
	run(t, p, []check{
		{at: "2026-12-24T10:59:59Z", ok: true},
		{at: "2026-12-24T11:00:00Z", next: "2026-12-25T11:00:00Z", why: "held until Sat 00:00 NZDT"},
		{at: "2026-12-25T11:00:00Z", ok: true},
	})
}

// A freeze inside a window's time closes it early; the digest waits for
// the next window that the freeze does not cover.
func TestFreezeOverlappingWindow(t *testing.T) {
	p := policy(t, "0 22 * * * 2h", "0 23 * * * 2h; 2026-12-02")
	run(t, p, []check{
		{at: "2026-12-01T22:30:00Z", ok: true},
		// Frozen to 01:00, the window has closed at 00:00, the 2nd is frozen
		// all day: the 3rd at 22:00.
		{at: "2026-12-01T23:00:00Z", next: "2026-12-03T22:00:00Z",
			why: "held until Thu 22:00 UTC: inside the freeze 0 23 * * * 2h, then inside the freeze 2026-12-02, then outside the window 0 22 * * * 2h"},
		{at: "2026-12-03T22:59:00Z", ok: true},
	})
}

// Windows that last longer than their period overlap into one; as a
// freeze they never end.
func TestWindowLongerThanItsPeriod(t *testing.T) {
	always := policy(t, "0 * * * * 90m", "")
	for at := utc("2026-12-01T00:00:00Z"); at.Before(utc("2026-12-03T00:00:00Z")); at = at.Add(7 * time.Minute) {
		if ok, next, why := always.Eligible(at); !ok {
			t.Fatalf("Eligible(%s) = held until %s (%s); hourly 90m windows cover every moment", at, next, why)
		}
	}
	run(t, policy(t, "0 */2 * * * 3h", "0 12 * * * 1h"), []check{
		{at: "2026-12-01T11:59:00Z", ok: true},
		{at: "2026-12-01T12:30:00Z", next: "2026-12-01T13:00:00Z", why: "inside the freeze 0 12 * * * 1h"},
	})
	start := time.Now()
	run(t, policy(t, "", "0 * * * * 90m"), []check{
		{at: "2026-12-01T12:30:00Z", next: "", why: "held: no moment inside a window and outside every freeze up to Thu 2 Dec 2027 12:30 UTC (the search stops 366 days ahead at most): inside the freeze 0 * * * * 90m"},
	})
	// The worst case: a freeze that moves a minute per step, to the step
	// budget.
	run(t, policy(t, "", "* * * * * 2m"), []check{
		{at: "2026-12-01T12:30:00Z", next: "", why: "held: no moment"},
	})
	t.Logf("never-ending freezes answered in %s", time.Since(start))
}

// Europe/Paris springs forward on 2026-03-29: at 02:00 CET the clock
// reads 03:00 CEST, so 02:30 never comes. The window opens at the jump and
// lasts its 2h of elapsed time; robfig alone would skip that night.
func TestDSTSpringForward(t *testing.T) {
	const spec = "CRON_TZ=Europe/Paris 30 2 * * * 2h"
	run(t, policy(t, spec, ""), []check{
		{at: "2026-03-28T01:29:00Z", next: "2026-03-28T01:30:00Z", why: "held until Sat 02:30 CET"}, // the day before: 02:30 CET
		{at: "2026-03-28T03:29:00Z", ok: true},
		{at: "2026-03-29T00:30:00Z", next: "2026-03-29T01:00:00Z", why: "held until Sun 03:00 CEST"}, // 01:30 CET
		{at: "2026-03-29T01:00:00Z", ok: true},                                                       // 03:00 CEST, the jump
		{at: "2026-03-29T02:59:59Z", ok: true},                                                       // 04:59:59 CEST
		{at: "2026-03-29T03:00:00Z", next: "2026-03-30T00:30:00Z", why: "held until Mon 02:30 CEST"},
	})
	// The same as a freeze holds that night too.
	run(t, policy(t, "", spec), []check{
		{at: "2026-03-29T01:30:00Z", next: "2026-03-29T03:00:00Z", why: "held until Sun 05:00 CEST: inside the freeze " + spec},
		{at: "2026-03-29T03:00:00Z", ok: true},
	})
}

// Europe/Paris falls back on 2026-10-25: at 03:00 CEST the clock reads
// 02:00 CET, so 02:30 comes twice. The window opens at the first and lasts
// 2h of elapsed time, through the repeated hour.
func TestDSTFallBack(t *testing.T) {
	p := policy(t, "CRON_TZ=Europe/Paris 30 2 * * * 2h", "")
	run(t, p, []check{
		{at: "2026-10-25T00:29:00Z", next: "2026-10-25T00:30:00Z", why: "held until Sun 02:30 CEST"},
		{at: "2026-10-25T00:30:00Z", ok: true}, // 02:30 CEST
		{at: "2026-10-25T01:45:00Z", ok: true}, // 02:45 CET, the second time
		{at: "2026-10-25T02:29:59Z", ok: true},
		{at: "2026-10-25T02:30:00Z", next: "2026-10-26T01:30:00Z", why: "held until Mon 02:30 CET"},
	})
	// A start in the repeated hour counts once: 02:00 CEST opens, 02:00 CET
	// does not.
	run(t, policy(t, "CRON_TZ=Europe/Paris 0 * * * * 10m", ""), []check{
		{at: "2026-10-25T00:05:00Z", ok: true},                                                      // 02:05 CEST
		{at: "2026-10-25T01:05:00Z", next: "2026-10-25T02:00:00Z", why: "held until Sun 03:00 CET"}, // 02:05 CET
	})
}

// A yearly window is found a year ahead; a freeze longer than the horizon
// gives no answer.
func TestHorizon(t *testing.T) {
	run(t, policy(t, "@yearly 1h", ""), []check{
		{at: "2026-01-01T01:00:00Z", next: "2027-01-01T00:00:00Z", why: "held until Fri 1 Jan 2027 00:00 UTC"},
	})
	// Two freezes end to end are crossed one after the other.
	run(t, policy(t, "", "2026-01-01..2026-12-31; 2027-01-01..2027-06-30"), []check{
		{at: "2026-01-01T01:00:00Z", next: "", why: "held: no moment inside a window and outside every freeze up to Sat 2 Jan 2027 01:00 UTC " +
			"(the search stops 366 days ahead at most): inside the freeze 2026-01-01..2026-12-31, then inside the freeze 2027-01-01..2027-06-30"},
		{at: "2026-07-01T00:00:00Z", next: "2027-07-01T00:00:00Z", why: "inside the freeze 2026-01-01..2026-12-31, then inside the freeze 2027-01-01..2027-06-30"},
	})
}

func TestMerge(t *testing.T) {
	global := policy(t, "0 22 * * * 2h", "2026-12-24")
	service := policy(t, "0 6 * * * 1h", "2026-12-31")
	m := Merge(global, service)
	if len(m.Windows) != 1 || m.Windows[0].String() != "0 6 * * * 1h" {
		t.Errorf("merged windows = %v, want the service's own", m.Windows)
	}
	if len(m.Freezes) != 2 || m.Freezes[0].String() != "2026-12-24" || m.Freezes[1].String() != "2026-12-31" {
		t.Errorf("merged freezes = %v, want both", m.Freezes)
	}
	if m := Merge(global, Policy{}); len(m.Windows) != 1 || m.Windows[0].String() != "0 22 * * * 2h" {
		t.Errorf("merged windows without the service's = %v, want the global ones", m.Windows)
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		freeze      bool
		value, want string
	}{
		{false, "0 22 * * 1-5", "no DURATION after the schedule"},
		{false, "0 22 * * 1-5 2x", `the last field, "2x", is not one`},
		{false, "0 22 * * 1-5 30s", "out of bounds"},
		{false, "0 22 * * 1-5 367d", "out of bounds"},
		{false, "0 22 * * 2h", "not a schedule"},
		{false, "0 0 22 * * 1-5 2h", "not a schedule"}, // a seconds field
		{false, "@every 1h 2h", "@every has no fixed start"},
		{false, "CRON_TZ=Mars/Olympus 0 22 * * * 2h", `unknown time zone "Mars/Olympus"`},
		{false, "CRON_TZ= 0 22 * * * 2h", "empty time zone"},
		{false, "CRON_TZ=UTC", "a time zone with nothing after it"},
		{false, "0 0 30 2 * 1h", "no date matches"},
		{false, "0 22 * * * 2h; oops", "no DURATION"},
		{false, "2026-12-20..2027-01-04", "a date range is a freeze"},
		{true, "2027-01-04..2026-12-20", "ends (2026-12-20) before it starts (2027-01-04)"},
		{true, "2026-02-30", "not a date: 2026-02-30"},
		{true, "2026-01-01..2027-01-02", "longer than 366 days"},
		{true, "0000-01-01..9999-12-31", "longer than 366 days"},
	} {
		name, parse, form := "updater.window", ParseWindows, "want CRON DURATION"
		if c.freeze {
			name, parse, form = "updater.freeze", ParseFreezes, "want CRON DURATION or a date range"
		}
		_, err := parse(name, c.value)
		if err == nil {
			t.Errorf("%s=%q parsed; want an error with %q", name, c.value, c.want)
			continue
		}
		msg := err.Error()
		for _, part := range []string{name + "=", c.value, c.want, form} {
			if !strings.Contains(msg, part) {
				t.Errorf("%s=%q: error %q lacks %q", name, c.value, msg, part)
			}
		}
	}
}

func TestParseForms(t *testing.T) {
	ws, err := ParseFreezes("UPDATER_FREEZE", "  TZ=America/New_York   0 18 * * 5   63h ;2026-12-24;@weekly 3d; ")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range ws {
		got = append(got, w.String()+" in "+w.Location().String())
	}
	want := []string{"TZ=America/New_York 0 18 * * 5 63h in America/New_York", "2026-12-24 in UTC", "@weekly 3d in UTC"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("parsed %q, want %q", got, want)
	}
}

// cover answers with the end of the window that started last, so a long
// window on a frequent schedule is crossed in one step, not one per start.
func TestCoverEndsWithTheLatestWindow(t *testing.T) {
	ws, err := ParseFreezes("UPDATER_FREEZE", "0 * * * * 150m")
	if err != nil {
		t.Fatal(err)
	}
	in, end := ws[0].cover(utc("2026-12-01T12:30:00Z"))
	if want := utc("2026-12-01T14:30:00Z"); !in || !end.Equal(want) {
		t.Errorf("cover(12:30) = %v, %s; want true, %s (the 12:00 window's end)", in, end, want)
	}
}

// What a cycle pays per held service: a weekday window and a holiday
// freeze, asked on a Saturday (held until Monday), and inside the window.
func BenchmarkEligible(b *testing.B) {
	w, _ := ParseWindows("UPDATER_WINDOWS", "CRON_TZ=Europe/Paris 0 22 * * 1-5 2h")
	f, _ := ParseFreezes("UPDATER_FREEZE", "2026-12-20..2027-01-04; CRON_TZ=Europe/Paris 0 18 * * 5 63h")
	p := Policy{Windows: w, Freezes: f}
	for _, c := range []struct{ name, at string }{{"held", "2026-12-05T12:00:00Z"}, {"open", "2026-12-01T21:30:00Z"}} {
		at := utc(c.at)
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				p.Eligible(at)
			}
		})
	}
}
