// Command registry is the demo's image registry: go-containerregistry's
// in-memory registry, served over plain HTTP on a loopback address (Docker
// trusts 127.0.0.0/8 without TLS). It forgets everything when it stops.
package main

import (
	"log"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := os.Getenv("LISTEN")
	if addr == "" {
		addr = "127.0.0.1:5000"
	}
	srv := &http.Server{Addr: addr, Handler: registry.New(), ReadHeaderTimeout: 10 * time.Second}
	log.Printf("registry listening on %s", addr)
	log.Fatal(srv.ListenAndServe())
}
