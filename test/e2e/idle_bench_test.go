//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// BenchmarkIdleCycle is what watching costs when nothing moves: an
// updater over 20 services on 20 tags (scaled to zero: watched like any
// other, no containers), one op per cycle at UPDATER_SCHEDULE=@every 1s.
// It reports the updater's CPU time per cycle (user + system, from
// /proc/<pid>/stat, whose clock ticks at 100 Hz: run 30 or more ops) and
// its resident memory at the end. Deploys run beside cycles, never inside
// them, so a cycle's cost does not depend on them. Run: make bench-e2e.
func BenchmarkIdleCycle(b *testing.B) {
	const stack, services = "e2eidle", 20
	ctx := context.Background()
	zero := uint64(0)
	for i := range services {
		repo := fmt.Sprintf("e2e/idle%02d", i)
		d := push(b, repo, "v1")
		res, err := env.docker.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: swarm.ServiceSpec{
			Annotations: swarm.Annotations{Name: fmt.Sprintf("%s_s%02d", stack, i), Labels: map[string]string{
				"com.docker.stack.namespace": stack, "updater.enable": "true"}},
			TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: image(repo) + "@" + d}},
			Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &zero}},
		}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { removeService(res.ID) })
	}
	u := startUpdater(b, stack)
	b.Cleanup(func() { u.stop(syscall.SIGTERM) })
	u.waitLog(b, time.Minute, 1, "cycle done", "services", fmt.Sprint(services))
	pid := u.cmd.Process.Pid

	c0, t0 := u.cycles(), cpuTicks(b, pid)
	b.ResetTimer()
	for range b.N {
		next := u.cycles() + 1
		waitFor(b, 30*time.Second, "the next cycle", func() bool { return u.cycles() >= next })
	}
	b.StopTimer()
	cycles, ticks := u.cycles()-c0, cpuTicks(b, pid)-t0
	if n := u.count("deploy started"); n != 0 {
		b.Fatalf("%d deploys started with nothing to deploy", n)
	}
	b.ReportMetric(float64(ticks)/100/float64(cycles), "CPU-s/cycle")
	b.ReportMetric(float64(procKB(b, pid, "VmRSS"))/1024, "RSS-MiB")
}

// cpuTicks is the user and system time pid has used, in clock ticks.
func cpuTicks(tb testing.TB, pid int) int64 {
	tb.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command (which may hold spaces), from the last ')':
	// state is field 3, utime 14, stime 15.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		tb.Fatalf("read /proc/%d/stat: %q", pid, stat)
	}
	return utime + stime
}

// procKB is a "<key>: <n> kB" line of /proc/<pid>/status.
func procKB(tb testing.TB, pid int, key string) int {
	tb.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			return kb
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", key, pid)
	return 0
}
