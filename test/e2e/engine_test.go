//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// The engine matrix: the same suite against another Docker Engine, picked
// by DOCKER_HOST. test/e2e/engine.sh runs that engine (Docker 28.5, say) in
// a network namespace of its own and names it in E2E_NETNS; its tasks and
// hook jobs reach 127.0.0.1 of that namespace, not the host's. So the
// registry and PostgreSQL are served there too, at the same 127.0.0.1
// addresses as on the host: one image reference and one database URL work
// for both, and the tests need no change.

// dockerHostEnv passes the suite's engine (DOCKER_HOST) on to an updater
// process the test starts.
func dockerHostEnv() []string {
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		return []string{"DOCKER_HOST=" + h}
	}
	return nil
}

// serveEngineNetns serves the faulty registry and PostgreSQL inside the
// namespace E2E_NETNS names, if it names one. It starts PostgreSQL now
// rather than at the first hook test, since its port must be known.
func serveEngineNetns() (stop func(), err error) {
	ns := os.Getenv("E2E_NETNS")
	if ns == "" {
		return func() {}, nil
	}
	l, err := listenIn(ns, env.faulty)
	if err != nil {
		return nil, fmt.Errorf("serve the registry in %s: %w", ns, err)
	}
	s := &http.Server{Handler: env.faultyH, ReadHeaderTimeout: 10 * time.Second}
	go s.Serve(l)
	pg.once.Do(func() { pg.err = startPostgres() })
	if pg.err != nil {
		s.Close()
		return nil, fmt.Errorf("postgres: %w", pg.err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", pg.port)
	pl, err := listenIn(ns, addr)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("serve postgres in %s: %w", ns, err)
	}
	f := forward(pl, addr)
	return func() { s.Close(); f() }, nil
}

// forward passes every connection l accepts on to addr (dialled from the
// host's namespace) until the returned stop is called.
func forward(l net.Listener, addr string) (stop func()) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			open[c] = true
		} else {
			delete(open, c)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := l.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			out, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				in.Close()
				continue
			}
			track(in, true)
			track(out, true)
			wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				io.Copy(dst, src)
				// Either side's end ends both.
				dst.Close()
				src.Close()
				track(dst, false)
				track(src, false)
			}
			go pipe(out, in)
			go pipe(in, out)
		}
	}()
	return func() {
		l.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}
