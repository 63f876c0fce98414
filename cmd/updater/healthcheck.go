package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// healthcheck asks a running updater's /healthz, for Docker's HEALTHCHECK
// in an image with no shell or curl. An updater listening on every
// interface is asked on loopback.
func healthcheck(listen string, stderr io.Writer) int {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "0" {
		fmt.Fprintf(stderr, "updater healthcheck: UPDATER_LISTEN=%q names no port to ask\n", listen)
		return 1
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + net.JoinHostPort(host, port) + "/healthz")
	if err != nil {
		fmt.Fprintf(stderr, "updater healthcheck: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "updater healthcheck: /healthz answered %s\n", resp.Status)
		return 1
	}
	return 0
}
