package app

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/updater-dev/updater/internal/config"
)

// managerAPI answers what Open asks Docker before anything else: the API
// version and whether this is an active swarm manager.
func managerAPI(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Api-Version", "1.41")
		switch {
		case strings.HasSuffix(r.URL.Path, "/_ping"):
			io.WriteString(w, "OK")
		case strings.HasSuffix(r.URL.Path, "/info"):
			json.NewEncoder(w).Encode(map[string]any{"Swarm": map[string]any{"LocalNodeState": "active", "ControlAvailable": true}})
		default:
			http.Error(w, `{"message":"not in this fake"}`, http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	return "tcp://" + srv.Listener.Addr().String()
}

// The pipeline runs canaries on the swarm adapter, judged by Prometheus
// when UPDATER_PROMETHEUS_URL is set; without it, no Metrics, and a
// service labelled with a canary is a label error (deploy.uncanaried).
func TestOpenWiresCanaries(t *testing.T) {
	for name, tt := range map[string]struct {
		env     map[string]string
		metrics bool
	}{
		"with Prometheus":    {map[string]string{"UPDATER_PROMETHEUS_URL": "http://127.0.0.1:9/"}, true},
		"without Prometheus": {map[string]string{}, false},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("DOCKER_HOST", managerAPI(t))
			cfg, err := config.Load(func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }, nil)
			if err != nil {
				t.Fatal(err)
			}
			a := New(cfg, Options{Stderr: io.Discard})
			defer a.Close()
			if err := a.Open(t.Context(), Check); err != nil {
				t.Fatalf("open: %v", err)
			}
			p := a.Pipeline
			if p.Canaries == nil {
				t.Error("the pipeline has no Canaries")
			}
			if got := p.Metrics != nil; got != tt.metrics {
				t.Errorf("Metrics set: %t, want %t", got, tt.metrics)
			}
		})
	}
}
