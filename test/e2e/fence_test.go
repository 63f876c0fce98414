//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The updater binary with its clock 60 s ahead: a build of its own, with
// the e2eclock tag and the skew set at build time (cmd/updater's
// clock_e2eclock.go); the suite's other binary has no way to skew.
var skewed struct {
	once sync.Once
	bin  string
	err  error
}

func skewedUpdater(t testing.TB) string {
	t.Helper()
	skewed.once.Do(func() {
		root, err := filepath.Abs("../..")
		if err != nil {
			skewed.err = err
			return
		}
		skewed.bin = filepath.Join(env.workDir, "updater-skewed")
		cmd := exec.Command("go", "build", "-trimpath", "-tags", "e2eclock",
			"-ldflags", "-s -w -X main.version=e2e -X main.testClockSkew=60s", "-o", skewed.bin, "./cmd/updater")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			skewed.err = fmt.Errorf("build the skewed updater: %v\n%s", err, out)
		}
	})
	if skewed.err != nil {
		t.Fatal(skewed.err)
	}
	return skewed.bin
}

// writeLog is a Docker socket proxy that keeps every request but reads
// (GET, HEAD) it passes on: what an updater changed, seen outside it.
type writeLog struct {
	host   string
	mu     sync.Mutex
	writes []string
}

func newWriteLog(t testing.TB) *writeLog {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	w := &writeLog{host: "unix://" + sock}
	target, _ := url.Parse("http://docker")
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{DialContext: dockerDial}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.mu.Lock()
			w.writes = append(w.writes, r.Method+" "+r.URL.Path)
			w.mu.Unlock()
		}
		rp.ServeHTTP(rw, r)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return w
}

func (w *writeLog) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.writes...)
}

// A second updater on the stack whose clock runs 60 s ahead (twenty lease
// TTLs) looks at the lease every cycle while the holder deploys with a
// backup job that runs for several TTLs. By Docker's account: the second
// wrote nothing at all (no lease take-over, no spec write, no job created
// or removed), the deploy was written once, and its job was created once
// and ran to its end.
func TestFenceSkewedStandby(t *testing.T) {
	const stack, repo, svcName = "e2efence", "e2e/fence", "e2efence_app"
	const jobTime = 8 * time.Second
	row := fault(t, "a second updater with its clock 60 s ahead beside the holder, during a deploy and its hook job")
	bin := skewedUpdater(t)
	t.Cleanup(removeMigrationRecords)
	dbURL := createDB(t, "e2efence")
	v1 := push(t, repo, "v1")
	migrateTo(t, "v1", dbURL)
	app := hookService(t, stack, svcName, repo, v1, dbURL, backupDir(t), map[string]string{
		"updater.backup.command": fmt.Sprintf("sleep %d", int(jobTime.Seconds())),
	})
	ev := recordEvents(t)

	a := startUpdater(t, stack)
	a.waitLog(t, 30*time.Second, 1, "lease taken: this updater acts")
	wb := newWriteLog(t)
	// startUpdater runs env.bin; the e2e tests run one at a time.
	plain := env.bin
	env.bin = bin
	b := startUpdater(t, stack, "DOCKER_HOST="+wb.host)
	env.bin = plain
	b.waitLog(t, 30*time.Second, 1, "clock skewed for a test: an e2e build", "skew", "1m0s")
	b.waitLog(t, 30*time.Second, 1, "lease held by another updater: standing by")

	v2 := push(t, repo, "v2")
	a.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
	// b goes on looking for a while after the deploy too.
	looked := b.count("cycle skipped: standing by")
	waitFor(t, 30*time.Second, "5 more standby cycles of the skewed updater", func() bool {
		return b.count("cycle skipped: standing by") >= looked+5
	})

	if h, want := leaseHolder(t, stack), holderOf(t, a); h != want {
		t.Fatalf("the lease in Swarm names %q, want the first updater %q", h, want)
	}
	if w := wb.all(); len(w) != 0 {
		t.Fatalf("the skewed standby wrote to Docker: %q", w)
	}
	ev.wantImageWrites(t, app, v2)
	jobs := ev.jobs(t, svcName, "backup")
	if len(jobs) != 1 || jobs[0].Removed.IsZero() {
		t.Fatalf("backup jobs in Docker's events %+v, want one, created and removed once", jobs)
	}
	ran := jobs[0].Removed.Sub(jobs[0].Created)
	if ran < jobTime {
		t.Fatalf("the backup job was removed %s after its creation, before its %s sleep ended", ran, jobTime)
	}
	// The standby looked at the lease while the job ran, not only around it.
	during := 0
	for _, l := range b.matching("cycle skipped: standing by") {
		if at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(l["time"])); err == nil && at.After(jobs[0].Created) && at.Before(jobs[0].Removed) {
			during++
		}
	}
	if during < 3 {
		t.Fatalf("the standby looked %d times while the %s job ran, want at least 3", during, ran.Round(time.Second))
	}
	for _, msg := range []string{"lease taken: this updater acts", "deploy started", "removed a job left by an earlier run"} {
		if n := b.count(msg); n != 0 {
			t.Fatalf("the skewed standby logged %q %d times", msg, n)
		}
	}
	row.set("a standby 60 s ahead (20 TTLs) looked %d times during the holder's %s backup job and wrote nothing to Docker; 1 image write, 1 job, run to its end",
		during, ran.Round(time.Second))
}
