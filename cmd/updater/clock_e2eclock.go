//go:build e2eclock

package main

import "time"

// testClockSkew is set only by the e2e suite, at build time, in a build
// with the e2eclock tag (go build -tags e2eclock -ldflags "-X
// main.testClockSkew=60s"): a release build has neither this file nor any
// way to skew its clock, by setting or by accident.
var testClockSkew string

// testClock is the system clock moved by testClockSkew, as on a manager
// whose clock runs ahead: the lease must not depend on it.
func testClock() (now func() time.Time, skew time.Duration) {
	skew, err := time.ParseDuration(testClockSkew)
	if err != nil || skew == 0 {
		return nil, 0
	}
	return func() time.Time { return time.Now().Add(skew) }, skew
}
