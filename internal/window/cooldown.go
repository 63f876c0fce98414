package window

import (
	"fmt"
	"strings"
	"time"
)

// MinCooldown and MaxCooldown bound updater.cooldown. Below 10 s the
// cooldown is shorter than most poll intervals and means nothing; past 30
// days a digest would wait longer than most registries keep an untagged
// one, and the label is more likely a typo ("720d" for "720h").
const (
	MinCooldown = 10 * time.Second
	MaxCooldown = 30 * 24 * time.Hour
)

const cooldownForm = `want a duration from 10s to 30d, like 30m, 24h or 7d, or 0 for none`

// ParseCooldown reads updater.cooldown (name is the label, for errors):
// how long a digest must have stayed on its tag before it is deployed.
// Empty and "0" are no cooldown.
func ParseCooldown(name, value string) (time.Duration, error) {
	v := strings.TrimSpace(value)
	if v == "" || v == "0" {
		return 0, nil
	}
	d, err := ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: %w; %s", name, value, err, cooldownForm)
	}
	if d < MinCooldown || d > MaxCooldown {
		return 0, fmt.Errorf("%s=%q: out of bounds; %s", name, value, cooldownForm)
	}
	return d, nil
}

// CooldownEligible reports whether a digest first seen on its tag at
// firstSeen has served its cooldown at at; next is when it does (at when
// it has). The same digest seen again keeps its first-seen time: the
// engine must remember it (in Swarm), or a restart would reset the clock.
func CooldownEligible(firstSeen time.Time, cooldown time.Duration, at time.Time) (ok bool, next time.Time, why string) {
	next = firstSeen.Add(cooldown)
	if cooldown <= 0 || !at.Before(next) {
		return true, at, ""
	}
	return false, next, fmt.Sprintf("held until %s: cooldown %s since the digest was first seen on the tag (%s)",
		when(next, at, time.UTC), short(cooldown), when(firstSeen, firstSeen, time.UTC))
}

// short writes 24h for 24h0m0s and 1h30m for 1h30m0s.
func short(d time.Duration) string {
	s := d.String()
	if t, ok := strings.CutSuffix(s, "m0s"); ok {
		s = t + "m"
	}
	if t, ok := strings.CutSuffix(s, "h0m"); ok {
		s = t + "h"
	}
	return s
}
