// Command testapp is the tiny HTTP service the e2e suite deploys. Its
// version is set at build time: go build -ldflags "-X main.version=v2".
// Version "broken" fails its /health endpoint, so its HEALTHCHECK never
// passes and a start-first update to it fails and rolls back.
//
//	testapp          serve :8080 (/ prints the version, /health is the probe)
//	testapp health   exit 0 iff http://127.0.0.1:8080/health answers 200
package main

import (
	"fmt"
	"net/http"
	"os"
	"time"
)

var version = "v1"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "health" {
		c := http.Client{Timeout: 2 * time.Second}
		r, err := c.Get("http://127.0.0.1:8080/health")
		if err != nil || r.StatusCode != http.StatusOK {
			os.Exit(1)
		}
		os.Exit(0)
	}
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if version == "broken" || os.Getenv("BROKEN") == "1" {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, version) })
	if err := http.ListenAndServe(":8080", nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
