// Package window reads deploy windows, freezes and cooldowns
// (UPDATER_WINDOWS, UPDATER_FREEZE, updater.window, updater.freeze,
// updater.cooldown) and says when a digest may be deployed. It only
// decides; holding and deploying are the engine's.
package window

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

const (
	// Horizon is how far ahead Eligible looks for the moment a held
	// digest may go: a year and a day, so a yearly window is always found.
	Horizon = 366 * 24 * time.Hour
	// MinDuration and MaxDuration bound a window's or a freeze's DURATION.
	MinDuration = time.Minute
	MaxDuration = 366 * 24 * time.Hour
	// maxSteps bounds Eligible's search besides Horizon: each step jumps
	// to the end of a freeze or to the next window's start. A year of an
	// hourly window each time frozen takes about 17,600; only freezes that
	// follow each other without a gap, minutes apart ("* * * * * 2m"),
	// reach it, and end the search with no answer rather than spin.
	maxSteps = 20_000
)

// Window is one allow window or freeze: a start (a cron schedule or the
// first day of a date range) and how long it lasts from there.
type Window struct {
	spec  string
	loc   *time.Location
	sched cron.Schedule // nil for a date range
	from  time.Time     // a date range's one start
	d     time.Duration
}

// String returns the window as written (spaces normalised).
func (w Window) String() string { return w.spec }

// Location is the zone the window is read in: its CRON_TZ, else UTC.
func (w Window) Location() *time.Location { return w.loc }

const (
	windowForm = `want CRON DURATION, optionally after CRON_TZ=Zone, several separated by ";" ` +
		`(CRON: 5 fields or @daily/@weekly/@monthly/@yearly/@hourly; DURATION: 1m to 366d, like 2h, 90m or 3d), ` +
		`for example "CRON_TZ=Europe/Paris 0 22 * * 1-5 2h"`
	freezeForm = `want CRON DURATION or a date range FROM..TO (inclusive days, YYYY-MM-DD, at most 366 of them), optionally after ` +
		`CRON_TZ=Zone, several separated by ";", for example "2026-12-20..2027-01-04; CRON_TZ=Europe/Paris 0 18 * * 5 63h"`
)

// ParseWindows reads allow windows from the variable or label name (it
// names it in errors). An empty value, or one with only separators, is no
// window: deploys may go at any time.
func ParseWindows(name, value string) ([]Window, error) { return parse(name, value, false) }

// ParseFreezes reads freezes (deny windows) from the variable or label
// name: the allow form, or date ranges.
func ParseFreezes(name, value string) ([]Window, error) { return parse(name, value, true) }

func parse(name, value string, freeze bool) ([]Window, error) {
	form := windowForm
	if freeze {
		form = freezeForm
	}
	var out []Window
	for item := range strings.SplitSeq(value, ";") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		w, err := parseOne(item, freeze)
		if err != nil {
			return nil, fmt.Errorf("%s=%q: %q: %w; %s", name, value, strings.TrimSpace(item), err, form)
		}
		out = append(out, w)
	}
	return out, nil
}

var dateRange = regexp.MustCompile(`^(\d{4}-\d{2}-\d{2})(?:\.\.(\d{4}-\d{2}-\d{2}))?$`)

func parseOne(item string, freeze bool) (Window, error) {
	fields := strings.Fields(item)
	w := Window{loc: time.UTC, spec: strings.Join(fields, " ")}
	if z, ok := cutZone(fields[0]); ok {
		if z == "" {
			return Window{}, errors.New("empty time zone")
		}
		loc, err := time.LoadLocation(z)
		if err != nil {
			return Window{}, fmt.Errorf("unknown time zone %q", z)
		}
		w.loc, fields = loc, fields[1:]
		if len(fields) == 0 {
			return Window{}, errors.New("a time zone with nothing after it")
		}
	}
	if m := dateRange.FindStringSubmatch(fields[0]); m != nil && len(fields) == 1 {
		if !freeze {
			return Window{}, errors.New("a date range is a freeze (UPDATER_FREEZE, updater.freeze), not an allow window")
		}
		return w.dates(m[1], m[2])
	}
	if len(fields) < 2 {
		return Window{}, errors.New("no DURATION after the schedule")
	}
	d, err := ParseDuration(fields[len(fields)-1])
	if err != nil {
		return Window{}, fmt.Errorf("no DURATION after the schedule (the last field, %q, is not one)", fields[len(fields)-1])
	}
	if d < MinDuration || d > MaxDuration {
		return Window{}, fmt.Errorf("duration %s out of bounds (1m to 366d)", fields[len(fields)-1])
	}
	w.d = d
	spec := strings.Join(fields[:len(fields)-1], " ")
	if strings.HasPrefix(spec, "@every") {
		return Window{}, errors.New("@every has no fixed start to open a window at; use cron fields")
	}
	if w.sched, err = parseCron(spec); err != nil {
		return Window{}, err
	}
	// robfig gives up after five years; a schedule that finds nothing
	// then ("0 0 30 2 *") would be a window that never opens.
	if w.sched.Next(onWall(time.Now(), w.loc)).IsZero() {
		return Window{}, errors.New("no date matches the schedule: the window would never open")
	}
	return w, nil
}

// cutZone accepts the two prefixes robfig/cron accepts, so a window reads
// like UPDATER_SCHEDULE.
func cutZone(f string) (string, bool) {
	if z, ok := strings.CutPrefix(f, "CRON_TZ="); ok {
		return z, true
	}
	return strings.CutPrefix(f, "TZ=")
}

// parseCron reads the schedule without its zone: Next then runs on wall
// clock times written as UTC (see onWall), where no hour is skipped or
// repeated, and onClock maps the answer back to the zone.
func parseCron(spec string) (s cron.Schedule, err error) {
	defer func() {
		if p := recover(); p != nil { // robfig panics on some input; this is user input
			s, err = nil, fmt.Errorf("not a schedule (%v)", p)
		}
	}()
	s, err = cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("not a schedule (%w)", err)
	}
	return s, nil
}

func (w Window) dates(from, to string) (Window, error) {
	first, err := time.Parse(time.DateOnly, from)
	if err != nil {
		return Window{}, fmt.Errorf("not a date: %s", from)
	}
	last := first
	if to != "" {
		if last, err = time.Parse(time.DateOnly, to); err != nil {
			return Window{}, fmt.Errorf("not a date: %s", to)
		}
	}
	if last.Before(first) {
		return Window{}, fmt.Errorf("the range ends (%s) before it starts (%s)", to, from)
	}
	// Inclusive days: from the first midnight to the midnight after the
	// last day, on the zone's clock.
	w.from = onClock(first, w.loc)
	w.d = onClock(last.AddDate(0, 0, 1), w.loc).Sub(w.from)
	if w.d > MaxDuration {
		// As for a DURATION: past a year it is more likely a typo in the
		// year, and Eligible does not look further anyway.
		return Window{}, fmt.Errorf("the range %s..%s is longer than 366 days", from, to)
	}
	return w, nil
}

// ParseDuration reads a Go duration ("90m", "2h30m") or a whole number of
// days ("3d"), which Go's form lacks and freezes and cooldowns want.
func ParseDuration(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok && n != "" && strings.Trim(n, "0123456789") == "" {
		days, err := strconv.Atoi(n)
		if err != nil || days > 100_000 {
			return 0, fmt.Errorf("not a duration: %q", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("not a duration: %q", s)
	}
	return d, nil
}

// onWall returns the time t's clock in loc shows, written as UTC.
func onWall(t time.Time, loc *time.Location) time.Time {
	t = t.In(loc)
	y, mo, d := t.Date()
	h, mi, s := t.Clock()
	return time.Date(y, mo, d, h, mi, s, t.Nanosecond(), time.UTC)
}

// onClock returns the first moment loc's clock shows wall (a UTC-written
// wall time) or later. In a spring-forward gap the clock never shows
// wall, so it is the jump itself: a window set for 02:30 on that night
// opens at 03:00 instead of not at all (robfig would skip that day, and a
// freeze would silently lapse). On a fall-back night a wall time comes
// twice; the first counts, so a window opens once.
func onClock(wall time.Time, loc *time.Location) time.Time {
	y, mo, d := wall.Date()
	h, mi, s := wall.Clock()
	t := time.Date(y, mo, d, h, mi, s, wall.Nanosecond(), loc)
	switch shown := onWall(t, loc); {
	case shown.After(wall): // Go read it with the later offset: the jump began t's zone period
		start, _ := t.ZoneBounds()
		return start
	case shown.Before(wall): // with the earlier offset: the jump ends t's zone period
		_, end := t.ZoneBounds()
		return end
	}
	if start, _ := t.ZoneBounds(); !start.IsZero() {
		_, off := start.Add(-time.Nanosecond).Zone()
		if e := wall.Add(-time.Duration(off) * time.Second); e.Before(start) && onWall(e, loc).Equal(wall) {
			return e.In(loc)
		}
	}
	return t
}

// nextStart returns the first start of w strictly after t, or the zero
// time when there is none.
func (w Window) nextStart(t time.Time) time.Time {
	if w.sched == nil {
		if w.from.After(t) {
			return w.from
		}
		return time.Time{}
	}
	ws := onWall(t, w.loc)
	// Wall starts come in order, their instants too except on a fall-back
	// night, where a wall time after t's may map before t: at most the
	// repeated hour's starts, 60 for a minutely schedule.
	for range 1000 {
		if ws = w.sched.Next(ws); ws.IsZero() {
			return ws
		}
		if r := onClock(ws, w.loc); r.After(t) {
			return r
		}
	}
	return time.Time{}
}

// cover reports whether t is inside w, and when the last of w's windows
// that hold t ends. That is the one that started last: found by bisection
// on when the first start after a moment comes, it costs about
// log2(duration/1m) look-ups instead of one per start, which matters for a
// long window on a frequent schedule ("* * * * * 30d").
func (w Window) cover(t time.Time) (bool, time.Time) {
	lo := t.Add(-w.d)
	s, in := w.inside(t)
	if !in {
		return false, time.Time{}
	}
	// nextStart(lo) <= t and no start lies in (hi, t]: the latest start
	// is in (lo, hi]. Starts are a minute apart at least, so once the gap
	// is below that, it is nextStart(lo).
	hi := t
	for hi.Sub(lo) >= time.Minute {
		mid := lo.Add(hi.Sub(lo) / 2)
		if n := w.nextStart(mid); !n.IsZero() && !n.After(t) {
			lo, s = mid, n
		} else {
			hi = mid
		}
	}
	return true, s.Add(w.d)
}

// inside reports whether t is inside w, and the first start of the
// windows that hold it.
func (w Window) inside(t time.Time) (time.Time, bool) {
	s := w.nextStart(t.Add(-w.d))
	return s, !s.IsZero() && !s.After(t)
}

// Policy is what decides when a digest may be deployed: allow windows
// (none: any time) and freezes.
type Policy struct {
	Windows []Window
	Freezes []Window
}

// Merge is the policy of a service: its own windows replace the global
// ones (a service may need another window than the rest), and freezes add
// up (a global freeze holds every service).
func Merge(global, service Policy) Policy {
	p := Policy{Windows: global.Windows}
	if len(service.Windows) > 0 {
		p.Windows = service.Windows
	}
	p.Freezes = append(append([]Window(nil), global.Freezes...), service.Freezes...)
	return p
}

// Eligible reports whether a digest may be deployed at: inside an allow
// window (or there is none) and outside every freeze. When it may, next is
// at and why is empty. When not, next is the earliest moment both hold,
// looked for up to Horizon ahead (zero when none is found), and why says
// what holds it, e.g. "held until Mon 22:00 CET: outside the window
// CRON_TZ=Europe/Paris 0 22 * * 1-5 2h".
func (p Policy) Eligible(at time.Time) (ok bool, next time.Time, why string) {
	var reasons []string
	var zone *time.Location
	note := func(r string, w Window) {
		if len(reasons) == 0 {
			zone = w.loc
		}
		if !slices.Contains(reasons, r) {
			reasons = append(reasons, r)
		}
	}
	t := at
	for step := 0; step < maxSteps && t.Sub(at) <= Horizon; step++ {
		if f, end, frozen := p.frozen(t); frozen {
			note("inside the freeze "+f.spec, f)
			t = end
			continue
		}
		if len(p.Windows) > 0 {
			if n, inside := p.open(t); !inside {
				note(outside(p.Windows), p.Windows[0])
				if n.IsZero() {
					break
				}
				t = n
				continue
			}
		}
		if len(reasons) == 0 {
			return true, at, ""
		}
		return false, t, fmt.Sprintf("held until %s: %s", when(t, at, zone), strings.Join(reasons, ", then "))
	}
	if len(reasons) == 0 { // unreachable: the first step either returns or notes a reason
		reasons = append(reasons, "no reason")
	}
	// Past the horizon, or out of steps: say how far the search got.
	if t.After(at.Add(Horizon)) {
		t = at.Add(Horizon)
	}
	return false, time.Time{}, fmt.Sprintf("held: no moment inside a window and outside every freeze up to %s (the search stops %d days ahead at most): %s",
		when(t, at, zone), int(Horizon/(24*time.Hour)), strings.Join(reasons, ", then "))
}

// frozen returns a freeze covering t, the one that lasts longest.
func (p Policy) frozen(t time.Time) (Window, time.Time, bool) {
	var (
		by  Window
		end time.Time
	)
	for _, f := range p.Freezes {
		if in, e := f.cover(t); in && e.After(end) {
			by, end = f, e
		}
	}
	return by, end, !end.IsZero()
}

// open reports whether t is inside an allow window; when not, it returns
// the next start of any (zero if none ever comes).
func (p Policy) open(t time.Time) (time.Time, bool) {
	var next time.Time
	for _, w := range p.Windows {
		if _, in := w.inside(t); in { // its end does not matter: no bisection
			return time.Time{}, true
		}
		if n := w.nextStart(t); !n.IsZero() && (next.IsZero() || n.Before(next)) {
			next = n
		}
	}
	return next, false
}

func outside(ws []Window) string {
	if len(ws) == 1 {
		return "outside the window " + ws[0].spec
	}
	specs := make([]string, len(ws))
	for i, w := range ws {
		specs[i] = w.spec
	}
	return "outside every window (" + strings.Join(specs, "; ") + ")"
}

// when names t on zone's clock: the weekday is enough within six days.
func when(t, at time.Time, zone *time.Location) string {
	if zone == nil {
		zone = time.UTC
	}
	if t.Sub(at) < 6*24*time.Hour {
		return t.In(zone).Format("Mon 15:04 MST")
	}
	return t.In(zone).Format("Mon 2 Jan 2006 15:04 MST")
}
