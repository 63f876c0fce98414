// Command app is the tiny HTTP service the demo and the e2e suite deploy.
// Its version and schema are set at build time, or by the image's
// environment (APP_VERSION, APP_SCHEMA), so one build serves every
// version of the demo:
//
//	go build -ldflags "-X main.version=v2 -X main.schema=2"
//
// Version "broken" fails its /health endpoint, so its HEALTHCHECK never
// passes and a start-first update to it fails and rolls back. Two more
// pass their health check and fail later, what only a probe or a bake
// catches (docs/probes.md): "probe500" answers 500 on every route but
// /health; "crashlate" exits (status 3) $CRASH_AFTER (default 20s) after
// it started.
//
//	app          serve $LISTEN (default :8080): / prints the version, /health is the probe
//	app health   exit 0 iff http://$LISTEN/health answers 200 (the HEALTHCHECK)
//	app migrate  bring the database at $DATABASE_URL to this build's schema
//	app proxy    serve $LISTEN as a forward proxy for plain HTTP to $PROXY_ALLOW: how the e2e
//	             suite's Prometheus and load generator, on the host, reach
//	             tasks on an overlay network (test/e2e/canary_e2e_test.go)
//
// For a canary's judge (docs/canary.md), /metrics serves
// http_requests_total by status code to Prometheus, both codes from the
// start (an error ratio of a clean task is 0, not "no data"), and
// ERROR_SHARE (0 to 1, in the image's environment: a version's own
// behaviour) answers that share of the requests to / with 500, exactly:
// of every 10 requests at 0.3, 3 fail.
//
// A LISTEN port of 0 lets the kernel pick one (tests run many tasks on the
// host's network: a port picked beforehand and freed could be taken by
// the time the app binds it); the address taken is written to addrFile,
// where `app health`, run in the same container, finds it.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var (
	version = "v1"
	// schema is the newest migration this build knows; 99 is a migration
	// that fails halfway, inside its transaction.
	schema = "1"
)

func main() {
	if v := os.Getenv("APP_VERSION"); v != "" {
		version = v
	}
	if s := os.Getenv("APP_SCHEMA"); s != "" {
		schema = s
	}
	listen := os.Getenv("LISTEN")
	if listen == "" {
		listen = ":8080"
	}
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "health":
			c := http.Client{Timeout: 2 * time.Second}
			host := listen
			if strings.HasSuffix(host, ":0") {
				b, err := os.ReadFile(addrFile())
				if err != nil {
					os.Exit(1) // not listening yet
				}
				host = string(b)
			}
			if strings.HasPrefix(host, ":") {
				host = "127.0.0.1" + host
			}
			r, err := c.Get("http://" + host + "/health")
			if err != nil || r.StatusCode != http.StatusOK {
				os.Exit(1)
			}
			os.Exit(0)
		case "proxy":
			// Docker publishes it on every interface: it relays only
			// to the test's own network, PROXY_ALLOW (a CIDR).
			allow, err := netip.ParsePrefix(os.Getenv("PROXY_ALLOW"))
			if err != nil {
				fmt.Fprintln(os.Stderr, "proxy: PROXY_ALLOW must be the network it may relay to, like 10.0.4.0/24:", err)
				os.Exit(2)
			}
			fmt.Fprintln(os.Stderr, http.ListenAndServe(listen, forward(allow)))
			os.Exit(1)
		case "migrate":
			if err := migrate(context.Background()); err != nil {
				fmt.Fprintln(os.Stderr, "migrate:", err)
				os.Exit(3)
			}
			os.Exit(0)
		}
	}
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if version == "broken" || os.Getenv("BROKEN") == "1" {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "http_requests_total", Help: "Requests to / by status code.",
	}, []string{"code"})
	ok, failed := requests.WithLabelValues("200"), requests.WithLabelValues("500")
	reg := prometheus.NewRegistry()
	reg.MustRegister(requests)
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	share, err := strconv.ParseFloat(os.Getenv("ERROR_SHARE"), 64)
	if err != nil || share < 0 || share > 1 {
		share = 0
	}
	var mu sync.Mutex
	var served int
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		// Request n fails when it takes floor(n*share) up by one.
		fail := int(float64(served+1)*share+1e-9) > int(float64(served)*share+1e-9)
		served++
		mu.Unlock()
		if fail {
			failed.Inc()
			http.Error(w, "ERROR_SHARE: injected failure", http.StatusInternalServerError)
			return
		}
		if version == "probe500" {
			failed.Inc()
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintln(w, "probe500: relation \"orders\" does not exist")
			return
		}
		ok.Inc()
		fmt.Fprintln(w, version)
	})
	if version == "crashlate" {
		after, err := time.ParseDuration(os.Getenv("CRASH_AFTER"))
		if err != nil {
			after = 20 * time.Second
		}
		time.AfterFunc(after, func() {
			fmt.Fprintln(os.Stderr, "crashlate: exiting", after, "after start")
			os.Exit(3)
		})
	}
	l, err := net.Listen("tcp", listen)
	if err == nil && strings.HasSuffix(listen, ":0") {
		err = writeAddr(l.Addr().String())
	}
	if err == nil {
		err = http.Serve(l, nil)
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// forward proxies requests that name an absolute http:// URL on an
// address in allow, as a client configured with this proxy sends them.
func forward(allow netip.Prefix) http.Handler {
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.Out.URL = r.In.URL
		r.Out.Host = r.In.URL.Host
	}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Host == "" && r.URL.Path == "/health" { // its own: the image's HEALTHCHECK
			fmt.Fprintln(w, "ok")
			return
		}
		if r.URL.Scheme != "http" || r.URL.Host == "" {
			http.Error(w, "a forward proxy for http://host:port/ URLs", http.StatusBadRequest)
			return
		}
		if ap, err := netip.ParseAddrPort(r.URL.Host); err != nil || !allow.Contains(ap.Addr()) {
			http.Error(w, "relays only to "+allow.String(), http.StatusForbidden)
			return
		}
		rp.ServeHTTP(w, r)
	})
}

// addrFile is where the app says which address it took for LISTEN=...:0.
// The test images are FROM scratch: the temporary directory may not exist.
func addrFile() string { return filepath.Join(os.TempDir(), "app.addr") }

func writeAddr(addr string) error {
	if err := os.MkdirAll(os.TempDir(), 0o1777); err != nil {
		return err
	}
	return os.WriteFile(addrFile(), []byte(addr), 0o644)
}

// migrations are applied in order, each in its own transaction, and
// recorded in schema_migrations: running migrate twice changes nothing
// the second time. Every run that applies something adds a row to
// migration_runs; every invocation, even one with nothing left to apply,
// adds a row to migrate_invocations first, so a test can tell "the
// migration ran once" from "it ran twice and skipped the second time".
var migrations = map[int][]string{
	1: {
		`CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)`,
		`INSERT INTO items (name) VALUES ('apple'), ('pear'), ('plum')`,
	},
	2: {
		`ALTER TABLE items ADD COLUMN price integer NOT NULL DEFAULT 0`,
		`UPDATE items SET price = 100`,
	},
	3: {
		`ALTER TABLE items ADD COLUMN stock integer NOT NULL DEFAULT 0`,
	},
	99: {
		`CREATE TABLE half_done (id integer)`,
		`SELECT 1 / 0`, // fails: the transaction takes half_done away with it
	},
}

func migrate(ctx context.Context) error {
	target, err := strconv.Atoi(schema)
	if err != nil {
		return fmt.Errorf("bad schema %q", schema)
	}
	conn, err := pgx.Connect(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY)`,
		`CREATE TABLE IF NOT EXISTS migration_runs (version integer, app text, at timestamptz DEFAULT now())`,
		`CREATE TABLE IF NOT EXISTS migrate_invocations (app text, at timestamptz DEFAULT now())`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO migrate_invocations (app) VALUES ($1)`, version); err != nil {
		return err
	}
	for v := 1; v <= target; v++ {
		steps, ok := migrations[v]
		if !ok {
			continue
		}
		var done bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)`, v).Scan(&done); err != nil {
			return err
		}
		if done {
			continue
		}
		fmt.Printf("applying migration %d (app %s)\n", v, version)
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			for _, q := range steps {
				if _, err := tx.Exec(ctx, q); err != nil {
					return fmt.Errorf("migration %d: %w", v, err)
				}
			}
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, v); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO migration_runs (version, app) VALUES ($1, $2)`, v, version)
			return err
		})
		if err != nil {
			return err
		}
	}
	fmt.Println("schema at", target)
	return nil
}
