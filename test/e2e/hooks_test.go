//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/jackc/pgx/v5"
	"github.com/moby/moby/client"
)

// The hooks suite runs against a real PostgreSQL (Debian's server, started
// here as a private cluster on 127.0.0.1) that services and jobs reach over
// host networking, a backup image carrying the host's real pg_dump, and
// the test app's real `migrate` (pgx).

var pg struct {
	once    sync.Once
	err     error
	dir     string
	port    int
	bin     string // the PostgreSQL server's bin directory
	backup  string // the backup image, pinned
	started bool
}

// postgres starts the cluster and builds the backup image, once.
func postgres(t testing.TB) {
	t.Helper()
	pg.once.Do(func() { pg.err = startPostgres() })
	if pg.err != nil {
		t.Fatalf("postgres: %v", pg.err)
	}
}

func startPostgres() error {
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(bins) == 0 {
		return fmt.Errorf("no PostgreSQL server installed (.ci/run installs Debian's postgresql)")
	}
	pg.bin = filepath.Dir(bins[len(bins)-1])
	dir, err := os.MkdirTemp("", "updater-e2e-pg-")
	if err != nil {
		return err
	}
	pg.dir = dir
	if out, err := exec.Command("chown", "postgres:postgres", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("chown: %v: %s", err, out)
	}
	data := filepath.Join(dir, "data")
	// initdb refuses to run as root: the cluster belongs to the postgres user.
	if out, err := asPostgres(pg.bin+"/initdb", "-D", data, "-A", "trust", "-U", "postgres").CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %v: %s", err, out)
	}
	// PostgreSQL can't be told to pick a port: a free one is picked here,
	// and picked again if someone took it before the server bound it.
	for try := 1; ; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		pg.port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		logFile := filepath.Join(dir, fmt.Sprintf("log.%d", try))
		opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", pg.port, dir)
		out, err := asPostgres(pg.bin+"/pg_ctl", "-D", data, "-o", opts, "-l", logFile, "-w", "start").CombinedOutput()
		if err == nil {
			pg.started = true
			return nil
		}
		if log, _ := os.ReadFile(logFile); try == 3 || !bytes.Contains(log, []byte("could not bind")) {
			return fmt.Errorf("pg_ctl start: %v: %s\n%s", err, out, log)
		}
	}
}

// stopPostgres stops the cluster this suite started (by its data
// directory, never by process name) and removes it.
func stopPostgres() {
	if !pg.started {
		return
	}
	asPostgres(pg.bin+"/pg_ctl", "-D", filepath.Join(pg.dir, "data"), "-m", "fast", "-w", "stop").Run()
	os.RemoveAll(pg.dir)
}

func asPostgres(args ...string) *exec.Cmd {
	return exec.Command("runuser", append([]string{"-u", "postgres", "--"}, args...)...)
}

// createDB makes a fresh database for one test and returns its URL.
func createDB(t testing.TB, db string) string {
	t.Helper()
	postgres(t)
	admin := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres", pg.port)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s", pg.port, db)
}

func query(t testing.TB, dbURL, q string, args ...any) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var out string
	if err := conn.QueryRow(ctx, q, args...).Scan(&out); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return out
}

// migrateRuns is how many times version's `migrate` ran against the
// database, counting the runs that found nothing left to apply: a
// migration hook run twice shows here, not in schema_migrations.
func migrateRuns(t testing.TB, dbURL, version string) int {
	t.Helper()
	n, err := strconv.Atoi(query(t, dbURL, `SELECT count(*)::text FROM migrate_invocations WHERE app = $1`, version))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// backupImage is an image with the host's real pg_dump and the shared
// objects it loads, a shell, and sleep; made from files, since nothing can
// be pulled here. It is pushed to the test registry once.
func backupImage(t testing.TB) string {
	t.Helper()
	postgres(t)
	if pg.backup != "" {
		return pg.backup
	}
	files := map[string]bool{}
	for _, bin := range []string{pg.bin + "/pg_dump", "/bin/sh", "/bin/sleep"} {
		real, err := filepath.EvalSymlinks(bin)
		if err != nil {
			t.Fatal(err)
		}
		files[real] = true
		out, err := exec.Command("ldd", real).Output()
		if err != nil {
			t.Fatalf("ldd %s: %v", real, err)
		}
		for _, lib := range regexp.MustCompile(`(/[^ ]+)`).FindAllString(string(out), -1) {
			files[lib] = true
		}
	}
	// Directories first, then files and links, as a tar from a real tree.
	dirs := map[string]bool{"/tmp": true}
	var entries []*tar.Header
	bodies := map[string][]byte{}
	add := func(path string, body []byte, link string) {
		for d := filepath.Dir(path); d != "/"; d = filepath.Dir(d) {
			dirs[d] = true
		}
		h := &tar.Header{Name: strings.TrimPrefix(path, "/"), Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg}
		if link != "" {
			h = &tar.Header{Name: strings.TrimPrefix(path, "/"), Linkname: link, Typeflag: tar.TypeSymlink, Mode: 0o777}
		}
		entries = append(entries, h)
		bodies[h.Name] = body
	}
	for f := range files {
		real, err := filepath.EvalSymlinks(f)
		if err != nil {
			t.Fatal(err)
		}
		body, err := os.ReadFile(real)
		if err != nil {
			t.Fatal(err)
		}
		add(f, body, "")
	}
	// Debian's /bin is a link into /usr/bin: give the commands their
	// usual names.
	for _, l := range []string{"/bin/sh", "/bin/sleep"} {
		if real, _ := filepath.EvalSymlinks(l); real != l {
			add(l, nil, real)
		}
	}
	add("/usr/local/bin/pg_dump", nil, pg.bin+"/pg_dump")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	sorted := make([]string, 0, len(dirs))
	for d := range dirs {
		sorted = append(sorted, d)
	}
	sort.Strings(sorted)
	for _, d := range sorted {
		mode := int64(0o755)
		if d == "/tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(d, "/") + "/", Typeflag: tar.TypeDir, Mode: mode}); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range entries {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(bodies[h.Name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	d := pushLayer(t, "e2e/pgdump", buf.Bytes(), v1.Config{Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}})
	pg.backup = image("e2e/pgdump") + "@" + d
	return pg.backup
}

// hookService creates a watched service on host networking with backup
// and migrate hooks against dbURL, backups going to dir.
func hookService(t testing.TB, stack, svcName, repo, digest, dbURL, dir string, extra map[string]string) string {
	t.Helper()
	// The app takes a free port itself (demo/app): one picked here and
	// freed could be taken by the time the task binds it.
	const listen = "127.0.0.1:0"
	labels := map[string]string{
		"updater.backup.image":    backupImage(t),
		"updater.backup.command":  `sh -c 'exec pg_dump -Fc -f /backup/$UPDATER_DEPLOY_ID.dump "$DATABASE_URL"'`,
		"updater.backup.mounts":   dir + ":/backup",
		"updater.backup.env":      "DATABASE_URL=" + dbURL,
		"updater.migrate.command": "/app migrate",
		"updater.hooks.timeout":   "60s",
	}
	for k, v := range extra {
		if v == "" {
			delete(labels, k)
		} else {
			labels[k] = v
		}
	}
	return createService(t, svcName, repo, digest, svcOpts{stack: stack, optIn: true, hostNet: true, labels: labels,
		env: []string{"LISTEN=" + listen, "DATABASE_URL=" + dbURL}})
}

// migrate brings a database to a version's schema as a deploy of it would.
func migrateTo(t testing.TB, version, dbURL string) {
	t.Helper()
	bin := filepath.Join(env.workDir, "app-"+version)
	if err := os.WriteFile(bin, env.apps[version], 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "migrate")
	cmd.Env = []string{"DATABASE_URL=" + dbURL}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("migrate to %s: %v\n%s", version, err, out)
	}
}

func backupDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "updater-e2e-backup-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func dumps(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.dump"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// noJobsLeft asserts that no hook job service is left in the swarm.
func noJobsLeft(t testing.TB) {
	t.Helper()
	res, err := env.docker.ServiceList(context.Background(), client.ServiceListOptions{
		Filters: make(client.Filters).Add("label", "io.updater.job")})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != 0 {
		t.Fatalf("%d job services left behind: %s", len(res.Items), res.Items[0].Spec.Name)
	}
	cs, err := env.docker.ContainerList(context.Background(), client.ContainerListOptions{All: true,
		Filters: make(client.Filters).Add("label", "io.updater.job")})
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.Items) != 0 {
		t.Fatalf("%d job containers left behind: %v", len(cs.Items), cs.Items[0].Names)
	}
}

func removeMigrationRecords() {
	ctx := context.Background()
	f := make(client.Filters).Add("label", "io.updater.kind=migrated")
	if res, err := env.docker.ConfigList(ctx, client.ConfigListOptions{Filters: f}); err == nil {
		for _, c := range res.Items {
			env.docker.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{})
		}
	}
}

// 1 and 2: backup, then migration, then the update; a migration that
// fails stops the deploy with the database as its transaction left it.
func TestBackupMigrateThenPromote(t *testing.T) {
	const stack, repo = "e2ebmp", "e2e/bmp"
	seen := recordEvents(t)
	t.Cleanup(removeMigrationRecords)
	dbURL := createDB(t, "e2ebmp")
	dir := backupDir(t)
	v1 := push(t, repo, "v1")
	migrateTo(t, "v1", dbURL)
	app := hookService(t, stack, "e2ebmp_app", repo, v1, dbURL, dir, nil)
	u := startUpdater(t, stack)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	v2 := push(t, repo, "v2")
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)

	// The backup exists and holds the data as it was before the migration.
	files := dumps(t, dir)
	if len(files) != 1 {
		t.Fatalf("%d backup files, want 1: %v", len(files), files)
	}
	scratch := createDB(t, "e2ebmp_restore")
	restore := exec.Command(pg.bin+"/pg_restore", "-d", scratch, files[0])
	if out, err := restore.CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v\n%s", err, out)
	}
	if n := query(t, scratch, `SELECT count(*)::text FROM items`); n != "3" {
		t.Fatalf("restored backup has %s items, want 3", n)
	}
	if has := query(t, scratch, `SELECT (count(*) > 0)::text FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'price'`); has != "false" {
		t.Fatal("the backup already has the migrated schema: it was not taken before the migration")
	}
	// The migration ran once, in the new image, before the update.
	if v := query(t, dbURL, `SELECT max(version)::text FROM schema_migrations`); v != "2" {
		t.Fatalf("schema at %s, want 2", v)
	}
	if runs := migrateRuns(t, dbURL, "v2"); runs != 1 {
		t.Fatalf("v2's migrate ran %d times, want once", runs)
	}
	order := []string{}
	for _, l := range u.matching("deploy progress", "to_digest", v2) {
		if s, _ := l["step"].(string); s != "rollout" {
			order = append(order, fmt.Sprint(s, ":", l["state"]))
		}
	}
	if want := "[backup:started backup:succeeded migrate:started migrate:succeeded]"; fmt.Sprint(order) != want {
		t.Fatalf("hook steps %v, want %s", order, want)
	}
	// The same order by Docker's clock: the backup job created (and gone)
	// before the migration job, which was done before the spec write.
	write := seen.wantImageWrites(t, app, v2)[0]
	b, m := seen.jobs(t, "e2ebmp_app", "backup"), seen.jobs(t, "e2ebmp_app", "migrate")
	if len(b) != 1 || len(m) != 1 || b[0].Removed.IsZero() || m[0].Removed.IsZero() {
		t.Fatalf("hook jobs in Docker's events: backup %+v, migrate %+v; want one of each, both removed", b, m)
	}
	if !b[0].Removed.Before(m[0].Created) || !m[0].Removed.Before(write.At) {
		t.Fatalf("by Docker's events: backup job %s–%s, migration job %s–%s, spec write %s; want them in that order",
			b[0].Created.Format(time.StampMicro), b[0].Removed.Format(time.StampMicro),
			m[0].Created.Format(time.StampMicro), m[0].Removed.Format(time.StampMicro), write.At.Format(time.StampMicro))
	}
	if !allRunning(t, app, v2) {
		t.Fatal("v2 reported but not running")
	}
	noJobsLeft(t)

	// 2. A migration that fails: no update, v2 keeps serving, the database
	// as the failed transaction left it, exit code and log tail reported.
	bad := push(t, repo, "badmig")
	u.waitLog(t, deployLimit, 1, "deploy failed", "to_digest", bad)
	ev := u.find("deploy failed", "to_digest", bad)
	if ev["step"] != "migrate" || !strings.Contains(fmt.Sprint(ev["err"]), "exited with code 3") ||
		!strings.Contains(fmt.Sprint(ev["err"]), "division by zero") {
		t.Fatalf("failure event %v: want step migrate, exit code 3 and the log tail", ev)
	}
	if d := specDigest(t, app); d != v2 {
		t.Fatalf("service on %s after a failed migration, want v2", d)
	}
	if !allRunning(t, app, v2) {
		t.Fatal("v2 is not serving after a failed migration")
	}
	if n := query(t, dbURL, `SELECT count(*)::text FROM information_schema.tables WHERE table_name = 'half_done'`); n != "0" {
		t.Fatal("the failed migration's table exists: its transaction did not roll back")
	}
	if n := records(t, app, "failed-digest"); n != 1 {
		t.Fatalf("%d failed-digest records, want 1", n)
	}
	after := u.cycles()
	waitFor(t, 30*time.Second, "3 more cycles", func() bool { return u.cycles() >= after+3 })
	if n := u.count("deploy started", "to_digest", bad); n != 1 {
		t.Fatalf("the failed migration was tried %d times, want once", n)
	}
	if runs := migrateRuns(t, dbURL, "badmig"); runs != 1 {
		t.Fatalf("the failing migrate ran %d times, want once", runs)
	}
	if m := seen.jobs(t, "e2ebmp_app", "migrate"); len(m) != 2 {
		t.Fatalf("%d migration jobs in Docker's events, want v2's and the failing one's", len(m))
	}
	seen.wantImageWrites(t, app, v2) // and no write after the failed one
	noJobsLeft(t)
}

// 3 and 4: a failing backup stops the deploy before the migration; a hook
// that outlives its timeout is removed and fails the deploy.
func TestBackupFailureAndHookTimeout(t *testing.T) {
	row := fault(t, "backup exits non-zero; a backup hangs past updater.hooks.timeout")
	const stack, repo = "e2ebfail", "e2e/bfail"
	t.Cleanup(removeMigrationRecords)
	dbURL := createDB(t, "e2ebfail")
	v1 := push(t, repo, "v1")
	migrateTo(t, "v1", dbURL)
	app := hookService(t, stack, "e2ebfail_app", repo, v1, dbURL, backupDir(t), map[string]string{
		"updater.backup.command": `sh -c 'echo cannot reach the backup store >&2; exit 7'`,
	})
	slow := hookService(t, stack, "e2ebfail_slow", "e2e/bslow", push(t, "e2e/bslow", "v1"), dbURL, backupDir(t), map[string]string{
		"updater.backup.command":  "sleep 60",
		"updater.hooks.timeout":   "3s",
		"updater.migrate.command": "",
	})
	u := startUpdater(t, stack)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	v2 := push(t, repo, "v2")
	u.waitLog(t, deployLimit, 1, "deploy failed", "to_digest", v2)
	ev := u.find("deploy failed", "to_digest", v2)
	if ev["step"] != "backup" || !strings.Contains(fmt.Sprint(ev["err"]), "code 7") || !strings.Contains(fmt.Sprint(ev["err"]), "cannot reach the backup store") {
		t.Fatalf("failure event %v: want step backup, code 7 and the log tail", ev)
	}
	if n := u.count("deploy progress", "to_digest", v2, "step", "migrate"); n != 0 {
		t.Fatalf("the migration ran after a failed backup (%d events)", n)
	}
	if v := query(t, dbURL, `SELECT max(version)::text FROM schema_migrations`); v != "1" {
		t.Fatalf("schema at %s after a failed backup, want 1", v)
	}
	if d := specDigest(t, app); d != v1 {
		t.Fatalf("service updated to %s after a failed backup", d)
	}

	s2 := push(t, "e2e/bslow", "v2")
	start := time.Now()
	u.waitLog(t, deployLimit, 1, "deploy failed", "to_digest", s2)
	if took := time.Since(start); took > 45*time.Second {
		t.Fatalf("a 3s hook timeout took %s to fail the deploy", took)
	}
	if ev := u.find("deploy failed", "to_digest", s2); ev["step"] != "backup" || !strings.Contains(fmt.Sprint(ev["err"]), "timed out") {
		t.Fatalf("failure event %v: want step backup, timed out", ev)
	}
	if d := specDigest(t, slow); d == s2 {
		t.Fatal("service updated after a hook timeout")
	}
	noJobsLeft(t)
	row.set("each failed once at step=backup (exit code and log tail; \"timed out\"), nothing migrated or updated, no job left")
}

// 5. Killed after the migration, before the spec write; restarted: the
// migration does not run again and the update completes. The updater
// talks to Docker through a proxy that holds service updates, so the kill
// lands in exactly that window.
func TestKilledAfterMigration(t *testing.T) {
	const stack, repo = "e2ekmig", "e2e/kmig"
	row := fault(t, "updater SIGKILLed after the migration, before the spec write")
	ev := recordEvents(t)
	t.Cleanup(removeMigrationRecords)
	dbURL := createDB(t, "e2ekmig")
	v1 := push(t, repo, "v1")
	migrateTo(t, "v1", dbURL)
	app := hookService(t, stack, "e2ekmig_app", repo, v1, dbURL, backupDir(t), nil)
	proxy := newDockerProxy(t)
	proxy.hold(app)
	first := startUpdater(t, stack, "DOCKER_HOST="+proxy.host)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return first.cycles() >= 1 })

	v2 := push(t, repo, "v2")
	waitFor(t, deployLimit, "the updater to reach the spec write", func() bool { return proxy.held() > 0 })
	if n := first.count("deploy progress", "to_digest", v2, "step", "migrate", "state", "succeeded"); n != 1 {
		t.Fatalf("reached the update with %d migration successes, want 1", n)
	}
	first.stop(syscall.SIGKILL)
	// Released only once the held write's client is gone: released before,
	// the proxy would still pass the dead updater's write on to Docker.
	waitFor(t, 10*time.Second, "the killed updater's write to end", func() bool { return proxy.abandoned() > 0 })
	proxy.release()
	if d := specDigest(t, app); d != v1 {
		t.Fatalf("the spec moved to %s before the kill", d)
	}

	second := startUpdater(t, stack)
	second.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2, "resumed", "true")
	if n := second.count("deploy started"); n != 0 {
		t.Fatalf("the restarted updater started %d new deploys", n)
	}
	if n := second.count("deploy progress", "step", "migrate", "state", "started"); n != 0 {
		t.Fatal("the restarted updater ran the migration again")
	}
	if runs := migrateRuns(t, dbURL, "v2"); runs != 1 {
		t.Fatalf("v2's migrate ran %d times, want once", runs)
	}
	// Not started again, by Docker's account: one spec write, one
	// migration job (the killed run's).
	ev.wantImageWrites(t, app, v2)
	if j := ev.jobs(t, "e2ekmig_app", "migrate"); len(j) != 1 {
		t.Fatalf("%d migration jobs created in Docker, want the killed run's only: %+v", len(j), j)
	}
	if !allRunning(t, app, v2) {
		t.Fatal("v2 not running after the resumed deploy")
	}
	noJobsLeft(t)
	row.set("carried on by the restart: migration not run again (1 run in the database, 1 migration job in Docker's events), one image write, one outcome (succeeded, resumed=true); no job left")
}

// 6. A group: one backup, one migration, every member updated.
func TestGroupDeploysTogether(t *testing.T) {
	const stack, repo = "e2egrp", "e2e/grp"
	t.Cleanup(removeMigrationRecords)
	dbURL := createDB(t, "e2egrp")
	dir := backupDir(t)
	v1 := push(t, repo, "v1")
	migrateTo(t, "v1", dbURL)
	web := hookService(t, stack, "e2egrp_web", repo, v1, dbURL, dir, map[string]string{"updater.group": "app"})
	worker := hookService(t, stack, "e2egrp_worker", repo, v1, dbURL, dir, map[string]string{
		"updater.group": "app", "updater.backup.command": "", "updater.backup.image": "", "updater.backup.mounts": "",
		"updater.backup.env": "", "updater.migrate.command": "",
	})
	u := startUpdater(t, stack)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	v2 := push(t, repo, "v2")
	u.waitLog(t, deployLimit, 2, "deploy succeeded", "to_digest", v2)
	if n := len(dumps(t, dir)); n != 1 {
		t.Fatalf("%d backups for the group, want 1", n)
	}
	if runs := migrateRuns(t, dbURL, "v2"); runs != 1 {
		t.Fatalf("v2's migrate ran %d times for the group, want once", runs)
	}
	for _, id := range []string{web, worker} {
		if !allRunning(t, id, v2) {
			t.Fatalf("%s not on v2", inspect(t, id).Spec.Name)
		}
	}
	noJobsLeft(t)
}

// dockerProxy passes the Engine API through from a unix socket of its own
// to dockerd's, counts the spec writes it passes (so a test can tell whose
// connection wrote), and can hold a service's spec writes, or blind its
// client once it has written a service's spec.
type dockerProxy struct {
	host    string
	mu      sync.Mutex
	service string // its spec writes are held
	creates bool   // service creations (hook jobs) are held
	// blindAfter: once a spec write of this service has been answered,
	// every later request is held (blind is then true): the client sees
	// nothing more of what Docker does.
	blindAfter string
	blind      bool
	waiting    int
	dropped    int                    // held requests whose client went away
	writes     map[string]int         // spec writes passed on, by service ID
	writeAt    map[string][]time.Time // when each that Docker took was answered
	calls      map[string]int         // requests passed on, by method
	open       chan struct{}
}

func newDockerProxy(t testing.TB) *dockerProxy {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	p := &dockerProxy{host: "unix://" + sock, open: make(chan struct{}), writes: map[string]int{},
		writeAt: map[string][]time.Time{}, calls: map[string]int{}}
	target, _ := url.Parse("http://docker")
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{DialContext: dockerDial}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		held := p.blind || r.Method == http.MethodPost && (p.service != "" && strings.Contains(r.URL.Path, "/services/"+p.service+"/update") ||
			p.creates && strings.HasSuffix(r.URL.Path, "/services/create"))
		if held {
			p.waiting++
		}
		write := specWrite.FindStringSubmatch(r.URL.Path)
		blinds := write != nil && r.Method == http.MethodPost && p.blindAfter != "" && write[1] == p.blindAfter
		p.mu.Unlock()
		if held {
			// Read to the end first: only then does the server watch the
			// connection, so a client that dies ends r.Context().
			body, err := io.ReadAll(r.Body)
			if err != nil {
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			select {
			case <-p.open:
			case <-r.Context().Done():
				p.mu.Lock()
				p.dropped++
				p.mu.Unlock()
				return
			}
		}
		if write != nil && r.Method == http.MethodPost {
			p.mu.Lock()
			p.writes[write[1]]++
			p.mu.Unlock()
		}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		rp.ServeHTTP(sw, r)
		p.mu.Lock()
		p.calls[r.Method]++
		if write != nil && r.Method == http.MethodPost && sw.status < 300 { // a write Docker took
			p.writeAt[write[1]] = append(p.writeAt[write[1]], time.Now())
		}
		p.mu.Unlock()
		if blinds {
			p.mu.Lock()
			p.blind = true
			p.mu.Unlock()
		}
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { p.release(); srv.Close() })
	return p
}

var specWrite = regexp.MustCompile(`/services/([^/]+)/update$`)

// specWrites is how many spec writes of the service it passed on.
func (p *dockerProxy) specWrites(serviceID string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.writes[serviceID]
}

// writeTimes are when each spec write of the service that Docker took
// (a 2xx) was answered.
func (p *dockerProxy) writeTimes(serviceID string) []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.writeAt[serviceID])
}

// requests is how many requests of each method it passed on.
func (p *dockerProxy) requests() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.calls)
}

func (p *dockerProxy) hold(serviceID string) { p.mu.Lock(); p.service = serviceID; p.mu.Unlock() }

// holdCreates holds every service creation: the hook jobs.
func (p *dockerProxy) holdCreates() { p.mu.Lock(); p.creates = true; p.mu.Unlock() }

// blindAfterWrite holds every request once a spec write of serviceID has
// passed: a test can then let Docker move on while the client sees nothing.
func (p *dockerProxy) blindAfterWrite(serviceID string) {
	p.mu.Lock()
	p.blindAfter = serviceID
	p.mu.Unlock()
}

func (p *dockerProxy) held() int { p.mu.Lock(); defer p.mu.Unlock(); return p.waiting }

// abandoned is how many held requests were given up by their client.
func (p *dockerProxy) abandoned() int { p.mu.Lock(); defer p.mu.Unlock(); return p.dropped }

func (p *dockerProxy) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.service != "" || p.creates || p.blindAfter != "" {
		close(p.open)
		p.service, p.creates, p.blindAfter, p.blind = "", false, "", false
	}
}

// updater.backup.schedule runs the backup job on its own schedule, with
// no deploy; stopping the updater leaves no job behind.
func TestScheduledBackups(t *testing.T) {
	const stack, repo = "e2esched", "e2e/sched"
	dbURL := createDB(t, "e2esched")
	dir := backupDir(t)
	v1 := push(t, repo, "v1")
	migrateTo(t, "v1", dbURL)
	hookService(t, stack, "e2esched_app", repo, v1, dbURL, dir, map[string]string{
		"updater.backup.schedule": "@every 2s",
		"updater.migrate.command": "",
	})
	u := startUpdater(t, stack)
	u.waitLog(t, deployLimit, 2, "deploy progress", "step", "backup", "state", "succeeded")
	if n := len(dumps(t, dir)); n < 2 {
		t.Fatalf("%d backup files after two reported backups", n)
	}
	if err := u.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if n := u.count("deploy started"); n != 0 {
		t.Fatalf("%d deploys started: scheduled backups must not deploy", n)
	}
	noJobsLeft(t)
}
